//! `POST /v1/moderations`: a verdict per input, never flagged, no usage.
//!
//! Moderation is free and its answer has no usage, so the proxy records the
//! model and the call but no tokens and no cost; the demo serves exactly
//! that shape. `model` is optional, as in the API.

use serde::Serialize;
use serde_json::{Map, Value};

use super::text::{Fnv, mix};
use super::wire::{ApiError, Payload, to_json};

/// The model answering when the request names none.
pub(super) const DEFAULT_MODEL: &str = "omni-moderation-latest";

const CATEGORIES: &[&str] = &["harassment", "hate", "self-harm", "sexual", "violence"];

#[derive(Serialize)]
struct Moderation<'a> {
    id: String,
    model: &'a str,
    results: Vec<Verdict>,
}

#[derive(Serialize)]
struct Verdict {
    flagged: bool,
    categories: Map<String, Value>,
    category_scores: Map<String, Value>,
}

fn inputs(obj: &Map<String, Value>) -> Result<Vec<&str>, ApiError> {
    let invalid = || {
        ApiError::invalid(
            "'input' must be a non-empty string or an array of strings.".to_owned(),
            Some("input"),
        )
    };
    match obj.get("input") {
        Some(Value::String(s)) => Ok(vec![s.as_str()]),
        Some(Value::Array(items)) if !items.is_empty() => items
            .iter()
            .map(|i| i.as_str().ok_or_else(invalid))
            .collect(),
        _ => Err(invalid()),
    }
}

pub(super) fn generate(obj: &Map<String, Value>, model: &str) -> Result<(u64, Payload), ApiError> {
    let inputs = inputs(obj)?;
    let hash = inputs
        .iter()
        .fold(Fnv::new().str(model), |h, i| h.str(i).str("\n"))
        .finish();
    let results = inputs
        .iter()
        .map(|input| {
            let h = Fnv::new().str(input).finish();
            let mut categories = Map::new();
            let mut scores = Map::new();
            for (i, c) in CATEGORIES.iter().enumerate() {
                categories.insert((*c).to_owned(), Value::Bool(false));
                // small, stable scores below any threshold
                let score = (mix(h.wrapping_add(i as u64)) % 1000) as f64 / 1e6;
                scores.insert((*c).to_owned(), Value::from(score));
            }
            Verdict {
                flagged: false,
                categories,
                category_scores: scores,
            }
        })
        .collect();
    let body = to_json(&Moderation {
        id: format!("modr-{hash:016x}"),
        model,
        results,
    });
    Ok((hash, Payload::Json(body)))
}

#[cfg(test)]
mod tests {
    use http::StatusCode;
    use serde_json::json;

    use crate::demo::testkit::*;

    #[tokio::test(flavor = "multi_thread")]
    async fn one_verdict_per_input_and_a_default_model() {
        let up = upstream().await;
        let r = post(
            &up,
            "/v1/moderations",
            &json!({"input": ["hello", "world"]}),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        let v = r.json();
        assert_eq!(v["model"], "omni-moderation-latest");
        assert_eq!(v["results"].as_array().unwrap().len(), 2);
        assert_eq!(v["results"][0]["flagged"], false);
        assert!(v.get("usage").is_none());
        assert!(v["id"].as_str().unwrap().starts_with("modr-"));
        let again = post(
            &up,
            "/v1/moderations",
            &json!({"input": ["hello", "world"]}),
        )
        .await;
        assert_eq!(again.body, r.body);
        let bad = post(
            &up,
            "/v1/moderations",
            &json!({"model": "omni-moderation-latest"}),
        )
        .await;
        assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    }
}
