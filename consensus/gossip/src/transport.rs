//! chitchat over UDP, every datagram sealed with the cluster's gossip key.
//!
//! Wire format: a 24-byte random nonce (XChaCha20: random nonces of that
//! size do not collide), then the XChaCha20-Poly1305 ciphertext (with its
//! 16-byte tag) of the sending time (milliseconds since the Unix epoch, 8
//! bytes) and chitchat's serialized envelope; the associated data names the
//! format, so a datagram of another protocol sealed with the same key does
//! not open here. A datagram sent more than [`REPLAY_WINDOW`] from this
//! node's clock, or whose nonce was already seen within it, is dropped and
//! counted: a captured datagram cannot be replayed (say, a `Syn` with a
//! spoofed source, to make a node send its state to a victim).
//!
//! chitchat sizes a message to fill a whole UDP datagram (65,507 bytes) and
//! its budget is a constant of the crate, so the seal's 48 bytes cannot be
//! taken off it. A message too large to seal in one datagram is sent in
//! parts instead: each part sealed on its own (its own nonce and time, so
//! each is checked for replay), under other associated data
//! (`keel-gossip/2-part`, which a node that predates parts drops and
//! counts), carrying a random message id, its index and the count. The
//! receiver keeps at most [`PARTS_KEPT`] incomplete messages for
//! [`PARTS_WAIT`], per sender address, and decodes a message once all its
//! parts are in.
//!
//! chitchat 0.13 lets a transport be replaced but keeps its wire encoding
//! private, so this one uses chitchat's own UDP socket as the codec: it is
//! bound on loopback, and every envelope goes through it to a private
//! loopback socket of ours (encoding) or from ours to it (decoding). Both
//! sides check the other's address, so nothing else on the host can slip a
//! message in between. Each encode and each decode uses a loopback socket
//! of its own: chitchat cancels `recv` on its tick, and a decode cancelled
//! half-way leaves its answer in the codec's queue, addressed from a socket
//! no later decode uses, so it is skipped instead of being taken for the
//! next datagram's (which would credit every later message to the wrong
//! sender). A datagram the codec cannot read is dropped and counted; it
//! never ends the transport.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::Context;
use async_trait::async_trait;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use chitchat::transport::{RecvOutcome, SendOutcome, Socket, Transport, UdpSocket};
use chitchat::ChitchatEnvelope;

const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
const TIME_LEN: usize = 8;
const AAD: &[u8] = b"keel-gossip/2";
/// The associated data of one part of a message sent in parts.
const PART_AAD: &[u8] = b"keel-gossip/2-part";
/// A part's header inside the seal: message id, index, count.
const PART_HEADER: usize = 8 + 1 + 1;
/// The most parts a message is sent in (two suffice for chitchat's largest).
const MAX_PARTS: usize = 4;
/// Incomplete messages kept at most, and for how long.
pub const PARTS_KEPT: usize = 64;
pub const PARTS_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
/// How far a datagram's sending time may be from this node's clock.
pub const REPLAY_WINDOW: std::time::Duration = std::time::Duration::from_secs(120);
/// Nonces remembered at most (a few thousand datagrams a minute is a busy
/// cluster); past it, the oldest are forgotten early.
const NONCES_KEPT: usize = 100_000;
/// The largest UDP payload over IPv4.
const MAX_DATAGRAM: usize = 65_507;
/// Where the codec loop runs.
const LOOPBACK: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);

/// The keys a transport's sockets use, shared and replaceable while they
/// run: the first seals, every one opens (a key being replaced is still
/// accepted until every node seals with the new one).
#[derive(Clone)]
pub struct Keys(Arc<std::sync::RwLock<Vec<XChaCha20Poly1305>>>);

impl Keys {
    /// Seal with `seal`; open with it and with `also_open`.
    pub fn new(seal: &[u8; 32], also_open: &[[u8; 32]]) -> Self {
        let keys = Keys(Arc::default());
        keys.set(seal, also_open);
        keys
    }

    /// Replaces the keys.
    pub fn set(&self, seal: &[u8; 32], also_open: &[[u8; 32]]) {
        let ciphers = std::iter::once(seal)
            .chain(also_open.iter().filter(|k| *k != seal))
            .map(|k| XChaCha20Poly1305::new(Key::from_slice(k)))
            .collect();
        *self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = ciphers;
    }

    fn all(&self) -> Vec<XChaCha20Poly1305> {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// Opens [`SealedSocket`]s under one set of [`Keys`].
pub struct SealedTransport {
    keys: Keys,
    rejected: Arc<AtomicU64>,
}

impl SealedTransport {
    pub fn new(keys: Keys) -> Self {
        SealedTransport {
            keys,
            rejected: Arc::default(),
        }
    }

    /// Counts datagrams dropped because they did not open.
    pub fn rejected(&self) -> Arc<AtomicU64> {
        self.rejected.clone()
    }
}

#[async_trait]
impl Transport for SealedTransport {
    async fn open(&self, listen: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let socket = tokio::net::UdpSocket::bind(listen)
            .await
            .with_context(|| format!("cannot bind {listen}/udp"))?;
        let codec = UdpSocket::open(LOOPBACK).await?;
        let codec_addr = codec.local_addr()?;
        Ok(Box::new(SealedSocket {
            socket,
            codec,
            codec_addr,
            keys: self.keys.clone(),
            rejected: self.rejected.clone(),
            seen: Seen::default(),
            parts: Parts::default(),
            buf: vec![0; MAX_DATAGRAM],
        }))
    }
}

/// What a datagram held once opened.
#[derive(Debug, PartialEq)]
enum Opened {
    /// A whole message.
    Whole(Vec<u8>),
    /// One part of a message sent in parts.
    Part {
        id: u64,
        index: usize,
        count: usize,
        bytes: Vec<u8>,
    },
}

/// One message's parts so far, and when the first came.
type Pieces = (std::time::Instant, Vec<Option<Vec<u8>>>);

/// Messages sent in parts, waiting for the rest: per sender and message id.
#[derive(Default)]
struct Parts {
    waiting: std::collections::HashMap<(SocketAddr, u64), Pieces>,
}

impl Parts {
    /// Adds a part; the whole message once every part is in.
    fn add(
        &mut self,
        from: SocketAddr,
        id: u64,
        index: usize,
        count: usize,
        bytes: Vec<u8>,
    ) -> Option<Vec<u8>> {
        let now = std::time::Instant::now();
        self.waiting
            .retain(|_, (since, _)| now.duration_since(*since) < PARTS_WAIT);
        if !self.waiting.contains_key(&(from, id)) && self.waiting.len() >= PARTS_KEPT {
            return None;
        }
        let (_, parts) = self
            .waiting
            .entry((from, id))
            .or_insert_with(|| (now, vec![None; count]));
        if parts.len() != count || index >= count {
            return None;
        }
        parts[index] = Some(bytes);
        if parts.iter().any(Option::is_none) {
            return None;
        }
        let (_, parts) = self.waiting.remove(&(from, id))?;
        Some(parts.into_iter().flatten().flatten().collect())
    }
}

/// One sealed UDP socket.
pub struct SealedSocket {
    socket: tokio::net::UdpSocket,
    /// chitchat's socket, used only to encode and decode envelopes.
    codec: UdpSocket,
    codec_addr: SocketAddr,
    keys: Keys,
    rejected: Arc<AtomicU64>,
    seen: Seen,
    parts: Parts,
    buf: Vec<u8>,
}

/// The nonces of datagrams accepted within the replay window, with when
/// each may be forgotten (its sending time plus the window).
#[derive(Default)]
struct Seen {
    nonces: std::collections::HashMap<[u8; NONCE_LEN], u64>,
    order: std::collections::VecDeque<([u8; NONCE_LEN], u64)>,
}

impl Seen {
    /// Records `nonce`; false if it was seen before.
    fn first(&mut self, nonce: [u8; NONCE_LEN], forget_at: u64, now: u64) -> bool {
        while let Some((old, at)) = self.order.front().copied() {
            if at > now && self.order.len() < NONCES_KEPT {
                break;
            }
            self.order.pop_front();
            self.nonces.remove(&old);
        }
        if self.nonces.insert(nonce, forget_at).is_some() {
            return false;
        }
        self.order.push_back((nonce, forget_at));
        true
    }
}

/// Milliseconds since the Unix epoch.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl SealedSocket {
    /// chitchat's wire bytes for `envelope`.
    async fn encode(&mut self, envelope: ChitchatEnvelope) -> anyhow::Result<Vec<u8>> {
        let tap = tokio::net::UdpSocket::bind(LOOPBACK).await?;
        self.codec.send(tap.local_addr()?, envelope).await?;
        loop {
            let (len, from) = tap.recv_from(&mut self.buf).await?;
            if from == self.codec_addr {
                return Ok(self.buf[..len].to_vec());
            }
        }
    }

    /// The envelope in chitchat's wire bytes, or `None` if they are not one.
    async fn decode(&mut self, bytes: &[u8]) -> anyhow::Result<Option<ChitchatEnvelope>> {
        let tap = tokio::net::UdpSocket::bind(LOOPBACK).await?;
        let tap_addr = tap.local_addr()?;
        tap.send_to(bytes, self.codec_addr).await?;
        // chitchat's socket skips (and logs) bytes it cannot decode; a short
        // wait tells that apart from an answer.
        let wait = std::time::Duration::from_millis(100);
        loop {
            match tokio::time::timeout(wait, self.codec.recv()).await {
                Ok(Ok(r)) if r.from_addr == tap_addr => return Ok(Some(r.envelope)),
                // An answer to a decode that was cancelled: not this one.
                Ok(Ok(_)) => continue,
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(None),
            }
        }
    }

    fn seal(&self, plain: &[u8], sent_ms: u64) -> anyhow::Result<Vec<u8>> {
        self.seal_with(AAD, plain, sent_ms)
    }

    /// The datagrams that carry `plain`: one, or (too large for one) parts.
    fn seal_all(&self, plain: &[u8], sent_ms: u64) -> anyhow::Result<Vec<Vec<u8>>> {
        let overhead = NONCE_LEN + TIME_LEN + TAG_LEN;
        if plain.len() + overhead <= MAX_DATAGRAM {
            return Ok(vec![self.seal(plain, sent_ms)?]);
        }
        let room = MAX_DATAGRAM - overhead - PART_HEADER;
        let count = plain.len().div_ceil(room);
        anyhow::ensure!(
            count <= MAX_PARTS,
            "a gossip message of {} bytes",
            plain.len()
        );
        let mut id = [0u8; 8];
        getrandom::fill(&mut id).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
        plain
            .chunks(plain.len().div_ceil(count))
            .enumerate()
            .map(|(index, chunk)| {
                let mut part = Vec::with_capacity(PART_HEADER + chunk.len());
                part.extend_from_slice(&id);
                part.push(index as u8);
                part.push(count as u8);
                part.extend_from_slice(chunk);
                self.seal_with(PART_AAD, &part, sent_ms)
            })
            .collect()
    }

    fn seal_with(&self, aad: &[u8], plain: &[u8], sent_ms: u64) -> anyhow::Result<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
        let mut msg = Vec::with_capacity(TIME_LEN + plain.len());
        msg.extend_from_slice(&sent_ms.to_be_bytes());
        msg.extend_from_slice(plain);
        let keys = self.keys.all();
        let sealer = keys
            .first()
            .ok_or_else(|| anyhow::anyhow!("no gossip key"))?;
        let sealed = sealer
            .encrypt(XNonce::from_slice(&nonce), Payload { msg: &msg, aad })
            .map_err(|_| anyhow::anyhow!("sealing failed"))?;
        let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// The envelope bytes (or a part of them) in `datagram`, if it opens
    /// with the key and is neither stale nor a replay; why not otherwise.
    fn open(&mut self, datagram: &[u8], now: u64) -> Result<Opened, &'static str> {
        if datagram.len() < NONCE_LEN + TAG_LEN + TIME_LEN {
            return Err("too short");
        }
        let (nonce, sealed) = datagram.split_at(NONCE_LEN);
        let keys = self.keys.all();
        let decrypt = |aad| {
            keys.iter().find_map(|key| {
                key.decrypt(XNonce::from_slice(nonce), Payload { msg: sealed, aad })
                    .ok()
            })
        };
        let (msg, part) = match decrypt(AAD) {
            Some(msg) => (msg, false),
            None => (
                decrypt(PART_AAD).ok_or("does not open with the cluster key")?,
                true,
            ),
        };
        let (time, plain) = msg.split_at(TIME_LEN);
        let mut sent = [0u8; TIME_LEN];
        sent.copy_from_slice(time);
        let sent = u64::from_be_bytes(sent);
        let window = REPLAY_WINDOW.as_millis() as u64;
        if sent.abs_diff(now) > window {
            return Err("sent too long ago or ahead (clocks more than the replay window apart?)");
        }
        let mut key = [0u8; NONCE_LEN];
        key.copy_from_slice(nonce);
        if !self.seen.first(key, sent.saturating_add(window), now) {
            return Err("a replay");
        }
        if !part {
            return Ok(Opened::Whole(plain.to_vec()));
        }
        if plain.len() < PART_HEADER {
            return Err("a part too short");
        }
        let (header, bytes) = plain.split_at(PART_HEADER);
        let mut id = [0u8; 8];
        id.copy_from_slice(&header[..8]);
        let (index, count) = (usize::from(header[8]), usize::from(header[9]));
        if !(2..=MAX_PARTS).contains(&count) || index >= count {
            return Err("a part numbered out of range");
        }
        Ok(Opened::Part {
            id: u64::from_be_bytes(id),
            index,
            count,
            bytes: bytes.to_vec(),
        })
    }
}

#[async_trait]
impl Socket for SealedSocket {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.socket.local_addr()?)
    }

    async fn send(
        &mut self,
        to: SocketAddr,
        envelope: ChitchatEnvelope,
    ) -> anyhow::Result<SendOutcome> {
        let plain = self.encode(envelope).await?;
        let datagrams = match self.seal_all(&plain, now_ms()) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "gossip message too large to send; dropped");
                return Ok(SendOutcome { num_bytes_sent: 0 });
            }
        };
        let mut sent = 0;
        for datagram in datagrams {
            match self.socket.send_to(&datagram, to).await {
                Ok(n) => sent += n,
                // A peer that is down or unreachable is chitchat's business
                // (its failure detector), not a broken transport.
                Err(e) => {
                    tracing::debug!(peer = %to, error = %e, "gossip send failed");
                    return Ok(SendOutcome { num_bytes_sent: 0 });
                }
            }
        }
        Ok(SendOutcome {
            num_bytes_sent: sent,
        })
    }

    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        loop {
            let (len, from) = match self.socket.recv_from(&mut self.buf).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!(error = %e, "gossip receive failed");
                    continue;
                }
            };
            let datagram = self.buf[..len].to_vec();
            let plain = match self.open(&datagram, now_ms()) {
                Ok(Opened::Whole(plain)) => plain,
                Ok(Opened::Part {
                    id,
                    index,
                    count,
                    bytes,
                }) => match self.parts.add(from, id, index, count, bytes) {
                    Some(plain) => plain,
                    None => continue,
                },
                Err(why) => {
                    self.rejected.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(peer = %from, bytes = len, why, "dropped a gossip datagram");
                    continue;
                }
            };
            match self.decode(&plain).await {
                Ok(Some(envelope)) => {
                    return Ok(RecvOutcome {
                        from_addr: from,
                        envelope,
                        num_bytes_received: len,
                    })
                }
                Ok(None) => {
                    self.rejected.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(peer = %from, "sealed gossip datagram is not a chitchat message");
                }
                Err(e) => {
                    self.rejected.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(peer = %from, error = %e, "could not decode a gossip datagram; dropped");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use chitchat::{ChitchatMessage, ProtocolVersion};
    use std::future::Future;
    use std::time::Duration;

    fn syn(from: &str) -> ChitchatEnvelope {
        ChitchatEnvelope {
            version: ProtocolVersion::V0,
            message: ChitchatMessage::Syn {
                cluster_id: from.into(),
                digest: Default::default(),
            },
        }
    }

    /// A datagram captured on the wire and sent again is dropped and
    /// counted, as is one sealed outside the replay window.
    #[tokio::test]
    async fn replayed_and_stale_datagrams_are_dropped_and_counted() {
        let transport = SealedTransport::new(Keys::new(&[7; 32], &[]));
        let rejected = transport.rejected();
        let mut a = transport.open(LOOPBACK).await.unwrap();
        let a_addr = a.local_addr().unwrap();
        let mut b = transport.open(LOOPBACK).await.unwrap();
        // Capture what b sends.
        let wire = tokio::net::UdpSocket::bind(LOOPBACK).await.unwrap();
        b.send(wire.local_addr().unwrap(), syn("b")).await.unwrap();
        let mut captured = vec![0u8; MAX_DATAGRAM];
        let (len, _) = wire.recv_from(&mut captured).await.unwrap();
        captured.truncate(len);
        // Delivered once: accepted. Again: dropped.
        let attacker = tokio::net::UdpSocket::bind(LOOPBACK).await.unwrap();
        attacker.send_to(&captured, a_addr).await.unwrap();
        let first = tokio::time::timeout(Duration::from_secs(2), a.recv()).await;
        assert!(matches!(first, Ok(Ok(_))), "the first copy is a message");
        attacker.send_to(&captured, a_addr).await.unwrap();
        let again = tokio::time::timeout(Duration::from_millis(300), a.recv()).await;
        assert!(again.is_err(), "a replay came out as a message");
        assert_eq!(rejected.load(Ordering::Relaxed), 1);

        // Sealed with the key but far outside the window: dropped too.
        let mut lone = SealedSocket {
            socket: tokio::net::UdpSocket::bind(LOOPBACK).await.unwrap(),
            codec: UdpSocket::open(LOOPBACK).await.unwrap(),
            codec_addr: LOOPBACK,
            keys: Keys::new(&[7; 32], &[]),
            rejected: Arc::default(),
            seen: Seen::default(),
            parts: Parts::default(),
            buf: vec![0; MAX_DATAGRAM],
        };
        lone.codec_addr = lone.codec.local_addr().unwrap();
        let plain = lone.encode(syn("b")).await.unwrap();
        let stale = lone.seal(&plain, now_ms() - 10 * 60 * 1000).unwrap();
        attacker.send_to(&stale, a_addr).await.unwrap();
        let late = tokio::time::timeout(Duration::from_millis(300), a.recv()).await;
        assert!(late.is_err(), "a stale datagram came out as a message");
        assert_eq!(rejected.load(Ordering::Relaxed), 2);
        // The same bytes within the window open (the seal is right).
        let fresh = lone.seal(&plain, now_ms()).unwrap();
        attacker.send_to(&fresh, a_addr).await.unwrap();
        let ok = tokio::time::timeout(Duration::from_secs(2), a.recv()).await;
        assert!(matches!(ok, Ok(Ok(_))));
    }

    /// chitchat cancels `recv` on its tick, at any await: here, half-way
    /// through decoding b's message. The next message, c's, comes out as
    /// c's (before the fix it came out as b's, credited to c, and every
    /// later one a message behind).
    #[tokio::test]
    async fn a_cancelled_decode_never_credits_a_message_to_another_sender() {
        let transport = SealedTransport::new(Keys::new(&[7; 32], &[]));
        let mut a = transport.open(LOOPBACK).await.unwrap();
        let a_addr = a.local_addr().unwrap();
        let mut b = transport.open(LOOPBACK).await.unwrap();
        let mut c = transport.open(LOOPBACK).await.unwrap();
        let c_addr = c.local_addr().unwrap();
        b.send(a_addr, syn("b")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        {
            // One poll reads b's datagram and hands it to the codec, whose
            // answer the reactor has not seen yet: then chitchat's tick wins.
            let mut recv = std::pin::pin!(a.recv());
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            assert!(
                recv.as_mut().poll(&mut cx).is_pending(),
                "the decode finished within one poll: nothing was cancelled"
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        c.send(a_addr, syn("c")).await.unwrap();
        for _ in 0..3 {
            let out = tokio::time::timeout(Duration::from_secs(2), a.recv())
                .await
                .unwrap()
                .unwrap();
            let ChitchatMessage::Syn { cluster_id, .. } = out.envelope.message else {
                panic!("not a message that was sent");
            };
            assert_eq!(out.from_addr, c_addr);
            assert_eq!(cluster_id, "c", "b's message credited to c");
            c.send(a_addr, syn("c")).await.unwrap();
        }
    }

    /// chitchat fills a whole datagram; sealed, such a message goes in two
    /// parts and comes out whole, credited to its sender. A lone part
    /// never comes out.
    #[tokio::test]
    async fn a_message_too_large_for_one_sealed_datagram_goes_in_parts() {
        let transport = SealedTransport::new(Keys::new(&[7; 32], &[]));
        let rejected = transport.rejected();
        let mut a = transport.open(LOOPBACK).await.unwrap();
        let a_addr = a.local_addr().unwrap();
        let mut b = transport.open(LOOPBACK).await.unwrap();
        let b_addr = b.local_addr().unwrap();
        // Encoded, a few bytes short of the largest datagram: too large
        // once sealed.
        let big = "x".repeat(65_480);
        // Capture the parts on the wire first.
        let wire = tokio::net::UdpSocket::bind(LOOPBACK).await.unwrap();
        b.send(wire.local_addr().unwrap(), syn(&big)).await.unwrap();
        let mut parts = Vec::new();
        for _ in 0..2 {
            let mut buf = vec![0u8; MAX_DATAGRAM];
            let (len, _) = tokio::time::timeout(Duration::from_secs(2), wire.recv_from(&mut buf))
                .await
                .expect("two datagrams")
                .unwrap();
            buf.truncate(len);
            parts.push(buf);
        }
        assert!(parts.iter().all(|p| p.len() < MAX_DATAGRAM));

        b.send(a_addr, syn(&big)).await.unwrap();
        let out = tokio::time::timeout(Duration::from_secs(2), a.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(out.from_addr, b_addr);
        let ChitchatMessage::Syn { cluster_id, .. } = out.envelope.message else {
            panic!("not the message sent");
        };
        assert_eq!(cluster_id, big);

        // One captured part alone (from another address): nothing; the
        // same part again: a replay, dropped and counted; the other part
        // completes the message (a captured message is delivered once, as
        // a whole datagram would be).
        let attacker = tokio::net::UdpSocket::bind(LOOPBACK).await.unwrap();
        attacker.send_to(&parts[0], a_addr).await.unwrap();
        let lone = tokio::time::timeout(Duration::from_millis(300), a.recv()).await;
        assert!(lone.is_err(), "half a message came out");
        assert_eq!(rejected.load(Ordering::Relaxed), 0);
        attacker.send_to(&parts[0], a_addr).await.unwrap();
        let replay = tokio::time::timeout(Duration::from_millis(300), a.recv()).await;
        assert!(replay.is_err(), "a replayed part came out");
        attacker.send_to(&parts[1], a_addr).await.unwrap();
        let whole = tokio::time::timeout(Duration::from_secs(2), a.recv()).await;
        assert!(matches!(whole, Ok(Ok(_))), "both parts make the message");
        assert_eq!(rejected.load(Ordering::Relaxed), 1);
    }

    /// While a key is replaced, a socket opens what was sealed with either
    /// and seals with the new one; once the old is dropped, it opens only
    /// the new.
    #[tokio::test]
    async fn a_new_key_rolls_in_without_a_gap() {
        let old_keys = Keys::new(&[1; 32], &[]);
        let new_keys = Keys::new(&[2; 32], &[]);
        let rolling = Keys::new(&[2; 32], &[[1; 32]]);
        let a_keys = rolling.clone();
        let mut a = SealedTransport::new(a_keys).open(LOOPBACK).await.unwrap();
        let a_addr = a.local_addr().unwrap();
        let mut old = SealedTransport::new(old_keys).open(LOOPBACK).await.unwrap();
        let mut new = SealedTransport::new(new_keys).open(LOOPBACK).await.unwrap();
        for (sender, name) in [(&mut old, "old"), (&mut new, "new")] {
            sender.send(a_addr, syn(name)).await.unwrap();
            let got = tokio::time::timeout(Duration::from_secs(2), a.recv()).await;
            assert!(
                matches!(got, Ok(Ok(_))),
                "{name} key refused during the roll"
            );
        }
        rolling.set(&[2; 32], &[]);
        old.send(a_addr, syn("old")).await.unwrap();
        let refused = tokio::time::timeout(Duration::from_millis(300), a.recv()).await;
        assert!(refused.is_err(), "the old key still opens after the roll");
        new.send(a_addr, syn("new")).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(2), a.recv()).await;
        assert!(matches!(got, Ok(Ok(_))));
    }
}
