//! The immutable runtime plan compiled from a `Spec`: what each bound
//! address serves and how each pool balances. Swapped in whole, atomically.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use keel_model::{Listener, Pool};

use crate::balance::Balancer;
use crate::metrics::{ListenerStats, PoolStats};
use crate::workers::Refs;

/// The plan every connection reads, one load per connection or request.
pub(crate) type SharedPlan = Arc<ArcSwap<Plan>>;

#[derive(Default)]
pub(crate) struct Plan {
    /// Counts applied configurations; 0 is the empty plan at start.
    pub version: u64,
    /// By bound address. A request takes its worker's reference
    /// ([`Refs`]), so the listener's own count is not written per request.
    pub listeners: HashMap<SocketAddr, Refs<ListenerPlan>>,
    pub pools: BTreeMap<String, Arc<PoolPlan>>,
    /// Client connections the node takes at once over all listeners, so a
    /// flood cannot use up its file descriptors (see [`client_capacity`]).
    pub max_client_connections: usize,
}

/// How many client connections fit in the process's open-file limit: each
/// may need a member connection too, and a quarter of the limit (at most
/// 1024) stays for everything else (Raft, gossip, health checks, the admin
/// API, files).
pub(crate) fn client_capacity() -> usize {
    use nix::sys::resource::{getrlimit, Resource};
    let soft = getrlimit(Resource::RLIMIT_NOFILE).map_or(1024, |(soft, _)| soft);
    let soft = usize::try_from(soft).unwrap_or(usize::MAX);
    let reserve = (soft / 4).min(1024);
    (soft.saturating_sub(reserve) / 2).max(16)
}

pub(crate) struct ListenerPlan {
    pub lb: String,
    pub spec: Listener,
    pub bind: SocketAddr,
    /// `X-Forwarded-Proto`: `http` or `https`.
    pub proto_header: http::HeaderValue,
    /// TLS-terminating listeners: certificates and policy. New handshakes
    /// read the newest plan's, so a replaced certificate serves at once.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// The default pool: requests no rule claims, and every TCP connection
    /// (an empty one when the listener names none).
    pub pool: Arc<PoolPlan>,
    /// Per-client rate limit, shared with earlier plans while unchanged.
    pub limiter: Option<Arc<crate::limit::RateLimiter>>,
    /// HTTP rules in priority order.
    pub rules: Vec<crate::route::RulePlan>,
    pub stats: Arc<ListenerStats>,
}

pub(crate) struct PoolPlan {
    pub spec: Pool,
    pub balancer: Balancer,
    /// TLS towards the members, when the pool asks for it.
    pub tls: Option<Arc<crate::tls::MemberTlsPlan>>,
    /// HTTP session stickiness, when the pool asks for it.
    pub sticky: Option<crate::sticky::StickyPlan>,
    pub stats: Arc<PoolStats>,
}

impl PoolPlan {
    /// What a listener without a default pool sends unclaimed traffic to:
    /// no members, so requests get 503 and connections are closed.
    pub fn none() -> Self {
        use keel_model::defaults;
        PoolPlan {
            spec: Pool {
                name: "(no default pool)".into(),
                algorithm: keel_model::Algorithm::RoundRobin,
                health_check: None,
                drain_timeout: defaults::DRAIN_TIMEOUT,
                connect_timeout: defaults::CONNECT_TIMEOUT,
                response_timeout: defaults::RESPONSE_TIMEOUT,
                proxy_protocol: None,
                hash_on: None,
                stickiness: None,
                tls: None,
                http_version: keel_model::HttpVersion::default(),
                members: Vec::new(),
            },
            balancer: Balancer::new(keel_model::Algorithm::RoundRobin, Vec::new()),
            tls: None,
            sticky: None,
            stats: Arc::default(),
        }
    }
}
