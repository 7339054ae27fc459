//! The HTTP/1.x server side: Keel's one HTTP/1 server. It reads request
//! heads and bodies, hands each request to [`Conn::handle`], writes the
//! answer, and hands a connection that switches protocols to its tunnel.
//!
//! It reads by RFC 9112's rules, strictly, with the codec's shared pieces
//! (`crate::wire`, which the member client reads responses with):
//! `Transfer-Encoding` wins over `Content-Length` (which is removed, and
//! the connection closed after the answer); a length that is not digits
//! only, or two that differ, is refused; a coding other than `chunked`
//! alone is refused (501, or 400 where the body cannot be framed); an
//! HTTP/1.0 request with a coding is refused and the connection closed.
//! A malformed head is answered 400, a too large one 431, a version it
//! does not speak 505, an expectation other than `100-continue` 417.
//!
//! A request body is read off the connection by this loop as the member
//! client asks for it (through an [`Inbox`] of bounded size, so a fast
//! client cannot outrun a slow member), and `100 Continue` is sent when it
//! is first asked for. A response is framed by the body Keel sends, never
//! by a length the member claimed: one buffer holds the head and a small
//! body, so a small answer leaves in one write.

use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, SystemTime};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::{BoxError, ClientBody, Conn, ProxyBody, MAX_HEADERS, MAX_HEAD_BYTES};
use crate::coalesce::Coalesce;
use crate::replay::Replay;
use crate::stall::Deadline;
use crate::wire::{self, Chunk, Step};

/// Room made in the read buffer before a read that has too little.
const READ_SIZE: usize = 8 * 1024;
/// Room left in the read buffer that is enough for the next read: the
/// buffer still shared with the request's fields is read into where it
/// has room, not copied into a new one.
const READ_ROOM: usize = 256;
/// The read buffer a request starts with: most heads fit, and a block
/// this small is the allocator's quickest.
pub(super) const FIRST_SIZE: usize = 1024;
/// Room made for a response head (more is made if it is larger), with a
/// small body no more than the allocator's quickest block size.
const HEAD_ROOM: usize = 512;
/// Body pieces up to this size are copied in behind the head, so a small
/// response leaves in one write; larger ones are written as they are.
const COPY_BODY: usize = 4 * 1024;
/// Bytes of request body read ahead of the member client: the loop stops
/// reading the client when this much waits in the [`Inbox`].
const INBOX_BYTES: usize = 64 * 1024;

/// How long a connection waits on its client between answers.
#[derive(Clone, Copy)]
pub(super) struct Timeouts {
    /// For a whole request head, from its first byte (or, for the first
    /// request, from the connection's start).
    pub head: Duration,
    /// For the first byte of the next request after an answer.
    pub keep_alive: Duration,
}

/// Serves requests on `io`, whose first bytes (`buf`) were read already (found
/// not to be HTTP/2's), until the client closes, a timeout passes, a
/// request ends the connection or `conn.stop` is set (the listener is closing:
/// the request under way finishes, then the connection closes).
///
/// Not an `async fn`, which would hold its arguments twice: the future
/// uses `io` and the rest where they were captured.
pub(super) fn serve<IO>(
    io: IO,
    mut buf: BytesMut,
    conn: Arc<Conn>,
) -> impl Future<Output = ()> + Send
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut io = Coalesce::new(io);
    async move {
        // No buffer until the first bytes come (`read` waits for them with one
        // on its stack, unless they were read already), and none again between requests: a connection that is
        // open and idle costs its socket and its task only. The answer's
        // buffer, and the timeouts (the listener's, as the connection found
        // it), are not held here: an idle connection's future is smaller.
        let mut timer = pin!(Deadline::after(conn.timeouts().head));
        let mut first = true;
        loop {
            // A request's head must be whole within the head timeout; between
            // requests a connection may stay idle for the keep-alive timeout,
            // and the head timeout starts with the next request's first byte.
            let mut idle = !first && buf.is_empty();
            first = false;
            if idle {
                buf = BytesMut::new();
            }
            let timeouts = conn.timeouts();
            let wait = if idle {
                timeouts.keep_alive
            } else {
                timeouts.head
            };
            timer.as_mut().set(Instant::now() + wait);
            // How far the buffer is known to hold no end of a head: a head that
            // trickles in is scanned once, and parsed once it is whole, not
            // parsed again from its start at every read.
            let mut scanned = 0;
            // The head limit, from the first bytes after an idle wait, is
            // set only if the head does not come whole with them.
            let mut head_begun = false;
            let (req, message) = loop {
                // Most heads come whole in one read: parsed at once.
                let parsed = if scanned == 0 || head_end(&buf, scanned).is_some() {
                    parse(&mut buf)
                } else {
                    Parsed::Partial
                };
                scanned = buf.len();
                if head_begun && matches!(parsed, Parsed::Partial) {
                    head_begun = false;
                    timer.as_mut().set(Instant::now() + conn.timeouts().head);
                }
                let refused = match parsed {
                    Parsed::Request(req, message) => break (req, message),
                    Parsed::Partial if buf.len() < MAX_HEAD_BYTES => None,
                    Parsed::Partial => Some((
                        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                        "request head too large",
                    )),
                    Parsed::Refused(status, why) => Some((status, why)),
                };
                if let Some((status, why)) = refused {
                    return Box::pin(refuse(&mut io, &conn, status, why)).await;
                }
                match read(&mut io, &mut buf, timer.as_mut(), &conn.stop).await {
                    Read::Bytes if idle => {
                        idle = false;
                        head_begun = true;
                    }
                    Read::Bytes => {}
                    Read::Closed => return,
                    // A head begun and not finished in time is answered 408
                    // (an idle keep-alive connection just closes).
                    Read::TimedOut if buf.is_empty() => return,
                    Read::TimedOut => {
                        tracing::debug!(client.addr = %conn.peer(), header_timeout = ?conn.timeouts().head, "request head not received in time: 408");
                        let _ = io.write_all(TIMED_OUT).await;
                        let _ = io.flush().await;
                        return;
                    }
                }
            };
            // Boxed: the request's state is allocated while it is under way,
            // not carried by every idle connection's future.
            match super::boxed(|| exchange(&mut io, &conn, &mut buf, req, message)).await {
                Next::Request => {}
                Next::Close => return,
                Next::Upgrade(give) => {
                    // The connection leaves HTTP: what the client sent after
                    // its request is the tunnel's first bytes.
                    let ahead = buf.split().freeze();
                    let _ = give.send(Box::new(Replay::new(ahead, io)));
                    return;
                }
            }
        }
    }
}

/// What follows an exchange on its connection.
enum Next {
    /// The next request.
    Request,
    /// Nothing: it closes.
    Close,
    /// The switch to another protocol: the connection goes to the tunnel.
    Upgrade(oneshot::Sender<Tunnel>),
}

/// One request whose head was read: its body read into the member's
/// request while its answer is awaited, then the answer written.
async fn exchange<IO>(
    io: &mut Coalesce<IO>,
    conn: &Conn,
    buf: &mut BytesMut,
    mut req: Box<Request<ClientBody>>,
    message: Message,
) -> Next
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let out = &mut BytesMut::new();
    let mut intake = message.body.map(|framing| {
        let (intake, upload) = Intake::new(framing, message.expect_continue);
        *req.body_mut() = ClientBody::Http1(upload);
        intake
    });
    let tunnel = message.upgrade.then(|| {
        let (give, take) = oneshot::channel();
        req.extensions_mut()
            .insert(ClientUpgrade(Arc::new(Mutex::new(Some(take)))));
        give
    });
    // A client that leaves while its member is silent is let go at once,
    // and so is the member's connection.
    let answer = super::boxed(|| conn.handle(req));
    let Some(response) = watch(&mut *io, &mut *buf, intake.as_mut(), answer).await else {
        tracing::debug!(client.addr = %conn.peer(), "client closed the connection before its answer");
        return Next::Close;
    };
    // A body not read to its end leaves the connection where no next
    // request can be found: it closes after the answer.
    let whole = intake.as_ref().is_none_or(Intake::is_done);
    let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS && tunnel.is_some();
    let asked = Asked {
        keep_alive: message.keep_alive && whole && !conn.stop.load(Relaxed),
        head_only: message.head_only,
        http10: message.http10,
        trailers: message.trailers,
    };
    let status = response.status();
    let answered = respond(&mut *io, response, out, asked).await;
    if let Err(e) = &answered {
        if e.get_ref().is_some_and(|e| e.is::<Unsent>()) {
            tracing::debug!(client.addr = %conn.peer(), error = %e, "member's answer failed before it went out");
            // The listener counts what its client got; the pool, what its
            // member answered.
            let (from, to) = (status.as_u16(), StatusCode::BAD_GATEWAY.as_u16());
            conn.listener().stats.here().requests.recount(from, to);
            answer_and_close(io, StatusCode::BAD_GATEWAY, out).await;
            return Next::Close;
        }
    }
    if !whole && answered.is_ok() {
        linger(io).await;
        return Next::Close;
    }
    match answered {
        Ok(_) if switching => tunnel.map_or(Next::Close, Next::Upgrade),
        Ok(true) if !conn.stop.load(Relaxed) => Next::Request,
        Ok(_) => Next::Close,
        Err(e) => {
            tracing::debug!(client.addr = %conn.peer(), error = %e, "http connection ended");
            Next::Close
        }
    }
}

/// Answers a request this loop cannot serve with `status`, and closes.
async fn refuse<IO: AsyncRead + AsyncWrite + Unpin>(
    io: &mut IO,
    conn: &Conn,
    status: StatusCode,
    why: &str,
) {
    tracing::debug!(client.addr = %conn.peer(), status = status.as_u16(), why, "request refused");
    conn.listener().stats.here().requests.count(status.as_u16());
    answer_and_close(io, status, &mut BytesMut::new()).await;
}

/// Answers with Keel's own `status` page, and closes.
async fn answer_and_close<IO: AsyncRead + AsyncWrite + Unpin>(
    io: &mut IO,
    status: StatusCode,
    out: &mut BytesMut,
) {
    let asked = Asked {
        keep_alive: false,
        head_only: false,
        http10: false,
        trailers: false,
    };
    if respond(io, super::local_response(status), out, asked)
        .await
        .is_ok()
    {
        linger(io).await;
    }
}

/// How long, and for how many bytes, a connection closed while its client
/// may still be sending is read and discarded first.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 1024 * 1024;

/// Closes a connection whose client may still be sending (a body the
/// answer overtook, a refused request): Keel's side is shut first and what
/// the client sends meanwhile is read and dropped, for a while. Closing
/// with unread bytes would send a reset, which can destroy the answer
/// before the client reads it (nginx's lingering close does the same).
async fn linger<IO: AsyncRead + AsyncWrite + Unpin>(io: &mut IO) {
    use tokio::io::AsyncReadExt;
    if io.shutdown().await.is_err() {
        return;
    }
    let deadline = Instant::now() + LINGER;
    let mut scratch = vec![0u8; READ_SIZE];
    let mut left = LINGER_BYTES;
    while left > 0 {
        match tokio::time::timeout_at(deadline, io.read(&mut scratch)).await {
            Ok(Ok(n)) if n > 0 => left = left.saturating_sub(n),
            _ => return,
        }
    }
}

/// The answer to a request head that did not arrive in time.
const TIMED_OUT: &[u8] =
    b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";

/// What a read for a request head came to.
enum Read {
    Bytes,
    /// End of stream, an error, or the listener closing while no request
    /// is under way: the connection ends.
    Closed,
    /// The head timeout passed.
    TimedOut,
}

/// Waits for `answer` while reading the client: its request body into
/// `intake`, then what it sends meanwhile (pipelined requests) into `buf`,
/// up to the largest head; `None` if it closes or fails first, and
/// `answer` is dropped with whatever it held (the member's connection).
async fn watch<IO, F>(
    io: &mut IO,
    buf: &mut BytesMut,
    mut intake: Option<&mut Intake>,
    answer: F,
) -> Option<F::Output>
where
    IO: AsyncRead + AsyncWrite + Unpin,
    F: Future,
{
    let mut answer = pin!(answer);
    poll_fn(|cx| {
        if let Poll::Ready(r) = answer.as_mut().poll(cx) {
            return Poll::Ready(Some(r));
        }
        if let Some(intake) = intake.as_deref_mut() {
            match intake.poll_pump(&mut *io, buf, cx) {
                Poll::Ready(Pumped::Done) => {}
                Poll::Ready(Pumped::Gone) => return Poll::Ready(None),
                // A malformed body: the answer to it is on its way, and
                // nothing after it is read.
                Poll::Ready(Pumped::Failed) | Poll::Pending => return Poll::Pending,
            }
        }
        if buf.len() >= MAX_HEAD_BYTES {
            return Poll::Pending;
        }
        make_room(buf);
        match tokio_util::io::poll_read_buf(Pin::new(&mut *io), cx, buf) {
            Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => Poll::Ready(None),
            // Read again: until it is pending, no wake-up is due for it.
            Poll::Ready(Ok(_)) => {
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}

/// Reads what the client sends into `buf` (with no buffer yet, into one on
/// the stack), until `timer` passes or `stop` is set. A plain function: the
/// future is its four references.
fn read<'a, IO: AsyncRead + Unpin>(
    io: &'a mut IO,
    buf: &'a mut BytesMut,
    mut timer: Pin<&'a mut Deadline>,
    stop: &'a AtomicBool,
) -> impl Future<Output = Read> + 'a {
    poll_fn(move |cx| {
        if stop.load(Relaxed) {
            return Poll::Ready(Read::Closed);
        }
        if buf.capacity() == 0 {
            // Idle: a buffer on the stack, kept only for this poll.
            let mut first = [MaybeUninit::<u8>::uninit(); 512];
            let mut small = ReadBuf::uninit(&mut first);
            return match Pin::new(&mut *io).poll_read(cx, &mut small) {
                Poll::Ready(Ok(())) if !small.filled().is_empty() => {
                    buf.reserve(FIRST_SIZE);
                    buf.extend_from_slice(small.filled());
                    Poll::Ready(Read::Bytes)
                }
                Poll::Ready(_) => Poll::Ready(Read::Closed),
                Poll::Pending if timer.as_mut().poll_passed(cx).is_ready() => {
                    Poll::Ready(Read::TimedOut)
                }
                Poll::Pending => Poll::Pending,
            };
        }
        make_room(buf);
        match tokio_util::io::poll_read_buf(Pin::new(&mut *io), cx, buf) {
            Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => Poll::Ready(Read::Closed),
            Poll::Ready(Ok(_)) => Poll::Ready(Read::Bytes),
            Poll::Pending if timer.as_mut().poll_passed(cx).is_ready() => {
                Poll::Ready(Read::TimedOut)
            }
            Poll::Pending => Poll::Pending,
        }
    })
}

/// Makes room in `buf` for a read, unless it has [`READ_ROOM`] already.
fn make_room(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < READ_ROOM {
        buf.reserve(READ_SIZE);
    }
}

/// Where the first head in `buf` ends (after its empty line: `\n\n` or
/// `\n\r\n`, as a parser that takes bare line feeds sees it), looking
/// only past `scanned`, the length already known to hold no end.
fn head_end(buf: &[u8], scanned: usize) -> Option<usize> {
    // The end may straddle what was scanned: look back two bytes.
    let from = scanned.saturating_sub(2);
    let mut at = from;
    while let Some(i) = buf.get(at..)?.iter().position(|b| *b == b'\n') {
        let lf = at + i;
        if buf.get(lf + 1) == Some(&b'\n') {
            return Some(lf + 2);
        }
        if buf.get(lf + 1..lf + 3) == Some(&b"\r\n"[..]) {
            return Some(lf + 3);
        }
        at = lf + 1;
    }
    None
}

/// What the front of the read buffer holds.
enum Parsed {
    /// A whole request head, taken off the buffer (boxed, as requests
    /// travel: see `http::serve`), and how its message is framed.
    Request(Box<Request<ClientBody>>, Message),
    /// Part of a head so far.
    Partial,
    /// A head that is answered with this status, and why; the connection
    /// closes after it.
    Refused(StatusCode, &'static str),
}

/// What a request head says about its message and its connection.
#[derive(Debug)]
struct Message {
    /// How its body is framed; `None` without one.
    body: Option<Framing>,
    /// The client would keep the connection open after the answer.
    keep_alive: bool,
    /// `HEAD`: the answer's body is not sent.
    head_only: bool,
    http10: bool,
    /// It sent `Expect: 100-continue` before a body.
    expect_continue: bool,
    /// It asked to switch protocols (`Upgrade` with `Connection: upgrade`).
    upgrade: bool,
    /// It takes trailers (`TE: trailers`).
    trailers: bool,
}

/// How a request body is delimited.
#[derive(Debug, Clone, Copy)]
enum Framing {
    /// By this many more bytes.
    Length(u64),
    /// By its last chunk.
    Chunked(Chunk),
}

/// What the fields of a head that matter to framing said.
#[derive(Default)]
struct Fields<'a> {
    length: Option<u64>,
    /// `Transfer-Encoding` values, one per field.
    codings: Vec<&'a [u8]>,
    close: bool,
    keep_alive: bool,
    upgrade_token: bool,
    upgrade: bool,
    expect: Option<&'a [u8]>,
    trailers: bool,
}

/// The items of a comma-separated field value, trimmed, empty ones left out.
fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|b| *b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// Parses the request head at the front of `buf`.
fn parse(buf: &mut BytesMut) -> Parsed {
    if buf.is_empty() {
        return Parsed::Partial;
    }
    let mut slots = [const { MaybeUninit::<httparse::Header>::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut []);
    let config = httparse::ParserConfig::default();
    let len = match config.parse_request_with_uninit_headers(&mut parsed, buf, &mut slots) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(httparse::Error::TooManyHeaders) => {
            return Parsed::Refused(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "too many header fields",
            )
        }
        Err(httparse::Error::Version) => {
            return Parsed::Refused(StatusCode::HTTP_VERSION_NOT_SUPPORTED, "not HTTP/1.x")
        }
        Err(_) => return Parsed::Refused(StatusCode::BAD_REQUEST, "malformed request head"),
    };
    let bad = |why| Parsed::Refused(StatusCode::BAD_REQUEST, why);
    let (Some(method), Some(target), Some(version)) = (parsed.method, parsed.path, parsed.version)
    else {
        return bad("malformed request line");
    };
    let http10 = version == 0;
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return bad("malformed method");
    };
    // Keel is no forward proxy: there is nothing to tunnel to.
    if method == Method::CONNECT {
        return Parsed::Refused(StatusCode::METHOD_NOT_ALLOWED, "CONNECT");
    }
    let mut fields = Fields::default();
    for field in parsed.headers.iter() {
        let is = |known: &str| field.name.eq_ignore_ascii_case(known);
        match field.name.len() {
            2 if is("te") => {
                fields.trailers |= tokens(field.value).any(|t| t.eq_ignore_ascii_case(b"trailers"));
            }
            6 if is("expect") => fields.expect = Some(field.value),
            7 if is("upgrade") => fields.upgrade = true,
            10 if is("connection") => {
                for t in tokens(field.value) {
                    fields.close |= t.eq_ignore_ascii_case(b"close");
                    fields.keep_alive |= t.eq_ignore_ascii_case(b"keep-alive");
                    fields.upgrade_token |= t.eq_ignore_ascii_case(b"upgrade");
                }
            }
            // Two fields that agree are one length (RFC 9110 §8.6); a list,
            // a sign, a space inside or a second, different length is an
            // attempt at smuggling.
            14 if is("content-length") => match wire::parse_length(field.value) {
                Some(n) if fields.length.is_none_or(|l| l == n) => fields.length = Some(n),
                _ => return bad("malformed or conflicting Content-Length"),
            },
            17 if is("transfer-encoding") => fields.codings.push(field.value),
            _ => {}
        }
    }
    let body = match framing(&fields, http10) {
        Ok(body) => body,
        Err(refused) => return refused,
    };
    let expect_continue = match fields.expect {
        // HTTP/1.0 has no expectations (RFC 9110 §10.1.1).
        Some(_) if http10 => false,
        Some(e) if e.trim_ascii().eq_ignore_ascii_case(b"100-continue") => body.is_some(),
        Some(_) => return Parsed::Refused(StatusCode::EXPECTATION_FAILED, "unknown expectation"),
        None => false,
    };
    // Values and the target share one copy of the head (one allocation,
    // not one each); the read buffer is kept for the next request.
    let head = Bytes::copy_from_slice(&buf[..len]);
    let base = buf.as_ptr() as usize;
    let slice = |s: &[u8]| {
        let start = s.as_ptr() as usize - base;
        head.slice(start..start + s.len())
    };
    let Ok(uri) = Uri::from_maybe_shared(slice(target.as_bytes())) else {
        return bad("malformed request target");
    };
    // Origin form, absolute form, or `*` for `OPTIONS` (RFC 9112 §3.2).
    let origin = target.starts_with('/');
    let absolute = uri.scheme().is_some() && uri.authority().is_some();
    if !(origin || absolute || (target == "*" && method == Method::OPTIONS)) {
        return bad("malformed request target");
    }
    let mut headers = HeaderMap::with_capacity(parsed.headers.len());
    let chunked = !fields.codings.is_empty();
    for field in parsed.headers.iter() {
        let Ok(name) = HeaderName::from_bytes(field.name.as_bytes()) else {
            return bad("malformed field name");
        };
        // With a coding the length means nothing (RFC 9112 §6.3) and is
        // not passed on; two equal lengths go on as one (RFC 9110 §8.6).
        if name == header::CONTENT_LENGTH && (chunked || headers.contains_key(&name)) {
            continue;
        }
        let Ok(value) = HeaderValue::from_maybe_shared(slice(field.value)) else {
            return bad("malformed field value");
        };
        headers.append(name, value);
    }
    let keep_alive = if http10 {
        fields.keep_alive && !fields.close
    } else {
        // A length beside a coding may be an attempt at smuggling: what
        // follows the body is not read as another request.
        !(fields.close || chunked && fields.length.is_some())
    };
    let message = Message {
        body,
        keep_alive,
        head_only: method == Method::HEAD,
        http10,
        expect_continue,
        upgrade: !http10 && fields.upgrade_token && fields.upgrade,
        trailers: fields.trailers,
    };
    buf.advance(len);
    let mut req = Request::new(ClientBody::Empty);
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = if http10 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    *req.headers_mut() = headers;
    Parsed::Request(Box::new(req), message)
}

/// How a request's body is framed (RFC 9112 §6), or why it cannot be.
fn framing(fields: &Fields<'_>, http10: bool) -> Result<Option<Framing>, Parsed> {
    let bad = |why| Err(Parsed::Refused(StatusCode::BAD_REQUEST, why));
    match fields.codings.as_slice() {
        [] => Ok(match fields.length {
            None | Some(0) => None,
            Some(n) => Some(Framing::Length(n)),
        }),
        // HTTP/1.0 has no codings: a sender that uses one is faulty
        // (RFC 9112 §6.1).
        _ if http10 => bad("Transfer-Encoding in an HTTP/1.0 request"),
        [one] => {
            let codings: Vec<&[u8]> = tokens(one).collect();
            let chunked = |t: &[u8]| t.eq_ignore_ascii_case(b"chunked");
            match codings.as_slice() {
                [only] if chunked(only) => Ok(Some(Framing::Chunked(Chunk::Size))),
                // Without `chunked` last, the body has no end.
                [.., last] if !chunked(last) => bad("Transfer-Encoding not ending in chunked"),
                [] => bad("empty Transfer-Encoding"),
                _ if codings.iter().filter(|t| chunked(t)).count() > 1 => bad("chunked twice"),
                // Keel passes bodies on decoded: another coding would reach
                // the member undeclared (RFC 9112 §6.1).
                _ => Err(Parsed::Refused(
                    StatusCode::NOT_IMPLEMENTED,
                    "a transfer coding other than chunked",
                )),
            }
        }
        _ => bad("more than one Transfer-Encoding field"),
    }
}

/// Parses what `data` holds as requests, one after another, the way
/// [`serve`] does: each head, its body by the framing it gives, and each
/// one's authority settled (see `crate::fuzz`).
pub(crate) fn fuzz_request(data: &[u8]) {
    let mut buf = BytesMut::from(data);
    let _ = head_end(&buf, buf.len() / 2);
    while let Parsed::Request(mut req, message) = parse(&mut buf) {
        let _ = crate::route::settle_authority(&mut req);
        let _ = crate::route::host_of(&req);
        let Some(mut framing) = message.body else {
            continue;
        };
        loop {
            match decode(&mut framing, &mut buf) {
                Ok(Decoded::Frame(_)) => {}
                Ok(Decoded::Done) => break,
                Ok(Decoded::More) | Err(_) => return,
            }
        }
    }
}

/// What one step of reading a request body off the buffer gave.
enum Decoded {
    Frame(Frame<Bytes>),
    /// More bytes are needed.
    More,
    /// The body is over.
    Done,
}

/// Reads the next piece of a body framed by `framing` off `buf`.
fn decode(framing: &mut Framing, buf: &mut BytesMut) -> io::Result<Decoded> {
    match framing {
        Framing::Length(0) | Framing::Chunked(Chunk::Done) => Ok(Decoded::Done),
        Framing::Length(_) if buf.is_empty() => Ok(Decoded::More),
        Framing::Length(left) => {
            let take = buf.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
            *left -= take as u64;
            Ok(Decoded::Frame(Frame::data(wire::take_bytes(buf, take))))
        }
        Framing::Chunked(state) => loop {
            match wire::decode_chunk(state, buf)? {
                Step::Frame(frame) => return Ok(Decoded::Frame(frame)),
                Step::More => return Ok(Decoded::More),
                Step::Next if matches!(state, Chunk::Done) => return Ok(Decoded::Done),
                Step::Next => {}
            }
        },
    }
}

/// A request body read off the connection by its loop, on its way to
/// whoever forwards it ([`Upload`], polled as the member takes it). The
/// loop stops reading the client while [`INBOX_BYTES`] wait here.
pub(crate) struct Inbox(Mutex<Shared>);

struct Shared {
    frames: VecDeque<Frame<Bytes>>,
    /// Data bytes in `frames`.
    queued: usize,
    /// Bytes still to come, for a body framed by a length.
    left: Option<u64>,
    end: End,
    /// The body was asked for: a `100 Continue` is due.
    asked: bool,
    /// Waiting for frames: the request's side.
    reader: Option<Waker>,
    /// Waiting for room, or for the body to be asked for: the loop.
    writer: Option<Waker>,
}

#[derive(PartialEq)]
enum End {
    Open,
    Done,
    Failed(String),
    /// The failure was handed to the reader.
    Reported,
}

impl Inbox {
    fn shared(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn push(&self, frame: Frame<Bytes>) {
        let mut s = self.shared();
        if let Some(data) = frame.data_ref() {
            s.queued += data.len();
        }
        s.frames.push_back(frame);
        if let Some(w) = s.reader.take() {
            w.wake();
        }
    }

    fn end(&self, end: End) {
        let mut s = self.shared();
        if s.end == End::Open {
            s.end = end;
        }
        if let Some(w) = s.reader.take() {
            w.wake();
        }
    }

    /// Whether more may be queued; if not, the loop is woken when it may.
    fn has_room(&self, cx: &Context<'_>) -> bool {
        let mut s = self.shared();
        if s.queued < INBOX_BYTES {
            return true;
        }
        s.writer = Some(cx.waker().clone());
        false
    }

    /// Whether the body was asked for; if not, the loop is woken when it is.
    fn asked(&self, cx: &Context<'_>) -> bool {
        let mut s = self.shared();
        if !s.asked {
            s.writer = Some(cx.waker().clone());
        }
        s.asked
    }
}

/// The loop's side of a request body: reads it off the connection into
/// the [`Inbox`], and sends `100 Continue` when it is first asked for.
struct Intake {
    inbox: Arc<Inbox>,
    framing: Framing,
    /// Bytes of `100 Continue` still to send, once the body is asked for.
    to_continue: Option<&'static [u8]>,
    state: End,
}

const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// How reading a request body stands.
enum Pumped {
    /// It was read to its end.
    Done,
    /// It was malformed, and the request's side was told.
    Failed,
    /// The client closed or failed first.
    Gone,
}

impl Intake {
    fn new(framing: Framing, expect_continue: bool) -> (Intake, Upload) {
        let left = match framing {
            Framing::Length(n) => Some(n),
            Framing::Chunked(_) => None,
        };
        let inbox = Arc::new(Inbox(Mutex::new(Shared {
            frames: VecDeque::new(),
            queued: 0,
            left,
            end: End::Open,
            asked: false,
            reader: None,
            writer: None,
        })));
        let intake = Intake {
            inbox: inbox.clone(),
            framing,
            to_continue: expect_continue.then_some(CONTINUE),
            state: End::Open,
        };
        (intake, Upload(inbox))
    }

    fn is_done(&self) -> bool {
        self.state == End::Done
    }

    /// Reads the body off `buf` and the connection as far as the inbox has
    /// room; `Pending` until it is over.
    fn poll_pump<IO: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut IO,
        buf: &mut BytesMut,
        cx: &mut Context<'_>,
    ) -> Poll<Pumped> {
        match self.state {
            End::Open => {}
            End::Done => return Poll::Ready(Pumped::Done),
            _ => return Poll::Ready(Pumped::Failed),
        }
        if let Some(left) = self.to_continue {
            // A client that sent its body already needs no go-ahead.
            if !buf.is_empty() {
                self.to_continue = None;
            } else if self.inbox.asked(cx) {
                match Pin::new(&mut *io).poll_write(cx, left) {
                    Poll::Ready(Ok(n)) if n > 0 => {
                        self.to_continue = Some(&left[n..]).filter(|l| !l.is_empty());
                        if self.to_continue.is_none() {
                            let _ = Pin::new(&mut *io).poll_flush(cx);
                        } else {
                            cx.waker().wake_by_ref();
                        }
                    }
                    Poll::Ready(_) => return self.gone(),
                    Poll::Pending => {}
                }
            }
        }
        loop {
            while self.inbox.has_room(cx) {
                match decode(&mut self.framing, buf) {
                    Ok(Decoded::Frame(frame)) => self.inbox.push(frame),
                    Ok(Decoded::Done) => {
                        self.state = End::Done;
                        self.inbox.end(End::Done);
                        return Poll::Ready(Pumped::Done);
                    }
                    Ok(Decoded::More) => break,
                    Err(e) => {
                        self.state = End::Failed(String::new());
                        self.inbox
                            .end(End::Failed(format!("malformed request body: {e}")));
                        return Poll::Ready(Pumped::Failed);
                    }
                }
            }
            if !self.inbox.has_room(cx) {
                return Poll::Pending;
            }
            buf.reserve(READ_SIZE);
            match tokio_util::io::poll_read_buf(Pin::new(&mut *io), cx, buf) {
                Poll::Ready(Ok(n)) if n > 0 => {}
                Poll::Ready(_) => return self.gone(),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn gone(&mut self) -> Poll<Pumped> {
        self.state = End::Failed(String::new());
        self.inbox.end(End::Failed(
            "the client closed the connection mid-body".into(),
        ));
        Poll::Ready(Pumped::Gone)
    }
}

impl Drop for Intake {
    fn drop(&mut self) {
        // A body not read to its end never will be.
        self.inbox
            .end(End::Failed("the client connection ended".into()));
    }
}

/// A request body as the request's side reads it: what the loop put in
/// the [`Inbox`].
pub(crate) struct Upload(Arc<Inbox>);

impl Body for Upload {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut s = self.0.shared();
        let first_ask = !s.asked;
        s.asked = true;
        let wake = |s: &mut Shared| {
            if let Some(w) = s.writer.take() {
                w.wake();
            }
        };
        if let Some(frame) = s.frames.pop_front() {
            if let Some(data) = frame.data_ref() {
                let n = data.len();
                s.queued -= n;
                if let Some(left) = s.left.as_mut() {
                    *left = left.saturating_sub(n as u64);
                }
            }
            wake(&mut s);
            return Poll::Ready(Some(Ok(frame)));
        }
        match std::mem::replace(&mut s.end, End::Reported) {
            End::Done => {
                s.end = End::Done;
                Poll::Ready(None)
            }
            End::Failed(why) => Poll::Ready(Some(Err(why.into()))),
            End::Reported => Poll::Ready(None),
            End::Open => {
                s.end = End::Open;
                s.reader = Some(cx.waker().clone());
                if first_ask {
                    wake(&mut s);
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        let s = self.0.shared();
        s.frames.is_empty() && matches!(s.end, End::Done | End::Reported)
    }

    fn size_hint(&self) -> SizeHint {
        match self.0.shared().left {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

/// A connection that can leave HTTP for a tunnel.
pub(crate) trait TunnelIo: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> TunnelIo for T {}

/// A client connection handed over after `101 Switching Protocols`.
pub(crate) type Tunnel = Box<dyn TunnelIo>;

/// Set on a request that asked to switch protocols: the client's
/// connection arrives here once the loop has written the `101`.
#[derive(Clone)]
pub(crate) struct ClientUpgrade(Arc<Mutex<Option<oneshot::Receiver<Tunnel>>>>);

impl ClientUpgrade {
    /// Takes the hand-over off `req`, if it has one.
    pub(crate) fn take<B>(req: &mut Request<B>) -> Option<ClientUpgrade> {
        req.extensions_mut().remove::<ClientUpgrade>()
    }

    /// The client's connection, once it has been answered `101`.
    pub(crate) async fn connection(self) -> Result<Tunnel, &'static str> {
        let take = self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .ok_or("connection already taken")?;
        take.await
            .map_err(|_| "the client connection ended before the switch")
    }
}

/// What the request asked of its answer.
#[derive(Clone, Copy)]
struct Asked {
    /// The client would keep the connection.
    keep_alive: bool,
    head_only: bool,
    http10: bool,
    /// The client takes trailers.
    trailers: bool,
}

/// A member's body failed before any byte of its answer went out: the
/// client can still be answered (502) rather than cut off.
#[derive(Debug)]
struct Unsent(BoxError);

impl std::fmt::Display for Unsent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for Unsent {}

/// Writes `response` and its body as `asked` allows; whether the
/// connection can carry another request. A body that fails before the
/// head went out is an [`Unsent`] error.
async fn respond<IO: AsyncWrite + Unpin>(
    io: &mut IO,
    response: Response<ProxyBody>,
    out: &mut BytesMut,
    asked: Asked,
) -> io::Result<bool> {
    let (parts, body) = response.into_parts();
    let mut body = pin!(body);
    let length = body.size_hint().exact();
    // Room for the head and a small body at once: grown a piece at a
    // time, the buffer would be copied at each step.
    out.clear();
    let small_body = length.filter(|n| *n <= COPY_BODY as u64).unwrap_or(0);
    out.reserve(HEAD_ROOM + usize::try_from(small_body).unwrap_or(0));
    let status = parts.status;
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.extend_from_slice(b" ");
    let reason = parts.extensions.get::<hyper::ext::ReasonPhrase>();
    match reason {
        Some(r) => out.extend_from_slice(r.as_bytes()),
        None => out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes()),
    }
    out.extend_from_slice(b"\r\n");
    // After a `101` the connection is a tunnel's, or (unasked for) in a
    // state no next request can follow.
    let mut keep_alive = asked.keep_alive && !status.is_informational();
    // No body after 1xx, 204 and 304 (RFC 9112 §6.3), nor in answer to `HEAD`.
    let no_content = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let bodiless = no_content || asked.head_only;
    let mut has_date = false;
    let mut has_connection = false;
    for (name, value) in &parts.headers {
        if name == header::CONTENT_LENGTH {
            // A body is framed by what is sent, never by a length a
            // member claimed; the answer to `HEAD` and a 304 keep their
            // representation's length.
            if !bodiless || status == StatusCode::NO_CONTENT {
                continue;
            }
        } else if name == header::DATE {
            has_date = true;
        } else if name == header::TRANSFER_ENCODING {
            // The framing written here is this loop's own.
            continue;
        } else if name == header::CONNECTION {
            has_connection = true;
            keep_alive &= !tokens(value.as_bytes()).any(|t| t.eq_ignore_ascii_case(b"close"));
        }
        wire::field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    if !has_date {
        out.extend_from_slice(b"date: ");
        date(out);
        out.extend_from_slice(b"\r\n");
    }
    // How the body is framed: by its length when it is known, else in
    // chunks, or (HTTP/1.0 has no chunks) by closing after it.
    let chunked = !bodiless && length.is_none() && !asked.http10;
    if !bodiless && length.is_none() && asked.http10 {
        keep_alive = false;
    }
    if !has_connection {
        if !keep_alive && !status.is_informational() {
            out.extend_from_slice(b"connection: close\r\n");
        } else if keep_alive && asked.http10 {
            out.extend_from_slice(b"connection: keep-alive\r\n");
        }
    }
    if let (false, Some(n)) = (bodiless, length) {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(itoa(n, &mut [0; 20]));
        out.extend_from_slice(b"\r\n");
    } else if chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    out.extend_from_slice(b"\r\n");
    drop(parts);
    if bodiless {
        io.write_all(out).await?;
        io.flush().await?;
        return Ok(keep_alive);
    }
    let mut trailers = None;
    let mut sent = false;
    while !body.is_end_stream() {
        // What the body has at once goes out with the head; the buffer is
        // sent before waiting for more.
        let frame = match poll_fn(|cx| Poll::Ready(body.as_mut().poll_frame(cx))).await {
            Poll::Ready(frame) => frame,
            Poll::Pending => {
                send(io, out).await?;
                sent = true;
                poll_fn(|cx| body.as_mut().poll_frame(cx)).await
            }
        };
        let data = match frame {
            None => break,
            Some(Err(e)) if !sent => return Err(io::Error::other(Unsent(e))),
            Some(Err(e)) => return Err(io::Error::other(e)),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => data,
                // Trailers go to a client that asked for them (`TE`), at
                // the end of a chunked body; others go without.
                Err(frame) => {
                    trailers = frame.into_trailers().ok().filter(|_| asked.trailers);
                    continue;
                }
            },
        };
        if data.is_empty() {
            continue;
        }
        if chunked {
            wire::chunk_size(out, data.len());
        }
        if data.len() <= COPY_BODY {
            out.extend_from_slice(&data);
        } else {
            write_both(io, out, data).await?;
            sent = true;
        }
        if chunked {
            out.extend_from_slice(b"\r\n");
        }
    }
    if chunked {
        wire::last_chunk(out, trailers.as_ref());
    }
    send(io, out).await?;
    Ok(keep_alive)
}

/// Sends what `out` holds and empties it.
async fn send<IO: AsyncWrite + Unpin>(io: &mut IO, out: &mut BytesMut) -> io::Result<()> {
    if !out.is_empty() {
        io.write_all(out).await?;
        out.clear();
    }
    io.flush().await
}

/// Sends `out`, then `data`, without copying `data`.
async fn write_both<IO: AsyncWrite + Unpin>(
    io: &mut IO,
    out: &mut BytesMut,
    mut data: Bytes,
) -> io::Result<()> {
    while !out.is_empty() {
        let n = io
            .write_vectored(&[IoSlice::new(out), IoSlice::new(&data)])
            .await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        let from_out = n.min(out.len());
        out.advance(from_out);
        data.advance(n - from_out);
    }
    out.clear();
    io.write_all(&data).await
}

/// `n` in decimal, written into `buf`.
fn itoa(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

thread_local! {
    /// The `Date` value for the current second, made once a second.
    static DATE: std::cell::RefCell<(u64, [u8; 29])> = const { std::cell::RefCell::new((0, [0; 29])) };
}

/// Appends the current time as an HTTP date (`Sun, 06 Nov 1994 08:49:37 GMT`).
fn date(out: &mut BytesMut) {
    let now = SystemTime::now();
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    DATE.with(|cached| {
        let mut cached = cached.borrow_mut();
        if cached.0 != secs {
            let text = httpdate::fmt_http_date(now);
            if text.len() == cached.1.len() {
                cached.1.copy_from_slice(text.as_bytes());
                cached.0 = secs;
            } else {
                out.extend_from_slice(text.as_bytes());
                return;
            }
        }
        out.extend_from_slice(&cached.1);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_goes_where_the_buffer_has_room() {
        // A head parsed off the front: the rest of the buffer is shared
        // with the request's fields and still has room, so it is read into.
        let mut buf = BytesMut::with_capacity(FIRST_SIZE);
        buf.extend_from_slice(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n");
        let head = buf.split_to(buf.len()).freeze();
        let before = buf.capacity();
        make_room(&mut buf);
        assert_eq!(buf.capacity(), before);
        // Too little room: a read's worth is made.
        buf.extend_from_slice(&vec![b'x'; before - READ_ROOM + 1]);
        make_room(&mut buf);
        assert!(buf.capacity() - buf.len() >= READ_SIZE);
        drop(head);
    }

    fn parse_all(head: &[u8]) -> (Parsed, usize) {
        let mut buf = BytesMut::from(head);
        let parsed = parse(&mut buf);
        (parsed, buf.len())
    }

    fn request(head: &[u8]) -> (Box<Request<ClientBody>>, Message, usize) {
        match parse_all(head) {
            (Parsed::Request(req, message), left) => (req, message, left),
            (Parsed::Partial, _) => panic!("partial: {}", String::from_utf8_lossy(head)),
            (Parsed::Refused(s, why), _) => {
                panic!("refused {s} ({why}): {}", String::from_utf8_lossy(head))
            }
        }
    }

    fn refused(head: &[u8]) -> StatusCode {
        match parse_all(head) {
            (Parsed::Refused(status, _), left) => {
                assert_eq!(left, head.len(), "nothing taken");
                status
            }
            _ => panic!("not refused: {}", String::from_utf8_lossy(head)),
        }
    }

    #[test]
    fn a_plain_get_is_taken_off_the_buffer() {
        let (req, message, left) = request(
            b"GET /a?b=1 HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\nX-A: 1\r\nx-a: 2\r\n\r\nGET /next",
        );
        assert_eq!(left, b"GET /next".len(), "the next request stays");
        assert_eq!(req.method(), Method::GET);
        assert_eq!(req.uri(), "/a?b=1");
        assert_eq!(req.version(), Version::HTTP_11);
        assert_eq!(req.headers()["host"], "x");
        let xa: Vec<_> = req.headers().get_all("x-a").iter().collect();
        assert_eq!(xa, ["1", "2"]);
        assert!(req.body().is_end_stream());
        assert!(message.body.is_none() && message.keep_alive && !message.head_only);
    }

    #[test]
    fn bodies_are_framed_by_rfc_9112() {
        let (req, m, left) = request(b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc");
        assert!(matches!(m.body, Some(Framing::Length(3))) && m.keep_alive);
        assert_eq!(left, 3, "the body stays for the intake");
        assert_eq!(req.headers()["content-length"], "3");
        let (_, m, _) = request(b"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
        assert!(m.body.is_none());
        let (req, m, _) =
            request(b"POST / HTTP/1.1\r\nContent-Length: 3\r\ncontent-length: 3\r\n\r\n");
        assert!(matches!(m.body, Some(Framing::Length(3))));
        assert_eq!(req.headers().get_all("content-length").iter().count(), 1);
        let (_, m, _) = request(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert!(matches!(m.body, Some(Framing::Chunked(Chunk::Size))) && m.keep_alive);
        // Both: the coding frames the body, the length is not passed on,
        // and nothing after the body is read as a request.
        let (req, m, _) =
            request(b"POST / HTTP/1.1\r\nContent-Length: 9\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert!(matches!(m.body, Some(Framing::Chunked(_))) && !m.keep_alive);
        assert!(!req.headers().contains_key("content-length"));
        let (_, m, _) =
            request(b"PUT / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n");
        assert!(m.expect_continue);
        let (_, m, _) = request(b"GET / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n");
        assert!(!m.expect_continue, "no body, no go-ahead");
        let (_, m, _) =
            request(b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n");
        assert!(m.upgrade);
        let (_, m, _) = request(b"GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n");
        assert!(!m.upgrade, "Upgrade without Connection: upgrade");
        let (_, m, _) = request(b"HEAD / HTTP/1.1\r\nTE: trailers\r\nConnection: close\r\n\r\n");
        assert!(m.head_only && m.trailers && !m.keep_alive);
        let (req, m, _) = request(b"GET / HTTP/1.0\r\n\r\n");
        assert!(m.http10 && !m.keep_alive && req.version() == Version::HTTP_10);
        let (_, m, _) = request(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        assert!(m.keep_alive);
        let (req, _, _) = request(b"GET http://x/a HTTP/1.1\r\nHost: y\r\n\r\n");
        assert_eq!(req.uri().host(), Some("x"));
        request(b"OPTIONS * HTTP/1.1\r\nHost: y\r\n\r\n");
    }

    #[test]
    fn malformed_heads_and_framing_are_refused() {
        let bad = StatusCode::BAD_REQUEST;
        for head in [
            &b"\x16\x03\x01\x02\x00garbage\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nBad Name: v\r\n\r\n",
            b"GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n",
            b"GET / HTTP/1.1\r\nX : a\r\n\r\n",
            b"GET x HTTP/1.1\r\n\r\n",
            b"GET * HTTP/1.1\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: \r\n\r\n",
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            assert_eq!(refused(head), bad, "{}", String::from_utf8_lossy(head));
        }
        assert_eq!(
            refused(b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
            StatusCode::NOT_IMPLEMENTED
        );
        assert_eq!(
            refused(b"PUT / HTTP/1.1\r\nExpect: 200-ok\r\nContent-Length: 1\r\n\r\n"),
            StatusCode::EXPECTATION_FAILED
        );
        assert_eq!(
            refused(b"CONNECT x:443 HTTP/1.1\r\n\r\n"),
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(
            refused(b"GET / HTTP/2.0\r\n\r\n"),
            StatusCode::HTTP_VERSION_NOT_SUPPORTED
        );
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend(format!("x-{i}: v\r\n").as_bytes());
        }
        many.extend(b"\r\n");
        assert_eq!(refused(&many), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        let whole = b"GET /path HTTP/1.1\r\nHost: x\r\n\r\n";
        for cut in 1..whole.len() {
            let (parsed, left) = parse_all(&whole[..cut]);
            assert!(matches!(parsed, Parsed::Partial), "cut at {cut}");
            assert_eq!(left, cut);
        }
    }

    #[test]
    fn bodies_decode_by_length_and_by_chunks() {
        let mut buf = BytesMut::from(&b"helloGET"[..]);
        let mut f = Framing::Length(5);
        assert!(matches!(
            decode(&mut f, &mut buf).unwrap(),
            Decoded::Frame(_)
        ));
        assert!(matches!(decode(&mut f, &mut buf).unwrap(), Decoded::Done));
        assert_eq!(&buf[..], b"GET", "the next request stays");
        let mut buf = BytesMut::from(&b"3\r\nabc\r\n0\r\nx-t: 1\r\n\r\nNEXT"[..]);
        let mut f = Framing::Chunked(Chunk::Size);
        let mut got = Vec::new();
        loop {
            match decode(&mut f, &mut buf).unwrap() {
                Decoded::Frame(frame) => got.push(frame),
                Decoded::Done => break,
                Decoded::More => panic!("whole body given"),
            }
        }
        assert_eq!(got.len(), 2, "data, then trailers");
        assert!(got[1].is_trailers());
        assert_eq!(&buf[..], b"NEXT");
        let mut buf = BytesMut::from(&b"zz\r\n"[..]);
        assert!(decode(&mut Framing::Chunked(Chunk::Size), &mut buf).is_err());
    }

    #[tokio::test]
    async fn responses_are_framed_by_length_or_chunked() {
        let local = |body: &'static str| {
            let mut r = Response::new(ProxyBody::Local(http_body_util::Full::new(Bytes::from(
                body,
            ))));
            r.headers_mut()
                .insert(header::DATE, HeaderValue::from_static("then"));
            r
        };
        let open = Asked {
            keep_alive: true,
            head_only: false,
            http10: false,
            trailers: false,
        };
        let closing = Asked {
            keep_alive: false,
            ..open
        };
        let mut out = BytesMut::new();
        let mut wire = Vec::new();
        let keep = respond(&mut wire, local("hello"), &mut out, open)
            .await
            .unwrap();
        assert!(keep);
        assert_eq!(
            String::from_utf8(wire).unwrap(),
            "HTTP/1.1 200 OK\r\ndate: then\r\ncontent-length: 5\r\n\r\nhello"
        );

        // A length in the fields is never trusted for a body.
        let mut wire = Vec::new();
        let mut r = local("hello, world");
        r.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
        respond(&mut wire, r, &mut out, open).await.unwrap();
        assert_eq!(
            String::from_utf8(wire).unwrap(),
            "HTTP/1.1 200 OK\r\ndate: then\r\ncontent-length: 12\r\n\r\nhello, world"
        );

        let mut wire = Vec::new();
        let mut r = local("");
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        let keep = respond(&mut wire, r, &mut out, closing).await.unwrap();
        assert!(!keep, "closing");
        assert_eq!(
            String::from_utf8(wire).unwrap(),
            "HTTP/1.1 304 Not Modified\r\ndate: then\r\nconnection: close\r\n\r\n"
        );

        let mut wire = Vec::new();
        let mut r = local("x");
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        let keep = respond(&mut wire, r, &mut out, open).await.unwrap();
        assert!(!keep, "the response closes");

        // The answer to HEAD keeps the member's length and sends no body.
        let mut wire = Vec::new();
        let mut r = local("");
        r.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
        let head = Asked {
            head_only: true,
            ..open
        };
        assert!(respond(&mut wire, r, &mut out, head).await.unwrap());
        assert_eq!(
            String::from_utf8(wire).unwrap(),
            "HTTP/1.1 200 OK\r\ndate: then\r\ncontent-length: 5\r\n\r\n"
        );

        // An HTTP/1.0 client that keeps the connection is told so.
        let mut wire = Vec::new();
        let old = Asked {
            http10: true,
            ..open
        };
        assert!(respond(&mut wire, local("ab"), &mut out, old)
            .await
            .unwrap());
        assert_eq!(
            String::from_utf8(wire).unwrap(),
            "HTTP/1.1 200 OK\r\ndate: then\r\nconnection: keep-alive\r\ncontent-length: 2\r\n\r\nab"
        );
    }

    #[test]
    fn dates_are_http_dates_and_numbers_decimal() {
        let mut out = BytesMut::new();
        date(&mut out);
        let text = std::str::from_utf8(&out).unwrap();
        assert!(httpdate::parse_http_date(text).is_ok(), "{text}");
        assert_eq!(itoa(0, &mut [0; 20]), b"0");
        assert_eq!(
            itoa(u64::MAX, &mut [0; 20]),
            u64::MAX.to_string().as_bytes()
        );
    }

    #[test]
    fn the_end_of_a_head_is_found_once_whatever_the_pieces() {
        let head = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n";
        assert_eq!(head_end(head, 0), Some(head.len()));
        assert_eq!(head_end(b"GET / HTTP/1.1\nHost: t\n\n", 0), Some(24));
        // Fed byte by byte, each look starts where the last one stopped.
        let mut scanned = 0;
        for end in 1..=head.len() {
            let found = head_end(&head[..end], scanned);
            assert_eq!(found.is_some(), end == head.len(), "at {end}");
            scanned = end;
        }
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: t\r\n", 0), None);
    }
}
