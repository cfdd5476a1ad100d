//! `POST /v1/audio/transcriptions` and `/v1/audio/translations`.
//!
//! The token-billed speech models (`gpt-4o-transcribe` and its kin) report
//! usage in tokens with an audio/text split of the input; `whisper-1` reports
//! only the audio's duration. Both shapes are served, so the proxy's two
//! readings (tokens and cost; no tokens, no cost, no error) work offline.
//! The audio's "length" is the body's size, so the same upload always gets
//! the same transcript and usage.

use bytes::Bytes;
use serde::Serialize;

use super::form::Form;
use super::text::{mix, pieces, sentence, words};
use super::wire::{ApiError, Payload, sse_data, to_json};
use crate::genai::request::Operation;

/// Audio tokens the demo bills per KiB of upload (plus a fixed 12).
const BYTES_PER_AUDIO_TOKEN: usize = 1024;
/// Bytes per second of audio as the demo pretends (16 kHz, 16-bit mono).
const BYTES_PER_SECOND: usize = 32_000;

#[derive(Serialize)]
struct Transcription<'a> {
    text: &'a str,
    usage: TranscriptionUsage,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum TranscriptionUsage {
    Tokens {
        input_tokens: u64,
        input_token_details: InputDetails,
        output_tokens: u64,
        total_tokens: u64,
    },
    Duration {
        seconds: u64,
    },
}

#[derive(Serialize)]
struct InputDetails {
    text_tokens: u64,
    audio_tokens: u64,
}

#[derive(Serialize)]
struct Delta<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    delta: &'a str,
}

#[derive(Serialize)]
struct Done<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    text: &'a str,
    usage: &'a TranscriptionUsage,
}

/// Audio tokens of an upload of `body_len` bytes.
pub(super) fn audio_tokens(body_len: usize) -> u64 {
    12 + (body_len / BYTES_PER_AUDIO_TOKEN) as u64
}

/// Whether `model` bills by duration (the Whisper family) rather than tokens.
fn by_duration(model: &str) -> bool {
    model.starts_with("whisper")
}

pub(super) fn generate(operation: Operation, form: &Form) -> Result<(u64, Payload), ApiError> {
    match form.get("response_format") {
        None | Some("json") => {}
        Some(_) => {
            return Err(ApiError::invalid(
                "The demo upstream answers response_format json only.".to_owned(),
                Some("response_format"),
            ));
        }
    }
    let stream = form.get("stream").is_some_and(|s| s == "true");
    if stream && (by_duration(&form.model) || operation == Operation::AudioTranslations) {
        return Err(ApiError::invalid(
            format!(
                "Streaming is not supported for the model {} on this endpoint.",
                form.model
            ),
            Some("stream"),
        ));
    }
    let hash = mix(form.hash ^ u64::from(operation == Operation::AudioTranslations));
    let text = sentence(hash);
    let usage = if by_duration(&form.model) {
        TranscriptionUsage::Duration {
            seconds: 1 + (form.body_len / BYTES_PER_SECOND) as u64,
        }
    } else {
        let text_tokens = form.get("prompt").map_or(0, words);
        let audio_tokens = audio_tokens(form.body_len);
        let output_tokens = words(text);
        TranscriptionUsage::Tokens {
            input_tokens: text_tokens + audio_tokens,
            input_token_details: InputDetails {
                text_tokens,
                audio_tokens,
            },
            output_tokens,
            total_tokens: text_tokens + audio_tokens + output_tokens,
        }
    };
    if !stream {
        return Ok((
            form.hash,
            Payload::Json(to_json(&Transcription { text, usage })),
        ));
    }
    let mut events: Vec<Bytes> = pieces(text)
        .iter()
        .map(|p| {
            sse_data(&Delta {
                kind: "transcript.text.delta",
                delta: p,
            })
        })
        .collect();
    events.push(sse_data(&Done {
        kind: "transcript.text.done",
        text,
        usage: &usage,
    }));
    Ok((
        form.hash,
        Payload::Stream {
            events,
            hang: false,
        },
    ))
}

#[cfg(test)]
mod tests {
    use http::{Method, StatusCode};

    use super::*;
    use crate::demo::form::form_body;
    use crate::demo::testkit::*;

    const CT: &str = "multipart/form-data; boundary=demo-boundary";

    async fn upload(path: &str, fields: &[(&str, &str)], file: &[u8]) -> Reply {
        let up = upstream().await;
        let body = form_body("demo-boundary", fields, file);
        request(&up, Method::POST, path, &[("content-type", CT)], body).await
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn token_models_report_audio_and_text_input() {
        let file = vec![7u8; 4096];
        let r = upload(
            "/v1/audio/transcriptions",
            &[("model", "gpt-4o-transcribe"), ("prompt", "two words")],
            &file,
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        let v = r.json();
        let text = v["text"].as_str().unwrap();
        let u = &v["usage"];
        assert_eq!(u["type"], "tokens");
        let body_len = form_body(
            "demo-boundary",
            &[("model", "gpt-4o-transcribe"), ("prompt", "two words")],
            &file,
        )
        .len();
        let audio = audio_tokens(body_len);
        assert_eq!(u["input_token_details"]["audio_tokens"], audio);
        assert_eq!(u["input_token_details"]["text_tokens"], 2);
        assert_eq!(u["input_tokens"], audio + 2);
        assert_eq!(u["output_tokens"], words(text));
        assert_eq!(u["total_tokens"], audio + 2 + words(text));
        // the same upload, the same answer
        let again = upload(
            "/v1/audio/transcriptions",
            &[("model", "gpt-4o-transcribe"), ("prompt", "two words")],
            &file,
        )
        .await;
        assert_eq!(again.body, r.body);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn whisper_reports_duration_only() {
        let r = upload(
            "/v1/audio/translations",
            &[("model", "whisper-1")],
            &[0u8; 70_000],
        )
        .await;
        assert_eq!(r.status, StatusCode::OK);
        let v = r.json();
        assert_eq!(v["usage"]["type"], "duration");
        assert_eq!(v["usage"]["seconds"], 3);
        assert!(v["usage"].get("input_tokens").is_none());
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn streams_deltas_then_done_with_usage() {
        let r = upload(
            "/v1/audio/transcriptions",
            &[("model", "gpt-4o-mini-transcribe"), ("stream", "true")],
            b"RIFF",
        )
        .await;
        assert_eq!(r.status, StatusCode::OK);
        let events = data_events(r.text());
        let (last, deltas) = events.split_last().unwrap();
        let text: String = deltas
            .iter()
            .map(|e| {
                let v: serde_json::Value = serde_json::from_str(e).unwrap();
                assert_eq!(v["type"], "transcript.text.delta");
                v["delta"].as_str().unwrap().to_owned()
            })
            .collect();
        let done: serde_json::Value = serde_json::from_str(last).unwrap();
        assert_eq!(done["type"], "transcript.text.done");
        assert_eq!(done["text"], text.as_str());
        assert_eq!(done["usage"]["output_tokens"], words(&text));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn bad_forms_get_openai_shaped_errors() {
        let up = upstream().await;
        let no_form = request(
            &up,
            Method::POST,
            "/v1/audio/transcriptions",
            &[("content-type", "application/json")],
            &br#"{"model":"gpt-4o-transcribe"}"#[..],
        )
        .await;
        assert_eq!(no_form.status, StatusCode::BAD_REQUEST);
        let no_model = upload("/v1/audio/transcriptions", &[("language", "en")], b"x").await;
        assert_eq!(no_model.status, StatusCode::BAD_REQUEST);
        assert_eq!(no_model.json()["error"]["param"], "model");
        let srt = upload(
            "/v1/audio/transcriptions",
            &[("model", "whisper-1"), ("response_format", "srt")],
            b"x",
        )
        .await;
        assert_eq!(srt.status, StatusCode::BAD_REQUEST);
        let limited = upload(
            "/v1/audio/transcriptions",
            &[("model", "demo-error-429")],
            b"x",
        )
        .await;
        assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    }
}
