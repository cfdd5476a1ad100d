//! `POST /v1/images/generations` (JSON) and `/v1/images/edits` (a form).
//!
//! `gpt-image-*` models bill in tokens: text and image input tokens (the
//! prompt, and for edits the uploaded image) and image output tokens, which
//! the answer reports so the proxy can price each at its own rate. Older
//! models (`dall-e-*`) report no usage. Every image is the same tiny PNG: the
//! demo is about the accounting, not the picture.

use serde::Serialize;
use serde_json::{Map, Value};

use super::form::Form;
use super::text::{Fnv, words};
use super::wire::{ApiError, CREATED, Payload, to_json};

/// A 1×1 PNG, base64 (the same for every prompt, so answers are stable).
pub(super) const PNG_1X1: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==";

/// Image input tokens the demo bills per KiB of an edit's upload (plus a fixed 65).
const BYTES_PER_IMAGE_TOKEN: usize = 1024;

#[derive(Serialize)]
struct ImagesResponse {
    created: u64,
    data: Vec<Image>,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<ImageUsage>,
}

#[derive(Serialize)]
struct Image {
    b64_json: &'static str,
}

#[derive(Serialize)]
struct ImageUsage {
    input_tokens: u64,
    input_tokens_details: InputDetails,
    output_tokens: u64,
    total_tokens: u64,
}

#[derive(Serialize)]
struct InputDetails {
    text_tokens: u64,
    image_tokens: u64,
}

/// Output tokens of one image at `quality` (gpt-image-1's square sizes).
fn tokens_per_image(quality: Option<&str>) -> u64 {
    match quality {
        Some("low") => 272,
        Some("high") => 4160,
        _ => 1056,
    }
}

/// Image input tokens of an edit whose body is `body_len` bytes.
pub(super) fn edit_image_tokens(body_len: usize) -> u64 {
    65 + (body_len / BYTES_PER_IMAGE_TOKEN) as u64
}

fn count(n: Option<i64>) -> Result<u64, ApiError> {
    match n {
        None => Ok(1),
        Some(n @ 1..=10) => Ok(n as u64),
        Some(_) => Err(ApiError::invalid(
            "n must be between 1 and 10.".to_owned(),
            Some("n"),
        )),
    }
}

fn answer(model: &str, prompt: &str, image_tokens: u64, n: u64, quality: Option<&str>) -> Vec<u8> {
    let usage = model.starts_with("gpt-image").then(|| {
        let text_tokens = words(prompt);
        let output_tokens = n * tokens_per_image(quality);
        ImageUsage {
            input_tokens: text_tokens + image_tokens,
            input_tokens_details: InputDetails {
                text_tokens,
                image_tokens,
            },
            output_tokens,
            total_tokens: text_tokens + image_tokens + output_tokens,
        }
    });
    let data = (0..n).map(|_| Image { b64_json: PNG_1X1 }).collect();
    to_json(&ImagesResponse {
        created: CREATED,
        data,
        usage,
    })
}

fn missing_prompt() -> ApiError {
    ApiError::invalid(
        "Missing required parameter: 'prompt'.".to_owned(),
        Some("prompt"),
    )
}

/// `POST /v1/images/generations`.
pub(super) fn generate(obj: &Map<String, Value>, model: &str) -> Result<(u64, Payload), ApiError> {
    let prompt = match obj.get("prompt") {
        Some(Value::String(p)) if !p.is_empty() => p.as_str(),
        _ => return Err(missing_prompt()),
    };
    let n = count(obj.get("n").and_then(Value::as_i64))?;
    let quality = obj.get("quality").and_then(Value::as_str);
    let hash = Fnv::new().str(model).str(prompt).finish();
    let body = answer(model, prompt, 0, n, quality);
    Ok((hash, Payload::Json(body)))
}

/// `POST /v1/images/edits`.
pub(super) fn edit(form: &Form) -> Result<(u64, Payload), ApiError> {
    let prompt = form
        .get("prompt")
        .filter(|p| !p.is_empty())
        .ok_or_else(missing_prompt)?;
    let n = count(form.get("n").map(|n| n.trim().parse().unwrap_or(0)))?;
    let body = answer(
        &form.model,
        prompt,
        edit_image_tokens(form.body_len),
        n,
        form.get("quality"),
    );
    Ok((form.hash, Payload::Json(body)))
}

#[cfg(test)]
mod tests {
    use http::{Method, StatusCode};
    use serde_json::json;

    use super::*;
    use crate::demo::form::form_body;
    use crate::demo::testkit::*;

    #[tokio::test(flavor = "multi_thread")]
    async fn generations_report_text_input_and_image_output() {
        let up = upstream().await;
        let r = post(
            &up,
            "/v1/images/generations",
            &json!({"model":"gpt-image-1","prompt":"a red fox in snow","n":2,"quality":"low"}),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        let v = r.json();
        assert_eq!(v["data"].as_array().unwrap().len(), 2);
        assert!(
            v["data"][0]["b64_json"]
                .as_str()
                .unwrap()
                .starts_with("iVBORw0KGgo")
        );
        let u = &v["usage"];
        assert_eq!(u["input_tokens_details"]["text_tokens"], 5);
        assert_eq!(u["input_tokens_details"]["image_tokens"], 0);
        assert_eq!(u["input_tokens"], 5);
        assert_eq!(u["output_tokens"], 2 * 272);
        assert_eq!(u["total_tokens"], 5 + 2 * 272);
        let dalle = post(
            &up,
            "/v1/images/generations",
            &json!({"model":"dall-e-3","prompt":"a fox"}),
        )
        .await;
        assert!(dalle.json().get("usage").is_none());
        let bad = post(
            &up,
            "/v1/images/generations",
            &json!({"model":"gpt-image-1"}),
        )
        .await;
        assert_eq!(bad.status, StatusCode::BAD_REQUEST);
        assert_eq!(bad.json()["error"]["param"], "prompt");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn edits_bill_the_uploaded_image() {
        let up = upstream().await;
        let body = form_body(
            "b0",
            &[("model", "gpt-image-1"), ("prompt", "add a hat")],
            &[1u8; 3000],
        );
        let len = body.len();
        let r = request(
            &up,
            Method::POST,
            "/v1/images/edits",
            &[("content-type", "multipart/form-data; boundary=b0")],
            body,
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        let u = &r.json()["usage"];
        assert_eq!(
            u["input_tokens_details"]["image_tokens"],
            edit_image_tokens(len)
        );
        assert_eq!(u["input_tokens_details"]["text_tokens"], 3);
        assert_eq!(u["output_tokens"], 1056);
    }
}
