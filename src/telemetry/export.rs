//! Export off the request path, behind bounded queues that drop and count.
//!
//! The SDK's batch processors run their exporters on threads of their own
//! with `block_on`, which breaks async HTTP clients and stalls shutdown; and
//! they drop silently when full. tokentap's queues are plain bounded tokio
//! channels: `on_end`/`emit` only `try_send` (never wait), a full queue
//! drops the item and counts it in `tokentap_telemetry_dropped_total`, and
//! one task per signal batches and exports with a timeout, a few batches at
//! once so a distant collector's round trip does not cap throughput. Export failures
//! are logged once when they start and once when they stop, never per
//! attempt, so a missing collector costs one warning.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use opentelemetry::Context;
use opentelemetry::InstrumentationScope;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::logs::{LogBatch, LogExporter, LogProcessor, SdkLogRecord};
use opentelemetry_sdk::metrics::Temporality;
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use opentelemetry_sdk::trace::{Span, SpanData, SpanExporter, SpanProcessor};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::{Semaphore, mpsc, oneshot};

/// Items a queue holds before it drops (`OTEL_BSP_MAX_QUEUE_SIZE` / `OTEL_BLRP_MAX_QUEUE_SIZE`).
pub const QUEUE_CAPACITY: usize = 2048;
/// Items per export call. The SDK's 512 spans took ~2.5 ms of CPU to encode in one
/// poll, which requests on the same core waited for (issue 6's fixed-rate p99); 128
/// couldn't keep up with 7k spans/s against a slow collector (one export at a time).
const MAX_BATCH: usize = 256;
/// Exports of one signal under way at once. One at a time capped a signal at
/// `MAX_BATCH` per round trip: ~5k spans/s to a collector 50 ms away, below what one
/// core of tokentap makes. Like the collector's own sending queue, a few go together.
const MAX_IN_FLIGHT: usize = 4;
/// How long items wait for a batch to fill.
const BATCH_DELAY: Duration = Duration::from_millis(500);
/// How often a filling batch looks at its queue (a queue of 2,048 at 10 ms holds 200k items/s).
const GATHER_TICK: Duration = Duration::from_millis(10);

/// Remembers whether a signal's exports are failing, so each change is logged once.
#[derive(Debug)]
pub struct ExportHealth {
    signal: &'static str,
    failing: AtomicBool,
}

impl ExportHealth {
    pub fn new(signal: &'static str) -> Self {
        ExportHealth {
            signal,
            failing: AtomicBool::new(false),
        }
    }

    pub fn report(&self, result: &OTelSdkResult) {
        match result {
            Ok(()) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!(signal = self.signal, "telemetry export recovered");
                }
            }
            Err(e) => {
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        signal = self.signal,
                        error = %e,
                        "telemetry export failing; traffic is unaffected, items are dropped and counted until it recovers"
                    );
                }
            }
        }
    }
}

/// A thread of its own with a single-threaded tokio runtime, where the export
/// tasks, the OTLP clients and the metric reader run. Encoding a batch of 512
/// spans takes milliseconds of CPU in one poll; on the request workers that
/// was a stall every few hundred calls (issue 6's fixed-rate p99). Here the
/// OS scheduler preempts it for the proxy, and on more than one core it runs
/// beside it.
#[derive(Debug)]
pub struct ExportThread {
    handle: tokio::runtime::Handle,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ExportThread {
    pub fn start() -> Result<ExportThread, String> {
        let (handle_tx, handle_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("tokentap-export".to_owned())
            .spawn(move || {
                // the runtime lives and dies on this thread (never dropped in async code)
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = handle_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let _ = handle_tx.send(Ok(rt.handle().clone()));
                // runs the spawned export tasks until stopped (or the sender is dropped)
                rt.block_on(async {
                    let _ = stopped.await;
                });
                // don't wait for blocking work left behind (a hung DNS lookup of the collector)
                rt.shutdown_background();
            })
            .map_err(|e| format!("cannot start the telemetry export thread: {e}"))?;
        let handle = handle_rx
            .recv()
            .map_err(|e| e.to_string())
            .and_then(|r| r)
            .map_err(|e| format!("cannot start the telemetry export runtime: {e}"))?;
        Ok(ExportThread {
            handle,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Tasks spawned while the guard lives go to the export thread.
    pub fn enter(&self) -> tokio::runtime::EnterGuard<'_> {
        self.handle.enter()
    }

    /// Stops the runtime (dropping what is left on it) and waits for the thread, at most `limit`.
    pub async fn stop(mut self, limit: Duration) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ =
                tokio::time::timeout(limit, tokio::task::spawn_blocking(move || t.join())).await;
        }
    }
}

/// Something a queue task can export batches to.
pub trait Sink<T>: Send + Sync + 'static {
    /// `gentle`: the queue is keeping up (less than a batch, or a quarter of a small queue,
    /// waits behind this one; no flush is pending), so the export may give the core to the
    /// request path while it works. A queue that is backing up needs its export's full
    /// share of the CPU, or it drops.
    fn export(&self, batch: Vec<T>, gentle: bool) -> impl Future<Output = OTelSdkResult> + Send;
    fn shutdown(&self);
}

/// A span exporter that can export gently (see [`Sink::export`]); by default it can't.
pub trait GentleSpanExporter: SpanExporter {
    fn export_gently(
        &self,
        batch: Vec<SpanData>,
        gentle: bool,
    ) -> impl Future<Output = OTelSdkResult> + Send {
        let _ = gentle;
        self.export(batch)
    }
}

impl GentleSpanExporter for opentelemetry_stdout::SpanExporter {}

/// Spans to a `SpanExporter`.
#[derive(Debug)]
pub struct SpanSink<E>(pub E);

impl<E: GentleSpanExporter + 'static> Sink<SpanData> for SpanSink<E> {
    fn export(
        &self,
        batch: Vec<SpanData>,
        gentle: bool,
    ) -> impl Future<Output = OTelSdkResult> + Send {
        self.0.export_gently(batch, gentle)
    }
    fn shutdown(&self) {
        let _ = self.0.shutdown();
    }
}

/// Log records to a `LogExporter`.
#[derive(Debug)]
pub struct LogSink<E>(pub E);

type LogItem = (SdkLogRecord, InstrumentationScope);

impl<E: LogExporter + 'static> Sink<LogItem> for LogSink<E> {
    async fn export(&self, batch: Vec<LogItem>, _gentle: bool) -> OTelSdkResult {
        let refs: Vec<(&SdkLogRecord, &InstrumentationScope)> =
            batch.iter().map(|(r, s)| (r, s)).collect();
        self.0.export(LogBatch::new(&refs)).await
    }
    fn shutdown(&self) {
        let _ = self.0.shutdown();
    }
}

enum Msg<T> {
    Item(T),
    Flush(oneshot::Sender<()>),
}

/// The sending half of a queue, cloned into processors.
#[derive(Debug)]
pub struct Queue<T> {
    tx: mpsc::Sender<Msg<T>>,
    dropped: Counter,
}

impl<T> Clone for Queue<T> {
    fn clone(&self) -> Self {
        Queue {
            tx: self.tx.clone(),
            dropped: self.dropped.clone(),
        }
    }
}

impl<T: Send + 'static> Queue<T> {
    /// Starts the export task on the current tokio runtime (the export thread's, in the binary).
    pub fn start<S: Sink<T>>(
        sink: S,
        health: Arc<ExportHealth>,
        dropped: Counter,
        timeout: Duration,
        capacity: usize,
    ) -> Queue<T> {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        tokio::spawn(run(rx, sink, health, dropped.clone(), timeout));
        Queue { tx, dropped }
    }

    /// Never waits: a full (or closed) queue drops the item and counts it.
    pub fn push(&self, item: T) {
        if self.tx.try_send(Msg::Item(item)).is_err() {
            self.dropped.inc();
        }
    }

    /// Exports everything queued so far; resolves when done or after `deadline`.
    pub async fn flush(&self, deadline: Duration) -> bool {
        let (tx, rx) = oneshot::channel();
        let sent = tokio::time::timeout(deadline, self.tx.send(Msg::Flush(tx))).await;
        if !matches!(sent, Ok(Ok(()))) {
            return false;
        }
        tokio::time::timeout(deadline, rx)
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

async fn run<T: Send + 'static, S: Sink<T>>(
    mut rx: mpsc::Receiver<Msg<T>>,
    sink: S,
    health: Arc<ExportHealth>,
    dropped: Counter,
    timeout: Duration,
) {
    let sink = Arc::new(sink);
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut batch: Vec<T> = Vec::with_capacity(MAX_BATCH);
    let mut open = true;
    while open {
        let first = match rx.recv().await {
            Some(m) => m,
            None => break,
        };
        let mut flush_replies = Vec::new();
        match first {
            Msg::Item(i) => batch.push(i),
            Msg::Flush(r) => flush_replies.push(r),
        }
        // Gather a batch: until full, a flush request, or the delay passes. The queue
        // is drained on a tick rather than awaited item by item, so a busy proxy wakes
        // this task (and its thread) once per batch, not once per span.
        let deadline = tokio::time::Instant::now() + BATCH_DELAY;
        loop {
            while flush_replies.is_empty() && batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(Msg::Item(i)) => batch.push(i),
                    Ok(Msg::Flush(r)) => flush_replies.push(r),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        open = false;
                        break;
                    }
                }
            }
            let now = tokio::time::Instant::now();
            if !open || !flush_replies.is_empty() || batch.len() >= MAX_BATCH || now >= deadline {
                break;
            }
            tokio::time::sleep_until(deadline.min(now + GATHER_TICK)).await;
        }
        if !flush_replies.is_empty() {
            // take whatever else is already queued (answering any later flush too)
            while let Ok(m) = rx.try_recv() {
                match m {
                    Msg::Item(i) => batch.push(i),
                    Msg::Flush(r) => flush_replies.push(r),
                }
            }
        }
        while !batch.is_empty() {
            let n = batch.len().min(MAX_BATCH);
            let chunk: Vec<T> = batch.drain(..n).collect();
            // counted as dropped unless exported: a failed batch is lost like a dropped one (no
            // retry buffer to grow), and so is one whose export panicked or was cancelled
            let unsent = Unsent(n as u64, dropped.clone());
            // waits while MAX_IN_FLIGHT exports are under way; the queue holds what comes
            let Ok(slot) = slots.clone().acquire_owned().await else {
                continue; // never closed; were it, the batch would count as dropped
            };
            // gentle only while the queue keeps up: no flush (without one, a gathered batch
            // is never over MAX_BATCH, so nothing of it waits), the queue not closing, and
            // less than a batch (or a quarter of a small queue) waiting behind this one
            let keeping_up = rx.len() < MAX_BATCH.min(rx.max_capacity() / 4);
            let gentle = flush_replies.is_empty() && open && keeping_up;
            let (sink, health) = (sink.clone(), health.clone());
            tokio::spawn(async move {
                let result = match tokio::time::timeout(timeout, sink.export(chunk, gentle)).await {
                    Ok(r) => r,
                    Err(_) => Err(OTelSdkError::Timeout(timeout)),
                };
                if result.is_ok() {
                    unsent.exported();
                }
                health.report(&result);
                drop(slot);
            });
        }
        if !flush_replies.is_empty() {
            settle(&slots).await;
        }
        for r in flush_replies {
            let _ = r.send(());
        }
    }
    settle(&slots).await;
    sink.shutdown();
}

/// A batch on its way out: counted as dropped when this goes before it was exported.
struct Unsent(u64, Counter);

impl Unsent {
    fn exported(mut self) {
        self.0 = 0;
    }
}

impl Drop for Unsent {
    fn drop(&mut self) {
        if self.0 > 0 {
            self.1.inc_by(self.0);
        }
    }
}

/// Waits until every export started so far has ended.
async fn settle(slots: &Semaphore) {
    if let Ok(all) = slots.acquire_many(MAX_IN_FLIGHT as u32).await {
        drop(all);
    }
}

/// Ends spans into a [`Queue`]. Unsampled spans never get here.
#[derive(Debug)]
pub struct QueueSpanProcessor(pub Queue<SpanData>);

impl SpanProcessor for QueueSpanProcessor {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}
    fn on_end(&self, span: SpanData) {
        if span.span_context.is_sampled() {
            self.0.push(span);
        }
    }
    fn force_flush(&self) -> OTelSdkResult {
        Ok(()) // flushing is async: see `Telemetry::shutdown`
    }
    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

/// Emits log records into a [`Queue`].
#[derive(Debug)]
pub struct QueueLogProcessor(pub Queue<LogItem>);

impl LogProcessor for QueueLogProcessor {
    fn emit(&self, data: &mut SdkLogRecord, scope: &InstrumentationScope) {
        self.0.push((data.clone(), scope.clone()));
    }
    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }
}

/// Wraps a metric exporter with a timeout, failure counting and once-per-change logging.
/// Metrics are cumulative, so a failed export loses nothing but that interval's push.
#[derive(Debug)]
pub struct GuardedMetricExporter<E> {
    inner: E,
    health: Arc<ExportHealth>,
    dropped: Counter,
    timeout: Duration,
}

impl<E> GuardedMetricExporter<E> {
    pub fn new(inner: E, health: Arc<ExportHealth>, dropped: Counter, timeout: Duration) -> Self {
        GuardedMetricExporter {
            inner,
            health,
            dropped,
            timeout,
        }
    }
}

impl<E: PushMetricExporter> PushMetricExporter for GuardedMetricExporter<E> {
    async fn export(&self, metrics: &ResourceMetrics) -> OTelSdkResult {
        let result = match tokio::time::timeout(self.timeout, self.inner.export(metrics)).await {
            Ok(r) => r,
            Err(_) => Err(OTelSdkError::Timeout(self.timeout)),
        };
        if result.is_err() {
            self.dropped.inc();
        }
        self.health.report(&result);
        // the failure is reported and counted here; the reader need not log it again
        Ok(())
    }
    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }
    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }
    fn temporality(&self) -> Temporality {
        self.inner.temporality()
    }
}

/// Gives an exporter the resource before it moves into its queue task.
pub fn with_resource<E: SpanExporter>(mut e: E, r: &Resource) -> E {
    e.set_resource(r);
    e
}

/// Same for log exporters.
pub fn log_with_resource<E: LogExporter>(mut e: E, r: &Resource) -> E {
    e.set_resource(r);
    e
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Remembers every batch it was given.
    #[derive(Clone, Default)]
    struct Recording(Arc<Mutex<Vec<Vec<u32>>>>);

    impl Sink<u32> for Recording {
        async fn export(&self, batch: Vec<u32>, _gentle: bool) -> OTelSdkResult {
            self.0.lock().unwrap().push(batch);
            Ok(())
        }
        fn shutdown(&self) {}
    }

    /// Remembers each batch's length and whether it was to be exported gently.
    #[derive(Clone, Default)]
    struct Manners(Arc<Mutex<Vec<(usize, bool)>>>);

    impl Sink<u32> for Manners {
        async fn export(&self, batch: Vec<u32>, gentle: bool) -> OTelSdkResult {
            self.0.lock().unwrap().push((batch.len(), gentle));
            Ok(())
        }
        fn shutdown(&self) {}
    }

    #[tokio::test(start_paused = true)]
    async fn exports_are_gentle_only_while_the_queue_keeps_up() {
        let sink = Manners::default();
        let (q, _) = queue(sink.clone(), 4096, Duration::from_secs(5));
        for i in 0..3 * MAX_BATCH as u32 {
            q.push(i);
        }
        for _ in 0..100 {
            if sink.0.lock().unwrap().len() >= 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // behind the first two batches a whole batch still waited; behind the last, nothing
        assert_eq!(
            *sink.0.lock().unwrap(),
            [(MAX_BATCH, false), (MAX_BATCH, false), (MAX_BATCH, true)]
        );
        // a lone item goes after the batch delay, gently; one a flush asks for, at once
        q.push(1);
        tokio::time::sleep(BATCH_DELAY * 2).await;
        q.push(2);
        assert!(q.flush(Duration::from_secs(5)).await);
        assert_eq!(sink.0.lock().unwrap()[3..], [(1, true), (1, false)]);
    }

    fn queue<S: Sink<u32>>(sink: S, capacity: usize, timeout: Duration) -> (Queue<u32>, Counter) {
        let dropped = Counter::default();
        let q = Queue::start(
            sink,
            Arc::new(ExportHealth::new("test")),
            dropped.clone(),
            timeout,
            capacity,
        );
        (q, dropped)
    }

    /// An export that panics.
    struct Panics;

    impl Sink<u32> for Panics {
        async fn export(&self, batch: Vec<u32>, _gentle: bool) -> OTelSdkResult {
            panic!("an exporter's defect ({} items)", batch.len());
        }
        fn shutdown(&self) {}
    }

    #[tokio::test]
    async fn items_whose_export_panicked_are_counted_as_dropped() {
        let (q, dropped) = queue(Panics, 2048, Duration::from_secs(1));
        for i in 0..300 {
            q.push(i);
        }
        assert!(q.flush(Duration::from_secs(5)).await);
        assert_eq!(dropped.get(), 300);
    }

    #[tokio::test]
    async fn flushes_answer_after_everything_queued_before_them() {
        let sink = Recording::default();
        let (q, dropped) = queue(sink.clone(), 2048, Duration::from_secs(1));
        for i in 0..1000 {
            q.push(i);
        }
        // two flushes in a row: both answered, none early
        let (a, b) = tokio::join!(
            q.flush(Duration::from_secs(5)),
            q.flush(Duration::from_secs(5))
        );
        assert!(a && b);
        let batches = sink.0.lock().unwrap().clone();
        // batches may end in any order (several go at once); each keeps its own order
        assert!(batches.iter().all(|b| b.is_sorted()));
        let mut all: Vec<u32> = batches.iter().flatten().copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..1000).collect::<Vec<_>>(), "none lost, none twice");
        assert!(
            batches.iter().all(|b| b.len() <= MAX_BATCH),
            "batches capped"
        );
        assert_eq!(dropped.get(), 0);
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_without_waiting() {
        let sink = Recording::default();
        let (q, dropped) = queue(sink.clone(), 8, Duration::from_secs(1));
        // nothing drains the queue before this loop ends (same thread, no await)
        for i in 0..20 {
            q.push(i);
        }
        assert_eq!(dropped.get(), 12);
        assert!(q.flush(Duration::from_secs(5)).await);
        let exported: usize = sink.0.lock().unwrap().iter().map(Vec::len).sum();
        assert_eq!(exported, 8);
    }

    /// Holds every export until released, counting how many are under way at once.
    #[derive(Clone, Default)]
    struct Held {
        /// Whether each export, in the order they started, was to be gentle.
        gentle: Arc<Mutex<Vec<bool>>>,
        under_way: Arc<Mutex<(usize, usize)>>,
        release: Arc<tokio::sync::Notify>,
        exported: Arc<Mutex<usize>>,
        /// Exported items when `shutdown` was called.
        at_shutdown: Arc<Mutex<Option<usize>>>,
    }

    impl Sink<u32> for Held {
        async fn export(&self, batch: Vec<u32>, gentle: bool) -> OTelSdkResult {
            self.gentle.lock().unwrap().push(gentle);
            {
                let mut u = self.under_way.lock().unwrap();
                u.0 += 1;
                u.1 = u.1.max(u.0);
            }
            let released = self.release.notified();
            released.await;
            self.under_way.lock().unwrap().0 -= 1;
            *self.exported.lock().unwrap() += batch.len();
            Ok(())
        }
        fn shutdown(&self) {
            *self.at_shutdown.lock().unwrap() = Some(*self.exported.lock().unwrap());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_small_queue_that_fills_is_not_exported_gently() {
        let sink = Held::default();
        let capacity = 100;
        let (q, _) = queue(sink.clone(), capacity, Duration::from_secs(30));
        // four exports under way and held, and a fifth batch waiting for a slot
        for _ in 0..=MAX_IN_FLIGHT {
            for i in 0..capacity as u32 {
                q.push(i);
            }
            tokio::time::sleep(BATCH_DELAY * 2).await;
        }
        assert_eq!(sink.under_way.lock().unwrap().0, MAX_IN_FLIGHT);
        // the queue fills behind it (less than a whole batch, but all the queue holds)
        for i in 0..capacity as u32 {
            q.push(i);
        }
        sink.release.notify_waiters();
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        let gentle = sink.gentle.lock().unwrap().clone();
        assert_eq!(gentle.len(), MAX_IN_FLIGHT + 1, "{gentle:?}");
        assert!(gentle[..MAX_IN_FLIGHT].iter().all(|g| *g), "{gentle:?}");
        assert!(!gentle[MAX_IN_FLIGHT], "a full queue behind it: {gentle:?}");
    }

    #[tokio::test]
    async fn the_sink_is_shut_down_only_after_every_export_under_way() {
        let sink = Held::default();
        let (q, _) = queue(sink.clone(), 2048, Duration::from_secs(30));
        let items = 3 * MAX_BATCH;
        for i in 0..items as u32 {
            q.push(i);
        }
        drop(q); // the queue closes: its task exports what it holds, then shuts down
        for _ in 0..1000 {
            tokio::task::yield_now().await;
        }
        assert_eq!(sink.under_way.lock().unwrap().0, 3);
        assert_eq!(
            *sink.at_shutdown.lock().unwrap(),
            None,
            "not while exports run"
        );
        while sink.at_shutdown.lock().unwrap().is_none() {
            sink.release.notify_waiters();
            tokio::task::yield_now().await;
        }
        assert_eq!(*sink.at_shutdown.lock().unwrap(), Some(items));
    }

    #[tokio::test]
    async fn slow_exports_go_several_at_once_and_a_flush_waits_for_all() {
        let sink = Held::default();
        let (q, dropped) = queue(sink.clone(), 2048, Duration::from_secs(30));
        let items = (MAX_IN_FLIGHT + 2) * MAX_BATCH;
        for i in 0..items as u32 {
            q.push(i);
        }
        let flush = tokio::spawn({
            let q = q.clone();
            async move { q.flush(Duration::from_secs(30)).await }
        });
        // the flush asked for every batch: let the queue task start what it may
        for _ in 0..1000 {
            tokio::task::yield_now().await;
        }
        assert_eq!(sink.under_way.lock().unwrap().1, MAX_IN_FLIGHT, "no more");
        assert!(!flush.is_finished(), "a flush waits for exports under way");
        // release them all, batch after batch
        while !flush.is_finished() {
            sink.release.notify_waiters();
            tokio::task::yield_now().await;
        }
        assert!(flush.await.unwrap());
        assert_eq!(*sink.exported.lock().unwrap(), items);
        assert_eq!(dropped.get(), 0);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn the_export_thread_runs_tasks_spawned_under_its_guard() {
        let t = ExportThread::start().expect("thread");
        let name = {
            let _g = t.enter();
            tokio::spawn(async { std::thread::current().name().map(str::to_owned) })
        };
        assert_eq!(
            name.await.expect("task").as_deref(),
            Some("tokentap-export")
        );
        t.stop(Duration::from_secs(5)).await;
    }
}
