//! What every HTTP server in the crate shares: the socket, the accept loop and
//! a body fed from a task.
//!
//! tokentap serves HTTP twice in one process — the proxy's port and, with
//! `--demo`, the simulated upstream — and both must behave the same where it
//! matters under load and at shutdown: a deep accept queue, no spinning when
//! accepting fails, no Nagle delay on streamed tokens, and a shutdown that
//! stops accepting at once yet lets in-flight streams finish. Keeping that in
//! one place means the connection limits (head-read timeout, idle
//! keep-alive timeout, connection cap) are added once, in [`serve`], for both.

mod hold;
mod limits;
mod protocols;

pub use hold::ConnectionHold;
pub use limits::ConnectionLimits;
pub use protocols::Protocols;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame};
use hyper::body::Incoming;
use hyper::service::Service;
use hyper_util::rt::TokioIo;
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Connections the kernel queues before they are accepted. tokio's `bind` asks
/// for 128: a burst of more new connections than that (1,000 clients starting a
/// stream together, in issue 6's benchmark) overflowed it, and each dropped SYN
/// cost its client a one-second retransmit. The kernel caps it at `somaxconn`.
const LISTEN_BACKLOG: u32 = 4096;

/// Pause after a failed `accept` (typically too many open files): the error
/// would otherwise repeat at once and spin a core.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// A listening socket on `addr` with a backlog of `LISTEN_BACKLOG` (4096).
pub fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // as tokio's own `bind` does on Unix (on Windows it would let another process share the port)
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// A response body whose frames a task sends as they are produced (a stream
/// of SSE events). It ends when the sender is dropped; dropping the body (the
/// client went away) makes the sender's `send` fail, which is how the task
/// learns to stop.
pub struct ChannelBody {
    rx: mpsc::Receiver<Bytes>,
}

impl ChannelBody {
    pub fn new(rx: mpsc::Receiver<Bytes>) -> Self {
        Self { rx }
    }
}

impl From<mpsc::Receiver<Bytes>> for ChannelBody {
    fn from(rx: mpsc::Receiver<Bytes>) -> Self {
        Self::new(rx)
    }
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.get_mut()
            .rx
            .poll_recv(cx)
            .map(|data| data.map(|d| Ok(Frame::data(d))))
    }
}

/// How [`serve`] treats its connections.
///
/// The connection limits belong here, next to the shutdown grace,
/// and are applied in [`serve`] alone: the connection cap before `accept`
/// (waiting for a free slot, still watching the stop signal), the head-read and
/// idle keep-alive timeouts per connection in `spawn_connection`.
#[derive(Clone, Debug, Default)]
pub struct ServeOptions {
    /// After the stop signal, how long in-flight connections get to finish
    /// before [`serve`] returns anyway; `None` waits for all of them.
    pub grace: Option<Duration>,
    /// Head and idle deadlines per connection; `None`: none (the demo).
    pub limits: Option<ConnectionLimits>,
    /// Connections served at once; past it `accept` waits for one to close.
    pub max_connections: Option<usize>,
}

/// Accepts connections on `listener` and serves each with a clone of
/// `service` (HTTP/1.1 with upgrades, or h2c, as `protocols` say) until
/// `stop` turns `true` or its sender is dropped.
///
/// Then it stops accepting at once (the listener is closed), asks every
/// connection to finish gracefully (idle ones close, in-flight requests —
/// long streams included — complete), and returns when they are all done or
/// `options.grace` is over, whichever comes first. Connections still open
/// after the grace period keep running in their own tasks.
pub async fn serve<S, B>(
    listener: TcpListener,
    protocols: Protocols,
    service: S,
    mut stop: watch::Receiver<bool>,
    options: ServeOptions,
) where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Into<BoxError>,
{
    let graceful = GracefulShutdown::new();
    let protocols = Arc::new(protocols);
    let slots = options
        .max_connections
        .map(|n| Arc::new(tokio::sync::Semaphore::new(n)));
    loop {
        // at the cap, wait for a connection to close before accepting: the kernel
        // queues newcomers meanwhile, and no accepted connection is ever dropped
        let slot = match &slots {
            None => None,
            Some(slots) => tokio::select! {
                () = stopped(&mut stop) => break,
                slot = slots.clone().acquire_owned() => slot.ok(),
            },
        };
        let accepted = tokio::select! {
            () = stopped(&mut stop) => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let conn = Connection {
            protocols: Arc::clone(&protocols),
            watcher: graceful.watcher(),
            stop: stop.clone(),
            // a second watcher, kept by a tunnel the connection may become
            tunnel_watcher: graceful.watcher(),
            limits: options.limits,
            slot,
        };
        conn.spawn(stream, service.clone());
    }
    drop(listener);
    drain(graceful, options.grace).await;
}

/// Resolves once `stop` turns `true` or its sender is gone.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// One accepted connection and what it is served with.
struct Connection {
    protocols: Arc<Protocols>,
    watcher: Watcher,
    stop: watch::Receiver<bool>,
    tunnel_watcher: Watcher,
    limits: Option<ConnectionLimits>,
    /// Its place under `--max-connections`, given back when the task ends
    /// (or, once upgraded, when the tunnel closes: see `hold`).
    slot: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl Connection {
    /// Serves the connection in its own task, watched for graceful shutdown and,
    /// with limits, closed by its watchdog when a deadline passes.
    fn spawn<S, B>(self, stream: TcpStream, service: S)
    where
        S: Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: Body<Data = Bytes> + Unpin + Send + 'static,
        B::Error: Into<BoxError>,
    {
        // streamed tokens are small writes; Nagle would hold each one back
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let Connection {
                protocols,
                watcher,
                stop,
                tunnel_watcher,
                limits,
                slot,
            } = self;
            let activity = limits.map(|_| limits::Activity::new());
            let hold = ConnectionHold::new(slot, tunnel_watcher, activity.clone());
            let service = hold::Holding::new(service, hold.clone());
            let result = match (limits, activity) {
                (Some(limits), Some(activity)) => {
                    let service = limits::Tracked::new(service, activity.clone());
                    let watched = |s| limits::Watched::new(s, activity.clone());
                    let conn = protocols.serve(stream, watched, service, watcher, stop);
                    tokio::select! {
                        // a connection with bytes ready is served before its deadline is judged
                        biased;
                        result = conn => result,
                        () = limits::watchdog(activity.clone(), limits) => {
                            tracing::debug!("closing a connection past its head or idle deadline");
                            Ok(())
                        }
                    }
                }
                _ => protocols.serve(stream, |s| s, service, watcher, stop).await,
            };
            hold.release();
            if let Err(e) = result {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
}

/// Signals every watched connection to finish and waits for them, at most `grace`.
async fn drain(graceful: GracefulShutdown, grace: Option<Duration>) {
    match grace {
        None => graceful.shutdown().await,
        Some(grace) => {
            if tokio::time::timeout(grace, graceful.shutdown())
                .await
                .is_err()
            {
                tracing::warn!(?grace, "grace period over; closing remaining connections");
            }
        }
    }
}

/// The socket under an upgraded client connection, with the bytes hyper had read
/// past the handshake; the connection itself when it is not a plain socket of ours.
pub(crate) fn upgraded_socket(
    up: hyper::upgrade::Upgraded,
) -> Result<(TcpStream, Bytes), hyper::upgrade::Upgraded> {
    socket_of::<TcpStream>(up, |s| s).or_else(|up| socket_of(up, limits::Watched::into_inner))
}

/// The socket under `up` when it was served on a `T`: by hyper's HTTP/1 server
/// directly (see `protocols`), or by the auto builder, in its own wrapper.
fn socket_of<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + 'static>(
    up: hyper::upgrade::Upgraded,
    socket: fn(T) -> TcpStream,
) -> Result<(TcpStream, Bytes), hyper::upgrade::Upgraded> {
    let up = match up.downcast::<TokioIo<T>>() {
        Ok(p) => return Ok((socket(p.io.into_inner()), p.read_buf)),
        Err(up) => up,
    };
    auto::upgrade::downcast::<TokioIo<T>>(up).map(|p| (socket(p.io.into_inner()), p.read_buf))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt as _, Empty};
    use hyper::service::service_fn;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::sync::oneshot;

    type TestClient = Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>;

    fn client() -> TestClient {
        Client::builder(TokioExecutor::new()).build_http()
    }

    /// Found in review: the served socket sits in hyper-util's own wrapper, so a plain
    /// `Upgraded::downcast` never matched and no tunnel was relayed on its socket.
    /// With and without the per-connection deadlines, and on either path (hyper's HTTP/1
    /// server directly, or the auto builder when the first bytes arrived alone and could
    /// still have been h2's preface), an upgraded connection gives its socket back, and
    /// the bytes hyper read past the handshake come with it.
    #[tokio::test]
    async fn an_upgraded_connection_gives_back_its_socket_and_what_was_read() {
        let limited = Some(ConnectionLimits {
            header_timeout: LONG,
            idle_timeout: LONG,
        });
        for (limits, trickled) in [
            (None, false),
            (limited, false),
            (None, true),
            (limited, true),
        ] {
            let (tx, rx) = oneshot::channel();
            let service = upgrading(upgraded_socket, tx);
            let options = ServeOptions {
                limits,
                ..ServeOptions::default()
            };
            let (addr, _stop, _task) = start(service, options);
            let mut c = TcpStream::connect(addr).await.unwrap();
            let handshake: &[u8] =
                b"POST / HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\nEARLY";
            if trickled {
                // `P` alone is still a prefix of the preface: the auto builder decides
                c.write_all(&handshake[..1]).await.unwrap();
                tokio::time::sleep(Duration::from_millis(50)).await;
                c.write_all(&handshake[1..]).await.unwrap();
            } else {
                // the first frame's bytes in the same write as the handshake
                c.write_all(handshake).await.unwrap();
            }
            let found = tokio::time::timeout(LONG, rx).await.unwrap().unwrap();
            let (mut tcp, read) = found.expect("upgraded").unwrap_or_else(|_| {
                panic!("not given back as a socket (limits {limits:?}, trickled {trickled})")
            });
            let mut early = read.to_vec();
            while early.len() < 5 {
                let mut b = [0u8; 8];
                let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut b))
                    .await
                    .expect("the early bytes are not lost")
                    .unwrap();
                assert!(n > 0);
                early.extend_from_slice(&b[..n]);
            }
            assert_eq!(early, b"EARLY");
        }
    }

    /// An HTTP/1 request that arrives whole is served by hyper's HTTP/1 server on the
    /// socket itself, not behind hyper-util's auto builder and its 24 bytes read ahead
    /// (which doubled hyper's read buffer): an upgrade then hands over the plain socket.
    #[tokio::test]
    async fn a_whole_http1_request_is_served_on_the_socket_itself() {
        let (tx, rx) = oneshot::channel();
        let service = upgrading(|up| up.downcast::<TokioIo<TcpStream>>().is_ok(), tx);
        let (addr, _stop, _task) = start(service, ServeOptions::default());
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(
            b"GET / HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n",
        )
        .await
        .unwrap();
        let plain = tokio::time::timeout(LONG, rx).await.unwrap().unwrap();
        assert!(plain.expect("upgraded"), "served behind the auto builder");
    }

    /// A service that answers `101` and sends what `take` makes of the first upgraded
    /// connection down `tx`.
    fn upgrading<T: Send + 'static>(
        take: fn(hyper::upgrade::Upgraded) -> T,
        tx: oneshot::Sender<hyper::Result<T>>,
    ) -> impl Service<
        Request<Incoming>,
        Response = Response<Empty<Bytes>>,
        Error = http::Error,
        Future = impl Send,
    > + Clone
    + Send
    + 'static {
        let tx = Arc::new(std::sync::Mutex::new(Some(tx)));
        service_fn(move |req: Request<Incoming>| {
            let tx = tx.clone();
            async move {
                let upgrading = hyper::upgrade::on(req);
                tokio::spawn(async move {
                    let found = upgrading.await.map(take);
                    if let Some(tx) = tx.lock().unwrap().take() {
                        let _ = tx.send(found);
                    }
                });
                Response::builder()
                    .status(101)
                    .header("connection", "upgrade")
                    .header("upgrade", "websocket")
                    .body(Empty::<Bytes>::new())
            }
        })
    }

    fn get(addr: SocketAddr) -> Request<Empty<Bytes>> {
        Request::get(format!("http://{addr}/"))
            .body(Empty::new())
            .unwrap()
    }

    /// Serves `service` on a fresh port; returns the address, the stop sender and the loop's task.
    fn start<S, B>(
        service: S,
        options: ServeOptions,
    ) -> (SocketAddr, watch::Sender<bool>, tokio::task::JoinHandle<()>)
    where
        S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: Body<Data = Bytes> + Unpin + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let listener = listen(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(serve(
            listener,
            Protocols::default(),
            service,
            stop_rx,
            options,
        ));
        (addr, stop, task)
    }

    /// A grace period no test waits for.
    const LONG: Duration = Duration::from_secs(3600);

    /// Awaits the loop's task; a loop that never returns fails the test instead of hanging it.
    async fn finishes(task: tokio::task::JoinHandle<()>) {
        tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("the accept loop did not return")
            .unwrap();
    }

    fn hello() -> impl Service<
        Request<Incoming>,
        Response = Response<http_body_util::Full<Bytes>>,
        Error = Infallible,
        Future = impl Send,
    > + Clone
    + Send
    + Sync
    + 'static {
        service_fn(|_req| async {
            Ok::<_, Infallible>(Response::new(http_body_util::Full::new(
                Bytes::from_static(b"hello"),
            )))
        })
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn channel_body_yields_frames_in_order_and_ends_with_the_sender() {
        let (tx, rx) = mpsc::channel(4);
        let body = ChannelBody::new(rx);
        tx.send(Bytes::from_static(b"one ")).await.unwrap();
        tx.send(Bytes::from_static(b"two")).await.unwrap();
        drop(tx);
        assert_eq!(body.collect().await.unwrap().to_bytes(), "one two");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn stop_closes_the_listener_and_ends_the_loop() {
        let (addr, stop, task) = start(hello(), ServeOptions::default());
        let resp = client().request(get(addr)).await.unwrap();
        assert_eq!(
            resp.into_body().collect().await.unwrap().to_bytes(),
            "hello"
        );
        stop.send_replace(true);
        finishes(task).await;
        // the loop is over, so the listener is closed: nobody accepts any more
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn dropping_the_stop_sender_also_stops() {
        let (addr, stop, task) = start(hello(), ServeOptions::default());
        drop(stop);
        finishes(task).await;
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }

    /// A connection still waiting for its first bytes, whether silent or with the start
    /// of h2's preface (the two ways a protocol is not yet known), closes at the stop
    /// instead of holding the drain up.
    #[tokio::test(flavor = "multi_thread")]
    async fn connections_not_yet_speaking_do_not_hold_up_the_stop() {
        let (addr, stop, task) = start(hello(), ServeOptions::default());
        let silent = TcpStream::connect(addr).await.unwrap();
        let mut undecided = TcpStream::connect(addr).await.unwrap();
        undecided.write_all(b"PRI * HT").await.unwrap();
        // both accepted and waiting before the stop
        tokio::time::sleep(Duration::from_millis(100)).await;
        stop.send_replace(true);
        finishes(task).await;
        for mut c in [silent, undecided] {
            let mut b = [0u8; 16];
            let n = tokio::time::timeout(Duration::from_secs(10), c.read(&mut b))
                .await
                .expect("closed by the server")
                .unwrap_or(0);
            assert_eq!(n, 0, "nothing answered, only closed");
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn idle_keep_alive_connections_do_not_hold_up_the_stop() {
        let (addr, stop, task) = start(hello(), ServeOptions::default());
        let client = client();
        let resp = client.request(get(addr)).await.unwrap();
        assert_eq!(
            resp.into_body().collect().await.unwrap().to_bytes(),
            "hello"
        );
        // the client keeps its connection open for reuse; stopping closes it
        stop.send_replace(true);
        finishes(task).await;
        drop(client);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn in_flight_stream_finishes_after_stop() {
        // Each request gets a stream: one event at once, the rest when `release` fires.
        let (release_tx, release_rx) = oneshot::channel::<()>();
        let release_rx = Arc::new(std::sync::Mutex::new(Some(release_rx)));
        let service = service_fn(move |_req| {
            let release = release_rx.lock().unwrap().take();
            async move {
                let (tx, rx) = mpsc::channel(4);
                tokio::spawn(async move {
                    tx.send(Bytes::from_static(b"first ")).await.unwrap();
                    if let Some(release) = release {
                        let _ = release.await;
                    }
                    tx.send(Bytes::from_static(b"second")).await.unwrap();
                });
                Ok::<_, Infallible>(Response::new(ChannelBody::new(rx)))
            }
        });
        let options = ServeOptions {
            grace: Some(LONG),
            ..ServeOptions::default()
        };
        let (addr, stop, task) = start(service, options);
        let resp = client().request(get(addr)).await.unwrap();
        let mut body = resp.into_body();
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(first, "first ");

        stop.send_replace(true);
        // the listener closes while the stream is still open
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while tokio::net::TcpStream::connect(addr).await.is_ok() {
            assert!(std::time::Instant::now() < deadline, "still accepting");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // (a loop that does not wait would be done by now)
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!task.is_finished(), "the loop returned with a stream open");

        release_tx.send(()).unwrap();
        let rest = body.collect().await.unwrap().to_bytes();
        assert_eq!(rest, "second");
        // the last connection is done, so the loop returns without using up the grace
        finishes(task).await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn grace_period_bounds_the_wait_for_a_stream_that_never_ends() {
        let (keep_tx, keep_rx) = mpsc::channel::<mpsc::Sender<Bytes>>(1);
        let service = service_fn(move |_req| {
            let keep = keep_tx.clone();
            async move {
                let (tx, rx) = mpsc::channel(4);
                tx.send(Bytes::from_static(b"start")).await.unwrap();
                // the sender lives in the test: the stream never ends
                keep.send(tx).await.unwrap();
                Ok::<_, Infallible>(Response::new(ChannelBody::new(rx)))
            }
        });
        let options = ServeOptions {
            grace: Some(Duration::from_millis(50)),
            ..ServeOptions::default()
        };
        let (addr, stop, task) = start(service, options);
        let resp = client().request(get(addr)).await.unwrap();
        let mut body = resp.into_body();
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(first, "start");
        stop.send_replace(true);
        // returns although the stream is still open (without the grace it would wait forever)
        finishes(task).await;
        drop(keep_rx);
    }
}
