//! Audio, image and moderation calls through the real binary ("More
//! operations accounted"): a multipart upload reaches the upstream byte for
//! byte, the model comes from the form, and tokens and cost on `/metrics`
//! are the hand-computed values for the usage the upstream reported.

#[path = "support/blackbox/mod.rs"]
mod blackbox;

use blackbox::child::Tokentap;
use blackbox::upstream::{self, Upstream};
use blackbox::wire;
use bytes::Bytes;
use http::StatusCode;

const BOUNDARY: &str = "tokentap-test-7f3a";

/// A transcription form: text fields, then a "file" holding every byte value
/// (CR, LF, NUL, invalid UTF-8 and a boundary-like line included).
fn transcription_form(model: &str) -> Vec<u8> {
    form_with(&[("model", model), ("language", "en")])
}

fn form_with(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut audio: Vec<u8> = (0..=255u8).cycle().take(64 * 1024).collect();
    audio.extend_from_slice(b"\r\n--tokentap-test-7f3\r\n\xff\xfe");
    let mut b = Vec::new();
    for (name, value) in fields {
        b.extend_from_slice(
            format!(
                "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
            )
            .as_bytes(),
        );
    }
    b.extend_from_slice(
        format!(
            "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"speech.wav\"\r\nContent-Type: audio/wav\r\n\r\n"
        )
        .as_bytes(),
    );
    b.extend_from_slice(&audio);
    b.extend_from_slice(format!("\r\n--{BOUNDARY}--\r\n").as_bytes());
    b
}

fn content_type() -> String {
    format!("multipart/form-data; boundary={BOUNDARY}")
}

async fn post(tt: &Tokentap, path: &str, content_type: &str, body: Vec<u8>) -> wire::Reply {
    wire::send(
        tt.addr,
        wire::request(
            "POST",
            path,
            &[
                ("content-type", content_type),
                ("authorization", "Bearer sk-test"),
            ],
            body,
        ),
    )
    .await
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-12
}

#[tokio::test(flavor = "multi_thread")]
async fn multipart_upload_arrives_untouched_and_audio_and_image_usage_are_priced() {
    const TRANSCRIPT: &str = r#"{"text":"Hello there.","usage":{"type":"tokens","input_tokens":1000,"input_token_details":{"text_tokens":200,"audio_tokens":800},"output_tokens":300,"total_tokens":1300}}"#;
    const IMAGE: &str = r#"{"created":1750000000,"data":[{"b64_json":"iVBORw0KGgo="}],"usage":{"input_tokens":250,"input_tokens_details":{"text_tokens":50,"image_tokens":200},"output_tokens":4160,"total_tokens":4410}}"#;
    const MODERATION: &str =
        r#"{"id":"modr-1","model":"omni-moderation-latest","results":[{"flagged":false}]}"#;
    let up = Upstream::start(|req| {
        if req.target.ends_with("/audio/transcriptions") {
            upstream::json(200, TRANSCRIPT)
        } else if req.target.ends_with("/images/generations") {
            upstream::json(200, IMAGE)
        } else {
            upstream::json(200, MODERATION)
        }
    })
    .await;
    let mut tt = Tokentap::start_with(
        &["--upstream", &up.base_url()],
        &[("OTEL_TRACES_EXPORTER", "console")],
    );

    let form = transcription_form("gpt-4o-transcribe");
    let r = post(
        &tt,
        "/v1/audio/transcriptions",
        &content_type(),
        form.clone(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.body, Bytes::from_static(TRANSCRIPT.as_bytes()));
    let image = br#"{"model":"gpt-image-1","prompt":"a red fox in snow","size":"1024x1024"}"#;
    let r = post(
        &tt,
        "/v1/images/generations",
        "application/json",
        image.to_vec(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = post(
        &tt,
        "/v1/moderations",
        "application/json",
        br#"{"model":"omni-moderation-latest","input":"hello"}"#.to_vec(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);

    // the upstream got the form byte for byte, with its content type
    let got = up.requests();
    let sent = got
        .iter()
        .find(|r| r.target == "/v1/audio/transcriptions")
        .expect("the transcription reached the upstream");
    assert_eq!(sent.header("content-type"), Some(content_type().as_str()));
    assert_eq!(sent.body.len(), form.len());
    assert!(
        sent.body == form,
        "the multipart body was changed on the way"
    );

    let page =
        wire::metrics_until(tt.addr, |p| wire::sum(p, "llm_requests_total", &[]) >= 3.0).await;
    let tokens = |model: &str, kind: &str| {
        wire::sum(
            &page,
            "llm_tokens_used_total",
            &[("model", model), ("type", kind)],
        )
    };
    let cost = |model: &str| wire::sum(&page, "llm_cost_usd_total", &[("model", model)]);
    // the model came from the form field
    assert_eq!(
        tokens("gpt-4o-transcribe", "prompt"),
        1000.0,
        "{}",
        wire::grep(&page, "llm_tokens_used_total")
    );
    assert_eq!(tokens("gpt-4o-transcribe", "completion"), 300.0);
    // 800 audio × $6 + 200 text × $2.50 + 300 out × $10, per 1M = $0.0083
    assert!(
        close(cost("gpt-4o-transcribe"), 0.0083),
        "{}",
        wire::grep(&page, "llm_cost_usd_total")
    );
    assert_eq!(tokens("gpt-image-1", "prompt"), 250.0);
    assert_eq!(tokens("gpt-image-1", "completion"), 4160.0);
    // 50 text × $5 + 200 image × $10 + 4160 image out × $40, per 1M = $0.16865
    assert!(
        close(cost("gpt-image-1"), 0.16865),
        "{}",
        wire::grep(&page, "llm_cost_usd_total")
    );
    // moderation: the model is known from the response, no usage, no cost, not unpriced
    assert_eq!(
        wire::sum(
            &page,
            "llm_requests_total",
            &[("model", "omni-moderation-latest"), ("status", "success")]
        ),
        1.0,
        "{}",
        wire::grep(&page, "llm_requests_total")
    );
    assert_eq!(cost("omni-moderation-latest"), 0.0);
    assert_eq!(wire::sum(&page, "tokentap_unpriced_calls_total", &[]), 0.0);
    assert_eq!(wire::sum(&page, "tokentap_parse_errors_total", &[]), 0.0);
    for op in ["generate_content", "moderations"] {
        assert!(
            wire::sum(
                &page,
                "gen_ai_client_operation_duration_seconds_count",
                &[("gen_ai_operation_name", op)]
            ) >= 1.0,
            "{op}: {}",
            wire::grep(&page, "gen_ai_client_operation_duration_seconds_count")
        );
    }

    // the spans carry the audio and image split
    let mut stdout = tt.stdout();
    for _ in 0..100 {
        if stdout.contains("openai.usage.input_image_tokens")
            && stdout.contains("openai.usage.input_audio_tokens")
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        stdout = tt.stdout();
    }
    let line = |key: &str| {
        stdout
            .lines()
            .find(|l| l.contains(key))
            .unwrap_or_else(|| panic!("{key} on a span:\n{stdout}"))
            .to_owned()
    };
    assert!(line("openai.usage.input_audio_tokens").contains("800"));
    assert!(line("openai.usage.input_image_tokens").contains("200"));
    assert!(
        line("openai.api.type: String(Static(\"audio_transcriptions\"))")
            .contains("audio_transcriptions")
    );
    tt.assert_running();
}

#[tokio::test(flavor = "multi_thread")]
async fn demo_serves_every_new_operation_and_whisper_has_no_cost() {
    let tt = Tokentap::demo(&[]);
    // whisper-1 reports a duration: the call is counted, with no tokens, no cost, no error
    let r = post(
        &tt,
        "/v1/audio/translations",
        &content_type(),
        transcription_form("whisper-1"),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["usage"]["type"], "duration");
    // gpt-4o-mini-transcribe through the demo: cost from the demo's reported usage
    let r = post(
        &tt,
        "/v1/audio/transcriptions",
        &content_type(),
        transcription_form("gpt-4o-mini-transcribe"),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let u = r.json()["usage"].clone();
    let audio = u["input_token_details"]["audio_tokens"]
        .as_u64()
        .expect("audio");
    let text = u["input_token_details"]["text_tokens"]
        .as_u64()
        .expect("text");
    let out = u["output_tokens"].as_u64().expect("output");
    assert!(audio > 0 && out > 0);
    // an image edit (a form) and a moderation
    let mut edit = Vec::new();
    edit.extend_from_slice(
        format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\ngpt-image-1\r\n--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\nadd a hat\r\n--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n\r\n\x01\x02\x03\r\n--{BOUNDARY}--\r\n").as_bytes(),
    );
    let r = post(&tt, "/v1/images/edits", &content_type(), edit).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let iu = r.json()["usage"].clone();
    let r = post(
        &tt,
        "/v1/moderations",
        "application/json",
        br#"{"input":"hi"}"#.to_vec(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);

    // a streamed transcription: usage from its `transcript.text.done` event
    let r = post(
        &tt,
        "/v1/audio/transcriptions",
        &content_type(),
        form_with(&[("model", "gpt-4o-transcribe"), ("stream", "true")]),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let done = r
        .text()
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .filter_map(|e| serde_json::from_str::<serde_json::Value>(e).ok())
        .find(|e| e["type"] == "transcript.text.done")
        .expect("a done event");
    let streamed_in = done["usage"]["input_tokens"].as_u64().expect("input");
    let streamed_out = done["usage"]["output_tokens"].as_u64().expect("output");

    let page =
        wire::metrics_until(tt.addr, |p| wire::sum(p, "llm_requests_total", &[]) >= 5.0).await;
    let tokens = |model: &str, kind: &str| {
        wire::sum(
            &page,
            "llm_tokens_used_total",
            &[("model", model), ("type", kind)],
        )
    };
    assert_eq!(tokens("gpt-4o-transcribe", "prompt"), streamed_in as f64);
    assert_eq!(
        tokens("gpt-4o-transcribe", "completion"),
        streamed_out as f64
    );
    assert!(
        wire::sum(
            &page,
            "gen_ai_client_operation_time_to_first_chunk_seconds_count",
            &[("gen_ai_request_model", "gpt-4o-transcribe")]
        ) >= 1.0,
        "{}",
        wire::grep(&page, "time_to_first_chunk_seconds_count")
    );
    let cost = |model: &str| wire::sum(&page, "llm_cost_usd_total", &[("model", model)]);
    assert_eq!(
        wire::sum(
            &page,
            "llm_requests_total",
            &[("model", "whisper-1"), ("status", "success")]
        ),
        1.0,
        "{}",
        wire::grep(&page, "llm_requests_total")
    );
    assert_eq!(
        wire::sum(&page, "llm_tokens_used_total", &[("model", "whisper-1")]),
        0.0
    );
    assert_eq!(cost("whisper-1"), 0.0);
    // audio × $3 + text × $1.25 + output × $5, per 1M
    let want = (audio as f64 * 3.0 + text as f64 * 1.25 + out as f64 * 5.0) / 1e6;
    assert!(
        close(cost("gpt-4o-mini-transcribe"), want),
        "{} vs {want}",
        cost("gpt-4o-mini-transcribe")
    );
    // text × $5 + image × $10 + output × $40, per 1M
    let it = iu["input_tokens_details"]["text_tokens"]
        .as_u64()
        .expect("text") as f64;
    let ii = iu["input_tokens_details"]["image_tokens"]
        .as_u64()
        .expect("image") as f64;
    let io = iu["output_tokens"].as_u64().expect("output") as f64;
    let want = (it * 5.0 + ii * 10.0 + io * 40.0) / 1e6;
    assert!(
        close(cost("gpt-image-1"), want),
        "{} vs {want}",
        cost("gpt-image-1")
    );
    assert_eq!(wire::sum(&page, "tokentap_unpriced_calls_total", &[]), 0.0);
    assert_eq!(wire::sum(&page, "tokentap_parse_errors_total", &[]), 0.0);
    // a moderation without a model: `model` is what was asked for (nothing), the
    // response model is the one that answered
    assert_eq!(
        wire::sum(
            &page,
            "gen_ai_client_operation_duration_seconds_count",
            &[
                ("gen_ai_operation_name", "moderations"),
                ("gen_ai_response_model", "omni-moderation-latest")
            ]
        ),
        1.0,
        "{}",
        wire::grep(&page, "gen_ai_client_operation_duration_seconds_count")
    );
}
