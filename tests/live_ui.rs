//! The live view in a real browser: Debian's chromium driven over WebDriver
//! (Python `selenium` from the tests' venv, tests/python/live_ui.py) while the
//! official `openai` client makes calls through the real binary. The table
//! fills without a reload, a chart draws the data, a row opens its details,
//! the trace link carries the call's real trace id, the page asks no other
//! host for anything, filters narrow the table, and the console stays clean.
//!
//! Needs `chromium` and `chromium-driver` (.ci/run installs them); without
//! them the test fails and says so.

#[path = "support/blackbox/mod.rs"]
mod blackbox;
#[allow(dead_code)]
#[path = "support/python.rs"]
mod python;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use blackbox::child::Tokentap;
use blackbox::wire;
use bytes::Bytes;
use serde_json::Value;

const TOKEN: &str = "ui-test-token";
const TRACE_URL: &str = "http://jaeger.test:16686/trace/{trace_id}";
/// Calls made while the page is open.
const CALLS: usize = 6;

fn browser() -> (PathBuf, PathBuf) {
    let find = |env: &str, default: &str| {
        let p = std::env::var_os(env).map_or_else(|| PathBuf::from(default), PathBuf::from);
        assert!(
            p.exists(),
            "{} not found: install Debian's chromium and chromium-driver (.ci/run does), or set {env}",
            p.display()
        );
        p
    };
    (
        find("CHROMIUM", "/usr/bin/chromium"),
        find("CHROMEDRIVER", "/usr/bin/chromedriver"),
    )
}

/// Where the screenshot goes: `TOKENTAP_UI_SCREENSHOT` (the README's is made
/// with `TOKENTAP_UI_SCREENSHOT=docs/ui.png`), else under target/.
fn screenshot_path() -> PathBuf {
    match std::env::var_os("TOKENTAP_UI_SCREENSHOT") {
        Some(p) => Path::new(env!("CARGO_MANIFEST_DIR")).join(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("target/tokentap-ui-test.png"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_page_fills_live_in_chromium() {
    let (chromium, driver) = browser();
    let python = tokio::task::spawn_blocking(python::python)
        .await
        .expect("venv");
    let tt = Tokentap::demo(&["--access-token", TOKEN, "--trace-url", TRACE_URL]);
    // calls made before the page opens are loaded from /api/calls
    for model in ["gpt-4o-mini", "gpt-4o"] {
        let body =
            format!(r#"{{"model":"{model}","messages":[{{"role":"user","content":"before"}}]}}"#);
        assert_eq!(
            wire::post_json(tt.addr, "/v1/chat/completions", body)
                .await
                .status,
            200
        );
    }
    let bearer = [("authorization", "Bearer ui-test-token")];
    let api = async |path: &str| {
        wire::send(tt.addr, wire::request("GET", path, &bearer, Bytes::new()))
            .await
            .json()
    };
    for _ in 0..500 {
        if api("/api/calls").await.as_array().map(Vec::len) == Some(2) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }

    let shot = screenshot_path();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/live_ui.py");
    let base = tt.url();
    let args = [
        base.clone(),
        TOKEN.to_owned(),
        CALLS.to_string(),
        shot.display().to_string(),
    ];
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(script)
            .args(args)
            .env("CHROMIUM", chromium)
            .env("CHROMEDRIVER", driver)
            .output()
            .expect("run python")
    })
    .await
    .expect("python task");
    assert!(
        out.status.success(),
        "live_ui.py failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: Value = serde_json::from_slice(&out.stdout).expect("the script's JSON");

    // the token worked once and left the address bar
    assert_eq!(seen["url_after_token"], format!("{base}/ui"));
    // the calls made before the page opened, then one more row per call, without a reload
    assert_eq!(seen["rows_before"], 2);
    let rows: Vec<u64> = seen["rows_after_each_call"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|v| v.as_u64().expect("n"))
        .collect();
    assert_eq!(rows, (3..3 + CALLS as u64).collect::<Vec<_>>());

    // the table is what the API holds, newest first: every call, the error included
    let listed = api("/api/calls").await;
    let listed = listed.as_array().expect("array");
    assert_eq!(listed.len(), 2 + CALLS + 1);
    let api_ids: Vec<&str> = listed
        .iter()
        .map(|c| c["trace_id"].as_str().expect("id"))
        .collect();
    let row_ids: Vec<&str> = seen["row_trace_ids"]
        .as_array()
        .expect("row ids")
        .iter()
        .map(|v| v.as_str().expect("id"))
        .collect();
    assert_eq!(row_ids, api_ids);
    let made: BTreeSet<&str> = seen["trace_ids"]
        .as_array()
        .expect("ids")
        .iter()
        .map(|v| v.as_str().expect("id"))
        .collect();
    assert_eq!(made.len(), CALLS);
    assert!(
        made.iter().all(|t| row_ids.contains(t)),
        "each call's traceresponse id is a row"
    );
    assert_eq!(listed[0]["status"], "error");

    // trace links carry the real trace ids
    let links: Vec<String> = seen["trace_links"]
        .as_array()
        .expect("links")
        .iter()
        .map(|v| v.as_str().expect("href").to_owned())
        .collect();
    let want: Vec<String> = api_ids
        .iter()
        .map(|t| TRACE_URL.replace("{trace_id}", t))
        .collect();
    assert_eq!(links, want);

    // a chart with data: the requests line leaves the zero baseline somewhere
    assert!(
        seen["chart_requests_points"]
            .as_u64()
            .is_some_and(|n| n > 0)
    );
    let d = seen["chart_requests_d"].as_str().expect("path");
    let ys: Vec<f64> = d
        .split(['M', 'L'])
        .filter_map(|p| p.split(',').nth(1)?.parse().ok())
        .collect();
    let baseline = ys.iter().copied().fold(f64::MIN, f64::max);
    assert!(ys.iter().any(|&y| y < baseline), "a non-zero point: {d}");
    let bars: BTreeSet<&str> = seen["cost_bars"]
        .as_array()
        .expect("bars")
        .iter()
        .map(|v| v.as_str().expect("model"))
        .collect();
    assert_eq!(
        bars,
        BTreeSet::from(["gpt-4.1-mini", "gpt-4o", "gpt-4o-mini"])
    );
    assert_eq!(seen["totals_calls"], (2 + CALLS + 1).to_string());

    // the details show every attribute of the call, as the API has them
    let target = seen["detail_trace_id"].as_str().expect("id");
    let call = listed
        .iter()
        .find(|c| c["trace_id"] == target)
        .expect("the opened call is listed");
    let shown = seen["detail_attributes"].as_object().expect("attributes");
    let recorded = call["attributes"].as_object().expect("attributes");
    assert_eq!(
        shown.keys().collect::<Vec<_>>(),
        recorded.keys().collect::<Vec<_>>()
    );
    for (k, v) in recorded {
        let text = match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        assert_eq!(shown[k], text, "{k}");
    }
    assert_eq!(
        seen["detail_trace_link"],
        TRACE_URL.replace("{trace_id}", target)
    );
    assert!(
        seen["detail_capture_note"]
            .as_str()
            .is_some_and(|s| s.contains("off")),
    );

    // filters: by model, by status
    let by_model: Vec<&str> = seen["filtered_by_model"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|v| v.as_str().expect("model"))
        .collect();
    let want_model = listed.iter().filter(|c| c["model"] == "gpt-4o").count();
    assert_eq!(by_model, vec!["gpt-4o"; want_model]);
    assert_eq!(seen["filtered_totals_calls"], want_model.to_string());
    assert_eq!(
        seen["filtered_by_status"],
        serde_json::json!(["demo-error-429"])
    );

    // nothing left for another host, and the console stayed clean
    let requests = seen["requests"].as_array().expect("requests");
    assert!(requests.len() >= 4, "{requests:?}");
    for r in requests {
        let url = r.as_str().expect("url");
        assert!(
            url.starts_with(&format!("{base}/")) || url.starts_with("data:"),
            "a request to another host: {url}"
        );
    }
    assert_eq!(
        seen["console"],
        Value::Array(Vec::new()),
        "console messages"
    );
    assert!(shot.exists(), "the screenshot was saved");
}
