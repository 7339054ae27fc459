//! Keel's proxy engine, usable and benchmarkable on its own.
//!
//! [`Dataplane::apply`] takes a validated [`Spec`], binds what is new,
//! compiles an immutable plan and swaps it in with one atomic store. Each
//! connection (L4) or request (L7) reads the plan once; connections that
//! started on an older plan finish on it, and members or listeners that
//! leave drain for their pool's `drain_timeout`. If binding fails nothing
//! changes and the old plan keeps serving.
//!
//! This crate knows nothing of Raft, gossip or the node: it is told what to
//! serve and serves it.

mod balance;
mod client;
mod coalesce;
mod error;
#[doc(hidden)]
pub mod fuzz;
mod health;
mod http;
mod limit;
mod member;
mod metrics;
mod peek;
mod plan;
mod proxy_protocol;
mod replay;
mod route;
mod signal;
mod sni;
mod stall;
mod sticky;
mod tcp;
mod tls;
mod wire;
mod workers;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::BytesMut;
use keel_model::{Protocol, Spec};
use socket2::{Domain, Socket, Type};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use error::{ApplyError, ProxyError, Retry, Side};
pub use http::{MAX_HEADERS, MAX_HEAD_BYTES, MAX_URI_BYTES};
pub use metrics::BUCKETS as LATENCY_BUCKETS;
pub use workers::{default_count as default_workers, pinned_by_default, Workers};

use balance::Balancer;
use coalesce::Coalesce;
use member::MemberState;
use metrics::{label, ListenerStats, PoolStats, Writer};
use plan::{ListenerPlan, Plan, PoolPlan, SharedPlan};
use signal::Signal;
use workers::Refs;

/// The running proxy engine. Cheap to share behind an `Arc`.
pub struct Dataplane {
    plan: SharedPlan,
    registry: tokio::sync::Mutex<Registry>,
    connections: TaskTracker,
    /// Where connections are served: these threads, each with sockets of
    /// its own for every listener; without them, the runtime that applies.
    workers: Option<Workers>,
}

/// What outlives plans: bound sockets, member state, health checkers, counters.
#[derive(Default)]
struct Registry {
    listeners: HashMap<SocketAddr, RunningListener>,
    members: HashMap<(String, SocketAddr), MemberEntry>,
    pool_stats: HashMap<String, Arc<PoolStats>>,
    listener_stats: HashMap<SocketAddr, Arc<ListenerStats>>,
    /// Rate limiters by listener, kept across plans while their limits hold.
    limiters: HashMap<SocketAddr, Arc<limit::RateLimiter>>,
    /// Sign sticky-session cookies (the first) and are honoured in them
    /// (all); empty until set: a random key of this process.
    cookie_keys: Vec<sticky::CookieKey>,
    version: u64,
    shut_down: bool,
}

struct RunningListener {
    /// Stops the accept loop (and so closes the listening socket).
    stop: CancellationToken,
    /// True: the listening socket drops new connection attempts silently
    /// while it still accepts what completed (see [`Dataplane::quiesce`]);
    /// false again: it answers them ([`Dataplane::resume`]).
    quiet: watch::Sender<bool>,
    /// One per accept loop (one per worker), true once it is quiet and has
    /// taken every connection that was already waiting to be accepted.
    quieted: Vec<watch::Receiver<bool>>,
    /// Asks established connections to finish what they are doing and close.
    closing: Signal,
    /// Closes established connections at once.
    cut: Signal,
    drain_timeout: Duration,
}

/// The accept loop's copies of a [`RunningListener`]'s tokens.
struct ListenerSignals {
    stop: CancellationToken,
    quiet: watch::Receiver<bool>,
    quieted: watch::Sender<bool>,
    /// Children of the listener's: a connection's wait on them is a lock
    /// on its worker's own.
    closing: Signal,
    cut: Signal,
}

struct MemberEntry {
    state: Arc<MemberState>,
    drain_timeout: Duration,
    checker: Option<(health::Probe, CancellationToken)>,
}

/// Cumulative traffic of one load balancer or pool on this node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrafficCounters {
    /// HTTP responses, or TCP connections.
    pub requests: u64,
    /// 5xx responses, requests with no member to take them, refused member
    /// connections.
    pub errors: u64,
    /// Connections (load balancer) or in-flight requests (pool) now.
    pub active: u64,
    /// Responses per latency bucket: one per bound of [`LATENCY_BUCKETS`],
    /// then one for slower ones.
    pub latency: [u64; LATENCY_BUCKETS.len() + 1],
}

/// One listener's cumulative counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ListenerCounters {
    /// Connections accepted.
    pub connections: u64,
    /// Connections open now.
    pub active: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// 5xx responses.
    pub errors: u64,
}

/// A member as the data plane sees it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberStatus {
    pub pool: String,
    pub address: SocketAddr,
    pub enabled: bool,
    pub weight: u32,
    /// Passing its health checks (always true without a check).
    pub healthy: bool,
    /// Removed or disabled, finishing what it has.
    pub draining: bool,
    /// In-flight requests (HTTP) or open connections (TCP).
    pub outstanding: u64,
    /// Duration of the latest health check, once one ran.
    pub last_check_ms: Option<u64>,
    /// Its pool has an active health check.
    pub has_check: bool,
    /// This node runs that check itself (see [`Dataplane::set_checking`]).
    pub checked_here: bool,
}

impl Default for Dataplane {
    fn default() -> Self {
        Self::new()
    }
}

impl Dataplane {
    /// An engine serving nothing until the first [`apply`](Self::apply),
    /// its connections on the runtime that applies.
    pub fn new() -> Self {
        Dataplane {
            plan: Arc::new(ArcSwap::from_pointee(Plan::default())),
            registry: tokio::sync::Mutex::new(Registry::default()),
            connections: TaskTracker::new(),
            workers: None,
        }
    }

    /// An engine whose connections are served on `workers`, each accepting
    /// on a socket of its own; health checks and the rest stay on the
    /// runtime that applies.
    pub fn with_workers(workers: Workers) -> Self {
        Dataplane {
            workers: Some(workers),
            ..Self::new()
        }
    }

    /// The version of the plan now serving: 0 before the first apply, then
    /// one more for each successful apply.
    pub fn version(&self) -> u64 {
        self.plan.load().version
    }

    /// Sets the secrets sticky-session cookies are signed with (the first)
    /// and honoured with (all), from the next apply on. Nodes of one
    /// cluster pass the same secrets so a client keeps its member whichever
    /// node answers; without them, a random key of this process is used.
    pub async fn set_cookie_secrets(&self, secrets: &[Vec<u8>]) {
        self.registry.lock().await.cookie_keys = secrets
            .iter()
            .map(|s| sticky::CookieKey::derive(s))
            .collect();
    }

    /// Makes `spec` the served configuration, or changes nothing and says why.
    pub async fn apply(&self, spec: &Spec) -> Result<u64, ApplyError> {
        let mut reg = self.registry.lock().await;
        if reg.shut_down {
            return Err(ApplyError::ShuttingDown);
        }

        // Compile certificates and bind first: they are the only steps that
        // can fail, and a failure must leave everything as it was (the new
        // sockets close on return).
        let mut wanted = HashMap::new();
        for lb in spec.load_balancers.values() {
            for l in &lb.listeners {
                wanted.insert(l.bind_addr(lb.vip.as_ref()), (lb, l));
            }
        }
        let mut tls = HashMap::new();
        for (&addr, (lb, l)) in &wanted {
            if l.protocol.terminates_tls() {
                let config = tls::server_config(l, &spec.certificates).map_err(|message| {
                    ApplyError::Tls {
                        lb: lb.name.clone(),
                        addr,
                        message,
                    }
                })?;
                tls.insert(addr, config);
            }
        }
        let mut member_tls = HashMap::new();
        for pool in spec.pools.values() {
            if let Some(t) = &pool.tls {
                let plan = tls::MemberTlsPlan::new(t).map_err(|message| ApplyError::MemberTls {
                    pool: pool.name.clone(),
                    message,
                })?;
                member_tls.insert(pool.name.clone(), Arc::new(plan));
            }
        }
        let mut fresh = Vec::new();
        for (&addr, (lb, _)) in &wanted {
            if !reg.listeners.contains_key(&addr) {
                let copies = self.workers.as_ref().map_or(1, Workers::len);
                let socket =
                    bind(addr, lb.vip.is_some(), copies).map_err(|source| ApplyError::Bind {
                        lb: lb.name.clone(),
                        addr,
                        source,
                    })?;
                fresh.push((addr, socket));
            }
        }

        // From here on nothing fails.
        let mut members = HashMap::new();
        let mut pools = std::collections::BTreeMap::new();
        let old_plan = self.plan.load_full();
        for pool in spec.pools.values() {
            // Pooled member connections were opened for the old settings.
            let reconnect = old_plan.pools.get(&pool.name).is_some_and(|old| {
                (
                    &old.spec.tls,
                    old.spec.http_version,
                    old.spec.proxy_protocol,
                ) != (&pool.tls, pool.http_version, pool.proxy_protocol)
            });
            let pool_tls = member_tls.remove(&pool.name);
            let probe = pool.health_check.as_ref().map(|check| health::Probe {
                check: check.clone(),
                tls_spec: pool.tls.clone(),
                tls: pool_tls.clone(),
                http2: pool.http_version == keel_model::HttpVersion::Http2,
                proxy_protocol: pool.proxy_protocol,
            });
            let mut in_service = Vec::new();
            for m in &pool.members {
                let key = (pool.name.clone(), m.address);
                let mut entry = reg.members.remove(&key).unwrap_or_else(|| MemberEntry {
                    state: MemberState::new(&pool.name, m.address),
                    drain_timeout: pool.drain_timeout,
                    checker: None,
                });
                entry.drain_timeout = pool.drain_timeout;
                if reconnect {
                    entry.state.forget_connections();
                }
                if m.enabled {
                    entry.state.stop_drain();
                    in_service.push((entry.state.clone(), m.weight));
                } else {
                    entry.state.start_drain(pool.drain_timeout);
                }
                entry.set_check(probe.as_ref());
                members.insert(key, entry);
            }
            let stats = reg.pool_stats.entry(pool.name.clone()).or_default().clone();
            if reg.cookie_keys.is_empty() {
                reg.cookie_keys.push(sticky::CookieKey::random());
            }
            let plan = PoolPlan {
                spec: pool.clone(),
                sticky: sticky::StickyPlan::new(pool, &reg.cookie_keys),
                tls: pool_tls,
                balancer: Balancer::new(pool.algorithm, in_service),
                stats,
            };
            pools.insert(pool.name.clone(), Arc::new(plan));
        }
        for (_, mut gone) in reg.members.drain() {
            gone.set_check(None);
            gone.state.start_drain(gone.drain_timeout);
        }
        reg.members = members;
        reg.pool_stats.retain(|name, _| pools.contains_key(name));

        let mut listeners = HashMap::new();
        for (&addr, (lb, l)) in &wanted {
            let pool = match &l.default_pool {
                Some(name) => match pools.get(name) {
                    Some(pool) => pool.clone(),
                    None => {
                        debug_assert!(false, "validated spec has a dangling default_pool");
                        continue;
                    }
                },
                None => Arc::new(PoolPlan::none()),
            };
            let stats = reg.listener_stats.entry(addr).or_default().clone();
            let limiter = l.rate_limit.map(|want| {
                reg.limiters
                    .get(&addr)
                    .filter(|have| have.limit() == want)
                    .cloned()
                    .unwrap_or_else(|| Arc::new(limit::RateLimiter::new(want)))
            });
            match &limiter {
                Some(l) => reg.limiters.insert(addr, l.clone()),
                None => reg.limiters.remove(&addr),
            };
            let plan = ListenerPlan {
                limiter,
                lb: lb.name.clone(),
                spec: (*l).clone(),
                bind: addr,
                proto_header: ::http::HeaderValue::from_static(if l.protocol == Protocol::Https {
                    "https"
                } else {
                    "http"
                }),
                tls: tls.remove(&addr),
                rules: route::compile(&l.rules, |name| pools.get(name).cloned()),
                pool: pool.clone(),
                stats,
            };
            if let Some(running) = reg.listeners.get_mut(&addr) {
                running.drain_timeout = pool.spec.drain_timeout;
            }
            listeners.insert(addr, Refs::new(&Arc::new(plan)));
        }
        reg.listener_stats
            .retain(|addr, _| listeners.contains_key(addr));

        reg.version += 1;
        let version = reg.version;
        self.plan.store(Arc::new(Plan {
            version,
            listeners,
            pools,
            max_client_connections: plan::client_capacity(),
        }));

        for (addr, socket) in fresh {
            let running =
                self.start_listener(addr, socket, wanted[&addr].1.default_pool.as_deref());
            reg.listeners.insert(addr, running);
        }
        let removed: Vec<SocketAddr> = reg
            .listeners
            .keys()
            .filter(|a| !wanted.contains_key(a))
            .copied()
            .collect();
        for addr in removed {
            if let Some(running) = reg.listeners.remove(&addr) {
                tracing::info!(listener = %addr, "listener removed: draining its connections");
                running.retire();
            }
        }
        tracing::info!(version, "data plane serving new plan");
        Ok(version)
    }

    fn start_listener(
        &self,
        addr: SocketAddr,
        sockets: Vec<std::net::TcpListener>,
        pool: Option<&str>,
    ) -> RunningListener {
        let (quieted_tx, quieted): (Vec<_>, Vec<_>) =
            sockets.iter().map(|_| watch::channel(false)).unzip();
        // A cut closes too: a connection waits on `closing` alone, and
        // looks at `cut` once that fired (one wait per idle connection).
        let cut = Signal::new();
        let running = RunningListener {
            stop: CancellationToken::new(),
            quiet: watch::channel(false).0,
            quieted,
            closing: cut.child(),
            cut,
            drain_timeout: self
                .plan
                .load()
                .pools
                .get(pool.unwrap_or_default())
                .map_or(keel_model::defaults::DRAIN_TIMEOUT, |p| {
                    p.spec.drain_timeout
                }),
        };
        tracing::info!(listener = %addr, accept_loops = sockets.len(), "listening");
        for (i, (socket, quieted)) in sockets.into_iter().zip(quieted_tx).enumerate() {
            let accepting = accept_loop(
                socket,
                addr,
                self.plan.clone(),
                self.connections.clone(),
                ListenerSignals {
                    stop: running.stop.clone(),
                    quiet: running.quiet.subscribe(),
                    quieted,
                    closing: running.closing.child(),
                    cut: running.cut.child(),
                },
            );
            match &self.workers {
                Some(w) => {
                    w.handles()[i % w.len()].spawn(accepting);
                }
                None => {
                    tokio::spawn(accepting);
                }
            }
        }
        running
    }

    /// Before a VIP moves away: listeners bound to `ips` drop new connection
    /// attempts without an answer (clients retransmit their SYN and reach
    /// the next owner) and the connections they have are given up to `wait`
    /// to finish, so none is mid-request when the address goes. Returns how
    /// many were still open.
    pub async fn quiesce(&self, ips: &[IpAddr], wait: Duration) -> i64 {
        let (stats, quieted): (Vec<Arc<ListenerStats>>, Vec<Vec<watch::Receiver<bool>>>) = {
            let reg = self.registry.lock().await;
            reg.listeners
                .iter()
                .filter(|(addr, _)| ips.contains(&addr.ip()))
                .filter_map(|(addr, l)| {
                    l.quiet.send_replace(true);
                    Some((reg.listener_stats.get(addr)?.clone(), l.quieted.clone()))
                })
                .unzip()
        };
        let deadline = tokio::time::Instant::now() + wait;
        // Connections already queued count too: wait until every accept
        // loop has taken its queue, then for the connections to finish.
        for mut q in quieted.into_iter().flatten() {
            let _ = tokio::time::timeout_at(deadline, q.wait_for(|quiet| *quiet)).await;
        }
        let open = || {
            stats
                .iter()
                .map(|s| s.sum(|s| s.active.load(Relaxed)))
                .sum::<i64>()
        };
        while open() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        open()
    }

    /// Undoes [`Dataplane::quiesce`]: listeners bound to `ips` answer new
    /// connection attempts again (a drained node brought back).
    pub async fn resume(&self, ips: &[IpAddr]) {
        let reg = self.registry.lock().await;
        for (_, l) in reg
            .listeners
            .iter()
            .filter(|(addr, _)| ips.contains(&addr.ip()))
        {
            l.quiet.send_replace(false);
        }
    }

    /// Every member of every pool, with its health and load.
    pub fn members(&self) -> Vec<MemberStatus> {
        let plan = self.plan.load();
        let mut out = Vec::new();
        for pool in plan.pools.values() {
            for m in &pool.spec.members {
                let state = pool
                    .balancer
                    .members()
                    .iter()
                    .find(|s| s.address == m.address);
                out.push(MemberStatus {
                    pool: pool.spec.name.clone(),
                    address: m.address,
                    enabled: m.enabled,
                    weight: m.weight,
                    healthy: state.is_none_or(|s| s.is_up()),
                    draining: !m.enabled,
                    outstanding: state.map_or(0, |s| s.outstanding()),
                    last_check_ms: state.and_then(|s| s.last_check_ms()),
                    has_check: pool.spec.health_check.is_some(),
                    checked_here: state.is_none_or(|s| s.checks_here()),
                });
            }
        }
        out
    }

    /// Whether this node runs the health checks of `pool`'s member
    /// `address` (the default), or takes its health from
    /// [`Dataplane::set_peer_health`] (so checks on a backend need not grow
    /// with the number of nodes).
    pub fn set_checking(&self, pool: &str, address: SocketAddr, here: bool) {
        if let Some(m) = self.member_state(pool, address) {
            if m.set_checks_here(here) {
                tracing::debug!(%pool, member = %address, here, "health checks of this member moved");
            }
        }
    }

    /// Sets the health of a member this node does not check, from the nodes
    /// that do.
    pub fn set_peer_health(&self, pool: &str, address: SocketAddr, up: bool) {
        if let Some(m) = self.member_state(pool, address) {
            if !m.checks_here() && m.set_up(up) {
                if up {
                    tracing::info!(%pool, member = %address, "member is up (checked by peers)");
                } else {
                    tracing::warn!(%pool, member = %address, "member is down (checked by peers)");
                }
            }
        }
    }

    fn member_state(&self, pool: &str, address: SocketAddr) -> Option<Arc<MemberState>> {
        let plan = self.plan.load();
        plan.pools
            .get(pool)?
            .balancer
            .members()
            .iter()
            .find(|s| s.address == address)
            .cloned()
    }

    /// The addresses listeners are bound to now.
    pub fn listening(&self) -> Vec<SocketAddr> {
        let mut v: Vec<_> = self.plan.load().listeners.keys().copied().collect();
        v.sort();
        v
    }

    /// Connections being served, across all listeners.
    pub fn active_connections(&self) -> usize {
        self.connections.len()
    }

    /// Cumulative traffic of every load balancer and pool the plan serves,
    /// keyed `load_balancer/NAME` and `pool/NAME`. Counters only grow while
    /// the object exists, so rates are differences between two calls.
    pub fn traffic(&self) -> BTreeMap<String, TrafficCounters> {
        let plan = self.plan.load();
        let mut out: BTreeMap<String, TrafficCounters> = BTreeMap::new();
        for l in plan.listeners.values() {
            let c = out.entry(format!("load_balancer/{}", l.lb)).or_default();
            c.requests += if l.spec.protocol.is_http() {
                l.stats.sum(|s| s.requests.total())
            } else {
                l.stats.total(|s| &s.connections)
            };
            c.errors += l.stats.sum(|s| s.requests.server_errors());
            c.active += u64::try_from(l.stats.sum(|s| s.active.load(Relaxed))).unwrap_or(0);
            l.stats.histogram(|s| &s.latency).add_to(&mut c.latency);
        }
        for p in plan.pools.values() {
            let c = out.entry(format!("pool/{}", p.spec.name)).or_default();
            c.requests += p.stats.sum(|s| s.requests.total()) + p.stats.total(|s| &s.connections);
            c.errors +=
                p.stats.sum(|s| s.requests.server_errors()) + p.stats.total(|s| &s.no_member);
            for m in p.balancer.members() {
                c.active += m.outstanding();
                c.errors += m.stats.total(|s| &s.connect_failures);
                m.stats.histogram(|s| &s.latency).add_to(&mut c.latency);
            }
        }
        out
    }

    /// Every listener's counters: (load balancer, bound address, counters).
    pub fn listener_counters(&self) -> Vec<(String, SocketAddr, ListenerCounters)> {
        let plan = self.plan.load();
        let mut out: Vec<_> = plan
            .listeners
            .values()
            .map(|l| {
                let counters = ListenerCounters {
                    connections: l.stats.total(|s| &s.connections),
                    active: u64::try_from(l.stats.sum(|s| s.active.load(Relaxed))).unwrap_or(0),
                    bytes_in: l.stats.total(|s| &s.bytes_in),
                    bytes_out: l.stats.total(|s| &s.bytes_out),
                    errors: l.stats.sum(|s| s.requests.server_errors()),
                };
                (l.lb.clone(), l.bind, counters)
            })
            .collect();
        out.sort_by_key(|(lb, addr, _)| (lb.clone(), *addr));
        out
    }

    /// Stops accepting, lets connections finish for up to `grace`, then cuts
    /// what is left. Further applies are refused.
    pub async fn shutdown(&self, grace: Duration) {
        {
            let mut reg = self.registry.lock().await;
            reg.shut_down = true;
            for l in reg.listeners.values() {
                l.stop.cancel();
                l.closing.fire();
            }
            for m in reg.members.values_mut() {
                m.set_check(None);
            }
        }
        self.connections.close();
        let open = self.connections.len();
        if tokio::time::timeout(grace, self.connections.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                open = self.connections.len(),
                "drain time over: cutting connections"
            );
            for l in self.registry.lock().await.listeners.values() {
                l.cut.fire();
            }
            let _ = tokio::time::timeout(Duration::from_secs(1), self.connections.wait()).await;
        } else if open > 0 {
            tracing::info!(open, "all connections drained");
        }
    }

    /// Prometheus text for every listener, pool and member now configured.
    pub fn render_metrics(&self) -> String {
        let plan = self.plan.load();
        let mut w = Writer { out: String::new() };
        w.header(
            "keel_config_version",
            "gauge",
            "Version of the plan the data plane serves.",
        );
        w.value("keel_config_version", "", plan.version);
        if let Some(workers) = &self.workers {
            w.family(
                "keel_worker_connections",
                "gauge",
                "Client connections each data-plane worker serves.",
                &workers.connections(),
                |w, n, (i, open)| w.value(n, &format!("worker=\"{i}\""), open),
            );
        }

        let mut listeners: Vec<&ListenerPlan> = plan.listeners.values().map(|l| &**l).collect();
        listeners.sort_by_key(|l| l.bind);
        let http: Vec<&ListenerPlan> = listeners
            .iter()
            .copied()
            .filter(|l| l.spec.protocol.is_http())
            .collect();
        let tls: Vec<&ListenerPlan> = listeners
            .iter()
            .copied()
            .filter(|l| {
                l.spec.protocol.terminates_tls() || l.spec.protocol == Protocol::TlsPassthrough
            })
            .collect();
        let ll = |l: &ListenerPlan| {
            format!(
                "lb=\"{}\",listener=\"{}\",protocol=\"{}\"",
                label(&l.lb),
                l.bind,
                l.spec.protocol.as_str()
            )
        };
        w.family(
            "keel_listener_connections_total",
            "counter",
            "Connections accepted.",
            &listeners,
            |w, n, l| w.value(n, &ll(l), l.stats.total(|s| &s.connections)),
        );
        w.family(
            "keel_listener_active_connections",
            "gauge",
            "Connections open now.",
            &listeners,
            |w, n, l| w.value(n, &ll(l), l.stats.sum(|s| s.active.load(Relaxed))),
        );
        w.family(
            "keel_listener_tls_handshake_failures_total",
            "counter",
            "TLS handshakes that failed or timed out (passthrough: unreadable ClientHellos).",
            &tls,
            |w, n, l| w.value(n, &ll(l), l.stats.total(|s| &s.tls_failures)),
        );
        w.family(
            "keel_listener_refused_total",
            "counter",
            "Connections or requests refused by a limit: max_connections, or rate_limit (HTTP: answered 429).",
            &listeners,
            |w, n, l| {
                w.value(
                    n,
                    &format!("{},limit=\"max_connections\"", ll(l)),
                    l.stats.total(|s| &s.over_limit),
                );
                w.value(
                    n,
                    &format!("{},limit=\"rate_limit\"", ll(l)),
                    l.stats.total(|s| &s.rate_limited),
                );
            },
        );
        w.family(
            "keel_listener_upgrades_total",
            "counter",
            "HTTP connections upgraded to another protocol (websockets).",
            &http,
            |w, n, l| w.value(n, &ll(l), l.stats.total(|s| &s.upgrades)),
        );
        w.family(
            "keel_listener_upgraded_connections",
            "gauge",
            "Upgraded connections (websockets) open now.",
            &http,
            |w, n, l| w.value(n, &ll(l), l.stats.sum(|s| s.tunnels.load(Relaxed))),
        );
        w.family(
            "keel_listener_requests_total",
            "counter",
            "HTTP responses sent, by status class.",
            &http,
            |w, n, l| w.classes(n, &ll(l), &l.stats.classes(|s| &s.requests)),
        );
        w.family(
            "keel_listener_bytes_total",
            "counter",
            "Body or stream bytes, in = from clients.",
            &listeners,
            |w, n, l| {
                w.value(
                    n,
                    &format!("{},direction=\"in\"", ll(l)),
                    l.stats.total(|s| &s.bytes_in),
                );
                w.value(
                    n,
                    &format!("{},direction=\"out\"", ll(l)),
                    l.stats.total(|s| &s.bytes_out),
                );
            },
        );
        w.family(
            "keel_listener_request_duration_seconds",
            "histogram",
            "Time from request head to response head.",
            &http,
            |w, n, l| w.histogram(n, &ll(l), &l.stats.histogram(|s| &s.latency)),
        );

        let pools: Vec<&PoolPlan> = plan.pools.values().map(|p| &**p).collect();
        let pl = |p: &PoolPlan| format!("pool=\"{}\"", label(&p.spec.name));
        w.family(
            "keel_pool_requests_total",
            "counter",
            "HTTP responses for requests routed to the pool.",
            &pools,
            |w, n, p| w.classes(n, &pl(p), &p.stats.classes(|s| &s.requests)),
        );
        w.family(
            "keel_pool_connections_total",
            "counter",
            "TCP connections routed to the pool.",
            &pools,
            |w, n, p| w.value(n, &pl(p), p.stats.total(|s| &s.connections)),
        );
        w.family(
            "keel_pool_no_member_total",
            "counter",
            "Requests or connections refused: no healthy member.",
            &pools,
            |w, n, p| w.value(n, &pl(p), p.stats.total(|s| &s.no_member)),
        );
        w.family(
            "keel_pool_members_healthy",
            "gauge",
            "Enabled members passing their health checks.",
            &pools,
            |w, n, p| {
                w.value(
                    n,
                    &pl(p),
                    p.balancer.members().iter().filter(|m| m.is_up()).count(),
                )
            },
        );

        let members: Vec<(&PoolPlan, &MemberState)> = pools
            .iter()
            .flat_map(|p| p.balancer.members().iter().map(move |m| (*p, &**m)))
            .collect();
        let ml = |(p, m): &(&PoolPlan, &MemberState)| format!("{},member=\"{}\"", pl(p), m.address);
        w.family(
            "keel_member_up",
            "gauge",
            "1 when the member passes its health checks.",
            &members,
            |w, n, pm| w.value(n, &ml(pm), u8::from(pm.1.is_up())),
        );
        w.family(
            "keel_member_outstanding",
            "gauge",
            "In-flight requests or open connections.",
            &members,
            |w, n, pm| w.value(n, &ml(pm), pm.1.outstanding()),
        );
        w.family(
            "keel_member_connections_total",
            "counter",
            "Connections opened to the member.",
            &members,
            |w, n, pm| w.value(n, &ml(pm), pm.1.stats.total(|s| &s.connections)),
        );
        w.family(
            "keel_member_connect_failures_total",
            "counter",
            "Connections to the member refused or timed out.",
            &members,
            |w, n, pm| w.value(n, &ml(pm), pm.1.stats.total(|s| &s.connect_failures)),
        );
        w.family(
            "keel_member_health_changes_total",
            "counter",
            "Health state flips.",
            &members,
            |w, n, pm| w.value(n, &ml(pm), pm.1.stats.total(|s| &s.health_flips)),
        );
        w.family(
            "keel_member_requests_total",
            "counter",
            "HTTP responses from the member, by status class.",
            &members,
            |w, n, pm| w.classes(n, &ml(pm), &pm.1.stats.classes(|s| &s.requests)),
        );
        w.family(
            "keel_member_bytes_total",
            "counter",
            "Bytes, in = from the member.",
            &members,
            |w, n, pm| {
                w.value(
                    n,
                    &format!("{},direction=\"in\"", ml(pm)),
                    pm.1.stats.total(|s| &s.bytes_in),
                );
                w.value(
                    n,
                    &format!("{},direction=\"out\"", ml(pm)),
                    pm.1.stats.total(|s| &s.bytes_out),
                );
            },
        );
        w.family(
            "keel_member_response_duration_seconds",
            "histogram",
            "Time from sending a request to the member's response head.",
            &members,
            |w, n, pm| w.histogram(n, &ml(pm), &pm.1.stats.histogram(|s| &s.latency)),
        );
        w.out
    }
}

impl MemberEntry {
    /// Starts, restarts or stops the health checker so it runs `check`.
    fn set_check(&mut self, check: Option<&health::Probe>) {
        if self.checker.as_ref().map(|(c, _)| c) == check {
            return;
        }
        if let Some((_, stop)) = self.checker.take() {
            stop.cancel();
        }
        match check {
            Some(c) => {
                let stop = CancellationToken::new();
                tokio::spawn(health::run(self.state.clone(), c.clone(), stop.clone()));
                self.checker = Some((c.clone(), stop));
            }
            None => {
                self.state.set_up(true);
            }
        }
    }
}

impl RunningListener {
    /// Stops accepting; open connections finish in-flight work, and are cut
    /// when the drain time runs out.
    fn retire(self) {
        self.stop.cancel();
        self.closing.fire();
        let cut = self.cut;
        let timeout = self.drain_timeout;
        tokio::spawn(async move {
            tokio::time::sleep(timeout).await;
            cut.fire();
        });
    }
}

/// Binds `copies` listening sockets to `addr`, one per worker: with more
/// than one, `SO_REUSEPORT` and the kernel spreads new connections over
/// them. VIP listeners use `IP_FREEBIND`, so they bind before the address
/// is on an interface and serve the moment it arrives.
fn bind(
    addr: SocketAddr,
    freebind: bool,
    copies: usize,
) -> std::io::Result<Vec<std::net::TcpListener>> {
    (0..copies.max(1))
        .map(|_| bind_one(addr, freebind, copies > 1))
        .collect()
}

fn bind_one(
    addr: SocketAddr,
    freebind: bool,
    shared: bool,
) -> std::io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    if shared {
        socket.set_reuse_port(true)?;
    }
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
        if freebind {
            socket.set_freebind_ipv6(true)?;
        }
    } else if freebind {
        socket.set_freebind(true)?;
    }
    socket.set_nonblocking(true)?;
    // Inherited by every connection accepted on it (Linux copies the
    // option at accept): a system call once, not once per connection.
    socket.set_nodelay(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

async fn accept_loop(
    socket: std::net::TcpListener,
    bind: SocketAddr,
    plan: SharedPlan,
    connections: TaskTracker,
    signals: ListenerSignals,
) {
    // Registered with the runtime this loop runs on: its worker's. The
    // connections it accepts are not (see [`accept`]). (`with_interest`
    // is deprecated for types that could close or swap their descriptor
    // while it is registered; a `TcpListener` owns its descriptor and
    // closes it only when dropped, after `AsyncFd` has let it go.)
    #[allow(deprecated)]
    let socket = match AsyncFd::with_interest(socket, Interest::READABLE) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(listener = %bind, error = %e, "cannot accept on the listening socket");
            return;
        }
    };
    let ListenerSignals {
        stop,
        mut quiet,
        quieted,
        closing,
        cut,
    } = signals;
    let conn = Admit {
        bind,
        plan,
        connections,
        closing,
        cut,
    };
    let (mut is_quiet, mut quiet_open) = (false, true);
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            changed = quiet.changed(), if quiet_open => {
                if changed.is_err() {
                    quiet_open = false;
                    continue;
                }
                let want = *quiet.borrow_and_update();
                if want == is_quiet {
                    continue;
                }
                is_quiet = want;
                if !want {
                    if let Err(e) = socket2::SockRef::from(&socket).detach_filter() {
                        tracing::warn!(listener = %bind, error = %e, "cannot resume the listener");
                    }
                    quieted.send_replace(false);
                    tracing::info!(listener = %bind, "listener resumed");
                    continue;
                }
                // A socket filter that drops connection requests (SYN
                // without ACK) before the kernel answers them. Handshakes
                // already under way still complete (their ACK passes), and
                // accepted sockets, which inherit the filter, lose nothing.
                let syn = [
                    sock_filter(0x30, 0, 0, 13),   // A = TCP flags byte
                    sock_filter(0x54, 0, 0, 0x12), // A &= SYN|ACK
                    sock_filter(0x15, 0, 1, 0x02), // A == SYN?
                    sock_filter(0x06, 0, 0, 0),    // yes: drop
                    sock_filter(0x06, 0, 0, u32::MAX), // no: keep
                ];
                if let Err(e) = socket2::SockRef::from(&socket).attach_filter(&syn) {
                    tracing::warn!(listener = %bind, error = %e, "cannot quiesce the listener");
                }
                // Let handshakes under way finish (a round trip on a LAN).
                tokio::time::sleep(HANDSHAKE_SETTLE).await;
                // Take what already completed its handshake, so the caller
                // can wait for it to finish.
                while let Ok((stream, peer)) = accept_now(socket.get_ref()) {
                    conn.spawn(stream, peer);
                }
                quieted.send_replace(true);
                continue;
            }
            r = accept(&socket) => match r {
                Ok(ok) => ok,
                Err(e) => {
                    // Out of file descriptors or similar: back off, keep serving.
                    tracing::warn!(listener = %bind, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        conn.spawn(stream, peer);
    }
}

/// The next connection on `socket`, once one is there. It joins no event
/// loop here: the worker that serves it registers it (see [`opened`]), so
/// one handed to another worker is registered once, where it is served.
async fn accept(
    socket: &AsyncFd<std::net::TcpListener>,
) -> std::io::Result<(std::net::TcpStream, SocketAddr)> {
    loop {
        let mut ready = socket.readable().await?;
        if let Ok(accepted) = ready.try_io(|socket| accept_now(socket.get_ref())) {
            return accepted;
        }
    }
}

/// A connection from `socket`'s queue, or "would block" when it is empty:
/// one `accept4`, the socket made non-blocking by it.
fn accept_now(
    socket: &std::net::TcpListener,
) -> std::io::Result<(std::net::TcpStream, SocketAddr)> {
    use rustix::net::{acceptfrom_with, SocketFlags};
    let (fd, peer) = acceptfrom_with(socket, SocketFlags::NONBLOCK | SocketFlags::CLOEXEC)?;
    let stream = std::net::TcpStream::from(fd);
    // A TCP socket's peer always has an IP address; asked again if not.
    let peer = match peer.and_then(|peer| SocketAddr::try_from(peer).ok()) {
        Some(peer) => peer,
        None => stream.peer_addr()?,
    };
    Ok((stream, peer))
}

/// How long a quieted listener waits for handshakes under way to complete
/// before it reports its queue taken.
const HANDSHAKE_SETTLE: Duration = Duration::from_millis(20);

fn sock_filter(code: u16, jt: u8, jf: u8, k: u32) -> nix::libc::sock_filter {
    nix::libc::sock_filter { code, jt, jf, k }
}

/// What an accept loop needs to start serving a connection.
struct Admit {
    bind: SocketAddr,
    plan: SharedPlan,
    connections: TaskTracker,
    closing: Signal,
    cut: Signal,
}

impl Admit {
    /// Serves an accepted connection on its own task, by the newest plan.
    fn spawn(&self, stream: std::net::TcpStream, peer: SocketAddr) {
        let plan = self.plan.load();
        let Some(listener) = plan.listeners.get(&self.bind).map(|l| l.shared().clone()) else {
            return;
        };
        listener.stats.here().connections.fetch_add(1, Relaxed);
        if self.connections.len() >= plan.max_client_connections {
            listener.stats.here().over_limit.fetch_add(1, Relaxed);
            tracing::debug!(client.addr = %peer, listener = %self.bind, max = plan.max_client_connections,
                "node connection limit (from the open-file limit) reached: refused");
            let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
            return;
        }
        drop(plan);
        if let Some(max) = listener.spec.max_connections {
            if listener.stats.sum(|s| s.active.load(Relaxed)) >= i64::from(max) {
                listener.stats.here().over_limit.fetch_add(1, Relaxed);
                tracing::debug!(client.addr = %peer, listener = %self.bind, max, "connection limit reached: refused");
                let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
                return;
            }
        }
        let active = Active::new(&listener.stats);
        // Served here, or handed to a worker that serves fewer, whose event
        // loop the socket joins.
        let (open, handoff) = workers::place();
        let (plan, cut) = (self.plan.clone(), self.cut.clone());
        let signals = http::Signals {
            closing: self.closing.clone(),
            cut: cut.clone(),
            tunnels: self.connections.clone(),
        };
        // What starting the connection needs (its PROXY header, finding its
        // protocol) is freed once it is served: see [`Phases`]. A plain
        // HTTP connection's server lives in its task; every other kind is
        // boxed, so that its task is no larger than it needs.
        let started = Started {
            active,
            open,
            handoff,
        };
        if listener.spec.protocol == Protocol::Http {
            let start = async move {
                let (mut stream, peer) = opened(stream, peer, &listener).await?;
                let (mode, read) = if listener.spec.http2 {
                    let deadline = tokio::time::Instant::now() + listener.spec.header_timeout;
                    http::sniff(&mut stream, deadline).await?
                } else {
                    (http::Mode::Http1, BytesMut::new())
                };
                Some(http::serve(
                    stream, mode, read, peer, plan, listener, signals,
                ))
            };
            return self.launch(start, started);
        }
        let start = async move {
            let (stream, peer) = opened(stream, peer, &listener).await?;
            // L4 listeners limit new connections per client; HTTP ones limit
            // requests (see `http.rs`).
            if let Some(limiter) = listener
                .limiter
                .as_ref()
                .filter(|_| !listener.spec.protocol.is_http())
            {
                if !limiter.allow(peer.source.ip()) {
                    listener.stats.here().rate_limited.fetch_add(1, Relaxed);
                    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
                    return None;
                }
            }
            match (listener.spec.protocol, listener.tls.clone()) {
                (Protocol::Tcp, _) => {
                    let pool = listener.pool.clone();
                    serving(tcp::serve(stream, peer, listener, pool, cut))
                }
                (Protocol::TlsPassthrough, _) => {
                    let deadline = tokio::time::Instant::now() + listener.spec.header_timeout;
                    let name = match sni::read(&stream, deadline).await {
                        Ok(name) => name,
                        Err(e) => {
                            listener.stats.here().tls_failures.fetch_add(1, Relaxed);
                            tracing::debug!(client.addr = %peer.source, listener = %listener.bind, error = %e, "no ClientHello: closed");
                            return None;
                        }
                    };
                    let pool = route::route_name(
                        &listener.rules,
                        &listener.pool,
                        name.as_deref(),
                        peer.source.ip(),
                    )
                    .clone();
                    serving(tcp::serve(stream, peer, listener, pool, cut))
                }
                (Protocol::Https | Protocol::Tls, Some(config)) => {
                    serving(serve_tls(stream, peer, config, plan, listener, signals))
                }
                (Protocol::Http | Protocol::Https | Protocol::Tls, _) => {
                    debug_assert!(false, "an HTTP or TLS listener was served as another kind");
                    None
                }
            }
        };
        self.launch(start, started);
    }

    /// Runs a connection's task: `start`, then what it comes to.
    fn launch<S>(&self, start: impl Future<Output = Option<S>> + Send + 'static, started: Started)
    where
        S: Future<Output = ()> + Send + 'static,
    {
        let task = Phases {
            phase: Phase::Starting {
                start: Box::pin(start),
            },
            _active: started.active,
            _open: started.open,
        };
        match started.handoff {
            None => self.connections.spawn(task),
            Some(worker) => self.connections.spawn_on(task, &worker),
        };
    }
}

/// What a connection's task carries besides its future, and the worker it
/// runs on when not this one.
struct Started {
    active: Active,
    open: workers::Open,
    handoff: Option<tokio::runtime::Handle>,
}

/// The accepted socket on the event loop of the worker that serves it,
/// and its client and the address it reached (see [`client_of`]).
async fn opened(
    stream: std::net::TcpStream,
    peer: SocketAddr,
    listener: &ListenerPlan,
) -> Option<(TcpStream, proxy_protocol::Addresses)> {
    let stream = match TcpStream::from_std(stream) {
        Ok(stream) => stream,
        Err(e) => {
            tracing::debug!(client.addr = %peer, listener = %listener.bind, error = %e, "cannot serve the connection: closed");
            return None;
        }
    };
    let peer = client_of(&stream, peer, listener).await?;
    Some((stream, peer))
}

/// The client and the address it reached: the TCP ends, or what a PROXY
/// header from a trusted peer says. `None` refuses the connection.
async fn client_of(
    stream: &TcpStream,
    peer: SocketAddr,
    listener: &ListenerPlan,
) -> Option<proxy_protocol::Addresses> {
    // A listener bound to one address is reached at that address; only a
    // wildcard one asks the socket which (a system call per connection).
    let local = if listener.bind.ip().is_unspecified() {
        stream.local_addr().unwrap_or(listener.bind)
    } else {
        listener.bind
    };
    let tcp = proxy_protocol::Addresses {
        source: peer,
        destination: local,
    };
    if !listener.spec.accept_proxy_protocol {
        return Some(tcp);
    }
    // No trusted peer means no one may speak for a client (the config
    // refuses that combination; a spec built another way gets the same).
    let trusted = &listener.spec.trusted_proxies;
    if !trusted.iter().any(|c| c.contains(peer.ip())) {
        tracing::debug!(client.addr = %peer, listener = %listener.bind, "PROXY header from an untrusted peer: refused");
        return None;
    }
    let deadline = tokio::time::Instant::now() + listener.spec.header_timeout;
    match proxy_protocol::read(stream, deadline).await {
        Ok(named) => Some(named.unwrap_or(tcp)),
        Err(e) => {
            tracing::debug!(client.addr = %peer, listener = %listener.bind, error = %e, "connection refused");
            None
        }
    }
}

/// Completes a TLS handshake within the listener's header timeout.
/// Serves a TLS connection: its handshake, then its bytes (`tls`) or its
/// requests (`https`). On its own (boxed), so that the task of a plain
/// connection does not carry room for a TLS session.
async fn serve_tls(
    stream: TcpStream,
    peer: proxy_protocol::Addresses,
    config: Arc<rustls::ServerConfig>,
    plan: SharedPlan,
    listener: Arc<ListenerPlan>,
    signals: http::Signals,
) {
    let cut = signals.cut.clone();
    let Some(tls) = Box::pin(handshake(stream, peer.source, config, &listener, &cut)).await else {
        return;
    };
    if listener.spec.protocol == Protocol::Tls {
        Box::pin(tcp::serve_stream(tls, peer, listener, cut)).await;
        return;
    }
    let mode = match tls.get_ref().1.alpn_protocol() {
        Some(tls::H2) => http::Mode::Http2,
        _ => http::Mode::Http1,
    };
    http::serve(tls, mode, BytesMut::new(), peer, plan, listener, signals).await
}

async fn handshake(
    stream: TcpStream,
    peer: SocketAddr,
    config: Arc<rustls::ServerConfig>,
    listener: &ListenerPlan,
    cut: &Signal,
) -> Option<tls::TlsFromClient> {
    let accept = tokio_rustls::TlsAcceptor::from(config).accept(Coalesce::new(stream));
    let result = tokio::select! {
        r = tokio::time::timeout(listener.spec.header_timeout, accept) => r,
        () = cut.until() => return None,
    };
    match result {
        Ok(Ok(tls)) => Some(tls),
        Ok(Err(e)) => {
            listener.stats.here().tls_failures.fetch_add(1, Relaxed);
            tracing::debug!(client.addr = %peer, listener = %listener.bind, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            listener.stats.here().tls_failures.fetch_add(1, Relaxed);
            tracing::debug!(client.addr = %peer, listener = %listener.bind, "TLS handshake timed out");
            None
        }
    }
}

/// A connection served: its protocol's future, on its own.
type Serving = Pin<Box<dyn Future<Output = ()> + Send>>;

fn serving(f: impl Future<Output = ()> + Send + 'static) -> Option<Serving> {
    Some(Box::pin(f))
}

pin_project_lite::pin_project! {
    /// A connection's task: starting it (its PROXY header, its protocol),
    /// which comes to what serves it (`S`), then that. The start is
    /// allocated on its own and freed when serving begins, so an open
    /// connection carries no room for how it started (a future is as large
    /// as its largest state); what serves it is held in the task.
    struct Phases<S> {
        #[pin]
        phase: Phase<S>,
        _active: Active,
        _open: workers::Open,
    }
}

pin_project_lite::pin_project! {
    #[project = PhaseNow]
    enum Phase<S> {
        Starting { start: Pin<Box<dyn Future<Output = Option<S>> + Send>> },
        Serving { #[pin] serving: S },
    }
}

impl<S: Future<Output = ()>> Future for Phases<S> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut phase = self.project().phase;
        loop {
            let serving = match phase.as_mut().project() {
                PhaseNow::Starting { start } => match start.as_mut().poll(cx) {
                    Poll::Ready(Some(serving)) => serving,
                    Poll::Ready(None) => return Poll::Ready(()),
                    Poll::Pending => return Poll::Pending,
                },
                PhaseNow::Serving { serving } => return serving.poll(cx),
            };
            phase.set(Phase::Serving { serving });
        }
    }
}

/// Counts a connection in its listener's gauge for as long as it lives.
pub(crate) struct Active(Arc<ListenerStats>);

impl Active {
    pub(crate) fn new(stats: &Arc<ListenerStats>) -> Self {
        stats.here().active.fetch_add(1, Relaxed);
        Active(stats.clone())
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.here().active.fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::time::{sleep, timeout};

    /// Reads from `from` until what arrived ends with `end`.
    async fn read_until(from: &mut TcpStream, end: &[u8]) -> Vec<u8> {
        let mut got = Vec::new();
        let mut buf = [0; 4096];
        while !got.ends_with(end) {
            let n = timeout(Duration::from_secs(5), from.read(&mut buf))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
        got
    }

    /// Connections are accepted with Nagle's algorithm off (a response's
    /// last small write is not held back for the client's ACK) without a
    /// system call each: the listening socket's option is inherited.
    #[test]
    fn accepted_connections_have_nagle_off() {
        let listener = bind_one("127.0.0.1:0".parse().unwrap(), false, true).unwrap();
        let _client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        listener.set_nonblocking(false).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        assert!(socket2::SockRef::from(&accepted).nodelay().unwrap());
    }

    /// A request writes no count that requests on other workers write
    /// too: it keeps its worker's references to the listener and the
    /// member and borrows the pool, so while it is in flight the counts
    /// of the listener, the pool and the member themselves are what they
    /// were between requests.
    #[tokio::test]
    async fn a_request_in_flight_writes_no_count_other_workers_write() {
        let dp = Dataplane::with_workers(Workers::start(2, false).unwrap());
        let member = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let yaml = format!(
            r#"
load_balancers:
  - name: web
    listeners:
      - {{ port: {port}, protocol: http, bind: 127.0.0.1, default_pool: app }}
pools:
  - {{ name: app, members: [ {{ address: "{}" }} ] }}
"#,
            member.local_addr().unwrap()
        );
        dp.apply(&keel_model::Document::parse_spec(&yaml).unwrap())
            .await
            .unwrap();
        let (listener, pool, state) = {
            let plan = dp.plan.load();
            let bind = SocketAddr::from(([127, 0, 0, 1], port));
            let listener = plan.listeners.get(&bind).unwrap().shared().clone();
            let pool = listener.pool.clone();
            let state = pool.balancer.members()[0].clone();
            (listener, pool, state)
        };
        let counts = || {
            [
                Arc::strong_count(&listener),
                Arc::strong_count(&pool),
                Arc::strong_count(&state),
            ]
        };
        let request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
        let mut client = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        client.write_all(request).await.unwrap();
        let (mut upstream, _) = member.accept().await.unwrap();
        read_until(&mut upstream, b"\r\n\r\n").await;
        upstream.write_all(answer).await.unwrap();
        read_until(&mut client, b"ok").await;
        // The first request's state goes when its response is over.
        while state.outstanding() > 0 {
            sleep(Duration::from_millis(5)).await;
        }
        let between = counts();

        client.write_all(request).await.unwrap();
        read_until(&mut upstream, b"\r\n\r\n").await;
        assert_eq!(state.outstanding(), 1, "the second request is in flight");
        assert_eq!(counts(), between, "listener, pool, member");
        upstream.write_all(answer).await.unwrap();
        read_until(&mut client, b"ok").await;
    }
}
