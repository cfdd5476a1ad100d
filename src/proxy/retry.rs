//! Retry: usage injection fails open.
//!
//! An OpenAI-compatible server that doesn't know `stream_options` answers the
//! injected request with a `400` naming it. The client never asked for that
//! field, so it must not pay for tokentap's curiosity: the client's original
//! request is sent once more, unchanged, and that answer is what the client
//! gets (the call then records no token counts, as with injection off).

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;

/// Most bytes of a `400` read to look for `stream_options` (errors are small).
const ERROR_PEEK_MAX: usize = 64 * 1024;

/// The field whose mention in a `400` means the injection was refused.
const INJECTED_FIELD: &[u8] = b"stream_options";

/// A body that first yields bytes already read from it, then the rest.
pub(super) struct Prefixed<B> {
    prefix: Option<Bytes>,
    inner: B,
    inner_done: bool,
}

impl<B> Prefixed<B> {
    pub(super) fn new(inner: B) -> Prefixed<B> {
        Prefixed {
            prefix: None,
            inner,
            inner_done: false,
        }
    }
}

impl<B> Body for Prefixed<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        if let Some(p) = self.prefix.take() {
            return Poll::Ready(Some(Ok(Frame::data(p))));
        }
        if self.inner_done {
            return Poll::Ready(None);
        }
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_none() && (self.inner_done || self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let extra = self.prefix.as_ref().map_or(0, |p| p.len() as u64);
        if self.inner_done {
            return SizeHint::with_exact(extra);
        }
        let inner = self.inner.size_hint();
        let mut h = SizeHint::new();
        h.set_lower(inner.lower() + extra);
        if let Some(u) = inner.upper() {
            h.set_upper(u + extra);
        }
        h
    }
}

/// What the first answer to an injected request means.
pub(super) enum Verdict {
    /// Forward this answer (its body intact, whatever was read of it first).
    Forward(Response<Prefixed<Incoming>>),
    /// The upstream refused `stream_options`: send the original request.
    Retry,
}

/// Looks at an answer to an injected request: a `400` naming `stream_options` means retry.
/// Each read of the `400` body waits at most `read_timeout`; past it the answer is
/// forwarded as it is, and the tap's own idle deadline takes over.
pub(super) async fn judge(resp: Response<Incoming>, read_timeout: Duration) -> Verdict {
    if resp.status() != StatusCode::BAD_REQUEST {
        return Verdict::Forward(resp.map(Prefixed::new));
    }
    let (parts, mut body) = resp.into_parts();
    let mut seen = BytesMut::new();
    let mut done = false;
    while seen.len() < ERROR_PEEK_MAX {
        let Ok(frame) = tokio::time::timeout(read_timeout, body.frame()).await else {
            break; // a silent upstream: forward what there is, the tap times it out
        };
        match frame {
            None => {
                done = true;
                break;
            }
            Some(Ok(f)) => {
                if let Ok(d) = f.into_data() {
                    seen.extend_from_slice(&d);
                }
            }
            // a broken error body: forward what there was; the tap sees the end
            Some(Err(_)) => {
                done = true;
                break;
            }
        }
    }
    if done
        && seen
            .windows(INJECTED_FIELD.len())
            .any(|w| w == INJECTED_FIELD)
    {
        return Verdict::Retry;
    }
    let body = Prefixed {
        prefix: (!seen.is_empty()).then(|| seen.freeze()),
        inner: body,
        inner_done: done,
    };
    Verdict::Forward(Response::from_parts(parts, body))
}
