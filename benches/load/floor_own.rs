//! The floor with a pool of its own: the upstream HTTP/1 connection driven by the
//! request's own task (hyper's `client::conn`), for comparison with hyper-util's
//! legacy pooled client, which gives every upstream connection a task of its own
//! and hands each response's body across a channel between the two tasks.
//!
//! Chosen with `TOKENTAP_FLOOR_CLIENT=own` in the harness's environment (or `own-spawned`:
//! the same pool, each connection in a task of its own, to tell the pool from the
//! driving apart); the floor is otherwise the same (server builder, body read whole,
//! hop-by-hop headers dropped). An idle connection is parked unpolled; whoever takes it
//! polls it first, so a connection the upstream closed while parked is found closed and
//! dropped then. Measured in docs/benchmarks.md, load round ten.

use std::future::{Future, poll_fn};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Body as _, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, Connection, SendRequest};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

type Error = Box<dyn std::error::Error + Send + Sync>;
type Conn = Connection<TokioIo<TcpStream>, Full<Bytes>>;

/// Which upstream client the floor uses (`TOKENTAP_FLOOR_CLIENT`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum FloorClient {
    /// hyper-util's pooled client, as tokentap uses it (the default).
    Legacy,
    /// This pool, each connection driven by the task of the call using it.
    Own,
    /// This pool, each connection in a task of its own.
    OwnSpawned,
}

impl FloorClient {
    pub fn from_env() -> Result<FloorClient, String> {
        match std::env::var("TOKENTAP_FLOOR_CLIENT").as_deref() {
            Err(_) | Ok("" | "legacy") => Ok(FloorClient::Legacy),
            Ok("own") => Ok(FloorClient::Own),
            Ok("own-spawned") => Ok(FloorClient::OwnSpawned),
            Ok(other) => Err(format!(
                "TOKENTAP_FLOOR_CLIENT={other:?}: expected legacy, own or own-spawned"
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            FloorClient::Legacy => "legacy",
            FloorClient::Own => "own",
            FloorClient::OwnSpawned => "own-spawned",
        }
    }
}

/// One upstream connection: its sender and the connection future that does its I/O
/// (none when the connection runs in a task of its own, or has ended).
struct Upstream {
    tx: SendRequest<Full<Bytes>>,
    conn: Option<Conn>,
}

impl Upstream {
    /// Polls the connection when this task drives it; false once it has ended. An
    /// ended connection is dropped at once: a request still queued in it comes back
    /// as never written, instead of waiting on it for good.
    fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        if self
            .conn
            .as_mut()
            .is_some_and(|c| Pin::new(c).poll(cx).is_ready())
        {
            self.conn = None;
        }
        !self.tx.is_closed()
    }
}

pub struct Pool {
    idle: Mutex<Vec<Upstream>>,
    /// Each connection in a task of its own (`own-spawned`), as hyper-util's client
    /// does, instead of driven by the call's task (`own`).
    spawned: bool,
}

impl Pool {
    pub fn new(spawned: bool) -> Pool {
        Pool {
            idle: Mutex::new(Vec::new()),
            spawned,
        }
    }

    /// Sends `req` on an idle connection or a new one, driving the connection from
    /// this task until the response's head is in.
    pub async fn send(
        self: &Arc<Self>,
        upstream: SocketAddr,
        mut req: Request<Full<Bytes>>,
    ) -> Result<Response<Driven>, Error> {
        loop {
            let parked = self.idle.lock().map(|mut v| v.pop()).unwrap_or(None);
            let (mut up, reused) = match parked {
                Some(up) => (up, true),
                None => (connect(upstream, self.spawned).await?, false),
            };
            if reused && !ready(&mut up).await {
                continue; // closed while parked
            }
            let sent = up.tx.try_send_request(req);
            let mut sent = std::pin::pin!(sent);
            let res = poll_fn(|cx| {
                up.drive(cx);
                sent.as_mut().poll(cx)
            })
            .await;
            match res {
                Ok(resp) => {
                    let (head, body) = resp.into_parts();
                    let keep = (!up.tx.is_closed()).then_some(up);
                    return Ok(Response::from_parts(
                        head,
                        Driven {
                            body,
                            up: keep,
                            pool: self.clone(),
                        },
                    ));
                }
                Err(mut e) => match e.take_message() {
                    // a parked connection closed before writing it: another connection
                    // (a new one that fails is the answer: no retrying without end)
                    Some(back) if reused => req = back,
                    _ => return Err(e.into_error().into()),
                },
            }
        }
    }
}

async fn connect(upstream: SocketAddr, spawned: bool) -> Result<Upstream, Error> {
    let tcp = TcpStream::connect(upstream).await?;
    let _ = tcp.set_nodelay(true);
    let (tx, conn) = http1::Builder::new()
        .max_buf_size(64 * 1024)
        .handshake(TokioIo::new(tcp))
        .await?;
    if spawned {
        tokio::spawn(conn);
        return Ok(Upstream { tx, conn: None });
    }
    Ok(Upstream {
        tx,
        conn: Some(conn),
    })
}

/// Polls a parked connection until it can take a request (true) or is gone (false).
async fn ready(up: &mut Upstream) -> bool {
    poll_fn(|cx| {
        if !up.drive(cx) {
            return Poll::Ready(false);
        }
        up.tx.poll_ready(cx).map(|r| r.is_ok())
    })
    .await
}

/// The response's body, polling its connection along: when the body ends whole, the
/// connection goes back to the pool.
pub struct Driven {
    body: Incoming,
    up: Option<Upstream>,
    pool: Arc<Pool>,
}

impl hyper::body::Body for Driven {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        self.drive_and_poll(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Driven {
    fn drive_and_poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        if self.up.as_mut().is_some_and(|up| !up.drive(cx)) {
            self.up = None;
        }
        let r = Pin::new(&mut self.body).poll_frame(cx);
        if let Poll::Ready(None) = r {
            self.park();
        }
        r
    }

    fn park(&mut self) {
        if let Some(up) = self.up.take() {
            if let Ok(mut idle) = self.pool.idle.lock() {
                idle.push(up);
            }
        }
    }
}

impl Drop for Driven {
    fn drop(&mut self) {
        // a body hyper stopped polling at its end (it said so) is whole too
        if self.body.is_end_stream() {
            self.park();
        }
    }
}
