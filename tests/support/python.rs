//! A Python with the Realtime clients installed, for tests that drive the demo
//! or the proxy with real Python clients.
//!
//! The README promises that `cargo test` alone sets up everything, so the
//! first test that needs Python creates a virtualenv under `target/` with
//! pinned versions (pinned so a new release can't change what a test
//! exercises); later calls, from this or any other test binary, reuse it.
//! Test binaries run concurrently, hence the lock (a directory: creating one
//! is atomic everywhere). No python3 or a failed install is a loud failure.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

/// What the venv holds; `openai[realtime]` 3.57.0 requires websockets < 16; selenium
/// drives Debian's chromium for the live view's tests.
pub const REQUIREMENTS: &[&str] = &[
    "openai[realtime]==3.57.0",
    "websockets==15.0.1",
    "selenium==4.50.0",
];

/// A lock older than this was left by a killed test run.
const STALE_LOCK: Duration = Duration::from_secs(15 * 60);

/// The venv's python, with [`REQUIREMENTS`] installed.
pub fn python() -> PathBuf {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(create).clone()
}

fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("target"),
    }
}

fn create() -> PathBuf {
    let target = target_dir();
    std::fs::create_dir_all(&target).expect("create target/");
    let venv = target.join("tokentap-python");
    let python = venv.join("bin").join("python");
    let marker = venv.join("tokentap-requirements.txt");
    let wanted = REQUIREMENTS.join("\n");
    let ready = || std::fs::read_to_string(&marker).is_ok_and(|have| have == wanted);
    if ready() {
        return python;
    }
    let _lock = Lock::acquire(&target.join("tokentap-python.lock"));
    if ready() {
        return python;
    }
    if venv.exists() {
        std::fs::remove_dir_all(&venv).expect("remove an outdated venv");
    }
    run(
        Command::new("python3").arg("-m").arg("venv").arg(&venv),
        "python3 -m venv (is python3 with the venv module installed?)",
    );
    run(
        Command::new(&python)
            .args(["-m", "pip", "install", "-q", "--disable-pip-version-check"])
            .args(REQUIREMENTS),
        "pip install",
    );
    std::fs::write(&marker, wanted).expect("write the venv marker");
    python
}

fn run(command: &mut Command, what: &str) {
    let output = match command.output() {
        Ok(output) => output,
        Err(err) => panic!("{what}: could not run {command:?}: {err}"),
    };
    assert!(
        output.status.success(),
        "{what} failed ({}): {command:?}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
}

/// A lock directory, removed on drop.
struct Lock(PathBuf);

impl Lock {
    fn acquire(path: &Path) -> Lock {
        loop {
            match std::fs::create_dir(path) {
                Ok(()) => return Lock(path.to_owned()),
                Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
                    let age = std::fs::metadata(path)
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| SystemTime::now().duration_since(t).ok());
                    if age.is_some_and(|age| age > STALE_LOCK) {
                        let _ = std::fs::remove_dir(path);
                        continue;
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(err) => panic!("lock {}: {err}", path.display()),
            }
        }
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Runs a Python script to its end (off the runtime's threads) and returns its stdout.
pub async fn run_python(
    script: &str,
    args: Vec<String>,
    env: Vec<(&'static str, String)>,
) -> String {
    let name = script.to_owned();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join(script);
    // creating the venv the first time blocks for a while: not on the runtime's threads
    let output = tokio::task::spawn_blocking(move || {
        Command::new(python())
            .arg(&script)
            .args(args)
            .envs(env)
            .env_remove("OPENAI_API_KEY")
            .output()
            .expect("run python")
    })
    .await
    .expect("python task");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{name} failed ({}):\nstdout:\n{stdout}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr),
    );
    stdout
}
