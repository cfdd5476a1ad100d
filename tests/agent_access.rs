//! Who may spend the operator's key through the agent: `--access-token` on
//! the agent's routes, `--agent-models`, and `--no-agent`.

mod support;

use bytes::Bytes;
use http::StatusCode;
use support::*;
use tokentap::config::{AgentModels, Secret};

fn json(r: &Reply) -> serde_json::Value {
    serde_json::from_slice(&r.body)
        .unwrap_or_else(|e| panic!("json body ({e}): {:?}", String::from_utf8_lossy(&r.body)))
}

const JSON: (&str, &str) = ("content-type", "application/json");

async fn chat_as(base: &str, auth: Option<&str>, body: &str) -> Reply {
    let mut headers = vec![JSON];
    if let Some(a) = auth {
        headers.push(("authorization", a));
    }
    send(
        base,
        "POST",
        "/chat",
        &headers,
        Bytes::from(body.to_owned()),
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn the_access_token_guards_the_agent_routes_only() {
    let s = Stack::start_with(|c| {
        c.demo = true;
        c.access_token = Some(Secret::new("lab-s3cret"));
    })
    .await;
    let base = s.via();
    let body = r#"{"message": "hello"}"#;
    for auth in [
        None,
        Some("Bearer wrong"),
        Some("lab-s3cret"),
        Some("Basic lab-s3cret"),
    ] {
        let r = chat_as(&base, auth, body).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{auth:?}");
        assert!(!String::from_utf8_lossy(&r.body).contains("lab-s3cret"));
    }
    for (method, path) in [
        ("POST", "/new-conversation"),
        ("GET", "/conversation-summary"),
    ] {
        let r = send(&base, method, path, &[JSON], Bytes::new()).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{path}");
    }
    // nothing happened to the conversation while refused
    let r = chat_as(&base, Some("Bearer lab-s3cret"), body).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(json(&r)["conversation_turn"], 1);
    let r = send(
        &base,
        "GET",
        "/conversation-summary",
        &[("authorization", "Bearer lab-s3cret")],
        Bytes::new(),
    )
    .await;
    assert_eq!(json(&r)["conversation_turns"], 1);

    // health, metrics and proxied calls (which carry the caller's own key) need no token
    assert_eq!(
        send(&base, "GET", "/health", &[], Bytes::new())
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        send(&base, "GET", "/metrics", &[], Bytes::new())
            .await
            .status,
        StatusCode::OK
    );
    let r = post_json(
        &base,
        "/v1/chat/completions",
        r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_agent_uses_only_the_models_it_is_allowed() {
    // default: only --agent-model
    let s = Stack::start_with(|c| {
        c.demo = true;
        c.agent_model = "gpt-4o-mini".into();
    })
    .await;
    let base = s.via();
    for body in [
        r#"{"message": "hi"}"#,
        r#"{"message": "hi", "model": "gpt-4o-mini"}"#,
    ] {
        assert_eq!(chat_as(&base, None, body).await.status, StatusCode::OK);
    }
    let r = chat_as(&base, None, r#"{"message": "hi", "model": "gpt-4o"}"#).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    let v = json(&r);
    assert_eq!(v["detail"][0]["loc"], serde_json::json!(["body", "model"]));
    assert_eq!(v["detail"][0]["input"], "gpt-4o");
    // a refused model never reached the upstream nor the conversation
    let page = s.metrics().await;
    assert_eq!(
        sum(&page, "llm_requests_total", &[("model", "gpt-4o")]),
        0.0
    );
    let r = send(&base, "GET", "/conversation-summary", &[], Bytes::new()).await;
    assert_eq!(json(&r)["conversation_turns"], 2);

    // a list
    let s = Stack::start_with(|c| {
        c.demo = true;
        c.agent_models = Some(AgentModels::Only(vec![
            "gpt-4o-mini".into(),
            "gpt-4o".into(),
        ]));
    })
    .await;
    let ok = chat_as(&s.via(), None, r#"{"message": "hi", "model": "gpt-4o"}"#).await;
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(json(&ok)["metrics"]["model"], "gpt-4o");
    let no = chat_as(&s.via(), None, r#"{"message": "hi", "model": "o3"}"#).await;
    assert_eq!(no.status, StatusCode::UNPROCESSABLE_ENTITY);

    // `*`: any
    let s = Stack::start_with(|c| {
        c.demo = true;
        c.agent_models = Some(AgentModels::Any);
    })
    .await;
    let r = chat_as(&s.via(), None, r#"{"message": "hi", "model": "o3"}"#).await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread")]
async fn without_the_agent_its_routes_are_forwarded_like_any_path() {
    let s = Stack::start_with(|c| {
        c.agent = false;
        c.access_token = Some(Secret::new("lab-s3cret"));
    })
    .await;
    for (method, path, body) in [
        ("POST", "/chat", r#"{"message": "hi"}"#),
        ("POST", "/new-conversation", ""),
        ("GET", "/conversation-summary", ""),
    ] {
        let direct = send(&s.direct(), method, path, &[JSON], Bytes::from(body)).await;
        let via = send(&s.via(), method, path, &[JSON], Bytes::from(body)).await;
        assert_ne!(
            via.status,
            StatusCode::UNAUTHORIZED,
            "{path}: not the agent's"
        );
        assert_same(&direct, &via);
    }
}
