//! What a run found: the rows, the one table printed, the JSON written, and the two
//! numbers read from tokentap's `/metrics`.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde::Serialize;

use crate::client::{Outcome, Plan};
use crate::stats::Summary;

#[derive(Debug, Serialize)]
pub struct PlanOut {
    pub sessions: usize,
    pub deltas_per_response: usize,
    pub gap_ms: u64,
    pub frames_per_session: usize,
}

#[derive(Debug, Serialize)]
pub struct Setup {
    pub pinned: bool,
    pub client_cpu: Option<u32>,
    pub server_cpu: Option<u32>,
    pub nofile_soft_limit: Option<u64>,
    pub loadavg_start: String,
    pub loadavg_end: String,
    pub tokentap_bin: String,
    pub tokentap_log_level: String,
    pub git_commit: Option<String>,
}

/// What tokentap used and reported over one run.
#[derive(Debug, Default, Serialize)]
pub struct ProxyUse {
    /// utime + stime over its whole life (start-up, handshakes, responses, closes).
    pub cpu_s: f64,
    /// utime + stime over the response phase (every session open → the last one closed).
    pub responses_cpu_s: f64,
    /// `responses_cpu_s` per response frame relayed (the closes included).
    pub cpu_us_per_frame: f64,
    /// `VmHWM`.
    pub peak_rss_mib: f64,
    /// `llm_requests_total` summed over the series with `model="gpt-realtime"`.
    pub llm_requests_total: f64,
    pub telemetry_dropped_total: f64,
    /// What the OTLP receiver got, after tokentap's shutdown flush.
    pub spans_received: usize,
    pub log_records_received: usize,
    /// Distinct metric names.
    pub metric_names_received: usize,
    /// WARN/ERROR lines in tokentap's stderr.
    pub log_issues: usize,
    pub log_samples: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct Row {
    pub target: &'static str,
    pub sessions: usize,
    pub opened: usize,
    pub completed: usize,
    pub failed: usize,
    pub first_error: Option<String>,
    /// Response events timed (each completed session: `response.created`, deltas, `response.done`).
    pub frames: usize,
    /// Events stamped after they arrived (a clock step), counted as 0 µs.
    pub negative_latencies: usize,
    pub frame_latency: Summary,
    /// The same, of the deltas only (each response's events but its first and last).
    pub delta_latency: Summary,
    /// The same, of each response's last event (`response.done`).
    pub done_latency: Summary,
    /// Connect to `101` received (handshakes are not what is compared).
    pub upgrade: Summary,
    pub response_phase_s: f64,
    /// The mock's CPU over the response phase.
    pub mock_cpu_s: f64,
    /// Each core's busy share over the response phase, whoever used it.
    pub core_busy_pct: Vec<f64>,
    pub core_steal_pct: Vec<f64>,
    pub tokentap: Option<ProxyUse>,
}

impl Row {
    pub fn new(target: &'static str, plan: &Plan, out: Outcome) -> Row {
        // each completed session's events are consecutive, in order
        let per = plan.frames_per_response();
        let at = |keep: &dyn Fn(usize) -> bool| -> Vec<u32> {
            out.frame_us
                .iter()
                .enumerate()
                .filter(|(i, _)| keep(i % per))
                .map(|(_, us)| *us)
                .collect()
        };
        let delta_latency = Summary::of(at(&|i| i > 0 && i + 1 < per));
        let done_latency = Summary::of(at(&|i| i + 1 == per));
        Row {
            delta_latency,
            done_latency,
            target,
            sessions: plan.sessions,
            opened: out.opened,
            completed: out.completed,
            failed: out.failed,
            first_error: out.first_error,
            frames: out.frame_us.len(),
            negative_latencies: out.negative,
            frame_latency: Summary::of(out.frame_us),
            upgrade: Summary::of(out.upgrade_us),
            response_phase_s: out.response_phase.as_secs_f64(),
            mock_cpu_s: 0.0,
            core_busy_pct: Vec::new(),
            core_steal_pct: Vec::new(),
            tokentap: None,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub harness: &'static str,
    pub command: String,
    pub started_unix_s: u64,
    pub wall_s: f64,
    pub plan: PlanOut,
    pub setup: Setup,
    pub rows: Vec<Row>,
    /// tokentap's per-frame p50 and p99 minus direct's, µs.
    pub added_p50_us: Option<i64>,
    pub added_p99_us: Option<i64>,
    /// The same for nginx relaying the sessions, when it ran.
    pub nginx_added_p99_us: Option<i64>,
    /// Every completed session's response counted in `llm_requests_total`.
    pub every_response_metered: Option<bool>,
    pub problems: Vec<String>,
}

impl Report {
    pub fn new(
        plan: &Plan,
        pinned: bool,
        bin: &Path,
        log_level: &str,
        nofile: Option<u64>,
    ) -> Report {
        let args: Vec<String> = std::env::args()
            .skip(1)
            .filter(|a| a != "--bench")
            .collect();
        Report {
            harness: "benches/realtime",
            command: if args.is_empty() {
                "cargo bench --bench realtime".to_owned()
            } else {
                format!("cargo bench --bench realtime -- {}", args.join(" "))
            },
            started_unix_s: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            wall_s: 0.0,
            plan: PlanOut {
                sessions: plan.sessions,
                deltas_per_response: plan.events,
                gap_ms: u64::try_from(plan.gap.as_millis()).unwrap_or(u64::MAX),
                frames_per_session: plan.frames_per_response(),
            },
            setup: Setup {
                pinned,
                client_cpu: pinned.then_some(crate::CLIENT_CPU),
                server_cpu: pinned.then_some(crate::SERVER_CPU),
                nofile_soft_limit: nofile,
                loadavg_start: loadavg(),
                loadavg_end: String::new(),
                tokentap_bin: bin.display().to_string(),
                tokentap_log_level: log_level.to_owned(),
                git_commit: git_commit(),
            },
            rows: Vec::new(),
            added_p50_us: None,
            added_p99_us: None,
            nginx_added_p99_us: None,
            every_response_metered: None,
            problems: Vec::new(),
        }
    }

    pub fn finish(&mut self, wall: Duration) {
        self.wall_s = wall.as_secs_f64();
        self.setup.loadavg_end = loadavg();
        let row = |t: &str| self.rows.iter().find(|r| r.target == t && r.frames > 0);
        if let (Some(d), Some(v)) = (row("direct"), row("tokentap")) {
            let (d, v) = (&d.frame_latency, &v.frame_latency);
            self.added_p50_us = Some(i64::from(v.p50_us) - i64::from(d.p50_us));
            self.added_p99_us = Some(i64::from(v.p99_us) - i64::from(d.p99_us));
        }
        if let (Some(d), Some(n)) = (row("direct"), row("nginx")) {
            self.nginx_added_p99_us =
                Some(i64::from(n.frame_latency.p99_us) - i64::from(d.frame_latency.p99_us));
        }
        if let Some(v) = self.rows.iter().find(|r| r.target == "tokentap") {
            let metered = v.tokentap.as_ref().map(|u| u.llm_requests_total);
            self.every_response_metered = metered.map(|m| m == v.completed as f64);
        }
        for r in &self.rows {
            if r.failed > 0 {
                self.problems.push(format!(
                    "{}: {} of {} sessions failed; first: {}",
                    r.target,
                    r.failed,
                    r.sessions,
                    r.first_error.as_deref().unwrap_or("?")
                ));
            }
        }
    }

    pub fn print(&self, json: &Path) {
        let p = &self.plan;
        println!();
        println!(
            "realtime: {} concurrent sessions, each one response (response.created + {} text deltas {} ms apart + response.done = {} frames timed); per-frame latency = client read time − mock write time",
            p.sessions, p.deltas_per_response, p.gap_ms, p.frames_per_session
        );
        println!();
        println!(
            "| path | sessions completed | frames | p50 | p99 | p99.9 | max | p99 of deltas | p99 of response.done | upgrade p99 | tokentap CPU: run (responses) | tokentap peak RSS | mock CPU | core0 / core1 busy |"
        );
        println!(
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
        );
        for r in &self.rows {
            let l = &r.frame_latency;
            let (cpu, rss) =
                r.tokentap
                    .as_ref()
                    .map_or(("–".to_owned(), "–".to_owned()), |u| {
                        (
                            format!("{:.2} s ({:.2} s)", u.cpu_s, u.responses_cpu_s),
                            format!("{:.1} MiB", u.peak_rss_mib),
                        )
                    });
            let busy: Vec<String> = r
                .core_busy_pct
                .iter()
                .map(|b| format!("{b:.0} %"))
                .collect();
            println!(
                "| {} | {}/{} | {} | {} | {} | {} | {} | {} | {} | {} | {cpu} | {rss} | {:.2} s | {} |",
                r.target,
                r.completed,
                r.sessions,
                r.frames,
                ms(l.p50_us),
                ms(l.p99_us),
                ms(l.p999_us),
                ms(l.max_us),
                ms(r.delta_latency.p99_us),
                ms(r.done_latency.p99_us),
                ms(r.upgrade.p99_us),
                r.mock_cpu_s,
                busy.join(" / "),
            );
        }
        println!();
        if let (Some(a50), Some(a99)) = (self.added_p50_us, self.added_p99_us) {
            println!(
                "added per-frame latency (tokentap − direct): p50 {}, p99 {}",
                signed_ms(a50),
                signed_ms(a99)
            );
        }
        if let Some(a99) = self.nginx_added_p99_us {
            println!(
                "added per-frame latency (nginx − direct): p99 {}",
                signed_ms(a99)
            );
        }
        let via = self.rows.iter().find(|r| r.target == "tokentap");
        if let Some((v, u)) = via.and_then(|v| Some((v, v.tokentap.as_ref()?))) {
            println!(
                "metered: llm_requests_total{{model=\"{}\"}} = {} for {} completed sessions: {}",
                crate::mock::MODEL,
                u.llm_requests_total,
                v.completed,
                if self.every_response_metered == Some(true) {
                    "OK, every response metered"
                } else {
                    "MISMATCH"
                }
            );
            println!(
                "tokentap CPU per relayed response frame: {:.1} µs (response phase; mock and core columns are over it too)",
                u.cpu_us_per_frame
            );
            println!(
                "telemetry: {} spans, {} log records, {} metric names received over OTLP; tokentap_telemetry_dropped_total {}; {} WARN/ERROR lines in tokentap's log",
                u.spans_received,
                u.log_records_received,
                u.metric_names_received,
                u.telemetry_dropped_total,
                u.log_issues
            );
            for s in &u.log_samples {
                println!("  log: {s}");
            }
        }
        let negative: usize = self.rows.iter().map(|r| r.negative_latencies).sum();
        if negative > 0 {
            println!(
                "note: {negative} frames arrived before their stamp (clock step), counted as 0"
            );
        }
        for p in &self.problems {
            println!("problem: {p}");
        }
        let steal = self
            .rows
            .iter()
            .flat_map(|r| r.core_steal_pct.iter().copied())
            .fold(0.0_f64, f64::max);
        println!(
            "realtime: {:.0} s; load average {} at start, {} at end; highest steal {steal:.1} %; {}; results: {}",
            self.wall_s,
            self.setup.loadavg_start,
            self.setup.loadavg_end,
            if self.setup.pinned {
                "client on core 0, mock and tokentap on core 1"
            } else {
                "not pinned"
            },
            json.display()
        );
    }
}

/// Microseconds as milliseconds with two decimals.
fn ms(us: u32) -> String {
    format!("{:.2} ms", f64::from(us) / 1000.0)
}

fn signed_ms(us: i64) -> String {
    format!("{:+.2} ms", us as f64 / 1000.0)
}

/// `GET /metrics` over one HTTP/1.1 connection.
pub async fn get_metrics(addr: SocketAddr) -> crate::Result<String> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = http::Request::get("/metrics")
        .header(http::header::HOST, addr.to_string())
        .body(Empty::<Bytes>::new())?;
    let resp = sender.send_request(req).await?;
    if !resp.status().is_success() {
        return Err(format!("GET /metrics: {}", resp.status()).into());
    }
    let body = resp.into_body().collect().await?.to_bytes();
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// Sum of every sample of `name` in a Prometheus text page, only the series labelled
/// `model="<model>"` when given.
pub fn metric_sum(page: &str, name: &str, model: Option<&str>) -> f64 {
    let labels = model.map(|m| [format!("{{model=\"{m}\""), format!(",model=\"{m}\"")]);
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|l| {
            labels
                .as_ref()
                .is_none_or(|ls| ls.iter().any(|m| l.contains(m.as_str())))
        })
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .sum()
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn git_commit() -> Option<String> {
    std::process::Command::new("git")
        .args([
            "-C",
            env!("CARGO_MANIFEST_DIR"),
            "rev-parse",
            "--short",
            "HEAD",
        ])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
}
