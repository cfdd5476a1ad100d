//! `/metrics` carries exactly the provider's usage, priced by hand here, in a page
//! that Prometheus' own checker accepts, with bounded label values.

mod support;

use bytes::Bytes;
use support::*;

fn usage_of(reply: &Reply) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_slice(&reply.body).expect("json body");
    v["usage"].clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn token_sums_and_cost_match_upstream_usage_exactly() {
    let s = Stack::start().await;
    // mixed calls: two models, stream and not, a long prompt with cached tokens
    let long = "tokens ".repeat(3000);
    let bodies = [
        (r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"first question here"}]}"#.to_owned()),
        (r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"second, somewhat longer question about metrics"}]}"#.to_owned()),
        format!(r#"{{"model":"gpt-4.1","messages":[{{"role":"user","content":"{long}"}}]}}"#),
        (r#"{"model":"gpt-4.1","n":2,"messages":[{"role":"user","content":"two choices please"}]}"#.to_owned()),
    ];
    let mut want_prompt = 0.0;
    let mut want_completion = 0.0;
    let mut want_cost = 0.0;
    let mut want_input_hist = 0.0;
    for b in &bodies {
        // ask the upstream directly for the truth, then send the same call through tokentap
        let truth = usage_of(&post_json(&s.direct(), "/v1/chat/completions", b).await);
        let via = post_json(&s.via(), "/v1/chat/completions", b).await;
        assert_eq!(usage_of(&via), truth);
        let model: serde_json::Value = serde_json::from_str(b).expect("json");
        let (inp, cached_price, out) = match model["model"].as_str() {
            Some("gpt-4o-mini") => (0.15, 0.075, 0.60),
            Some("gpt-4.1") => (2.0, 0.50, 8.0),
            other => panic!("unexpected model {other:?}"),
        };
        let p = truth["prompt_tokens"].as_f64().expect("p");
        let c = truth["completion_tokens"].as_f64().expect("c");
        let cached = truth["prompt_tokens_details"]["cached_tokens"]
            .as_f64()
            .unwrap_or(0.0);
        want_prompt += p;
        want_completion += c;
        want_input_hist += p;
        want_cost += ((p - cached) * inp + cached * cached_price + c * out) / 1e6;
    }
    // and two streams that did not ask for usage
    for _ in 0..2 {
        let b = r#"{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"stream this"}]}"#;
        let asked = b.replacen(
            "\"stream\":true",
            "\"stream\":true,\"stream_options\":{\"include_usage\":true}",
            1,
        );
        let truth_stream = post_json(&s.direct(), "/v1/chat/completions", &asked).await;
        let text = String::from_utf8(truth_stream.body.to_vec()).expect("utf8");
        let truth: serde_json::Value = text
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
            .find(|v| v["usage"].is_object())
            .expect("usage chunk")["usage"]
            .clone();
        post_json(&s.via(), "/v1/chat/completions", b).await;
        let p = truth["prompt_tokens"].as_f64().expect("p");
        let c = truth["completion_tokens"].as_f64().expect("c");
        want_prompt += p;
        want_completion += c;
        want_input_hist += p;
        want_cost += (p * 0.15 + c * 0.60) / 1e6;
    }
    assert!(want_cost > 0.0);
    let page = s.metrics().await;
    assert_eq!(sum(&page, "llm_requests_total", &[]), 6.0);
    assert_eq!(
        sum(&page, "llm_tokens_used_total", &[("type", "prompt")]),
        want_prompt
    );
    assert_eq!(
        sum(&page, "llm_tokens_used_total", &[("type", "completion")]),
        want_completion
    );
    assert_eq!(
        sum(&page, "llm_tokens_used_total", &[("type", "total")]),
        want_prompt + want_completion
    );
    assert_eq!(
        sum(
            &page,
            "gen_ai_client_token_usage_sum",
            &[("gen_ai_token_type", "input")]
        ),
        want_input_hist
    );
    assert_eq!(
        sum(
            &page,
            "gen_ai_client_token_usage_sum",
            &[("gen_ai_token_type", "output")]
        ),
        want_completion
    );
    let cost = sum(&page, "llm_cost_usd_total", &[]);
    assert!(
        (cost - want_cost).abs() <= want_cost * 1e-9,
        "cost {cost} vs hand-computed {want_cost}"
    );
    assert_eq!(sum(&page, "tokentap_unpriced_calls_total", &[]), 0.0);
    // the lab's label set
    assert_eq!(
        sum(
            &page,
            "llm_requests_total",
            &[
                ("model", "gpt-4.1"),
                ("provider", "openai"),
                ("status", "success")
            ]
        ),
        2.0
    );
    // streams produce chunk timings; one value per output chunk after the first
    assert_eq!(
        sum(
            &page,
            "gen_ai_client_operation_time_to_first_chunk_seconds_count",
            &[]
        ),
        2.0
    );
    assert!(
        sum(
            &page,
            "gen_ai_client_operation_time_per_output_chunk_seconds_count",
            &[]
        ) >= 2.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unpriced_model_records_tokens_but_no_cost() {
    let s = Stack::start().await;
    post_json(
        &s.via(),
        "/v1/chat/completions",
        r#"{"model":"my-local-llama","messages":[{"role":"user","content":"hi"}]}"#,
    )
    .await;
    let page = s.metrics().await;
    assert!(
        sum(
            &page,
            "llm_tokens_used_total",
            &[("model", "my-local-llama")]
        ) > 0.0
    );
    assert_eq!(
        sum(&page, "llm_cost_usd_total", &[("model", "my-local-llama")]),
        0.0
    );
    assert_eq!(
        series_count(&page, "llm_cost_usd_total"),
        0,
        "no made-up cost series"
    );
    assert_eq!(
        sum(
            &page,
            "tokentap_unpriced_calls_total",
            &[("model", "my-local-llama")]
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn pricing_file_overrides_builtin() {
    let dir = std::env::temp_dir().join(format!("tokentap-pricing-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("prices.toml");
    std::fs::write(
        &path,
        "[models.\"my-local-llama\"]\ninput = 1000000\noutput = 0\n",
    )
    .expect("write");
    let s = Stack::start_with(|c| c.pricing = Some(path.clone())).await;
    let r = post_json(
        &s.via(),
        "/v1/chat/completions",
        r#"{"model":"my-local-llama","messages":[{"role":"user","content":"one two three"}]}"#,
    )
    .await;
    let prompt = usage_of(&r)["prompt_tokens"].as_f64().expect("p");
    let page = s.metrics().await;
    // 1e6 USD per 1M input tokens = 1 USD per token
    assert_eq!(
        sum(&page, "llm_cost_usd_total", &[("model", "my-local-llama")]),
        prompt
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn thousands_of_random_models_stay_under_the_cap() {
    let s = Stack::start_with(|c| c.max_label_values = 25).await;
    let client = http_client();
    let mut tasks = Vec::new();
    for i in 0..2000u32 {
        let base = s.via();
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let body = format!(
                r#"{{"model":"rnd-{}-{i}","messages":[{{"role":"user","content":"x"}}]}}"#,
                i.wrapping_mul(2654435761)
            );
            let req = http::Request::post(format!("{base}/v1/chat/completions"))
                .header("content-type", "application/json")
                .body(http_body_util::Full::new(Bytes::from(body)))
                .expect("req");
            let resp = client.request(req).await.expect("resp");
            use http_body_util::BodyExt;
            resp.into_body().collect().await.expect("body");
        }));
        if tasks.len() >= 64 {
            for t in tasks.drain(..) {
                t.await.expect("task");
            }
        }
    }
    for t in tasks {
        t.await.expect("task");
    }
    let page = s.metrics().await;
    assert_eq!(
        sum(&page, "llm_requests_total", &[]),
        2000.0,
        "every call counted"
    );
    let series = series_count(&page, "llm_requests_total");
    assert!(series <= 26, "{series} series for 2000 models");
    assert!(sum(&page, "llm_requests_total", &[("model", "other")]) >= 1975.0);
    let genai = series_count(&page, "gen_ai_client_operation_duration_seconds_count");
    assert!(genai <= 26, "{genai} gen_ai series");
}

#[tokio::test(flavor = "multi_thread")]
async fn page_passes_promtool_check_metrics() {
    let s = Stack::start().await;
    post_json(
        &s.via(),
        "/v1/chat/completions",
        r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#,
    )
    .await;
    post_json(
        &s.via(),
        "/v1/chat/completions",
        r#"{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"hi"}]}"#,
    )
    .await;
    post_json(
        &s.via(),
        "/v1/chat/completions",
        r#"{"model":"demo-error-429","messages":[]}"#,
    )
    .await;
    post_json(
        &s.via(),
        "/v1/chat/completions",
        r#"{"model":"unpriced-x","messages":[{"role":"user","content":"hi"}]}"#,
    )
    .await;
    post_json(&s.via(), "/v1/chat/completions", "not json").await;
    let page = s.metrics().await;
    for name in [
        "llm_requests_total",
        "llm_request_duration_seconds_bucket",
        "llm_tokens_used_total",
        "llm_cost_usd_total",
        "gen_ai_client_token_usage_bucket",
        "gen_ai_client_operation_duration_seconds_bucket",
        "gen_ai_client_operation_time_to_first_chunk_seconds_bucket",
        "gen_ai_client_operation_time_per_output_chunk_seconds_bucket",
        "tokentap_unpriced_calls_total",
        "tokentap_parse_errors_total",
    ] {
        assert!(series_count(&page, name) > 0, "{name} missing from\n{page}");
    }
    // GenAI advised boundaries
    let les = |name: &str| -> Vec<String> {
        let mut v: Vec<String> = parse_metrics(&page)
            .into_iter()
            .filter(|(n, _, _)| n == name)
            .filter_map(|(_, l, _)| l.get("le").cloned())
            .collect();
        v.dedup();
        v
    };
    assert!(
        les("gen_ai_client_token_usage_bucket")
            .iter()
            .any(|l| l.parse::<f64>() == Ok(67108864.0))
    );
    assert!(
        les("gen_ai_client_operation_duration_seconds_bucket")
            .iter()
            .any(|l| l.parse::<f64>() == Ok(81.92))
    );

    let promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = match promtool {
        Ok(c) => c,
        Err(e) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "promtool is required in CI: {e}"
            );
            eprintln!(
                "SKIPPED promtool check: promtool not installed ({e}); `apt-get install prometheus`"
            );
            return;
        }
    };
    use std::io::Write;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(page.as_bytes())
        .expect("write page");
    let out = child.wait_with_output().expect("promtool runs");
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let s2 = send(
        &s.via(),
        "GET",
        "/metrics",
        &[("accept", "application/openmetrics-text; version=1.0.0")],
        Bytes::new(),
    )
    .await;
    assert!(
        s2.headers["content-type"]
            .to_str()
            .expect("ct")
            .starts_with("application/openmetrics-text")
    );
    assert!(
        String::from_utf8_lossy(&s2.body)
            .trim_end()
            .ends_with("# EOF")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn openmetrics_scrape_carries_trace_exemplars_on_durations() {
    let (s, spans) = Stack::start_traced(|_| {}).await;
    let r = post_json(
        &s.via(),
        "/v1/chat/completions",
        r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#,
    )
    .await;
    let tr = r.headers["traceresponse"]
        .to_str()
        .expect("ascii")
        .to_owned();
    let trace_id = tr.split('-').nth(1).expect("trace id").to_owned();
    assert!(eventually(async || !spans.get_finished_spans().expect("spans").is_empty()).await);
    let om = send(
        &s.via(),
        "GET",
        "/metrics",
        &[(
            "accept",
            "application/openmetrics-text;version=1.0.0,text/plain;q=0.5",
        )],
        Bytes::new(),
    )
    .await;
    let page = String::from_utf8(om.body.to_vec()).expect("utf8");
    for name in [
        "llm_request_duration_seconds_bucket",
        "gen_ai_client_operation_duration_seconds_bucket",
    ] {
        let line = page
            .lines()
            .find(|l| l.starts_with(name) && l.contains(" # {"))
            .unwrap_or_else(|| panic!("{name} exemplar in\n{page}"));
        assert!(line.contains(&format!("trace_id=\"{trace_id}\"")), "{line}");
    }
    // the 0.0.4 text format has no exemplars (and still passes promtool)
    let plain = s.metrics().await;
    assert!(!plain.contains(" # {"));
}

#[tokio::test(flavor = "multi_thread")]
async fn overhead_histogram_counts_every_call_and_excludes_upstream_time() {
    let s = Stack::start().await;
    // the upstream waits 200 ms before answering; tokentap's own time must not include it
    for body in [
        r#"{"model":"demo-slow-200","messages":[{"role":"user","content":"hi"}]}"#,
        r#"{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"hi"}]}"#,
    ] {
        assert_eq!(
            post_json(&s.via(), "/v1/chat/completions", body)
                .await
                .status,
            200
        );
    }
    send(&s.via(), "GET", "/v1/models", &[], Bytes::new()).await;
    let page = s.metrics().await;
    assert_eq!(sum(&page, "tokentap_overhead_seconds_count", &[]), 3.0);
    let overhead = sum(&page, "tokentap_overhead_seconds_sum", &[]);
    let durations = sum(&page, "llm_request_duration_seconds_sum", &[]);
    assert!(overhead > 0.0);
    assert!(
        durations >= 0.2 && overhead < 0.1,
        "overhead {overhead}s vs durations {durations}s"
    );
}
