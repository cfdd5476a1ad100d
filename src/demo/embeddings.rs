//! `POST /v1/embeddings`: deterministic unit vectors, as floats or base64.

use serde::Serialize;
use serde_json::{Map, Value};

use super::text::{Fnv, mix, words};
use super::wire::{ApiError, Payload, to_json};

#[derive(Serialize)]
struct EmbeddingList<'a> {
    object: &'static str,
    data: Vec<Embedding>,
    model: &'a str,
    usage: EmbeddingUsage,
}

#[derive(Serialize)]
struct Embedding {
    object: &'static str,
    index: u32,
    embedding: EmbeddingVector,
}

#[derive(Serialize)]
#[serde(untagged)]
enum EmbeddingVector {
    Float(Vec<f32>),
    Base64(String),
}

#[derive(Serialize)]
struct EmbeddingUsage {
    prompt_tokens: u64,
    total_tokens: u64,
}

enum EmbeddingInput<'a> {
    Text(&'a str),
    Tokens(&'a [Value]),
}

impl EmbeddingInput<'_> {
    fn tokens(&self) -> u64 {
        match self {
            EmbeddingInput::Text(text) => words(text),
            EmbeddingInput::Tokens(tokens) => tokens.len() as u64,
        }
    }

    fn feed(&self, fnv: Fnv) -> Fnv {
        match self {
            EmbeddingInput::Text(text) => fnv.str(text),
            EmbeddingInput::Tokens(tokens) => tokens
                .iter()
                .fold(fnv, |h, t| h.str(&t.to_string()).str(" ")),
        }
    }
}

const MAX_EMBEDDING_INPUTS: usize = 2048;

fn embedding_inputs(input: Option<&Value>) -> Result<Vec<EmbeddingInput<'_>>, ApiError> {
    let invalid = || {
        ApiError::invalid(
            "'$.input' is invalid: expected a non-empty string, an array of non-empty strings, \
             a token array or an array of token arrays."
                .to_owned(),
            Some("input"),
        )
    };
    let is_tokens = |items: &[Value]| !items.is_empty() && items.iter().all(Value::is_u64);
    match input {
        Some(Value::String(text)) if !text.is_empty() => Ok(vec![EmbeddingInput::Text(text)]),
        Some(Value::Array(items)) if is_tokens(items) => Ok(vec![EmbeddingInput::Tokens(items)]),
        Some(Value::Array(items)) if !items.is_empty() && items.len() <= MAX_EMBEDDING_INPUTS => {
            items
                .iter()
                .map(|item| match item {
                    Value::String(text) if !text.is_empty() => Ok(EmbeddingInput::Text(text)),
                    Value::Array(tokens) if is_tokens(tokens) => Ok(EmbeddingInput::Tokens(tokens)),
                    _ => Err(invalid()),
                })
                .collect()
        }
        _ => Err(invalid()),
    }
}

/// A deterministic unit vector: xorshift64* seeded by the hash, then normalised.
fn embedding_vector(seed: u64, dimensions: usize) -> Vec<f32> {
    let mut state = mix(seed) | 1;
    let raw: Vec<f64> = (0..dimensions)
        .map(|_| {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            let x = state.wrapping_mul(0x2545_f491_4f6c_dd1d);
            (x >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
        })
        .collect();
    let norm = raw.iter().map(|v| v * v).sum::<f64>().sqrt();
    let norm = if norm > 0.0 { norm } else { 1.0 };
    raw.iter().map(|v| (v / norm) as f32).collect()
}

pub(super) fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk.first().copied().unwrap_or(0),
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for (i, shift) in [18u32, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Generates the answer: the request hash and the JSON payload.
pub(super) fn generate(obj: &Map<String, Value>, model: &str) -> Result<(u64, Payload), ApiError> {
    let inputs = embedding_inputs(obj.get("input"))?;
    let native: u64 = if model.contains("large") { 3072 } else { 1536 };
    let dimensions = match obj.get("dimensions") {
        None | Some(Value::Null) => native,
        Some(v) => v
            .as_u64()
            .filter(|d| (1..=native).contains(d))
            .ok_or_else(|| {
                ApiError::invalid(
                    format!("Invalid 'dimensions': expected an integer between 1 and {native}."),
                    Some("dimensions"),
                )
            })?,
    };
    let dimensions = usize::try_from(dimensions).unwrap_or(1536);
    let as_base64 = match obj.get("encoding_format") {
        None | Some(Value::Null) => false,
        Some(Value::String(f)) if f == "float" => false,
        Some(Value::String(f)) if f == "base64" => true,
        Some(_) => {
            let msg = "Invalid 'encoding_format': expected 'float' or 'base64'.".to_owned();
            return Err(ApiError::invalid(msg, Some("encoding_format")));
        }
    };
    let hash = inputs
        .iter()
        .fold(Fnv::new().str(model), |fnv, input| input.feed(fnv))
        .finish();
    let data = (0u32..)
        .zip(&inputs)
        .map(|(index, input)| {
            let vector = embedding_vector(input.feed(Fnv::new().str(model)).finish(), dimensions);
            let embedding = if as_base64 {
                let bytes: Vec<u8> = vector.iter().flat_map(|v| v.to_le_bytes()).collect();
                EmbeddingVector::Base64(base64(&bytes))
            } else {
                EmbeddingVector::Float(vector)
            };
            Embedding {
                object: "embedding",
                index,
                embedding,
            }
        })
        .collect();
    let prompt_tokens = inputs.iter().map(EmbeddingInput::tokens).sum();
    let body = EmbeddingList {
        object: "list",
        data,
        model,
        usage: EmbeddingUsage {
            prompt_tokens,
            total_tokens: prompt_tokens,
        },
    };
    Ok((hash, Payload::Json(to_json(&body))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demo::testkit::*;
    use http::StatusCode;

    #[tokio::test(flavor = "multi_thread")]
    async fn embeddings_dimensions_and_formats() {
        let up = upstream().await;
        let body = serde_json::json!({"model": "text-embedding-3-small", "input": ["hello world", "one two three"]});
        let v = post(&up, "/v1/embeddings", &body).await.json();
        assert_eq!(v["object"], "list");
        assert_eq!(v["data"].as_array().unwrap().len(), 2);
        assert_eq!(v["data"][1]["index"], 1);
        let vector: Vec<f64> = v["data"][0]["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        assert_eq!(vector.len(), 1536);
        let norm: f64 = vector.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-3, "{norm}");
        assert_eq!(
            v["usage"],
            serde_json::json!({"prompt_tokens": 5, "total_tokens": 5})
        );

        let body = serde_json::json!({"model": "text-embedding-3-large", "input": [[1, 2, 3, 4]]});
        let v = post(&up, "/v1/embeddings", &body).await.json();
        assert_eq!(v["data"][0]["embedding"].as_array().unwrap().len(), 3072);
        assert_eq!(v["usage"]["prompt_tokens"], 4);

        let body =
            serde_json::json!({"model": "text-embedding-3-small", "input": "hi", "dimensions": 8});
        let floats = post(&up, "/v1/embeddings", &body).await.json();
        assert_eq!(floats["data"][0]["embedding"].as_array().unwrap().len(), 8);
        let mut body = body;
        body["encoding_format"] = "base64".into();
        let b64 = post(&up, "/v1/embeddings", &body).await.json();
        let encoded = b64["data"][0]["embedding"].as_str().unwrap();
        let expected: Vec<u8> = floats["data"][0]["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|x| (x.as_f64().unwrap() as f32).to_le_bytes())
            .collect();
        assert_eq!(encoded, base64(&expected));
        assert_eq!(encoded.len(), 44);

        let bad = serde_json::json!({"model": "text-embedding-3-small", "input": ""});
        assert_eq!(
            post(&up, "/v1/embeddings", &bad).await.status,
            StatusCode::BAD_REQUEST
        );
    }

    #[test]
    fn base64_matches_reference_vectors() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foob"), "Zm9vYg==");
        assert_eq!(base64(b"fooba"), "Zm9vYmE=");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }
}
