//! The upload endpoints' forms: audio transcriptions and translations, image edits.
//!
//! These requests are `multipart/form-data` (a file plus a few text fields),
//! not JSON. The demo reads the text fields with the same bounded scanner the
//! proxy uses (`genai::multipart`), so what the demo answers and what the
//! proxy records come from one reading of the form. The file is never decoded:
//! its size alone makes the token counts, so the answer stays a pure function
//! of the request bytes.

use http::HeaderValue;
use http::StatusCode;

use super::faults;
use super::text::Fnv;
use super::wire::{ApiError, Outcome};
use super::{images, transcriptions};
use crate::genai::multipart;
use crate::genai::request::Operation;

/// The text fields the upload endpoints read.
const FIELDS: &[&str] = &[
    "model",
    "stream",
    "response_format",
    "prompt",
    "language",
    "n",
    "size",
    "quality",
];

/// A form as the endpoints see it.
pub(super) struct Form {
    pub(super) model: String,
    /// Text fields, a repeated one once per occurrence.
    fields: Vec<(String, String)>,
    /// Size of the whole body: stands in for the file's length.
    pub(super) body_len: usize,
    /// Hash of the path and the body, seeding the reply.
    pub(super) hash: u64,
}

impl Form {
    /// The field's last value, as form readers take it.
    pub(super) fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The error for an upload endpoint called without a form.
pub(super) fn not_a_form() -> ApiError {
    ApiError::invalid(
        "Invalid Content-Type header: this endpoint expects multipart/form-data.".to_owned(),
        None,
    )
}

/// Answers one upload request of `operation`.
pub(super) fn call(
    operation: Operation,
    path: &str,
    content_type: Option<&HeaderValue>,
    raw: &[u8],
) -> Outcome {
    let hash = Fnv::new().str(path).bytes(raw).finish();
    let Some(boundary) = content_type
        .and_then(|v| v.to_str().ok())
        .and_then(multipart::boundary)
    else {
        return Outcome::error(hash, &not_a_form());
    };
    let fields = multipart::text_fields(raw, boundary, FIELDS);
    let model = fields
        .iter()
        .rev()
        .find(|(n, _)| n == "model")
        .map(|(_, v)| v.clone())
        .filter(|m| !m.is_empty());
    let Some(model) = model else {
        let msg = "you must provide a model parameter".to_owned();
        return Outcome::error(hash, &ApiError::invalid(msg, Some("model")));
    };
    if let Some(failure) = faults::canned_failure(&model) {
        return failure;
    }
    let extra_delay = faults::slow_delay(&model);
    let form = Form {
        model,
        fields,
        body_len: raw.len(),
        hash,
    };
    let generated = match operation {
        Operation::ImageEdits => images::edit(&form),
        _ => transcriptions::generate(operation, &form),
    };
    match generated {
        Ok((request_hash, payload)) => Outcome {
            status: StatusCode::OK,
            request_hash,
            payload,
            retry_after: false,
            extra_delay,
        },
        Err(err) => Outcome::error(hash, &err),
    }
}

/// A `multipart/form-data` body (CRLF line ends), for tests.
#[cfg(test)]
pub(super) fn form_body(boundary: &str, fields: &[(&str, &str)], file: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    for (name, value) in fields {
        b.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
            )
            .as_bytes(),
        );
    }
    b.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\nContent-Type: application/octet-stream\r\n\r\n"
        )
        .as_bytes(),
    );
    b.extend_from_slice(file);
    b.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    b
}
