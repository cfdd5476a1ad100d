//! The `tokentap` binary as a child process: started on a free port, its output
//! drained into buffers (a full pipe would stall it), its memory read from
//! `/proc`, and killed and reaped whenever the handle is dropped — a failing
//! assertion included.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Longest wait for the banner of a starting tokentap.
const START_DEADLINE: Duration = Duration::from_secs(30);

/// A `tokentap` command with a clean environment: no inherited `TOKENTAP_*` or
/// `OTEL_*` settings, no OTLP export (nothing may depend on a collector that
/// happens to listen on this machine), run from the temp directory so no `.env`
/// is read.
pub fn command() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tokentap"));
    for (k, _) in std::env::vars() {
        if k.starts_with("TOKENTAP_") || k.starts_with("OTEL_") || k == "OPENAI_API_KEY" {
            c.env_remove(k);
        }
    }
    c.env("OTEL_TRACES_EXPORTER", "none")
        .env("OTEL_METRICS_EXPORTER", "none")
        .env("OTEL_LOGS_EXPORTER", "none")
        .current_dir(std::env::temp_dir());
    c
}

/// A running tokentap; killed and reaped on drop.
pub struct Tokentap {
    child: Child,
    pub addr: SocketAddr,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
}

/// Appends every line of `from` to `into`; sends the URL of the banner line once.
fn drain(
    from: impl Read + Send + 'static,
    into: Arc<Mutex<String>>,
    banner: Option<mpsc::Sender<String>>,
) {
    std::thread::spawn(move || {
        let mut banner = banner;
        let mut r = BufReader::new(from);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf);
                    if let Some(url) = line.trim_end().strip_prefix("tokentap listening on ") {
                        if let Some(tx) = banner.take() {
                            let _ = tx.send(url.to_owned());
                        }
                    }
                    if let Ok(mut s) = into.lock() {
                        s.push_str(&line);
                    }
                }
            }
        }
    });
}

fn text(buf: &Mutex<String>) -> String {
    buf.lock().map(|s| s.clone()).unwrap_or_default()
}

impl Tokentap {
    /// `tokentap --listen 127.0.0.1:0 ARGS…` with extra environment `env`.
    pub fn start_with(args: &[&str], env: &[(&str, &str)]) -> Tokentap {
        let mut cmd = command();
        cmd.args(["--listen", "127.0.0.1:0"]).args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tokentap binary spawns");
        let stdout = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        drain(
            child.stdout.take().expect("stdout"),
            stdout.clone(),
            Some(tx),
        );
        drain(child.stderr.take().expect("stderr"), stderr.clone(), None);
        let url = match rx.recv_timeout(START_DEADLINE) {
            Ok(url) => url,
            Err(_) => {
                let status = wait_briefly(&mut child);
                let _ = child.kill();
                let _ = child.wait();
                // the stderr thread may still be copying the last line
                std::thread::sleep(Duration::from_millis(100));
                panic!(
                    "tokentap {args:?} did not start (exit: {status:?}); stderr:\n{}",
                    text(&stderr)
                );
            }
        };
        let addr = url
            .trim()
            .trim_start_matches("http://")
            .parse()
            .expect("banner names host:port");
        Tokentap {
            child,
            addr,
            stdout,
            stderr,
        }
    }

    pub fn start(args: &[&str]) -> Tokentap {
        Tokentap::start_with(args, &[])
    }

    /// `tokentap --demo` with an unpaced demo upstream, plus `args`.
    pub fn demo(args: &[&str]) -> Tokentap {
        let mut all = vec!["--demo", "--demo-chunk-delay", "0ms"];
        all.extend_from_slice(args);
        Tokentap::start(&all)
    }

    /// `tokentap --upstream URL`, plus `args`.
    pub fn in_front_of(upstream: &str, args: &[&str]) -> Tokentap {
        let mut all = vec!["--upstream", upstream];
        all.extend_from_slice(args);
        Tokentap::start(&all)
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything written to stdout so far (banner included).
    pub fn stdout(&self) -> String {
        text(&self.stdout)
    }

    /// Everything written to stderr so far.
    pub fn stderr(&self) -> String {
        text(&self.stderr)
    }

    /// Panics (with stderr) if the process has exited — a crash.
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            std::thread::sleep(Duration::from_millis(100));
            panic!("tokentap exited ({status}); stderr:\n{}", self.stderr());
        }
    }

    /// Waits up to `limit` for the process to exit on its own (after a signal).
    pub fn wait_for_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let until = Instant::now() + limit;
        while Instant::now() < until {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Resident memory now (`VmRSS`), in KiB.
    pub fn rss_kib(&self) -> u64 {
        self.proc_status_kib("VmRSS:")
    }

    /// Peak resident memory so far (`VmHWM`), in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        self.proc_status_kib("VmHWM:")
    }

    fn proc_status_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("/proc/PID/status of tokentap");
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("{field} in /proc/PID/status"))
    }
}

impl Drop for Tokentap {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "---- tokentap stderr (last 4 KiB) ----\n{}\n---- end ----",
                tail(&self.stderr(), 4096)
            );
        }
    }
}

fn tail(s: &str, n: usize) -> &str {
    let mut i = s.len().saturating_sub(n);
    while !s.is_char_boundary(i) {
        i += 1;
    }
    &s[i..]
}

fn wait_briefly(child: &mut Child) -> Option<ExitStatus> {
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// How a tokentap that was expected to refuse its configuration ended.
#[derive(Debug)]
pub struct Exit {
    /// `None` when it started serving instead (it was then killed).
    pub code: Option<i32>,
    pub started: bool,
    pub stderr: String,
}

/// Runs `tokentap --listen 127.0.0.1:0 ARGS…` until it exits or starts serving
/// (whichever comes first, within 30 s); a started one is killed.
pub fn run_to_exit(args: &[&str], env: &[(&str, &str)]) -> Exit {
    let mut cmd = command();
    cmd.args(["--listen", "127.0.0.1:0"]).args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tokentap binary spawns");
    let stdout = Arc::new(Mutex::new(String::new()));
    let stderr = Arc::new(Mutex::new(String::new()));
    let (tx, rx) = mpsc::channel();
    drain(child.stdout.take().expect("stdout"), stdout, Some(tx));
    drain(child.stderr.take().expect("stderr"), stderr.clone(), None);
    let until = Instant::now() + START_DEADLINE;
    let mut started = false;
    let status = loop {
        if let Ok(Some(s)) = child.try_wait() {
            break Some(s);
        }
        if rx.try_recv().is_ok() {
            started = true;
            break None;
        }
        if Instant::now() > until {
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    // let the drain threads copy the last lines
    std::thread::sleep(Duration::from_millis(100));
    Exit {
        code: status.and_then(|s| s.code()),
        started,
        stderr: text(&stderr),
    }
}
