//! Building the tokentap binary a benchmark measures, shared by `benches/load` and
//! `benches/realtime` (the latter includes this file with `#[path]`), so both always
//! measure the current source and rebuild it the same way.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// The tokentap binary to measure; set it to skip the `cargo build` step.
pub const ENV_BIN: &str = "TOKENTAP_BENCH_BIN";

pub struct Paths {
    pub manifest_dir: PathBuf,
    pub target_dir: PathBuf,
}

impl Paths {
    /// This binary is `<target>/release/deps/<bench>-<hash>`.
    pub fn discover() -> crate::Result<Paths> {
        let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let exe = std::env::current_exe()?;
        let from_exe = exe
            .parent()
            .filter(|d| d.file_name().is_some_and(|n| n == "deps"))
            .and_then(Path::parent)
            .and_then(Path::parent)
            .map(Path::to_path_buf);
        let target_dir = from_exe.unwrap_or_else(|| manifest_dir.join("target"));
        Ok(Paths {
            manifest_dir,
            target_dir,
        })
    }
}

/// `cargo build --release --bin tokentap`: a no-op when the binary is fresh.
pub fn build_tokentap(paths: &Paths, who: &str) -> crate::Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    eprintln!("{who}: cargo build --release --bin tokentap (no-op when fresh)");
    let started = Instant::now();
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--release", "--bin", "tokentap", "--target-dir"])
        .arg(&paths.target_dir)
        .current_dir(&paths.manifest_dir);
    // `cargo bench` gives this process the variables it sets for a crate (CARGO_PKG_NAME,
    // CARGO_MANIFEST_DIR, OUT_DIR, …). Build scripts such as ring's track some of them with
    // `rerun-if-env-changed`, so passing them on would make every `cargo bench` and this
    // build invalidate each other's dependencies: hand cargo the caller's environment.
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        let per_crate = k.starts_with("CARGO_PKG_")
            || k.starts_with("CARGO_CFG_")
            || matches!(
                k.as_ref(),
                "CARGO_MANIFEST_DIR"
                    | "CARGO_MANIFEST_PATH"
                    | "CARGO_MANIFEST_LINKS"
                    | "CARGO_CRATE_NAME"
                    | "CARGO_BIN_NAME"
                    | "CARGO_PRIMARY_PACKAGE"
                    | "CARGO_TARGET_TMPDIR"
                    | "CARGO_RUSTC_CURRENT_DIR"
                    | "OUT_DIR"
            );
        if per_crate {
            cmd.env_remove(&key);
        }
    }
    let status = cmd.status().map_err(|e| format!("running cargo: {e}"))?;
    if !status.success() {
        return Err(format!(
            "cargo build --release --bin tokentap failed ({status}); set {ENV_BIN} to measure a prebuilt binary"
        )
        .into());
    }
    eprintln!(
        "{who}: tokentap built in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(paths.target_dir.join("release/tokentap"))
}
