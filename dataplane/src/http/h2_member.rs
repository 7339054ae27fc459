//! HTTP/2 connections to members: the one way to open them (for traffic
//! and for health checks), each read through [`Checked`], which refuses a
//! response carrying a request pseudo-header, or a pseudo-header in its
//! trailer section.
//!
//! RFC 9113 §8.3 and §8.1 make such a response malformed: a stream error,
//! never forwarded. h2 0.4 decodes `:path`, `:method`, `:scheme`,
//! `:authority` and `:protocol` in a response and drops them
//! (`h2::client::Peer::convert_poll_message` reads `:status` only), and
//! drops every pseudo-header of a trailer section
//! (`h2::proto::streams::Recv::recv_trailers`), so Keel would never see
//! them. [`Checked`] reads each of the member's header blocks first
//! ([`super::hpack`], kept in step with h2's decoder; a block on a stream
//! whose final head came and whose end has not is a trailer section) and,
//! for one to refuse, adds a `connection` field
//! to it in a CONTINUATION frame of its own: a connection-specific field
//! makes h2 reset that stream with `PROTOCOL_ERROR`
//! (`h2::frame::headers::HeaderBlock::load`, `malformed`), and Keel
//! answers 502. A literal without indexing leaves the table as it was, so
//! the connection's other streams decode as before. The test
//! `a_response_with_a_request_pseudo_header_is_refused` breaks if h2
//! stops resetting the stream for it.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use http_body::Body;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::oneshot;

use super::hpack::{Hpack, Status};
use crate::tcp::Upstream;

/// An HTTP/2 connection to a member, as requests share it: hyper's
/// sender, and the streams requests hold on it.
pub(crate) struct Conn<B> {
    pub(crate) sender: http2::SendRequest<B>,
    pub(crate) streams: Arc<Streams>,
}

impl<B> Clone for Conn<B> {
    fn clone(&self) -> Self {
        Conn {
            sender: self.sender.clone(),
            streams: self.streams.clone(),
        }
    }
}

/// An HTTP/2 connection to `member` over `io` (prior knowledge or ALPN
/// already done), its driver spawned, once the member's first SETTINGS
/// (its preface, RFC 9113 §3.4) are in, within `within`: from then on
/// [`Streams`] knows how many streams it allows.
pub(crate) async fn handshake<B>(
    io: Upstream,
    member: SocketAddr,
    within: Duration,
) -> io::Result<Conn<B>>
where
    B: Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let streams = Arc::new(Streams::default());
    let (settled, settings) = oneshot::channel();
    let checked = Checked::new(io, member).counting(streams.clone(), settled);
    let (sender, connection) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .handshake(TokioIo::new(checked))
        .await
        .map_err(io::Error::other)?;
    tokio::spawn(connection);
    match tokio::time::timeout(within, settings).await {
        Ok(Ok(())) => Ok(Conn { sender, streams }),
        Ok(Err(_)) => Err(io::Error::other(
            "the member closed the connection before its SETTINGS",
        )),
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no SETTINGS from the member within {within:?}"),
        )),
    }
}

/// The streams requests hold on one member connection, and how many the
/// member allows at once (its `SETTINGS_MAX_CONCURRENT_STREAMS`, read by
/// [`Checked`]). A request past the limit goes on another connection
/// rather than wait in h2 for a free stream (where a member that goes
/// away would leave it unanswered, and a POST unanswerable).
#[derive(Debug)]
pub(crate) struct Streams {
    open: AtomicU32,
    most: AtomicU32,
}

impl Default for Streams {
    fn default() -> Self {
        // No limit until the member names one (RFC 9113 §6.5.2).
        Streams {
            open: AtomicU32::new(0),
            most: AtomicU32::new(u32::MAX),
        }
    }
}

impl Streams {
    /// A stream for one more request, if the member allows one more.
    pub(crate) fn take(self: &Arc<Self>) -> Option<Stream> {
        (self.open.load(Relaxed) < self.most.load(Relaxed)).then(|| self.claim())
    }

    /// A stream for a request on a connection made for it, whatever the
    /// limit.
    pub(crate) fn claim(self: &Arc<Self>) -> Stream {
        self.open.fetch_add(1, Relaxed);
        Stream(self.clone())
    }

    /// No request holds a stream.
    pub(crate) fn idle(&self) -> bool {
        self.open.load(Relaxed) == 0
    }

    /// The member allows no stream at all (`SETTINGS_MAX_CONCURRENT_STREAMS`
    /// 0): a request sent on the connection would wait in h2 until the
    /// member allows one, if ever.
    pub(crate) fn closed(&self) -> bool {
        self.most.load(Relaxed) == 0
    }
}

/// One request's stream on a member connection, counted until it drops
/// (with the response body, or the request's failure).
#[derive(Debug)]
pub(crate) struct Stream(Arc<Streams>);

impl Drop for Stream {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Relaxed);
    }
}

/// Whether the member said it did not act on the request (RFC 9113 §8.7):
/// a stream past the last it took when it went away, whatever the
/// GOAWAY's error code (h2 gives the GOAWAY's error, from the remote, to
/// those streams and to requests on the connection after it, and to no
/// other: `h2::proto::streams::Streams::recv_go_away`), or a stream it
/// refused (`REFUSED_STREAM`); or a request hyper had not yet handed to
/// h2 when the connection closed. Any method may go again. Streams it
/// took and did not finish end otherwise (a broken pipe when the
/// connection closes: `Streams::recv_eof`).
pub(crate) fn unprocessed(e: &hyper::Error) -> bool {
    if e.is_canceled() {
        // Never handed to h2: the connection closed first.
        return true;
    }
    let Some(e) = std::error::Error::source(e).and_then(|s| s.downcast_ref::<h2::Error>()) else {
        return false;
    };
    e.is_remote()
        && (e.is_go_away() || (e.is_reset() && e.reason() == Some(h2::Reason::REFUSED_STREAM)))
}

/// Whether the connection's driver ended holding the request unanswered:
/// hyper's "dispatch task is gone", for a request waiting for a free
/// stream (the member's `SETTINGS_MAX_CONCURRENT_STREAMS`) when the member
/// went away (`hyper::proto::h2::client::ClientTask` drops it). h2 had
/// given it a stream, and may have sent it, so only a request that may go
/// twice goes again.
pub(crate) fn dropped_unanswered(e: &hyper::Error) -> bool {
    // hyper names this error only in its text.
    e.is_user() && e.to_string().starts_with("dispatch task is gone")
}

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PUSH_PROMISE: u8 = 0x5;
const CONTINUATION: u8 = 0x9;
const END_HEADERS: u8 = 0x4;
const END_STREAM: u8 = 0x1;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
const ACK: u8 = 0x1;
const MAX_CONCURRENT_STREAMS: u16 = 0x3;
const FRAME_HEAD: usize = 9;

/// The most bytes of one header block held back while it arrives. h2
/// accepts no block near this (16 KiB of fields, at most four times that
/// before it ends the connection); past it the connection is no longer
/// checked and h2 ends it.
const MOST_HELD: usize = 1 << 20;

/// The most streams kept as having had their final head: a stream Keel
/// resets (its client left) never ends from the member's side, so the
/// oldest are forgotten past this (their trailers go unchecked then).
const MOST_ANSWERING: usize = 256;

/// A frame's head (RFC 9113 §4.1).
#[derive(Debug, Clone, Copy)]
struct Head {
    len: usize,
    kind: u8,
    flags: u8,
    stream: u32,
}

impl Head {
    /// The head at the start of `b`, when all nine bytes are there.
    fn read(b: &[u8]) -> Option<Head> {
        let h = b.get(..FRAME_HEAD)?;
        Some(Head {
            len: usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]),
            kind: h[3],
            flags: h[4],
            stream: u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff,
        })
    }
}

/// A member's side of an HTTP/2 connection, read frame by frame: every
/// byte goes on to h2 as it came, but for a header block with a request
/// pseudo-header (see the module's documentation). A header block or a
/// SETTINGS frame is held until its last byte is in (SETTINGS are read
/// for [`Streams`]); everything else goes on as it is read.
pub(crate) struct Checked<S> {
    inner: S,
    member: SocketAddr,
    streams: Arc<Streams>,
    /// Told when the member's first SETTINGS are in.
    settled: Option<oneshot::Sender<()>>,
    frames: Frames,
    /// Bytes read and not yet given on, from a frame's start: a frame head
    /// not yet whole, or a header block not yet whole.
    held: Vec<u8>,
    /// Bytes ready to be given on, from `given`.
    ready: Vec<u8>,
    given: usize,
    eof: bool,
}

impl<S> Checked<S> {
    pub(crate) fn new(inner: S, member: SocketAddr) -> Self {
        Checked {
            inner,
            member,
            streams: Arc::default(),
            settled: None,
            frames: Frames::default(),
            held: Vec::new(),
            ready: Vec::new(),
            given: 0,
            eof: false,
        }
    }
}

impl<S> Checked<S> {
    /// Keeps `streams` told of the member's limit, and `settled` of its
    /// first SETTINGS.
    fn counting(mut self, streams: Arc<Streams>, settled: oneshot::Sender<()>) -> Self {
        self.streams = streams;
        self.settled = Some(settled);
        self
    }
}

/// Where the reading is in the member's frames.
#[derive(Debug, Default)]
struct Frames {
    /// Bytes of the current frame still to go on unread.
    skip: usize,
    hpack: Hpack,
    /// The connection is past checking: a block that did not decode, a
    /// frame out of order, a block too large. h2 ends the connection on
    /// each of them too.
    stopped: bool,
    scratch: Vec<u8>,
    /// Streams whose final head came and whose end has not, oldest first:
    /// their next header block is a trailer section.
    answering: Vec<u32>,
}

impl Frames {
    /// How many bytes at the front of `b` may go on now: up to a frame
    /// head that is not whole, or the start of a header block.
    fn passable(&mut self, b: &[u8]) -> usize {
        if self.stopped {
            return b.len();
        }
        let mut at = 0;
        loop {
            if self.skip > 0 {
                let n = self.skip.min(b.len() - at);
                self.skip -= n;
                at += n;
                if self.skip > 0 {
                    return at;
                }
                continue;
            }
            let Some(head) = Head::read(&b[at..]) else {
                return at;
            };
            if matches!(head.kind, HEADERS | CONTINUATION | PUSH_PROMISE | SETTINGS) {
                return at;
            }
            if head.kind == RST_STREAM || head.kind == DATA && head.flags & END_STREAM != 0 {
                self.ended(head.stream);
            }
            self.skip = FRAME_HEAD + head.len;
        }
    }

    /// A whole header block at the start of `held` (HEADERS and the
    /// CONTINUATION frames up to END_HEADERS): how long it is, and
    /// whether to refuse it (with the stream and where its last frame's
    /// flags are): a request pseudo-header, or a pseudo-header in a
    /// trailer section. `None` while more is to come.
    fn block(&mut self, held: &[u8]) -> Option<Block> {
        let first = Head::read(held)?;
        if first.kind != HEADERS {
            // PUSH_PROMISE (Keel's client refuses push: h2 ends the
            // connection on one) or a CONTINUATION without its HEADERS.
            return Some(self.stop(held.len()));
        }
        self.scratch.clear();
        let (mut at, mut head) = (0, first);
        loop {
            let payload = held.get(at + FRAME_HEAD..at + FRAME_HEAD + head.len);
            let Some(payload) = payload else {
                return (held.len() > MOST_HELD).then(|| self.stop(held.len()));
            };
            let Some(fragment) = fragment(head, payload) else {
                return Some(self.stop(held.len()));
            };
            self.scratch.extend_from_slice(fragment);
            if head.flags & END_HEADERS != 0 {
                break;
            }
            at += FRAME_HEAD + head.len;
            match Head::read(&held[at..]) {
                Some(next) if next.kind == CONTINUATION && next.stream == first.stream => {
                    head = next
                }
                Some(_) => return Some(self.stop(held.len())),
                None => return None,
            }
        }
        let len = at + FRAME_HEAD + head.len;
        let Ok(seen) = self.hpack.block(&self.scratch) else {
            return Some(self.stop(held.len()));
        };
        let trailers = self.ended(first.stream);
        let ends = first.flags & END_STREAM != 0;
        if !trailers && !ends && seen.status == Some(Status::Final) {
            if self.answering.len() == MOST_ANSWERING {
                self.answering.remove(0);
            }
            self.answering.push(first.stream);
        }
        let refuse = seen.request_pseudo || trailers && seen.status.is_some();
        Some(Block {
            len,
            refuse: refuse.then_some((first.stream, at + 4)),
        })
    }

    /// Forgets `stream` as answering: whether it was.
    fn ended(&mut self, stream: u32) -> bool {
        let at = self.answering.iter().position(|s| *s == stream);
        at.map(|at| self.answering.remove(at)).is_some()
    }

    /// No more checking on this connection: what is held goes on as it is.
    fn stop(&mut self, len: usize) -> Block {
        self.stopped = true;
        Block { len, refuse: None }
    }
}

/// A header block, whole: its length, and for one to refuse its stream
/// and the offset of its last frame's flags.
struct Block {
    len: usize,
    refuse: Option<(u32, usize)>,
}

/// The part of a HEADERS or CONTINUATION frame's payload that is header
/// block, without padding and priority; `None` when the frame's padding
/// does not fit (h2 ends the connection on it).
fn fragment(head: Head, payload: &[u8]) -> Option<&[u8]> {
    if head.kind == CONTINUATION {
        return Some(payload);
    }
    let mut p = payload;
    let pad = if head.flags & PADDED != 0 {
        let (&pad, rest) = p.split_first()?;
        p = rest;
        usize::from(pad)
    } else {
        0
    };
    if head.flags & PRIORITY != 0 {
        p = p.get(5..)?;
    }
    p.get(..p.len().checked_sub(pad)?)
}

/// The last `SETTINGS_MAX_CONCURRENT_STREAMS` a SETTINGS frame's payload
/// names (RFC 9113 §6.5.1: six bytes a setting, the last of one kind
/// wins).
fn most_streams(payload: &[u8]) -> Option<u32> {
    payload
        .chunks_exact(6)
        .rev()
        .find(|s| u16::from_be_bytes([s[0], s[1]]) == MAX_CONCURRENT_STREAMS)
        .map(|s| u32::from_be_bytes([s[2], s[3], s[4], s[5]]))
}

/// A CONTINUATION frame for `stream`, ending its block with
/// `connection:` (a literal without indexing, new name, empty value).
fn refusal(stream: u32) -> [u8; FRAME_HEAD + 13] {
    let mut frame = *b"\x00\x00\x0d\x09\x04\x00\x00\x00\x00\x00\x0aconnection\x00";
    frame[5..9].copy_from_slice(&stream.to_be_bytes());
    frame
}

impl<S> Checked<S> {
    /// Moves what can go on from `held` to `ready`.
    fn settle(&mut self) {
        loop {
            let n = self.frames.passable(&self.held);
            if n > 0 {
                self.ready.extend(self.held.drain(..n));
                continue;
            }
            let Some(head) = Head::read(&self.held) else {
                return;
            };
            if head.kind == SETTINGS {
                if head.len > MOST_HELD {
                    // h2 ends the connection on a frame this large.
                    self.frames.stopped = true;
                    continue;
                }
                let Some(payload) = self.held.get(FRAME_HEAD..FRAME_HEAD + head.len) else {
                    return;
                };
                if head.flags & ACK == 0 {
                    if let Some(most) = most_streams(payload) {
                        self.streams.most.store(most, Relaxed);
                    }
                    if let Some(settled) = self.settled.take() {
                        let _ = settled.send(());
                    }
                }
                self.ready.extend(self.held.drain(..FRAME_HEAD + head.len));
                continue;
            }
            let Some(block) = self.frames.block(&self.held) else {
                return;
            };
            let start = self.ready.len();
            self.ready.extend(self.held.drain(..block.len));
            if let Some((stream, flags)) = block.refuse {
                self.ready[start + flags] &= !END_HEADERS;
                self.ready.extend(refusal(stream));
                tracing::warn!(member = %self.member, stream,
                    "a member's HTTP/2 response carries a request pseudo-header, or a trailer section a pseudo-header: refused (RFC 9113 sections 8.1, 8.3)");
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Checked<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.given < this.ready.len() {
                let n = out.remaining().min(this.ready.len() - this.given);
                out.put_slice(&this.ready[this.given..this.given + n]);
                this.given += n;
                if this.given == this.ready.len() {
                    this.ready.clear();
                    this.given = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.eof || out.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            // Read straight into the caller's buffer; what must be held
            // moves out of it.
            let start = out.filled().len();
            ready!(Pin::new(&mut this.inner).poll_read(cx, out))?;
            let read = &out.filled()[start..];
            if read.is_empty() {
                // The member closed: whatever is held goes on as it is.
                this.eof = true;
                this.ready.append(&mut this.held);
                continue;
            }
            let keep = if this.held.is_empty() {
                this.frames.passable(read)
            } else {
                0
            };
            if keep == read.len() {
                return Poll::Ready(Ok(()));
            }
            this.held.extend_from_slice(&read[keep..]);
            out.set_filled(start + keep);
            this.settle();
            if keep > 0 {
                return Poll::Ready(Ok(()));
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Checked<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// A member's bytes, handed over `.1` at a time (tests, fuzzing).
struct Pieces<'a>(&'a [u8], usize);

impl AsyncRead for Pieces<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let n = self.1.max(1).min(self.0.len()).min(out.remaining());
        let (now, rest) = self.0.split_at(n);
        out.put_slice(now);
        self.0 = rest;
        Poll::Ready(Ok(()))
    }
}

/// A member's bytes (the first says how many come at a time) read as h2
/// would read them; what comes out is what went in, and a refusal frame
/// for each block refused.
pub(crate) fn fuzz(data: &[u8]) {
    let Some((&chunk, data)) = data.split_first() else {
        return;
    };
    let mut checked = Checked::new(
        Pieces(data, usize::from(chunk)),
        SocketAddr::from(([127, 0, 0, 1], 1)),
    );
    let mut cx = Context::from_waker(std::task::Waker::noop());
    let mut out = Vec::new();
    let mut buf = [0u8; 1000];
    loop {
        let mut read = ReadBuf::new(&mut buf);
        match Pin::new(&mut checked).poll_read(&mut cx, &mut read) {
            Poll::Ready(Ok(())) if read.filled().is_empty() => break,
            Poll::Ready(Ok(())) => out.extend_from_slice(read.filled()),
            _ => panic!("an in-memory member is never pending and never fails"),
        }
    }
    let added = out.len() - data.len();
    assert_eq!(
        added % refusal(0).len(),
        0,
        "only whole refusal frames are added"
    );
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tokio::io::AsyncReadExt;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len().to_be_bytes();
        let mut f = vec![len[5], len[6], len[7], kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// The bytes of `frames` as a member sends them, and as h2 must read
    /// them: a frame marked with its stream is a block's last, refused.
    fn sent_and_read(frames: &[(&[u8], Option<u32>)]) -> (Vec<u8>, Vec<u8>) {
        let sent = frames.iter().flat_map(|(f, _)| f.to_vec()).collect();
        let read = frames
            .iter()
            .flat_map(|(f, refused)| {
                let mut f = f.to_vec();
                if let Some(stream) = refused {
                    f[4] &= !END_HEADERS;
                    f.extend_from_slice(&refusal(*stream));
                }
                f
            })
            .collect();
        (sent, read)
    }

    /// What h2 reads of `input`, handed over `chunk` bytes at a time.
    async fn through(input: &[u8], chunk: usize) -> Vec<u8> {
        let addr = SocketAddr::from(([127, 0, 0, 1], 1));
        let mut checked = Checked::new(Pieces(input, chunk), addr);
        let mut out = Vec::new();
        checked.read_to_end(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn only_a_block_with_a_request_pseudo_header_changes() {
        let settings = frame(0x4, 0, 0, &[]);
        // `:status: 200`, `x-a: b` (a literal with indexing: into the table).
        let clean = frame(HEADERS, END_HEADERS, 1, b"\x88\x40\x03x-a\x01b");
        let data = frame(0x0, 0x1, 1, &[b'x'; 100]);
        // `:status: 200`, `:path: /` (static entry 4): split over a
        // CONTINUATION, padded and with a priority.
        let bad_first = frame(
            HEADERS,
            PADDED | PRIORITY,
            3,
            b"\x02\x00\x00\x00\x00\x10\x88\x00\x00",
        );
        let bad_last = frame(CONTINUATION, END_HEADERS, 3, b"\x84");
        // The table's entry 62 (`x-a: b`) still decodes as it did.
        let after = frame(HEADERS, END_HEADERS | 0x1, 5, b"\x88\xbe");
        // `:method` from a literal name, Huffman-coded.
        let huffman = frame(
            HEADERS,
            END_HEADERS | 0x1,
            7,
            b"\x88\x00\x85\xb9\x49\x53\x39\xe4\x03GET",
        );
        let (input, expected) = sent_and_read(&[
            (&settings, None),
            (&clean, None),
            (&data, None),
            (&bad_first, None),
            (&bad_last, Some(3)),
            (&data, None),
            (&after, None),
            (&huffman, Some(7)),
        ]);
        for chunk in [1, 2, 5, 9, 10, 64, 4096] {
            assert_eq!(through(&input, chunk).await, expected, "{chunk} at a time");
        }
    }

    #[tokio::test]
    async fn a_trailer_section_with_a_pseudo_header_is_refused() {
        let settings = frame(SETTINGS, 0, 0, &[]);
        let ends = END_HEADERS | END_STREAM;
        let ok = frame(HEADERS, END_HEADERS, 1, b"\x88"); // 200
        let data = frame(DATA, 0, 1, b"hi");
        let fine_trailers = frame(HEADERS, ends, 1, b"\x00\x05x-sum\x011");
        // A 103, then a 204 that ends the stream: two heads, no trailers.
        let early = frame(HEADERS, END_HEADERS, 3, b"\x08\x03103");
        let no_content = frame(HEADERS, ends, 3, b"\x89");
        // A 100 kept in the table, sent twice, then a 200 with a trailer
        // section that holds `:status` (the table's 100).
        let first_continue = frame(HEADERS, END_HEADERS, 5, b"\x48\x03100");
        let again = frame(HEADERS, END_HEADERS, 5, b"\xbe");
        let head = frame(HEADERS, END_HEADERS, 5, b"\x88");
        let data_5 = frame(DATA, 0, 5, b"hi");
        let bad_trailers = frame(HEADERS, ends, 5, b"\xbe");
        // A stream that ended with its DATA, and one the member reset: a
        // head that follows is theirs to refuse (h2's), not a trailer.
        let ended = [
            frame(HEADERS, END_HEADERS, 7, b"\x88"),
            frame(DATA, END_STREAM, 7, b"x"),
        ]
        .concat();
        let reset = [
            frame(HEADERS, END_HEADERS, 9, b"\x88"),
            frame(RST_STREAM, 0, 9, &[0, 0, 0, 8]),
        ]
        .concat();
        let late = [
            frame(HEADERS, ends, 7, b"\x88"),
            frame(HEADERS, ends, 9, b"\x88"),
        ]
        .concat();
        let (input, expected) = sent_and_read(&[
            (&settings, None),
            (&ok, None),
            (&data, None),
            (&fine_trailers, None),
            (&early, None),
            (&no_content, None),
            (&first_continue, None),
            (&again, None),
            (&head, None),
            (&data_5, None),
            (&bad_trailers, Some(5)),
            (&ended, None),
            (&reset, None),
            (&late, None),
        ]);
        for chunk in [1, 3, 9, 4096] {
            assert_eq!(through(&input, chunk).await, expected, "{chunk} at a time");
        }
    }

    #[tokio::test]
    async fn a_connection_past_checking_goes_on_as_it_came() {
        // A block that does not decode (index 0), then one with `:path`:
        // h2 ends the connection at the first, so nothing is changed.
        let input = [
            frame(HEADERS, END_HEADERS, 1, b"\x80"),
            frame(HEADERS, END_HEADERS, 3, b"\x88\x84"),
            frame(0x0, 0x1, 3, b"hello"),
        ]
        .concat();
        for chunk in [1, 7, 4096] {
            assert_eq!(through(&input, chunk).await, input, "{chunk} at a time");
        }
        // A member that closes inside a block: what came goes on.
        let cut = &frame(HEADERS, 0, 1, b"\x88")[..];
        assert_eq!(through(cut, 3).await, cut);
    }

    /// The member's SETTINGS go on as they came, and name how many
    /// streams requests may take on the connection; an ACK names none.
    #[tokio::test]
    async fn settings_name_the_members_stream_limit() {
        // SETTINGS_INITIAL_WINDOW_SIZE 9, then MAX_CONCURRENT_STREAMS 7.
        let input = [
            frame(SETTINGS, 0, 0, &[0, 4, 0, 0, 0, 9, 0, 3, 0, 0, 0, 7]),
            frame(SETTINGS, ACK, 0, &[]),
            frame(0x0, 0x1, 1, b"x"),
        ]
        .concat();
        for chunk in [1, 5, 4096] {
            let streams = Arc::new(Streams::default());
            let (settled, mut told) = oneshot::channel();
            let addr = SocketAddr::from(([127, 0, 0, 1], 1));
            let mut checked =
                Checked::new(Pieces(&input, chunk), addr).counting(streams.clone(), settled);
            let mut out = Vec::new();
            checked.read_to_end(&mut out).await.unwrap();
            assert_eq!(out, input, "{chunk} at a time");
            assert_eq!(told.try_recv(), Ok(()));
            let taken: Vec<Stream> = (0..7).map(|_| streams.take().unwrap()).collect();
            assert!(streams.take().is_none(), "an eighth stream");
            drop(taken);
            assert!(streams.idle());
            assert!(streams.take().is_some());
        }
        assert_eq!(most_streams(&[0, 3, 0, 0, 0, 1, 0, 3, 0, 0, 0, 2]), Some(2));
        assert_eq!(most_streams(&[0, 3, 0, 0, 0]), None);
    }

    #[test]
    fn the_refusal_is_a_literal_connection_field_on_its_stream() {
        let r = refusal(0x0102_0304);
        let head = Head::read(&r).unwrap();
        assert_eq!(
            (head.len, head.kind, head.flags, head.stream),
            (13, CONTINUATION, END_HEADERS, 0x0102_0304)
        );
        assert_eq!(&r[FRAME_HEAD..], b"\x00\x0aconnection\x00");
    }
}
