//! HTTP/1.1 to members. A connection carries one request at a time and is
//! driven by the task of the request that holds it: no connection task and
//! no channel between the request and its connection. The request goes out
//! while the response head comes in (a member may answer before it has read
//! the whole body); the response body is read from the connection as the
//! client takes it, and a connection whose exchange ended cleanly can carry
//! the next request.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Context, Poll, Waker};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;
use tokio_util::io::poll_read_buf;

use crate::coalesce::Defer;
use crate::http::{Forwarding, Outbound, RequestBody, MAX_HEADERS, MAX_HEAD_BYTES};
use crate::replay::Replay;
use crate::stall::Deadline;
use crate::tcp::Upstream;
use crate::wire::{self, decode_chunk, parse_length, take_bytes, Chunk, Step};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Bytes of request body queued for the member before writing them.
const WRITE_AHEAD: usize = 64 * 1024;
/// How much the read buffer grows by at a time.
const READ_CHUNK: usize = 8 * 1024;

/// An HTTP/1.1 connection to a member, idle or carrying one exchange.
pub(crate) struct Conn {
    io: Upstream,
    /// Bytes read from the member and not consumed yet.
    buf: BytesMut,
    /// It carried a request before: a failure before any answer may mean
    /// the member closed it while idle, so the request may go elsewhere.
    reused: bool,
    /// The deadline of the exchange under way. One per connection, moved
    /// on at each exchange: a timer per request would be an insert and a
    /// removal in the timer wheel, and a [`Deadline`] moved later is not
    /// even a reset.
    timer: Option<Pin<Box<Deadline>>>,
}

/// Why an exchange failed.
pub(crate) enum SendError {
    /// The member closed a reused connection before it read anything of
    /// the request; the request comes back untouched, safe to send again.
    Stale(Unsent),
    /// The client's request body failed (malformed, cut, too slow).
    ClientBody(BoxError),
    /// The member or the connection failed.
    Upstream(io::Error),
    /// No response head by the deadline.
    Timeout,
}

impl Conn {
    pub(crate) fn new(io: Upstream) -> Conn {
        Conn {
            io,
            buf: BytesMut::new(),
            reused: false,
            timer: None,
        }
    }

    /// Whether an idle connection can carry another request: the member
    /// has neither closed it nor sent anything unasked.
    pub(crate) fn is_open(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(Waker::noop());
        let mut probe = [0u8; 1];
        let mut probe = ReadBuf::new(&mut probe);
        matches!(
            Pin::new(&mut self.io).poll_read(&mut cx, &mut probe),
            Poll::Pending
        )
    }

    /// Marks a connection taken from the idle list.
    pub(crate) fn reuse(mut self) -> Conn {
        self.reused = true;
        self
    }

    /// Sends `req` and reads the member's response head. The member may
    /// take up to `timeout` for each step it owes: taking the next bytes of
    /// the request, and answering once the request is whole. A client that
    /// pauses its upload does not count against the member (its own limit
    /// is in the body it sends). The body of the response is read later,
    /// as the caller polls it.
    pub(crate) async fn send(
        self,
        out: Box<Outbound>,
        timeout: Duration,
    ) -> Result<Response<ResponseBody>, SendError> {
        // Encoded at once: the request's own fields (which share the
        // client connection's read buffer) are let go before the wait.
        let Outbound { req, forwarding } = *out;
        let out = Outgoing::new(req, &forwarding);
        self.exchange(out, timeout).await
    }

    /// A health check: a bodiless request (`target` in origin form, for
    /// `host`) on a connection of its own, answered by the status of a
    /// response head read by the same rules as traffic's, within `timeout`.
    pub(crate) async fn check(
        self,
        method: &Method,
        target: &str,
        host: &str,
        timeout: Duration,
    ) -> Result<StatusCode, SendError> {
        let mut head = BytesMut::with_capacity(128);
        head.extend_from_slice(method.as_str().as_bytes());
        head.extend_from_slice(b" ");
        head.extend_from_slice(target.as_bytes());
        head.extend_from_slice(b" HTTP/1.1\r\n");
        wire::field(&mut head, b"host", host.as_bytes());
        wire::field(&mut head, b"user-agent", b"keel-health-check");
        wire::field(&mut head, b"connection", b"close");
        head.extend_from_slice(b"\r\n");
        let out = Outgoing::bodiless(head.freeze(), method);
        let response = self.exchange(out, timeout).await?;
        Ok(response.status())
    }

    /// Sends a request that a stale connection gave back.
    pub(crate) async fn resend(
        self,
        unsent: Unsent,
        timeout: Duration,
    ) -> Result<Response<ResponseBody>, SendError> {
        let mut out = *unsent.0;
        out.head = out.encoded.clone();
        out.queued = out.head.len();
        out.sent_any = false;
        self.exchange(out, timeout).await
    }

    async fn exchange(
        mut self,
        mut out: Outgoing,
        timeout: Duration,
    ) -> Result<Response<ResponseBody>, SendError> {
        let mut timer = self
            .timer
            .take()
            .unwrap_or_else(|| Box::pin(Deadline::after(timeout)));
        // The timer counts only while Keel waits on the member, and starts
        // again whenever the member takes more of the request.
        let mut armed = false;
        let mut written = out.written;
        let mut head = None;
        let mut received = false;
        let result = poll_fn(|cx| {
            let polled = self.poll_exchange(&mut out, &mut head, &mut received, cx);
            if polled.is_ready() {
                return polled;
            }
            let on_member = out.queued > 0 || out.finished();
            if !on_member || out.written != written {
                armed = false;
            }
            written = out.written;
            if !on_member {
                return Poll::Pending;
            }
            if !armed {
                armed = true;
                timer.as_mut().set(Instant::now() + timeout);
            }
            match timer.as_mut().poll_passed(cx) {
                Poll::Ready(()) => Poll::Ready(Err(Failure::Timeout)),
                Poll::Pending => Poll::Pending,
            }
        })
        .await;
        self.timer = Some(timer);
        // Sent again only if the member cannot have acted on it: nothing of
        // it left, or it is idempotent (RFC 9110 §9.2.2) and no byte of
        // its body was taken.
        let stale = self.reused
            && !received
            && if out.idempotent {
                !out.started
            } else {
                !out.sent_any
            };
        match result {
            Ok(()) => {}
            Err(Failure::ClientBody(e)) => return Err(SendError::ClientBody(e)),
            Err(Failure::Timeout) => return Err(SendError::Timeout),
            Err(Failure::Closed | Failure::Io(_)) if stale => {
                return Err(SendError::Stale(Unsent(Box::new(out))));
            }
            Err(Failure::Closed) => return Err(SendError::Upstream(closed())),
            Err(Failure::Io(e) | Failure::Upstream(e)) => return Err(SendError::Upstream(e)),
        }
        let Some(head) = head else {
            return Err(SendError::Upstream(closed()));
        };
        let Some(framing) = head.framing(out.head_only) else {
            return Err(SendError::Upstream(invalid(
                "response framing headers contradict each other",
            )));
        };
        // Both a length and a coding may be an attempt at smuggling (RFC
        // 9112 §6.3): the body is read by its chunks and the connection
        // not trusted with another request.
        let both = head.chunked.is_some() && !matches!(head.length, Length::Absent);
        let reusable =
            head.keep_alive && !both && out.finished() && !matches!(framing, Framing::Close);
        let mut response = Response::new(ResponseBody {
            conn: Some(self),
            framing,
            reusable,
        });
        *response.status_mut() = head.status;
        *response.version_mut() = head.version;
        *response.headers_mut() = head.headers;
        // An answer without a body (to `HEAD`, or a 304) keeps the length
        // of the representation it describes; a 204 has none (RFC 9110
        // §8.6). Any other body is framed by the client's side from what
        // it sends.
        if let (Length::Bytes(n), true) =
            (head.length, describes_length(out.head_only, head.status))
        {
            response
                .headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(n));
        }
        if let Some(reason) = head.reason {
            response.extensions_mut().insert(reason);
        }
        Ok(response)
    }

    /// Writes what can be written, then reads what has arrived; the
    /// exchange ends with the response head, written out or not.
    fn poll_exchange(
        &mut self,
        out: &mut Outgoing,
        head: &mut Option<Head>,
        received: &mut bool,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), Failure>> {
        if let Err(e) = out.poll_write(&mut self.io, cx) {
            return Poll::Ready(Err(e));
        }
        loop {
            match parse_head(&mut self.buf) {
                Err(e) => return Poll::Ready(Err(Failure::Upstream(e))),
                // 1xx answers (100 Continue) are not passed on: the
                // client's server side answers its own `Expect`.
                Ok(Some(h))
                    if h.status.is_informational()
                        && h.status != StatusCode::SWITCHING_PROTOCOLS =>
                {
                    continue
                }
                Ok(Some(h)) => {
                    *head = Some(h);
                    return Poll::Ready(Ok(()));
                }
                Ok(None) => {}
            }
            if self.buf.len() > MAX_HEAD_BYTES {
                return Poll::Ready(Err(Failure::Upstream(invalid("response head too large"))));
            }
            self.buf.reserve(READ_CHUNK);
            match ready!(poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)) {
                Ok(0) => return Poll::Ready(Err(Failure::Closed)),
                Ok(_) => *received = true,
                Err(e) => return Poll::Ready(Err(Failure::Io(e))),
            }
        }
    }
}

/// Whether a response's `Content-Length` describes a representation it
/// does not carry, and so is passed on: the answer to `HEAD`, or a 304.
fn describes_length(head_only: bool, status: StatusCode) -> bool {
    head_only || status == StatusCode::NOT_MODIFIED
}

/// How a send failed, before it is told apart into a [`SendError`].
enum Failure {
    ClientBody(BoxError),
    /// The member closed the connection before a whole response head.
    Closed,
    /// The deadline passed first.
    Timeout,
    Io(io::Error),
    Upstream(io::Error),
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

fn closed() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "member closed the connection before a complete response",
    )
}

/// The methods that may be sent again after a failure (RFC 9110 §9.2.2).
pub(crate) fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// A request that a stale connection gave back before any of it was
/// taken: it can go out again on another connection.
pub(crate) struct Unsent(Box<Outgoing>);

/// A request on its way out: encoded bytes not yet written, and the body
/// still to read.
struct Outgoing {
    /// The encoded request head, whole.
    encoded: Bytes,
    /// What of `encoded` is still to write; body bytes queue behind it.
    head: Bytes,
    /// The request was `HEAD`: its answer has no body.
    head_only: bool,
    /// Its method is idempotent: sending it twice means what sending it
    /// once does.
    idempotent: bool,
    /// Some of it was written to the connection.
    sent_any: bool,
    /// Bytes written so far.
    written: u64,
    queue: VecDeque<Bytes>,
    queued: usize,
    body: Option<RequestBody>,
    chunked: bool,
    /// A frame of the body was asked for.
    started: bool,
    /// The body ended (and its last chunk is queued).
    body_done: bool,
    /// Writes to a plain member connection wait for the reads of this
    /// turn to be done.
    defer: Defer,
}

impl Outgoing {
    fn new(req: Request<RequestBody>, forwarding: &Forwarding) -> Outgoing {
        let (parts, body) = req.into_parts();
        let sized = parts.headers.contains_key(header::CONTENT_LENGTH);
        let empty = body.is_end_stream();
        let chunked = !sized && !empty;
        let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
        let mut head = BytesMut::with_capacity(512);
        head.extend_from_slice(parts.method.as_str().as_bytes());
        head.extend_from_slice(b" ");
        head.extend_from_slice(target.as_bytes());
        head.extend_from_slice(b" HTTP/1.1\r\n");
        for (name, value) in &parts.headers {
            wire::field(&mut head, name.as_str().as_bytes(), value.as_bytes());
        }
        forwarding.write_lines(&mut head);
        if chunked {
            head.extend_from_slice(b"transfer-encoding: chunked\r\n");
        }
        head.extend_from_slice(b"\r\n");
        let head = head.freeze();
        Outgoing {
            queued: head.len(),
            encoded: head.clone(),
            head,
            head_only: parts.method == Method::HEAD,
            idempotent: is_idempotent(&parts.method),
            sent_any: false,
            written: 0,
            queue: VecDeque::new(),
            body: Some(body),
            chunked,
            started: false,
            body_done: empty,
            defer: Defer::default(),
        }
    }

    /// A request that is only a head.
    fn bodiless(head: Bytes, method: &Method) -> Outgoing {
        Outgoing {
            queued: head.len(),
            encoded: head.clone(),
            head,
            head_only: method == Method::HEAD,
            idempotent: is_idempotent(method),
            sent_any: false,
            written: 0,
            queue: VecDeque::new(),
            body: None,
            chunked: false,
            started: false,
            body_done: true,
            defer: Defer::default(),
        }
    }

    fn push(&mut self, bytes: Bytes) {
        if !bytes.is_empty() {
            self.queued += bytes.len();
            self.queue.push_back(bytes);
        }
    }

    /// Everything of the request was written.
    fn finished(&self) -> bool {
        self.body_done && self.queued == 0
    }

    /// Moves the request out as far as the connection and the body allow.
    /// `Ok` whether or not it is all written: the caller also reads.
    fn poll_write(&mut self, io: &mut Upstream, cx: &mut Context<'_>) -> Result<(), Failure> {
        loop {
            // Gather what the body has ready, so a small request goes out
            // in one write.
            while !self.body_done && self.queued < WRITE_AHEAD {
                let Some(body) = self.body.as_mut() else {
                    break;
                };
                self.started = true;
                match Pin::new(body).poll_frame(cx) {
                    Poll::Pending => break,
                    Poll::Ready(Some(Err(e))) => return Err(Failure::ClientBody(e)),
                    Poll::Ready(Some(Ok(frame))) => self.queue_frame(frame),
                    Poll::Ready(None) => {
                        self.body_done = true;
                        if self.chunked {
                            self.push(Bytes::from_static(b"0\r\n\r\n"));
                        }
                    }
                }
            }
            if self.queued == 0 {
                // A TLS stream may hold records it could not send yet;
                // nothing else would ever ask it to.
                return match Pin::new(&mut *io).poll_flush(cx) {
                    Poll::Ready(Err(e)) => Err(Failure::Io(e)),
                    _ => Ok(()),
                };
            }
            let mut slices = [IoSlice::new(&[]); 16];
            let pending = std::iter::once(&self.head)
                .chain(self.queue.iter())
                .filter(|b| !b.is_empty());
            let mut n = 0;
            for (slot, bytes) in slices.iter_mut().zip(pending) {
                *slot = IoSlice::new(bytes);
                n += 1;
            }
            // A TLS stream defers its own writes (`Coalesce` under it).
            if matches!(io, Upstream::Plain(_)) && self.defer.poll(cx).is_pending() {
                return Ok(());
            }
            let written = match Pin::new(&mut *io).poll_write_vectored(cx, &slices[..n]) {
                Poll::Pending => return Ok(()),
                Poll::Ready(Ok(0)) => return Err(Failure::Closed),
                Poll::Ready(Ok(w)) => w,
                Poll::Ready(Err(e)) => return Err(Failure::Io(e)),
            };
            self.advance(written);
        }
    }

    fn queue_frame(&mut self, frame: Frame<Bytes>) {
        match frame.into_data() {
            Ok(data) if data.is_empty() => {}
            Ok(data) if self.chunked => {
                let mut size = BytesMut::with_capacity(18);
                wire::chunk_size(&mut size, data.len());
                self.push(size.freeze());
                self.push(data);
                self.push(Bytes::from_static(b"\r\n"));
            }
            Ok(data) => self.push(data),
            Err(frame) => {
                // Trailers end a chunked body; an identity body has no
                // place for them and they are dropped.
                if let (Ok(trailers), true) = (frame.into_trailers(), self.chunked) {
                    let mut last = BytesMut::new();
                    wire::last_chunk(&mut last, Some(&trailers));
                    self.push(last.freeze());
                    self.body_done = true;
                    self.body = None;
                }
            }
        }
    }

    fn advance(&mut self, mut written: usize) {
        self.sent_any |= written > 0;
        self.written += written as u64;
        self.queued -= written;
        let from_head = written.min(self.head.len());
        self.head.advance(from_head);
        written -= from_head;
        while written > 0 {
            let Some(front) = self.queue.front_mut() else {
                return;
            };
            if written >= front.len() {
                written -= front.len();
                self.queue.pop_front();
            } else {
                front.advance(written);
                written = 0;
            }
        }
    }
}

/// A parsed response head.
struct Head {
    status: StatusCode,
    version: Version,
    /// The end-to-end fields: the hop-by-hop ones are read into the fields
    /// below and not passed on.
    headers: HeaderMap,
    reason: Option<hyper::ext::ReasonPhrase>,
    keep_alive: bool,
    /// With a `Transfer-Encoding`: whether it is `chunked` alone.
    chunked: Option<bool>,
    length: Length,
}

/// What a response's `Content-Length` fields say.
#[derive(Clone, Copy)]
enum Length {
    Absent,
    Bytes(u64),
    /// Unparsable, or more than one field.
    Unusable,
}

/// What a response field means to the client reading it.
enum Field {
    Connection,
    TransferEncoding,
    ContentLength,
    Upgrade,
    /// The other fields of [`HOP_BY_HOP`]: dropped.
    OtherHop,
    EndToEnd,
}

/// Sorts a field name by length first: a response's fields are compared
/// with one or two names each, not with every hop-by-hop one.
fn classify(name: &str) -> Field {
    let is = |known: &str| name.eq_ignore_ascii_case(known);
    match name.len() {
        2 if is("te") => Field::OtherHop,
        7 if is("upgrade") => Field::Upgrade,
        10 if is("connection") => Field::Connection,
        10 if is("keep-alive") => Field::OtherHop,
        14 if is("content-length") => Field::ContentLength,
        16 if is("proxy-connection") => Field::OtherHop,
        17 if is("transfer-encoding") => Field::TransferEncoding,
        18 if is("proxy-authenticate") => Field::OtherHop,
        _ => Field::EndToEnd,
    }
}

/// The items of a comma-separated field value, trimmed.
fn tokens(value: &[u8]) -> impl DoubleEndedIterator<Item = &[u8]> {
    value.split(|b| *b == b',').map(<[u8]>::trim_ascii)
}

/// Parses a response head off the front of `buf`; `None` until it is whole.
fn parse_head(buf: &mut BytesMut) -> io::Result<Option<Head>> {
    if buf.is_empty() {
        return Ok(None);
    }
    // Left uninitialised: the parser writes the fields it finds.
    let mut fields = [const { MaybeUninit::<httparse::Header>::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut []);
    let config = httparse::ParserConfig::default();
    let len = match config.parse_response_with_uninit_headers(&mut parsed, buf, &mut fields) {
        Ok(httparse::Status::Complete(len)) if len <= MAX_HEAD_BYTES => len,
        Ok(httparse::Status::Complete(_)) => return Err(invalid("response head too large")),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(invalid("too many response headers")),
        Err(e) => return Err(invalid(&format!("malformed response head: {e}"))),
    };
    let status = parsed
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or_else(|| invalid("malformed response status"))?;
    let version = if parsed.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let reason = parsed
        .reason
        .filter(|r| Some(*r) != status.canonical_reason() && !r.is_empty())
        .and_then(|r| hyper::ext::ReasonPhrase::try_from(r.as_bytes().to_vec()).ok());
    let head = Bytes::copy_from_slice(&buf[..len]);
    let base = buf.as_ptr() as usize;
    let switching = status == StatusCode::SWITCHING_PROTOCOLS;
    let (mut close, mut keep_alive) = (false, false);
    // Besides its options, `Connection` may name more hop-by-hop fields (rare).
    let mut named: Vec<&[u8]> = Vec::new();
    for field in parsed.headers.iter() {
        if let Field::Connection = classify(field.name) {
            for token in tokens(field.value) {
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    keep_alive = true;
                } else if !token.is_empty() {
                    named.push(token);
                }
            }
        }
    }
    let mut headers = HeaderMap::with_capacity(parsed.headers.len());
    let mut chunked = None;
    let mut length = Length::Absent;
    for field in parsed.headers.iter() {
        match classify(field.name) {
            // Only `chunked`, once: Keel passes the body on decoded and
            // without this field, so any other coding would reach the
            // client undeclared.
            Field::TransferEncoding => {
                for token in tokens(field.value) {
                    chunked = Some(chunked.is_none() && token.eq_ignore_ascii_case(b"chunked"));
                }
                continue;
            }
            // The length is framing: the client's side writes its own from
            // the body it sends (a member's, passed on beside a chunked
            // body, would end the body early and desync the client).
            Field::ContentLength => {
                length = match (length, parse_length(field.value)) {
                    (Length::Absent, Some(n)) => Length::Bytes(n),
                    _ => Length::Unusable,
                };
                continue;
            }
            // A switch of protocols keeps the protocol it switches to.
            Field::Upgrade if switching => {
                let name = field.name.as_bytes();
                named.retain(|t| !t.eq_ignore_ascii_case(name));
            }
            Field::Connection | Field::Upgrade | Field::OtherHop => continue,
            Field::EndToEnd => {}
        }
        if named
            .iter()
            .any(|t| t.eq_ignore_ascii_case(field.name.as_bytes()))
        {
            continue;
        }
        let name = HeaderName::from_bytes(field.name.as_bytes())
            .map_err(|_| invalid("malformed response header name"))?;
        // Values share one copy of the head (one allocation, not one each).
        let start = field.value.as_ptr() as usize - base;
        let value = HeaderValue::from_maybe_shared(head.slice(start..start + field.value.len()))
            .map_err(|_| invalid("malformed response header value"))?;
        headers.append(name, value);
    }
    buf.advance(len);
    let keep_alive = !close && (version == Version::HTTP_11 || keep_alive);
    Ok(Some(Head {
        status,
        version,
        headers,
        reason,
        keep_alive,
        chunked,
        length,
    }))
}

impl Head {
    /// How the body is delimited (RFC 9112 §6.3); `None` when the
    /// member's `Content-Length` fields are unusable.
    fn framing(&self, head_only: bool) -> Option<Framing> {
        let s = self.status;
        // Malformed framing fields are refused even where no body follows:
        // a member that sends them cannot be trusted with the next answer.
        if matches!(self.length, Length::Unusable) || self.chunked == Some(false) {
            return None;
        }
        if s == StatusCode::SWITCHING_PROTOCOLS {
            return Some(Framing::Upgraded);
        }
        if head_only || s == StatusCode::NO_CONTENT || s == StatusCode::NOT_MODIFIED {
            return Some(Framing::Length(0));
        }
        match (self.chunked, self.length) {
            (Some(true), _) => Some(Framing::Chunked(Chunk::Size)),
            (Some(false), _) | (None, Length::Unusable) => None,
            (None, Length::Absent) => Some(Framing::Close),
            (None, Length::Bytes(n)) => Some(Framing::Length(n)),
        }
    }
}

/// How a response body ends.
enum Framing {
    /// After this many more bytes.
    Length(u64),
    /// At its last chunk.
    Chunked(Chunk),
    /// When the member closes the connection.
    Close,
    /// The connection left HTTP (101): it is handed over whole.
    Upgraded,
}

/// A member's response body, read off the connection as it is polled.
pub(crate) struct ResponseBody {
    conn: Option<Conn>,
    framing: Framing,
    /// The connection can carry another request once this body is over.
    reusable: bool,
}

impl ResponseBody {
    /// The connection, if the body is over and the exchange left it fit
    /// for another request.
    pub(crate) fn take_reusable(&mut self) -> Option<Conn> {
        if self.reusable && self.is_end_stream() {
            self.reusable = false;
            self.conn.take()
        } else {
            None
        }
    }

    /// The connection as a byte stream, after the member switched
    /// protocols; bytes it sent after its response head come first.
    pub(crate) fn into_upgraded(mut self) -> Option<Upgraded> {
        match (&self.framing, self.conn.take()) {
            (Framing::Upgraded, Some(conn)) => Some(Replay::new(conn.buf.freeze(), conn.io)),
            _ => None,
        }
    }

    fn fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let Some(conn) = self.conn.as_mut() else {
            return Poll::Ready(Ok(0));
        };
        conn.buf.reserve(READ_CHUNK);
        poll_read_buf(Pin::new(&mut conn.io), cx, &mut conn.buf)
    }

    fn buffered(&mut self) -> Option<&mut BytesMut> {
        self.conn
            .as_mut()
            .map(|c| &mut c.buf)
            .filter(|b| !b.is_empty())
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            match this.framing {
                Framing::Upgraded | Framing::Length(0) | Framing::Chunked(Chunk::Done) => {
                    return Poll::Ready(None)
                }
                Framing::Length(left) => {
                    if let Some(buf) = this.buffered() {
                        let take = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                        let data = take_bytes(buf, take);
                        this.framing = Framing::Length(left - take as u64);
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                Framing::Close => {
                    if let Some(buf) = this.buffered() {
                        let data = take_bytes(buf, buf.len());
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                Framing::Chunked(ref mut state) => {
                    let Some(conn) = this.conn.as_mut() else {
                        return Poll::Ready(None);
                    };
                    match decode_chunk(state, &mut conn.buf) {
                        Ok(Step::Frame(frame)) => return Poll::Ready(Some(Ok(frame))),
                        Ok(Step::Next) => continue,
                        Ok(Step::More) => {}
                        Err(e) => {
                            this.framing = Framing::Length(0);
                            this.reusable = false;
                            return Poll::Ready(Some(Err(e.into())));
                        }
                    }
                }
            }
            match ready!(this.fill(cx)) {
                Ok(0) if matches!(this.framing, Framing::Close) => {
                    this.framing = Framing::Length(0);
                    this.conn = None;
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    this.framing = Framing::Length(0);
                    this.reusable = false;
                    return Poll::Ready(Some(Err("member closed the connection mid-body".into())));
                }
                Ok(_) => {}
                Err(e) => {
                    this.framing = Framing::Length(0);
                    this.reusable = false;
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(
            self.framing,
            Framing::Upgraded | Framing::Length(0) | Framing::Chunked(Chunk::Done)
        )
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Length(n) => SizeHint::with_exact(n),
            Framing::Upgraded => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

/// Reads `buf` as a member's answer: its head, then its body by the
/// framing that head gives (see `crate::fuzz`).
pub(crate) fn fuzz_response(buf: &mut BytesMut) {
    let Ok(Some(head)) = parse_head(buf) else {
        return;
    };
    match head.framing(false) {
        Some(Framing::Chunked(mut state)) => loop {
            match decode_chunk(&mut state, buf) {
                Ok(Step::Frame(_) | Step::Next) if !matches!(state, Chunk::Done) => {}
                _ => return,
            }
        },
        Some(Framing::Length(n)) => {
            let take = buf.len().min(usize::try_from(n).unwrap_or(usize::MAX));
            let _ = take_bytes(buf, take);
        }
        _ => {}
    }
}

/// A member connection that switched protocols: what the member sent
/// after its 101 head is read first, then the connection itself.
pub(crate) type Upgraded = Replay<Upstream>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_framing_follows_rfc_9112() {
        let head = |raw: &[u8]| parse_head(&mut BytesMut::from(raw)).unwrap().unwrap();
        let h = head(b"HTTP/1.1 200 OK\r\ncontent-length: 12\r\n\r\n");
        assert!(matches!(h.framing(false), Some(Framing::Length(12))) && h.keep_alive);
        assert!(matches!(h.framing(true), Some(Framing::Length(0))));
        let h = head(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n");
        assert!(matches!(
            h.framing(false),
            Some(Framing::Chunked(Chunk::Size))
        ));
        // A transfer coding Keel would drop undeclared (it passes bodies on
        // decoded and without the field) is refused.
        let h = head(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\ncontent-length: 3\r\n\r\n",
        );
        assert!(h.framing(false).is_none());
        let h = head(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n");
        assert!(matches!(h.framing(false), Some(Framing::Close)) && !h.keep_alive);
        let h = head(b"HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n");
        assert!(!h.keep_alive);
        let h = head(b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\ncontent-length: 1\r\n\r\n");
        assert!(h.keep_alive);
        let h = head(b"HTTP/1.1 204 No Content\r\n\r\n");
        assert!(matches!(h.framing(false), Some(Framing::Length(0))));
        let h = head(b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n");
        assert!(h.framing(false).is_none());
        let h = head(b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n");
        assert!(h.framing(false).is_none());
        let h = head(b"HTTP/1.1 299 Fine Indeed\r\ncontent-length: 0\r\n\r\n");
        assert!(h.reason.is_some());
    }

    #[test]
    fn hop_by_hop_fields_are_read_not_passed_on() {
        let head = |raw: &[u8]| parse_head(&mut BytesMut::from(raw)).unwrap().unwrap();
        let h = head(
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\n\
              Keep-Alive: timeout=5\r\nTransfer-Encoding: chunked\r\nServer: s\r\n\
              Content-Length: 3\r\n\r\n",
        );
        let names: Vec<&str> = h.headers.keys().map(|n| n.as_str()).collect();
        // The length is framing, not passed on: with a chunked body it
        // would end that body early at the client.
        assert_eq!(names, ["server"]);
        assert!(matches!(h.length, Length::Bytes(3)));
        assert!(matches!(
            h.framing(false),
            Some(Framing::Chunked(Chunk::Size))
        ));
        // `Trailer` declares the trailers to come: it stays.
        let h = head(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-digest\r\n\r\n");
        assert_eq!(h.headers.get("trailer").unwrap(), "x-digest");
        assert!(h.keep_alive);
        assert!(matches!(
            h.framing(false),
            Some(Framing::Chunked(Chunk::Size))
        ));
        // A switch of protocols keeps the protocol it switches to.
        let h = head(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n");
        assert_eq!(h.headers.get("upgrade").unwrap(), "websocket");
        assert!(h.headers.get("connection").is_none());
        let h =
            head(b"HTTP/1.1 426 Upgrade Required\r\nUpgrade: TLS/1.2\r\ncontent-length: 0\r\n\r\n");
        assert!(h.headers.get("upgrade").is_none());
    }

    #[test]
    fn every_hop_by_hop_name_is_classified_as_one() {
        for name in &crate::http::HOP_BY_HOP {
            for spelling in [name.as_str().to_owned(), name.as_str().to_ascii_uppercase()] {
                assert!(
                    !matches!(classify(&spelling), Field::EndToEnd | Field::ContentLength),
                    "{spelling}"
                );
            }
        }
        assert!(matches!(classify("Content-Length"), Field::ContentLength));
        assert!(matches!(classify("x-upgrade"), Field::EndToEnd));
    }

    #[test]
    fn lengths_are_digits_only_and_codings_chunked_only() {
        for (value, want) in [
            (&b"5"[..], Some(5)),
            (b"0", Some(0)),
            (b"18446744073709551615", None),
            (b"9999999999999999999", Some(9_999_999_999_999_999_999)),
            (b"+5", None),
            (b"-1", None),
            (b"1 2", None),
            (b"5, 5", None),
            (b"0x5", None),
            (b"", None),
            (b"99999999999999999999999", None),
        ] {
            assert_eq!(
                parse_length(value),
                want,
                "{}",
                String::from_utf8_lossy(value)
            );
        }
        let framing = |raw: &[u8]| {
            let h = parse_head(&mut BytesMut::from(raw)).unwrap().unwrap();
            h.framing(false).map(|f| matches!(f, Framing::Chunked(_)))
        };
        assert_eq!(
            framing(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Some(true)
        );
        for refused in [
            &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: +1\r\n\r\n",
        ] {
            assert_eq!(
                framing(refused),
                None,
                "{}",
                String::from_utf8_lossy(refused)
            );
        }
    }

    #[tokio::test]
    async fn an_answer_sent_before_the_member_reset_the_upload_is_read() {
        // The member answers with the body still coming, then closes with
        // it unread: its kernel resets the connection. Everything arrives
        // while the exchange is not polled (one thread), so its next write
        // fails before it reads; the answer is in the socket all the same.
        let member = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let io = tokio::net::TcpStream::connect(member.local_addr().unwrap())
            .await
            .unwrap();
        let (mut accepted, _) = member.accept().unwrap();
        let size = 64 << 20;
        let head = format!("PUT /up HTTP/1.1\r\nhost: t\r\ncontent-length: {size}\r\n\r\n");
        let mut out = Outgoing::bodiless(Bytes::from(head), &Method::PUT);
        out.push(Bytes::from(vec![b'x'; size]));
        let exchange = Conn::new(Upstream::Plain(io)).exchange(out, Duration::from_secs(5));
        tokio::pin!(exchange);
        // Until both sides' buffers are full.
        let waited = tokio::time::timeout(Duration::from_millis(200), &mut exchange).await;
        assert!(waited.is_err(), "the exchange ended with its upload unsent");
        std::io::Write::write_all(
            &mut accepted,
            b"HTTP/1.1 413 Content Too Large\r\ncontent-length: 3\r\nconnection: close\r\n\r\nno\n",
        )
        .unwrap();
        drop(accepted);
        std::thread::sleep(Duration::from_millis(50));
        let response = exchange.await.map_err(|_| "no answer").unwrap();
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await
            .map_err(|_| "body cut")
            .unwrap();
        assert_eq!(&body.to_bytes()[..], b"no\n");
    }

    #[test]
    fn malformed_response_heads_are_refused() {
        for bad in [
            &b"HTTP/1.1 2000 OK\r\n\r\n"[..],
            b"garbage\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nbad header\r\n\r\n",
        ] {
            assert!(parse_head(&mut BytesMut::from(bad)).is_err());
        }
        // A head over the limit is refused even when it arrived whole in
        // one read, as a client's request head is.
        let mut big = b"HTTP/1.1 200 OK\r\nx-a: ".to_vec();
        big.resize(MAX_HEAD_BYTES + 16, b'a');
        big.extend_from_slice(b"\r\ncontent-length: 0\r\n\r\n");
        assert!(parse_head(&mut BytesMut::from(&big[..])).is_err());
        assert!(
            parse_head(&mut BytesMut::from(&b"HTTP/1.1 200 OK\r\ncontent-le"[..]))
                .unwrap()
                .is_none()
        );
    }
}
