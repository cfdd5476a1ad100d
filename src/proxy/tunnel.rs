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

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
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

/// Relays `client` ⇄ `server` until both directions end, or `stop` turns true
/// (then each side gets a `1001` close frame and the tunnel ends).
pub(crate) async fn relay<C, S>(
    client: C,
    server: S,
    observer: &mut dyn TunnelObserver,
    stop: &watch::Receiver<bool>,
) -> Closed
where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut client_rd, mut client_wr) = tokio::io::split(client);
    let (mut server_rd, mut server_wr) = tokio::io::split(server);
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
    let up = pump(
        &mut client_rd,
        &mut server_wr,
        Way::ToServer,
        &see,
        stop.clone(),
        (&first, &ended_tx, ended_rx.clone()),
    );
    let down = pump(
        &mut server_rd,
        &mut client_wr,
        Way::ToClient,
        &see,
        stop.clone(),
        (&first, &ended_tx, ended_rx.clone()),
    );
    tokio::join!(up, down);
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
        // made once, not per frame: each would register a waiter anew
        let halt = stopped(&mut stop);
        tokio::pin!(halt);
        let lingered = linger(&mut other_ended);
        tokio::pin!(lingered);
        loop {
            let n = tokio::select! {
                biased;
                () = &mut halt => return Ok(End::Stopped),
                n = from.read_buf(&mut buf) => n?,
                () = &mut lingered => return Ok(End::Eof),
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
    use tokio::io::AsyncReadExt;

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

    #[tokio::test]
    async fn a_side_that_hangs_up_ends_the_tunnel() {
        let (client, client_peer) = tokio::io::duplex(64);
        let (server, mut server_peer) = tokio::io::duplex(64);
        let (_stop_tx, stop) = watch::channel(false);
        let relay = tokio::spawn(async move {
            let mut seen = NoObserver;
            relay(client, server, &mut seen, &stop).await
        });
        drop(client_peer);
        let mut rest = Vec::new();
        server_peer.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
        drop(server_peer);
        assert_eq!(relay.await.unwrap(), Closed::Client);
    }
}
