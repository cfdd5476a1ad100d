//! The response body wrapper: every frame passes through as it arrives.
//!
//! A `Tap` hands each upstream frame to the client the moment it is polled,
//! shows a reference to the [`Observer`], and finishes the call exactly once:
//! at the end of the body, on an upstream error or idle timeout, or — when
//! the client goes away and hyper drops the body — from `Drop`, as
//! `cancelled` (or as completed when the stream had already sent its
//! terminal event: SDKs close right after `[DONE]`). The finish state lives
//! in an `Option` that is taken, so no path can record a call twice. hyper
//! may stop polling once `is_end_stream()` is true, so the end is also
//! detected right after the last frame rather than only on a final `None`.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::Sleep;

use crate::call::{Call, Outcome};
use crate::observe::{Observer, Pass};
use crate::telemetry::Recorder;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The stream went quiet for longer than `--read-timeout`.
#[derive(Debug)]
pub struct IdleTimeout(pub Duration);

impl std::fmt::Display for IdleTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "no data from the upstream for {:?}", self.0)
    }
}
impl std::error::Error for IdleTimeout {}

struct Pending {
    call: Call,
    observer: Observer,
    recorder: Arc<Recorder>,
    started: Instant,
}

pub struct Tap<B> {
    inner: B,
    pending: Option<Pending>,
    edits: bool,
    idle: Pin<Box<Sleep>>,
    read_timeout: Duration,
}

impl<B: Body> Tap<B> {
    /// Wraps `inner`; a body that is empty from the start is finished at once,
    /// since hyper never polls it.
    pub fn new(
        inner: B,
        call: Call,
        observer: Observer,
        recorder: Arc<Recorder>,
        started: Instant,
        read_timeout: Duration,
    ) -> Tap<B> {
        let edits = observer.edits();
        let empty = inner.is_end_stream();
        let mut tap = Tap {
            inner,
            pending: Some(Pending {
                call,
                observer,
                recorder,
                started,
            }),
            edits,
            idle: Box::pin(tokio::time::sleep(read_timeout)),
            read_timeout,
        };
        if empty {
            tap.finish(Outcome::Completed);
        }
        tap
    }
}

impl<B> Tap<B> {
    fn finish(&mut self, outcome: Outcome) {
        if let Some(p) = self.pending.take() {
            let Pending {
                mut call,
                observer,
                recorder,
                started,
            } = p;
            call.outcome = outcome;
            call.duration = started.elapsed();
            let work = Instant::now();
            observer.finish_into(&mut call, outcome == Outcome::Completed);
            call.overhead += work.elapsed();
            recorder.record(call);
        }
    }
}

impl<B> Body for Tap<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            if this.pending.is_none() {
                return Poll::Ready(None);
            }
            let polled = Pin::new(&mut this.inner).poll_frame(cx);
            let frame = match polled {
                Poll::Pending => {
                    ready!(this.idle.as_mut().poll(cx));
                    this.finish(Outcome::Timeout);
                    return Poll::Ready(Some(Err(Box::new(IdleTimeout(this.read_timeout)))));
                }
                Poll::Ready(None) => {
                    let rest = this
                        .pending
                        .as_mut()
                        .map(|p| p.observer.flush())
                        .unwrap_or_default();
                    this.finish(Outcome::Completed);
                    return Poll::Ready(
                        (!rest.is_empty()).then(|| Ok(Frame::data(Bytes::from(rest)))),
                    );
                }
                Poll::Ready(Some(Err(e))) => {
                    this.finish(Outcome::ConnectionError);
                    return Poll::Ready(Some(Err(e.into())));
                }
                Poll::Ready(Some(Ok(frame))) => frame,
            };
            this.idle
                .as_mut()
                .reset(tokio::time::Instant::now() + this.read_timeout);
            let at_end = this.inner.is_end_stream();
            let Some(p) = this.pending.as_mut() else {
                continue;
            };
            let work = Instant::now();
            let out = match frame.data_ref() {
                Some(data) => match p.observer.on_data(data) {
                    Pass::Unchanged => Some(frame),
                    Pass::Edited(mut bytes) => {
                        if at_end {
                            bytes.extend(p.observer.flush());
                        }
                        (!bytes.is_empty()).then(|| Frame::data(Bytes::from(bytes)))
                    }
                },
                None => Some(frame), // trailers pass as they are
            };
            p.call.overhead += work.elapsed();
            if at_end {
                this.finish(Outcome::Completed);
            }
            match out {
                Some(f) => return Poll::Ready(Some(Ok(f))),
                None if at_end => return Poll::Ready(None),
                None => continue,
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.pending {
            None => true,
            Some(_) => !self.edits && self.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        if self.edits {
            SizeHint::default()
        } else {
            self.inner.size_hint()
        }
    }
}

impl<B> Drop for Tap<B> {
    fn drop(&mut self) {
        if let Some(p) = &self.pending {
            // hyper drops a body it has read to the end without a final poll
            // only when the body said it was at its end; anything else means
            // the client left early — unless the stream had already said its
            // last word: SDKs stop reading at `[DONE]` and close, and the
            // body's end may only have been on its way.
            let outcome = if p.observer.stream_done() {
                Outcome::Completed
            } else {
                Outcome::Cancelled
            };
            self.finish(outcome);
        }
    }
}
