//! The bytes of an upgraded connection, relayed both ways as they come.
//!
//! Each direction is its own copy loop: read what arrived, write it on at
//! once, then show a copy to the [`TunnelObserver`] — so an observer can never
//! delay a byte, and a peer slow to read holds back only its own direction.
//! Frames are never parsed for forwarding, so whatever extensions the two ends
//! negotiated pass untouched; the only WebSocket knowledge here is where a
//! frame ends ([`Frames`]), needed for one thing: at shutdown a `1001` close
//! frame may only be written between frames, never inside one.

use std::hash::{BuildHasher, Hasher};
use std::io;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use std::future::Future;
use std::task::Poll;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::call::Call;

/// Each direction's copy buffer.
const COPY_BUF: usize = 16 * 1024;

/// At shutdown, how long a frame already started may take to finish before the
/// close frame; past it that side is closed without one.
const FINISH_FRAME_DEADLINE: Duration = Duration::from_secs(1);

/// After one side has closed, how long the other may keep its direction open:
/// a WebSocket is over once either end hangs up, and a client that never closes
/// its half must not keep the tunnel's connection slot.
const HALF_CLOSE_LINGER: Duration = Duration::from_secs(10);

/// A close frame with code 1001 (going away), from the server to the client (unmasked).
pub(crate) const GOING_AWAY_TO_CLIENT: [u8; 4] = [0x88, 0x02, 0x03, 0xE9];

/// How a tunnel ended: who closed first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Closed {
    /// The client closed its side (end of stream).
    Client,
    /// The upstream closed its side.
    Server,
    /// tokentap is shutting down: both sides got a `1001` close frame.
    Shutdown,
    /// A socket failed (reset, broken pipe), or an upgrade never completed.
    Failed,
}

/// Watches a tunnel's bytes. Each call gets a copy of bytes already forwarded
/// (split anywhere, not at frame boundaries); nothing it does can delay or change
/// them. Keep the work per call small: it runs on the relay's task.
pub(crate) trait TunnelObserver: Send {
    /// Bytes the upstream sent, after they were written to the client.
    fn server_bytes(&mut self, _bytes: &[u8]) {}
    /// Bytes the client sent, after they were written to the upstream.
    fn client_bytes(&mut self, _bytes: &[u8]) {}
    /// The tunnel is over; `call` (status 101, duration so far) is recorded right after.
    fn closed(&mut self, _how: Closed, _call: &mut Call) {}
}

/// The observer of a tunnel nobody watches.
pub(crate) struct NoObserver;

impl TunnelObserver for NoObserver {}

/// Which way bytes flow.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Way {
    ToServer,
    ToClient,
}

/// Any byte stream a tunnel can relay.
pub(crate) trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

/// One side of a tunnel. Plain TCP on both sides (the common case) is relayed on
/// the sockets themselves: through hyper's `Upgraded` every read and write went
/// through five layers (a boxed trait object among them) and a lock per half.
pub(crate) enum Io {
    Tcp(TcpStream),
    Other(Box<dyn Stream>),
}

/// A side of a tunnel with the bytes already read from it before the upgrade
/// was handed over (a client's first frames, or the upstream's after its `101`):
/// they are relayed first.
pub(crate) struct Side {
    pub(crate) io: Io,
    pub(crate) read: Bytes,
}

/// Relays `client` ⇄ `server` until both directions end, or `stop` turns true
/// (then each side gets a `1001` close frame and the tunnel ends).
pub(crate) async fn relay(
    client: Side,
    server: Side,
    observer: &mut dyn TunnelObserver,
    stop: &watch::Receiver<bool>,
) -> Closed {
    match (client.io, server.io) {
        (Io::Tcp(mut c), Io::Tcp(mut s)) => {
            let (c_rd, c_wr) = c.split();
            let (s_rd, s_wr) = s.split();
            let client = (prefixed(client.read, c_rd), c_wr);
            let server = (prefixed(server.read, s_rd), s_wr);
            relay_halves(client, server, observer, stop).await
        }
        (c, s) => {
            let boxed = |io| match io {
                Io::Tcp(t) => Box::new(t) as Box<dyn Stream>,
                Io::Other(o) => o,
            };
            let (c_rd, c_wr) = tokio::io::split(boxed(c));
            let (s_rd, s_wr) = tokio::io::split(boxed(s));
            let client = (prefixed(client.read, c_rd), c_wr);
            let server = (prefixed(server.read, s_rd), s_wr);
            relay_halves(client, server, observer, stop).await
        }
    }
}

/// `rd` after the bytes read from it before the upgrade.
fn prefixed<R: AsyncRead>(read: Bytes, rd: R) -> tokio::io::Chain<std::io::Cursor<Bytes>, R> {
    AsyncReadExt::chain(std::io::Cursor::new(read), rd)
}

async fn relay_halves<R, W>(
    (mut client_rd, mut client_wr): (R, W),
    (mut server_rd, mut server_wr): (R, W),
    observer: &mut dyn TunnelObserver,
    stop: &watch::Receiver<bool>,
) -> Closed
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let observer = Mutex::new(observer);
    let first = OnceLock::new();
    let (ended_tx, ended_rx) = watch::channel(false);
    let see = |way: Way, bytes: &[u8]| {
        if let Ok(mut o) = observer.lock() {
            match way {
                Way::ToServer => o.client_bytes(bytes),
                Way::ToClient => o.server_bytes(bytes),
            }
        }
    };
    // pinned here, once: `both` takes them pinned
    let up = std::pin::pin!(pump(
        &mut client_rd,
        &mut server_wr,
        Way::ToServer,
        &see,
        stop.clone(),
        (&first, &ended_tx, ended_rx.clone()),
    ));
    let down = std::pin::pin!(pump(
        &mut server_rd,
        &mut client_wr,
        Way::ToClient,
        &see,
        stop.clone(),
        (&first, &ended_tx, ended_rx.clone()),
    ));
    super::both::both(up, down).await;
    first.get().copied().unwrap_or(Closed::Failed)
}

/// Why a copy loop stopped reading.
enum End {
    Eof,
    Stopped,
}

/// Copies `from` to `to` until the end of `from`, an error, or `stop`.
async fn pump<R, W>(
    from: &mut R,
    to: &mut W,
    way: Way,
    see: &impl Fn(Way, &[u8]),
    mut stop: watch::Receiver<bool>,
    (first, done, mut other_ended): (
        &OnceLock<Closed>,
        &watch::Sender<bool>,
        watch::Receiver<bool>,
    ),
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    // filled by `read_buf` and emptied after each write: never zeroed (zeroing
    // 16 KiB per direction was ~35k instructions per session)
    let mut buf = Vec::with_capacity(COPY_BUF);
    let mut frames = Frames::default();
    let ended: io::Result<End> = async {
        // Made once, not per frame: each would register a waiter anew. Once polled,
        // their waiters stay registered, so they are polled again only when their
        // channel has changed (an atomic load each), not on every wake-up: polling
        // both cost as much as the read itself, on each direction, each wake-up.
        let (mut stop_seen, ended_seen) = (stop.clone(), other_ended.clone());
        // the stop is looked at once at first, to register
        stop_seen.mark_changed();
        // outside tokio's budget: a look refused for budget would neither see the channel
        // nor register a waiter, and a flood of reads could then hide the stop for good
        let halt = tokio::task::coop::unconstrained(stopped(&mut stop));
        tokio::pin!(halt);
        let lingered = tokio::task::coop::unconstrained(linger(&mut other_ended));
        tokio::pin!(lingered);
        let mut registered = false;
        loop {
            // bytes ready are read first; a stop is still seen when tokio's budget of
            // reads runs out, which ends in a `Pending` (a sender gone counts as a change:
            // a stop sent just before it went must not be missed)
            let n = std::future::poll_fn(|cx| {
                let read = from.read_buf(&mut buf);
                tokio::pin!(read);
                if let Poll::Ready(r) = read.poll(cx) {
                    return Poll::Ready(r.map(Some));
                }
                // marked seen before the look, which reads the value itself: a change
                // after the mark is both seen by the look and marks the channel again
                if looks_changed(&mut stop_seen) && halt.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Ok(None));
                }
                // once the other way ended, the linger's own timer wakes this: its channel
                // stays "changed" for that (and the look costs only during the linger)
                let first = !registered;
                registered = true;
                if (first || ended_seen.has_changed().unwrap_or(true))
                    && lingered.as_mut().poll(cx).is_ready()
                {
                    return Poll::Ready(Ok(Some(0)));
                }
                Poll::Pending
            })
            .await?;
            let Some(n) = n else {
                return Ok(End::Stopped);
            };
            if n == 0 {
                return Ok(End::Eof);
            }
            let write = to.write_all(&buf[..n]);
            tokio::pin!(write);
            let halted = tokio::select! {
                biased;
                w = &mut write => w.map(|()| false)?,
                // bytes read are always written; a peer that stopped reading gets a
                // moment, then no close frame (none can follow a partial write)
                () = &mut halt => tokio::time::timeout(FINISH_FRAME_DEADLINE, write)
                    .await
                    .map_err(|_| io::Error::other("peer not reading at shutdown"))?
                    .map(|()| true)?,
            };
            frames.feed(&buf[..n]);
            see(way, &buf[..n]);
            buf.clear();
            if halted {
                return Ok(End::Stopped);
            }
        }
    }
    .await;
    match ended {
        Ok(End::Eof) => {
            let _ = first.set(match way {
                Way::ToServer => Closed::Client,
                Way::ToClient => Closed::Server,
            });
        }
        Ok(End::Stopped) => {
            let _ = first.set(Closed::Shutdown);
            let finished = tokio::time::timeout(
                FINISH_FRAME_DEADLINE,
                finish_frame(from, to, &mut frames, &mut vec![0u8; COPY_BUF], way, see),
            )
            .await
            .is_ok_and(|r| r.is_ok());
            if finished && !frames.close_seen {
                let close = match way {
                    Way::ToClient => GOING_AWAY_TO_CLIENT.to_vec(),
                    Way::ToServer => going_away_to_server(mask_key()).to_vec(),
                };
                let _ = tokio::time::timeout(FINISH_FRAME_DEADLINE, to.write_all(&close)).await;
            }
        }
        Err(e) => {
            tracing::debug!(error = %e, "tunnel direction ended with an error");
            let _ = first.set(if *stop.borrow() {
                Closed::Shutdown
            } else {
                Closed::Failed
            });
        }
    }
    let _ = tokio::time::timeout(FINISH_FRAME_DEADLINE, to.shutdown()).await;
    done.send_replace(true);
}

/// Whether `seen`'s channel changed since this last said so (a sender gone counts as a
/// change: a stop sent just before it went must not be missed).
fn looks_changed(seen: &mut watch::Receiver<bool>) -> bool {
    let changed = seen.has_changed().unwrap_or(true);
    seen.mark_unchanged();
    changed
}

/// Resolves `HALF_CLOSE_LINGER` after the other direction ended.
async fn linger(other_ended: &mut watch::Receiver<bool>) {
    if other_ended.wait_for(|e| *e).await.is_err() {
        std::future::pending::<()>().await;
    }
    tokio::time::sleep(HALF_CLOSE_LINGER).await;
}

/// Copies the rest of a frame already started, so a close frame can follow it.
async fn finish_frame<R, W>(
    from: &mut R,
    to: &mut W,
    frames: &mut Frames,
    buf: &mut [u8],
    way: Way,
    see: &impl Fn(Way, &[u8]),
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    while !frames.at_boundary() {
        let want = frames.needed().min(buf.len());
        let n = from.read(&mut buf[..want]).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        to.write_all(&buf[..n]).await?;
        frames.feed(&buf[..n]);
        see(way, &buf[..n]);
    }
    Ok(())
}

/// Resolves once `stop` turns true (never if its sender is gone while false).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    if stop.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// A close frame with code 1001 as a client sends it: masked with `key`.
pub(crate) fn going_away_to_server(key: [u8; 4]) -> [u8; 8] {
    let [k0, k1, k2, k3] = key;
    [0x88, 0x82, k0, k1, k2, k3, 0x03 ^ k0, 0xE9 ^ k1]
}

/// A masking key nobody can predict (RFC 6455 §5.3), from the process's random hash seed.
fn mask_key() -> [u8; 4] {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    let v = h.finish().to_le_bytes();
    [v[0], v[1], v[2], v[3]]
}

/// Where the frames of one direction begin and end, from their headers alone.
#[derive(Debug, Default)]
pub(crate) struct Frames {
    head: [u8; 14],
    /// Header bytes seen of the current frame.
    have: usize,
    /// Payload bytes of the current frame still to come.
    payload_left: u64,
    /// A close frame passed: nothing may follow it, not even ours.
    close_seen: bool,
}

impl Frames {
    /// Notes bytes that passed.
    pub(crate) fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.payload_left > 0 {
                let k = usize::try_from(self.payload_left)
                    .unwrap_or(usize::MAX)
                    .min(bytes.len());
                self.payload_left -= k as u64;
                bytes = &bytes[k..];
                continue;
            }
            self.head[self.have] = bytes[0];
            self.have += 1;
            bytes = &bytes[1..];
            if self.have >= 2 && self.have == self.header_len() {
                self.close_seen |= self.head[0] & 0x0f == 0x8;
                self.payload_left = self.payload_len();
                self.have = 0;
            }
        }
    }

    /// True between two frames.
    pub(crate) fn at_boundary(&self) -> bool {
        self.have == 0 && self.payload_left == 0
    }

    /// Bytes that surely belong to the current frame (at least 1 inside one).
    fn needed(&self) -> usize {
        if self.payload_left > 0 {
            usize::try_from(self.payload_left).unwrap_or(usize::MAX)
        } else if self.have < 2 {
            2 - self.have
        } else {
            self.header_len() - self.have
        }
    }

    fn header_len(&self) -> usize {
        let ext = match self.head[1] & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if self.head[1] & 0x80 != 0 { 4 } else { 0 };
        2 + ext + mask
    }

    fn payload_len(&self) -> u64 {
        match self.head[1] & 0x7f {
            126 => u64::from(u16::from_be_bytes([self.head[2], self.head[3]])),
            127 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&self.head[2..10]);
                u64::from_be_bytes(b)
            }
            n => u64::from(n),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::Pin;
    use std::task::Context;
    use tokio::io::ReadBuf;

    fn frame(masked: bool, len: usize) -> Vec<u8> {
        let mut f = vec![0x82];
        let m = if masked { 0x80 } else { 0 };
        match len {
            0..=125 => f.push(m | len as u8),
            126..=65535 => {
                f.push(m | 126);
                f.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                f.push(m | 127);
                f.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        if masked {
            f.extend_from_slice(&[1, 2, 3, 4]);
        }
        f.extend(std::iter::repeat_n(7u8, len));
        f
    }

    #[test]
    fn boundaries_are_found_however_the_bytes_are_split() {
        let mut all = Vec::new();
        for (masked, len) in [
            (false, 0),
            (true, 5),
            (false, 300),
            (true, 70_000),
            (false, 125),
        ] {
            all.extend(frame(masked, len));
        }
        for step in [1, 2, 3, 7, 1000, all.len()] {
            let mut f = Frames::default();
            let mut boundaries = 0;
            for chunk in all.chunks(step) {
                f.feed(chunk);
                if f.at_boundary() {
                    boundaries += 1;
                }
            }
            assert!(f.at_boundary(), "step {step}");
            if step == 1 {
                assert_eq!(boundaries, 5);
            }
        }
        let mut f = Frames::default();
        f.feed(&[0x88, 0x02, 0x03]);
        assert!(f.close_seen && !f.at_boundary());
        let mut f = Frames::default();
        f.feed(&[0x81]);
        assert!(!f.at_boundary());
        assert_eq!(f.needed(), 1);
        f.feed(&[0xFE]); // masked, 16-bit length follows
        assert_eq!(f.needed(), 6);
        f.feed(&[0, 10, 9, 9, 9, 9]);
        assert_eq!(f.needed(), 10);
    }

    #[test]
    fn the_close_to_the_server_unmasks_to_1001() {
        let key = [0x12, 0x34, 0x56, 0x78];
        let f = going_away_to_server(key);
        assert_eq!(&f[..2], &[0x88, 0x82]);
        assert_eq!([f[6] ^ key[0], f[7] ^ key[1]], [0x03, 0xE9]);
        assert_eq!(
            u16::from_be_bytes([GOING_AWAY_TO_CLIENT[2], GOING_AWAY_TO_CLIENT[3]]),
            1001
        );
    }

    /// The tunnel's future holds each direction's pump once (an async fn keeps its
    /// arguments for its whole life: pumps passed by value and pinned inside were
    /// held twice, and tokio copies a task's future whole at spawn and at its end).
    #[test]
    fn a_tunnel_holds_each_pump_once() {
        let (_tx, stop) = watch::channel(false);
        let (mut rd, mut wr) = tokio::io::split(tokio::io::duplex(64).0);
        let (first, (ended_tx, ended_rx)) = (OnceLock::new(), watch::channel(false));
        let see = |_: Way, _: &[u8]| {};
        let ends = (&first, &ended_tx, ended_rx);
        let pump = pump(&mut rd, &mut wr, Way::ToClient, &see, stop.clone(), ends);
        let pump = std::mem::size_of_val(&pump);
        let (c, s) = (tokio::io::duplex(64), tokio::io::duplex(64));
        let mut nobody = NoObserver;
        let relay = relay(other(c.0), other(s.0), &mut nobody, &stop);
        let relay = std::mem::size_of_val(&relay);
        assert!(relay < 4 * pump, "relay {relay} bytes, a pump {pump}");
    }

    fn other(io: impl Stream + 'static) -> Side {
        Side {
            io: Io::Other(Box::new(io)),
            read: Bytes::new(),
        }
    }

    /// Bytes read before the hand-over go first, and are seen, on sockets or not.
    #[tokio::test]
    async fn bytes_read_before_the_upgrade_are_relayed_first() {
        #[derive(Default)]
        struct Seen(Vec<u8>, Vec<u8>);
        impl TunnelObserver for Seen {
            fn server_bytes(&mut self, b: &[u8]) {
                self.0.extend_from_slice(b);
            }
            fn client_bytes(&mut self, b: &[u8]) {
                self.1.extend_from_slice(b);
            }
        }
        async fn pair() -> (TcpStream, TcpStream) {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let a = TcpStream::connect(l.local_addr().unwrap());
            let (a, b) = tokio::join!(a, l.accept());
            (a.unwrap(), b.unwrap().0)
        }
        for tcp in [true, false] {
            let (client, mut client_peer) = pair().await;
            let (server, mut server_peer) = pair().await;
            let io = |s: TcpStream| {
                if tcp {
                    Io::Tcp(s)
                } else {
                    Io::Other(Box::new(s))
                }
            };
            let client = Side {
                io: io(client),
                read: Bytes::from_static(b"early from client|"),
            };
            let server = Side {
                io: io(server),
                read: Bytes::from_static(b"early from server|"),
            };
            let (_stop_tx, stop) = watch::channel(false);
            let relay = tokio::spawn(async move {
                let mut seen = Seen::default();
                let how = relay(client, server, &mut seen, &stop).await;
                (how, seen)
            });
            client_peer.write_all(b"later").await.unwrap();
            server_peer.write_all(b"later").await.unwrap();
            let mut got = [0u8; 23];
            server_peer.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"early from client|later", "tcp {tcp}");
            client_peer.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"early from server|later", "tcp {tcp}");
            drop(client_peer);
            drop(server_peer);
            let (how, seen) = relay.await.unwrap();
            assert!(matches!(how, Closed::Client | Closed::Server), "tcp {tcp}");
            assert_eq!(seen.0, b"early from server|later");
            assert_eq!(seen.1, b"early from client|later");
        }
    }

    /// The stop and the linger are looked at only when their channels change: both
    /// must still end a tunnel whose sides stay open and quiet.
    #[tokio::test(start_paused = true)]
    async fn a_quiet_tunnel_ends_on_stop_and_after_a_half_close_linger() {
        // a stop while nothing flows: both sides get a 1001
        let (client, mut client_peer) = tokio::io::duplex(64);
        let (server, mut server_peer) = tokio::io::duplex(64);
        let (stop_tx, stop) = watch::channel(false);
        let relay_task = tokio::spawn(async move {
            relay(other(client), other(server), &mut NoObserver, &stop).await
        });
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(!relay_task.is_finished(), "a quiet tunnel stays open");
        stop_tx.send_replace(true);
        let ended = tokio::time::timeout(Duration::from_secs(5), relay_task).await;
        assert_eq!(ended.expect("the stop is seen").unwrap(), Closed::Shutdown);
        let mut to_client = Vec::new();
        client_peer.read_to_end(&mut to_client).await.unwrap();
        assert_eq!(to_client, GOING_AWAY_TO_CLIENT);
        let mut to_server = Vec::new();
        server_peer.read_to_end(&mut to_server).await.unwrap();
        assert_eq!(to_server.len(), 8);

        // the client hangs up, the upstream never does: the tunnel ends after the linger
        let (client, client_peer) = tokio::io::duplex(64);
        let (server, _server_peer) = tokio::io::duplex(64);
        let (_stop_tx, stop) = watch::channel(false);
        let started = tokio::time::Instant::now();
        let relay_task = tokio::spawn(async move {
            relay(other(client), other(server), &mut NoObserver, &stop).await
        });
        drop(client_peer);
        let ended = tokio::time::timeout(HALF_CLOSE_LINGER * 2, relay_task).await;
        assert_eq!(ended.expect("the linger ends it").unwrap(), Closed::Client);
        assert!(started.elapsed() >= HALF_CLOSE_LINGER);
    }

    /// Always has bytes (empty frames) and spends tokio's budget as a socket does;
    /// `left` reads, then quiet for ever.
    struct Flood {
        left: Option<usize>,
    }

    impl AsyncRead for Flood {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let coop = std::task::ready!(tokio::task::coop::poll_proceed(cx));
            match &mut self.left {
                Some(0) => return Poll::Pending,
                Some(k) => *k -= 1,
                None => {}
            }
            let n = buf.remaining().min(4096) & !1;
            buf.put_slice(&vec![0u8; n]);
            coop.made_progress();
            Poll::Ready(Ok(()))
        }
    }

    /// How a flooded tunnel ends when stopped, if it ends within five seconds.
    async fn stop_a_flood(left: Option<usize>) -> Option<Closed> {
        let client = tokio::io::join(Flood { left }, tokio::io::sink());
        let (server, _server_peer) = tokio::io::duplex(64);
        let server = tokio::io::join(server, tokio::io::sink());
        let (stop_tx, stop) = watch::channel(false);
        let relay_task = tokio::spawn(async move {
            relay(other(client), other(server), &mut NoObserver, &stop).await
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        stop_tx.send_replace(true);
        let r = tokio::time::timeout(Duration::from_secs(5), relay_task).await;
        r.ok().map(|j| j.unwrap())
    }

    /// Found in review: the stop, looked at only when a read is `Pending`, was refused by
    /// the same exhausted budget that made the read `Pending`, or never registered.
    #[tokio::test]
    async fn a_stop_is_seen_while_bytes_keep_coming_and_after_a_burst() {
        assert_eq!(stop_a_flood(None).await, Some(Closed::Shutdown));
        assert_eq!(stop_a_flood(Some(300)).await, Some(Closed::Shutdown));
    }

    /// Found in review: a client sending without pause must not hold back the way down (the
    /// side polled first spent the task's whole budget, every time).
    #[tokio::test]
    async fn a_flood_up_does_not_starve_the_way_down() {
        let (client_w, mut client_peer) = tokio::io::duplex(1024);
        let client = tokio::io::join(Flood { left: None }, client_w);
        let (server_r, mut server_peer) = tokio::io::duplex(64);
        let server = tokio::io::join(server_r, tokio::io::sink());
        let (_stop_tx, stop) = watch::channel(false);
        let _relay = tokio::spawn(async move {
            relay(other(client), other(server), &mut NoObserver, &stop).await
        });
        server_peer.write_all(b"hello").await.unwrap();
        let mut got = [0u8; 5];
        let r = tokio::time::timeout(Duration::from_secs(3), client_peer.read_exact(&mut got));
        assert!(r.await.is_ok(), "the way down starved by a flood up");
        assert_eq!(&got, b"hello");
    }

    /// Found in review: a closed channel's `has_changed` is an error, which hid the change.
    #[tokio::test]
    async fn a_stop_sent_just_before_its_sender_went_still_stops() {
        let (client, _client_peer) = tokio::io::duplex(64);
        let (server, _server_peer) = tokio::io::duplex(64);
        let (stop_tx, stop) = watch::channel(false);
        let relay_task = tokio::spawn(async move {
            relay(other(client), other(server), &mut NoObserver, &stop).await
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        stop_tx.send_replace(true);
        drop(stop_tx);
        let r = tokio::time::timeout(Duration::from_secs(5), relay_task).await;
        assert_eq!(r.ok().map(|j| j.unwrap()), Some(Closed::Shutdown));
    }

    #[tokio::test]
    async fn a_side_that_hangs_up_ends_the_tunnel() {
        let (client, client_peer) = tokio::io::duplex(64);
        let (server, mut server_peer) = tokio::io::duplex(64);
        let (_stop_tx, stop) = watch::channel(false);
        let relay = tokio::spawn(async move {
            let mut seen = NoObserver;
            relay(other(client), other(server), &mut seen, &stop).await
        });
        drop(client_peer);
        let mut rest = Vec::new();
        server_peer.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
        drop(server_peer);
        assert_eq!(relay.await.unwrap(), Closed::Client);
    }
}
