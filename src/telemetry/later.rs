//! Recording a proxied call after its response has left.
//!
//! A call's last frame used to wait for the call to be read and recorded (the
//! response's JSON, the metrics, the live view, the span: ~40k instructions
//! for a chat completion), because the body's last poll is where its end is
//! seen, and hyper writes that frame to the socket only after the poll returns
//! it. Handing the finished call to one long-lived task instead lets the
//! connection task flush the response first; the task then records the calls
//! waiting, in arrival order, in one go.
//!
//! No call is dropped for lack of room, and nothing grows without bound: the
//! queue holds at most [`CAPACITY`] calls and [`MAX_BYTES`] of what they still
//! hold (a JSON body kept for its usage, captured text; one call alone may
//! weigh more), and a stream's buffers are let go first. A call that does not
//! fit is recorded where it is, as before (so, only then, and for a call
//! tokentap answers itself, which is always recorded in place, a later call can
//! reach the live view's ring before earlier ones). `/metrics`, `/api/calls`,
//! `/api/summary` and the shutdown flush settle the queue first
//! ([`Later::settle`]), so a call whose response a client has received is
//! always counted there (the OTLP exports and the live stream see it once the
//! task has run). Until [`Later::start`] runs (a recorder used without an app:
//! the unit tests) calls are recorded where they finish. Calls whose bodies are
//! dropped with the runtime itself (connections still open when it stops, after
//! the grace period and the flush) are not recorded.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use tokio::sync::Notify;

use super::Recorder;

/// Calls that may wait to be recorded. A settle that finds a full batch being
/// recorded waits for it: at ~40k instructions a call, a few milliseconds.
pub(crate) const CAPACITY: usize = 256;

/// Bytes the waiting calls may hold in all: themselves, their kept JSON bodies,
/// captured text and gaps (one call alone may hold more).
pub(crate) const MAX_BYTES: usize = 4 << 20;

/// A finished call, recorded later by `run`.
pub(crate) trait Deferred: Send {
    /// Bytes it holds while it waits.
    fn held(&self) -> usize;
    fn run(self: Box<Self>, recorder: &Recorder);
}

type Job = Box<dyn Deferred>;

#[derive(Default)]
struct Queue {
    jobs: Vec<Job>,
    held: usize,
}

/// The queue of finished calls and the task that records them.
pub(crate) struct Later {
    cap: usize,
    max_bytes: usize,
    queue: Mutex<Queue>,
    /// Held while a batch taken from the queue is recorded, so a settle that
    /// finds the queue empty waits for it; holds the spare vector.
    running: Mutex<Vec<Job>>,
    wake: Notify,
    on: AtomicBool,
}

impl Default for Later {
    fn default() -> Later {
        Later {
            cap: CAPACITY,
            max_bytes: MAX_BYTES,
            queue: Mutex::default(),
            running: Mutex::default(),
            wake: Notify::new(),
            on: AtomicBool::new(false),
        }
    }
}

impl std::fmt::Debug for Later {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Later")
            .field("on", &self.on.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Later {
    /// Records `job` after the current task yields, or now when no task records
    /// later or the queue is full.
    pub(crate) fn defer(&self, job: Job, recorder: &Recorder) {
        if self.on.load(Ordering::Relaxed) {
            let held = job.held();
            let mut queue = lock(&self.queue);
            // one call over the byte bound may wait alone: a big body's parse is the
            // longest wait a last frame could have
            let fits = queue.jobs.is_empty() || queue.held + held <= self.max_bytes;
            if queue.jobs.len() < self.cap && fits {
                let first = queue.jobs.is_empty();
                queue.jobs.push(job);
                queue.held += held;
                drop(queue);
                if first {
                    self.wake.notify_one();
                }
                return;
            }
        }
        run(job, recorder);
    }

    /// Records every call that waited when it was called, and waits for those
    /// already being recorded. Calls deferred meanwhile are left to the task.
    pub(crate) fn settle(&self, recorder: &Recorder) {
        let mut batch = lock(&self.running);
        {
            let mut queue = lock(&self.queue);
            std::mem::swap(&mut *batch, &mut queue.jobs);
            queue.held = 0;
        }
        for job in batch.drain(..) {
            run(job, recorder);
        }
    }

    /// Starts the task that records calls later (inside the tokio runtime). It
    /// ends with the recorder, or waits forever, unwoken, when the recorder is gone.
    pub(crate) fn start(recorder: &Arc<Recorder>) {
        let weak: Weak<Recorder> = Arc::downgrade(recorder);
        let later = recorder.later.clone();
        let task = later.clone();
        tokio::spawn(async move {
            loop {
                // a push while the last batch ran left a permit: no call waits unseen
                task.wake.notified().await;
                let Some(r) = weak.upgrade() else { return };
                task.settle(&r);
                drop(r);
                // the others' turn (a wake-up is not counted against the task's budget)
                tokio::task::yield_now().await;
            }
        });
        later.on.store(true, Ordering::Relaxed);
    }
}

/// A call already read (a Realtime turn, a tunnel): only its recording waits.
impl Deferred for crate::call::Call {
    fn held(&self) -> usize {
        std::mem::size_of::<crate::call::Call>() + crate::call::Call::held(self)
    }
    fn run(self: Box<Self>, recorder: &Recorder) {
        recorder.record(*self);
    }
}

/// Runs one job; a panic costs that call's telemetry, not the others'.
fn run(job: Job, recorder: &Recorder) {
    if catch_unwind(AssertUnwindSafe(|| job.run(recorder))).is_err() {
        tracing::error!("recording a call panicked; its telemetry is lost");
    }
}

/// Yields at most `times` times, until `done` holds; whether it does. For tests
/// that wait for the recording task on their own thread.
#[cfg(test)]
pub(crate) async fn yield_until(times: usize, mut done: impl FnMut() -> bool) -> bool {
    for _ in 0..times {
        if done() {
            return true;
        }
        tokio::task::yield_now().await;
    }
    done()
}

#[cfg(test)]
mod tests {
    use opentelemetry_sdk::trace::SdkTracerProvider;

    use super::*;
    use crate::telemetry::otel::Providers;
    use crate::telemetry::{RecorderOptions, Telemetry};

    fn recorder() -> Arc<Recorder> {
        let opts = RecorderOptions {
            pricing: Default::default(),
            max_label_values: 10,
            max_label_length: 100,
            metric_dimensions: Vec::new(),
            recent_calls: 0,
        };
        Telemetry::with_providers(opts, |_| {
            Ok(Providers::tracing_only(
                SdkTracerProvider::builder().build(),
            ))
        })
        .expect("telemetry")
        .recorder
    }

    /// A job that notes its number when it runs.
    struct Count(usize, Arc<Mutex<Vec<usize>>>);

    impl Deferred for Count {
        fn held(&self) -> usize {
            0
        }
        fn run(self: Box<Self>, _: &Recorder) {
            lock(&self.1).push(self.0);
        }
    }

    fn on() -> Later {
        Later {
            on: AtomicBool::new(true),
            ..Later::default()
        }
    }

    #[test]
    fn a_full_queue_records_in_place_and_a_settle_records_the_rest_in_order() {
        let r = recorder();
        let later = Later { cap: 3, ..on() };
        let ran = Arc::new(Mutex::new(Vec::new()));
        for i in 0..5 {
            later.defer(Box::new(Count(i, ran.clone())), &r);
        }
        // three wait; the fourth and fifth found the queue full
        assert_eq!(*lock(&ran), [3, 4]);
        later.settle(&r);
        assert_eq!(*lock(&ran), [3, 4, 0, 1, 2]);
        later.settle(&r); // nothing is recorded twice
        assert_eq!(lock(&ran).len(), 5);
    }

    #[test]
    fn without_its_task_a_call_is_recorded_in_place() {
        let r = recorder();
        let ran = Arc::new(Mutex::new(Vec::new()));
        r.later.defer(Box::new(Count(7, ran.clone())), &r);
        assert_eq!(*lock(&ran), [7]);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_task_records_what_waits_once_the_pusher_yields() {
        let r = recorder();
        r.record_later();
        let ran = Arc::new(Mutex::new(Vec::new()));
        for i in 0..3 {
            r.later.defer(Box::new(Count(i, ran.clone())), &r);
        }
        assert!(
            lock(&ran).is_empty(),
            "nothing is recorded before the pusher yields"
        );
        yield_until(100, || lock(&ran).len() == 3).await;
        assert_eq!(*lock(&ran), [0, 1, 2]);
        // a push after the task has run wakes it again
        r.later.defer(Box::new(Count(3, ran.clone())), &r);
        yield_until(100, || lock(&ran).len() == 4).await;
        assert_eq!(*lock(&ran), [0, 1, 2, 3]);
    }

    /// A job that defers another like it when it runs, `left` times.
    struct Again(usize, Arc<Later>, Arc<Mutex<Vec<usize>>>);

    impl Deferred for Again {
        fn held(&self) -> usize {
            0
        }
        fn run(self: Box<Self>, r: &Recorder) {
            lock(&self.2).push(self.0);
            if self.0 > 0 {
                self.1.defer(
                    Box::new(Again(self.0 - 1, self.1.clone(), self.2.clone())),
                    r,
                );
            }
        }
    }

    #[test]
    fn a_settle_records_what_waited_when_it_began_not_what_comes_after() {
        let r = recorder();
        let later = Arc::new(on());
        let ran = Arc::new(Mutex::new(Vec::new()));
        later.defer(Box::new(Again(1000, later.clone(), ran.clone())), &r);
        later.settle(&r);
        // a settle under a steady flow of calls ends: one batch each
        assert_eq!(*lock(&ran), [1000]);
        later.settle(&r);
        assert_eq!(*lock(&ran), [1000, 999]);
    }

    /// A job that holds `n` bytes.
    struct Heavy(usize, Arc<Mutex<Vec<usize>>>);

    impl Deferred for Heavy {
        fn held(&self) -> usize {
            self.0
        }
        fn run(self: Box<Self>, _: &Recorder) {
            lock(&self.1).push(self.0);
        }
    }

    #[test]
    fn calls_that_would_hold_too_many_bytes_are_recorded_in_place() {
        let r = recorder();
        let later = Later {
            max_bytes: 100,
            ..on()
        };
        let ran = Arc::new(Mutex::new(Vec::new()));
        for n in [60, 41, 40, 1] {
            later.defer(Box::new(Heavy(n, ran.clone())), &r);
        }
        // 60 waits; 41 would make 101; 40 fits; then 1 more would pass 100
        assert_eq!(*lock(&ran), [41, 1]);
        later.settle(&r);
        assert_eq!(*lock(&ran), [41, 1, 60, 40]);
        // the settle emptied the count too; one call over the bound waits when alone
        later.defer(Box::new(Heavy(500, ran.clone())), &r);
        later.defer(Box::new(Heavy(1, ran.clone())), &r);
        assert_eq!(*lock(&ran), [41, 1, 60, 40, 1]);
        later.settle(&r);
        assert_eq!(*lock(&ran), [41, 1, 60, 40, 1, 500]);
    }

    /// A job that panics.
    struct Panics;

    impl Deferred for Panics {
        fn held(&self) -> usize {
            0
        }
        fn run(self: Box<Self>, _: &Recorder) {
            panic!("a job that panics");
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_panicking_call_costs_its_own_telemetry_only() {
        let r = recorder();
        r.record_later();
        let ran = Arc::new(Mutex::new(Vec::new()));
        r.later.defer(Box::new(Count(1, ran.clone())), &r);
        r.later.defer(Box::new(Panics), &r);
        r.later.defer(Box::new(Count(2, ran.clone())), &r);
        yield_until(100, || lock(&ran).len() == 2).await;
        assert_eq!(*lock(&ran), [1, 2]);
        // and the task still records
        r.later.defer(Box::new(Count(3, ran.clone())), &r);
        yield_until(100, || lock(&ran).len() == 3).await;
        assert_eq!(*lock(&ran), [1, 2, 3]);
    }

    #[test]
    fn after_a_settle_every_call_deferred_before_it_has_been_recorded_once() {
        let r = recorder();
        let later = Arc::new(on());
        let ran = Arc::new(Mutex::new(Vec::new()));
        std::thread::scope(|s| {
            for t in 0..4 {
                let (later, ran, r) = (later.clone(), ran.clone(), r.clone());
                s.spawn(move || {
                    for i in 0..500 {
                        let id = t * 1000 + i;
                        later.defer(Box::new(Count(id, ran.clone())), &r);
                        if i % 7 == 0 {
                            // what a scrape does: afterwards its own call is in
                            later.settle(&r);
                            assert!(lock(&ran).contains(&id), "{id} not recorded");
                        }
                    }
                });
            }
        });
        later.settle(&r);
        let mut all = lock(&ran).clone();
        all.sort_unstable();
        let want: Vec<usize> = (0..4)
            .flat_map(|t| (0..500).map(move |i| t * 1000 + i))
            .collect();
        assert_eq!(all, want, "each call recorded exactly once");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_task_lets_the_others_run_between_batches() {
        let r = recorder();
        r.record_later();
        let ran = Arc::new(Mutex::new(Vec::new()));
        // each run defers the next: a steady flow of calls
        r.later
            .defer(Box::new(Again(10_000, r.later.clone(), ran.clone())), &r);
        tokio::task::yield_now().await;
        let n = lock(&ran).len();
        assert!(
            (1..100).contains(&n),
            "{n} recorded before this task ran again"
        );
        yield_until(20_000, || lock(&ran).len() == 10_001).await;
        assert_eq!(
            lock(&ran).len(),
            10_001,
            "a push during a batch wakes the task again"
        );
    }
}
