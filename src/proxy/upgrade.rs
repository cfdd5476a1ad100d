//! Upgrade: a WebSocket handshake goes through, and the tunnel after it.
//!
//! Any HTTP/1.1 request asking to upgrade to `websocket` (whatever its path)
//! takes this stage instead of the tap: it is forwarded with its upgrade
//! headers (`Connection: upgrade`, `Upgrade`, `Sec-WebSocket-*`; other
//! hop-by-hop headers still go) on the route's HTTP/1-only client, because an
//! h2 connection chosen by ALPN cannot carry an upgrade. A `101` comes back
//! with its headers and `traceresponse`, and both sockets are then handed to
//! [`tunnel::relay`]; any other answer goes through the normal tap unchanged.
//!
//! The tunnel keeps the client connection's `--max-connections` slot and
//! shutdown watcher ([`ConnectionHold`]) until it closes, and ends at once,
//! with `1001` to both sides, when tokentap shuts down (a session has no
//! natural end to wait for). The call is recorded once, when the tunnel ends:
//! status 101, its duration the session's. A Realtime session is watched by
//! [`RealtimeObserver`], whose session span replaces the tunnel's own: it has
//! to exist before the handshake goes upstream, so `traceparent` can carry it.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode, Version};
use http_body_util::{BodyExt, Empty};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;

use super::headers::strip_hop_by_hop;
use super::tunnel::{self, Closed, Io, NoObserver, Side, TunnelObserver};
use super::{Proxy, ResponseBody, TRACERESPONSE, Timing, path_and_query, prepare, request};
use super::{respond, retry, send};
use crate::call::{Call, Outcome};
use crate::listener::ConnectionHold;
use crate::observe::realtime::{RealtimeObserver, SessionEnd, is_realtime};
use crate::telemetry::spans;
use crate::upstream::UpgradedIo;

/// True for an HTTP/1.1 request asking to switch to WebSocket.
pub(super) fn is_websocket(parts: &http::request::Parts) -> bool {
    parts.version == Version::HTTP_11
        && has_token(&parts.headers, &header::CONNECTION, "upgrade")
        && has_token(&parts.headers, &header::UPGRADE, "websocket")
}

/// True when a comma-separated header `name` lists `token` (ASCII case ignored).
fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// The headers an upgrade needs on both legs: `Upgrade` and `Sec-WebSocket-*`.
fn upgrade_headers(headers: &HeaderMap) -> Vec<(HeaderName, HeaderValue)> {
    headers
        .iter()
        .filter(|(n, _)| *n == header::UPGRADE || n.as_str().starts_with("sec-websocket-"))
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect()
}

/// Puts `kept` back after hop-by-hop stripping, with `Connection: upgrade`.
fn restore(headers: &mut HeaderMap, kept: Vec<(HeaderName, HeaderValue)>) {
    for (n, _) in &kept {
        headers.remove(n);
    }
    for (n, v) in kept {
        headers.append(n, v);
    }
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
}

/// A Realtime session's observer, as the tunnel's watcher.
struct Watched(RealtimeObserver);

impl TunnelObserver for Watched {
    fn server_bytes(&mut self, bytes: &[u8]) {
        self.0.server_bytes(bytes);
    }
    fn client_bytes(&mut self, bytes: &[u8]) {
        self.0.client_bytes(bytes);
    }
    /// Ends the session span with the session's own attributes; the tunnel's
    /// call is still recorded (metrics, log) but no longer ends that span.
    fn closed(&mut self, how: Closed, call: &mut Call) {
        self.0.closed(match how {
            Closed::Client | Closed::Server => SessionEnd::Closed,
            Closed::Shutdown => SessionEnd::Shutdown,
            Closed::Failed => SessionEnd::Failed("connection_error"),
        });
        call.trace = None;
    }
}

/// What watches a tunnel's bytes: a Realtime session's observer, else nobody.
fn observer_for(
    realtime: Option<RealtimeObserver>,
    answer: &http::response::Parts,
) -> Box<dyn TunnelObserver> {
    match realtime {
        Some(mut o) => {
            let ext = answer
                .headers
                .get("sec-websocket-extensions")
                .and_then(|v| v.to_str().ok());
            o.upgraded(ext);
            Box::new(Watched(o))
        }
        None => Box::new(NoObserver),
    }
}

impl Proxy {
    /// Forwards a WebSocket handshake; on `101`, relays the tunnel in its own task.
    pub(super) async fn upgrade(
        &self,
        mut parts: http::request::Parts,
        body: Bytes,
        timing: Timing,
        parent: &opentelemetry::Context,
    ) -> Response<ResponseBody> {
        let work = std::time::Instant::now();
        let chosen = self.routes.choose(path_and_query(&parts));
        let client_side = parts.extensions.remove::<OnUpgrade>();
        let hold = parts.extensions.remove::<ConnectionHold>();
        let kept = upgrade_headers(&parts.headers);
        let mut call = prepare::tunnel(&chosen, &parts, self.prepare_options());
        // a Realtime session's span is the tunnel's: it goes upstream in `traceparent`
        let mut realtime = is_realtime(parts.uri.path()).then(|| {
            RealtimeObserver::new(
                self.recorder.clone(),
                parent,
                call.provider.clone(),
                call.server_address.clone(),
                call.server_port,
                parts.uri.path(),
                parts.uri.query(),
            )
            .with_attribution(call.who.clone())
        });
        let cx = match &realtime {
            Some(o) => o.context().clone(),
            None => spans::start(self.recorder.tracer(), parent, &call, timing.wall),
        };
        let traceresponse = spans::traceresponse(&cx);
        call.trace = Some(cx);
        let mut up = match request::build(&chosen, parts, body, &call) {
            Ok(up) => up,
            Err(e) => return self.reject(call, e, timing.started),
        };
        restore(up.headers_mut(), kept);
        call.overhead += work.elapsed();
        let mut resp =
            match send::send_on(&chosen.route.upgrade_client, up, self.read_timeout).await {
                Ok(r) => r,
                Err(e) => return self.reject(call, e, timing.started),
            };
        let client_side = match client_side {
            Some(c) if resp.status() == StatusCode::SWITCHING_PROTOCOLS => c,
            _ => {
                if let Some(mut o) = realtime.take() {
                    // refused (or not upgradable): the session span ends with the status
                    o.closed(SessionEnd::Refused(resp.status().as_u16()));
                    call.trace = None;
                }
                return respond::tap(
                    resp.map(retry::Prefixed::new),
                    call,
                    traceresponse,
                    respond::TapOptions {
                        recorder: &self.recorder,
                        started: timing.started,
                        read_timeout: self.read_timeout,
                    },
                );
            }
        };
        let server_side = hyper::upgrade::on(&mut resp);
        let (mut head, _) = resp.into_parts();
        let kept = upgrade_headers(&head.headers);
        strip_hop_by_hop(&mut head.headers);
        restore(&mut head.headers, kept);
        if let Some(v) = traceresponse {
            head.headers.insert(TRACERESPONSE, v);
        }
        call.status = Some(head.status.as_u16());
        call.request_id = head
            .headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        // taken now, before hyper's connection future ends with the handover
        let held = hold.and_then(|h| h.take());
        let observer = observer_for(realtime, &head);
        // boxed: only its observer is looked at per frame (through a box of its own),
        // and a session taken by value would sit twice in the task's future, which
        // tokio copies whole when it spawns it and when it finishes
        let session = Box::new(Session {
            call,
            observer,
            recorder: self.recorder.clone(),
            stop: self.stop.clone(),
            started: timing.started,
        });
        tokio::spawn(async move {
            session.run(client_side, server_side).await;
            drop(held);
        });
        Response::from_parts(
            head,
            Empty::new().map_err(|never| match never {}).boxed_unsync(),
        )
    }
}

/// One open tunnel and what is recorded when it ends.
struct Session {
    call: Call,
    observer: Box<dyn TunnelObserver>,
    recorder: std::sync::Arc<crate::telemetry::Recorder>,
    stop: tokio::sync::watch::Receiver<bool>,
    started: std::time::Instant,
}

impl Session {
    async fn run(mut self: Box<Self>, client_side: OnUpgrade, server_side: OnUpgrade) {
        let how = match tokio::join!(client_side, server_side) {
            (Ok(c), Ok(s)) => {
                tunnel::relay(
                    client_side_io(c),
                    server_side_io(s),
                    self.observer.as_mut(),
                    &self.stop,
                )
                .await
            }
            (c, s) => {
                if let Some(e) = c.err().or(s.err()) {
                    tracing::debug!(error = %e, "an upgrade did not complete");
                }
                self.call.outcome = Outcome::ConnectionError;
                Closed::Failed
            }
        };
        self.observer.closed(how, &mut self.call);
        self.call.duration = self.started.elapsed();
        self.recorder.record_soon(self.call);
    }
}

/// The client's side of a tunnel: its socket when it is a plain one of ours.
fn client_side_io(up: Upgraded) -> Side {
    match crate::listener::upgraded_socket(up) {
        Ok((tcp, read)) => Side {
            io: Io::Tcp(tcp),
            read,
        },
        Err(up) => as_handed_over(up),
    }
}

/// The upstream's side of a tunnel: its socket when the connection is plain TCP.
fn server_side_io(up: Upgraded) -> Side {
    match crate::upstream::upgraded_socket(up) {
        UpgradedIo::Tcp(tcp, read) => Side {
            io: Io::Tcp(tcp),
            read,
        },
        UpgradedIo::Tls(tls, read) => Side {
            io: Io::Other(tls),
            read,
        },
        UpgradedIo::Other(up) => as_handed_over(up),
    }
}

/// A side of any other kind, as hyper hands it over (it gives out what it read first).
fn as_handed_over(up: Upgraded) -> Side {
    Side {
        io: Io::Other(Box::new(TokioIo::new(up))),
        read: Bytes::new(),
    }
}
