//! Layer 7: HTTP/1.1 and HTTP/2 from clients (cleartext or TLS), balanced request by request over reused
//! HTTP/1.1 connections to members. Bodies stream both ways.

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use keel_model::{HashOn, HttpVersion, Protocol};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::either::Either;
use tokio_util::task::TaskTracker;

use crate::client::{self, SendError};
use crate::coalesce::Coalesce;
use crate::error::{ProxyError, Retry, Side};
use crate::member::{MemberState, Outstanding};
use crate::metrics::{Kept, ListenerCounts, MemberCounts};
use crate::plan::{ListenerPlan, PoolPlan, SharedPlan};
use crate::proxy_protocol::{Addresses, PackedAddresses};
use crate::replay::Replay;
use crate::route::{self, Route};
use crate::signal::{Signal, Until, Wait};
use crate::stall::{Stall, WriteStall};
use crate::tls::Alpn;
use crate::workers::Ref;
use crate::{sticky, tcp};
use h2_member::Stream;

pub(crate) mod h1;
pub(crate) mod h2_member;
mod hpack;

/// The largest request head accepted; a larger one is answered 431.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// The most header fields accepted in a request; more are answered 431.
pub const MAX_HEADERS: usize = 100;
/// The longest request target accepted; a longer one is answered 414.
pub const MAX_URI_BYTES: usize = 16 * 1024;
/// Attempts at connecting to members for one request.
const MAX_CONNECT_ATTEMPTS: usize = 3;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Which HTTP version a client connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Http1,
    Http2,
}

/// The first bytes of every HTTP/2 connection (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Reads a plain connection's first bytes, which tell prior-knowledge
/// HTTP/2 (h2c) from HTTP/1; they go to the server as its first bytes.
/// Each read waits for the socket to say it is readable: a connection's
/// request has seldom arrived the moment it is accepted, and a read that
/// finds nothing is a system call for nothing (a peek, which would leave
/// the bytes for the server, is one more per connection). `None` when the
/// client sent nothing before `deadline` or closed.
pub(crate) async fn sniff(stream: &mut TcpStream, deadline: Instant) -> Option<(Mode, BytesMut)> {
    let mut buf = BytesMut::new();
    loop {
        let more = async {
            stream.readable().await?;
            // No buffer until there is something to read into it. A read
            // that leaves room tells tokio the socket is drained: the
            // server's next read waits for readiness, not for `EAGAIN`.
            buf.reserve(h1::FIRST_SIZE);
            stream.read_buf(&mut buf).await
        };
        match tokio::time::timeout_at(deadline, more).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return None,
        }
        let n = buf.len().min(H2_PREFACE.len());
        if buf[..n] != H2_PREFACE[..n] {
            return Some((Mode::Http1, buf));
        }
        if n == H2_PREFACE.len() {
            return Some((Mode::Http2, buf));
        }
        // Part of the preface so far: wait until more has arrived.
    }
}

/// Serves one client connection until it closes, the listener is removed
/// (then it finishes in-flight requests and closes) or its drain runs out.
///
/// One place holds what an open connection carries between requests (its
/// server's state and the waits for the listener's close and cut), each
/// once: an `async fn` would hold its arguments twice. An HTTP/1
/// connection's is returned whole, for the caller to keep in its task
/// (one allocation, not two); an HTTP/2 connection's, much larger, is
/// boxed.
pub(crate) fn serve<IO>(
    stream: IO,
    mode: Mode,
    read: BytesMut,
    ends: Addresses,
    plan: SharedPlan,
    listener: Arc<ListenerPlan>,
    signals: Signals,
) -> impl Future<Output = ()> + Send + 'static
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Signals {
        closing,
        cut,
        tunnels,
    } = signals;
    let keepalive_timeout = listener.spec.keepalive_timeout();
    // A client that stops taking its response is let go at this limit.
    let stream = WriteStall::new(stream, listener.spec.client_timeout());
    let peer = ends.source;
    let trusted = listener
        .spec
        .trusted_proxies
        .iter()
        .any(|c| c.contains(peer.ip()));
    let conn = Arc::new(Conn {
        ends: PackedAddresses::new(ends),
        trusted,
        client_ip: IpText::new(peer.ip()),
        plan,
        first: listener,
        cut: cut.clone(),
        tunnels,
        stop: AtomicBool::new(false),
    });
    // Requests travel boxed: a future that holds one stays small, and
    // moving it (hyper moves each request's future into place) stays cheap.
    match mode {
        Mode::Http1 => {
            let serving = h1::serve(stream, read, conn.clone());
            // The loop finishes the request under way and closes.
            Either::Left(Drive::new(serving, H1(conn), closing))
        }
        Mode::Http2 => {
            let io = TokioIo::new(Coalesce::new(Replay::new(read.freeze(), stream)));
            let mut builder = http2::Builder::new(TokioExecutor::new());
            builder
                .timer(TokioTimer::new())
                .max_header_list_size(MAX_HEAD_BYTES as u32)
                .max_concurrent_streams(MAX_STREAMS)
                // A peer that vanished while streams are open is noticed.
                .keep_alive_interval(H2_PING_INTERVAL)
                .keep_alive_timeout(H2_PING_TIMEOUT);
            let streams = Arc::new(Streams::default());
            let counted = streams.clone();
            // Each stream's future is moved into a task of its own: boxed,
            // that moves a pointer.
            let service = service_fn(move |req| {
                let conn = conn.clone();
                let open = counted.open();
                let req = Box::new(req.map(ClientBody::Hyper));
                async move {
                    let response = boxed(|| conn.handle(req)).await;
                    Ok::<_, Infallible>(response.map(|body| Counted { body, _open: open }))
                }
            });
            let serving = builder.serve_connection(io, service);
            // Idle (no stream open) as long as a keep-alive HTTP/1
            // connection may be: closed with GOAWAY.
            let idle = Idle::new(streams, keepalive_timeout, peer);
            let serving: Pin<Box<dyn Future<Output = ()> + Send>> =
                Box::pin(Drive::new(serving, H2 { peer, cut, idle }, closing));
            Either::Right(serving)
        }
    }
}

/// How an HTTP connection learns that it must finish, and where the
/// connections it upgrades run.
pub(crate) struct Signals {
    /// Finish in-flight requests and close.
    pub closing: Signal,
    /// Close at once (upgraded connections too).
    pub cut: Signal,
    /// Upgraded connections are tracked here, so shutdown waits for them.
    pub tunnels: TaskTracker,
}

/// Concurrent requests one HTTP/2 client connection may have open.
const MAX_STREAMS: u32 = 256;
/// How often an HTTP/2 client connection with streams open is pinged, and
/// how long the answer may take before the connection is closed.
const H2_PING_INTERVAL: Duration = Duration::from_secs(30);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);

/// The streams of an HTTP/2 client connection: how many are open, and how
/// many were ever opened (so an idle check sees one that came and went).
#[derive(Default)]
struct Streams {
    open: std::sync::atomic::AtomicUsize,
    opened: std::sync::atomic::AtomicU64,
}

impl Streams {
    fn open(self: &Arc<Self>) -> OpenStream {
        self.open.fetch_add(1, Relaxed);
        self.opened.fetch_add(1, Relaxed);
        OpenStream(self.clone())
    }
}

/// One open stream; it closes when its response body is dropped.
struct OpenStream(Arc<Streams>);

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Relaxed);
    }
}

/// A response body that keeps its stream counted as open until hyper is
/// done with it.
struct Counted {
    body: ProxyBody,
    _open: OpenStream,
}

impl Body for Counted {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

pin_project_lite::pin_project! {
    /// Polls a server connection to its end. When the listener closes, asks
    /// it to finish in-flight requests and stop; when it is cut, drops it.
    /// A server that finds itself idle ([`Server::idle`]) is asked to stop
    /// too.
    struct Drive<F, S> {
        #[pin]
        serving: F,
        server: S,
        // A cut is a closing too (`closing` is its child): an open
        // connection waits on `closing`, and once that fired, on its
        // server's cut ([`Server::cut`]); one wait at a time.
        wait: Wait<Signal>,
        on_cut: bool,
        // The waker the waits hold. A wait keeps the waker it was last
        // given, so it is given one again only if that changed: that takes
        // a lock, and the connection's task is polled several times per
        // request. Between those, the signals' flags tell.
        registered: Option<Waker>,
        shutting_down: bool,
    }
}

impl<F, S> Drive<F, S> {
    fn new(serving: F, server: S, closing: Signal) -> Self {
        Drive {
            serving,
            server,
            wait: Wait::new(closing),
            on_cut: false,
            registered: None,
            shutting_down: false,
        }
    }
}

impl<F, S> Future for Drive<F, S>
where
    F: Future,
    S: Server<F>,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        if let Poll::Ready(ended) = this.serving.as_mut().poll(cx) {
            this.server.ended(ended);
            return Poll::Ready(());
        }
        let fresh = !this
            .registered
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()));
        if fresh {
            *this.registered = Some(cx.waker().clone());
        }
        if this.wait.fired(cx, fresh) {
            if *this.on_cut {
                return Poll::Ready(());
            }
            if !*this.shutting_down {
                this.server.stop(this.serving.as_mut());
                *this.shutting_down = true;
            }
            *this.wait = Wait::new(this.server.cut().clone());
            *this.on_cut = true;
            if this.wait.fired(cx, true) {
                return Poll::Ready(());
            }
            // The connection has more to do now: let it.
            cx.waker().wake_by_ref();
        }
        match this.server.idle(cx) {
            IdleCheck::Busy => {}
            IdleCheck::Ask => {
                if !*this.shutting_down {
                    this.server.stop(this.serving.as_mut());
                    *this.shutting_down = true;
                }
                cx.waker().wake_by_ref();
            }
            IdleCheck::Drop => return Poll::Ready(()),
        }
        Poll::Pending
    }
}

/// What [`Drive`] asks of a connection's server: to finish what is under
/// way and close, its listener's cut, to say how it ended, and whether it
/// has been idle too long (an HTTP/1 server keeps its own time between
/// requests).
trait Server<F: Future> {
    fn stop(&self, serving: Pin<&mut F>);
    fn cut(&self) -> &Signal;
    fn ended(&self, ended: F::Output);
    fn idle(&mut self, _cx: &mut Context<'_>) -> IdleCheck {
        IdleCheck::Busy
    }
}

/// Keel's HTTP/1 server: stopped by its connection's flag.
struct H1(Arc<Conn>);

impl<F: Future<Output = ()>> Server<F> for H1 {
    fn stop(&self, _: Pin<&mut F>) {
        self.0.stop.store(true, Relaxed);
    }

    fn cut(&self) -> &Signal {
        &self.0.cut
    }

    fn ended(&self, (): ()) {}
}

/// hyper's HTTP/2 server: stopped with GOAWAY, or when no stream was open
/// for the keep-alive timeout; its errors are logged.
struct H2 {
    peer: SocketAddr,
    cut: Signal,
    idle: Idle,
}

impl<I, S, B, E> Server<http2::Connection<I, S, E>> for H2
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    S: hyper::service::HttpService<Incoming, ResBody = B>,
    S::Error: Into<BoxError>,
    B: http_body::Body + 'static,
    B::Error: Into<BoxError>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    fn stop(&self, serving: Pin<&mut http2::Connection<I, S, E>>) {
        serving.graceful_shutdown();
    }

    fn cut(&self) -> &Signal {
        &self.cut
    }

    fn ended(&self, ended: Result<(), hyper::Error>) {
        if let Err(e) = ended {
            tracing::debug!(client.addr = %self.peer, error = %e, "http connection ended");
        }
    }

    fn idle(&mut self, cx: &mut Context<'_>) -> IdleCheck {
        self.idle.poll(cx)
    }
}

/// An HTTP/2 connection's idle check: every half of `limit`, whether a
/// stream is open or was opened since; one found quiet twice in a row is
/// asked to close (so it goes after 1 to 1.5 times `limit`), and dropped
/// at the next check if still open.
struct Idle {
    streams: Arc<Streams>,
    peer: SocketAddr,
    limit: Duration,
    timer: Pin<Box<tokio::time::Sleep>>,
    /// Checks in a row that found no stream open and none opened since.
    quiet: u8,
    opened: u64,
    /// Asked to close for idleness.
    closing: bool,
}

/// What an idle check found.
enum IdleCheck {
    Busy,
    /// Ask it to close.
    Ask,
    /// Asked before and still open: drop it.
    Drop,
}

impl Idle {
    fn new(streams: Arc<Streams>, limit: Duration, peer: SocketAddr) -> Idle {
        Idle {
            streams,
            peer,
            limit,
            timer: Box::pin(tokio::time::sleep(limit / 2)),
            quiet: 0,
            opened: 0,
            closing: false,
        }
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> IdleCheck {
        let mut found = IdleCheck::Busy;
        while self.timer.as_mut().poll(cx).is_ready() {
            if self.closing {
                // A graceful close waits for the peer to answer its PING;
                // a peer that never does is not waited for.
                return IdleCheck::Drop;
            }
            let opened = self.streams.opened.load(Relaxed);
            let idle_now = self.streams.open.load(Relaxed) == 0 && opened == self.opened;
            self.opened = opened;
            self.quiet = if idle_now { self.quiet + 1 } else { 0 };
            if self.quiet >= 2 {
                tracing::debug!(client.addr = %self.peer, timeout = ?self.limit, "idle http/2 connection closed");
                self.closing = true;
                found = IdleCheck::Ask;
            }
            let next = tokio::time::Instant::now() + self.limit / 2;
            self.timer.as_mut().reset(next);
        }
        found
    }
}

/// What one client connection knows.
struct Conn {
    /// The client (the TCP peer, or what its PROXY header named) and the
    /// address it connected to, for PROXY headers to members.
    ends: PackedAddresses,
    /// The client is a trusted proxy: its forwarding headers are kept.
    trusted: bool,
    /// The client's IP as text, made once per connection.
    client_ip: IpText,
    plan: SharedPlan,
    /// The listener as it was when the connection was accepted; used if the
    /// listener has since been removed and the connection is finishing.
    first: Arc<ListenerPlan>,
    /// The listener's cut: ends upgraded connections too.
    cut: Signal,
    /// Where upgraded connections run, so shutdown waits for them.
    tunnels: TaskTracker,
    /// Set when the listener closes: an HTTP/1 connection finishes the
    /// request under way and closes.
    stop: AtomicBool,
}

impl Conn {
    /// The client: the TCP peer, or what its PROXY header named.
    fn peer(&self) -> SocketAddr {
        self.ends.source()
    }

    /// How long the connection waits on its client between answers: the
    /// listener's timeouts as the connection found them.
    fn timeouts(&self) -> h1::Timeouts {
        h1::Timeouts {
            head: self.first.spec.header_timeout,
            keep_alive: self.first.spec.keepalive_timeout(),
        }
    }

    /// The listener's current plan: each request follows the newest
    /// config. The worker's own reference, so requests on other workers
    /// do not write the same count.
    fn listener(&self) -> Ref<ListenerPlan> {
        match self.plan.load().listeners.get(&self.first.bind) {
            Some(l) => l.mine().clone(),
            None => Ref::alone(self.first.clone()),
        }
    }

    async fn handle(&self, mut req: Box<Request<ClientBody>>) -> Response<ProxyBody> {
        let started = Instant::now();
        let listener = self.listener();
        let mut pool = None;
        let limited = listener
            .limiter
            .as_ref()
            .is_some_and(|l| !l.allow(self.peer().ip()));
        let response = if let Some(status) = refused_head(&req) {
            tracing::debug!(client.addr = %self.peer(), status = status.as_u16(), "request head refused");
            local_response(status)
        } else if let Err(why) = route::settle_authority(&mut req) {
            tracing::debug!(client.addr = %self.peer(), error = why, "request refused");
            let mut r = local_response(StatusCode::BAD_REQUEST);
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            r
        } else if limited {
            listener.stats.here().rate_limited.fetch_add(1, Relaxed);
            let mut r = local_response(StatusCode::TOO_MANY_REQUESTS);
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            r
        } else {
            match route::route(&listener.rules, &listener.pool, &req, self.peer().ip()) {
                Route::Pool(p) => {
                    pool = Some(p);
                    self.forward_or_error(req, &listener, p, started).await
                }
                Route::Redirect(r) => {
                    let scheme = listener.proto_header.to_str().unwrap_or("http");
                    let to = route::location(r, &req, scheme, listener.bind.port());
                    redirect_response(r.status, &to)
                }
                Route::Fixed {
                    status,
                    content_type,
                    body,
                } => {
                    let mut r = Response::new(ProxyBody::Local(Full::new(body.clone())));
                    *r.status_mut() = status;
                    r.headers_mut()
                        .insert(header::CONTENT_TYPE, content_type.clone());
                    r
                }
            }
        };
        let status = response.status().as_u16();
        listener.stats.here().requests.count(status);
        if let Some(p) = pool {
            p.stats.here().requests.count(status);
        }
        listener.stats.here().latency.observe(started.elapsed());
        response
    }

    async fn forward_or_error(
        &self,
        req: Box<Request<ClientBody>>,
        listener: &ListenerPlan,
        pool: &PoolPlan,
        started: Instant,
    ) -> Response<ProxyBody> {
        match self.forward(req, listener, pool, started).await {
            Ok(r) => r,
            Err(e) => {
                let status = e.status();
                tracing::warn!(client.addr = %self.peer(), pool = %pool.spec.name,
                    status = status.as_u16(), side = ?e.side(), error = %e, "request failed");
                let mut r = local_response(status);
                if e.side() == Side::Downstream {
                    r.headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                r
            }
        }
    }

    async fn forward(
        &self,
        req: Box<Request<ClientBody>>,
        listener: &ListenerPlan,
        pool: &PoolPlan,
        started: Instant,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let mut req = req;
        // Only the HTTP/1 server hands a connection over, and only for a
        // request that asked to switch: most have nothing to take, and
        // their fields are not looked up.
        let upgrade = h1::ClientUpgrade::take(&mut req)
            .and_then(|client_side| Some((upgrade_asked(&req)?, client_side)));
        let (mut parts, mut body) = (*req).into_parts();
        // A chunked body's first chunk is read before any member is chosen:
        // a malformed chunk size is answered 400 and nothing is forwarded.
        let request_timeout = listener.spec.request_timeout;
        let deadline = request_timeout.map(|t| started + t);
        let client_timeout = listener.spec.client_timeout();
        let mut first = None;
        if parts.headers.contains_key(header::TRANSFER_ENCODING) && !body.is_end_stream() {
            let paused = Instant::now() + client_timeout;
            let limit = deadline.map_or(paused, |d| d.min(paused));
            match tokio::time::timeout_at(limit, body.frame()).await {
                Err(_) if Some(limit) == deadline => {
                    return Err(ProxyError::RequestTimeout {
                        timeout: request_timeout.unwrap_or_default(),
                    })
                }
                Err(_) => {
                    return Err(ProxyError::ClientIdle {
                        timeout: client_timeout,
                    })
                }
                Ok(Some(Ok(frame))) => first = Some(frame),
                Ok(Some(Err(e))) => return Err(ProxyError::ClientBody { source: e }),
                Ok(None) => {}
            }
        }
        // Set by the body when the deadline passes or the client pauses
        // too long, so the failure is a 408 (the client's, not the member's).
        let has_body = first.is_some() || !body.is_end_stream();
        let expired = (has_body || deadline.is_some()).then(|| Arc::new(AtomicU8::new(0)));
        // Only an HTTP/2 member is told (`TE` is hop-by-hop, removed next).
        let wants_trailers = pool.spec.http_version == HttpVersion::Http2
            && parts
                .headers
                .get_all(header::TE)
                .iter()
                .any(|v| v.to_str().is_ok_and(|v| v.contains("trailers")));
        let forwarding = prepare_request(&mut parts, &self.client_ip, self.trusted, listener);
        // Read before an HTTP/2 rewrite moves `Host` into the target.
        let sticky = pool.sticky.as_ref();
        // The clock is read only where sessions are sticky.
        let now = sticky.map(|_| sticky::unix_now()).unwrap_or_default();
        let pinned = sticky
            .and_then(|s| s.pinned(&parts.headers, now))
            .and_then(|a| pool.balancer.available(a));
        let had_app_cookie = sticky.is_some_and(|s| s.has_app_cookie(&parts.headers));
        // A pool may hash on a forwarding field: it hashes what the member gets.
        let hash_key = match &pool.spec.hash_on {
            Some(HashOn::Header(name)) => forwarding.value(name).map(Bytes::copy_from_slice),
            _ => None,
        }
        .or_else(|| sticky::hash_key(&pool.spec, &parts.headers));
        if let Some((proto, _)) = &upgrade {
            parts.headers.insert(header::UPGRADE, proto.clone());
            parts
                .headers
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        } else if pool.spec.http_version == HttpVersion::Http2 {
            to_http2(&mut parts, pool.tls.is_some(), listener, wants_trailers);
        }
        let mut out = Box::new(Outbound {
            req: Request::from_parts(
                parts,
                RequestBody {
                    first,
                    inner: body,
                    listener: has_body.then(|| listener.stats.kept()),
                    member: None,
                    deadline: deadline.map(|d| Box::pin(tokio::time::sleep_until(d))),
                    stall: has_body.then(|| Stall::new(client_timeout)),
                    expired: expired.clone(),
                    watch: None,
                },
            ),
            forwarding,
        });
        // The members tried so far (`attempts` of them), without allocating.
        let mut tried = [SocketAddr::from(([0, 0, 0, 0], 0)); MAX_CONNECT_ATTEMPTS];
        let mut attempts = 0;
        let mut last_err = None;
        while attempts < MAX_CONNECT_ATTEMPTS {
            let tried_so_far = &tried[..attempts];
            let pick = || {
                pool.balancer
                    .pick(self.peer().ip(), hash_key.as_deref(), tried_so_far)
            };
            let Some(member) = pinned
                .filter(|m| !tried_so_far.contains(&m.address))
                .or_else(pick)
            else {
                break;
            };
            tried[attempts] = member.address;
            attempts += 1;
            let guard = member.begin();
            let member = guard.member();
            let sender = match checkout(member, pool, self.ends, upgrade.is_some()).await {
                Ok(s) => s,
                Err(e) => {
                    member.stats.here().connect_failures.fetch_add(1, Relaxed);
                    tracing::warn!(pool = %pool.spec.name, member = %member.address, error = %e, "member connection failed");
                    debug_assert_eq!(e.retry(), Retry::Yes);
                    last_err = Some(e);
                    continue;
                }
            };
            // Only a body has bytes to count on the member.
            if has_body {
                out.req.body_mut().member = Some(member.stats.kept());
            }
            let address = member.address;
            let sent = match upgrade {
                None => exchange(sender, out, guard, listener, pool, self.ends).await,
                Some((_, client_side)) => {
                    Box::pin(self.upgrade(sender, out, client_side, guard, listener, pool)).await
                }
            };
            let mut response = match sent {
                Err(e) => {
                    return Err(match expired.as_ref().map(|x| x.load(Relaxed)) {
                        Some(EXPIRED_DEADLINE) => ProxyError::RequestTimeout {
                            timeout: request_timeout.unwrap_or_default(),
                        },
                        Some(EXPIRED_IDLE) => ProxyError::ClientIdle {
                            timeout: client_timeout,
                        },
                        _ => e,
                    })
                }
                Ok(r) => r,
            };
            if let Some(s) = sticky {
                let secure = listener.spec.protocol == Protocol::Https;
                s.stamp(response.headers_mut(), had_app_cookie, address, now, secure);
            }
            return Ok(response);
        }
        if last_err.is_none() {
            pool.stats.here().no_member.fetch_add(1, Relaxed);
        }
        Err(last_err.unwrap_or_else(|| ProxyError::NoMember {
            pool: pool.spec.name.clone(),
        }))
    }
}

impl Conn {
    /// Sends an upgrade request (a websocket handshake) on a connection of
    /// its own. If the member switches protocols, both connections leave
    /// HTTP and become a tunnel relayed both ways on its own task, counted
    /// on the listener and cut by drains like any connection.
    async fn upgrade(
        &self,
        sender: Sender,
        out: Box<Outbound>,
        client_side: h1::ClientUpgrade,
        guard: Outstanding,
        listener: &ListenerPlan,
        pool: &PoolPlan,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let member = guard.member().clone();
        let cut = member.cut();
        let offered = out.req.headers().get(header::UPGRADE).cloned();
        let response = send(sender, out, &member, &cut, pool, self.ends).await?;
        member
            .stats
            .here()
            .requests
            .count(response.status().as_u16());
        let (mut parts, body) = response.into_parts();
        let member_side = match body {
            MemberBody::Http1(body) if parts.status == StatusCode::SWITCHING_PROTOCOLS => {
                body.into_upgraded()
            }
            body => {
                // Refused: the answer goes back as it is; the connection is not reused.
                strip_hop_by_hop(&mut parts.headers);
                let body = UpstreamBody {
                    inner: body,
                    stall: Stall::new(pool.spec.response_timeout),
                    reuse: false,
                    cut: Cut::new(cut),
                    outstanding: guard,
                    listener: listener.stats.kept(),
                };
                return Ok(Response::from_parts(parts, ProxyBody::Upstream(body)));
            }
        };
        let Some(member_side) = member_side else {
            return Err(ProxyError::Upstream {
                member: member.address,
                source: "switched protocols on a connection it cannot hand over".into(),
            });
        };
        // A 101 names what it switches to, and only what the client
        // offered (RFC 9110 §7.8): anything else is no tunnel to open.
        let proto = parts.headers.get(header::UPGRADE).cloned();
        let Some(proto) = proto.filter(|p| offered.as_ref().is_some_and(|o| chosen_from(p, o)))
        else {
            return Err(ProxyError::Upstream {
                member: member.address,
                source: "switched to a protocol the client did not offer".into(),
            });
        };
        strip_hop_by_hop(&mut parts.headers);
        parts.headers.insert(header::UPGRADE, proto);
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));

        let stats = listener.stats.clone();
        stats.here().upgrades.fetch_add(1, Relaxed);
        let open = crate::Active::new(&stats);
        let idle = listener.spec.idle_timeout;
        let (cut, peer) = (self.cut.clone(), self.peer());
        self.tunnels.spawn(async move {
            let _open = open;
            stats.here().tunnels.fetch_add(1, Relaxed);
            let client = match client_side.connection().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(client.addr = %peer, error = %e, "upgrade not completed");
                    stats.here().tunnels.fetch_sub(1, Relaxed);
                    return;
                }
            };
            let counters = tcp::Counters::between(&stats, &member.stats);
            let member_cut = member.cut();
            let result = tokio::select! {
                r = tcp::pipe(client, member_side, idle, &counters) => r,
                () = cut.until() => Err(std::io::Error::other("listener drained")),
                () = member_cut.until() => Err(std::io::Error::other("member drained")),
            };
            if let Err(e) = result {
                tracing::debug!(client.addr = %peer, member = %member.address, error = %e, "upgraded connection ended");
            }
            stats.here().tunnels.fetch_sub(1, Relaxed);
            drop(guard);
        });
        Ok(Response::from_parts(
            parts,
            ProxyBody::Local(Full::new(Bytes::new())),
        ))
    }
}

/// The protocol an HTTP/1.1 request asks to switch to (`Upgrade` with
/// `Connection: upgrade`), such as `websocket`. Not `h2c`: RFC 9113 §3.1
/// retired that upgrade, and a tunnel to a member's own HTTP/2 would carry
/// requests past Keel's rules; such a request goes on as an ordinary one.
fn upgrade_asked(req: &Request<ClientBody>) -> Option<HeaderValue> {
    if req.version() != Version::HTTP_11 {
        return None;
    }
    let asked = req
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    let proto = req.headers().get(header::UPGRADE).filter(|_| asked)?;
    let h2c = proto
        .as_bytes()
        .split(|b| *b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"h2c"));
    (!h2c).then(|| proto.clone())
}

/// Whether every protocol an `Upgrade` answer `chosen` names is one the
/// request `offered` (names compared without case, versions whole).
fn chosen_from(chosen: &HeaderValue, offered: &HeaderValue) -> bool {
    let tokens = |v: &HeaderValue| -> Vec<Vec<u8>> {
        v.as_bytes()
            .split(|b| *b == b',')
            .map(|t| t.trim_ascii().to_ascii_lowercase())
            .filter(|t| !t.is_empty())
            .collect()
    };
    let offered = tokens(offered);
    let chosen = tokens(chosen);
    !chosen.is_empty() && chosen.iter().all(|c| offered.contains(c))
}

/// An idle connection to `member` if one is open, else a new one. A pool
/// that sends PROXY headers gets a new connection per request: a header
/// names one client, so those connections are never shared.
async fn checkout(
    member: &Arc<MemberState>,
    pool: &PoolPlan,
    ends: PackedAddresses,
    own_http1: bool,
) -> Result<Sender, ProxyError> {
    let http2 = pool.spec.http_version == HttpVersion::Http2 && !own_http1;
    let shared = pool.spec.proxy_protocol.is_none();
    if http2 && shared {
        if let Some(sender) = ready_http2(member).await {
            return Ok(sender);
        }
        // Rare: boxed, so that it does not enlarge every request's state.
        return Box::pin(connect_shared_http2(member, pool, ends)).await;
    } else if !own_http1 && shared {
        while let Some(mut conn) = member.take_idle() {
            if conn.is_open() {
                return Ok(Sender::Http1(conn.reuse()));
            }
        }
    }
    // Boxed: opening a connection (TCP, TLS, HTTP handshake) is a large
    // future, and keeping it out of line keeps every request's future small.
    Box::pin(connect(member, pool, ends, http2, shared)).await
}

/// A stream on one of the member's shared HTTP/2 connections, when one
/// has room.
async fn ready_http2(member: &MemberState) -> Option<Sender> {
    let (mut sender, stream, which) = member.shared_http2()?;
    sender.ready().await.ok()?;
    Some(Sender::Http2(sender, stream, Some(which)))
}

/// A new shared HTTP/2 connection to `member`, one at a time per worker:
/// another request may have made one while this one waited. When the
/// attempt it waited on failed, this one fails at once, as that attempt
/// did (a member that does not answer costs the requests waiting on it
/// one connect timeout, not one each in turn).
async fn connect_shared_http2(
    member: &Arc<MemberState>,
    pool: &PoolPlan,
    ends: PackedAddresses,
) -> Result<Sender, ProxyError> {
    let (_connecting, failed_meanwhile) = member.connecting_http2().await;
    if let Some(sender) = ready_http2(member).await {
        return Ok(sender);
    }
    if failed_meanwhile {
        return Err(ProxyError::Connect {
            member: member.address,
            source: std::io::Error::other("the connection another request was opening failed"),
        });
    }
    let made = connect(member, pool, ends, true, true).await;
    if made.is_err() {
        member.http2_failed();
    }
    made
}

/// A new connection to `member`, ready for requests.
async fn connect(
    member: &Arc<MemberState>,
    pool: &PoolPlan,
    ends: PackedAddresses,
    http2: bool,
    shared: bool,
) -> Result<Sender, ProxyError> {
    let alpn = if http2 { Alpn::Http2 } else { Alpn::Http1 };
    let stream = open(member, pool, ends, alpn).await?;
    if !http2 {
        return Ok(Sender::Http1(client::Conn::new(stream)));
    }
    // Nothing of the request has gone yet: a failure here is the
    // connection's, and another member may be tried.
    let timeout = pool.spec.connect_timeout;
    let conn = h2_member::handshake(stream, member.address, timeout)
        .await
        .map_err(|source| match source.kind() {
            std::io::ErrorKind::TimedOut => ProxyError::ConnectTimeout {
                member: member.address,
                timeout,
            },
            _ => ProxyError::Connect {
                member: member.address,
                source,
            },
        })?;
    if conn.streams.closed() {
        return Err(ProxyError::Connect {
            member: member.address,
            source: std::io::Error::other(
                "the member allows no streams (SETTINGS_MAX_CONCURRENT_STREAMS 0)",
            ),
        });
    }
    let stream = conn.streams.claim();
    let which = shared.then(|| member.share_http2(conn.clone()));
    Ok(Sender::Http2(conn.sender, stream, which))
}

/// A new connection (TCP, PROXY header, TLS) to `member`, within the
/// pool's connect timeout.
async fn open(
    member: &MemberState,
    pool: &PoolPlan,
    ends: PackedAddresses,
    alpn: Alpn,
) -> Result<tcp::Upstream, ProxyError> {
    let timeout = pool.spec.connect_timeout;
    let opening = tcp::open(member.address, pool, ends.get(), alpn);
    match tokio::time::timeout(timeout, opening).await {
        Ok(Ok(s)) => {
            member.stats.here().connections.fetch_add(1, Relaxed);
            Ok(s)
        }
        Ok(Err(source)) => Err(ProxyError::Connect {
            member: member.address,
            source,
        }),
        Err(_) => Err(ProxyError::ConnectTimeout {
            member: member.address,
            timeout,
        }),
    }
}

/// A request on its way to a member, and the forwarding fields it gets there.
pub(crate) struct Outbound {
    pub(crate) req: Request<RequestBody>,
    pub(crate) forwarding: Forwarding,
}

/// Where a request to a member is sent: an HTTP/1.1 connection (one
/// request at a time, pooled when idle) or a shared HTTP/2 connection.
pub(crate) enum Sender {
    Http1(client::Conn),
    /// The connection, the request's stream on it, and which of the
    /// member's shared ones it is.
    Http2(Http2Sender, Stream, Option<u64>),
}

pub(crate) type Http2Sender = hyper::client::conn::http2::SendRequest<RequestBody>;
pub(crate) type Http2Conn = h2_member::Conn<RequestBody>;

/// Rewrites a request for an HTTP/2 member: the target becomes absolute
/// (`:scheme` and `:authority` from `Host`), and `te: trailers` (which
/// gRPC requires) is passed on when the client sent it.
fn to_http2(
    parts: &mut http::request::Parts,
    tls: bool,
    listener: &ListenerPlan,
    wants_trailers: bool,
) {
    let authority = parts
        .headers
        .remove(header::HOST)
        .and_then(|h| http::uri::Authority::try_from(h.as_bytes()).ok())
        .or_else(|| http::uri::Authority::try_from(listener.bind.to_string()).ok());
    let path = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    let mut uri = Uri::builder()
        .scheme(if tls { "https" } else { "http" })
        .path_and_query(path);
    if let Some(a) = authority {
        uri = uri.authority(a);
    }
    if let Ok(uri) = uri.build() {
        parts.uri = uri;
    }
    parts.version = Version::HTTP_2;
    if wants_trailers {
        parts
            .headers
            .insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// Sends the request and wraps the member's response for the client.
async fn exchange(
    sender: Sender,
    out: Box<Outbound>,
    guard: Outstanding,
    listener: &ListenerPlan,
    pool: &PoolPlan,
    ends: PackedAddresses,
) -> Result<Response<ProxyBody>, ProxyError> {
    let member = guard.member();
    let started = Instant::now();
    let cut = member.cut();
    let head_only = out.req.method() == Method::HEAD;
    let response = send(sender, out, member, &cut, pool, ends).await?;
    member.stats.here().latency.observe(started.elapsed());
    member
        .stats
        .here()
        .requests
        .count(response.status().as_u16());
    // Only a request that asked to switch protocols may be answered 101
    // (RFC 9110 §15.2.2); the connection is dropped with the answer.
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        return Err(ProxyError::Upstream {
            member: member.address,
            source: "switched protocols though the request asked for no upgrade".into(),
        });
    }
    let (mut parts, body) = response.into_parts();
    // The HTTP/1.1 client leaves hop-by-hop fields out as it parses the head.
    // It also frames the body by what it sends, not by a member's length
    // (which it passes on only for `HEAD` and 304); an HTTP/2 member's
    // length goes the same way.
    if let MemberBody::Http2 { .. } = body {
        strip_hop_by_hop(&mut parts.headers);
        if !(head_only || parts.status == StatusCode::NOT_MODIFIED) {
            parts.headers.remove(header::CONTENT_LENGTH);
        }
    }
    let mut body = UpstreamBody {
        inner: body,
        stall: Stall::new(pool.spec.response_timeout),
        // A connection that carried a PROXY header names one client: never reused.
        reuse: pool.spec.proxy_protocol.is_none(),
        cut: Cut::new(cut),
        outstanding: guard,
        listener: listener.stats.kept(),
    };
    // A body that is already over never gets polled: the connection is free now.
    if body.is_end_stream() {
        body.release();
    }
    Ok(Response::from_parts(parts, ProxyBody::Upstream(body)))
}

/// Sends `req` to `member` and waits for its response head until
/// `deadline` (the pool's `response_timeout` after it was sent); a drain
/// that runs out meanwhile ends the wait. Failures are counted on the
/// member as the status the client will see.
async fn send(
    sender: Sender,
    out: Box<Outbound>,
    member: &Arc<MemberState>,
    cut: &Signal,
    pool: &PoolPlan,
    ends: PackedAddresses,
) -> Result<Response<MemberBody>, ProxyError> {
    let sent = tokio::select! {
        r = deliver(sender, out, member, pool, ends) => r,
        () = cut.until() => return Err(ProxyError::Drained { member: member.address }),
    };
    if let Err(e) = &sent {
        if e.side() == Side::Upstream {
            member.stats.here().requests.count(e.status().as_u16());
        }
    }
    sent
}

/// One exchange on `sender`. A reused HTTP/1.1 connection that the member
/// closed before taking the request (its idle timeout crossed the request)
/// is replaced by a new connection and the request sent again.
///
/// Each way is its own function: the state of this one is as large as the
/// largest, and it is copied into a box with every request.
async fn deliver(
    sender: Sender,
    out: Box<Outbound>,
    member: &Arc<MemberState>,
    pool: &PoolPlan,
    ends: PackedAddresses,
) -> Result<Response<MemberBody>, ProxyError> {
    let conn = match sender {
        Sender::Http2(s, stream, which) => {
            // Boxed: its state (keeping a body to send again) is larger
            // than the HTTP/1.1 way's, which every request would carry.
            return Box::pin(deliver_http2(s, stream, which, out, member, pool, ends)).await;
        }
        Sender::Http1(conn) => conn,
    };
    let unsent = match conn.send(out, pool.spec.response_timeout).await {
        Ok(r) => return Ok(r.map(MemberBody::Http1)),
        Err(SendError::Stale(unsent)) => unsent,
        Err(e) => return Err(send_failed(e, member, pool)),
    };
    tracing::debug!(member = %member.address, "idle connection closed by the member; sending on a new one");
    // Rare: boxed, so that it does not enlarge every request's state.
    let stream = Box::pin(open(member, pool, ends, Alpn::Http1)).await?;
    let resent = Box::pin(client::Conn::new(stream).resend(unsent, pool.spec.response_timeout));
    match resent.await {
        Ok(r) => Ok(r.map(MemberBody::Http1)),
        Err(e) => Err(send_failed(e, member, pool)),
    }
}

/// An exchange on a member's HTTP/2 connection.
///
/// A request the member did not act on (a stream past the last it took
/// when it went away, or one it refused) goes again on a new connection,
/// as does an idempotent one the connection dropped unanswered as it
/// closed: nginx, for one, ends a connection with GOAWAY every 1,000
/// requests, and the streams in flight past its last would otherwise be
/// answered 502. At most [`HTTP2_TRIES`] tries in all: the new connection
/// may be going away in its turn. A request body goes again when no more
/// than [`MOST_KEPT`] of it had been sent (what was sent is kept until the
/// body ends or passes that; gRPC calls are POSTs with small bodies): the
/// kept part first, then the rest as it comes from the client.
async fn deliver_http2(
    mut sender: Http2Sender,
    mut stream: Stream,
    mut which: Option<u64>,
    out: Box<Outbound>,
    member: &Arc<MemberState>,
    pool: &PoolPlan,
    ends: PackedAddresses,
) -> Result<Response<MemberBody>, ProxyError> {
    let upstream = |e: hyper::Error| ProxyError::Upstream {
        member: member.address,
        source: e.into(),
    };
    let Outbound {
        mut req,
        forwarding,
    } = *out;
    forwarding.insert_into(req.headers_mut());
    // Boxed: a pointer in every request's state, not a whole head.
    let head = Box::new(copy_head(&req));
    let mut tries = 1;
    loop {
        let keep = tries < HTTP2_TRIES;
        let (refused, body) = match exchange_http2(&mut sender, req, keep, member, pool).await? {
            (Ok(r), _) => {
                return Ok(r.map(|body| MemberBody::Http2 {
                    body,
                    _stream: stream,
                }))
            }
            (Err(e), _) if !keep || !may_go_again(&e, head.method()) => return Err(upstream(e)),
            (Err(e), back) => match back.body().await {
                Some(body) => (e, body),
                None => return Err(upstream(e)),
            },
        };
        tracing::debug!(member = %member.address, error = %refused,
            "the member did not take the request; sending it on a new connection");
        if let Some(which) = which {
            member.forget_http2(which);
        }
        // Boxed: rare, and it would enlarge every request's state.
        let Sender::Http2(next, taken, made) =
            Box::pin(checkout(member, pool, ends, false)).await?
        else {
            return Err(upstream(refused));
        };
        (sender, stream, which) = (next, taken, made);
        req = Request::from_parts(copy_head(&head).into_parts().0, *body);
        tries += 1;
    }
}

/// The most tries of a request an HTTP/2 member did not take. Through an
/// nginx member that ends connections every 1,000 requests, 1 KB POSTs
/// were refused a third time 6 times in 400,000 (a try lands on a
/// connection near its end about 1.5% of the time): five make it
/// negligible, and a member that refuses everything costs five
/// connections per request, no more.
const HTTP2_TRIES: usize = 5;

/// Whether a request the member failed with `e` may go again: the member
/// did not act on it, or it may have and the method makes that harmless.
fn may_go_again(e: &hyper::Error, method: &Method) -> bool {
    h2_member::unprocessed(e) || (h2_member::dropped_unanswered(e) && client::is_idempotent(method))
}

/// Sends `req` on `sender`. As over HTTP/1.1, the member's time counts
/// from the end of the request: a slow upload that keeps moving is the
/// client's limits' business, not the member's. With the answer, the body
/// to send again where it was kept (`keep`).
async fn exchange_http2(
    sender: &mut Http2Sender,
    mut req: Request<RequestBody>,
    keep: bool,
    member: &MemberState,
    pool: &PoolPlan,
) -> Result<(hyper::Result<Response<Incoming>>, Back), ProxyError> {
    let Some(mut ended) = (!req.body().is_end_stream()).then(|| req.body_mut().watch(keep)) else {
        let r = answered(sender.send_request(req), member, pool).await?;
        return Ok((r, Back::Bodiless));
    };
    let response = sender.send_request(req);
    tokio::pin!(response);
    let mut back = None;
    let early = tokio::select! {
        r = &mut response => Some(r),
        body = &mut ended => {
            back = Some(body.ok().flatten());
            None
        }
    };
    match (early, back) {
        (Some(r), _) => Ok((r, Back::Coming(ended))),
        (None, back) => Ok((
            answered(response, member, pool).await?,
            Back::Here(back.flatten()),
        )),
    }
}

/// A request body on its way back from hyper, to send again.
enum Back {
    /// The request had no body: nothing to wait for.
    Bodiless,
    Here(Option<Box<RequestBody>>),
    /// Sent when hyper lets the body go, soon after its stream ends.
    Coming(tokio::sync::oneshot::Receiver<Option<Box<RequestBody>>>),
}

impl Back {
    /// The body to send again, if it was kept.
    async fn body(self) -> Option<Box<RequestBody>> {
        match self {
            Back::Bodiless => Some(Box::new(RequestBody::empty())),
            Back::Here(body) => body,
            Back::Coming(rx) => tokio::time::timeout(Duration::from_secs(1), rx)
                .await
                .ok()?
                .ok()?,
        }
    }
}

/// A member's answer, within the pool's `response_timeout`.
async fn answered<F: Future>(
    response: F,
    member: &MemberState,
    pool: &PoolPlan,
) -> Result<F::Output, ProxyError> {
    tokio::time::timeout(pool.spec.response_timeout, response)
        .await
        .map_err(|_| ProxyError::ResponseTimeout {
            member: member.address,
            timeout: pool.spec.response_timeout,
        })
}

/// A request's head again, to send once more.
fn copy_head(req: &Request<RequestBody>) -> Request<RequestBody> {
    let mut copy = Request::new(RequestBody::empty());
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    copy
}

/// What a failed HTTP/1.1 exchange with `member` is, for the client.
fn send_failed(e: SendError, member: &MemberState, pool: &PoolPlan) -> ProxyError {
    match e {
        SendError::ClientBody(source) => ProxyError::ClientBody { source },
        SendError::Upstream(e) => ProxyError::Upstream {
            member: member.address,
            source: e.into(),
        },
        SendError::Stale(_) => ProxyError::Upstream {
            member: member.address,
            source: "connection closed by the member".into(),
        },
        SendError::Timeout => ProxyError::ResponseTimeout {
            member: member.address,
            timeout: pool.spec.response_timeout,
        },
    }
}

/// What a request head is refused for before it is routed, on both
/// servers: what the HTTP/1 parser refuses in a request line, which
/// hyper's HTTP/2 server lets through (Keel tunnels nothing, and `*` is
/// only `OPTIONS`'s target), and the limits on a head (hyper's HTTP/2
/// server bounds only its header list), however the bytes arrive.
fn refused_head(req: &Request<ClientBody>) -> Option<StatusCode> {
    if req.method() == Method::CONNECT {
        return Some(StatusCode::METHOD_NOT_ALLOWED);
    }
    if req.uri().path() == "*" && req.method() != Method::OPTIONS {
        return Some(StatusCode::BAD_REQUEST);
    }
    let target = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len())
        + req.uri().authority().map_or(0, |a| a.as_str().len());
    if target > MAX_URI_BYTES {
        return Some(StatusCode::URI_TOO_LONG);
    }
    let fields: usize = req
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    (target + fields > MAX_HEAD_BYTES).then_some(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
}

/// Rewrites a client's request head for the member and returns the
/// forwarding fields it gets there.
fn prepare_request(
    parts: &mut http::request::Parts,
    client: &IpText,
    trusted: bool,
    listener: &ListenerPlan,
) -> Forwarding {
    // `Host` already names the authority routed on (`settle_authority`).
    // Members get origin-form targets (`/path?query`), whatever the client sent.
    let origin = parts
        .uri
        .path_and_query()
        .map(|pq| pq.as_str())
        .unwrap_or("/");
    if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
        parts.uri = Uri::try_from(origin).unwrap_or_else(|_| Uri::from_static("/"));
    }
    if parts.version == Version::HTTP_2 {
        join_cookies(&mut parts.headers);
    }
    parts.version = Version::HTTP_11;
    strip_hop_by_hop(&mut parts.headers);
    // A trusted proxy's forwarding headers are extended; anyone else's are
    // replaced, so a client cannot claim to be someone else.
    let prior = |name: &HeaderName| -> Option<String> {
        if !trusted {
            return None;
        }
        let joined: Vec<&str> = parts
            .headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .collect();
        (!joined.is_empty()).then(|| joined.join(", "))
    };
    let ip = client.as_bytes();
    let joined =
        prior(&X_FORWARDED_FOR).map(|p| HeaderValue::try_from([p.as_bytes(), b", ", ip].concat()));
    let xff = match joined {
        Some(Ok(joined)) => ForwardedFor::Joined(joined),
        _ => ForwardedFor::Client(*client),
    };
    let proto = listener.proto_header.to_str().unwrap_or("http");
    let host = parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| h.bytes().all(|b| b.is_ascii_graphic()) && !h.contains('"'));
    // One string, built in place: `[prior, ]for=IP;proto=P[;host="H"]`.
    // Every piece is visible ASCII (header values, an IP, a scheme, a
    // host checked above), so it is a valid field value.
    let mut forwarded = prior(&FORWARDED)
        .map(|p| p.into_bytes())
        .unwrap_or_default();
    if !forwarded.is_empty() {
        forwarded.extend_from_slice(b", ");
    }
    forwarded.reserve(32 + ip.len() + host.map_or(0, str::len));
    forwarded.extend_from_slice(b"for=");
    if ip.contains(&b':') {
        forwarded.extend_from_slice(b"\"[");
        forwarded.extend_from_slice(ip);
        forwarded.extend_from_slice(b"]\"");
    } else {
        forwarded.extend_from_slice(ip);
    }
    forwarded.extend_from_slice(b";proto=");
    forwarded.extend_from_slice(proto.as_bytes());
    if let Some(h) = host {
        forwarded.extend_from_slice(b";host=\"");
        forwarded.extend_from_slice(h.as_bytes());
        forwarded.push(b'"');
    }
    // The scheme and port the client first used: a trusted proxy's word
    // (a CDN that terminated TLS on 443), else this listener's.
    let told = |name: &HeaderName| {
        trusted
            .then(|| parts.headers.get(name))
            .flatten()
            .filter(|v| !v.is_empty())
            .cloned()
    };
    let first_proto = told(&X_FORWARDED_PROTO).unwrap_or_else(|| listener.proto_header.clone());
    let first_port =
        told(&X_FORWARDED_PORT).map_or_else(|| Port::own(listener.bind.port()), Port::Told);
    strip_forwarding(&mut parts.headers, trusted);
    Forwarding {
        forwarded_for: xff,
        forwarded,
        proto: first_proto,
        port: first_port,
    }
}

/// The fields Keel adds to every request for its member: the client's
/// address, the scheme and port it came in on, and `Forwarding`. They are
/// kept out of the request's header map and written after its fields
/// (HTTP/1.1), or inserted into the map only for an HTTP/2 member.
pub(crate) struct Forwarding {
    forwarded_for: ForwardedFor,
    /// Valid as a field value by construction (see `prepare_request`).
    forwarded: Vec<u8>,
    proto: HeaderValue,
    port: Port,
}

/// A client's IP address as text, as `X-Forwarded-For` and `Forwarded`
/// name it: made once per connection and held in place, so it costs an
/// idle connection no allocation and a request a copy, not a count.
#[derive(Clone, Copy)]
struct IpText {
    bytes: [u8; IpText::MOST],
    len: u8,
}

impl IpText {
    /// The longest an address is written: eight groups of four hex digits.
    const MOST: usize = 39;

    fn new(ip: IpAddr) -> IpText {
        use std::io::Write;
        let mut bytes = [0; Self::MOST];
        let mut to = &mut bytes[..];
        let len = match write!(to, "{ip}") {
            Ok(()) => Self::MOST - to.len(),
            Err(_) => 0,
        };
        IpText {
            bytes,
            len: u8::try_from(len).unwrap_or(0),
        }
    }

    fn as_bytes(&self) -> &[u8] {
        match &self.bytes[..usize::from(self.len)] {
            [] => b"unknown",
            text => text,
        }
    }
}

/// `X-Forwarded-For`: the client's IP, or a trusted proxy's list with it
/// appended.
enum ForwardedFor {
    Client(IpText),
    Joined(HeaderValue),
}

impl ForwardedFor {
    fn as_bytes(&self) -> &[u8] {
        match self {
            ForwardedFor::Client(ip) => ip.as_bytes(),
            ForwardedFor::Joined(v) => v.as_bytes(),
        }
    }
}

/// `X-Forwarded-Port`: a trusted proxy's value, or the listener's port
/// written out per request (a clone of one value in the plan would write
/// a count every worker's requests write).
enum Port {
    Told(HeaderValue),
    Own {
        port: u16,
        digits: [u8; 5],
        len: usize,
    },
}

impl Port {
    fn own(port: u16) -> Port {
        let mut digits = [0; 5];
        let mut len = 0;
        let mut rest = port;
        loop {
            digits[len] = b'0' + (rest % 10) as u8;
            len += 1;
            rest /= 10;
            if rest == 0 {
                break;
            }
        }
        digits[..len].reverse();
        Port::Own { port, digits, len }
    }

    fn as_bytes(&self) -> &[u8] {
        match self {
            Port::Told(v) => v.as_bytes(),
            Port::Own { digits, len, .. } => &digits[..*len],
        }
    }
}

impl Forwarding {
    /// The fields as (lower-case name, value).
    fn fields(&self) -> [(&'static str, &[u8]); 4] {
        [
            ("x-forwarded-for", self.forwarded_for.as_bytes()),
            ("forwarded", &self.forwarded),
            ("x-forwarded-proto", self.proto.as_bytes()),
            ("x-forwarded-port", self.port.as_bytes()),
        ]
    }

    /// The value the member gets for field `name`, if it is one of these.
    fn value(&self, name: &str) -> Option<&[u8]> {
        self.fields()
            .into_iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// Appends the fields as header lines (`name: value\r\n`).
    pub(crate) fn write_lines(&self, head: &mut BytesMut) {
        for (name, value) in self.fields() {
            crate::wire::field(head, name.as_bytes(), value);
        }
    }

    /// Adds the fields to a header map.
    fn insert_into(self, headers: &mut HeaderMap) {
        let forwarded_for = match self.forwarded_for {
            ForwardedFor::Joined(v) => v,
            ForwardedFor::Client(ip) => HeaderValue::from_bytes(ip.as_bytes())
                .unwrap_or_else(|_| HeaderValue::from_static("unknown")),
        };
        headers.insert(X_FORWARDED_FOR, forwarded_for);
        if let Ok(v) = HeaderValue::try_from(self.forwarded) {
            headers.insert(FORWARDED, v);
        }
        headers.insert(X_FORWARDED_PROTO, self.proto);
        let port = match self.port {
            Port::Told(v) => v,
            Port::Own { port, .. } => HeaderValue::from(port),
        };
        headers.insert(X_FORWARDED_PORT, port);
    }
}

/// Removes the forwarding fields a client sent, which [`Forwarding`]
/// replaces (a trusted proxy's are read into it first); `X-Forwarded-Host`
/// stays only when the client is a trusted proxy. Most requests carry
/// none: one pass over the names finds out.
fn strip_forwarding(headers: &mut HeaderMap, trusted: bool) {
    let replaced = |name: &HeaderName| {
        name == X_FORWARDED_FOR
            || name == FORWARDED
            || name == X_FORWARDED_PROTO
            || name == X_FORWARDED_PORT
            || (!trusted && name == X_FORWARDED_HOST)
    };
    if !headers.keys().any(replaced) {
        return;
    }
    headers.remove(X_FORWARDED_FOR);
    headers.remove(FORWARDED);
    headers.remove(X_FORWARDED_PROTO);
    headers.remove(X_FORWARDED_PORT);
    if !trusted {
        headers.remove(X_FORWARDED_HOST);
    }
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const FORWARDED: HeaderName = HeaderName::from_static("forwarded");

/// The fields that describe one connection, not the message (RFC 9110 §7.6.1).
/// `Trailer` is not among them: it declares the trailers that follow.
pub(crate) static HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHENTICATE,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
];

/// HTTP/2 may carry a cookie per field (RFC 9113 §8.2.3); HTTP/1.1
/// members expect one field, the pairs joined by "; ".
fn join_cookies(headers: &mut HeaderMap) {
    let mut cookies = headers.get_all(header::COOKIE).iter();
    if cookies.next().is_none() || cookies.next().is_none() {
        return;
    }
    let mut joined = Vec::new();
    for value in headers.get_all(header::COOKIE) {
        if !joined.is_empty() {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(value.as_bytes());
    }
    // Each piece was a valid value, and so is their join.
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, v);
    }
}

/// Removes the hop-by-hop fields, including any that `Connection` names,
/// and `Expect`: Keel's server side answers a `100-continue` itself when
/// the body is first read, so the member is not asked again.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none, or only `Connection`: one pass over their
    // names costs less than a lookup for each.
    let mut found = [false; HOP_BY_HOP.len()];
    let mut expect = false;
    for name in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == name) {
            found[i] = true;
        }
        expect |= name == header::EXPECT;
    }
    if expect {
        headers.remove(header::EXPECT);
    }
    if !found.contains(&true) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        // The common options name no other field (and keep-alive goes below).
        .filter(|t| !t.eq_ignore_ascii_case("close") && !t.eq_ignore_ascii_case("keep-alive"))
        .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
        // `Host` is for every recipient (RFC 9110 §7.6.1): a client that
        // names it does not get a request without one sent on.
        .filter(|name| name != header::HOST)
        .collect();
    for name in named {
        headers.remove(name);
    }
    for (name, _) in HOP_BY_HOP.iter().zip(found).filter(|(_, f)| *f) {
        headers.remove(name);
    }
}

/// A redirect to `to`; `to` was built from validated templates and the
/// request's own (already parsed) parts, so it is a valid header value.
fn redirect_response(status: u16, to: &str) -> Response<ProxyBody> {
    let Ok(location) = HeaderValue::from_str(to) else {
        return local_response(StatusCode::INTERNAL_SERVER_ERROR);
    };
    let mut r = Response::new(ProxyBody::Local(Full::new(Bytes::new())));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::MOVED_PERMANENTLY);
    r.headers_mut().insert(header::LOCATION, location);
    r
}

fn local_response(status: StatusCode) -> Response<ProxyBody> {
    let text = format!(
        "{} {}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("Error")
    );
    let mut r = Response::new(ProxyBody::Local(Full::new(Bytes::from(text))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// A request's body as it comes from the client: read by [`h1`], by
/// hyper's HTTP/2 server, or none.
pub(crate) enum ClientBody {
    Http1(h1::Upload),
    Hyper(Incoming),
    Empty,
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ClientBody::Http1(b) => Pin::new(b).poll_frame(cx),
            ClientBody::Hyper(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            ClientBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ClientBody::Http1(b) => b.is_end_stream(),
            ClientBody::Hyper(b) => b.is_end_stream(),
            ClientBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ClientBody::Http1(b) => b.size_hint(),
            ClientBody::Hyper(b) => b.size_hint(),
            ClientBody::Empty => SizeHint::with_exact(0),
        }
    }
}

/// A client's request body on its way to a member, counted as it goes.
pub(crate) struct RequestBody {
    /// A frame read ahead of forwarding, sent before the rest.
    first: Option<Frame<Bytes>>,
    inner: ClientBody,
    /// Where the body's bytes are counted (this worker's sets); neither is
    /// kept for a request without a body.
    listener: Option<Kept<ListenerCounts>>,
    member: Option<Kept<MemberCounts>>,
    /// The listener's `request_timeout`: the body must be over by then.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The listener's `client_timeout`: the longest the body may pause.
    stall: Option<Stall>,
    /// Set to why the body failed in time ([`EXPIRED_DEADLINE`],
    /// [`EXPIRED_IDLE`]), so the failure is answered 408.
    expired: Option<Arc<AtomicU8>>,
    /// For an HTTP/2 member ([`RequestBody::watch`]). Boxed: most bodies
    /// go without.
    watch: Option<Box<Watch>>,
}

/// What a request body to an HTTP/2 member keeps, to send again.
#[derive(Default)]
struct Watch {
    /// Told when the body is over (or failed): the member's response time
    /// starts then. Sent the body to send again, where it is kept: at its
    /// end, whole; if hyper lets it go before, what was sent and the rest.
    ended: Option<tokio::sync::oneshot::Sender<Option<Box<RequestBody>>>>,
    /// A copy of the body so far, while it comes to no more than
    /// [`MOST_KEPT`]. A copy, not the chunks: a client sending a byte at
    /// a time must not make it larger.
    kept: Option<BytesMut>,
    /// What of the body was sent before, to a member that did not take it:
    /// sent first, counted once.
    resent: Option<Bytes>,
}

/// The most of a request body kept to send again to an HTTP/2 member that
/// did not take it.
const MOST_KEPT: usize = 64 * 1024;

impl RequestBody {
    /// A body with nothing in it, counted nowhere.
    fn empty() -> Self {
        RequestBody {
            first: None,
            inner: ClientBody::Empty,
            listener: None,
            member: None,
            deadline: None,
            stall: None,
            expired: None,
            watch: None,
        }
    }

    /// From now on, says when the body ends; keeps its chunks (`keep`)
    /// while they come to no more than [`MOST_KEPT`], to send again.
    fn watch(&mut self, keep: bool) -> tokio::sync::oneshot::Receiver<Option<Box<RequestBody>>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let watch = self.watch.get_or_insert_with(Box::default);
        watch.ended = Some(tx);
        watch.kept = keep.then(BytesMut::new);
        rx
    }

    /// Tells the watcher, if any, that the body is over: with the body to
    /// send again where it was kept and did not fail.
    fn end(&mut self, failed: bool) {
        let Some(watch) = self.watch.as_mut() else {
            return;
        };
        let Some(ended) = watch.ended.take() else {
            return;
        };
        let kept = watch.kept.take().filter(|_| !failed);
        let _ = ended.send(kept.map(|kept| self.again(kept)));
    }

    /// The body again: what was sent of it (`kept`) first, then what is
    /// still to come. Counted where this one is, but for what was sent.
    fn again(&mut self, kept: BytesMut) -> Box<RequestBody> {
        let mut again = Box::new(RequestBody::empty());
        again.watch = (!kept.is_empty()).then(|| {
            Box::new(Watch {
                resent: Some(kept.freeze()),
                ..Watch::default()
            })
        });
        again.first = self.first.take();
        again.inner = std::mem::replace(&mut self.inner, ClientBody::Empty);
        again.listener = self.listener.take();
        again.member = self.member.take();
        again.deadline = self.deadline.take();
        again.stall = self.stall.take();
        again.expired = self.expired.take();
        again
    }

    /// Keeps `f`, if the body is kept and still fits; trailers are not
    /// kept (a body with them does not go again).
    fn keep_frame(&mut self, f: &Frame<Bytes>) {
        let Some(watch) = self.watch.as_mut() else {
            return;
        };
        let Some(kept) = &mut watch.kept else {
            return;
        };
        match f.data_ref() {
            Some(d) if kept.len() + d.len() <= MOST_KEPT => kept.extend_from_slice(d),
            _ => watch.kept = None,
        }
    }
}

/// The request body missed the listener's `request_timeout`.
const EXPIRED_DEADLINE: u8 = 1;
/// The request body paused longer than the listener's `client_timeout`.
const EXPIRED_IDLE: u8 = 2;

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(d) = self.deadline.as_mut() {
            if d.as_mut().poll(cx).is_ready() {
                if let Some(e) = &self.expired {
                    e.store(EXPIRED_DEADLINE, Relaxed);
                }
                return Poll::Ready(Some(Err("request body not received in time".into())));
            }
        }
        if let Some(resent) = self.watch.as_mut().and_then(|w| w.resent.take()) {
            // Counted when it was first sent.
            let frame = Frame::data(resent);
            self.keep_frame(&frame);
            return Poll::Ready(Some(Ok(frame)));
        }
        let frame = match self.first.take() {
            Some(f) => Some(Ok(f)),
            None => match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Ready(frame) => frame,
                Poll::Pending => {
                    let this = &mut *self;
                    if this.stall.as_mut().is_some_and(|s| s.poll_expired(cx)) {
                        if let Some(e) = &this.expired {
                            e.store(EXPIRED_IDLE, Relaxed);
                        }
                        return Poll::Ready(Some(Err("request body paused too long".into())));
                    }
                    return Poll::Pending;
                }
            },
        };
        if let Some(s) = self.stall.as_mut() {
            s.progress();
        }
        if frame.is_none() {
            // The whole request is in: the deadline no longer applies.
            self.deadline = None;
        }
        match &frame {
            None => self.end(false),
            Some(Err(_)) => self.end(true),
            Some(Ok(f)) => self.keep_frame(f),
        }
        if let Some(Ok(f)) = &frame {
            if let Some(data) = f.data_ref() {
                let n = data.len() as u64;
                if let Some(l) = &self.listener {
                    l.bytes_in.fetch_add(n, Relaxed);
                }
                if let Some(m) = &self.member {
                    m.bytes_out.fetch_add(n, Relaxed);
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.watch.as_ref().is_none_or(|w| w.resent.is_none())
            && self.first.is_none()
            && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let resent = self.watch.as_ref().is_some_and(|w| w.resent.is_some());
        match (resent, &self.first) {
            (false, None) => self.inner.size_hint(),
            _ => SizeHint::default(),
        }
    }
}

impl Drop for RequestBody {
    /// Let go before its end: what was sent and the rest go back to be
    /// sent again, where it was kept.
    fn drop(&mut self) {
        self.end(false);
    }
}

/// A member's response body as it comes off the member's connection.
pub(crate) enum MemberBody {
    Http1(client::ResponseBody),
    Http2 {
        body: Incoming,
        /// Held until the body is done with.
        _stream: Stream,
    },
}

impl Body for MemberBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            MemberBody::Http1(b) => Pin::new(b).poll_frame(cx),
            MemberBody::Http2 { body: b, .. } => Pin::new(b)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(Into::into))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            MemberBody::Http1(b) => b.is_end_stream(),
            MemberBody::Http2 { body: b, .. } => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            MemberBody::Http1(b) => b.size_hint(),
            MemberBody::Http2 { body: b, .. } => b.size_hint(),
        }
    }
}

/// A member's response body on its way to the client. When it ends cleanly
/// an HTTP/1.1 connection goes back to the member's idle list; while it
/// streams, the request counts as outstanding on the member.
pub(crate) struct UpstreamBody {
    inner: MemberBody,
    /// The pool's `response_timeout`, as the longest the body may pause
    /// while the client waits for more.
    stall: Stall,
    /// The connection may carry other requests after this one.
    reuse: bool,
    cut: Cut,
    /// Counts the request as in flight, and is its member.
    outstanding: Outstanding,
    /// This worker's counts of the listener.
    listener: Kept<ListenerCounts>,
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.cut.is_cancelled() {
            return Poll::Ready(Some(Err("member drained".into())));
        }
        let frame = match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(frame) => frame,
            Poll::Pending if self.cut.poll(cx).is_ready() => {
                return Poll::Ready(Some(Err("member drained".into())))
            }
            Poll::Pending if self.stall.poll_expired(cx) => {
                self.reuse = false;
                let limit = self.stall.limit();
                tracing::warn!(member = %self.outstanding.member().address, timeout = ?limit, "member's response body paused too long: cut");
                return Poll::Ready(Some(Err(format!(
                    "member sent nothing of its response body for {limit:?}"
                )
                .into())));
            }
            Poll::Pending => return Poll::Pending,
        };
        self.stall.progress();
        match &frame {
            Some(Ok(f)) => {
                if let Some(data) = f.data_ref() {
                    let n = data.len() as u64;
                    self.outstanding
                        .member()
                        .stats
                        .here()
                        .bytes_in
                        .fetch_add(n, Relaxed);
                    self.listener.bytes_out.fetch_add(n, Relaxed);
                }
                // With a known length, hyper stops polling at the last byte
                // and never asks for the end: release the connection now.
                if self.inner.is_end_stream() {
                    self.release();
                }
            }
            None => self.release(),
            Some(Err(_)) => self.reuse = false,
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl UpstreamBody {
    /// Gives an HTTP/1.1 connection back for reuse once the body is over.
    fn release(&mut self) {
        if let (true, MemberBody::Http1(body)) = (self.reuse, &mut self.inner) {
            if let Some(conn) = body.take_reusable() {
                self.outstanding.member().put_idle(conn);
            }
        }
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        self.release();
    }
}

/// A member's drain cut, as a response body waits on it: most bodies are
/// over at their first poll, so the waker is only left with the signal
/// when one is not.
struct Cut(Until<Signal>);

impl Cut {
    fn new(signal: Signal) -> Cut {
        Cut(signal.until_owned())
    }

    fn is_cancelled(&self) -> bool {
        self.0.signal().fired()
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.0).poll(cx)
    }
}

/// What the client receives: a member's response or one of Keel's own.
pub(crate) enum ProxyBody {
    Upstream(UpstreamBody),
    Local(Full<Bytes>),
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ProxyBody::Upstream(b) => Pin::new(b).poll_frame(cx),
            ProxyBody::Local(b) => Pin::new(b)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(|never| match never {}))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Upstream(b) => b.is_end_stream(),
            ProxyBody::Local(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Upstream(b) => b.size_hint(),
            ProxyBody::Local(b) => b.size_hint(),
        }
    }
}

/// Boxes the future `make` returns, allocating first: the future can then
/// be written straight into the box instead of made on the stack and
/// copied (a request's futures are kilobytes: 540 instructions of
/// `memcpy` per HTTP/1.1 request, measured by `instructions.sh`).
pub(crate) fn boxed<F: Future>(make: impl FnOnce() -> F) -> Pin<Box<F>> {
    Box::into_pin(Box::write(Box::new_uninit(), make()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_address_is_written_whole_in_place() {
        for ip in [
            "192.0.2.1",
            "255.255.255.255",
            "::1",
            "::ffff:255.255.255.255",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            "2001:db8::8a2e:370:7334",
        ] {
            let parsed: IpAddr = ip.parse().unwrap();
            assert_eq!(
                IpText::new(parsed).as_bytes(),
                parsed.to_string().as_bytes(),
                "{ip}"
            );
        }
    }

    #[test]
    fn a_listeners_port_is_written_out_in_decimal() {
        for (port, text) in [(1, "1"), (80, "80"), (8080, "8080"), (65535, "65535")] {
            assert_eq!(Port::own(port).as_bytes(), text.as_bytes());
        }
    }

    /// A body of two chunks, `a` and `b`.
    fn body_of(a: &'static [u8], b: &'static [u8]) -> RequestBody {
        let mut body = RequestBody::empty();
        body.watch = Some(Box::new(Watch {
            resent: Some(Bytes::from_static(a)),
            ..Watch::default()
        }));
        body.first = Some(Frame::data(Bytes::from_static(b)));
        body
    }

    async fn read_all(body: &mut RequestBody) -> Vec<u8> {
        let mut read = Vec::new();
        while let Some(frame) = body.frame().await {
            read.extend_from_slice(frame.unwrap().data_ref().unwrap());
        }
        read
    }

    /// A body that ends comes back whole to send again, while it comes to
    /// no more than [`MOST_KEPT`].
    #[tokio::test]
    async fn a_body_comes_back_whole_up_to_its_limit() {
        let big: &'static [u8] = vec![b'x'; MOST_KEPT].leak();
        for (a, b, kept) in [
            (&b"ab"[..], &b"cd"[..], true),
            (big, b"", true),
            (big, b"y", false),
        ] {
            let mut body = body_of(a, b);
            let ended = body.watch(true);
            let sent = read_all(&mut body).await;
            assert_eq!(sent, [a, b].concat());
            match (ended.await.unwrap(), kept) {
                (Some(mut again), true) => assert_eq!(read_all(&mut again).await, sent),
                (None, false) => {}
                (again, _) => panic!("{} bytes: came back {}", sent.len(), again.is_some()),
            }
        }
    }

    /// A body let go before its end comes back: what was sent of it, then
    /// the rest. Unkept, it does not.
    #[tokio::test]
    async fn a_body_let_go_unfinished_comes_back_with_the_rest() {
        for keep in [true, false] {
            let mut body = body_of(b"ab", b"cd");
            let ended = body.watch(keep);
            let first = body.frame().await.unwrap().unwrap();
            assert_eq!(first.data_ref().unwrap(), &b"ab"[..]);
            drop(body);
            match (ended.await.unwrap(), keep) {
                (Some(mut again), true) => assert_eq!(read_all(&mut again).await, b"abcd"),
                (None, false) => {}
                (again, _) => panic!("kept {keep}: came back {}", again.is_some()),
            }
        }
    }
}
