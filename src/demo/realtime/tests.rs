//! A scripted session over a real socket with raw frames.

use super::*;
use crate::demo::testkit::upstream;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// A masked client frame, compressed with `deflate` when given.
fn client_frame(opcode: u8, payload: &[u8], deflate: Option<&mut Compress>) -> Vec<u8> {
    let (rsv1, payload) = match deflate {
        Some(c) => {
            let mut out = Vec::with_capacity(payload.len() + 64);
            c.compress_vec(payload, &mut out, FlushCompress::Sync)
                .unwrap();
            out.truncate(out.len() - 4);
            (0x40, out)
        }
        None => (0, payload.to_vec()),
    };
    let mask = [9u8, 8, 7, 6];
    let mut out = vec![0x80 | rsv1 | opcode];
    match payload.len() {
        n @ 0..=125 => out.push(0x80 | n as u8),
        n => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

struct Client {
    tcp: TcpStream,
    inflater: Option<Decompress>,
    deflater: Option<Compress>,
    compressed_seen: bool,
}

impl Client {
    /// Connects and upgrades; returns the client and the 101's head.
    async fn connect(path: &str, extra: &str) -> (Client, String, crate::demo::DemoUpstream) {
        let up = upstream().await;
        let mut tcp = TcpStream::connect(up.addr()).await.unwrap();
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
        );
        tcp.write_all(req.as_bytes()).await.unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            head.push(tcp.read_u8().await.unwrap());
        }
        let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
        let deflate = head.contains("permessage-deflate");
        let client = Client {
            tcp,
            inflater: deflate.then(|| Decompress::new(false)),
            deflater: deflate.then(|| Compress::new(Compression::default(), false)),
            compressed_seen: false,
        };
        (client, head, up)
    }

    async fn send(&mut self, event: Value) {
        let frame = client_frame(1, event.to_string().as_bytes(), self.deflater.as_mut());
        self.tcp.write_all(&frame).await.unwrap();
    }

    /// The next frame: opcode and (inflated) payload.
    async fn frame(&mut self) -> (u8, Vec<u8>) {
        let b0 = self.tcp.read_u8().await.unwrap();
        let b1 = self.tcp.read_u8().await.unwrap();
        assert_eq!(b1 & 0x80, 0, "server frames are not masked");
        assert_ne!(b0 & 0x80, 0, "server messages are not fragmented");
        let len = match b1 & 0x7f {
            126 => u64::from(self.tcp.read_u16().await.unwrap()),
            127 => self.tcp.read_u64().await.unwrap(),
            n => u64::from(n),
        };
        let mut payload = vec![0; len as usize];
        self.tcp.read_exact(&mut payload).await.unwrap();
        if b0 & 0x40 != 0 {
            self.compressed_seen = true;
            payload.extend_from_slice(&[0, 0, 0xff, 0xff]);
            let mut out = Vec::with_capacity(1 << 16);
            let inflater = self.inflater.as_mut().expect("RSV1 without deflate");
            inflater
                .decompress_vec(&payload, &mut out, FlushDecompress::Sync)
                .unwrap();
            payload = out;
        }
        (b0 & 0x0f, payload)
    }

    async fn event(&mut self) -> Value {
        let (opcode, payload) = self.frame().await;
        assert_eq!(opcode, 1, "{}", String::from_utf8_lossy(&payload));
        serde_json::from_slice(&payload).unwrap()
    }

    /// Events up to and including the next `response.done`.
    async fn until_done(&mut self) -> Vec<Value> {
        let mut events = Vec::new();
        loop {
            let event = self.event().await;
            let done = event["type"] == "response.done";
            events.push(event);
            if done {
                return events;
            }
        }
    }
}

fn kinds(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["type"].as_str().unwrap()).collect()
}

fn user_item(text: &str) -> Value {
    json!({"type": "conversation.item.create", "item": {"type": "message", "role": "user",
        "content": [{"type": "input_text", "text": text}]}})
}

#[tokio::test(flavor = "multi_thread")]
async fn compressed_beta_session_with_text_audio_and_cancel() {
    let (mut c, head, _up) = Client::connect(
        "/v1/realtime?model=gpt-4o-realtime-preview",
        "OpenAI-Beta: realtime=v1\r\nSec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n",
    )
    .await;
    assert!(head.starts_with("http/1.1 101 "), "{head}");
    assert!(
        head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{head}"
    );
    assert!(
        head.contains("sec-websocket-extensions: permessage-deflate\r\n"),
        "{head}"
    );

    let created = c.event().await;
    assert_eq!(created["type"], "session.created");
    assert_eq!(created["session"]["model"], "gpt-4o-realtime-preview");
    assert!(
        created["session"]["id"]
            .as_str()
            .unwrap()
            .starts_with("sess_")
    );

    c.send(json!({"type": "session.update", "session": {"modalities": ["text"], "instructions": "hi"}}))
        .await;
    let updated = c.event().await;
    assert_eq!(updated["type"], "session.updated");
    assert_eq!(updated["session"]["modalities"], json!(["text"]));

    c.send(user_item("one two three")).await;
    let item = c.event().await;
    assert_eq!(item["type"], "conversation.item.created");
    assert_eq!(item["item"]["role"], "user");

    c.send(json!({"type": "response.create"})).await;
    let events = c.until_done().await;
    let k = kinds(&events);
    assert_eq!(
        k[..3],
        [
            "response.created",
            "response.output_item.added",
            "response.content_part.added"
        ]
    );
    let deltas: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "response.text.delta")
        .collect();
    let text: String = deltas
        .iter()
        .map(|e| e["delta"].as_str().unwrap())
        .collect();
    assert!(text.starts_with("You said 3 words. "), "{text}");
    assert_eq!(
        k[3 + deltas.len()..],
        [
            "response.text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.done"
        ]
    );
    let done = events.last().unwrap();
    assert_eq!(done["response"]["status"], "completed");
    let usage = &done["response"]["usage"];
    // prompt: 3 + (4 + 3 words); output: one token per delta, text only
    assert_eq!(usage["input_tokens"], 10);
    assert_eq!(usage["output_tokens"], deltas.len());
    assert_eq!(usage["total_tokens"], 10 + deltas.len());
    assert_eq!(usage["output_token_details"]["audio_tokens"], 0);
    assert_eq!(usage["input_token_details"]["cached_tokens"], 0);
    let first_output = deltas.len() as u64;

    // a second, audio reply: the first turn is cached
    c.send(user_item("four five")).await;
    assert_eq!(c.event().await["type"], "conversation.item.created");
    c.send(json!({"type": "response.create", "response": {"modalities": ["audio", "text"]}}))
        .await;
    let events = c.until_done().await;
    let k = kinds(&events);
    assert!(
        k.contains(&"response.audio.delta") && k.contains(&"response.audio.done"),
        "{k:?}"
    );
    let transcript = k
        .iter()
        .filter(|t| **t == "response.audio_transcript.delta")
        .count() as u64;
    let usage = &events.last().unwrap()["response"]["usage"];
    assert_eq!(usage["output_token_details"]["text_tokens"], transcript);
    assert_eq!(
        usage["output_token_details"]["audio_tokens"],
        transcript * 5
    );
    assert_eq!(
        usage["input_token_details"]["cached_tokens"],
        10 + first_output
    );
    assert_eq!(
        usage["input_token_details"]["cached_tokens_details"]["text_tokens"],
        10 + first_output
    );
    assert!(c.compressed_seen);
    let output = &events.last().unwrap()["response"]["output"][0];
    assert_eq!(output["status"], "completed");
    let transcript_text: String = events
        .iter()
        .filter(|e| e["type"] == "response.audio_transcript.delta")
        .map(|e| e["delta"].as_str().unwrap())
        .collect();
    assert_eq!(output["content"][0]["transcript"], transcript_text);

    // mistakes get `error` events and the session goes on
    c.send(json!({"type": "session.update", "session": {"colour": "red"}, "event_id": "e1"}))
        .await;
    let error = c.event().await;
    assert_eq!(error["type"], "error");
    assert_eq!(error["error"]["event_id"], "e1");
    assert_eq!(
        error["error"]["message"],
        "Unknown parameter: 'session.colour'."
    );
    c.send(json!({"type": "response.wibble"})).await;
    assert_eq!(c.event().await["error"]["type"], "invalid_request_error");

    // ping → pong with the same payload
    let ping = client_frame(9, b"are you there", None);
    c.tcp.write_all(&ping).await.unwrap();
    assert_eq!(c.frame().await, (10, b"are you there".to_vec()));

    // close → close with the same code
    let close = client_frame(8, &4000u16.to_be_bytes(), None);
    c.tcp.write_all(&close).await.unwrap();
    assert_eq!(c.frame().await, (8, 4000u16.to_be_bytes().to_vec()));
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_ends_a_response_as_cancelled_and_ga_names_without_the_beta_header() {
    let opts = crate::demo::DemoOptions {
        chunk_delay: std::time::Duration::from_millis(20),
        first_byte_delay: std::time::Duration::ZERO,
    };
    let up =
        crate::demo::DemoUpstream::start(std::net::SocketAddr::from(([127, 0, 0, 1], 0)), opts)
            .await
            .unwrap();
    let mut tcp = TcpStream::connect(up.addr()).await.unwrap();
    let req = "GET /openai/realtime?deployment=rt-prod&api-version=2025-04-01-preview HTTP/1.1\r\n\
               Host: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
               Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(tcp.read_u8().await.unwrap());
    }
    assert!(
        !String::from_utf8_lossy(&head)
            .to_ascii_lowercase()
            .contains("extensions")
    );
    let mut c = Client {
        tcp,
        inflater: None,
        deflater: None,
        compressed_seen: false,
    };
    let created = c.event().await;
    assert_eq!(created["session"]["model"], "rt-prod");
    c.send(user_item("hello")).await;
    c.event().await;
    c.send(json!({"type": "response.create", "response": {"output_modalities": ["text"]}}))
        .await;
    let mut seen = Vec::new();
    loop {
        let event = c.event().await;
        let kind = event["type"].as_str().unwrap().to_owned();
        if kind == "response.output_text.delta" && !seen.contains(&kind) {
            c.send(json!({"type": "response.cancel"})).await;
        }
        seen.push(kind);
        if event["type"] == "response.done" {
            assert_eq!(event["response"]["status"], "cancelled");
            let deltas = seen
                .iter()
                .filter(|k| *k == "response.output_text.delta")
                .count();
            assert_eq!(event["response"]["usage"]["output_tokens"], deltas);
            break;
        }
    }
    assert!(!seen.iter().any(|k| k == "response.text.delta"));
    // a second cancel has nothing to cancel
    c.send(json!({"type": "response.cancel"})).await;
    assert_eq!(c.event().await["type"], "error");
}

#[tokio::test(flavor = "multi_thread")]
async fn plain_get_and_missing_model_are_400s() {
    let up = upstream().await;
    let reply = crate::demo::testkit::request(
        &up,
        Method::GET,
        "/v1/realtime?model=m",
        &[],
        bytes::Bytes::new(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.json()["error"]["type"], "invalid_request_error");
    let (_c, head, _up) = Client::connect("/v1/realtime", "").await;
    assert!(head.starts_with("http/1.1 400 "), "{head}");
    assert!(head.contains("content-type: application/json"), "{head}");
}

#[test]
fn query_params_are_decoded() {
    assert_eq!(
        query::param("a=1&model=gpt%2D4o+x", "model").as_deref(),
        Some("gpt-4o x")
    );
    assert_eq!(query::param("models=1", "model"), None);
}

#[tokio::test(flavor = "multi_thread")]
async fn fault_models_refuse_the_upgrade() {
    let (_c, head, _up) = Client::connect("/v1/realtime?model=demo-error-429", "").await;
    assert!(head.starts_with("http/1.1 429 "), "{head}");
    assert!(head.contains("retry-after: 7"), "{head}");
}

#[tokio::test(flavor = "multi_thread")]
async fn close_without_a_code_is_echoed_without_one_and_shutdown_sends_1001() {
    let (mut c, _head, _up) = Client::connect("/v1/realtime?model=m", "").await;
    c.event().await;
    c.tcp.write_all(&client_frame(8, b"", None)).await.unwrap();
    assert_eq!(c.frame().await, (8, Vec::new()));

    let (mut c, _head, up) = Client::connect("/v1/realtime?model=m", "").await;
    c.event().await;
    up.shutdown();
    assert_eq!(c.frame().await, (8, 1001u16.to_be_bytes().to_vec()));
}

#[tokio::test(flavor = "multi_thread")]
async fn committed_input_audio_is_counted_in_usage() {
    let (mut c, _head, _up) = Client::connect("/v1/realtime?model=m", "").await;
    c.event().await;
    // 9 600 bytes of pcm16 (0.2 s at 24 kHz): two audio tokens
    let audio = base64(&[0u8; 9600]);
    c.send(json!({"type": "input_audio_buffer.append", "audio": audio}))
        .await;
    c.send(json!({"type": "input_audio_buffer.commit"})).await;
    let committed = c.event().await;
    assert_eq!(committed["type"], "input_audio_buffer.committed");
    let created = c.event().await;
    assert_eq!(created["type"], "conversation.item.created");
    assert_eq!(created["item"]["id"], committed["item_id"]);
    c.send(json!({"type": "response.create"})).await;
    let events = c.until_done().await;
    let usage = &events.last().unwrap()["response"]["usage"];
    assert_eq!(usage["input_token_details"]["audio_tokens"], 2);
    assert_eq!(usage["input_token_details"]["text_tokens"], 3);
    assert_eq!(usage["input_tokens"], 5);
}
