//! The live OTLP receiver tokentap exports to: the test suite's gRPC receiver
//! (`tests/support/otlp.rs`) on its own thread and runtime, named `otlp-receiver` so
//! its CPU time can be told apart from the load generator's, in the idle scheduling
//! class so it never takes the generator's core from under a request.

use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::oneshot;

use crate::otlp;

/// What the receiver got from one tokentap run.
#[derive(Debug, Default, Clone)]
pub struct Received {
    pub spans: usize,
    pub log_records: usize,
    pub metric_names: usize,
}

pub struct OtlpSink {
    pub endpoint: String,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<Received>>,
}

pub const THREAD: &str = "otlp-receiver";

/// Puts the thread named `name` in the idle scheduling class (`chrt --idle`): on the
/// generator's core it then only uses time the generator leaves, so decoding a batch
/// of spans never delays a request (which the fixed-rate scenario would charge to the
/// proxy). In production the collector is elsewhere.
fn idle_class(name: &str) -> Result<(), String> {
    let tasks = std::fs::read_dir("/proc/self/task").map_err(|e| e.to_string())?;
    let tid = tasks
        .flatten()
        .find(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == name))
        .map(|t| t.file_name().to_string_lossy().into_owned())
        .ok_or("thread not found")?;
    let status = std::process::Command::new("chrt")
        .args(["--idle", "-p", "0", &tid])
        .status()
        .map_err(|e| format!("chrt: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("chrt exited with {status}"))
    }
}

impl OtlpSink {
    pub fn start() -> crate::Result<OtlpSink> {
        let (endpoint_tx, endpoint_rx) = mpsc::channel::<String>();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(THREAD.into())
            .spawn(move || {
                let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    return Received::default();
                };
                rt.block_on(async move {
                    let receiver = otlp::Receiver::grpc().await;
                    let _ = endpoint_tx.send(receiver.endpoint());
                    let _ = stopped.await;
                    Received {
                        spans: receiver.spans().len(),
                        log_records: receiver.logs().len(),
                        metric_names: receiver.metric_names().len(),
                    }
                })
            })?;
        let endpoint = endpoint_rx
            .recv_timeout(Duration::from_secs(10))
            .map_err(|e| format!("OTLP receiver did not start: {e}"))?;
        if let Err(e) = idle_class(THREAD) {
            eprintln!("load: the OTLP receiver keeps the normal scheduling class ({e})");
        }
        Ok(OtlpSink {
            endpoint,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Stops the receiver and counts what it got.
    pub fn finish(mut self) -> Received {
        self.shut()
    }

    fn shut(&mut self) -> Received {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for OtlpSink {
    fn drop(&mut self) {
        self.shut();
    }
}
