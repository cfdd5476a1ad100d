//! Fault and timing controls: the failures and delays a proxy has to survive,
//! chosen by the request's model name so any client can ask for them.
//!
//! A canned failure (429, 500, truncated JSON) replaces the answer; a stream
//! fault (broken SSE, a stream that hangs) alters it; `demo-slow-<ms>` and
//! [`DemoOptions::first_byte_delay`] hold the response head back, and
//! [`DemoOptions::chunk_delay`] paces streams. Stream tasks stop as soon as the
//! client goes away, so a test can prove that a disconnect reaches upstream.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use tokio::sync::mpsc;

use super::text::Fnv;
use super::wire::{ApiError, DONE, Outcome, Payload};
use super::{DemoOptions, State, shutdown_requested};

/// Counts a generator task as alive for as long as it exists.
struct LiveGuard(Arc<AtomicUsize>);

impl LiveGuard {
    fn new(counter: &Arc<AtomicUsize>) -> Self {
        counter.fetch_add(1, Ordering::SeqCst);
        Self(Arc::clone(counter))
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Sends `events` with `delay` between consecutive ones. Stops as soon as the
/// receiving body is dropped (client gone). With `hang`, keeps the stream open
/// after the events until the client leaves or the server shuts down.
pub(super) fn spawn_stream(
    events: Vec<Bytes>,
    delay: Duration,
    hang: bool,
    state: &State,
) -> mpsc::Receiver<Bytes> {
    let (tx, rx) = mpsc::channel(8);
    let guard = LiveGuard::new(&state.live_streams);
    let mut shutdown = state.shutdown.clone();
    tokio::spawn(async move {
        let _guard = guard;
        for (i, event) in events.into_iter().enumerate() {
            if i > 0 && !delay.is_zero() {
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = tx.closed() => return,
                }
            }
            if tx.send(event).await.is_err() {
                return;
            }
        }
        if hang {
            tokio::select! {
                () = tx.closed() => {}
                () = shutdown_requested(&mut shutdown) => {}
            }
        }
    });
    rx
}

/// The answer of a fault model that replaces the call's: a rate limit (with
/// `retry-after`), a server error, or JSON cut off mid-object.
pub(super) fn canned_failure(model: &str) -> Option<Outcome> {
    let fault_hash = Fnv::new().str(model).finish();
    match model {
        "demo-error-429" => {
            let err = ApiError {
                status: StatusCode::TOO_MANY_REQUESTS,
                message: "Rate limit reached for demo".to_owned(),
                kind: "requests",
                param: None,
                code: Some("rate_limit_exceeded"),
            };
            let mut outcome = Outcome::error(fault_hash, &err);
            outcome.retry_after = true;
            Some(outcome)
        }
        "demo-error-500" => {
            let err = ApiError {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                message: "The server had an error".to_owned(),
                kind: "server_error",
                param: None,
                code: None,
            };
            Some(Outcome::error(fault_hash, &err))
        }
        "demo-malformed-json" => {
            let body = br#"{"id":"chatcmpl-broken","choices":["#.to_vec();
            Some(Outcome::json(StatusCode::OK, fault_hash, body))
        }
        _ => None,
    }
}

/// Stream faults apply to the routes that can stream.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum StreamFault {
    None,
    Broken,
    Hang,
}

impl StreamFault {
    pub(super) fn of(model: &str) -> Self {
        match model {
            "demo-broken-sse" => StreamFault::Broken,
            "demo-hang-stream" => StreamFault::Hang,
            _ => StreamFault::None,
        }
    }

    /// The stream `payload` as this fault alters it (a JSON payload is left alone).
    pub(super) fn apply(self, payload: Payload) -> Payload {
        match (payload, self) {
            (Payload::Stream { events, .. }, StreamFault::Broken) => Payload::Stream {
                events: break_stream(events),
                hang: false,
            },
            (Payload::Stream { mut events, .. }, StreamFault::Hang) => {
                events.truncate(1);
                Payload::Stream { events, hang: true }
            }
            (payload, _) => payload,
        }
    }
}

/// Two valid events, an unparseable one, one more valid event, then `[DONE]`.
fn break_stream(events: Vec<Bytes>) -> Vec<Bytes> {
    let mut valid = events.into_iter().filter(|e| e.as_ref() != DONE);
    let mut out: Vec<Bytes> = valid.by_ref().take(2).collect();
    out.push(Bytes::from_static(b"data: {not json}\n\n"));
    out.extend(valid.next());
    out.push(Bytes::from_static(DONE));
    out
}

/// The extra latency `demo-slow-<ms>` asks for.
pub(super) fn slow_delay(model: &str) -> Duration {
    model
        .strip_prefix("demo-slow-")
        .and_then(|ms| ms.parse::<u64>().ok())
        .map(Duration::from_millis)
        .unwrap_or_default()
}

/// Holds the response head back by the configured first-byte delay plus `extra`.
pub(super) async fn hold_first_byte(opts: &DemoOptions, extra: Duration) {
    let delay = opts.first_byte_delay + extra;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demo::testkit::*;
    use crate::demo::{DemoOptions, DemoUpstream};
    use serde_json::Value;
    use std::net::SocketAddr;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    #[tokio::test(flavor = "multi_thread")]
    async fn fault_models() {
        let up = upstream().await;
        let call = |model: &str, stream: bool| serde_json::json!({"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream});
        let reply = post(&up, "/v1/chat/completions", &call("demo-error-429", false)).await;
        assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(reply.header("retry-after"), "7");
        assert_eq!(
            reply.text(),
            r#"{"error":{"message":"Rate limit reached for demo","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#
        );
        let reply = post(
            &up,
            "/v1/embeddings",
            &serde_json::json!({"model": "demo-error-500"}),
        )
        .await;
        assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            reply.text(),
            r#"{"error":{"message":"The server had an error","type":"server_error","param":null,"code":null}}"#
        );
        let reply = post(
            &up,
            "/v1/chat/completions",
            &call("demo-malformed-json", false),
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.header("content-type"), "application/json");
        assert_eq!(reply.text(), r#"{"id":"chatcmpl-broken","choices":["#);

        let reply = post(&up, "/v1/chat/completions", &call("demo-broken-sse", true)).await;
        assert_eq!(reply.header("content-type"), "text/event-stream");
        let events = data_events(reply.text());
        assert_eq!(events.len(), 5);
        assert_eq!(events[2], "{not json}");
        assert_eq!(events[4], "[DONE]");
        for e in [events[0], events[1], events[3]] {
            serde_json::from_str::<Value>(e).unwrap();
        }

        let started = std::time::Instant::now();
        let reply = post(&up, "/v1/chat/completions", &call("demo-slow-150", false)).await;
        assert!(started.elapsed() >= Duration::from_millis(150));
        assert_eq!(reply.json()["model"], "demo-slow-150");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn first_byte_delay_applies_to_model_calls() {
        let opts = DemoOptions {
            chunk_delay: Duration::ZERO,
            first_byte_delay: Duration::from_millis(100),
        };
        let up = DemoUpstream::start(SocketAddr::from(([127, 0, 0, 1], 0)), opts)
            .await
            .unwrap();
        let started = std::time::Instant::now();
        post(&up, "/v1/chat/completions", &chat_body(false, None)).await;
        assert!(started.elapsed() >= Duration::from_millis(100));
    }

    async fn wait_for_no_streams(up: &DemoUpstream) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while up.live_streams.load(Ordering::SeqCst) != 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "stream task still alive"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Sends a raw HTTP/1.1 request and reads until the first SSE event arrived.
    async fn open_stream(up: &DemoUpstream, body: &Value) -> tokio::net::TcpStream {
        let body = serde_json::to_vec(body).unwrap();
        let mut conn = tokio::net::TcpStream::connect(up.addr()).await.unwrap();
        let head = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: demo\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        conn.write_all(head.as_bytes()).await.unwrap();
        conn.write_all(&body).await.unwrap();
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&seen).contains("\n\n")
            || !String::from_utf8_lossy(&seen).contains("data: ")
        {
            let n = conn.read(&mut buf).await.unwrap();
            assert!(n > 0, "connection closed early");
            seen.extend_from_slice(&buf[..n]);
        }
        conn
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn hang_stream_stops_when_the_client_goes_away() {
        let up = upstream().await;
        let body = serde_json::json!({"model": "demo-hang-stream", "messages": [{"role": "user", "content": "hi"}]});
        let mut conn = open_stream(&up, &body).await;
        // Nothing else arrives.
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_millis(200), conn.read(&mut buf)).await;
        assert!(read.is_err(), "hang stream sent more data");
        assert_eq!(up.live_streams.load(Ordering::SeqCst), 1);
        drop(conn);
        wait_for_no_streams(&up).await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn slow_stream_stops_when_the_client_goes_away() {
        let opts = DemoOptions {
            chunk_delay: Duration::from_millis(200),
            first_byte_delay: Duration::ZERO,
        };
        let up = DemoUpstream::start(SocketAddr::from(([127, 0, 0, 1], 0)), opts)
            .await
            .unwrap();
        let conn = open_stream(&up, &chat_body(true, None)).await;
        assert_eq!(up.live_streams.load(Ordering::SeqCst), 1);
        drop(conn);
        wait_for_no_streams(&up).await;
    }
}
