//! A real Prometheus 2.x scrapes tokentap's `/metrics`: it negotiates OpenMetrics,
//! the scrape succeeds, and the samples are queryable with the expected values.
//!
//! Needs the `prometheus` binary (Debian package `prometheus`). Without it the test
//! is skipped locally and fails in CI (`CI` set).

mod support;

use std::time::{Duration, Instant};

use http::StatusCode;
use support::prometheus::{
    available, free_port, get_json, query, scratch_dir, spawn_prometheus, write_config,
};
use support::*;

/// Bound on the whole wait for Prometheus (start-up plus the first scrapes).
const DEADLINE: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(250);

/// Polls `check` every 250 ms until it is true or the deadline passes.
async fn until(started: Instant, what: &str, mut check: impl AsyncFnMut() -> bool) {
    loop {
        if check().await {
            return;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "Prometheus did not get there within {DEADLINE:?}: {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn real_prometheus_scrapes_openmetrics_page() {
    if !available("prometheus", "SKIPPED prometheus scrape test") {
        return;
    }
    let s = Stack::start().await;
    let base = s.via();
    let ok = post_json(
        &base,
        "/v1/chat/completions",
        r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#,
    )
    .await;
    assert_eq!(ok.status, StatusCode::OK);
    let streamed = post_json(
        &base,
        "/v1/chat/completions",
        r#"{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"hi"}]}"#,
    )
    .await;
    assert_eq!(streamed.status, StatusCode::OK);
    let limited = post_json(
        &base,
        "/v1/chat/completions",
        r#"{"model":"demo-error-429","messages":[{"role":"user","content":"hi"}]}"#,
    )
    .await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    // a call is recorded when its body ends: wait until all three are on the page,
    // so the first scrape already sees the final values
    assert!(
        eventually(async || sum(&s.metrics().await, "llm_requests_total", &[]) == 3.0).await,
        "tokentap did not record the three calls"
    );
    let page = s.metrics().await;
    let page_total_tokens = sum(&page, "llm_tokens_used_total", &[("type", "total")]);
    let page_samples = parse_metrics(&page).len() as f64;

    let dir = scratch_dir("tokentap-prometheus");
    let config = write_config(&dir, "tokentap", s.proxy.addr, &[]);
    let listen = format!("127.0.0.1:{}", free_port());
    let prom_url = format!("http://{listen}");
    let _prom = spawn_prometheus(&dir, &config, &listen, &[]);
    let client = http_client();
    let started = Instant::now();

    until(started, "up{job=\"tokentap\"} == 1", async || {
        query(&client, &prom_url, r#"up{job="tokentap"}"#)
            .await
            .is_some_and(|r| r.len() == 1 && r[0].1 == 1.0)
    })
    .await;
    until(started, "llm_requests_total has results", async || {
        query(&client, &prom_url, "llm_requests_total")
            .await
            .is_some_and(|r| !r.is_empty())
    })
    .await;
    // rate() needs two scrapes in its window; before that the vector is empty
    // (afterwards every bucket's rate is 0, so the quantile itself is NaN)
    let quantile = "histogram_quantile(0.5, sum by (le) \
                    (rate(gen_ai_client_operation_duration_seconds_bucket[1m])))";
    until(started, "histogram_quantile has a result", async || {
        query(&client, &prom_url, quantile)
            .await
            .is_some_and(|r| r.len() == 1)
    })
    .await;
    let elapsed = started.elapsed();

    // the scrape itself: healthy, no error
    let targets = get_json(&client, &format!("{prom_url}/api/v1/targets"))
        .await
        .expect("targets API");
    let active = targets["data"]["activeTargets"]
        .as_array()
        .expect("active targets");
    assert_eq!(active.len(), 1, "{targets}");
    assert_eq!(active[0]["health"], "up", "{targets}");
    assert_eq!(active[0]["lastError"], "", "{targets}");

    // OpenMetrics was negotiated: only its parser carries `# UNIT` into the metadata
    let meta = get_json(
        &client,
        &format!("{prom_url}/api/v1/metadata?metric=gen_ai_client_operation_duration_seconds"),
    )
    .await
    .expect("metadata API");
    let entries = meta["data"]["gen_ai_client_operation_duration_seconds"]
        .as_array()
        .unwrap_or_else(|| panic!("no metadata: {meta}"));
    assert!(
        entries
            .iter()
            .any(|m| m["type"] == "histogram" && m["unit"] == "seconds"),
        "unit missing, so not scraped as OpenMetrics: {meta}"
    );

    let one = async |q: &str| -> f64 {
        let r = query(&client, &prom_url, q).await.expect("query answers");
        assert_eq!(r.len(), 1, "{q}: {r:?}");
        r[0].1
    };
    assert_eq!(one("sum(llm_requests_total)").await, 3.0);
    let errors = query(&client, &prom_url, r#"llm_requests_total{status="error"}"#)
        .await
        .expect("query answers");
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].1, 1.0);
    assert_eq!(errors[0].0["model"], "demo-error-429", "{errors:?}");
    assert_eq!(
        one(r#"sum(llm_requests_total{status="success",model="gpt-4o-mini"})"#).await,
        2.0
    );
    let tokens = one(r#"sum(llm_tokens_used_total{type="total"})"#).await;
    assert!(tokens > 0.0, "total tokens {tokens}");
    assert_eq!(tokens, page_total_tokens, "Prometheus vs the page");
    assert_eq!(
        one("sum(gen_ai_client_operation_duration_seconds_count)").await,
        3.0
    );
    let quantile = query(&client, &prom_url, quantile)
        .await
        .expect("query answers");
    assert_eq!(quantile.len(), 1, "{quantile:?}");
    let samples = one(r#"scrape_samples_scraped{job="tokentap"}"#).await;
    assert!(samples > 0.0, "scrape_samples_scraped {samples}");
    // every sample of the page was accepted (no new series since: the calls are over)
    assert_eq!(
        samples, page_samples,
        "samples scraped vs samples on the page"
    );
    eprintln!(
        "prometheus scraped {samples} samples; ready after {elapsed:?}; quantile {:?}",
        quantile[0].1
    );
}
