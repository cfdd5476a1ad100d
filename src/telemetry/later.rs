//! Recording a proxied call after its response has left.
//!
//! A call's last frame used to wait for the call to be read and recorded (the
//! response's JSON, the metrics, the live view, the span: ~55k instructions),
//! because the body's last poll is where its end is seen, and hyper buffers that
//! frame and drops the body before it writes anything to the socket. Handing
//! the finished call to one long-lived task instead lets the connection task
//! flush the response first; the task then records every call waiting, in
//! arrival order, in one go.
//!
//! Nothing is lost and nothing grows without bound: the queue holds at most
//! [`CAPACITY`] calls, and a call that finds it full is recorded where it is,
//! as before. Anything that reads what calls recorded (`/metrics`, the live
//! view's API, the shutdown flush) settles the queue first ([`Later::settle`]),
//! so a call whose response a client has received is always counted there.
//! Until [`Later::start`] is called (a recorder used without an app: the unit
//! tests) calls are recorded where they finish.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use tokio::sync::Notify;

use super::Recorder;

/// Calls that may wait to be recorded; one more is recorded in place. At ~2 KiB
/// a call, 2 MiB at most; at ~40k instructions a call, a settle that finds a
/// full batch running waits ~10 ms.
pub(crate) const CAPACITY: usize = 1024;

/// A finished call, recorded later by `run`.
pub(crate) trait Deferred: Send {
    fn run(self: Box<Self>, recorder: &Recorder);
}

type Job = Box<dyn Deferred>;

/// The queue of finished calls and the task that records them.
pub(crate) struct Later {
    cap: usize,
    queue: Mutex<Vec<Job>>,
    /// Held while calls taken from the queue are recorded, so a settle that
    /// finds the queue empty waits for them; holds the spare vector.
    running: Mutex<Vec<Job>>,
    wake: Notify,
    on: AtomicBool,
}

impl std::fmt::Debug for Later {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Later")
            .field("on", &self.on.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Default for Later {
    fn default() -> Later {
        Later {
            cap: CAPACITY,
            queue: Mutex::default(),
            running: Mutex::default(),
            wake: Notify::new(),
            on: AtomicBool::new(false),
        }
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
            let mut queue = lock(&self.queue);
            if queue.len() < self.cap {
                let first = queue.is_empty();
                queue.push(job);
                drop(queue);
                if first {
                    self.wake.notify_one();
                }
                return;
            }
        }
        job.run(recorder);
    }

    /// Records every call waiting, and waits for those being recorded.
    pub(crate) fn settle(&self, recorder: &Recorder) {
        let mut batch = lock(&self.running);
        loop {
            std::mem::swap(&mut *batch, &mut *lock(&self.queue));
            if batch.is_empty() {
                return;
            }
            for job in batch.drain(..) {
                job.run(recorder);
            }
        }
    }

    /// Starts the task that records calls later (inside the tokio runtime). It
    /// ends with the recorder, or waits forever, unwoken, when the recorder is gone.
    pub(crate) fn start(recorder: &Arc<Recorder>) {
        let weak: Weak<Recorder> = Arc::downgrade(recorder);
        let later = recorder.later.clone();
        later.on.store(true, Ordering::Relaxed);
        tokio::spawn(async move {
            loop {
                // a push while the last batch ran left a permit: no call waits unseen
                later.wake.notified().await;
                let Some(r) = weak.upgrade() else { return };
                later.settle(&r);
            }
        });
    }
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

    /// A job that counts its runs, and the order it ran in.
    struct Count(usize, Arc<Mutex<Vec<usize>>>);

    impl Deferred for Count {
        fn run(self: Box<Self>, _: &Recorder) {
            lock(&self.1).push(self.0);
        }
    }

    #[test]
    fn a_full_queue_records_in_place_and_a_settle_records_the_rest_in_order() {
        let r = recorder();
        let later = Later {
            cap: 3,
            on: AtomicBool::new(true),
            ..Later::default()
        };
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
        for _ in 0..100 {
            if lock(&ran).len() == 3 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(*lock(&ran), [0, 1, 2]);
        // a push after the task has run wakes it again
        r.later.defer(Box::new(Count(3, ran.clone())), &r);
        for _ in 0..100 {
            if lock(&ran).len() == 4 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(*lock(&ran), [0, 1, 2, 3]);
    }
}
