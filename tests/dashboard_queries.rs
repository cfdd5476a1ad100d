//! The Grafana dashboard (`compose/grafana/dashboards/tokentap.json`) and the alert rules
//! (`compose/prometheus/alerts.yml`) against a real Prometheus 2.x scraping a running
//! tokentap under a short generated load:
//!
//! - every PromQL expression of the dashboard (all panels, all targets) and of the rules
//!   returns data — a non-empty result — at one same instant;
//! - Prometheus loads the rule file and evaluates every rule without error;
//! - exemplars: the duration histogram's exemplars carry a `trace_id`, for the plain
//!   selector and for every dashboard query with `"exemplar": true` (what Grafana asks for);
//! - `promtool check rules` and `promtool test rules` pass.
//!
//! How expressions are evaluated (instant queries at the current time):
//! - Grafana's variables are substituted with their values in the compose stack at the
//!   dashboard's default range: `$__rate_interval` → `20s`, `$__range` → `15m`,
//!   `$__interval` → `5s`, the `provider` variable → `openai` (see `GRAFANA_VARS`; Prometheus scrapes every 1 s here, so each
//!   window holds many samples); any other `$` variable fails the test, as the check could
//!   not evaluate it.
//! - Every selector must have `job="tokentap"` (checked statically): Prometheus also
//!   scrapes the collector's mirror of the same series, and the test's scrape job is named
//!   `tokentap` like the compose one.
//! - An alert's `expr` is evaluated without its final threshold comparison (a trailing
//!   `> 0.05`, `>= 10`, `== bool 0`, …): "returns data" means the series the alert compares
//!   exist and evaluate, whether or not the demo's load is above the threshold. An `expr`
//!   that does not end with a comparison to a number is evaluated whole.
//! - The rule file is read by a minimal line-based YAML reader (`- alert:` / `- record:`
//!   then `expr:` as a plain, quoted or block scalar; a ` #` comment after a plain scalar is
//!   dropped). It checks it found one `expr` per rule.
//!
//! Needs the `prometheus` and `promtool` binaries (Debian package `prometheus`). Without
//! them the tests are skipped locally and fail in CI (`CI` set).

mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use support::prometheus::{
    HttpClient, api, available, encode, free_port, scratch_dir, spawn_prometheus, write_config,
};
use support::*;
use tokentap::config::Secret;
use tokentap::genai::attribution::Dimension;

const DASHBOARD: &str = "compose/grafana/dashboards/tokentap.json";
const ALERTS: &str = "compose/prometheus/alerts.yml";
const ALERTS_TEST: &str = "compose/prometheus/alerts_test.yml";

/// Bound on the wait for Prometheus: start-up, scrapes, rule evaluations, all queries.
const DEADLINE: Duration = Duration::from_secs(60);
/// Bound on the generated load, whatever happens to the test.
const LOAD_MAX: Duration = Duration::from_secs(40);
/// Pause between two rounds of load.
const LOAD_PAUSE: Duration = Duration::from_millis(150);
const POLL: Duration = Duration::from_millis(500);

/// Grafana's built-in variables, as substituted before evaluation: their values in the
/// compose stack for the dashboard's default range (15 minutes), where the data source's
/// `timeInterval` (the tokentap job's scrape interval) is 5 s, so `$__interval` is at least
/// 5 s and `$__rate_interval` = max(`$__interval` + 5 s, 4 × 5 s) = 20 s.
const GRAFANA_VARS: &[(&str, &str)] = &[
    ("$__rate_interval", "20s"),
    ("$__range", "15m"),
    ("$__interval", "5s"),
    // the dashboard's `provider` variable with the demo's one provider picked (not "All",
    // whose `.*` would also match series without the label)
    ("$provider", "openai"),
];

/// The scrape job of tokentap's own `/metrics` (compose/prometheus/prometheus.yml). The
/// collector's Prometheus exporter mirrors the same series under another job, so every
/// selector must pick this one or each call is counted twice.
const JOB: &str = "tokentap";

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

// ---------------------------------------------------------------------------------------
// Extracting the expressions
// ---------------------------------------------------------------------------------------

/// One expression to evaluate.
#[derive(Debug, Clone)]
struct Expr {
    /// Panel title, or `alert <name>` / `record <name>`.
    source: String,
    /// The target's `refId` (dashboard), or `expr` (rules).
    ref_id: String,
    /// As written in the file.
    original: String,
    /// As evaluated (variables substituted, threshold stripped).
    query: String,
    /// The dashboard target asks Grafana for exemplars.
    exemplar: bool,
}

fn substitute_grafana_vars(expr: &str) -> String {
    let mut q = expr.to_owned();
    for (var, value) in GRAFANA_VARS {
        q = q.replace(var, value);
    }
    assert!(
        !q.contains('$'),
        "dashboard query uses a variable this check cannot evaluate \
         (only {GRAFANA_VARS:?}): {expr}"
    );
    q
}

/// Every target `expr` of every panel, rows' nested panels included.
fn dashboard_exprs(dashboard: &Value) -> Vec<Expr> {
    fn walk(panels: &Value, out: &mut Vec<Expr>) {
        for p in panels.as_array().into_iter().flatten() {
            let title = p["title"].as_str().unwrap_or("(untitled)");
            for t in p["targets"].as_array().into_iter().flatten() {
                let Some(expr) = t["expr"].as_str() else {
                    continue;
                };
                out.push(Expr {
                    source: title.to_owned(),
                    ref_id: t["refId"].as_str().unwrap_or("?").to_owned(),
                    original: expr.to_owned(),
                    query: substitute_grafana_vars(expr),
                    exemplar: t["exemplar"].as_bool() == Some(true),
                });
            }
            walk(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// `(kind, name, expr)` of every rule (`alert` or `record`), by a minimal YAML reading.
fn rule_exprs(yaml: &str) -> Vec<(&'static str, String, String)> {
    let lines: Vec<&str> = yaml.lines().collect();
    let indent = |l: &str| l.len() - l.trim_start().len();
    let mut rules = 0;
    let mut current: Option<(&'static str, String)> = None;
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let t = line.trim_start().trim_start_matches("- ").trim_start();
        for kind in ["alert", "record"] {
            if let Some(name) = t.strip_prefix(kind).and_then(|r| r.strip_prefix(':')) {
                rules += 1;
                current = Some((kind, unquote(name.trim())));
            }
        }
        if let Some(value) = t.strip_prefix("expr:") {
            let value = value.trim();
            let expr = if value.starts_with('|') || value.starts_with('>') {
                let own = indent(line);
                let mut block = Vec::new();
                while i + 1 < lines.len()
                    && (lines[i + 1].trim().is_empty() || indent(lines[i + 1]) > own)
                {
                    i += 1;
                    block.push(lines[i].trim());
                }
                block.join("\n").trim().to_owned()
            } else {
                unquote(value)
            };
            let (kind, name) = current
                .take()
                .unwrap_or_else(|| panic!("{ALERTS}: `expr:` before `alert:`/`record:`"));
            out.push((kind, name, expr));
        }
        i += 1;
    }
    assert_eq!(out.len(), rules, "{ALERTS}: one `expr` per rule");
    out
}

/// A YAML flow scalar: quoted (`'…'`, `"…"`) or plain (a ` #` comment dropped).
fn unquote(v: &str) -> String {
    if let Some(s) = v.strip_prefix('\'').and_then(|s| s.strip_suffix('\'')) {
        s.replace("''", "'")
    } else if let Some(s) = v.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
        s.replace("\\\"", "\"").replace("\\\\", "\\")
    } else {
        match v.find(" #") {
            Some(c) => v[..c].trim_end().to_owned(),
            None => v.to_owned(),
        }
    }
}

/// `expr` without its final comparison to a number (`… > 0.05` → `…`), if it has one.
fn strip_threshold(expr: &str) -> Option<&str> {
    let e = expr.trim_end();
    let start = e
        .rfind(|c: char| c.is_whitespace() || matches!(c, '>' | '<' | '=' | '!'))
        .map(|i| i + 1)?;
    e[start..].parse::<f64>().ok()?;
    let mut rest = e[..start].trim_end();
    if let Some(r) = rest.strip_suffix("bool") {
        rest = r.trim_end();
    }
    [">=", "<=", "==", "!=", ">", "<"]
        .iter()
        .find_map(|op| rest.strip_suffix(op))
        .map(str::trim_end)
}

const AGGREGATIONS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
];

/// The series selectors of `expr` that do not have `job="tokentap"` (a minimal PromQL
/// scan: metric names, `{…}` matchers, function calls, grouping clauses, ranges, numbers).
fn unscoped_selectors(expr: &str) -> Vec<String> {
    let scoped = |matchers: &str| {
        matchers
            .split(',')
            .any(|m| m.replace(' ', "") == format!("job=\"{JOB}\""))
    };
    let b = expr.as_bytes();
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b':';
    let skip_ws = |mut j: usize| {
        while j < b.len() && b[j].is_ascii_whitespace() {
            j += 1;
        }
        j
    };
    // index just past the `close` matching the `open` at `i` (quotes respected)
    let past = |i: usize, close: u8| {
        let mut j = i + 1;
        let mut quote = None;
        while j < b.len() {
            match (quote, b[j]) {
                (Some(_), b'\\') => j += 1,
                (Some(q), c) if c == q => quote = None,
                (None, b'"' | b'\'' | b'`') => quote = Some(b[j]),
                (None, c) if c == close => return j + 1,
                _ => {}
            }
            j += 1;
        }
        b.len()
    };
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_digit() || (c == b'.' && b.get(i + 1).is_some_and(u8::is_ascii_digit)) {
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.') {
                i += 1;
            }
        } else if c == b'[' {
            i = past(i, b']');
        } else if c == b'"' || c == b'\'' || c == b'`' {
            i = past(i, c);
        } else if c == b'{' {
            let end = past(i, b'}');
            if !scoped(&expr[i + 1..end - 1]) {
                out.push(expr[i..end].to_owned());
            }
            i = end;
        } else if ident(c) {
            let start = i;
            while i < b.len() && ident(b[i]) {
                i += 1;
            }
            let name = &expr[start..i];
            let next = skip_ws(i);
            let grouping = matches!(
                name,
                "by" | "without" | "on" | "ignoring" | "group_left" | "group_right"
            );
            // keywords, and aggregations written `sum by (…) (…)`: not selectors
            let keyword = grouping
                || AGGREGATIONS.contains(&name)
                || matches!(
                    name,
                    "bool" | "and" | "or" | "unless" | "offset" | "Inf" | "NaN" | "inf" | "nan"
                );
            match b.get(next) {
                Some(b'(') if grouping => i = past(next, b')'),
                _ if keyword => {}
                Some(b'(') => i = next + 1,
                Some(b'{') => {
                    let end = past(next, b'}');
                    if !scoped(&expr[next + 1..end - 1]) {
                        out.push(expr[start..end].to_owned());
                    }
                    i = end;
                }
                _ => out.push(name.to_owned()),
            }
        } else {
            i += 1;
        }
    }
    out
}

#[test]
fn threshold_stripping_and_yaml_reading() {
    assert_eq!(
        strip_threshold("sum(x) / sum(y) > 0.05"),
        Some("sum(x) / sum(y)")
    );
    assert_eq!(strip_threshold("a>=10"), Some("a"));
    assert_eq!(strip_threshold("a == bool 0"), Some("a"));
    assert_eq!(strip_threshold("a < -1e3\n"), Some("a"));
    assert_eq!(strip_threshold("rate(x[5m])"), None);
    assert_eq!(strip_threshold("vector(5)"), None);
    let yaml = "groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: up == 0 # down\n\
                \x20       for: 1m\n      - record: job:r\n        expr: 'sum(x{a=\"b\"})'\n\
                \x20     - alert: B\n        expr: |\n          sum(y)\n            > 1\n\
                \x20       labels:\n          severity: page\n";
    assert_eq!(
        unscoped_selectors(
            r#"histogram_quantile(0.95, sum by (le, model) (rate(x_bucket{job="tokentap"}[5m]))) > 1e3"#
        ),
        Vec::<String>::new()
    );
    assert_eq!(
        unscoped_selectors(
            r#"sum(a{status="error", job = "tokentap"}) / on (model) group_left sum(b) * 60"#
        ),
        vec!["b".to_owned()]
    );
    assert_eq!(
        unscoped_selectors(r#"topk(5, c{job="other",x="}"}) or {__name__="d"}"#),
        vec![
            r#"c{job="other",x="}"}"#.to_owned(),
            r#"{__name__="d"}"#.to_owned()
        ]
    );
    let rules = rule_exprs(yaml);
    assert_eq!(
        rules,
        vec![
            ("alert", "A".to_owned(), "up == 0".to_owned()),
            ("record", "job:r".to_owned(), "sum(x{a=\"b\"})".to_owned()),
            ("alert", "B".to_owned(), "sum(y)\n> 1".to_owned()),
        ]
    );
}

/// Each `label_values(SELECTOR, LABEL)` query variable as PromQL that returns data only
/// when series of SELECTOR carry LABEL (what fills the variable's drop-down).
fn variable_exprs(dashboard: &Value) -> Vec<Expr> {
    let mut out = Vec::new();
    for v in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let def = v["definition"].as_str().unwrap_or_default();
        let Some(args) = def
            .strip_prefix("label_values(")
            .and_then(|a| a.strip_suffix(')'))
        else {
            continue;
        };
        let (selector, label) = args
            .rsplit_once(',')
            .expect("label_values(SELECTOR, LABEL)");
        let (selector, label) = (selector.trim(), label.trim());
        let selector = selector.strip_suffix('}').map_or_else(
            || format!("{selector}{{{label}!=\"\"}}"),
            |s| format!("{s},{label}!=\"\"}}"),
        );
        let query = format!("group by ({label}) ({selector})");
        out.push(Expr {
            source: format!("variable {} ({def})", v["name"].as_str().unwrap_or("?")),
            ref_id: "definition".to_owned(),
            // the PromQL form: what the static selector checks can read
            original: query.clone(),
            query,
            exemplar: false,
        });
    }
    out
}

fn all_exprs() -> Vec<Expr> {
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(repo_file(DASHBOARD)).expect("read the dashboard"),
    )
    .expect("dashboard is JSON");
    let mut exprs = dashboard_exprs(&dashboard);
    exprs.extend(variable_exprs(&dashboard));
    let yaml = std::fs::read_to_string(repo_file(ALERTS)).expect("read the alert rules");
    for (kind, name, expr) in rule_exprs(&yaml) {
        let query = match kind {
            "alert" => strip_threshold(&expr).unwrap_or(&expr).to_owned(),
            _ => expr.clone(),
        };
        exprs.push(Expr {
            source: format!("{kind} {name}"),
            ref_id: "expr".to_owned(),
            original: expr,
            query,
            exemplar: false,
        });
    }
    exprs
}

/// The dashboard's shape: what provisioning and the issue rely on (no Prometheus needed).
#[test]
fn dashboard_is_provisionable_and_covers_the_metrics() {
    let d: Value = serde_json::from_str(
        &std::fs::read_to_string(repo_file(DASHBOARD)).expect("read the dashboard"),
    )
    .expect("dashboard is JSON");
    assert_eq!(d["uid"], "tokentap");
    assert_eq!(d["title"], "tokentap");
    assert_eq!(d["refresh"], "10s");
    assert_eq!(d["time"]["from"], "now-15m");
    assert!(
        d["schemaVersion"].as_u64().is_some_and(|v| v >= 36),
        "{}",
        d["schemaVersion"]
    );
    let prometheus = serde_json::json!({"type": "prometheus", "uid": "prometheus"});
    let mut ids = BTreeSet::new();
    for p in d["panels"].as_array().expect("panels") {
        assert!(
            ids.insert(p["id"].as_u64().expect("panel id")),
            "duplicate id {}",
            p["id"]
        );
        assert!(
            p["title"].as_str().is_some_and(|t| !t.is_empty()),
            "panel without a title: {p}"
        );
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"], prometheus, "{}", p["title"]);
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{}", p["title"]);
        for t in targets {
            assert_eq!(t["datasource"], prometheus, "{}", p["title"]);
        }
    }
    let exprs = dashboard_exprs(&d);
    for metric in [
        "llm_requests_total",
        "llm_request_duration_seconds_bucket",
        "gen_ai_client_operation_time_to_first_chunk_seconds_bucket",
        "llm_tokens_used_total",
        "llm_cost_usd_total",
        "agent_conversations_total",
        "agent_messages_total",
        "tokentap_parse_errors_total",
        "tokentap_telemetry_dropped_total",
        "tokentap_unpriced_calls_total",
    ] {
        assert!(
            exprs.iter().any(|e| e.original.contains(metric)),
            "no dashboard query on {metric}"
        );
    }
    for q in ["0.5", "0.95", "0.99"] {
        assert!(
            exprs.iter().any(|e| e.original.starts_with(&format!(
                "histogram_quantile({q}, sum by (le) (rate(llm_request_duration_seconds_bucket"
            ))),
            "latency p{q} missing"
        );
    }
    assert!(
        exprs
            .iter()
            .any(|e| e.exemplar && e.original.contains("llm_request_duration_seconds_bucket")),
        "no latency query with exemplars"
    );
    // the provider variable (docs/configuration.md, Providers) filters every llm_* and gen_ai_client_* query
    let vars = d["templating"]["list"].as_array().expect("templating");
    let provider = vars
        .iter()
        .find(|v| v["name"] == "provider")
        .expect("a provider variable");
    assert_eq!(
        provider["definition"],
        "label_values(llm_requests_total{job=\"tokentap\"}, provider)"
    );
    assert_eq!(provider["includeAll"], true);
    assert_eq!(provider["allValue"], ".*");
    assert_eq!(variable_exprs(&d).len(), 1);
    for e in &exprs {
        for (metric, filter) in [
            ("llm_", r#"provider=~"$provider""#),
            ("gen_ai_client_", r#"gen_ai_provider_name=~"$provider""#),
        ] {
            let uses = e.original.matches(metric).count();
            assert_eq!(
                e.original.matches(filter).count(),
                uses,
                "[{} {}] every {metric}* selector filters by {filter}: {}",
                e.source,
                e.ref_id,
                e.original
            );
        }
    }
    // dashboard and rules: each selector picks tokentap's own scrape job
    for e in all_exprs() {
        let bad = unscoped_selectors(&e.original);
        assert!(
            bad.is_empty(),
            "[{} {}] selectors without job=\"{JOB}\": {bad:?} in {}",
            e.source,
            e.ref_id,
            e.original
        );
    }
}

// ---------------------------------------------------------------------------------------
// promtool
// ---------------------------------------------------------------------------------------

#[test]
fn promtool_checks_and_unit_tests_the_alert_rules() {
    if !available("promtool", "SKIPPED") {
        return;
    }
    for (cmd, file) in [("check", ALERTS), ("test", ALERTS_TEST)] {
        let out = Command::new("promtool")
            .args([cmd, "rules"])
            .arg(repo_file(file))
            .output()
            .expect("run promtool");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "promtool {cmd} rules {file}:\n{text}");
        assert!(
            text.contains("SUCCESS"),
            "promtool {cmd} rules {file}:\n{text}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Prometheus
// ---------------------------------------------------------------------------------------

/// Starts Prometheus scraping `target` as job `tokentap`, with the alert rules loaded and
/// exemplar storage on.
fn start_prometheus(dir: &Path, target: SocketAddr, listen: &str) -> prometheus::Prometheus {
    let config = write_config(dir, JOB, target, &[repo_file(ALERTS)]);
    spawn_prometheus(dir, &config, listen, &["--enable-feature=exemplar-storage"])
}

/// Series returned by an instant query, and how many of them have a finite value.
async fn series(client: &HttpClient, prom: &str, q: &str) -> Option<(usize, usize)> {
    let v = api(client, &format!("{prom}/api/v1/query?query={}", encode(q))).await?;
    let data = &v["data"];
    let finite = |s: &Value| {
        s.as_str()
            .and_then(|s| s.parse::<f64>().ok())
            .is_some_and(f64::is_finite)
    };
    match data["resultType"].as_str() {
        Some("vector") => {
            let r = data["result"].as_array().expect("vector");
            Some((r.len(), r.iter().filter(|s| finite(&s["value"][1])).count()))
        }
        Some("scalar") => Some((1, usize::from(finite(&data["result"][1])))),
        other => panic!("{q}: unexpected result type {other:?}: {v}"),
    }
}

/// Exemplars for `q` over the last 5 minutes: `(total, with a trace_id)`.
async fn exemplars(client: &HttpClient, prom: &str, q: &str) -> Option<(usize, usize)> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let v = api(
        client,
        &format!(
            "{prom}/api/v1/query_exemplars?query={}&start={}&end={}",
            encode(q),
            now - 300,
            now + 60
        ),
    )
    .await?;
    let mut total = 0;
    let mut traced = 0;
    for s in v["data"].as_array().into_iter().flatten() {
        for e in s["exemplars"].as_array().into_iter().flatten() {
            total += 1;
            let id = e["labels"]["trace_id"].as_str().unwrap_or("");
            if id.len() == 32
                && id.bytes().all(|b| b.is_ascii_hexdigit())
                && id.bytes().any(|b| b != b'0')
            {
                traced += 1;
            }
        }
    }
    Some((total, traced))
}

/// A rule as Prometheus reports it: `(group, name, health, lastError)`.
type RuleState = (String, String, String, String);

/// All rules of `/api/v1/rules`.
async fn rule_health(client: &HttpClient, prom: &str) -> Option<Vec<RuleState>> {
    let v = api(client, &format!("{prom}/api/v1/rules")).await?;
    let mut out = Vec::new();
    for g in v["data"]["groups"].as_array().into_iter().flatten() {
        for r in g["rules"].as_array().into_iter().flatten() {
            let s = |x: &Value| x.as_str().unwrap_or("").to_owned();
            out.push((
                s(&g["name"]),
                s(&r["name"]),
                s(&r["health"]),
                s(&r["lastError"]),
            ));
        }
    }
    Some(out)
}

// ---------------------------------------------------------------------------------------
// Load
// ---------------------------------------------------------------------------------------

/// One kind of call of the load: path, body, the status it must get.
const CALLS: &[(&str, &str, u16)] = &[
    (
        "/v1/chat/completions",
        r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#,
        200,
    ),
    (
        "/v1/chat/completions",
        r#"{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"tell me a story"}]}"#,
        200,
    ),
    (
        "/v1/chat/completions",
        r#"{"model":"gpt-4.1","messages":[{"role":"user","content":"hello there"}]}"#,
        200,
    ),
    (
        "/v1/chat/completions",
        r#"{"model":"gpt-4.1","stream":true,"messages":[{"role":"user","content":"hi"}]}"#,
        200,
    ),
    (
        "/v1/responses",
        r#"{"model":"gpt-5-mini","input":"hi"}"#,
        200,
    ),
    (
        "/v1/responses",
        r#"{"model":"gpt-5-mini","stream":true,"input":"write a haiku"}"#,
        200,
    ),
    (
        "/v1/embeddings",
        r#"{"model":"text-embedding-3-small","input":"hello"}"#,
        200,
    ),
    (
        "/v1/chat/completions",
        r#"{"model":"demo-error-429","messages":[{"role":"user","content":"hi"}]}"#,
        429,
    ),
    (
        "/v1/chat/completions",
        r#"{"model":"demo-error-500","messages":[{"role":"user","content":"hi"}]}"#,
        500,
    ),
    // no price: tokentap_unpriced_calls_total
    (
        "/v1/chat/completions",
        r#"{"model":"my-local-model","messages":[{"role":"user","content":"hi"}]}"#,
        200,
    ),
    // not JSON: forwarded unchanged, tokentap_parse_errors_total{reason="invalid_json"}
    ("/v1/chat/completions", "this is not json", 400),
    // the agent (agent_conversations_total, agent_messages_total, and a gpt-4o-mini call)
    ("/new-conversation", "", 200),
    ("/chat", r#"{"message":"hi"}"#, 200),
];

#[derive(Debug, Default)]
struct LoadReport {
    rounds: u32,
    calls: u32,
    unexpected: Vec<String>,
}

/// Rounds of `CALLS` until `stop` is set or `LOAD_MAX` has passed; `first` is told when the
/// first round is done.
async fn load(
    base: String,
    stop: Arc<AtomicBool>,
    first: tokio::sync::oneshot::Sender<()>,
) -> LoadReport {
    let started = Instant::now();
    let mut report = LoadReport::default();
    let mut first = Some(first);
    while !stop.load(Ordering::Relaxed) && started.elapsed() < LOAD_MAX {
        for (path, body, want) in CALLS {
            // a project and a key on every call: the spend-by-project and by-key panels
            let r = send(
                &base,
                "POST",
                path,
                &[
                    ("content-type", "application/json"),
                    ("authorization", "Bearer sk-test"),
                    ("openai-project", "proj_dashboard"),
                ],
                bytes::Bytes::from_static(body.as_bytes()),
            )
            .await;
            report.calls += 1;
            if r.status.as_u16() != *want && report.unexpected.len() < 20 {
                report.unexpected.push(format!(
                    "{path} {body}: {} (want {want}): {}",
                    r.status,
                    String::from_utf8_lossy(&r.body)
                ));
            }
        }
        report.rounds += 1;
        if let Some(tx) = first.take() {
            let _ = tx.send(());
        }
        tokio::time::sleep(LOAD_PAUSE).await;
    }
    report
}

/// Stops the load when dropped (a panic included).
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

// ---------------------------------------------------------------------------------------
// The check
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn every_dashboard_and_alert_query_returns_data_on_real_prometheus() {
    if !available("prometheus", "SKIPPED") {
        return;
    }
    let test_started = Instant::now();
    let exprs = all_exprs();
    assert!(!exprs.is_empty());
    let exemplar_queries: Vec<String> =
        std::iter::once("llm_request_duration_seconds_bucket".to_owned())
            .chain(exprs.iter().filter(|e| e.exemplar).map(|e| e.query.clone()))
            .collect();

    // the agent calls the model with its own key (outside demo mode it has none)
    // the compose stack's attribution labels (--metric-dimensions project,key_id)
    let s = Stack::start_with(|c| {
        c.api_key = Some(Secret::new("sk-test"));
        c.metric_dimensions = vec![Dimension::Project, Dimension::KeyId];
    })
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let _stop_guard = StopOnDrop(stop.clone());
    let (first_tx, first_rx) = tokio::sync::oneshot::channel();
    let load_task = tokio::spawn(load(s.via(), stop.clone(), first_tx));
    tokio::time::timeout(Duration::from_secs(20), first_rx)
        .await
        .expect("first round of load within 20s")
        .expect("load task alive");

    let dir = scratch_dir("tokentap-dashboard");
    let listen = format!("127.0.0.1:{}", free_port());
    let prom = format!("http://{listen}");
    let _prometheus = start_prometheus(&dir, s.proxy.addr, &listen);
    let client = http_client();
    let prom_started = Instant::now();

    // Poll until, in one round, every expression returns data, every rule is evaluated
    // without error, and every exemplar query has exemplars with a trace id.
    let (counts, ex_counts, rules) = loop {
        let mut counts = Vec::with_capacity(exprs.len());
        for e in &exprs {
            counts.push(series(&client, &prom, &e.query).await);
        }
        let mut ex_counts = Vec::with_capacity(exemplar_queries.len());
        for q in &exemplar_queries {
            ex_counts.push(exemplars(&client, &prom, q).await);
        }
        let rules = rule_health(&client, &prom).await;
        let queries_ok = counts.iter().all(|c| c.is_some_and(|(n, _)| n > 0));
        let exemplars_ok = ex_counts.iter().all(|c| c.is_some_and(|(_, t)| t > 0));
        let rules_ok = rules
            .as_ref()
            .is_some_and(|r| !r.is_empty() && r.iter().all(|(_, _, h, _)| h == "ok"));
        if queries_ok && exemplars_ok && rules_ok {
            break (counts, ex_counts, rules.unwrap_or_default());
        }
        if prom_started.elapsed() > DEADLINE {
            let mut why = String::new();
            for (e, c) in exprs.iter().zip(&counts) {
                if !c.is_some_and(|(n, _)| n > 0) {
                    why += &format!("\n  no data: [{} {}] {}", e.source, e.ref_id, e.query);
                }
            }
            for (q, c) in exemplar_queries.iter().zip(&ex_counts) {
                if !c.is_some_and(|(_, t)| t > 0) {
                    why += &format!("\n  no exemplar with a trace_id ({c:?}): {q}");
                }
            }
            if !rules_ok {
                why += &format!("\n  rules not all healthy: {rules:?}");
            }
            panic!("after {DEADLINE:?} of Prometheus:{why}");
        }
        tokio::time::sleep(POLL).await;
    };
    let ready_after = prom_started.elapsed();

    stop.store(true, Ordering::Relaxed);
    let report = load_task.await.expect("load task");
    assert!(
        report.unexpected.is_empty(),
        "unexpected statuses under load:\n{}",
        report.unexpected.join("\n")
    );

    // Prometheus loaded exactly the file's rules, in group `tokentap`.
    let yaml = std::fs::read_to_string(repo_file(ALERTS)).expect("read the alert rules");
    let mut want: Vec<String> = rule_exprs(&yaml).into_iter().map(|(_, n, _)| n).collect();
    let mut got: Vec<String> = rules.iter().map(|(_, n, _, _)| n.clone()).collect();
    want.sort();
    got.sort();
    assert_eq!(got, want, "rules loaded by Prometheus");
    assert!(
        rules
            .iter()
            .all(|(g, _, _, e)| g == "tokentap" && e.is_empty()),
        "{rules:?}"
    );

    // The table for the closing note.
    let w = exprs
        .iter()
        .map(|e| e.source.len())
        .max()
        .unwrap_or(5)
        .max(5);
    eprintln!(
        "\n{:<w$}  ref   series  finite  query (as evaluated)",
        "panel"
    );
    for (e, c) in exprs.iter().zip(&counts) {
        let (n, f) = c.unwrap_or((0, 0));
        eprintln!(
            "{:<w$}  {:<4}  {n:>6}  {f:>6}  {}",
            e.source, e.ref_id, e.query
        );
    }
    eprintln!("\nexemplars (last 5m)  total  with trace_id  query");
    for (q, c) in exemplar_queries.iter().zip(&ex_counts) {
        let (t, tr) = c.unwrap_or((0, 0));
        eprintln!("                     {t:>5}  {tr:>13}  {q}");
    }
    eprintln!(
        "\n{} expressions ({} rules, all healthy) returned data {ready_after:.1?} after \
         Prometheus started; load: {} rounds, {} calls; test took {:.1?}",
        exprs.len(),
        rules.len(),
        report.rounds,
        report.calls,
        test_started.elapsed()
    );
}
