//! The live OTLP receiver tokentap exports to: the test suite's gRPC receiver
//! (`tests/support/otlp.rs`) on its own thread and runtime, named `otlp-receiver` so
//! its CPU time can be told apart from the load generator's.

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
