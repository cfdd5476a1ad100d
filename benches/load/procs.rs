//! Child processes (mock upstream, nginx, tokentap) and what `/proc` says about them.
//!
//! Every child lives in a [`ChildGuard`]: dropping it sends `SIGTERM`, waits a bounded
//! time, then `SIGKILL`s the child and whatever it forked (nginx's worker), so no path
//! out of the harness — error, panic, Ctrl-C — leaves a process behind.

use std::ffi::OsString;
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{OnceLock, mpsc};
use std::time::{Duration, Instant};

use crate::mock;

/// `sysconf(_SC_CLK_TCK)`: 100 on every Linux this runs on.
pub const CLK_TCK: f64 = 100.0;

pub struct ChildGuard {
    name: String,
    child: Option<Child>,
}

impl ChildGuard {
    pub fn spawn(name: impl Into<String>, cmd: &mut Command) -> crate::Result<ChildGuard> {
        let name = name.into();
        let child = cmd
            .spawn()
            .map_err(|e| format!("starting {name} ({cmd:?}): {e}"))?;
        Ok(ChildGuard {
            name,
            child: Some(child),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    fn child_mut(&mut self) -> Option<&mut Child> {
        self.child.as_mut()
    }

    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().ok()?
    }

    /// `SIGTERM`, up to `grace` to exit, then `SIGKILL`; reaps the child and kills
    /// any process it started. Idempotent.
    pub fn stop(&mut self, grace: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = child.id();
        let family = descendants(pid);
        if matches!(child.try_wait(), Ok(None)) {
            signal("TERM", pid);
            let deadline = Instant::now() + grace;
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if matches!(child.try_wait(), Ok(None)) {
                eprintln!(
                    "  {} did not exit within {grace:?} of SIGTERM: killing it",
                    self.name
                );
                let _ = child.kill();
            }
        }
        let _ = child.wait();
        for pid in family {
            if Path::new(&format!("/proc/{pid}")).exists() {
                signal("KILL", pid);
            }
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(3));
    }
}

fn signal(sig: &str, pid: u32) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// `program`, pinned to `cpu` with `taskset` when given, and — when util-linux's
/// `setpriv` is there — sent `SIGTERM` if the harness dies without cleaning up
/// (`SIGKILL`), so not even that leaves a proxy behind (nginx's master then stops its
/// worker itself).
pub fn pinned(program: &Path, cpu: Option<u32>) -> Command {
    static SETPRIV: OnceLock<bool> = OnceLock::new();
    let setpriv = *SETPRIV.get_or_init(|| {
        Command::new("setpriv")
            .args(["--pdeathsig", "TERM", "true"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    let mut argv: Vec<OsString> = Vec::new();
    if setpriv {
        argv.extend(["setpriv", "--pdeathsig", "TERM"].map(OsString::from));
    }
    if let Some(cpu) = cpu {
        argv.extend(["taskset".into(), "-c".into(), cpu.to_string().into()]);
    }
    argv.push(program.into());
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]);
    cmd
}

/// Forwards the lines of a child's stdout; keeps draining after the receiver is gone.
fn forward_lines(
    out: impl Read + Send + 'static,
    name: &str,
) -> crate::Result<mpsc::Receiver<String>> {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name(format!("{name}-stdout"))
        .spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        })?;
    Ok(rx)
}

/// The rest of the first line starting with `prefix`.
fn wait_line(
    lines: &mpsc::Receiver<String>,
    guard: &mut ChildGuard,
    prefix: &str,
    timeout: Duration,
) -> crate::Result<String> {
    let deadline = Instant::now() + timeout;
    loop {
        match lines.recv_timeout(Duration::from_millis(50)) {
            Ok(line) => {
                if let Some(rest) = line.strip_prefix(prefix) {
                    return Ok(rest.trim().to_owned());
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(format!("{} closed stdout before it was ready", guard.name).into());
            }
        }
        if let Some(status) = guard.exited() {
            return Err(format!("{} exited ({status}) before it was ready", guard.name).into());
        }
        if Instant::now() >= deadline {
            return Err(format!("{} not ready within {timeout:?}", guard.name).into());
        }
    }
}

/// Polls until `addr` accepts a connection.
fn wait_port(addr: SocketAddr, guard: &mut ChildGuard, timeout: Duration) -> crate::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = guard.exited() {
            return Err(format!("{} exited ({status}) before it was ready", guard.name).into());
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(
                format!("{} not listening on {addr} within {timeout:?}", guard.name).into(),
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A port nothing listens on right now (bound and released).
fn free_port() -> crate::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// The mock upstream child.
pub struct Mock {
    pub guard: ChildGuard,
    pub addr: SocketAddr,
    /// Closing it (when the harness ends, however it ends) makes the mock exit.
    _stdin: Option<ChildStdin>,
}

impl Mock {
    pub fn start(harness: &Path, cpu: Option<u32>) -> crate::Result<Mock> {
        let mut cmd = pinned(harness, cpu);
        cmd.arg("--mock-upstream")
            .arg("0")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut guard = ChildGuard::spawn("mock upstream", &mut cmd)?;
        let child = guard.child_mut().ok_or("mock upstream: no child")?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().ok_or("mock upstream: no stdout")?;
        let lines = forward_lines(stdout, "mock")?;
        let port: u16 = wait_line(&lines, &mut guard, mock::READY, Duration::from_secs(10))?
            .parse()
            .map_err(|e| format!("mock upstream port: {e}"))?;
        Ok(Mock {
            guard,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            _stdin: stdin,
        })
    }
}

/// A running proxy (nginx or tokentap) in front of the mock.
pub struct Proxy {
    pub addr: SocketAddr,
    pub guard: ChildGuard,
    /// Where its diagnostics go (tokentap's stderr; nginx's error log and stderr).
    pub logs: Vec<PathBuf>,
    /// The hyper floor exits when this closes (the harness ends, however it ends).
    pub _stdin: Option<ChildStdin>,
}

fn nginx_conf(dir: &Path, upstream: SocketAddr, port: u16, as_root: bool) -> String {
    let d = dir.display();
    let user = if as_root { "user root;\n" } else { "" };
    format!(
        r#"# Generated by benches/load: plain proxy_pass, upstream keepalive, no buffering.
{user}worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{
    worker_connections 8192;
}}
http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    # WebSocket upgrades pass (benches/realtime); plain requests keep `Connection: ""`
    map $http_upgrade $connection_upgrade {{
        default upgrade;
        ''      '';
    }}
    upstream mock {{
        server {upstream};
        keepalive 64;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://mock;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_buffering off;
        }}
    }}
}}
"#
    )
}

fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// Debian's nginx (`-p <dir> -c <dir>/nginx.conf -g 'daemon off;'`), foreground child.
pub fn start_nginx(
    nginx: &Path,
    dir: &Path,
    upstream: SocketAddr,
    cpu: Option<u32>,
) -> crate::Result<Proxy> {
    fs::create_dir_all(dir)?;
    let port = free_port()?;
    let conf = dir.join("nginx.conf");
    fs::write(&conf, nginx_conf(dir, upstream, port, is_root()))?;
    let error_log = dir.join("error.log");
    let stderr_log = dir.join("nginx.stderr");
    let mut cmd = pinned(nginx, cpu);
    cmd.arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(&conf)
        .arg("-e")
        .arg(&error_log)
        .arg("-g")
        .arg("daemon off;")
        .stdin(Stdio::null())
        .stdout(fs::File::create(dir.join("nginx.stdout"))?)
        .stderr(fs::File::create(&stderr_log)?);
    let mut guard = ChildGuard::spawn("nginx", &mut cmd)?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    if let Err(e) = wait_port(addr, &mut guard, Duration::from_secs(10)) {
        let said = [&stderr_log, &error_log]
            .iter()
            .filter_map(|p| fs::read_to_string(p).ok())
            .collect::<Vec<_>>()
            .join("");
        return Err(format!("{e}: {}", said.trim()).into());
    }
    Ok(Proxy {
        addr,
        guard,
        logs: vec![error_log, stderr_log],
        _stdin: None,
    })
}

/// Everything tokentap needs besides the binary.
pub struct TokentapSetup<'a> {
    pub dir: &'a Path,
    pub upstream: SocketAddr,
    pub otlp_endpoint: &'a str,
    pub log_level: &'a str,
    pub cpu: Option<u32>,
    pub run: usize,
}

/// The release binary with full telemetry: 100 % sampling (the default parent-based
/// always-on sampler, and no caller sends a `traceparent`), OTLP/gRPC traces, metrics and
/// logs to a live receiver, `/metrics` on (it always is).
pub fn start_tokentap(bin: &Path, s: &TokentapSetup<'_>) -> crate::Result<Proxy> {
    let log = s.dir.join(format!("tokentap-{}.log", s.run));
    let mut cmd = pinned(bin, s.cpu);
    cmd.arg("--upstream")
        .arg(format!("http://{}", s.upstream))
        .arg("--listen")
        .arg("127.0.0.1:0")
        // No stray `.env` from the caller's directory.
        .current_dir(s.dir);
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        if k.starts_with("OTEL_") || k.starts_with("TOKENTAP_") {
            cmd.env_remove(&key);
        }
    }
    // extra flags for an A/B run, e.g. TOKENTAP_BENCH_ARGS="--metric-dimensions project,key_id"
    if let Ok(extra) = std::env::var("TOKENTAP_BENCH_ARGS") {
        cmd.args(extra.split_whitespace());
    }
    cmd.env("OTEL_EXPORTER_OTLP_ENDPOINT", s.otlp_endpoint)
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        .env("OTEL_TRACES_EXPORTER", "otlp")
        .env("OTEL_METRICS_EXPORTER", "otlp")
        .env("OTEL_LOGS_EXPORTER", "otlp")
        .env("OTEL_METRIC_EXPORT_INTERVAL", "5000")
        .env("TOKENTAP_LOG", s.log_level)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(fs::File::create(&log)?);
    let mut guard = ChildGuard::spawn("tokentap", &mut cmd)?;
    let stdout = guard
        .child_mut()
        .and_then(|c| c.stdout.take())
        .ok_or("tokentap: no stdout")?;
    let lines = forward_lines(stdout, "tokentap")?;
    let ready = wait_line(
        &lines,
        &mut guard,
        "tokentap listening on http://",
        Duration::from_secs(20),
    );
    let addr = match ready {
        Ok(a) => a,
        Err(e) => {
            let said = fs::read_to_string(&log).unwrap_or_default();
            return Err(format!("{e}: {}", said.trim()).into());
        }
    };
    let addr: SocketAddr = addr
        .trim_end_matches('/')
        .parse()
        .map_err(|e| format!("tokentap address {addr:?}: {e}"))?;
    Ok(Proxy {
        addr,
        guard,
        logs: vec![log],
        _stdin: None,
    })
}

/// For a child of the harness: exits the process once stdin closes, so a
/// child never outlives the harness, however the harness ends.
pub fn exit_when_stdin_closes() -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("stdin-watch".into())
        .spawn(|| {
            let mut sink = [0u8; 64];
            let mut stdin = std::io::stdin();
            while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
            std::process::exit(0);
        })?;
    Ok(())
}

/// The line the hyper floor prints once it accepts connections, followed by its port.
pub const FLOOR_READY: &str = "hyper-floor listening on ";

/// The hyper floor (`<harness> --hyper-floor UPSTREAM`), pinned like the other proxies.
pub fn start_floor(harness: &Path, upstream: SocketAddr, cpu: Option<u32>) -> crate::Result<Proxy> {
    let mut cmd = pinned(harness, cpu);
    cmd.arg("--hyper-floor")
        .arg(upstream.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut guard = ChildGuard::spawn("hyper floor", &mut cmd)?;
    let child = guard.child_mut().ok_or("hyper floor: no child")?;
    let stdin = child.stdin.take();
    let stdout = child.stdout.take().ok_or("hyper floor: no stdout")?;
    let lines = forward_lines(stdout, "floor")?;
    let port: u16 = wait_line(&lines, &mut guard, FLOOR_READY, Duration::from_secs(10))?
        .parse()
        .map_err(|e| format!("hyper floor port: {e}"))?;
    Ok(Proxy {
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        guard,
        logs: Vec::new(),
        _stdin: stdin,
    })
}

/// Lines of a log and the ones that look like trouble (ANSI colours stripped).
pub struct LogScan {
    pub lines: usize,
    pub issues: usize,
    pub samples: Vec<String>,
}

pub fn scan_logs(paths: &[PathBuf], markers: &[&str]) -> LogScan {
    let mut scan = LogScan {
        lines: 0,
        issues: 0,
        samples: Vec::new(),
    };
    for path in paths {
        let Ok(text) = fs::read_to_string(path) else {
            continue;
        };
        for line in text.lines() {
            scan.lines += 1;
            let clean = strip_ansi(line);
            if markers.iter().any(|m| clean.contains(m)) {
                scan.issues += 1;
                if scan.samples.len() < 3 {
                    scan.samples.push(clean.chars().take(300).collect());
                }
            }
        }
    }
    scan
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// /proc
// ---------------------------------------------------------------------------------------------

/// The fields of a `stat` file after the `(comm)` one: index 0 is `state`.
fn stat_fields(path: &Path) -> Option<Vec<String>> {
    let s = fs::read_to_string(path).ok()?;
    let rest = &s[s.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// utime + stime, in clock ticks.
fn ticks_of(path: &Path) -> u64 {
    stat_fields(path)
        .map(|f| {
            let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            n(11) + n(12)
        })
        .unwrap_or(0)
}

/// Every live descendant of `pid`.
pub fn descendants(pid: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    if let Ok(entries) = fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(p) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some(ppid) = stat_fields(&entry.path().join("stat"))
                .and_then(|f| f.get(1).and_then(|v| v.parse::<u32>().ok()))
            {
                parents.push((p, ppid));
            }
        }
    }
    let mut found = Vec::new();
    let mut frontier = vec![pid];
    while let Some(parent) = frontier.pop() {
        for &(p, pp) in &parents {
            if pp == parent && !found.contains(&p) {
                found.push(p);
                frontier.push(p);
            }
        }
    }
    found
}

/// CPU ticks of `pid` and its descendants.
pub fn tree_ticks(pid: u32) -> u64 {
    std::iter::once(pid)
        .chain(descendants(pid))
        .map(|p| ticks_of(Path::new(&format!("/proc/{p}/stat"))))
        .sum()
}

/// Sum of `VmHWM` (peak resident set) over `pid` and its descendants, in KiB.
pub fn tree_hwm_kib(pid: u32) -> u64 {
    tree_status_kib(pid, "VmHWM:")
}

/// Sum of `VmRSS` (resident set now) over `pid` and its descendants, in KiB.
pub fn tree_rss_kib(pid: u32) -> u64 {
    tree_status_kib(pid, "VmRSS:")
}

fn tree_status_kib(pid: u32, field: &str) -> u64 {
    std::iter::once(pid)
        .chain(descendants(pid))
        .filter_map(|p| {
            let status = fs::read_to_string(format!("/proc/{p}/status")).ok()?;
            status
                .lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .sum()
}

/// CPU ticks of this process, and of its threads named `thread`.
pub fn self_ticks(thread: &str) -> (u64, u64) {
    let total = ticks_of(Path::new("/proc/self/stat"));
    let mut named = 0;
    if let Ok(tasks) = fs::read_dir("/proc/self/task") {
        for task in tasks.flatten() {
            let comm = fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            if comm.trim() == thread {
                named += ticks_of(&task.path().join("stat"));
            }
        }
    }
    (total, named)
}

/// The soft limit on open files of this process.
pub fn nofile_limit() -> Option<u64> {
    let limits = fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Per-CPU `(busy, steal, total)` jiffies from `/proc/stat` (busy excludes idle, iowait
/// and steal; steal is time the hypervisor ran something else on this vCPU).
pub fn cpu_times() -> Vec<(u64, u64, u64)> {
    let Ok(stat) = fs::read_to_string("/proc/stat") else {
        return Vec::new();
    };
    stat.lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .map(|l| {
            let v: Vec<u64> = l
                .split_whitespace()
                .skip(1)
                .map(|x| x.parse().unwrap_or(0))
                .collect();
            let at = |i: usize| v.get(i).copied().unwrap_or(0);
            // user nice system idle iowait irq softirq steal (guest is inside user)
            let busy = at(0) + at(1) + at(2) + at(5) + at(6);
            let steal = at(7);
            (busy, steal, busy + steal + at(3) + at(4))
        })
        .collect()
}
