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
//! Finishing stamps the end and lets go of the buffers only bytes still to
//! come needed (`Observer::settled`); reading the response (its JSON, an
//! incomplete last event) and recording are deferred (`telemetry::later`; in
//! place when its queue is full), since hyper writes that last frame only after
//! this poll returns it.

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
use crate::telemetry::later::Deferred;

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

/// The call until it ends; boxed once, so that it moves as a pointer and is
/// handed as it is to be recorded later.
struct Pending {
    call: Call,
    observer: Observer,
    started: Instant,
    /// The call ended as completed (read when it is recorded).
    completed: bool,
    /// Bytes of the response the observer still holds.
    held: usize,
}

impl Deferred for Pending {
    fn held(&self) -> usize {
        std::mem::size_of::<Pending>() + self.call.held() + self.held
    }

    /// The response's own reading (its JSON, its last event) and the recording,
    /// both after the response has left.
    fn run(self: Box<Self>, recorder: &Recorder) {
        let Pending {
            mut call,
            observer,
            completed,
            ..
        } = *self;
        let work = Instant::now();
        observer.finish_into(&mut call, completed);
        call.overhead += work.elapsed();
        recorder.record(call);
    }
}

pub struct Tap<B> {
    inner: B,
    pending: Option<Box<Pending>>,
    recorder: Arc<Recorder>,
    edits: bool,
    /// Fires no later than `read_timeout` after the last frame. It is moved only when
    /// it fires with a frame seen since: moving it on every frame cost a deadline
    /// conversion, a handle clone and an atomic swap a chunk (the tap's poll −145
    /// instructions a chunk, docs/benchmarks.md, load round eight).
    idle: Pin<Box<Sleep>>,
    /// When the last frame came (the start, before the first).
    last_frame: tokio::time::Instant,
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
            pending: Some(Box::new(Pending {
                call,
                observer,
                started,
                completed: false,
                held: 0,
            })),
            recorder,
            edits,
            idle: Box::pin(tokio::time::sleep(read_timeout)),
            last_frame: tokio::time::Instant::now(),
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
        if let Some(mut p) = self.pending.take() {
            p.call.outcome = outcome;
            p.call.duration = p.started.elapsed();
            p.call.ended = Some(std::time::SystemTime::now());
            p.completed = outcome == Outcome::Completed;
            p.held = p.observer.settled();
            self.recorder.defer(p);
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
                    loop {
                        ready!(this.idle.as_mut().poll(cx));
                        let due = this.last_frame + this.read_timeout;
                        if tokio::time::Instant::now() >= due {
                            break;
                        }
                        this.idle.as_mut().reset(due); // polled again: it wakes us then
                    }
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
            this.last_frame = tokio::time::Instant::now();
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

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use http_body_util::BodyExt;
    use http_body_util::StreamBody;
    use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
    use tokio::sync::mpsc;

    use super::*;
    use crate::genai::pricing::PriceTable;
    use crate::genai::request::Operation;
    use crate::telemetry::otel::Providers;
    use crate::telemetry::{RecorderOptions, Telemetry};

    type Frames = StreamBody<ChannelStream>;

    /// The frames a test sends, as a body.
    struct ChannelStream(mpsc::Receiver<Bytes>);

    impl futures_core::Stream for ChannelStream {
        type Item = Result<Frame<Bytes>, Infallible>;
        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
        }
    }

    fn tap(timeout: Duration) -> (mpsc::Sender<Bytes>, Tap<Frames>) {
        let (tx, tap, _) = traced_tap(timeout, SdkTracerProvider::builder().build(), 0);
        (tx, tap)
    }

    /// A chat call's tap whose call has a span of `tp`, and its recorder.
    fn traced_tap(
        timeout: Duration,
        tp: SdkTracerProvider,
        recent_calls: usize,
    ) -> (mpsc::Sender<Bytes>, Tap<Frames>, Arc<Recorder>) {
        let telemetry = Telemetry::with_providers(
            RecorderOptions {
                pricing: PriceTable::default(),
                max_label_values: 10,
                max_label_length: 100,
                metric_dimensions: Vec::new(),
                recent_calls,
            },
            |_| Ok(Providers::tracing_only(tp)),
        )
        .expect("telemetry");
        let recorder = telemetry.recorder;
        let mut call = crate::telemetry::series::tests::chat("gpt-4o");
        call.trace = Some(crate::telemetry::spans::start(
            recorder.tracer(),
            &opentelemetry::Context::new(),
            &call,
            std::time::SystemTime::now(),
        ));
        let observer = Observer::new(
            Some(Operation::ChatCompletions),
            true,
            None,
            false,
            Instant::now(),
        );
        let (tx, rx) = mpsc::channel(4);
        let body = StreamBody::new(ChannelStream(rx));
        let tap = Tap::new(
            body,
            call,
            observer,
            recorder.clone(),
            Instant::now(),
            timeout,
        );
        (tx, tap, recorder)
    }

    /// `llm_requests_total`, summed over its series.
    fn requests(recorder: &Recorder) -> f64 {
        let page = recorder
            .metrics
            .encode(crate::telemetry::metrics::Format::PrometheusText)
            .expect("page");
        page.lines()
            .filter(|l| l.starts_with("llm_requests_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Yields until `llm_requests_total` is not 0 (the task has run), at most 100 times.
    async fn recorded(recorder: &Recorder) -> f64 {
        crate::telemetry::later::yield_until(100, || requests(recorder) > 0.0).await;
        requests(recorder)
    }

    fn traced() -> (InMemorySpanExporter, SdkTracerProvider) {
        let spans = InMemorySpanExporter::default();
        let tp = SdkTracerProvider::builder()
            .with_simple_exporter(spans.clone())
            .build();
        (spans, tp)
    }

    const CHUNK: &[u8] =
        b"data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o\",\"choices\":[]}\n\n";

    #[tokio::test(flavor = "current_thread")]
    async fn a_call_is_recorded_after_its_last_frame_has_left_and_dated_when_it_ended() {
        let (spans, tp) = traced();
        let (tx, mut tap, recorder) = traced_tap(Duration::from_secs(60), tp, 8);
        recorder.record_later();
        let event = Bytes::from_static(CHUNK);
        tx.send(event.clone()).await.expect("sent");
        drop(tx);
        let first = tap.frame().await.expect("a frame").expect("data");
        assert_eq!(first.into_data().ok(), Some(event));
        assert!(tap.frame().await.is_none(), "the body's end");
        let ended = std::time::SystemTime::now();
        // the body has ended, and this task has not let go of the core since
        assert_eq!(
            requests(&recorder),
            0.0,
            "recorded before the response left"
        );
        assert!(spans.get_finished_spans().expect("spans").is_empty());
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(recorded(&recorder).await, 1.0, "recorded once, by the task");
        let done = spans.get_finished_spans().expect("spans");
        assert_eq!(done.len(), 1);
        // the span and the live view's entry are dated when the body ended, not when
        // the call was recorded 30 ms later
        assert!(
            done[0].end_time <= ended,
            "{:?} > {ended:?}",
            done[0].end_time
        );
        assert!(done[0].end_time >= done[0].start_time);
        let live = recorder.live.as_ref().expect("live view on");
        let entries = live.newest_first();
        assert_eq!(entries.len(), 1);
        assert!(entries[0].at <= ended, "{:?} > {ended:?}", entries[0].at);
        drop(tap);
        recorder.settle();
        assert_eq!(
            requests(&recorder),
            1.0,
            "dropping the ended body records nothing"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_client_gone_mid_stream_is_recorded_later_as_cancelled() {
        let (spans, tp) = traced();
        let (tx, mut tap, recorder) = traced_tap(Duration::from_secs(60), tp, 0);
        recorder.record_later();
        tx.send(Bytes::from_static(CHUNK)).await.expect("sent");
        tap.frame().await.expect("a frame").expect("data");
        drop(tap); // what hyper does when the client goes away
        let gone = std::time::SystemTime::now();
        assert_eq!(requests(&recorder), 0.0);
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(recorded(&recorder).await, 1.0);
        let done = spans.get_finished_spans().expect("spans");
        assert_eq!(done.len(), 1);
        assert!(done[0].end_time <= gone);
        let error = done[0]
            .attributes
            .iter()
            .find(|kv| kv.key.as_str() == "error.type")
            .map(|kv| kv.value.to_string());
        assert_eq!(error.as_deref(), Some("cancelled"));
        drop(tx);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_stream_is_cut_only_after_a_whole_timeout_of_silence() {
        let timeout = Duration::from_millis(1000);
        let (tx, mut tap) = tap(timeout);
        let start = tokio::time::Instant::now();
        // a frame every 0.6 s for 5.4 s: never a silence of the timeout. The last frame is
        // not on a whole number of timeouts, so a timer moved to "now + timeout" when it
        // fires (not to the last frame's deadline) would cut late, at 6 s + 1 s
        let sender = tokio::spawn(async move {
            for _ in 0..9 {
                tokio::time::sleep(Duration::from_millis(600)).await;
                if tx.send(Bytes::from_static(b": ping\n\n")).await.is_err() {
                    return;
                }
            }
            // then silence, the sender kept open
            tokio::time::sleep(Duration::from_secs(3600)).await;
            drop(tx);
        });
        for i in 0..9 {
            let frame = tap.frame().await.expect("a frame").expect("not cut");
            assert_eq!(
                frame.into_data().ok().as_deref(),
                Some(&b": ping\n\n"[..]),
                "{i}"
            );
        }
        let last = tokio::time::Instant::now();
        assert_eq!(last - start, Duration::from_millis(5400));
        // the silence: cut exactly one timeout after the last frame
        let cut = tap.frame().await.expect("an end");
        let err = cut.expect_err("cut by the idle timeout");
        assert!(err.is::<IdleTimeout>(), "{err}");
        assert_eq!(tokio::time::Instant::now() - last, timeout);
        sender.abort();
    }
}
