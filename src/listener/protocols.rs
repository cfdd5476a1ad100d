//! Which HTTP a new connection speaks, told from its first bytes without
//! reading them.
//!
//! hyper-util's auto builder finds out by reading up to 24 bytes (the length
//! of HTTP/2's preface) and handing them back to hyper in front of the socket.
//! hyper's read buffer then holds those few bytes when it reads the rest of
//! the request, and growing it past its 8 KiB doubles it: every HTTP/1
//! connection kept a 16 KiB read buffer, 8 MiB at 1,000 open streams. A peek
//! leaves the bytes in the socket, so hyper's first read takes the whole
//! request into its first buffer. HTTP/1 connections (nearly all of them) go
//! to hyper's HTTP/1 server directly; h2c with prior knowledge, and a
//! connection whose first bytes are still a prefix of the preface, keep the
//! auto builder, as before.

use std::pin::pin;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::Service;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::Watcher;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::{BoxError, stopped};

/// HTTP/2's connection preface (RFC 9113 §3.4), what an h2c client with prior
/// knowledge sends first.
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How a listener serves HTTP: hyper's HTTP/1 server for connections that
/// start as HTTP/1, the auto builder (HTTP/1 or h2c) for the rest. The two are
/// configured here only, so a setting cannot reach one and miss the other.
#[derive(Clone, Debug)]
pub struct Protocols {
    http1: http1::Builder,
    auto: auto::Builder<TokioExecutor>,
}

impl Default for Protocols {
    fn default() -> Self {
        Protocols {
            http1: http1::Builder::new(),
            auto: auto::Builder::new(TokioExecutor::new()),
        }
    }
}

impl Protocols {
    /// No `date` header on responses, whichever HTTP serves them.
    pub fn without_date_header(mut self) -> Self {
        self.http1.auto_date_header(false);
        self.auto.http1().auto_date_header(false);
        self.auto.http2().auto_date_header(false);
        self
    }

    /// Serves one accepted connection (wrapped by `wrap` once its protocol is
    /// known) until it ends. The stop signal, or `stop`'s sender gone, closes it
    /// gracefully: a request in flight finishes. `watcher` is kept until the
    /// connection ends, so the listener's drain waits for it.
    pub(super) async fn serve<I, S, B>(
        &self,
        stream: TcpStream,
        wrap: impl FnOnce(TcpStream) -> I,
        service: S,
        watcher: Watcher,
        mut stop: watch::Receiver<bool>,
    ) -> Result<(), BoxError>
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        S: Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let http1 = tokio::select! {
            // a request already there is served, even if the stop came first
            biased;
            http1 = starts_as_http1(&stream) => http1,
            // nothing read yet: an idle connection simply closes
            () = stopped(&mut stop) => return Ok(()),
        };
        let io = TokioIo::new(wrap(stream));
        if !http1 {
            return watcher
                .watch(self.auto.serve_connection_with_upgrades(io, service))
                .await;
        }
        // hyper-util's watcher takes no HTTP/1 connection with upgrades: the same
        // graceful close, on the same signal, done here
        let _draining_waits_for_this = watcher;
        let mut conn = pin!(self.http1.serve_connection(io, service).with_upgrades());
        tokio::select! {
            // read what is there before closing: hyper closes a connection at once if
            // it has read nothing yet, and the client would get a reset, not an answer
            biased;
            result = conn.as_mut() => return result.map_err(Into::into),
            () = stopped(&mut stop) => {}
        }
        conn.as_mut().graceful_shutdown();
        conn.await.map_err(Into::into)
    }
}

/// Whether the connection's first bytes already rule out h2's preface. They
/// are peeked, not read: hyper reads them itself. A failed socket, no bytes
/// (closed), or bytes that are all a prefix of the preface (a request that
/// could still be h2c) say no.
async fn starts_as_http1(stream: &TcpStream) -> bool {
    let mut first = [0u8; H2_PREFACE.len()];
    match stream.peek(&mut first).await {
        Ok(n) => first[..n] != H2_PREFACE[..n],
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A connected pair: what the client side wrote is peeked on the server side.
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    /// The first bytes decide, and stay in the socket for hyper to read.
    #[tokio::test]
    async fn the_first_bytes_decide_and_stay_to_be_read() {
        let cases: [(&[u8], bool); 5] = [
            (
                b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n\r\n",
                true,
            ),
            (b"GET / HTTP/1.1\r\n\r\n", true),
            (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04", false),
            // still a prefix of the preface: undecided, so the auto builder decides
            (b"PRI * HTTP/2", false),
            // not a method at all: not h2 either, so hyper's HTTP/1 answers it
            (b"\x16\x03\x01\x02\x00", true),
        ];
        for (sent, http1) in cases {
            let (mut client, server) = pair().await;
            client.write_all(sent).await.unwrap();
            // wait until all of it has arrived, so the peek sees the whole case
            let mut seen = vec![0u8; sent.len()];
            while server.peek(&mut seen).await.unwrap() < sent.len() {
                tokio::task::yield_now().await;
            }
            assert_eq!(starts_as_http1(&server).await, http1, "{sent:?}");
            let mut server = server;
            let mut read = vec![0u8; sent.len()];
            server.read_exact(&mut read).await.unwrap();
            assert_eq!(read, sent, "the peeked bytes are still there to read");
        }
    }

    /// A client that connects and closes without a byte is not HTTP/1.
    #[tokio::test]
    async fn a_connection_closed_at_once_says_no() {
        let (client, server) = pair().await;
        drop(client);
        assert!(!starts_as_http1(&server).await);
    }
}
