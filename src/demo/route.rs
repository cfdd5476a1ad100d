//! Which endpoint answers a request, and how its answer becomes HTTP.
//!
//! Model calls are recognised by the same [`Operation::from_path`] the proxy
//! uses, under a path prefix this upstream serves (OpenAI's `/v1`, and Azure's
//! `/openai/v1` and `/openai/deployments/{name}`), so a provider with other
//! paths is one more prefix here, not another router.

use std::sync::Arc;

use http::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use serde_json::Value;

use super::State;
use super::faults::{self, StreamFault};
use super::text::Fnv;
use super::wire::{
    ApiError, DemoBody, Outcome, Payload, accepts_gzip, insert_request_id, json_response,
};
use super::{
    azure, chat, completions, embeddings, images, models, moderations, realtime, responses, uploads,
};
use crate::genai::request::Operation;
use crate::listener::ChannelBody;

/// Answers one request to the demo upstream.
pub(super) async fn handle(req: Request<Incoming>, state: Arc<State>) -> Response<DemoBody> {
    let gzip = accepts_gzip(req.headers());
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    if realtime::is_realtime(&method, &path) {
        // a fault model refuses the upgrade with its canned HTTP error
        return match realtime::model(req.uri()).and_then(|m| faults::canned_failure(&m)) {
            Some(failure) => render(failure, &state, gzip),
            None => realtime::answer(req, state),
        };
    }
    let Some(operation) = model_operation(&method, &path) else {
        return other_route(&method, &path, req.uri().query(), gzip);
    };
    let content_type = req.headers().get(CONTENT_TYPE).cloned();
    let outcome = match req.into_body().collect().await {
        Ok(body) if operation.multipart() => {
            uploads::call(operation, &path, content_type.as_ref(), &body.to_bytes())
        }
        Ok(body) => model_call(operation, &path, &body.to_bytes(), azure::Shape::of(&path)),
        Err(err) => {
            let hash = Fnv::new().str(&path).finish();
            let msg = format!("Could not read the request body: {err}");
            Outcome::error(hash, &ApiError::invalid(msg, None))
        }
    };
    faults::hold_first_byte(&state.opts, outcome.extra_delay).await;
    render(outcome, &state, gzip)
}

/// The model call a request asks for: a `POST` whose path the proxy recognises
/// ([`Operation::from_path`]) under a prefix this upstream serves.
fn model_operation(method: &Method, path: &str) -> Option<Operation> {
    if method != Method::POST {
        return None;
    }
    let operation = Operation::from_path(path)?;
    let prefix = path.strip_suffix(operation_path(operation))?;
    served_prefix(prefix).then_some(operation)
}

/// The path of `operation` below the API prefix.
fn operation_path(operation: Operation) -> &'static str {
    match operation {
        Operation::ChatCompletions => "/chat/completions",
        Operation::Completions => "/completions",
        Operation::Responses => "/responses",
        Operation::Embeddings => "/embeddings",
        Operation::AudioTranscriptions => "/audio/transcriptions",
        Operation::AudioTranslations => "/audio/translations",
        Operation::ImageGenerations => "/images/generations",
        Operation::ImageEdits => "/images/edits",
        Operation::Moderations => "/moderations",
        Operation::Realtime => "/realtime",
    }
}

/// The API prefixes answered: OpenAI's `/v1`, Azure's v1 `/openai/v1`, and an
/// Azure deployment's `/openai/deployments/{name}`.
fn served_prefix(prefix: &str) -> bool {
    prefix == "/v1"
        || prefix == "/openai/v1"
        || prefix
            .strip_prefix("/openai/deployments/")
            .is_some_and(|d| !d.is_empty() && !d.contains('/'))
}

/// Reads the request, applies the fault its model asks for, and lets the
/// endpoint of `operation` generate the answer. `path` seeds the request id of
/// an invalid request. On an Azure path (`azure`) the model may come from the
/// deployment, and the answer names the model version Azure would.
fn model_call(operation: Operation, path: &str, raw: &[u8], azure: azure::Shape<'_>) -> Outcome {
    // Only error paths need a hash of the raw body; skip it for (possibly huge) valid requests.
    let raw_hash = || Fnv::new().str(path).bytes(raw).finish();
    let value: Value = match serde_json::from_slice(raw) {
        Ok(value) => value,
        Err(err) => {
            let msg = format!(
                "We could not parse the JSON body of your request ({err}). \
                 The OpenAI API expects a JSON payload."
            );
            return Outcome::error(raw_hash(), &ApiError::invalid(msg, None));
        }
    };
    let Some(obj) = value.as_object() else {
        let msg = "The request body must be a JSON object.".to_owned();
        return Outcome::error(raw_hash(), &ApiError::invalid(msg, None));
    };
    let model = match (obj.get("model"), azure.deployment) {
        (Some(Value::String(model)), _) if !model.is_empty() => model.as_str(),
        (_, Some(deployment)) => deployment,
        (None, None) if operation == Operation::Moderations => moderations::DEFAULT_MODEL,
        _ => {
            let msg = "you must provide a model parameter".to_owned();
            return Outcome::error(raw_hash(), &ApiError::invalid(msg, Some("model")));
        }
    };

    if let Some(failure) = faults::canned_failure(model) {
        return failure;
    }
    let fault = StreamFault::of(model);
    let extra_delay = faults::slow_delay(model);

    let force_stream = fault != StreamFault::None;
    let model = azure.answered_model(operation, model);
    let generated = match operation {
        Operation::ChatCompletions => chat::generate(obj, model, force_stream),
        Operation::Completions => completions::generate(obj, model, force_stream),
        Operation::Responses => responses::generate(obj, model, force_stream),
        Operation::Embeddings => embeddings::generate(obj, model),
        Operation::ImageGenerations => images::generate(obj, model),
        Operation::Moderations => moderations::generate(obj, model),
        // `handle` sends form uploads to `uploads`
        Operation::AudioTranscriptions | Operation::AudioTranslations | Operation::ImageEdits => {
            Err(uploads::not_a_form())
        }
        // never from a path: a Realtime session is a WebSocket
        Operation::Realtime => Err(uploads::not_a_form()),
    };
    let (request_hash, payload) = match generated {
        Ok(generated) => generated,
        Err(err) => return Outcome::error(raw_hash(), &err),
    };
    Outcome {
        status: StatusCode::OK,
        request_hash,
        payload: fault.apply(payload),
        retry_after: false,
        extra_delay,
    }
}

fn render(outcome: Outcome, state: &State, gzip: bool) -> Response<DemoBody> {
    let mut response = match outcome.payload {
        Payload::Json(body) => json_response(outcome.status, body, outcome.request_hash, gzip),
        Payload::Stream { events, hang } => {
            let rx = faults::spawn_stream(events, state.opts.chunk_delay, hang, state);
            let mut response = Response::new(DemoBody::Channel(ChannelBody::new(rx)));
            *response.status_mut() = outcome.status;
            let headers = response.headers_mut();
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
            insert_request_id(headers, outcome.request_hash);
            response
        }
    };
    if outcome.retry_after {
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from_static("7"));
    }
    response
}

/// `GET /v1/models`, `GET /v1/models/{id}` and the 404 for everything else.
fn other_route(method: &Method, path: &str, query: Option<&str>, gzip: bool) -> Response<DemoBody> {
    let hash = Fnv::new()
        .str(method.as_str())
        .str(" ")
        .str(path)
        .str("?")
        .str(query.unwrap_or(""))
        .finish();
    if method == Method::GET {
        if let Some((status, body)) = models::answer(path) {
            return json_response(status, body, hash, gzip);
        }
    }
    let query = query.map(|q| format!("?{q}")).unwrap_or_default();
    let err = ApiError {
        status: StatusCode::NOT_FOUND,
        message: format!(
            "Unknown request URL: {method} {path}{query}. Please check the URL for typos, \
             or see the docs at https://platform.openai.com/docs/api-reference/."
        ),
        kind: "invalid_request_error",
        param: None,
        code: Some("unknown_url"),
    };
    json_response(err.status, err.to_json(), hash, gzip)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demo::testkit::*;
    use bytes::Bytes;

    #[test]
    fn model_calls_are_the_proxy_operations_under_v1() {
        let post = |path| model_operation(&Method::POST, path);
        assert_eq!(
            post("/v1/chat/completions"),
            Some(Operation::ChatCompletions)
        );
        assert_eq!(post("/v1/completions"), Some(Operation::Completions));
        assert_eq!(post("/v1/responses"), Some(Operation::Responses));
        assert_eq!(post("/v1/embeddings"), Some(Operation::Embeddings));
        // the proxy recognises these too, but this upstream only serves `/v1`
        assert_eq!(post("/chat/completions"), None);
        assert_eq!(post("/v1/extra/chat/completions"), None);
        assert_eq!(post("/v1/chat/completions/"), None);
        // Azure's shapes
        assert_eq!(
            post("/openai/deployments/prod-chat/chat/completions"),
            Some(Operation::ChatCompletions)
        );
        assert_eq!(post("/openai/v1/embeddings"), Some(Operation::Embeddings));
        assert_eq!(post("/openai/deployments//chat/completions"), None);
        assert_eq!(post("/openai/deployments/a/b/chat/completions"), None);
        assert_eq!(post("/v1/models"), None);
        assert_eq!(model_operation(&Method::GET, "/v1/chat/completions"), None);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn bad_requests_get_openai_shaped_errors() {
        let up = upstream().await;
        for body in [
            &b"{not json"[..],
            b"[1,2]",
            b"",
            br#"{"messages":[]}"#,
            br#"{"model":"m"}"#,
            br#"{"model":"m","messages":[1]}"#,
            br#"{"model":"m","messages":[],"n":0}"#,
        ] {
            let reply = request(&up, Method::POST, "/v1/chat/completions", &[], body).await;
            assert_eq!(
                reply.status,
                StatusCode::BAD_REQUEST,
                "{}",
                String::from_utf8_lossy(body)
            );
            let v = reply.json();
            assert_eq!(v["error"]["type"], "invalid_request_error");
            assert!(v["error"]["message"].is_string());
            assert!(v["error"]["code"].is_null());
            assert!(v["error"].as_object().unwrap().contains_key("param"));
        }
        let reply = request(&up, Method::POST, "/v1/responses", &[], &b"{\"model\":"[..]).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST);
        assert!(reply.json()["error"]["param"].is_null());
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn unknown_path_404_includes_the_query() {
        let up = upstream().await;
        let reply = request(
            &up,
            Method::GET,
            "/v1/chat/completions?foo=bar&x=1",
            &[],
            Bytes::new(),
        )
        .await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND);
        let v = reply.json();
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(
            msg.starts_with("Unknown request URL: GET /v1/chat/completions?foo=bar&x=1. "),
            "{msg}"
        );
        assert_eq!(v["error"]["code"], "unknown_url");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        let reply = request(&up, Method::POST, "/chat/completions", &[], Bytes::new()).await;
        assert!(reply.text().contains("POST /chat/completions. "));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn large_request_bodies_are_accepted() {
        let up = upstream().await;
        let filler = "a".repeat(64 * 1024 * 1024);
        let body = format!(
            r#"{{"model":"gpt-4o-mini","messages":[{{"role":"user","content":"{filler}"}}]}}"#
        );
        assert!(body.len() > 64 * 1024 * 1024);
        let reply = request(&up, Method::POST, "/v1/chat/completions", &[], body).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.json()["usage"]["prompt_tokens"], 3 + 4 + 1);
    }
}
