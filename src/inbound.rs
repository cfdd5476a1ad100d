//! Reading what a client sends: bounded in size and in patience.
//!
//! The proxy and the agent both read whole request bodies before acting on
//! them. A body is refused as soon as it is known to be too large (its
//! `Content-Length`, or the bytes so far), and a client that stops sending
//! mid-body is given up on after `--request-timeout` without a byte, so
//! neither a huge nor a trickled body can hold memory or a task for long.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http::header;
use http_body_util::BodyExt;

use crate::tap::BoxError;

/// Why a body could not be read whole.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// Over the limit (declared or actual).
    TooLarge,
    /// No byte for the whole timeout.
    Timeout,
    /// The client's connection failed.
    Client(BoxError),
}

/// Reads `body` whole: at most `limit` bytes, waiting at most `timeout` for each frame.
pub(crate) async fn read_body<B>(
    headers: &HeaderMap,
    body: B,
    limit: u64,
    timeout: Duration,
) -> Result<Bytes, ReadError>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ReadError::TooLarge);
    }
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let mut body = std::pin::pin!(body);
    // one frame (the usual case) is kept as it is, without a copy
    let mut whole: Option<Bytes> = None;
    let mut joined: Option<BytesMut> = None;
    let mut len = 0usize;
    loop {
        let frame = match tokio::time::timeout(timeout, body.as_mut().frame()).await {
            Err(_) => return Err(ReadError::Timeout),
            Ok(None) => break,
            Ok(Some(Err(e))) => return Err(ReadError::Client(e.into())),
            Ok(Some(Ok(f))) => f,
        };
        let Ok(data) = frame.into_data() else {
            continue; // trailers carry no body bytes
        };
        len += data.len();
        if len > limit {
            return Err(ReadError::TooLarge);
        }
        if let Some(buf) = joined.as_mut() {
            buf.extend_from_slice(&data);
        } else if let Some(first) = whole.take() {
            let mut buf = BytesMut::with_capacity(len);
            buf.extend_from_slice(&first);
            buf.extend_from_slice(&data);
            joined = Some(buf);
        } else {
            whole = Some(data);
        }
    }
    Ok(match (joined, whole) {
        (Some(buf), _) => buf.freeze(),
        (None, Some(b)) => b,
        (None, None) => Bytes::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{Full, StreamBody};

    fn frames(parts: Vec<&'static [u8]>) -> impl http_body::Body<Data = Bytes, Error = BoxError> {
        let items: Vec<Result<http_body::Frame<Bytes>, BoxError>> = parts
            .into_iter()
            .map(|p| Ok(http_body::Frame::data(Bytes::from_static(p))))
            .collect();
        StreamBody::new(futures_util::stream::iter(items))
    }

    const SECOND: Duration = Duration::from_secs(1);

    #[tokio::test]
    async fn frames_are_joined_up_to_the_limit() {
        let h = HeaderMap::new();
        let got = read_body(&h, frames(vec![b"ab", b"cd", b"e"]), 5, SECOND).await;
        assert_eq!(got.ok(), Some(Bytes::from_static(b"abcde")));
        let over = read_body(&h, frames(vec![b"ab", b"cd", b"ef"]), 5, SECOND).await;
        assert!(matches!(over, Err(ReadError::TooLarge)));
        let one = read_body(&h, Full::new(Bytes::from_static(b"xyz")), 5, SECOND).await;
        assert_eq!(one.ok(), Some(Bytes::from_static(b"xyz")));
    }

    #[tokio::test]
    async fn a_declared_length_over_the_limit_is_refused_unread() {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_LENGTH, http::HeaderValue::from_static("6"));
        let got = read_body(&h, Full::new(Bytes::from_static(b"x")), 5, SECOND).await;
        assert!(matches!(got, Err(ReadError::TooLarge)));
    }

    #[tokio::test]
    async fn a_stalled_body_times_out() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<http_body::Frame<Bytes>, BoxError>>(1);
        let stalled = StreamBody::new(Recv(rx));
        tx.send(Ok(http_body::Frame::data(Bytes::from_static(b"part"))))
            .await
            .expect("send");
        let got = read_body(&HeaderMap::new(), stalled, 100, Duration::from_millis(50)).await;
        assert!(matches!(got, Err(ReadError::Timeout)));
        drop(tx);
    }

    struct Recv<T>(tokio::sync::mpsc::Receiver<T>);
    impl<T> futures_core::Stream for Recv<T> {
        type Item = T;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<T>> {
            self.0.poll_recv(cx)
        }
    }
}
