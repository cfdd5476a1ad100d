//! Two futures run together on one task, each polled only when its own waker fired.
//!
//! A tunnel's two directions share a task. `tokio::join!` polls every unfinished
//! future on each wake-up, so each frame relayed one way also polled the idle
//! other way (a read that returns `Pending`, ~400 instructions). Here each
//! future gets a waker of its own that marks it before waking the task, and a
//! wake-up polls only what was marked. The two take turns at going first, as
//! with `join!`: the first may spend the task's whole budget (tokio's coop), and a
//! side always second could then be held back for as long as the other had bytes.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

/// The task's current waker, shared by both sides' wakers.
type Parent = Arc<Mutex<Option<Waker>>>;

/// One side's waker: marks the side, then wakes the task.
struct Mark {
    fired: AtomicBool,
    parent: Parent,
}

impl Wake for Mark {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.fired.store(true, Ordering::Release);
        if let Some(w) = self.parent.lock().ok().as_deref().and_then(Option::as_ref) {
            w.wake_by_ref();
        }
    }
}

/// Runs `a` and `b` to completion; each is polled once at first, then only
/// after its own waker fired. They come pinned by the caller: an async fn keeps
/// its arguments for its whole life, so futures taken by value and pinned here
/// were held twice in the tunnel's task (3.5 KB where 1.8 KB do), and tokio
/// copies a task's future whole when it spawns and when it finishes it. Each
/// must not have been polled yet; the caller drops them, after this returns.
pub(super) async fn both<A, B>(mut a: Pin<&mut A>, mut b: Pin<&mut B>)
where
    A: Future<Output = ()>,
    B: Future<Output = ()>,
{
    let parent: Parent = Arc::new(Mutex::new(None));
    let mark = || {
        Arc::new(Mark {
            fired: AtomicBool::new(true),
            parent: parent.clone(),
        })
    };
    let (mark_a, mark_b) = (mark(), mark());
    let (waker_a, waker_b) = (Waker::from(mark_a.clone()), Waker::from(mark_b.clone()));
    let (mut a_done, mut b_done) = (false, false);
    let mut b_first = false;
    std::future::poll_fn(|cx| {
        if let Ok(mut p) = parent.lock() {
            if !p.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *p = Some(cx.waker().clone());
            }
        }
        // the side polled first may spend the task's whole budget: they take turns
        b_first = !b_first;
        for b_turn in [b_first, !b_first] {
            if b_turn {
                poll_side(b.as_mut(), &mut b_done, &mark_b, &waker_b);
            } else {
                poll_side(a.as_mut(), &mut a_done, &mark_a, &waker_a);
            }
        }
        if a_done && b_done {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
}

/// Polls `side` if it is not done and its waker fired.
fn poll_side<F: Future<Output = ()>>(
    side: Pin<&mut F>,
    done: &mut bool,
    mark: &Mark,
    waker: &Waker,
) {
    if !*done && mark.fired.swap(false, Ordering::AcqRel) {
        *done = side.poll(&mut Context::from_waker(waker)).is_ready();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use tokio::sync::Notify;

    /// Waits for `n` notifications, counting its polls.
    async fn counted(polls: &AtomicUsize, go: &Notify, n: usize) {
        for _ in 0..n {
            let notified = go.notified();
            tokio::pin!(notified);
            std::future::poll_fn(|cx| {
                polls.fetch_add(1, Ordering::Relaxed);
                notified.as_mut().poll(cx)
            })
            .await;
        }
    }

    #[tokio::test]
    async fn a_side_is_polled_only_when_its_own_waker_fired() {
        let (polls_a, polls_b) = (AtomicUsize::new(0), AtomicUsize::new(0));
        let (go_a, go_b) = (Notify::new(), Notify::new());
        let a = std::pin::pin!(counted(&polls_a, &go_a, 50));
        let b = std::pin::pin!(counted(&polls_b, &go_b, 1));
        let run = both(a, b);
        tokio::pin!(run);
        let step = |run: Pin<&mut _>| {
            let mut cx = Context::from_waker(Waker::noop());
            Future::poll(run, &mut cx)
        };
        assert!(step(run.as_mut()).is_pending());
        // fifty wake-ups of a: b is not polled again
        for _ in 0..50 {
            go_a.notify_one();
            let _ = step(run.as_mut());
        }
        assert_eq!(
            polls_b.load(Ordering::Relaxed),
            1,
            "b polled once, at first"
        );
        assert!(polls_a.load(Ordering::Relaxed) >= 50);
        go_b.notify_one();
        assert!(step(run.as_mut()).is_ready(), "both finished");
        assert_eq!(polls_b.load(Ordering::Relaxed), 2);
    }
}
