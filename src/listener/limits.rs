//! Per-connection limits: how long a client may take to send a request head,
//! and how long a kept-alive connection may sit idle.
//!
//! hyper's own header-read timeout needs a timer, starts only once hyper is
//! parsing HTTP/1 (not while the listener waits for a first byte, nor while
//! hyper-util's auto builder looks for the h2c preface), and keeps running on an idle keep-alive connection, so it
//! would close idle connections at the head deadline. Instead each connection
//! keeps a small activity record — bytes read while nothing is in flight,
//! requests in flight, when the last one ended — and a watchdog beside the
//! connection closes it when the record says a deadline passed:
//!
//! - nothing in flight and a head started (bytes arrived) more than
//!   `header_timeout` ago, or no request at all within `header_timeout` of
//!   accepting: slowloris, closed;
//! - nothing in flight, no bytes, and the last request ended more than
//!   `idle_timeout` ago: idle keep-alive, closed;
//! - a request in flight whose answer the client has not taken for more than
//!   `idle_timeout` (writes blocked: the client stopped reading): closed, or
//!   a client that never reads would hold its slot under `--max-connections`
//!   forever.
//!
//! Otherwise a connection with a request in flight is not closed here: its
//! body has `--request-timeout`, its upstream `--read-timeout`. On HTTP/2 the
//! frames between requests (PING, WINDOW_UPDATE, SETTINGS) are not a request
//! head, so once a request was served only the idle deadline applies.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::service::Service;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The deadlines of one connection.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    /// From accept, or from the first byte of a head, to a complete head.
    pub header_timeout: Duration,
    /// Longest quiet time with nothing in flight after a request.
    pub idle_timeout: Duration,
}

/// Milliseconds since the connection was accepted; `NONE` for "not set".
const NONE: u64 = u64::MAX;

/// What a connection has been doing, updated from its reads and its requests.
pub(super) struct Activity {
    born: Instant,
    in_flight: AtomicUsize,
    /// When bytes first arrived while nothing was in flight (a head started).
    head_started: AtomicU64,
    /// When the last request ended; `NONE` until one has.
    idle_since: AtomicU64,
    /// Since when writes to the client have been blocked; `NONE` when they flow.
    write_blocked: AtomicU64,
    /// The connection speaks HTTP/2 (its bytes between requests are not heads).
    h2: AtomicBool,
    /// The socket was handed to an upgrade (a tunnel): no deadline applies any more.
    pub(super) upgraded: AtomicBool,
}

impl Activity {
    pub(super) fn new() -> Arc<Activity> {
        Arc::new(Activity {
            born: Instant::now(),
            in_flight: AtomicUsize::new(0),
            head_started: AtomicU64::new(NONE),
            idle_since: AtomicU64::new(NONE),
            write_blocked: AtomicU64::new(NONE),
            h2: AtomicBool::new(false),
            upgraded: AtomicBool::new(false),
        })
    }

    fn now(&self) -> u64 {
        u64::try_from(self.born.elapsed().as_millis()).unwrap_or(NONE - 1)
    }

    fn read_some(&self) {
        let between_h2_requests =
            self.h2.load(Ordering::Relaxed) && self.idle_since.load(Ordering::Relaxed) != NONE;
        if self.in_flight.load(Ordering::Relaxed) == 0
            && self.head_started.load(Ordering::Relaxed) == NONE
            && !between_h2_requests
        {
            self.head_started.store(self.now(), Ordering::Relaxed);
        }
    }

    /// Whether the last write to the client could not proceed.
    fn wrote(&self, blocked: bool) {
        let now_blocked = self.write_blocked.load(Ordering::Relaxed) != NONE;
        if blocked && !now_blocked {
            self.write_blocked.store(self.now(), Ordering::Relaxed);
        } else if !blocked && now_blocked {
            self.write_blocked.store(NONE, Ordering::Relaxed);
        }
    }

    /// A request head is complete and its handling starts.
    fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.head_started.store(NONE, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// When the connection must be closed if nothing changes, in ms since accept;
    /// `None` while a request is in flight, and once the connection is upgraded.
    fn deadline(&self, limits: &ConnectionLimits) -> Option<u64> {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(NONE - 1);
        if self.upgraded.load(Ordering::Relaxed) {
            return None;
        }
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            let blocked = self.write_blocked.load(Ordering::Relaxed);
            return (blocked != NONE).then(|| blocked.saturating_add(ms(limits.idle_timeout)));
        }
        let head = self.head_started.load(Ordering::Relaxed);
        let idle = self.idle_since.load(Ordering::Relaxed);
        Some(if idle == NONE {
            ms(limits.header_timeout) // a new connection: its first head counts from accept
        } else if head != NONE {
            head.saturating_add(ms(limits.header_timeout))
        } else {
            idle.saturating_add(ms(limits.idle_timeout))
        })
    }
}

/// A request in flight; dropped when its response body is done (or dropped).
pub(super) struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let a = &self.0;
        a.idle_since.store(a.now(), Ordering::Relaxed);
        a.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Resolves when `activity` says the connection has passed a deadline.
pub(super) async fn watchdog(activity: Arc<Activity>, limits: ConnectionLimits) {
    // The state changes under the watchdog's feet (a head completes, a request
    // ends), so it never sleeps longer than the shorter limit before looking
    // again: a deadline is then missed by at most that much, never forever.
    let recheck = limits.header_timeout.min(limits.idle_timeout);
    loop {
        let wait = match activity.deadline(&limits) {
            None => recheck,
            Some(at) => {
                let now = activity.now();
                if now >= at {
                    return;
                }
                Duration::from_millis(at - now).min(recheck)
            }
        };
        tokio::time::sleep(wait).await;
    }
}

/// The client's socket, noting when bytes arrive.
pub(super) struct Watched<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T> Watched<T> {
    pub(super) fn new(inner: T, activity: Arc<Activity>) -> Watched<T> {
        Watched { inner, activity }
    }

    /// The socket, once nothing watches its deadlines (an upgraded connection).
    pub(super) fn into_inner(self) -> T {
        self.inner
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.read_some();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.activity.wrote(polled.is_pending());
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.activity.wrote(polled.is_pending());
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A service whose requests count as in flight until their response bodies end.
#[derive(Clone)]
pub(super) struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S> Tracked<S> {
    pub(super) fn new(inner: S, activity: Arc<Activity>) -> Tracked<S> {
        Tracked { inner, activity }
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> Service<Request<Incoming>> for Tracked<S>
where
    S: Service<Request<Incoming>, Response = Response<B>>,
    S::Future: Send + 'static,
    B: Body<Data = Bytes>,
{
    type Response = Response<TrackedBody<B>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        if req.version() == http::Version::HTTP_2 {
            self.activity.h2.store(true, Ordering::Relaxed);
        }
        let guard = self.activity.begin();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = fut.await?;
            Ok(resp.map(|inner| TrackedBody {
                inner,
                _in_flight: guard,
            }))
        })
    }
}

/// A response body that keeps its request in flight until it is done.
pub(super) struct TrackedBody<B> {
    inner: B,
    _in_flight: InFlight,
}

impl<B: Body<Data = Bytes> + Unpin> Body for TrackedBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: ConnectionLimits = ConnectionLimits {
        header_timeout: Duration::from_secs(30),
        idle_timeout: Duration::from_secs(300),
    };

    #[test]
    fn deadlines_follow_the_connection_state() {
        let a = Activity::new();
        // accepted, nothing sent: the head deadline from accept
        assert_eq!(a.deadline(&LIMITS), Some(30_000));
        // a first head started late still counts from accept
        a.head_started.store(29_000, Ordering::Relaxed);
        assert_eq!(a.deadline(&LIMITS), Some(30_000));
        // a request in flight: no deadline while the client takes what it is sent
        let g = a.begin();
        assert_eq!(a.deadline(&LIMITS), None);
        // …but a client that stopped reading gets the idle deadline
        a.wrote(true);
        let blocked = a.write_blocked.load(Ordering::Relaxed);
        assert_eq!(a.deadline(&LIMITS), Some(blocked + 300_000));
        a.wrote(false);
        assert_eq!(a.deadline(&LIMITS), None);
        // bytes while in flight are the body, not a new head
        a.read_some();
        assert_eq!(a.head_started.load(Ordering::Relaxed), NONE);
        drop(g);
        let idle = a.idle_since.load(Ordering::Relaxed);
        assert_eq!(a.deadline(&LIMITS), Some(idle + 300_000));
        // the next head's first byte
        a.read_some();
        let head = a.head_started.load(Ordering::Relaxed);
        assert_eq!(a.deadline(&LIMITS), Some(head + 30_000));
    }

    #[test]
    fn an_upgraded_connection_has_no_deadline() {
        let a = Activity::new();
        drop(a.begin());
        a.read_some();
        assert!(a.deadline(&LIMITS).is_some());
        a.upgraded.store(true, Ordering::Relaxed);
        a.wrote(true);
        assert_eq!(a.deadline(&LIMITS), None);
    }

    #[test]
    fn http2_frames_between_requests_are_not_heads() {
        let a = Activity::new();
        a.h2.store(true, Ordering::Relaxed);
        drop(a.begin());
        a.read_some(); // a PING after the last stream
        let idle = a.idle_since.load(Ordering::Relaxed);
        assert_eq!(a.deadline(&LIMITS), Some(idle + 300_000));
    }
}
