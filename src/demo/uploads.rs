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
use super::form::Form;
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
