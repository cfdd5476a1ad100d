//! Side-by-side load benchmark: **direct** vs **nginx** vs the **hyper floor** vs
//! **tokentap** (issues 6 and 16).
//!
//! # Why this exists
//!
//! A sidecar sits on every model call, so its cost must be one nobody can feel. "Fast" means
//! nothing without a baseline measured the same way on the same machine: this harness puts
//! tokentap — release build, full telemetry (100 % sampled spans, metrics and logs exported
//! over OTLP to a live receiver, `/metrics` on) — next to a plain client → upstream
//! connection and next to nginx's `proxy_pass` (upstream keepalive, buffering off, the
//! near-limit baseline for a forwarding proxy), all against the same fast mock upstream, and
//! reports ratios, so a regression or an improvement shows up as a number rather than a
//! feeling. The targets it checks are issue 6's.
//!
//! # What it does
//!
//! - Pins itself (the load generator) to core 0 by re-executing under `taskset -c 0`, with
//!   the open-files limit raised, and starts the mock upstream (this same binary with
//!   `--mock-upstream`) and each proxy under `taskset -c 1`.
//! - (i) closed loop, 32 connections, fixed duration: throughput and latency;
//! - (ii) open loop at 2,000 req/s over a pool of 64 connections: latency measured from
//!   each request's *intended* send time (coordinated omission corrected), plus how many
//!   requests missed their slot;
//! - (iii) 100 and 1,000 concurrent streams of 50 chunks 20 ms apart: time to first byte,
//!   gap between chunks as the client sees them, completed streams, the proxy's peak RSS.
//!
//! Each (scenario, target) gets a fresh proxy (so peak RSS belongs to that scenario) and,
//! for tokentap, a fresh OTLP receiver. Every child is owned by a guard that stops it on
//! every path out (errors, panics, Ctrl-C). One table per scenario goes to stdout and
//! everything to `target/bench-load.json`.
//!
//! ```sh
//! cargo bench --bench load               # full: 20 s per load phase, ~3 minutes
//! cargo bench --bench load -- --quick    # 5 s per load phase, under 2 minutes
//! ```
//!
//! See `docs/benchmarks.md` for the options and how to read the output.
#![forbid(unsafe_code)]
#![deny(clippy::unwrap_used)]

mod build;
mod client;
mod floor;
mod floor_own;
mod mock;
mod procs;
mod report;
mod sink;
mod stats;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use build::{ENV_BIN, Paths, build_tokentap};
use client::{Conn, Endpoint};
use procs::{Mock, Proxy, TokentapSetup};
use report::{ClosedRow, Health, IdleRow, OpenRow, Resources, StreamRow, Target, Verdict};
use sink::OtlpSink;
use stats::{Summary, Timeline};

pub type Error = Box<dyn std::error::Error + Send + Sync>;
pub type Result<T> = std::result::Result<T, Error>;

/// Set in the re-executed (pinned) process: `1` pinned, `0` not.
const ENV_PINNED: &str = "TOKENTAP_BENCH_PINNED";
const GENERATOR_CPU: u32 = 0;
const SERVER_CPU: u32 = 1;
/// Open files wanted: 1,000 streams need ~1,000 client sockets here.
const NOFILE: u32 = 65536;

const USAGE: &str = "\
usage: cargo bench --bench load [-- OPTIONS]

  --quick               5 s load phases and one round of streams (under 2 minutes)
  --scenarios LIST      any of i,ii,iii,iv (or closed,open,streams,idle); default all
  --targets LIST        any of direct,nginx,floor,tokentap; default all
  --json PATH           where to write the results (default target/bench-load.json)
  --keep-logs           keep the temp dir with nginx/tokentap logs and configs
  --mock-cpu N          pin the mock upstream to CPU N instead of the proxies' (core 1);
                        0 puts it with the load generator, off the proxy's core

environment:
  TOKENTAP_BENCH_BIN    measure this tokentap binary instead of building target/release/tokentap
  TOKENTAP_LOG          tokentap's log filter during the run (default info)
  TOKENTAP_BENCH_ARGS   extra tokentap flags (whitespace-separated), e.g. for an A/B run
  TOKENTAP_FLOOR_CLIENT the floor's upstream client: legacy (hyper-util's, the default),
                        own (driven by each call's task) or own-spawned (benches/load/floor_own.rs)
";

fn main() -> ExitCode {
    match entry() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("load bench: error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    Closed,
    Open,
    Streams,
    Idle,
}

struct Args {
    quick: bool,
    /// Cargo passes `--bench` under `cargo bench`; without it (`cargo test --benches`)
    /// nothing is run.
    bench: bool,
    help: bool,
    mock_port: Option<u16>,
    /// Run as the hyper floor in front of this upstream (a child of the harness).
    floor_upstream: Option<std::net::SocketAddr>,
    scenarios: Vec<Scenario>,
    targets: Vec<Target>,
    json: Option<PathBuf>,
    keep_logs: bool,
    /// The mock upstream's CPU, when not the proxies' own.
    mock_cpu: Option<u32>,
}

impl Args {
    fn parse(mut it: impl Iterator<Item = String>) -> Result<Args> {
        let mut a = Args {
            quick: false,
            bench: false,
            help: false,
            mock_port: None,
            floor_upstream: None,
            scenarios: vec![
                Scenario::Closed,
                Scenario::Open,
                Scenario::Streams,
                Scenario::Idle,
            ],
            targets: Target::ALL.to_vec(),
            json: None,
            keep_logs: false,
            mock_cpu: None,
        };
        while let Some(arg) = it.next() {
            let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
            match arg.as_str() {
                "--quick" => a.quick = true,
                "--bench" => a.bench = true,
                "--help" | "-h" => a.help = true,
                "--keep-logs" => a.keep_logs = true,
                "--mock-upstream" => {
                    let v = value("--mock-upstream")?;
                    let port = v.parse().map_err(|e| format!("--mock-upstream {v}: {e}"))?;
                    a.mock_port = Some(port);
                }
                "--hyper-floor" => {
                    let v = value("--hyper-floor")?;
                    let addr = v.parse().map_err(|e| format!("--hyper-floor {v}: {e}"))?;
                    a.floor_upstream = Some(addr);
                }
                "--json" => a.json = Some(PathBuf::from(value("--json")?)),
                "--mock-cpu" => {
                    let v = value("--mock-cpu")?;
                    a.mock_cpu = Some(v.parse().map_err(|e| format!("--mock-cpu {v}: {e}"))?);
                }
                "--scenarios" => {
                    a.scenarios = value("--scenarios")?
                        .split(',')
                        .map(|s| match s.trim() {
                            "i" | "1" | "closed" => Ok(Scenario::Closed),
                            "ii" | "2" | "open" => Ok(Scenario::Open),
                            "iii" | "3" | "streams" => Ok(Scenario::Streams),
                            "iv" | "4" | "idle" => Ok(Scenario::Idle),
                            other => Err(format!("unknown scenario {other:?}")),
                        })
                        .collect::<std::result::Result<_, _>>()?;
                }
                "--targets" => {
                    a.targets = value("--targets")?
                        .split(',')
                        .map(|s| {
                            Target::ALL
                                .into_iter()
                                .find(|t| t.name() == s.trim())
                                .ok_or_else(|| format!("unknown target {s:?}"))
                        })
                        .collect::<std::result::Result<_, _>>()?;
                }
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
    if let Some(upstream) = args.floor_upstream {
        floor::run(upstream)?;
        return Ok(ExitCode::SUCCESS);
    }
    if args.help {
        print!("{USAGE}");
        return Ok(ExitCode::SUCCESS);
    }
    if !args.bench {
        println!(
            "load: a benchmark that runs for minutes and starts nginx and tokentap; run it with \
             `cargo bench --bench load [-- --quick]` (nothing to do under `cargo test`)"
        );
        return Ok(ExitCode::SUCCESS);
    }
    match std::env::var(ENV_PINNED) {
        Ok(p) => measure(&args, p == "1"),
        Err(_) => prepare_and_reexec(&args),
    }
}

// ---------------------------------------------------------------------------------------------
// Stage 1 (unpinned): build tokentap, then re-exec pinned to core 0
// ---------------------------------------------------------------------------------------------

fn prepare_and_reexec(args: &Args) -> Result<ExitCode> {
    let paths = Paths::discover()?;
    let bin = match std::env::var_os(ENV_BIN) {
        Some(bin) => PathBuf::from(bin),
        None if args.targets.contains(&Target::Tokentap) => build_tokentap(&paths, "load")?,
        None => paths.target_dir.join("release/tokentap"),
    };
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let have_taskset = Command::new("taskset")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    let pin = cpus >= 2 && have_taskset;
    if !pin {
        eprintln!(
            "load: NOT pinning ({}): generator, proxies and mock share all cores, numbers are less comparable",
            if have_taskset {
                format!("{cpus} CPU available, need 2")
            } else {
                "taskset (util-linux) not found".to_owned()
            }
        );
    }
    // `ulimit` needs a shell; `exec` keeps the pid, so Ctrl-C and exit status are ours.
    let script = format!(
        "ulimit -n {NOFILE} 2>/dev/null || ulimit -n \"$(ulimit -Hn)\" 2>/dev/null; exec {}\"$0\" \"$@\"",
        if pin {
            format!("taskset -c {GENERATOR_CPU} ")
        } else {
            String::new()
        }
    );
    let exe = std::env::current_exe()?;
    let err = Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg(exe)
        .args(std::env::args_os().skip(1))
        .env(ENV_PINNED, if pin { "1" } else { "0" })
        .env(ENV_BIN, &bin)
        .exec();
    Err(format!("re-executing under taskset: {err}").into())
}

// ---------------------------------------------------------------------------------------------
// Stage 2 (pinned): measure
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize)]
struct Plan {
    quick: bool,
    warmup_s: f64,
    closed_connections: usize,
    closed_s: f64,
    open_rate_rps: u32,
    open_connections: usize,
    open_s: f64,
    open_drain_limit_s: f64,
    stream_levels: Vec<usize>,
    stream_rounds: usize,
    stream_chunks: usize,
    stream_chunk_interval_ms: u64,
    stream_round_limit_s: f64,
    idle_connections: usize,
}

impl Plan {
    fn new(quick: bool) -> Plan {
        let load_s = if quick { 5.0 } else { 20.0 };
        Plan {
            quick,
            warmup_s: 1.0,
            closed_connections: 32,
            closed_s: load_s,
            open_rate_rps: 2000,
            open_connections: 64,
            open_s: load_s,
            open_drain_limit_s: 10.0,
            stream_levels: vec![100, 1000],
            stream_rounds: if quick { 1 } else { 3 },
            stream_chunks: mock::CHUNKS,
            stream_chunk_interval_ms: mock::CHUNK_INTERVAL.as_millis() as u64,
            stream_round_limit_s: 60.0,
            idle_connections: if quick { 500 } else { 2000 },
        }
    }
}

#[derive(Debug, Serialize)]
struct Setup {
    cpus_online: usize,
    pinned: bool,
    generator_cpu: Option<u32>,
    server_cpu: Option<u32>,
    mock_cpu: Option<u32>,
    nofile_soft_limit: Option<u64>,
    loadavg_start: String,
    loadavg_end: String,
    nginx: Option<String>,
    tokentap_bin: String,
    tokentap_log_level: String,
    /// The floor's upstream client: `legacy` (hyper-util's, the default), `own` or
    /// `own-spawned` (`TOKENTAP_FLOOR_CLIENT`, `floor_own.rs`).
    floor_client: String,
    git_commit: Option<String>,
    git_dirty: Option<bool>,
}

#[derive(Debug, Serialize)]
struct Report {
    harness: &'static str,
    command: String,
    complete: bool,
    started_unix_s: u64,
    wall_s: f64,
    plan: Plan,
    setup: Setup,
    closed_loop: Vec<ClosedRow>,
    open_loop: Vec<OpenRow>,
    streams: Vec<StreamRow>,
    idle: Vec<IdleRow>,
    targets: Vec<Verdict>,
    problems: Vec<String>,
}

struct Env {
    exe: PathBuf,
    tokentap: PathBuf,
    nginx: Option<PathBuf>,
    server_cpu: Option<u32>,
    /// The mock upstream's CPU (the proxies' unless `--mock-cpu`).
    mock_cpu: Option<u32>,
    log_level: String,
    targets: Vec<Target>,
}

fn measure(args: &Args, pinned: bool) -> Result<ExitCode> {
    let started = Instant::now();
    let paths = Paths::discover()?;
    let plan = Plan::new(args.quick);
    let tokentap = std::env::var_os(ENV_BIN)
        .map_or_else(|| paths.target_dir.join("release/tokentap"), PathBuf::from);
    let log_level = std::env::var("TOKENTAP_LOG").unwrap_or_else(|_| "info".to_owned());
    let floor_client = floor_own::FloorClient::from_env()?;
    if let Some(n) = args.mock_cpu {
        if n as usize >= cpus_online() {
            return Err(format!("--mock-cpu {n}: this machine has {} CPUs", cpus_online()).into());
        }
        if !pinned {
            println!("load: --mock-cpu {n} ignored: nothing is pinned in this run");
        }
    }
    let mut targets = args.targets.clone();
    let nginx = find_nginx();
    let nginx_version = nginx.as_deref().and_then(nginx_version);
    if targets.contains(&Target::Nginx) && nginx.is_none() {
        println!(
            "load: nginx not found (looked in PATH and /usr/sbin): skipping the nginx rows. \
             Install it with `apt-get install -y nginx` for the baseline."
        );
        targets.retain(|t| *t != Target::Nginx);
    }
    if targets.contains(&Target::Tokentap) && !tokentap.is_file() {
        return Err(format!("no tokentap binary at {}", tokentap.display()).into());
    }
    let nofile = procs::nofile_limit();
    let most = plan.stream_levels.iter().max().copied().unwrap_or(0);
    let wanted_fds = 2 * most.max(plan.idle_connections) as u64 + 256;
    let many = [Scenario::Streams, Scenario::Idle];
    if many.iter().any(|s| args.scenarios.contains(s)) && nofile.is_some_and(|n| n < wanted_fds) {
        eprintln!(
            "load: warning: open-files limit {nofile:?} is below {wanted_fds}; the largest stream level of (iii) and the connections of (iv) may fail"
        );
    }
    let (git_commit, git_dirty) = git_state(&paths.manifest_dir);
    let env = Env {
        exe: std::env::current_exe()?,
        tokentap: tokentap.clone(),
        nginx,
        server_cpu: pinned.then_some(SERVER_CPU),
        mock_cpu: pinned.then(|| args.mock_cpu.unwrap_or(SERVER_CPU)),
        log_level: log_level.clone(),
        targets,
    };
    let mut report = Report {
        harness: "benches/load",
        command: format!(
            "cargo bench --bench load{}",
            if args.quick { " -- --quick" } else { "" }
        ),
        complete: false,
        started_unix_s: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        wall_s: 0.0,
        plan: plan.clone(),
        setup: Setup {
            cpus_online: cpus_online(),
            pinned,
            generator_cpu: pinned.then_some(GENERATOR_CPU),
            server_cpu: pinned.then_some(SERVER_CPU),
            mock_cpu: env.mock_cpu,
            nofile_soft_limit: nofile,
            loadavg_start: loadavg(),
            loadavg_end: String::new(),
            nginx: nginx_version,
            tokentap_bin: tokentap.display().to_string(),
            tokentap_log_level: log_level,
            floor_client: floor_client.name().to_owned(),
            git_commit,
            git_dirty,
        },
        closed_loop: Vec::new(),
        open_loop: Vec::new(),
        streams: Vec::new(),
        idle: Vec::new(),
        targets: Vec::new(),
        problems: Vec::new(),
    };
    println!(
        "load: {} mode; generator on {}, mock upstream on {}, proxies on {}; nginx: {}; tokentap: {} (TOKENTAP_LOG={}); floor client: {}; load average {}",
        if plan.quick { "quick" } else { "full" },
        core_name(pinned.then_some(GENERATOR_CPU)),
        core_name(env.mock_cpu),
        core_name(env.server_cpu),
        report.setup.nginx.as_deref().unwrap_or("absent"),
        report.setup.tokentap_bin,
        report.setup.tokentap_log_level,
        report.setup.floor_client,
        report.setup.loadavg_start,
    );

    if floor_client != floor_own::FloorClient::Legacy || env.mock_cpu != env.server_cpu {
        println!(
            "load: not the standard setup (floor client {}, mock upstream on {}): the SPEC §14 \
             verdicts below compare against it as it is",
            report.setup.floor_client,
            core_name(env.mock_cpu),
        );
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let outcome = rt.block_on(async {
        tokio::select! {
            r = run(&plan, &env, &args.scenarios, args.keep_logs, &mut report) => r,
            () = interrupted() => Err("interrupted (Ctrl-C); everything started has been stopped".into()),
        }
    });
    drop(rt);

    report.wall_s = started.elapsed().as_secs_f64();
    report.setup.loadavg_end = loadavg();
    report.complete = outcome.is_ok();
    if let Err(e) = &outcome {
        report.problems.push(e.to_string());
    }
    let json_path = args
        .json
        .clone()
        .unwrap_or_else(|| paths.target_dir.join("bench-load.json"));
    if let Some(dir) = json_path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&json_path, serde_json::to_string_pretty(&report)? + "\n")?;
    println!();
    if !report.problems.is_empty() {
        println!("problems:");
        for p in &report.problems {
            println!("  - {p}");
        }
    }
    println!(
        "load: {} in {:.0} s (load average {} at start, {} at end); results: {}",
        if report.complete { "done" } else { "stopped" },
        report.wall_s,
        report.setup.loadavg_start,
        report.setup.loadavg_end,
        json_path.display()
    );
    outcome.map(|()| ExitCode::SUCCESS)
}

async fn interrupted() {
    if tokio::signal::ctrl_c().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// A temp dir for configs and logs, removed on drop unless kept.
struct TempDir {
    path: PathBuf,
    keep: bool,
}

impl TempDir {
    fn create(keep: bool) -> Result<TempDir> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path =
            std::env::temp_dir().join(format!("tokentap-load-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path)?;
        Ok(TempDir { path, keep })
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if self.keep {
            eprintln!("load: logs and configs kept in {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

async fn run(
    plan: &Plan,
    env: &Env,
    scenarios: &[Scenario],
    keep_logs: bool,
    report: &mut Report,
) -> Result<()> {
    let tmp = TempDir::create(keep_logs)?;
    let mock = Mock::start(&env.exe, env.mock_cpu)?;
    eprintln!(
        "load: mock upstream on {} (pid {})",
        mock.addr,
        mock.guard.pid()
    );
    let mut ctx = Ctx {
        plan,
        env,
        mock: &mock,
        dir: &tmp.path,
        seq: 0,
    };
    if scenarios.contains(&Scenario::Closed) {
        for &target in &env.targets {
            match closed(&mut ctx, target).await {
                Ok(row) => report.closed_loop.push(row),
                Err(e) => report.problems.push(problem("(i)", target, &e)),
            }
            settle().await;
        }
        let title = format!(
            "(i) non-streaming, closed loop, {} connections, {:.0} s",
            plan.closed_connections, plan.closed_s
        );
        report
            .targets
            .extend(report::closed_table(&report.closed_loop, &title));
    }
    if scenarios.contains(&Scenario::Open) {
        for &target in &env.targets {
            match open(&mut ctx, target).await {
                Ok(row) => report.open_loop.push(row),
                Err(e) => report.problems.push(problem("(ii)", target, &e)),
            }
            settle().await;
        }
        let title = format!(
            "(ii) fixed rate {} req/s, open loop over {} connections, {:.0} s; latency from the intended send time (coordinated omission corrected)",
            plan.open_rate_rps, plan.open_connections, plan.open_s
        );
        report
            .targets
            .extend(report::open_table(&report.open_loop, &title));
    }
    if scenarios.contains(&Scenario::Streams) {
        for &level in &plan.stream_levels {
            for &target in &env.targets {
                match streams(&mut ctx, target, level).await {
                    Ok(row) => report.streams.push(row),
                    Err(e) => report.problems.push(problem("(iii)", target, &e)),
                }
                settle().await;
            }
        }
        let title = format!(
            "(iii) concurrent streams of {} chunks {} ms apart, {} round(s) per level; TTFB and chunk gaps as the client sees them",
            plan.stream_chunks, plan.stream_chunk_interval_ms, plan.stream_rounds
        );
        let judged = plan.stream_levels.iter().max().copied().unwrap_or(0);
        report
            .targets
            .extend(report::streams_table(&report.streams, &title, judged));
    }
    if scenarios.contains(&Scenario::Idle) {
        // direct has no proxy whose memory to read
        for &target in env.targets.iter().filter(|t| **t != Target::Direct) {
            match idle(&mut ctx, target).await {
                Ok(row) => report.idle.push(row),
                Err(e) => report.problems.push(problem("(iv)", target, &e)),
            }
            settle().await;
        }
        let title = format!(
            "(iv) {} idle keep-alive client connections, each after one non-streaming call",
            plan.idle_connections
        );
        report::idle_table(&report.idle, &title);
    }
    if let Some(status) = ctx.mock_exited() {
        return Err(format!("the mock upstream exited during the run ({status})").into());
    }
    Ok(())
}

fn problem(scenario: &str, target: Target, e: &Error) -> String {
    let msg = format!("{scenario} {}: {e}", target.name());
    eprintln!("load: {msg}");
    msg
}

/// Lets sockets and the scheduler calm down between two measurements.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(300)).await;
}

// ---------------------------------------------------------------------------------------------
// One target under test
// ---------------------------------------------------------------------------------------------

struct Ctx<'a> {
    plan: &'a Plan,
    env: &'a Env,
    mock: &'a Mock,
    dir: &'a Path,
    seq: usize,
}

/// A started target: where to send requests, and what to stop afterwards.
struct Live {
    target: Target,
    ep: Endpoint,
    proxy: Option<Proxy>,
    sink: Option<OtlpSink>,
}

/// CPU tick counters at one instant.
struct Snap {
    at: Instant,
    proxy: Option<u64>,
    mock: u64,
    harness: u64,
    receiver: u64,
    cores: Vec<(u64, u64, u64)>,
}

impl Ctx<'_> {
    fn mock_exited(&self) -> Option<String> {
        let pid = self.mock.guard.pid();
        (!Path::new(&format!("/proc/{pid}")).exists()).then(|| "gone".to_owned())
    }

    fn start(&mut self, target: Target) -> Result<Live> {
        self.seq += 1;
        let (proxy, sink) = match target {
            Target::Direct => (None, None),
            Target::Floor => {
                let proxy = procs::start_floor(&self.env.exe, self.mock.addr, self.env.server_cpu)?;
                (Some(proxy), None)
            }
            Target::Nginx => {
                let nginx = self.env.nginx.as_deref().ok_or("nginx not installed")?;
                let dir = self.dir.join(format!("nginx-{}", self.seq));
                let proxy = procs::start_nginx(nginx, &dir, self.mock.addr, self.env.server_cpu)?;
                (Some(proxy), None)
            }
            Target::Tokentap => {
                let sink = OtlpSink::start()?;
                let proxy = procs::start_tokentap(
                    &self.env.tokentap,
                    &TokentapSetup {
                        dir: self.dir,
                        upstream: self.mock.addr,
                        otlp_endpoint: &sink.endpoint,
                        log_level: &self.env.log_level,
                        cpu: self.env.server_cpu,
                        run: self.seq,
                    },
                )?;
                (Some(proxy), Some(sink))
            }
        };
        let addr = proxy.as_ref().map_or(self.mock.addr, |p| p.addr);
        Ok(Live {
            target,
            ep: Endpoint::new(addr)?,
            proxy,
            sink,
        })
    }

    fn snap(&self, live: &Live) -> Snap {
        let (harness, receiver) = procs::self_ticks(sink::THREAD);
        Snap {
            at: Instant::now(),
            proxy: live
                .proxy
                .as_ref()
                .map(|p| procs::tree_ticks(p.guard.pid())),
            mock: procs::tree_ticks(self.mock.guard.pid()),
            harness,
            receiver,
            cores: procs::cpu_times(),
        }
    }
}

fn cpu_pct(ticks: u64, secs: f64) -> f64 {
    if secs <= 0.0 {
        return 0.0;
    }
    ticks as f64 / procs::CLK_TCK / secs * 100.0
}

fn share(part: u64, total: u64) -> f64 {
    if total == 0 {
        0.0
    } else {
        part as f64 * 100.0 / total as f64
    }
}

fn resources(a: &Snap, b: &Snap) -> Resources {
    let secs = (b.at - a.at).as_secs_f64();
    let receiver = b.receiver.saturating_sub(a.receiver);
    Resources {
        proxy_cpu_pct: match (a.proxy, b.proxy) {
            (Some(x), Some(y)) => Some(cpu_pct(y.saturating_sub(x), secs)),
            _ => None,
        },
        mock_cpu_pct: cpu_pct(b.mock.saturating_sub(a.mock), secs),
        generator_cpu_pct: cpu_pct(
            b.harness.saturating_sub(a.harness).saturating_sub(receiver),
            secs,
        ),
        otlp_receiver_cpu_pct: cpu_pct(receiver, secs),
        proxy_peak_rss_mib: None,
        core_busy_pct: a
            .cores
            .iter()
            .zip(&b.cores)
            .map(|(x, y)| share(y.0.saturating_sub(x.0), y.2.saturating_sub(x.2)))
            .collect(),
        core_steal_pct: a
            .cores
            .iter()
            .zip(&b.cores)
            .map(|(x, y)| share(y.1.saturating_sub(x.1), y.2.saturating_sub(x.2)))
            .collect(),
    }
}

/// Peak RSS, then stops the proxy; for tokentap, checks that telemetry kept up.
async fn finish(live: Live, calls_sent: u64) -> (Health, Option<f64>) {
    let Live {
        target,
        ep,
        proxy,
        sink,
    } = live;
    let mut health = Health::default();
    let Some(mut proxy) = proxy else {
        return (health, None);
    };
    let rss = Some(procs::tree_hwm_kib(proxy.guard.pid()) as f64 / 1024.0);
    let markers: &[&str] = match target {
        Target::Tokentap => {
            match Conn::new(&ep).get_text("/metrics").await {
                Ok(page) => {
                    health.llm_requests_total = Some(metric_sum(&page, "llm_requests_total"));
                    health.telemetry_dropped_total =
                        Some(metric_sum(&page, "tokentap_telemetry_dropped_total"));
                }
                Err(e) => eprintln!("load: GET /metrics from tokentap failed: {e}"),
            }
            health.calls_sent = Some(calls_sent);
            // SIGTERM: tokentap drains and flushes pending spans, metrics and logs (≤ 5 s).
            proxy.guard.stop(Duration::from_secs(8));
            if let Some(sink) = sink {
                let got = sink.finish();
                health.spans_received = Some(got.spans);
                health.log_records_received = Some(got.log_records);
                health.metric_names_received = Some(got.metric_names);
            }
            &["WARN", "ERROR"]
        }
        _ => {
            proxy.guard.stop(Duration::from_secs(3));
            &["[warn]", "[error]", "[crit]", "[alert]", "[emerg]"]
        }
    };
    let scan = procs::scan_logs(&proxy.logs, markers);
    health.log_lines = scan.lines;
    health.log_issues = scan.issues;
    health.log_samples = scan.samples;
    (health, rss)
}

/// Sum of every sample of one metric in a Prometheus text page.
fn metric_sum(page: &str, name: &str) -> f64 {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .sum()
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

// ---------------------------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------------------------

async fn closed(ctx: &mut Ctx<'_>, target: Target) -> Result<ClosedRow> {
    let plan = ctx.plan;
    eprintln!(
        "load: (i) {}: {:.0} s warm-up + {:.0} s closed loop, {} connections",
        target.name(),
        plan.warmup_s,
        plan.closed_s,
        plan.closed_connections
    );
    let live = ctx.start(target)?;
    let conns = Conn::pool(&live.ep, plan.closed_connections);
    let (conns, warm) = client::closed_loop(conns, secs(plan.warmup_s)).await;
    if warm.errors > 0 {
        eprintln!(
            "load: (i) {}: {} errors during warm-up: {}",
            target.name(),
            warm.errors,
            warm.first_error.as_deref().unwrap_or("?")
        );
    }
    let a = ctx.snap(&live);
    let (conns, out) = client::closed_loop(conns, secs(plan.closed_s)).await;
    let b = ctx.snap(&live);
    drop(conns);
    let mut res = resources(&a, &b);
    let calls = warm.ok + warm.errors + out.ok + out.errors;
    let (health, rss) = finish(live, calls).await;
    res.proxy_peak_rss_mib = rss;
    Ok(ClosedRow {
        target,
        connections: plan.closed_connections,
        seconds: out.elapsed.as_secs_f64(),
        throughput_rps: out.ok as f64 / out.elapsed.as_secs_f64(),
        ok: out.ok,
        errors: out.errors,
        first_error: out.first_error,
        latency: Summary::of(out.latencies_us),
        resources: res,
        health,
    })
}

async fn open(ctx: &mut Ctx<'_>, target: Target) -> Result<OpenRow> {
    let plan = ctx.plan;
    eprintln!(
        "load: (ii) {}: {:.0} s warm-up + {:.0} s at {} req/s, {} connections",
        target.name(),
        plan.warmup_s,
        plan.open_s,
        plan.open_rate_rps,
        plan.open_connections
    );
    let live = ctx.start(target)?;
    let conns = Conn::pool(&live.ep, plan.open_connections);
    let drain = secs(plan.open_drain_limit_s);
    let (conns, warm) =
        client::open_loop(conns, plan.open_rate_rps, secs(plan.warmup_s), drain).await;
    let a = ctx.snap(&live);
    let (conns, out) = client::open_loop(conns, plan.open_rate_rps, secs(plan.open_s), drain).await;
    let b = ctx.snap(&live);
    drop(conns);
    let mut res = resources(&a, &b);
    let calls = warm.ok + warm.errors + out.ok + out.errors;
    let (health, rss) = finish(live, calls).await;
    res.proxy_peak_rss_mib = rss;
    Ok(OpenRow {
        target,
        rate_rps: plan.open_rate_rps,
        connections: plan.open_connections,
        seconds: out.elapsed.as_secs_f64(),
        scheduled: out.scheduled,
        ok: out.ok,
        errors: out.errors,
        late_sends: out.late,
        max_send_lag_us: out.max_lag_us,
        unfinished: out.unfinished,
        achieved_rps: out.ok as f64 / out.elapsed.as_secs_f64(),
        first_error: out.first_error,
        latency: Summary::of(out.latencies_us),
        resources: res,
        health,
    })
}

async fn streams(ctx: &mut Ctx<'_>, target: Target, level: usize) -> Result<StreamRow> {
    let plan = ctx.plan;
    eprintln!(
        "load: (iii) {}: {level} concurrent streams × {} round(s)",
        target.name(),
        plan.stream_rounds
    );
    let live = ctx.start(target)?;
    let a = ctx.snap(&live);
    let mut all = client::StreamsOutcome::default();
    let mut hwm_by_round = Vec::new();
    let mut ttfb_by_round = Vec::new();
    for round in 0..plan.stream_rounds {
        if round > 0 {
            settle().await;
        }
        let out = client::streams(&live.ep, level, secs(plan.stream_round_limit_s)).await;
        ttfb_by_round.push(Summary::of(out.ttfb_us.clone()));
        all.merge(out);
        if let Some(p) = &live.proxy {
            hwm_by_round.push(procs::tree_hwm_kib(p.guard.pid()) as f64 / 1024.0);
        }
    }
    let b = ctx.snap(&live);
    let mut res = resources(&a, &b);
    let (health, rss) = finish(live, all.started as u64).await;
    res.proxy_peak_rss_mib = rss;
    Ok(StreamRow {
        target,
        streams: level,
        rounds: plan.stream_rounds,
        started: all.started,
        completed: all.completed,
        errors: all.errors,
        first_error: all.first_error,
        ttfb: Summary::of(all.ttfb_us),
        ttfb_timeline: Timeline::of(all.ttfb_timeline_us),
        ttfb_by_round,
        chunk_gap: Summary::of(all.gaps_us),
        peak_rss_after_round_mib: hwm_by_round,
        resources: res,
        health,
    })
}

/// Calls made on one connection before (iv) measures: as many as tokentap's ring of
/// recent calls holds by default (`--recent-calls 1000`), so what each later call
/// adds to it is what the call it replaces gave back.
const IDLE_WARMUP_CALLS: usize = 1000;

/// What an idle keep-alive client connection costs a proxy: SDK clients keep a pool
/// of connections open between calls, and a sidecar holds each one. Calls on one
/// connection warm the proxy up (its upstream connection, lazy set-up, the live
/// view's ring); then connections are opened one after another, each makes one call
/// and stays open, so the upstream side needs one pooled connection throughout.
async fn idle(ctx: &mut Ctx<'_>, target: Target) -> Result<IdleRow> {
    let n = ctx.plan.idle_connections;
    eprintln!("load: (iv) {}: {n} idle connections", target.name());
    let live = ctx.start(target)?;
    let pid = live.proxy.as_ref().ok_or("no proxy")?.guard.pid();
    let mut warm = Conn::new(&live.ep);
    for _ in 0..IDLE_WARMUP_CALLS {
        warm.chat().await?;
    }
    drop(warm);
    settle().await;
    let before = procs::tree_rss_kib(pid);
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        let mut conn = Conn::new(&live.ep);
        conn.chat().await?;
        held.push(conn);
    }
    settle().await;
    let after = procs::tree_rss_kib(pid);
    let open = held.iter().filter(|c| c.is_open()).count();
    drop(held);
    if open < n {
        // a proxy that closed some would look cheaper per connection
        return Err(format!("only {open} of {n} connections still open when measured").into());
    }
    let (health, _) = finish(live, (n + IDLE_WARMUP_CALLS) as u64).await;
    Ok(IdleRow {
        target,
        connections: n,
        rss_before_mib: before as f64 / 1024.0,
        rss_after_mib: after as f64 / 1024.0,
        per_connection_kib: after.saturating_sub(before) as f64 / n as f64,
        health,
    })
}

// ---------------------------------------------------------------------------------------------
// Machine facts
// ---------------------------------------------------------------------------------------------

fn find_nginx() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/usr/local/nginx/sbin"].map(PathBuf::from))
        .map(|d| d.join("nginx"))
        .find(|p| p.is_file())
}

fn nginx_version(nginx: &Path) -> Option<String> {
    let out = Command::new(nginx).arg("-v").output().ok()?;
    let text = String::from_utf8_lossy(&out.stderr);
    Some(text.trim().trim_start_matches("nginx version: ").to_owned())
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// `core N`, or `any core` when nothing is pinned.
fn core_name(cpu: Option<u32>) -> String {
    cpu.map_or_else(|| "any core".to_owned(), |c| format!("core {c}"))
}

fn cpus_online() -> usize {
    std::fs::read_to_string("/proc/cpuinfo")
        .map(|s| s.lines().filter(|l| l.starts_with("processor")).count())
        .unwrap_or(0)
}

fn git_state(dir: &Path) -> (Option<String>, Option<bool>) {
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let commit = git(&["rev-parse", "--short", "HEAD"]);
    let dirty = git(&[
        "status",
        "--porcelain",
        "--",
        "src",
        "Cargo.toml",
        "Cargo.lock",
    ])
    .map(|s| !s.is_empty());
    (commit, dirty)
}
