//! The HTTP/1.1 server side for the common request: a keep-alive request
//! without a body (a `GET`, most of a web service's traffic), served and
//! answered here, without hyper's general server.
//!
//! hyper's HTTP/1 server costs about as much per request as everything
//! else Keel does for it (`tests/bench/instructions.sh`, BENCHMARKS.md):
//! its dispatcher, a timer set and removed per request, its write queue.
//! This loop reads a head, hands the request to [`Conn::handle`] like
//! hyper would, writes the response head and body into one buffer and
//! sends it. The first request it does not take (a body, an upgrade,
//! `Expect`, HTTP/1.0, `HEAD`, `Connection: close`, anything malformed or
//! too large) goes to hyper with the bytes already read, and hyper serves
//! the rest of that connection: its answers to bad input (400, 431) and
//! its handling of bodies, upgrades and old clients stay as they were.

use std::future::{poll_fn, Future};
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::{ClientBody, Conn, ProxyBody, MAX_HEADERS, MAX_HEAD_BYTES};
use crate::coalesce::Coalesce;
use crate::wire;

/// Room made in the read buffer before each read.
const READ_SIZE: usize = 8 * 1024;
/// Body pieces up to this size are copied in behind the head, so a small
/// response leaves in one write; larger ones are written as they are.
const COPY_BODY: usize = 4 * 1024;

/// The stream a connection is served on: what was read ahead of hyper
/// (empty until a request is handed over), then the client's stream.
pub(super) type Stream<IO> = Coalesce<Replay<IO>>;

/// Serves requests on `io` until the client closes, the head timeout
/// passes, `stop` is set (the listener is closing: in-flight requests
/// finish, then the connection closes) or a request is handed to hyper,
/// which `hyper` then serves to the end.
pub(super) async fn serve<IO, H, F>(
    io: IO,
    conn: Arc<Conn>,
    header_timeout: Duration,
    stop: Arc<AtomicBool>,
    hyper: H,
) where
    IO: AsyncRead + AsyncWrite + Unpin,
    H: FnOnce(Stream<IO>) -> F,
    F: Future<Output = ()>,
{
    let mut io = Coalesce::new(Replay {
        ahead: Bytes::new(),
        io,
    });
    let mut buf = BytesMut::with_capacity(READ_SIZE);
    let mut out = BytesMut::with_capacity(1024);
    let mut timer = pin!(tokio::time::sleep(header_timeout));
    loop {
        // A request's head must be whole within the header timeout, and an
        // idle connection is closed after as long.
        timer.as_mut().reset(Instant::now() + header_timeout);
        // How far the buffer is known to hold no end of a head: a head that
        // trickles in is scanned once, and parsed once it is whole, not
        // parsed again from its start at every read.
        let mut scanned = 0;
        let req = loop {
            // Most heads come whole in one read: parsed at once.
            let parsed = if scanned == 0 || head_end(&buf, scanned).is_some() {
                parse(&mut buf)
            } else {
                Parsed::Partial
            };
            scanned = buf.len();
            match parsed {
                Parsed::Request(req) => break req,
                Parsed::Partial if buf.len() < MAX_HEAD_BYTES => {}
                Parsed::Partial | Parsed::Other => {
                    io.io.ahead = buf.freeze();
                    return hyper(io).await;
                }
            }
            match read(&mut io, &mut buf, timer.as_mut(), &stop).await {
                Read::Bytes => {}
                Read::Closed => return,
                // A head begun and not finished in time is answered 408
                // (an idle keep-alive connection just closes).
                Read::TimedOut if buf.is_empty() => return,
                Read::TimedOut => {
                    tracing::debug!(client.addr = %conn.peer, ?header_timeout, "request head not received in time: 408");
                    let _ = io.write_all(TIMED_OUT).await;
                    let _ = io.flush().await;
                    return;
                }
            }
        };
        // A client that leaves while its member is silent is let go at
        // once, and so is the member's connection.
        let Some(response) = watch(&mut io, &mut buf, conn.handle(req)).await else {
            tracing::debug!(client.addr = %conn.peer, "client closed the connection before its answer");
            return;
        };
        let closing = stop.load(Relaxed);
        match respond(&mut io, response, &mut out, closing).await {
            Ok(true) if !stop.load(Relaxed) => {}
            Ok(_) => return,
            Err(e) => {
                tracing::debug!(client.addr = %conn.peer, error = %e, "http connection ended");
                return;
            }
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

/// Waits for `answer` while watching the client: bytes it sends meanwhile
/// (pipelined requests) are kept in `buf`, up to the largest head; `None`
/// if it closes or fails first, and `answer` is dropped with whatever it
/// held (the member's connection).
async fn watch<IO, F>(io: &mut IO, buf: &mut BytesMut, answer: F) -> Option<F::Output>
where
    IO: AsyncRead + Unpin,
    F: Future,
{
    let mut answer = pin!(answer);
    poll_fn(|cx| {
        if let Poll::Ready(r) = answer.as_mut().poll(cx) {
            return Poll::Ready(Some(r));
        }
        if buf.len() >= MAX_HEAD_BYTES {
            return Poll::Pending;
        }
        buf.reserve(READ_SIZE);
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

async fn read<IO: AsyncRead + Unpin>(
    io: &mut IO,
    buf: &mut BytesMut,
    mut timer: Pin<&mut Sleep>,
    stop: &AtomicBool,
) -> Read {
    poll_fn(|cx| {
        if stop.load(Relaxed) {
            return Poll::Ready(Read::Closed);
        }
        buf.reserve(READ_SIZE);
        match tokio_util::io::poll_read_buf(Pin::new(&mut *io), cx, buf) {
            Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => Poll::Ready(Read::Closed),
            Poll::Ready(Ok(_)) => Poll::Ready(Read::Bytes),
            Poll::Pending if timer.as_mut().poll(cx).is_ready() => Poll::Ready(Read::TimedOut),
            Poll::Pending => Poll::Pending,
        }
    })
    .await
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
    /// A whole head of a request served here, taken off the buffer (boxed,
    /// as requests travel: see `http::serve`).
    Request(Box<Request<ClientBody>>),
    /// Part of a head so far.
    Partial,
    /// A head this loop leaves to hyper, whole or not, valid or not.
    Other,
}

/// Parses the request head at the front of `buf`.
fn parse(buf: &mut BytesMut) -> Parsed {
    if buf.is_empty() {
        return Parsed::Partial;
    }
    let mut fields = [const { MaybeUninit::<httparse::Header>::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut []);
    let config = httparse::ParserConfig::default();
    let len = match config.parse_request_with_uninit_headers(&mut parsed, buf, &mut fields) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Other,
    };
    let (Some(method), Some(target), Some(1)) = (parsed.method, parsed.path, parsed.version) else {
        return Parsed::Other;
    };
    let method = match Method::from_bytes(method.as_bytes()) {
        Ok(m) if m != Method::HEAD && m != Method::CONNECT => m,
        _ => return Parsed::Other,
    };
    if !target.starts_with('/') {
        return Parsed::Other;
    }
    if !parsed.headers.iter().all(served_here) {
        return Parsed::Other;
    }
    // Values and the target share one copy of the head (one allocation,
    // not one each); the read buffer is kept for the next request.
    let head = Bytes::copy_from_slice(&buf[..len]);
    let base = buf.as_ptr() as usize;
    let slice = |s: &[u8]| {
        let start = s.as_ptr() as usize - base;
        head.slice(start..start + s.len())
    };
    let Ok(uri) = Uri::from_maybe_shared(slice(target.as_bytes())) else {
        return Parsed::Other;
    };
    let mut headers = HeaderMap::with_capacity(parsed.headers.len());
    for field in parsed.headers.iter() {
        let Ok(name) = HeaderName::from_bytes(field.name.as_bytes()) else {
            return Parsed::Other;
        };
        let Ok(value) = HeaderValue::from_maybe_shared(slice(field.value)) else {
            return Parsed::Other;
        };
        headers.append(name, value);
    }
    buf.advance(len);
    let mut req = Request::new(ClientBody::Empty);
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = Version::HTTP_11;
    *req.headers_mut() = headers;
    Parsed::Request(Box::new(req))
}

/// Parses what `data` holds as request heads, one after another, the way
/// [`serve`] does, and settles each one's authority (see `crate::fuzz`).
pub(crate) fn fuzz_request(data: &[u8]) {
    let mut buf = BytesMut::from(data);
    let _ = head_end(&buf, buf.len() / 2);
    while let Parsed::Request(mut req) = parse(&mut buf) {
        let _ = crate::route::settle_authority(&mut req);
        let _ = crate::route::host_of(&req);
    }
}

/// Whether a request with this field is served here: not one with a body,
/// one that changes what the connection does (`Upgrade`, `Expect`,
/// `Connection` other than `keep-alive`), or one that asks for trailers.
fn served_here(field: &httparse::Header<'_>) -> bool {
    let is = |known: &str| field.name.eq_ignore_ascii_case(known);
    match field.name.len() {
        2 => !is("te"),
        6 => !is("expect"),
        7 => !is("upgrade"),
        10 => !is("connection") || field.value.trim_ascii().eq_ignore_ascii_case(b"keep-alive"),
        14 => !is("content-length"),
        17 => !is("transfer-encoding"),
        _ => true,
    }
}

/// Writes `response` and its body; whether the connection can carry
/// another request. `closing` adds `Connection: close`.
async fn respond<IO: AsyncWrite + Unpin>(
    io: &mut IO,
    response: Response<ProxyBody>,
    out: &mut BytesMut,
    closing: bool,
) -> io::Result<bool> {
    let (parts, body) = response.into_parts();
    let mut body = pin!(body);
    out.clear();
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
    // An interim answer no request here asked for (`101` without an
    // `Upgrade`) leaves the connection's state unclear: it ends with it.
    let mut keep_alive = !closing && !status.is_informational();
    // No body after 1xx, 204 and 304 (RFC 9112 §6.3).
    let bodiless = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let mut has_date = false;
    for (name, value) in &parts.headers {
        if name == header::CONTENT_LENGTH {
            // A body is framed by what is sent, never by a length a
            // member claimed; a 304 keeps its representation's length.
            if !bodiless || status == StatusCode::NO_CONTENT {
                continue;
            }
        } else if name == header::DATE {
            has_date = true;
        } else if name == header::TRANSFER_ENCODING {
            // The framing written here is this loop's own.
            continue;
        } else if name == header::CONNECTION
            && value
                .as_bytes()
                .split(|b| *b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
        {
            keep_alive = false;
        }
        wire::field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    if !has_date {
        out.extend_from_slice(b"date: ");
        date(out);
        out.extend_from_slice(b"\r\n");
    }
    if closing && !parts.headers.contains_key(header::CONNECTION) {
        out.extend_from_slice(b"connection: close\r\n");
    }
    let chunked = if bodiless {
        false
    } else if let Some(n) = body.size_hint().exact() {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(itoa(n, &mut [0; 20]));
        out.extend_from_slice(b"\r\n");
        false
    } else {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        true
    };
    out.extend_from_slice(b"\r\n");
    drop(parts);
    if bodiless {
        io.write_all(out).await?;
        io.flush().await?;
        return Ok(keep_alive);
    }
    while !body.is_end_stream() {
        // What the body has at once goes out with the head; the buffer is
        // sent before waiting for more.
        let frame = match poll_fn(|cx| Poll::Ready(body.as_mut().poll_frame(cx))).await {
            Poll::Ready(frame) => frame,
            Poll::Pending => {
                send(io, out).await?;
                poll_fn(|cx| body.as_mut().poll_frame(cx)).await
            }
        };
        let data = match frame {
            None => break,
            Some(Err(e)) => return Err(io::Error::other(e)),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => data,
                // Trailers: a client that did not ask for them (`TE`) is
                // served here, and may go without.
                Err(_) => continue,
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
        }
        if chunked {
            out.extend_from_slice(b"\r\n");
        }
    }
    if chunked {
        out.extend_from_slice(b"0\r\n\r\n");
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

/// A stream that first yields bytes already read from it.
pub(super) struct Replay<IO> {
    ahead: Bytes,
    io: IO,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Replay<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.ahead.is_empty() {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        }
        let n = this.ahead.len().min(buf.remaining());
        buf.put_slice(&this.ahead[..n]);
        this.ahead.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Replay<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(head: &[u8]) -> (Parsed, usize) {
        let mut buf = BytesMut::from(head);
        let parsed = parse(&mut buf);
        (parsed, buf.len())
    }

    #[test]
    fn a_plain_get_is_served_here_and_taken_off_the_buffer() {
        let (parsed, left) = parse_all(
            b"GET /a?b=1 HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\nX-A: 1\r\nx-a: 2\r\n\r\nGET /next",
        );
        let Parsed::Request(req) = parsed else {
            panic!("not served here");
        };
        assert_eq!(left, b"GET /next".len(), "the next request stays");
        assert_eq!(req.method(), Method::GET);
        assert_eq!(req.uri(), "/a?b=1");
        assert_eq!(req.version(), Version::HTTP_11);
        assert_eq!(req.headers()["host"], "x");
        let xa: Vec<_> = req.headers().get_all("x-a").iter().collect();
        assert_eq!(xa, ["1", "2"]);
        assert!(req.body().is_end_stream());
    }

    #[test]
    fn requests_with_bodies_upgrades_and_old_versions_go_to_hyper() {
        for head in [
            &b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"[..],
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            b"PUT / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n",
            b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n",
            b"GET / HTTP/1.1\r\nTE: trailers\r\n\r\n",
            b"GET / HTTP/1.0\r\n\r\n",
            b"HEAD / HTTP/1.1\r\n\r\n",
            b"GET http://x/ HTTP/1.1\r\n\r\n",
            b"OPTIONS * HTTP/1.1\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        ] {
            let (parsed, left) = parse_all(head);
            assert!(
                matches!(parsed, Parsed::Other),
                "{}",
                String::from_utf8_lossy(head)
            );
            assert_eq!(left, head.len(), "nothing taken");
        }
    }

    #[test]
    fn malformed_and_partial_heads_are_never_taken() {
        let (parsed, _) = parse_all(b"\x16\x03\x01\x02\x00garbage\r\n\r\n");
        assert!(matches!(parsed, Parsed::Other));
        let (parsed, _) = parse_all(b"GET / HTTP/1.1\r\nBad Name: v\r\n\r\n");
        assert!(matches!(parsed, Parsed::Other));
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend(format!("x-{i}: v\r\n").as_bytes());
        }
        many.extend(b"\r\n");
        assert!(matches!(parse_all(&many).0, Parsed::Other));
        let whole = b"GET /path HTTP/1.1\r\nHost: x\r\n\r\n";
        for cut in 1..whole.len() {
            let (parsed, left) = parse_all(&whole[..cut]);
            assert!(matches!(parsed, Parsed::Partial), "cut at {cut}");
            assert_eq!(left, cut);
        }
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
        let mut out = BytesMut::new();
        let mut wire = Vec::new();
        let keep = respond(&mut wire, local("hello"), &mut out, false)
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
        respond(&mut wire, r, &mut out, false).await.unwrap();
        assert_eq!(
            String::from_utf8(wire).unwrap(),
            "HTTP/1.1 200 OK\r\ndate: then\r\ncontent-length: 12\r\n\r\nhello, world"
        );

        let mut wire = Vec::new();
        let mut r = local("");
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        let keep = respond(&mut wire, r, &mut out, true).await.unwrap();
        assert!(!keep, "closing");
        assert_eq!(
            String::from_utf8(wire).unwrap(),
            "HTTP/1.1 304 Not Modified\r\ndate: then\r\nconnection: close\r\n\r\n"
        );

        let mut wire = Vec::new();
        let mut r = local("x");
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        let keep = respond(&mut wire, r, &mut out, false).await.unwrap();
        assert!(!keep, "the response closes");
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

    #[tokio::test]
    async fn bytes_read_ahead_are_replayed_first() {
        use tokio::io::AsyncReadExt;
        let mut r = Replay {
            ahead: Bytes::from_static(b"ahead "),
            io: &b"then the stream"[..],
        };
        let mut all = String::new();
        r.read_to_string(&mut all).await.unwrap();
        assert_eq!(all, "ahead then the stream");
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
