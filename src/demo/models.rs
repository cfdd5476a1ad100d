//! `GET /v1/models` and `GET /v1/models/{id}`: the models the demo lists.
//! Any model name is accepted by the model routes; these are only listed.

use http::StatusCode;
use serde::Serialize;

use super::wire::{ApiError, CREATED, to_json};

/// Models listed by `GET /v1/models`.
const MODELS: &[&str] = &[
    "gpt-4o-mini",
    "gpt-4o",
    "gpt-4.1",
    "gpt-4.1-mini",
    "gpt-5",
    "gpt-5-mini",
    "o4-mini",
    "text-embedding-3-small",
];

#[derive(Serialize)]
struct ModelList {
    object: &'static str,
    data: Vec<ModelObject>,
}

#[derive(Serialize)]
struct ModelObject {
    id: &'static str,
    object: &'static str,
    created: u64,
    owned_by: &'static str,
}

impl ModelObject {
    fn new(id: &'static str) -> Self {
        Self {
            id,
            object: "model",
            created: CREATED,
            owned_by: "system",
        }
    }
}

/// The answer to a `GET` of `path`, if it is one of the model routes.
pub(super) fn answer(path: &str) -> Option<(StatusCode, Vec<u8>)> {
    if path == "/v1/models" {
        let list = ModelList {
            object: "list",
            data: MODELS.iter().map(|id| ModelObject::new(id)).collect(),
        };
        return Some((StatusCode::OK, to_json(&list)));
    }
    let id = path
        .strip_prefix("/v1/models/")
        .filter(|id| !id.is_empty())?;
    if let Some(known) = MODELS.iter().find(|m| **m == id) {
        return Some((StatusCode::OK, to_json(&ModelObject::new(known))));
    }
    let err = ApiError {
        status: StatusCode::NOT_FOUND,
        message: format!("The model '{id}' does not exist"),
        kind: "invalid_request_error",
        param: Some("model"),
        code: Some("model_not_found"),
    };
    Some((err.status, err.to_json()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demo::testkit::*;
    use bytes::Bytes;
    use http::Method;

    #[tokio::test(flavor = "multi_thread")]
    async fn models_list_and_lookup() {
        let up = upstream().await;
        let v = request(&up, Method::GET, "/v1/models", &[], Bytes::new())
            .await
            .json();
        assert_eq!(v["object"], "list");
        assert_eq!(v["data"].as_array().unwrap().len(), MODELS.len());
        assert_eq!(
            v["data"][0],
            serde_json::json!({"id":"gpt-4o-mini","object":"model","created":1750000000,"owned_by":"system"})
        );
        let one = request(&up, Method::GET, "/v1/models/o4-mini", &[], Bytes::new()).await;
        assert_eq!(
            one.text(),
            r#"{"id":"o4-mini","object":"model","created":1750000000,"owned_by":"system"}"#
        );
        let missing = request(&up, Method::GET, "/v1/models/nope", &[], Bytes::new()).await;
        assert_eq!(missing.status, StatusCode::NOT_FOUND);
        assert_eq!(missing.json()["error"]["code"], "model_not_found");
    }
}
