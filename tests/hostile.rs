//! Hostile clients against the real binary (issue 11; docs/configuration.md "Limits and hostile input"): slowloris heads,
//! stalled bodies, idle keep-alives, more connections than `--max-connections`,
//! huge headers and h2c with many streams. Each test runs its own `tokentap
//! --demo`, warms it up, attacks it, and then requires that it still answers
//! `/health` and a normal chat completion within a generous deadline and that
//! its resident memory is back within a few MiB of the warmed-up baseline — an
//! attack may cost time, never the process or its memory.

#[path = "support/blackbox/mod.rs"]
mod blackbox;

use std::net::SocketAddr;
use std::time::Duration;

use blackbox::child::Tokentap;
use blackbox::wire::{self, ANSWER_DEADLINE, NORMAL_CHAT, NORMAL_STREAM, within};
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// How far above its warmed-up baseline tokentap's RSS may stay after an attack.
const RSS_SLACK_KIB: u64 = 8 * 1024;

/// Normal traffic until allocator pools and connection buffers have their
/// steady size; returns the RSS baseline (KiB).
async fn warm_up(tt: &mut Tokentap, streams: bool) -> u64 {
    for _ in 0..20 {
        let h = wire::get(tt.addr, "/health").await;
        assert_eq!(h.status, StatusCode::OK);
        let c = wire::post_json(tt.addr, "/v1/chat/completions", NORMAL_CHAT).await;
        assert_eq!(c.status, StatusCode::OK, "{}", c.text());
        if streams {
            let s = wire::post_json(tt.addr, "/v1/chat/completions", NORMAL_STREAM).await;
            assert!(
                s.text().trim_end().ends_with("data: [DONE]"),
                "{}",
                s.text()
            );
        }
        wire::metrics(tt.addr).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    tt.rss_kib()
}

/// Still serving, and RSS back within [`RSS_SLACK_KIB`] of `baseline` (polled: freed
/// memory goes back to the OS a moment after the connections close).
async fn assert_recovered(tt: &mut Tokentap, baseline: u64) {
    wire::assert_serves(tt).await;
    let mut rss = tt.rss_kib();
    for _ in 0..50 {
        if rss <= baseline + RSS_SLACK_KIB {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        rss = tt.rss_kib();
    }
    assert!(
        rss <= baseline + RSS_SLACK_KIB,
        "RSS {rss} KiB stayed above the warmed-up baseline {baseline} KiB + {RSS_SLACK_KIB} KiB"
    );
    // measured figures for the record (`cargo test --test hostile -- --nocapture`)
    eprintln!("RSS after the attack: {rss} KiB (warmed-up baseline {baseline} KiB)");
}

async fn connect(addr: SocketAddr) -> TcpStream {
    within(ANSWER_DEADLINE, "connect", TcpStream::connect(addr))
        .await
        .expect("connect")
}

/// The start of an HTTP/1.1 request head that never ends.
const H1_HEAD: &[u8] = b"POST /v1/chat/completions HTTP/1.1\r\nHost: tokentap.test\r\nX-Slow: ";

/// The h2c connection preface, then nothing that completes a request.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Sends the first `sent` bytes of `head` at once, then the rest a byte every
/// `gap` (and `a`s after it), never finishing a request, until tokentap closes
/// the connection; `true` if it did within `limit`.
async fn trickle_head(
    addr: SocketAddr,
    head: &'static [u8],
    sent: usize,
    gap: Duration,
    limit: Duration,
) -> bool {
    let mut s = connect(addr).await;
    if s.write_all(&head[..sent]).await.is_err() {
        return true;
    }
    let (mut r, mut w) = s.split();
    let until = tokio::time::Instant::now() + limit;
    let trickle = async {
        for i in sent.. {
            tokio::time::sleep(gap).await;
            let byte = head.get(i..i + 1).unwrap_or(b"a");
            if w.write_all(byte).await.is_err() {
                return;
            }
        }
    };
    let closed = async {
        let mut buf = [0u8; 1024];
        loop {
            match tokio::io::AsyncReadExt::read(&mut r, &mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {} // e.g. a 408 before the close
            }
        }
    };
    tokio::select! {
        () = tokio::time::sleep_until(until) => false,
        () = trickle => true,
        () = closed => true,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn slowloris_heads_are_closed_after_the_header_timeout() {
    let mut tt = Tokentap::demo(&["--header-timeout", "1s"]);
    let baseline = warm_up(&mut tt, true).await;
    let addr = tt.addr;
    let limit = Duration::from_secs(15);
    // issue 11 kept three trickling heads open for as long as it tried
    let line = H1_HEAD.len() - "X-Slow: ".len();
    let mut trickling = Vec::new();
    for _ in 0..3 {
        let t = trickle_head(addr, H1_HEAD, line, Duration::from_millis(300), limit);
        trickling.push((
            "an HTTP/1.1 head trickled after its request line",
            tokio::spawn(t),
        ));
    }
    // heads trickled from their very first byte: a server that waits for some bytes
    // before starting its clock (to tell HTTP/1.1 from h2c by the preface, say)
    // would hold the h2c one for the 19 s its 24 bytes take
    let gap = Duration::from_millis(800);
    trickling.push((
        "an HTTP/1.1 head trickled from its first byte",
        tokio::spawn(trickle_head(addr, H1_HEAD, 0, gap, limit)),
    ));
    trickling.push((
        "an h2c preface trickled from its first byte",
        tokio::spawn(trickle_head(addr, H2_PREFACE, 0, gap, limit)),
    ));
    // a connection that never sends a byte has not sent a complete head either
    let silent = tokio::spawn(async move {
        let mut s = connect(addr).await;
        wire::read_until_closed(&mut s, limit).await
    });
    for (what, t) in trickling {
        assert!(
            t.await.expect("task"),
            "{what} was still open 15 s after a --header-timeout of 1s"
        );
    }
    let silent = silent.await.expect("task");
    assert!(
        silent.is_ok(),
        "a connection that sent nothing was still open 15 s after a --header-timeout of 1s"
    );
    assert_recovered(&mut tt, baseline).await;
}

/// `head` then `body` written in `pieces` parts, `gap` apart; the response.
async fn send_slowly(
    addr: SocketAddr,
    head: String,
    body: &[u8],
    pieces: usize,
    gap: Duration,
) -> wire::RawResponse {
    let mut s = connect(addr).await;
    s.write_all(head.as_bytes()).await.expect("write head");
    for part in body.chunks(body.len().div_ceil(pieces)) {
        tokio::time::sleep(gap).await;
        s.write_all(part).await.expect("write body");
    }
    wire::read_one_response(&mut s, ANSWER_DEADLINE)
        .await
        .expect("a response")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_request_body_gets_408_request_timeout() {
    let mut tt = Tokentap::demo(&["--request-timeout", "1s"]);
    let baseline = warm_up(&mut tt, true).await;
    let addr = tt.addr;
    let body = NORMAL_CHAT.as_bytes();
    let head = |framing: &str| {
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: tokentap.test\r\ncontent-type: application/json\r\nconnection: close\r\n{framing}\r\n"
        )
    };

    // a slow but steady body (a byte group every 200 ms, 2 s in all) is served:
    // the deadline is on the wait for the next byte, not on the whole body
    let steady = send_slowly(
        addr,
        head(&format!("content-length: {}\r\n", body.len())),
        body,
        10,
        Duration::from_millis(200),
    )
    .await;
    assert_eq!(
        steady.status,
        200,
        "{}",
        String::from_utf8_lossy(&steady.body)
    );
    assert!(steady.json()["usage"]["total_tokens"].as_u64().is_some());

    // a body that stops arriving: 408, OpenAI-shaped, code request_timeout
    for framing in [
        format!("content-length: {}\r\n", body.len()),
        "transfer-encoding: chunked\r\n".to_owned(),
    ] {
        let mut s = connect(addr).await;
        s.write_all(head(&framing).as_bytes()).await.expect("head");
        let first = &body[..20];
        if framing.starts_with("transfer") {
            s.write_all(format!("{:x}\r\n", first.len()).as_bytes())
                .await
                .expect("chunk size");
            s.write_all(first).await.expect("chunk");
            s.write_all(b"\r\n").await.expect("chunk end");
        } else {
            s.write_all(first).await.expect("body start");
        }
        let r = wire::read_one_response(&mut s, Duration::from_secs(15))
            .await
            .unwrap_or_else(|| {
                panic!("no answer 15 s into a stalled body ({framing:?}) with --request-timeout 1s")
            });
        assert_eq!(
            r.status,
            408,
            "{framing:?}: {}",
            String::from_utf8_lossy(&r.body)
        );
        let v = r.json();
        assert_eq!(v["error"]["code"], "request_timeout", "{v}");
        assert!(v["error"]["message"].is_string(), "{v}");
        assert!(v["error"]["type"].is_string(), "{v}");
        assert!(v["error"]["param"].is_null(), "{v}");
    }
    assert_recovered(&mut tt, baseline).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_keep_alive_connection_is_closed_but_a_slow_stream_is_not() {
    let mut tt = Tokentap::start(&[
        "--demo",
        "--demo-chunk-delay",
        "250ms",
        "--idle-timeout",
        "1s",
    ]);
    let baseline = warm_up(&mut tt, false).await;
    let addr = tt.addr;

    let mut s = connect(addr).await;
    for _ in 0..2 {
        // kept alive between requests…
        s.write_all(b"GET /health HTTP/1.1\r\nHost: tokentap.test\r\n\r\n")
            .await
            .expect("write");
        let r = wire::read_one_response(&mut s, ANSWER_DEADLINE)
            .await
            .expect("health on a kept-alive connection");
        assert_eq!(r.status, 200);
    }
    // …and closed once idle past --idle-timeout
    let idle = wire::read_until_closed(&mut s, Duration::from_secs(15)).await;
    assert!(
        idle.is_ok(),
        "an idle keep-alive connection was still open 15 s after an --idle-timeout of 1s"
    );

    // a connection with a response in flight is not idle: a stream whose chunks
    // come 250 ms apart for longer than the idle timeout still completes
    let req = wire::request(
        "POST",
        "/v1/chat/completions",
        &[("content-type", "application/json")],
        r#"{"model":"gpt-4o-mini","stream":true,"max_tokens":8,"messages":[{"role":"user","content":"Take your time."}]}"#,
    );
    let resp = wire::open(addr, req).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body = wire::collect(resp.into_body(), Duration::from_secs(30)).await;
    let text = String::from_utf8_lossy(&body);
    assert!(
        text.matches("data: ").count() >= 6,
        "a multi-chunk stream: {text}"
    );
    assert!(
        text.trim_end().ends_with("data: [DONE]"),
        "the stream completes: {text}"
    );
    assert_recovered(&mut tt, baseline).await;
}

const HEALTH_KEEP_ALIVE: &[u8] = b"GET /health HTTP/1.1\r\nHost: tokentap.test\r\n\r\n";
const HEALTH_CLOSE: &[u8] =
    b"GET /health HTTP/1.1\r\nHost: tokentap.test\r\nconnection: close\r\n\r\n";

async fn health_on(s: &mut TcpStream, req: &[u8], what: &str) {
    s.write_all(req).await.expect("write");
    let r = wire::read_one_response(s, ANSWER_DEADLINE)
        .await
        .unwrap_or_else(|| panic!("{what}: no /health answer"));
    assert_eq!(r.status, 200, "{what}");
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_past_max_connections_wait_and_none_is_dropped() {
    const MAX: usize = 4;
    let mut tt = Tokentap::demo(&["--max-connections", "4"]);
    let baseline = warm_up(&mut tt, true).await;
    let addr = tt.addr;

    let mut served = Vec::new();
    for i in 0..MAX {
        let mut s = connect(addr).await;
        health_on(&mut s, HEALTH_KEEP_ALIVE, &format!("connection {i}")).await;
        served.push(s);
    }
    // one more: the kernel completes the handshake, tokentap must not serve it yet…
    let mut extra = connect(addr).await;
    extra.write_all(HEALTH_CLOSE).await.expect("write");
    match wire::read_until_closed(&mut extra, Duration::from_millis(1500)).await {
        Err(got) => assert!(
            got.is_empty(),
            "connection {} of --max-connections {MAX} was served: {:?}",
            MAX + 1,
            String::from_utf8_lossy(&got)
        ),
        Ok(_) => panic!("the connection past --max-connections was closed instead of waiting"),
    }
    // …more waiting ones do not crash it either…
    let mut queued = Vec::new();
    for _ in 0..30 {
        let mut s = connect(addr).await;
        s.write_all(HEALTH_CLOSE).await.expect("write");
        queued.push(s);
    }
    // …and none of the accepted ones was dropped
    for (i, s) in served.iter_mut().enumerate() {
        health_on(
            s,
            HEALTH_KEEP_ALIVE,
            &format!("accepted connection {i} while others wait"),
        )
        .await;
    }
    // closing one lets the waiting one in
    drop(served.remove(0));
    let r = wire::read_one_response(&mut extra, ANSWER_DEADLINE)
        .await
        .expect("the waiting connection is served once a slot frees");
    assert_eq!(r.status, 200);
    drop(extra);
    for (i, s) in served.iter_mut().enumerate() {
        health_on(
            s,
            HEALTH_KEEP_ALIVE,
            &format!("accepted connection {} after the swap", i + 1),
        )
        .await;
    }
    drop(served);
    // every queued one is served in turn (each closes after its answer)
    for (i, s) in queued.iter_mut().enumerate() {
        let r = wire::read_one_response(s, Duration::from_secs(20))
            .await
            .unwrap_or_else(|| panic!("queued connection {i} never served"));
        assert_eq!(r.status, 200);
    }
    drop(queued);
    assert_recovered(&mut tt, baseline).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn huge_request_headers_get_431_or_a_close() {
    let mut tt = Tokentap::demo(&[]);
    let baseline = warm_up(&mut tt, true).await;
    let addr = tt.addr;
    let mib = "a".repeat(1 << 20);
    let one_big = |path: &str| {
        format!("POST {path} HTTP/1.1\r\nHost: tokentap.test\r\ncontent-type: application/json\r\nx-big: {mib}\r\ncontent-length: {}\r\n\r\n{NORMAL_CHAT}", NORMAL_CHAT.len()).into_bytes()
    };
    let many_small = |path: &str| {
        let mut h = format!(
            "POST {path} HTTP/1.1\r\nHost: tokentap.test\r\ncontent-type: application/json\r\n"
        );
        for i in 0..16_384 {
            h.push_str(&format!("x-h-{i}: {}\r\n", "b".repeat(48)));
        }
        h.push_str(&format!(
            "content-length: {}\r\n\r\n{NORMAL_CHAT}",
            NORMAL_CHAT.len()
        ));
        h.into_bytes()
    };
    let mut attacks = Vec::new();
    for path in ["/v1/chat/completions", "/health", "/chat"] {
        attacks.push(tokio::spawn(wire::send_raw(addr, one_big(path))));
        attacks.push(tokio::spawn(wire::send_raw(addr, many_small(path))));
    }
    for a in attacks {
        match a.await.expect("task") {
            None | Some(431) => {}
            Some(other) => panic!("1 MiB of request headers got {other}, not 431 or a close"),
        }
        tt.assert_running();
    }
    assert_recovered(&mut tt, baseline).await;
}

fn h2_chat(addr: SocketAddr, body: &'static str) -> Request<Full<Bytes>> {
    Request::post(format!("http://{addr}/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .expect("request")
}

/// `n` concurrent chat completions (every third streamed) on one h2c connection; all complete.
async fn h2_round(addr: SocketAddr, n: usize) {
    let send = wire::h2c(addr).await;
    let calls: Vec<_> = (0..n)
        .map(|i| {
            let mut send = send.clone();
            tokio::spawn(async move {
                let stream = i % 3 == 0;
                let req = h2_chat(addr, if stream { NORMAL_STREAM } else { NORMAL_CHAT });
                let resp = send.send_request(req).await.expect("h2 response");
                assert_eq!(resp.status(), StatusCode::OK);
                let body = resp
                    .into_body()
                    .collect()
                    .await
                    .expect("h2 body")
                    .to_bytes();
                let text = String::from_utf8_lossy(&body);
                if stream {
                    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
                } else {
                    assert!(text.contains("\"usage\""), "{text}");
                }
            })
        })
        .collect();
    within(Duration::from_secs(60), "h2c round", async {
        for c in calls {
            c.await.expect("h2 call");
        }
    })
    .await;
}

/// `n` concurrent streamed calls on one h2c connection, each reset by the client
/// (RST_STREAM CANCEL) once its answer has started; returns the connection.
async fn h2_resets(
    addr: SocketAddr,
    n: usize,
) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
    let send = wire::h2c(addr).await;
    let resets: Vec<_> = (0..n)
        .map(|_| {
            let mut send = send.clone();
            tokio::spawn(async move {
                let resp = send
                    .send_request(h2_chat(addr, NORMAL_STREAM))
                    .await
                    .expect("h2 response");
                assert_eq!(resp.status(), StatusCode::OK);
                drop(resp);
            })
        })
        .collect();
    within(Duration::from_secs(60), "h2c resets", async {
        for r in resets {
            r.await.expect("reset call");
        }
    })
    .await;
    send
}

#[tokio::test(flavor = "multi_thread")]
async fn h2c_with_many_concurrent_and_reset_streams() {
    const STREAMS: usize = 200;
    let mut tt = Tokentap::demo(&[]);
    let _ = warm_up(&mut tt, true).await;
    let addr = tt.addr;
    // Many concurrent streams are normal h2c traffic, and the allocator keeps what
    // their first round made it map: the baseline is taken after two rounds, so
    // what is measured is growth from repeating them (a leak), not first use.
    for _ in 0..2 {
        h2_round(addr, STREAMS).await;
        drop(h2_resets(addr, STREAMS).await);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let baseline = tt.rss_kib();

    for _ in 0..3 {
        // many concurrent streams on one connection, all served…
        h2_round(addr, STREAMS).await;
        tt.assert_running();
        // …and as many reset by the client once their answer has started
        let mut send = h2_resets(addr, STREAMS).await;
        // the connection that reset them still works
        let health = within(
            ANSWER_DEADLINE,
            "/health over h2c",
            send.send_request(
                Request::get(format!("http://{addr}/health"))
                    .body(Full::new(Bytes::new()))
                    .expect("request"),
            ),
        )
        .await
        .expect("h2 response");
        assert_eq!(health.status(), StatusCode::OK);
    }
    assert_recovered(&mut tt, baseline).await;
}
