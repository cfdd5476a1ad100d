//! The hyper floor: the smallest forwarding proxy on tokentap's own stack.
//!
//! nginx tells how far tokentap is from a mature proxy, but not how much of the gap
//! is tokentap's own work and how much the stack beneath it (hyper's server, hyper-util's
//! pooled client, tokio's scheduler). This target answers that: the same server builder
//! and the same legacy pooled client tokentap uses, the request body read whole as
//! tokentap does, and nothing else — no parsing, no telemetry, no limits. Whatever
//! tokentap costs above it is tokentap's; whatever it costs above nginx is the stack's.
//!
//! Run by the harness as a child (`<harness> --hyper-floor UPSTREAM`), pinned like the
//! other proxies; prints `hyper-floor listening on PORT` and exits when stdin closes.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderName};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpSocket;

use crate::procs::FLOOR_READY as READY;

type Body = UnsyncBoxBody<Bytes, hyper::Error>;

/// Hop-by-hop headers (RFC 9110 §7.6.1), dropped on both legs as any proxy must.
const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Runs the floor until stdin closes. Blocks.
pub fn run(upstream: SocketAddr) -> crate::Result<()> {
    crate::procs::exit_when_stdin_closes()?;
    // tokentap's runtime (src/main.rs): current-thread on one core, else one worker per CPU
    let rt = match std::thread::available_parallelism().map(std::num::NonZero::get) {
        Ok(1) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
        _ => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?,
    };
    rt.block_on(serve(upstream))
}

async fn serve(upstream: SocketAddr) -> crate::Result<()> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    let listener = socket.listen(4096)?;
    println!("{READY}{}", listener.local_addr()?.port());
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    // tokentap's pool settings (src/upstream.rs)
    let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(1024)
        .http1_max_buf_size(64 * 1024)
        .build(http);
    // which upstream client (`floor_own.rs`): hyper-util's (the default), or a pool of its own
    let leg = match crate::floor_own::FloorClient::from_env()? {
        crate::floor_own::FloorClient::Legacy => Leg::Pooled(client, format!("http://{upstream}")),
        own => Leg::Own(
            Arc::new(crate::floor_own::Pool::new(
                own == crate::floor_own::FloorClient::OwnSpawned,
            )),
            upstream,
        ),
    };
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let leg = leg.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| leg.clone().forward(req));
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// How the floor reaches its upstream. Cloned per call as the client and its base URL
/// were before (the floor's cost is the baseline), so the bigger variant stays inline.
#[derive(Clone)]
#[allow(clippy::large_enum_variant)]
enum Leg {
    /// hyper-util's pooled client, and the upstream's base URL.
    Pooled(Client<HttpConnector, Full<Bytes>>, String),
    /// The floor's own pool (`floor_own.rs`).
    Own(Arc<crate::floor_own::Pool>, SocketAddr),
}

impl Leg {
    /// The client's request, its body read whole and its hop-by-hop headers dropped
    /// both ways, forwarded; a `502` when the upstream gives no answer.
    async fn forward(self, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
        let (mut parts, body) = req.into_parts();
        let Ok(body) = body.collect().await.map(|b| b.to_bytes()) else {
            return Ok(status(StatusCode::BAD_REQUEST));
        };
        for h in &HOP_BY_HOP {
            parts.headers.remove(h);
        }
        let mut up = Request::from_parts(parts, Full::new(body));
        Ok(match self {
            Leg::Pooled(client, base) => {
                let path = up.uri().path_and_query().map_or("/", |p| p.as_str());
                let Ok(uri) = format!("{base}{path}").parse::<Uri>() else {
                    return Ok(status(StatusCode::BAD_REQUEST));
                };
                *up.uri_mut() = uri;
                to_client(client.request(up).await)
            }
            Leg::Own(pool, upstream) => to_client(pool.send(upstream, up).await),
        })
    }
}

/// The upstream's answer as the client gets it (hop-by-hop headers dropped), or a `502`.
fn to_client<B, E>(answer: Result<Response<B>, E>) -> Response<Body>
where
    B: hyper::body::Body<Data = Bytes, Error = hyper::Error> + Send + 'static,
{
    match answer {
        Ok(resp) => {
            let (mut head, body) = resp.into_parts();
            for h in &HOP_BY_HOP {
                head.headers.remove(h);
            }
            Response::from_parts(head, body.boxed_unsync())
        }
        Err(_) => status(StatusCode::BAD_GATEWAY),
    }
}

fn status(s: StatusCode) -> Response<Body> {
    let mut r = Response::new(
        Full::new(Bytes::new())
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *r.status_mut() = s;
    r
}
