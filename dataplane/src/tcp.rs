//! Layer 4: relay bytes between a client and a member, both ways.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use nix::fcntl::{splice, OFlag, SpliceFFlags};
use nix::unistd::pipe2;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, Interest, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use keel_model::ProxyProtocol;

use crate::coalesce;
use crate::error::ProxyError;
use crate::member::Outstanding;
use crate::plan::{ListenerPlan, PoolPlan};
use crate::proxy_protocol::{self, Addresses};
use crate::signal::Signal;
use crate::tls::{Alpn, TlsFromClient, TlsToMember};

/// Bytes moved per `splice` call at first: the default pipe capacity.
const BUFFER: usize = 64 * 1024;

/// Connects to a member of `pool` for `client`, trying up to three members
/// when connections are refused or time out (nothing was sent, so it is safe).
pub(crate) async fn connect(
    pool: &PoolPlan,
    ends: Addresses,
) -> Result<(Upstream, Outstanding), ProxyError> {
    let client = ends.source;
    let mut tried = Vec::new();
    let mut last = None;
    while tried.len() < 3 {
        let Some(member) = pool.balancer.pick(client.ip(), None, &tried) else {
            break;
        };
        tried.push(member.address);
        let guard = member.begin();
        let member = guard.member();
        let timeout = pool.spec.connect_timeout;
        let opening = open(member.address, pool, ends, Alpn::None);
        let err = match tokio::time::timeout(timeout, opening).await {
            Ok(Ok(stream)) => return Ok((stream, guard)),
            Ok(Err(source)) => ProxyError::Connect {
                member: member.address,
                source,
            },
            Err(_) => ProxyError::ConnectTimeout {
                member: member.address,
                timeout,
            },
        };
        member.stats.here().connect_failures.fetch_add(1, Relaxed);
        tracing::warn!(pool = %pool.spec.name, member = %member.address, error = %err, "member connection failed");
        last = Some(err);
    }
    pool.stats
        .here()
        .no_member
        .fetch_add(u64::from(last.is_none()), Relaxed);
    Err(last.unwrap_or_else(|| ProxyError::NoMember {
        pool: pool.spec.name.clone(),
    }))
}

/// A connection to a member: a plain socket, or TLS over one.
pub(crate) enum Upstream {
    Plain(TcpStream),
    Tls(Box<TlsToMember>),
}

/// A connection to `member`, with the pool's PROXY header sent (before
/// TLS, as members expect) and the pool's TLS set up, offering `alpn`.
pub(crate) async fn open(
    member: SocketAddr,
    pool: &PoolPlan,
    ends: Addresses,
    alpn: Alpn,
) -> io::Result<Upstream> {
    let mut stream = TcpStream::connect(member).await?;
    let _ = stream.set_nodelay(true);
    let header = match pool.spec.proxy_protocol {
        None => None,
        Some(ProxyProtocol::V1) => Some(proxy_protocol::encode_v1(ends)),
        Some(ProxyProtocol::V2) => Some(proxy_protocol::encode_v2(ends)),
    };
    if let Some(header) = header {
        stream.write_all(&header).await?;
    }
    match &pool.tls {
        None => Ok(Upstream::Plain(stream)),
        Some(tls) => Ok(Upstream::Tls(Box::new(
            tls.connect(stream, member, alpn).await?,
        ))),
    }
}

impl AsyncRead for Upstream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Upstream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Upstream::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Upstream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Upstream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Upstream::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Upstream::Plain(s) => Pin::new(s).poll_flush(cx),
            Upstream::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Upstream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Upstream::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Upstream::Plain(s) => coalesce::poll_write_vectored(Pin::new(s), cx, bufs),
            Upstream::Tls(s) => coalesce::poll_write_vectored(Pin::new(s), cx, bufs),
        }
    }

    /// Vectored writes are taken as they come; small ones leave as one
    /// write (`coalesce`).
    fn is_write_vectored(&self) -> bool {
        true
    }
}

/// Proxies one accepted TCP connection until both sides are done, the
/// connection idles out, or a drain cuts it.
pub(crate) async fn serve(
    client: TcpStream,
    ends: Addresses,
    listener: Arc<ListenerPlan>,
    pool: Arc<PoolPlan>,
    cut: Signal,
) {
    let Some((upstream, guard)) = connect_for(&client, ends, &pool).await else {
        return;
    };
    let member = guard.member().clone();
    let member_cut = member.cut();
    let counters = Counters::between(&listener.stats, &member.stats);
    let idle = listener.spec.idle_timeout;
    let work = async {
        match upstream {
            Upstream::Plain(member) => relay(client, member, idle, &counters).await,
            tls => pipe(client, tls, idle, &counters).await,
        }
    };
    let result = tokio::select! {
        r = work => r,
        () = cut.until() => Err(io::Error::other("listener drained")),
        () = member_cut.until() => Err(io::Error::other("member drained")),
    };
    if let Err(e) = result {
        tracing::debug!(client.addr = %ends.source, member = %member.address, error = %e, "tcp connection ended");
    }
    drop(guard);
}

/// Connects a new client connection to a member of `pool`, counting it; on
/// failure the client's socket is set to reset when dropped, so it learns
/// at once that it failed.
async fn connect_for(
    client: &TcpStream,
    ends: Addresses,
    pool: &PoolPlan,
) -> Option<(Upstream, Outstanding)> {
    pool.stats.here().connections.fetch_add(1, Relaxed);
    match connect(pool, ends).await {
        Ok((upstream, guard)) => {
            guard
                .member()
                .stats
                .here()
                .connections
                .fetch_add(1, Relaxed);
            Some((upstream, guard))
        }
        Err(e) => {
            tracing::warn!(client.addr = %ends.source, pool = %pool.spec.name, error = %e, "refusing connection");
            let _ = socket2::SockRef::from(client).set_linger(Some(Duration::ZERO));
            None
        }
    }
}

/// Proxies a connection whose client side is not a plain socket (TLS
/// terminated here): bytes are copied through user space, both ways, with
/// half-close, the idle timeout and drains as for [`serve`].
pub(crate) async fn serve_stream(
    client: TlsFromClient,
    ends: Addresses,
    listener: Arc<ListenerPlan>,
    cut: Signal,
) {
    let pool = listener.pool.clone();
    let Some((upstream, guard)) = connect_for(&client.get_ref().0.io, ends, &pool).await else {
        return;
    };
    let member = guard.member().clone();
    let member_cut = member.cut();
    let counters = Counters::between(&listener.stats, &member.stats);
    let result = tokio::select! {
        r = pipe(client, upstream, listener.spec.idle_timeout, &counters) => r,
        () = cut.until() => Err(io::Error::other("listener drained")),
        () = member_cut.until() => Err(io::Error::other("member drained")),
    };
    if let Err(e) = result {
        tracing::debug!(client.addr = %ends.source, member = %member.address, error = %e, "tls connection ended");
    }
    drop(guard);
}

/// Copies both ways between two streams through user space, with
/// half-close, until both are done or nothing moved for `idle`.
pub(crate) async fn pipe<A, B>(
    client: A,
    member: B,
    idle: Duration,
    counters: &Counters<'_>,
) -> io::Result<()>
where
    A: AsyncRead + AsyncWrite,
    B: AsyncRead + AsyncWrite,
{
    let activity = Activity::new();
    let (client_read, client_write) = tokio::io::split(client);
    let (member_read, member_write) = tokio::io::split(member);
    let both = async {
        tokio::try_join!(
            copy_one_way(
                client_read,
                member_write,
                &activity,
                counters.client_to_member
            ),
            copy_one_way(
                member_read,
                client_write,
                &activity,
                counters.member_to_client
            ),
        )
    };
    watch_idle(both, &activity, idle).await
}

/// Copies until end of stream, then passes the end on (half-close).
async fn copy_one_way<R, W>(
    mut from: R,
    mut to: W,
    activity: &Activity,
    counters: [&AtomicU64; 2],
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return to.shutdown().await;
        }
        to.write_all(&buf[..n]).await?;
        // A TLS stream may keep records it could not send yet (a full
        // socket, or a deferred write): they must leave before the wait
        // for more.
        to.flush().await?;
        activity.touch();
        for c in counters {
            c.fetch_add(n as u64, Relaxed);
        }
    }
}

/// Runs `work` until it ends or nothing has moved for `idle`.
async fn watch_idle<F, T>(work: F, activity: &Activity, idle: Duration) -> io::Result<()>
where
    F: std::future::Future<Output = io::Result<T>>,
{
    tokio::pin!(work);
    loop {
        let deadline = activity.last() + idle;
        tokio::select! {
            r = &mut work => return r.map(|_| ()),
            _ = tokio::time::sleep_until(deadline) => {
                if activity.last() + idle <= Instant::now() {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "idle timeout"));
                }
            }
        }
    }
}

/// The byte counters each direction adds to: listener and member.
pub(crate) struct Counters<'a> {
    pub client_to_member: [&'a AtomicU64; 2],
    pub member_to_client: [&'a AtomicU64; 2],
}

impl<'a> Counters<'a> {
    /// The calling worker's byte counters of `listener` and `member`.
    pub(crate) fn between(
        listener: &'a crate::metrics::ListenerStats,
        member: &'a crate::metrics::MemberStats,
    ) -> Self {
        let (l, m) = (listener.here(), member.here());
        Counters {
            client_to_member: [&l.bytes_in, &m.bytes_out],
            member_to_client: [&l.bytes_out, &m.bytes_in],
        }
    }
}

/// Copies both ways. When one side finishes sending, its FIN is passed on
/// and the other direction keeps flowing (half-close).
async fn relay(
    client: TcpStream,
    member: TcpStream,
    idle: Duration,
    counters: &Counters<'_>,
) -> io::Result<()> {
    let activity = Activity::new();
    let both = async {
        tokio::try_join!(
            splice_one_way(&client, &member, &activity, &counters.client_to_member),
            splice_one_way(&member, &client, &activity, &counters.member_to_client),
        )
    };
    watch_idle(both, &activity, idle).await
}

/// Moves bytes from `from` to `to` through a kernel pipe with `splice(2)`,
/// so they never enter user space. End of stream from `from` is passed on
/// as a FIN to `to` (half-close).
async fn splice_one_way(
    from: &TcpStream,
    to: &TcpStream,
    activity: &Activity,
    counters: &[&AtomicU64; 2],
) -> io::Result<()> {
    let (pipe_out, pipe_in) = pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
    let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
    let mut chunk = BUFFER;
    loop {
        // The pipe is empty here, so "would block" can only mean the socket.
        let n = loop {
            from.readable().await?;
            match from.try_io(Interest::READABLE, || {
                Ok(splice(from, None, &pipe_in, None, chunk, flags)?)
            }) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        };
        if n == 0 {
            return socket2::SockRef::from(to).shutdown(std::net::Shutdown::Write);
        }
        let mut left = n;
        while left > 0 {
            to.writable().await?;
            match to.try_io(Interest::WRITABLE, || {
                Ok(splice(&pipe_out, None, to, None, left, flags)?)
            }) {
                Ok(m) => left -= m,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
        activity.touch();
        for c in counters {
            c.fetch_add(n as u64, Relaxed);
        }
        if n == BUFFER && chunk == BUFFER {
            // A full pipe: a bulk transfer, which a larger pipe moves in
            // fewer calls. Where the kernel refuses (the user's pipe
            // allowance spent), the default stays.
            chunk = rustix::pipe::fcntl_setpipe_size(&pipe_in, BULK).unwrap_or(BUFFER);
        }
    }
}

/// A bulk transfer's pipe: a quarter of the calls and wake-ups per byte
/// of the default's (L4 in `tests/bench/compare.sh`: 1.45× HAProxy's
/// rate at 0.29× its CPU per byte, where the default pipe gave 1.30× and
/// 0.49×; a 1 MiB pipe did no better).
const BULK: usize = 256 * 1024;

/// When either direction last moved data, readable from the idle watchdog.
struct Activity {
    start: Instant,
    millis: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Activity {
            start: Instant::now(),
            millis: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.millis.store(ms, Relaxed);
    }

    fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.millis.load(Relaxed))
    }
}
