//! The runtime state of one member of one pool: health, load, drain, traffic
//! counters and idle upstream HTTP connections. It outlives plans: a member
//! that stays in the config keeps its state across reconfigurations.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use crate::client;
use crate::http::h2_member::Stream;
use crate::http::{Http2Conn, Http2Sender};
use crate::metrics::MemberStats;
use crate::signal::Signal;
use crate::workers::{self, Padded, Ref};

/// Idle upstream connections kept per member.
const MAX_IDLE: usize = 256;
/// An idle upstream connection older than this is closed rather than reused:
/// shorter than common backend keep-alive timeouts (Node.js closes after
/// 5 s), so Keel rarely sends on a connection the member is closing.
const IDLE_LIFETIME: Duration = Duration::from_secs(4);
/// How often idle connections are looked over while there are any: one a
/// member closed is let go within this (not left half-closed).
const IDLE_SWEEP: Duration = Duration::from_secs(1);

pub struct MemberState {
    pub pool: String,
    pub address: SocketAddr,
    up: AtomicBool,
    /// Duration of the latest health check in microseconds; `u64::MAX`
    /// before the first.
    last_check_us: AtomicU64,
    /// This node runs the member's health checks; when false, its health
    /// comes from elsewhere (other nodes' checks, through the node).
    checks_here: AtomicBool,
    /// Requests and connections in flight, counted by the worker that
    /// started each (its own line): the total is their sum.
    outstanding: Box<[Padded<AtomicU64>]>,
    /// Mirrors `drain.draining` so the request path reads it without a lock.
    draining: AtomicBool,
    drain: Mutex<Drain>,
    pub stats: MemberStats,
    /// Idle connections, one list per worker: a connection is reused by
    /// the worker whose runtime it is registered with, and no two workers
    /// take the same lock.
    idle: Box<[Padded<Mutex<Idle>>]>,
    /// The HTTP/2 connection each worker's requests share, for pools that
    /// speak HTTP/2.
    http2: Box<[Padded<Http2Shard>]>,
    /// Fired when the drain time runs out (then replaced), one per
    /// worker: a request waits on its own worker's, a lock no other
    /// worker takes.
    cuts: Box<[Padded<Mutex<Signal>>]>,
}

/// A worker's shared HTTP/2 connections to a member.
#[derive(Default)]
struct Http2Shard {
    shared: Mutex<Http2Slot>,
    /// Held while a new connection is made, so requests that find none (a
    /// GOAWAY's refused streams all at once) wait for one instead of each
    /// opening its own.
    connecting: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct Http2Slot {
    /// Oldest first: a request takes a stream on the first that has one
    /// free, so the newer ones fall idle when the load falls.
    conns: Vec<Http2Shared>,
    /// How many connections were shared so far: names each.
    made: u64,
    /// How many attempts at a new shared connection failed so far.
    failed: u64,
    /// A task looks the connections over while there is more than one.
    swept: bool,
}

impl Http2Slot {
    /// Lets go of closed connections, and of those past the first open one
    /// that no request used for [`IDLE_LIFETIME`].
    fn prune(&mut self, now: Instant) {
        let mut first = true;
        self.conns.retain(|s| {
            let keep = !s.conn.sender.is_closed()
                && (first || !s.conn.streams.idle() || now.duration_since(s.used) < IDLE_LIFETIME);
            first &= !keep;
            keep
        });
    }
}

struct Http2Shared {
    conn: Http2Conn,
    which: u64,
    /// When a request last took a stream on it.
    used: Instant,
}

/// Idle upstream connections, oldest first, and whether a sweeper task
/// looks over them.
#[derive(Default)]
struct Idle {
    conns: VecDeque<(Instant, client::Conn)>,
    swept: bool,
}

struct Drain {
    /// Bumped whenever the member is put back in service, so a pending cut
    /// from an earlier drain does not fire.
    generation: u64,
    draining: bool,
}

impl MemberState {
    pub fn new(pool: &str, address: SocketAddr) -> Arc<Self> {
        Arc::new(MemberState {
            pool: pool.to_owned(),
            address,
            up: AtomicBool::new(true),
            last_check_us: AtomicU64::new(u64::MAX),
            checks_here: AtomicBool::new(true),
            outstanding: (0..workers::shards())
                .map(|_| Padded(AtomicU64::new(0)))
                .collect(),
            draining: AtomicBool::new(false),
            drain: Mutex::new(Drain {
                generation: 0,
                draining: false,
            }),
            stats: MemberStats::default(),
            idle: (0..workers::shards())
                .map(|_| Padded(Mutex::new(Idle::default())))
                .collect(),
            http2: (0..workers::shards())
                .map(|_| Padded(Http2Shard::default()))
                .collect(),
            cuts: (0..workers::shards())
                .map(|_| Padded(Mutex::new(Signal::new())))
                .collect(),
        })
    }

    /// This worker's idle connections.
    fn idle(&self) -> MutexGuard<'_, Idle> {
        lock(&workers::mine(&self.idle).0)
    }

    /// This worker's shared HTTP/2 connection.
    fn http2(&self) -> MutexGuard<'_, Http2Slot> {
        lock(&workers::mine(&self.http2).0.shared)
    }

    /// Closes every worker's pooled connections.
    fn forget_all(&self) {
        for idle in self.idle.iter() {
            lock(&idle.0).conns.clear();
        }
        for http2 in self.http2.iter() {
            lock(&http2.0.shared).conns.clear();
        }
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Relaxed)
    }

    /// Sets health; returns whether it changed.
    pub fn set_up(&self, up: bool) -> bool {
        let changed = self.up.swap(up, Relaxed) != up;
        if changed {
            self.stats.here().health_flips.fetch_add(1, Relaxed);
            if !up {
                self.forget_all();
            }
        }
        changed
    }

    /// Whether this node probes the member itself.
    pub fn checks_here(&self) -> bool {
        self.checks_here.load(Relaxed)
    }

    /// Probe here (true) or leave health to [`MemberState::set_up`] calls
    /// from outside (false); returns whether it changed.
    pub fn set_checks_here(&self, here: bool) -> bool {
        self.checks_here.swap(here, Relaxed) != here
    }

    /// Records how long a health check took.
    pub fn record_check(&self, took: Duration) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX - 1);
        self.last_check_us.store(us, Relaxed);
    }

    /// How long the latest health check took, in milliseconds.
    pub fn last_check_ms(&self) -> Option<u64> {
        let us = self.last_check_us.load(Relaxed);
        (us != u64::MAX).then_some(us / 1000)
    }

    /// Requests and connections in flight on the member, from all workers.
    pub fn outstanding(&self) -> u64 {
        self.outstanding.iter().map(|n| n.0.load(Relaxed)).sum()
    }

    /// Those the calling worker started: what `least_outstanding` and
    /// `random_two` compare, so that picking reads no line another worker
    /// writes (each worker balances its own share).
    pub fn outstanding_here(&self) -> u64 {
        workers::mine(&self.outstanding).0.load(Relaxed)
    }

    /// What fires when this member's drain time runs out, for this
    /// worker's requests.
    pub(crate) fn cut(&self) -> Signal {
        lock(&workers::mine(&self.cuts).0).clone()
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Relaxed)
    }

    /// Starts draining: the caller has already stopped sending new traffic;
    /// what is in flight is cut after `timeout` unless the member returns.
    pub fn start_drain(self: &Arc<Self>, timeout: Duration) {
        let generation = {
            let mut d = lock(&self.drain);
            if d.draining {
                return;
            }
            d.draining = true;
            self.draining.store(true, Relaxed);
            d.generation
        };
        self.forget_all();
        tracing::info!(pool = %self.pool, member = %self.address, ?timeout, "member draining");
        let me = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(timeout).await;
            let d = lock(&me.drain);
            if d.draining && d.generation == generation {
                let in_flight = me.outstanding();
                if in_flight > 0 {
                    tracing::warn!(pool = %me.pool, member = %me.address, in_flight, "drain time over: cutting");
                }
                for cut in me.cuts.iter() {
                    let mut cut = lock(&cut.0);
                    cut.fire();
                    *cut = Signal::new();
                }
            }
        });
    }

    /// Puts a draining member back in service.
    pub fn stop_drain(&self) {
        let mut d = lock(&self.drain);
        if d.draining {
            d.draining = false;
            self.draining.store(false, Relaxed);
            d.generation += 1;
            tracing::info!(pool = %self.pool, member = %self.address, "member back in service");
        }
    }

    /// The most recently returned idle upstream connection that is young
    /// enough to reuse; the caller checks that it is still open.
    pub(crate) fn take_idle(&self) -> Option<client::Conn> {
        let mut idle = self.idle();
        while let Some((since, conn)) = idle.conns.pop_back() {
            if since.elapsed() < IDLE_LIFETIME {
                return Some(conn);
            }
        }
        None
    }

    /// Closes pooled connections (idle HTTP/1.1, shared HTTP/2): the way to
    /// reach the member changed. Requests under way finish on theirs.
    pub(crate) fn forget_connections(&self) {
        self.forget_all();
    }

    /// A stream on one of this worker's open HTTP/2 connections to the
    /// member, the oldest with one free, and which connection it is (for
    /// [`MemberState::forget_http2`]). Closed connections are let go, as
    /// are newer ones no request used for [`IDLE_LIFETIME`].
    pub(crate) fn shared_http2(&self) -> Option<(Http2Sender, Stream, u64)> {
        let mut shared = self.http2();
        let now = Instant::now();
        shared.prune(now);
        shared.conns.iter_mut().find_map(|s| {
            let stream = s.conn.streams.take()?;
            s.used = now;
            Some((s.conn.sender.clone(), stream, s.which))
        })
    }

    /// Adds `conn` to the HTTP/2 connections requests share; which one it
    /// is. While there is more than one, a task looks them over each
    /// [`IDLE_SWEEP`], so one the load no longer needs is closed though no
    /// request comes to find it.
    pub(crate) fn share_http2(self: &Arc<Self>, conn: Http2Conn) -> u64 {
        let shard = workers::shard(self.http2.len());
        let mut shared = lock(&self.http2[shard].0.shared);
        shared.made += 1;
        let which = shared.made;
        if self.is_up() && !self.is_draining() {
            shared.conns.push(Http2Shared {
                conn,
                which,
                used: Instant::now(),
            });
        }
        if shared.conns.len() > 1 && !shared.swept {
            shared.swept = true;
            tokio::spawn(sweep_http2(Arc::downgrade(self), shard));
        }
        which
    }

    /// No more requests on shared connection `which` (it is going away).
    pub(crate) fn forget_http2(&self, which: u64) {
        self.http2().conns.retain(|s| s.which != which);
    }

    /// Held while this worker makes a new HTTP/2 connection to the member;
    /// with it, whether an attempt made while this one waited failed.
    pub(crate) async fn connecting_http2(&self) -> (tokio::sync::MutexGuard<'_, ()>, bool) {
        let failed = self.http2().failed;
        let guard = workers::mine(&self.http2).0.connecting.lock().await;
        (guard, self.http2().failed != failed)
    }

    /// An attempt at a new shared HTTP/2 connection failed.
    pub(crate) fn http2_failed(&self) {
        self.http2().failed += 1;
    }

    /// Returns a connection whose exchange finished cleanly. While any are
    /// idle, a task looks them over each [`IDLE_SWEEP`].
    pub(crate) fn put_idle(self: &Arc<Self>, conn: client::Conn) {
        if !self.is_up() || self.is_draining() {
            return;
        }
        let shard = workers::shard(self.idle.len());
        let mut idle = lock(&self.idle[shard].0);
        let now = Instant::now();
        // The oldest are at the front: expired ones leave from there, O(1)
        // for each return.
        while idle
            .conns
            .front()
            .is_some_and(|(since, _)| now.duration_since(*since) >= IDLE_LIFETIME)
        {
            idle.conns.pop_front();
        }
        if idle.conns.len() >= MAX_IDLE {
            return;
        }
        idle.conns.push_back((now, conn));
        if !idle.swept {
            idle.swept = true;
            tokio::spawn(sweep_idle(Arc::downgrade(self), shard));
        }
    }
}

/// Drops the idle connections of one worker's list (`shard`) that expired
/// or that the member closed, until none is left (or the member is gone).
/// It runs on that worker.
async fn sweep_idle(member: Weak<MemberState>, shard: usize) {
    loop {
        tokio::time::sleep(IDLE_SWEEP).await;
        let Some(member) = member.upgrade() else {
            return;
        };
        let mut idle = lock(&member.idle[shard].0);
        let now = Instant::now();
        idle.conns.retain_mut(|(since, conn)| {
            now.duration_since(*since) < IDLE_LIFETIME && conn.is_open()
        });
        if idle.conns.is_empty() {
            idle.swept = false;
            return;
        }
    }
}

/// Lets go of one worker's (`shard`) surplus HTTP/2 connections to a
/// member as they fall idle, until one is left (or the member is gone).
/// It runs on that worker.
async fn sweep_http2(member: Weak<MemberState>, shard: usize) {
    loop {
        tokio::time::sleep(IDLE_SWEEP).await;
        let Some(member) = member.upgrade() else {
            return;
        };
        let mut shared = lock(&member.http2[shard].0.shared);
        shared.prune(Instant::now());
        if shared.conns.len() <= 1 {
            shared.swept = false;
            return;
        }
    }
}

impl Ref<MemberState> {
    /// Counts one in-flight request or connection until the guard drops;
    /// the guard keeps this worker's reference, and the count is on the
    /// worker's own line.
    pub fn begin(&self) -> Outstanding {
        let member = self.shared();
        let shard = workers::shard(member.outstanding.len());
        member.outstanding[shard].0.fetch_add(1, Relaxed);
        Outstanding {
            member: self.clone(),
            shard,
        }
    }
}

/// One in-flight request or connection on a member.
pub struct Outstanding {
    /// The worker's reference, not the member's own `Arc`.
    member: Ref<MemberState>,
    /// The worker whose count it is in.
    shard: usize,
}

impl Outstanding {
    pub fn member(&self) -> &Arc<MemberState> {
        self.member.shared()
    }
}

impl Drop for Outstanding {
    fn drop(&mut self) {
        self.member().outstanding[self.shard]
            .0
            .fetch_sub(1, Relaxed);
    }
}

/// Locks a mutex, recovering from poisoning: the data behind these locks
/// stays consistent across a panic (plain values, no multi-step updates).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
