//! A real Prometheus child process for integration tests: a scratch directory, a config
//! scraping one target, the process itself (killed and reaped when dropped), and small
//! helpers for its HTTP API.
//!
//! Needs the `prometheus` binary (Debian package `prometheus`); see [`available`].
#![allow(dead_code)]

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::Value;

/// The HTTP client the helpers take (`support::http_client()`).
pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// The running Prometheus: killed and reaped in every path. On a panic its log is
/// printed and its directory kept; otherwise the directory is removed.
pub struct Prometheus {
    child: Child,
    dir: PathBuf,
    log: PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            eprintln!(
                "---- prometheus log ({}) ----\n{log}---- end of prometheus log ----",
                self.log.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// `true` when `bin` runs; skips (or fails in CI) otherwise. `skipped` starts the message
/// printed when skipping (`"{skipped}: {bin} not installed (…)"`).
pub fn available(bin: &str, skipped: &str) -> bool {
    match Command::new(bin)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(_) => true,
        Err(e) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "{bin} is required in CI: apt-get install prometheus ({e})"
            );
            eprintln!("{skipped}: {bin} not installed ({e})");
            false
        }
    }
}

pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr").port()
}

/// A new, empty directory `<temp>/<prefix>-<pid>-<nanos>`.
pub fn scratch_dir(prefix: &str) -> PathBuf {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!("{prefix}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// Writes `dir/prometheus.yml`: scrape and evaluate every 1 s, load `rule_files`, and
/// scrape `target`'s `/metrics` as job `job`.
pub fn write_config(dir: &Path, job: &str, target: SocketAddr, rule_files: &[PathBuf]) -> PathBuf {
    let path = dir.join("prometheus.yml");
    let mut yml =
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n"
            .to_owned();
    if !rule_files.is_empty() {
        yml += "rule_files:\n";
        for r in rule_files {
            yml += &format!("  - '{}'\n", r.display());
        }
    }
    yml += &format!(
        "scrape_configs:\n  - job_name: {job}\n    metrics_path: /metrics\n    \
         static_configs:\n      - targets: ['{target}']\n"
    );
    std::fs::write(&path, yml).expect("write prometheus.yml");
    path
}

/// Starts `prometheus` with `config`, its data and log in `dir`, listening on `listen`;
/// `extra_args` (feature flags, …) are passed after the standard ones.
pub fn spawn_prometheus(
    dir: &Path,
    config: &Path,
    listen: &str,
    extra_args: &[&str],
) -> Prometheus {
    let log = dir.join("prometheus.log");
    let out = File::create(&log).expect("log file");
    let err = out.try_clone().expect("log file");
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address={listen}"))
        .args(extra_args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .expect("spawn prometheus");
    Prometheus {
        child,
        dir: dir.to_owned(),
        log,
    }
}

/// Percent-encodes a query-string value (a PromQL expression).
pub fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `GET url` → status and whole body; `None` while Prometheus is not up yet.
async fn get(client: &HttpClient, url: &str) -> Option<(StatusCode, Bytes)> {
    let req = Request::get(url)
        .body(Full::new(Bytes::new()))
        .expect("request");
    let resp = client.request(req).await.ok()?;
    let status = resp.status();
    let body = resp.into_body().collect().await.ok()?.to_bytes();
    Some((status, body))
}

/// `GET url` → the JSON body of a 200, or `None` while Prometheus is not up yet.
pub async fn get_json(client: &HttpClient, url: &str) -> Option<Value> {
    let (status, body) = get(client, url).await?;
    if status != StatusCode::OK {
        return None;
    }
    serde_json::from_slice(&body).ok()
}

/// `GET url` → the API's JSON answer; `None` while Prometheus is not up yet. A query
/// Prometheus rejects (`400`/`422`, `status: error`) fails the test at once.
pub async fn api(client: &HttpClient, url: &str) -> Option<Value> {
    let (status, body) = get(client, url).await?;
    let v: Value = serde_json::from_slice(&body).ok()?;
    if status == StatusCode::BAD_REQUEST || status == StatusCode::UNPROCESSABLE_ENTITY {
        panic!("Prometheus rejected {url}: {v}");
    }
    (status == StatusCode::OK && v["status"] == "success").then_some(v)
}

/// The instant vector of `q`: each series' labels and value (`None` until the API answers).
pub async fn query(client: &HttpClient, prom: &str, q: &str) -> Option<Vec<(Value, f64)>> {
    let v = get_json(client, &format!("{prom}/api/v1/query?query={}", encode(q))).await?;
    assert_eq!(v["status"], "success", "query {q}: {v}");
    let result = v["data"]["result"].as_array().expect("result vector");
    Some(
        result
            .iter()
            .map(|r| {
                let val = r["value"][1].as_str().expect("sample value");
                let val: f64 = val.parse().expect("float sample");
                (r["metric"].clone(), val)
            })
            .collect(),
    )
}
