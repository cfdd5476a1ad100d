//! Realtime sessions relayed by tokentap vs. a direct connection (issue 14).
//!
//! # Why this exists
//!
//! tokentap relays a Realtime session's WebSocket frames and reads a copy of them to
//! meter each response. The promise is that relayed frames arrive as fast as they
//! would without it, so the question is a per-frame number: how much later does a
//! server event reach the client through tokentap than over a direct connection, at
//! the tail, with many sessions open at once and full telemetry on.
//!
//! # What it does
//!
//! - Re-executes itself under `taskset -c 0` (the client owns core 0) with the open-files
//!   limit raised; starts the mock Realtime upstream (this binary with `--mock-upstream`)
//!   and tokentap under `taskset -c 1`.
//! - Runs the same workload twice, direct (client → mock) then through tokentap
//!   (release build, 100 % of spans sampled, traces, metrics and logs exported over
//!   OTLP/gRPC to a live receiver on core 0 in the idle class): N concurrent sessions
//!   (default 1,000), each one handshake, `session.created`, one `response.create`, and a
//!   response of `response.created`, E text deltas (default 50) G ms apart (default 20)
//!   and `response.done` with usage; then a clean close.
//! - Every server event carries the time the mock wrote it; the client subtracts it from
//!   the time it read the event: the per-frame one-way latency, on one machine's clock.
//! - Prints one table (markdown) to stdout, checks from tokentap's `/metrics` that every
//!   response was metered, and writes everything to `target/bench-realtime.json`.
//!
//! ```sh
//! cargo bench --bench realtime                                    # 1,000 sessions × 50 deltas
//! cargo bench --bench realtime -- --sessions 100 --events 20 --gap 10
//! ```
//!
//! See `docs/benchmarks.md` ("Realtime sessions") for how to read it.
#![forbid(unsafe_code)]
#![deny(clippy::unwrap_used)]

#[path = "../load/build.rs"]
mod build;
// Shared with benches/load, which uses all of it; this harness uses the child guards,
// tokentap's start-up and the /proc readings.
#[allow(dead_code)]
#[path = "../load/procs.rs"]
mod procs;
#[path = "../load/sink.rs"]
mod sink;
#[allow(dead_code)]
#[path = "../load/stats.rs"]
mod stats;

mod client;
mod mock;
mod report;
mod ws;

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use build::{ENV_BIN, Paths, build_tokentap};
use client::Plan;
use procs::{Mock, TokentapSetup};
use report::{ProxyUse, Report, Row};
use sink::OtlpSink;

pub type Error = Box<dyn std::error::Error + Send + Sync>;
pub type Result<T> = std::result::Result<T, Error>;

/// Set in the re-executed (pinned) process: `1` pinned, `0` not.
const ENV_PINNED: &str = "TOKENTAP_BENCH_PINNED";
const CLIENT_CPU: u32 = 0;
const SERVER_CPU: u32 = 1;
/// Open files wanted: 1,000 sessions need ~1,000 sockets here and ~2,000 in the mock.
const NOFILE: u32 = 65536;

const USAGE: &str = "\
usage: cargo bench --bench realtime [-- OPTIONS]

  --sessions N          concurrent sessions (default 1000)
  --events N            text deltas per response (default 50)
  --gap MS              milliseconds between two deltas (default 20)
  --json PATH           where to write the results (default target/bench-realtime.json)
  --keep-logs           keep the temp dir with tokentap's stderr

environment:
  TOKENTAP_BENCH_BIN    measure this tokentap binary instead of building target/release/tokentap
  TOKENTAP_LOG          tokentap's log filter during the run (default info)
";

fn main() -> ExitCode {
    match entry() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("realtime bench: error: {e}");
            ExitCode::FAILURE
        }
    }
}

struct Args {
    /// Cargo passes `--bench` under `cargo bench`; without it (`cargo test --benches`)
    /// nothing is run.
    bench: bool,
    help: bool,
    mock_port: Option<u16>,
    plan: Plan,
    json: Option<PathBuf>,
    keep_logs: bool,
}

impl Args {
    fn parse(mut it: impl Iterator<Item = String>) -> Result<Args> {
        let mut a = Args {
            bench: false,
            help: false,
            mock_port: None,
            plan: Plan {
                sessions: 1000,
                events: 50,
                gap: Duration::from_millis(20),
            },
            json: None,
            keep_logs: false,
        };
        while let Some(arg) = it.next() {
            let mut value = || it.next().ok_or_else(|| format!("{arg} needs a value"));
            let number = |v: String| -> Result<u64> {
                Ok(v.parse().map_err(|e| format!("{arg} {v}: {e}"))?)
            };
            match arg.as_str() {
                "--bench" => a.bench = true,
                "--help" | "-h" => a.help = true,
                "--keep-logs" => a.keep_logs = true,
                "--mock-upstream" => a.mock_port = Some(u16::try_from(number(value()?)?)?),
                "--sessions" => a.plan.sessions = usize::try_from(number(value()?)?.max(1))?,
                "--events" => a.plan.events = usize::try_from(number(value()?)?)?,
                "--gap" => a.plan.gap = Duration::from_millis(number(value()?)?),
                "--json" => a.json = Some(PathBuf::from(value()?)),
                // Filters cargo may forward (`cargo bench -- NAME`): not ours.
                other if !other.starts_with('-') => {}
                other => return Err(format!("unknown option {other:?}\n\n{USAGE}").into()),
            }
        }
        Ok(a)
    }
}

fn entry() -> Result<ExitCode> {
    let args = Args::parse(std::env::args().skip(1))?;
    if let Some(port) = args.mock_port {
        mock::run(port)?;
        return Ok(ExitCode::SUCCESS);
    }
    if args.help {
        print!("{USAGE}");
        return Ok(ExitCode::SUCCESS);
    }
    if !args.bench {
        println!(
            "realtime: a benchmark that opens 1,000 WebSocket sessions and starts tokentap; run it \
             with `cargo bench --bench realtime` (nothing to do under `cargo test`)"
        );
        return Ok(ExitCode::SUCCESS);
    }
    match std::env::var(ENV_PINNED) {
        Ok(p) => measure(&args, p == "1"),
        Err(_) => prepare_and_reexec(),
    }
}

/// Builds tokentap (unless given one), then re-executes this harness pinned to core 0
/// with the open-files limit raised.
fn prepare_and_reexec() -> Result<ExitCode> {
    let paths = Paths::discover()?;
    let bin = match std::env::var_os(ENV_BIN) {
        Some(bin) => PathBuf::from(bin),
        None => build_tokentap(&paths, "realtime")?,
    };
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let have_taskset = Command::new("taskset")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    let pin = cpus >= 2 && have_taskset;
    if !pin {
        eprintln!(
            "realtime: NOT pinning ({cpus} CPU available, taskset {}): client, tokentap and mock share all cores",
            if have_taskset { "found" } else { "not found" }
        );
    }
    // `ulimit` needs a shell; `exec` keeps the pid, so Ctrl-C and exit status are ours.
    let script = format!(
        "ulimit -n {NOFILE} 2>/dev/null || ulimit -n \"$(ulimit -Hn)\" 2>/dev/null; exec {}\"$0\" \"$@\"",
        if pin {
            format!("taskset -c {CLIENT_CPU} ")
        } else {
            String::new()
        }
    );
    let err = Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg(std::env::current_exe()?)
        .args(std::env::args_os().skip(1))
        .env(ENV_PINNED, if pin { "1" } else { "0" })
        .env(ENV_BIN, &bin)
        .exec();
    Err(format!("re-executing under taskset: {err}").into())
}

/// A temp dir for tokentap's stderr, removed on drop unless kept.
struct TempDir {
    path: PathBuf,
    keep: bool,
}

impl TempDir {
    fn create(keep: bool) -> Result<TempDir> {
        let path = std::env::temp_dir().join(format!(
            "tokentap-realtime-{}-{}",
            std::process::id(),
            ws::now_ns() % 1_000_000_000
        ));
        std::fs::create_dir_all(&path)?;
        Ok(TempDir { path, keep })
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if self.keep {
            eprintln!("realtime: logs kept in {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

fn measure(args: &Args, pinned: bool) -> Result<ExitCode> {
    let started = Instant::now();
    let paths = Paths::discover()?;
    let tokentap = std::env::var_os(ENV_BIN)
        .map_or_else(|| paths.target_dir.join("release/tokentap"), PathBuf::from);
    if !tokentap.is_file() {
        return Err(format!("no tokentap binary at {}", tokentap.display()).into());
    }
    let log_level = std::env::var("TOKENTAP_LOG").unwrap_or_else(|_| "info".to_owned());
    let nofile = procs::nofile_limit();
    let wanted = 2 * args.plan.sessions as u64 + 256;
    if nofile.is_some_and(|n| n < wanted) {
        eprintln!("realtime: warning: open-files limit {nofile:?} is below {wanted}");
    }
    let mut report = Report::new(&args.plan, pinned, &tokentap, &log_level, nofile);
    eprintln!(
        "realtime: {} sessions × {} deltas {} ms apart; client on {}, mock and tokentap on {}; load average {}",
        args.plan.sessions,
        args.plan.events,
        args.plan.gap.as_millis(),
        if pinned { "core 0" } else { "any core" },
        if pinned { "core 1" } else { "any core" },
        report.setup.loadavg_start,
    );
    let tmp = TempDir::create(args.keep_logs)?;
    let server_cpu = pinned.then_some(SERVER_CPU);
    let mut mock = Mock::start(&std::env::current_exe()?, server_cpu)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let outcome: Result<()> = rt.block_on(async {
        tokio::select! {
            r = async {
                report.rows.push(direct(&mock, args.plan).await);
                tokio::time::sleep(Duration::from_millis(500)).await;
                let setup = TokentapSetup {
                    dir: &tmp.path,
                    upstream: mock.addr,
                    otlp_endpoint: "",
                    log_level: &log_level,
                    cpu: server_cpu,
                    run: 1,
                };
                report.rows.push(via_tokentap(&tokentap, setup, &mock, args.plan).await?);
                // nginx relaying the same sessions: what any proxy on this core split costs
                if let Some(nginx) = find_nginx() {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    let proxy = procs::start_nginx(&nginx, &tmp.path.join("nginx"), mock.addr, server_cpu)?;
                    report.rows.push(via_proxy("nginx", proxy, &mock, args.plan).await);
                } else {
                    eprintln!("realtime: no nginx (apt-get install -y nginx): no nginx row");
                }
                Ok::<(), Error>(())
            } => r,
            r = tokio::signal::ctrl_c() => Err(match r {
                Ok(()) => "interrupted (Ctrl-C); everything started has been stopped".into(),
                Err(e) => format!("waiting for Ctrl-C: {e}").into(),
            }),
        }
    });
    drop(rt);
    if let Some(status) = mock.guard.exited() {
        report.problems.push(format!(
            "the mock upstream exited during the run ({status})"
        ));
    }
    drop(mock);
    if let Err(e) = &outcome {
        report.problems.push(e.to_string());
    }
    report.finish(started.elapsed());
    let json = args
        .json
        .clone()
        .unwrap_or_else(|| paths.target_dir.join("bench-realtime.json"));
    report.print(&json);
    if let Some(dir) = json.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&json, serde_json::to_string_pretty(&report)? + "\n")?;
    outcome.map(|()| ExitCode::SUCCESS)
}

/// CPU ticks per core, the mock's and tokentap's, at one instant.
struct Snap {
    cores: Vec<(u64, u64, u64)>,
    mock: u64,
    proxy: u64,
}

fn snap(mock: &Mock, proxy: Option<u32>) -> Snap {
    Snap {
        cores: procs::cpu_times(),
        mock: procs::tree_ticks(mock.guard.pid()),
        proxy: proxy.map_or(0, procs::tree_ticks),
    }
}

/// Fills the row's machine columns over the response phase (`a` taken once every
/// session was open, `b` once the last one closed).
fn machine(row: &mut Row, a: &Snap, b: &Snap) {
    let share = |part: u64, total: u64| {
        if total == 0 {
            0.0
        } else {
            part as f64 * 100.0 / total as f64
        }
    };
    row.mock_cpu_s = b.mock.saturating_sub(a.mock) as f64 / procs::CLK_TCK;
    for (x, y) in a.cores.iter().zip(&b.cores) {
        let total = y.2.saturating_sub(x.2);
        row.core_busy_pct
            .push(share(y.0.saturating_sub(x.0), total));
        row.core_steal_pct
            .push(share(y.1.saturating_sub(x.1), total));
    }
}

/// Runs the sessions against `addr`, with snapshots around the response phase.
async fn sessions(
    addr: SocketAddr,
    plan: Plan,
    mock: &Mock,
    proxy: Option<u32>,
) -> (client::Outcome, Snap, Snap) {
    let mut a = None;
    let out = client::run(addr, plan, || a = Some(snap(mock, proxy))).await;
    let b = snap(mock, proxy);
    (out, a.unwrap_or_else(|| snap(mock, proxy)), b)
}

async fn direct(mock: &Mock, plan: Plan) -> Row {
    eprintln!(
        "realtime: direct: {} sessions → {}",
        plan.sessions, mock.addr
    );
    let (out, a, b) = sessions(mock.addr, plan, mock, None).await;
    let mut row = Row::new("direct", &plan, out);
    machine(&mut row, &a, &b);
    row
}

/// Debian's nginx, when installed.
fn find_nginx() -> Option<PathBuf> {
    ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

/// The sessions through another proxy (nginx's `proxy_pass` with WebSocket upgrades).
async fn via_proxy(name: &'static str, mut proxy: procs::Proxy, mock: &Mock, plan: Plan) -> Row {
    let pid = proxy.guard.pid();
    eprintln!(
        "realtime: {name}: {} sessions → {} (pid {pid}) → {}",
        plan.sessions, proxy.addr, mock.addr
    );
    let (out, a, b) = sessions(proxy.addr, plan, mock, Some(pid)).await;
    let mut row = Row::new(name, &plan, out);
    machine(&mut row, &a, &b);
    proxy.guard.stop(Duration::from_secs(5));
    row
}

async fn via_tokentap(
    bin: &std::path::Path,
    setup: TokentapSetup<'_>,
    mock: &Mock,
    plan: Plan,
) -> Result<Row> {
    let sink = OtlpSink::start()?;
    let setup = TokentapSetup {
        otlp_endpoint: &sink.endpoint,
        ..setup
    };
    let mut proxy = procs::start_tokentap(bin, &setup)?;
    let pid = proxy.guard.pid();
    eprintln!(
        "realtime: tokentap: {} sessions → {} (pid {pid}) → {}",
        plan.sessions, proxy.addr, mock.addr
    );
    let (out, a, b) = sessions(proxy.addr, plan, mock, Some(pid)).await;
    let completed = out.completed;
    let mut row = Row::new("tokentap", &plan, out);
    machine(&mut row, &a, &b);
    // Each response is metered when its `response.done` has been relayed: give the
    // observer a moment after the last one before reading the counter.
    let mut page = String::new();
    for _ in 0..20 {
        page = report::get_metrics(proxy.addr).await.unwrap_or_else(|e| {
            eprintln!("realtime: GET /metrics from tokentap failed: {e}");
            String::new()
        });
        let metered = report::metric_sum(&page, "llm_requests_total", Some(mock::MODEL));
        if metered >= completed as f64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let responses_cpu_s = b.proxy.saturating_sub(a.proxy) as f64 / procs::CLK_TCK;
    let mut used = ProxyUse {
        cpu_s: procs::tree_ticks(pid) as f64 / procs::CLK_TCK,
        responses_cpu_s,
        cpu_us_per_frame: responses_cpu_s * 1e6 / row.frames.max(1) as f64,
        peak_rss_mib: procs::tree_hwm_kib(pid) as f64 / 1024.0,
        llm_requests_total: report::metric_sum(&page, "llm_requests_total", Some(mock::MODEL)),
        telemetry_dropped_total: report::metric_sum(
            &page,
            "tokentap_telemetry_dropped_total",
            None,
        ),
        ..ProxyUse::default()
    };
    // SIGTERM: tokentap flushes pending spans, metrics and logs (≤ 5 s).
    proxy.guard.stop(Duration::from_secs(8));
    let got = sink.finish();
    used.spans_received = got.spans;
    used.log_records_received = got.log_records;
    used.metric_names_received = got.metric_names;
    let scan = procs::scan_logs(&proxy.logs, &["WARN", "ERROR"]);
    used.log_issues = scan.issues;
    used.log_samples = scan.samples;
    row.tokentap = Some(used);
    Ok(row)
}
