//! The typed, validated load-balancer configuration the cluster agrees on.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{FieldError, Path};
use crate::rules::{Cidr, Rule, MAX_RULES};

/// Highest member weight accepted.
pub const MAX_WEIGHT: u32 = 1000;

/// The whole load-balancing configuration: what every node serves.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spec {
    /// Load balancers by name.
    pub load_balancers: BTreeMap<String, LoadBalancer>,
    /// Pools of members by name.
    pub pools: BTreeMap<String, Pool>,
    /// TLS certificates with their keys, by name (used by TLS listeners).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub certificates: BTreeMap<String, Certificate>,
}

/// A certificate chain and its private key. The key is a secret: it is
/// never logged (`Debug` redacts it) and the API never returns it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Certificate {
    pub name: String,
    /// The leaf certificate first, then intermediates; PEM.
    pub cert_pem: String,
    /// The private key; PEM (PKCS#8, PKCS#1 or SEC1).
    pub key_pem: String,
}

impl std::fmt::Debug for Certificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificate")
            .field("name", &self.name)
            .field("key_pem", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// A named group of listeners, optionally on a virtual IP owned by the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadBalancer {
    pub name: String,
    /// The virtual IP its listeners bind; `None` binds all addresses.
    pub vip: Option<Vip>,
    pub listeners: Vec<Listener>,
}

/// A virtual IP address with the prefix length it is added with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Vip {
    pub addr: IpAddr,
    pub prefix_len: u8,
}

impl fmt::Display for Vip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

/// A port clients connect to, and where its traffic goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listener {
    pub port: u16,
    pub protocol: Protocol,
    /// The local address to bind when the load balancer has no VIP.
    pub bind: Option<IpAddr>,
    /// The pool that receives traffic no rule claims. Without one, such
    /// traffic is refused: HTTP gets 503, a connection is closed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_pool: Option<String>,
    /// A connection with no traffic either way for this long is closed.
    #[serde(with = "duration_text")]
    pub idle_timeout: Duration,
    /// HTTP only: a client must send a complete request head within this time.
    #[serde(with = "duration_text")]
    pub header_timeout: Duration,
    /// HTTPS and TLS: certificates by name. A client's SNI picks the one
    /// whose names match (exact before wildcard); the first is the default.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certificates: Vec<String>,
    /// HTTPS and TLS: which protocol versions and cipher suites are offered.
    #[serde(default, skip_serializing_if = "TlsPolicy::is_default")]
    pub tls_policy: TlsPolicy,
    /// HTTP and HTTPS: serve HTTP/2 too (ALPN `h2` on TLS, prior-knowledge
    /// h2c on cleartext).
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub http2: bool,
    /// HTTP and HTTPS: rules by ascending priority; the first that matches
    /// decides, else `default_pool` takes the request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<Rule>,
    /// Every connection starts with a PROXY header (v1 or v2) naming the
    /// real client; connections without one are closed.
    #[serde(default, skip_serializing_if = "is_false")]
    pub accept_proxy_protocol: bool,
    /// Peers trusted to speak for clients: only they may send a PROXY
    /// header (when `accept_proxy_protocol`), and only their
    /// `X-Forwarded-*`/`Forwarded` headers are kept (others are replaced).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_proxies: Vec<Cidr>,
    /// HTTP only: a request's head and body must both arrive within this,
    /// else 408 (when no response has started).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "optional_duration_text"
    )]
    pub request_timeout: Option<Duration>,
    /// HTTP only: how long Keel waits on the client in the middle of a
    /// request: a request body that pauses this long is answered 408, and
    /// a response the client stops reading for this long is abandoned (the
    /// connection closes). HAProxy's `timeout client`. Unset: 60 s
    /// ([`Listener::client_timeout`]).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "optional_duration_text"
    )]
    pub client_timeout: Option<Duration>,
    /// HTTP only: how long a client connection may sit idle between
    /// requests (HTTP/1.1 keep-alive, or an HTTP/2 connection with no
    /// stream open) before Keel closes it. HAProxy's `timeout
    /// http-keep-alive`. Unset: the listener's `header_timeout`
    /// ([`Listener::keepalive_timeout`]).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "optional_duration_text"
    )]
    pub keepalive_timeout: Option<Duration>,
    /// Connections open at once; more are refused (reset) and counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// Per client (IPv4 address or IPv6 /64): HTTP requests (else 429) or, on L4 listeners, new
    /// connections (else refused) per second, with bursts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
}

/// A token bucket per client IPv4 address or IPv6 /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimit {
    /// Tokens added per second.
    pub per_second: u32,
    /// Bucket size: how many may come at once after a quiet spell.
    pub burst: u32,
}

/// The most connections or requests per second a limit may name.
pub const MAX_LIMIT: u32 = 10_000_000;

fn is_false(b: &bool) -> bool {
    !*b
}

// Fields added after 0.1.0 are left out when they hold their default, so
// entries that do not use them encode as they always did.
fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

/// A named set of TLS versions and cipher suites for a terminating listener.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TlsPolicy {
    /// TLS 1.3 only.
    Modern,
    /// TLS 1.2 and 1.3, forward-secret AEAD cipher suites only.
    #[default]
    Compatible,
}

impl TlsPolicy {
    fn is_default(&self) -> bool {
        *self == TlsPolicy::default()
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TlsPolicy::Modern => "modern",
            TlsPolicy::Compatible => "compatible",
        }
    }
}

impl Listener {
    /// [`Listener::client_timeout`], or its default.
    pub fn client_timeout(&self) -> Duration {
        self.client_timeout
            .unwrap_or(crate::defaults::CLIENT_TIMEOUT)
    }

    /// [`Listener::keepalive_timeout`], or its default: the head timeout.
    pub fn keepalive_timeout(&self) -> Duration {
        self.keepalive_timeout.unwrap_or(self.header_timeout)
    }

    /// The address this listener binds on, given its load balancer's VIP.
    pub fn bind_addr(&self, vip: Option<&Vip>) -> SocketAddr {
        let ip = match (vip, self.bind) {
            (Some(v), _) => v.addr,
            (None, Some(ip)) => ip,
            (None, None) => IpAddr::from([0, 0, 0, 0]),
        };
        SocketAddr::new(ip, self.port)
    }
}

/// What a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// Layer 4: bytes are relayed to a member unchanged.
    Tcp,
    /// Layer 7: HTTP/1.1 (and h2c) requests are balanced one by one.
    Http,
    /// Layer 7 over TLS terminated here: HTTP/1.1 and HTTP/2 by ALPN.
    Https,
    /// Layer 4 with TLS terminated here: the decrypted bytes are relayed.
    Tls,
    /// Layer 4, TLS left to the members: the server name in the client's
    /// hello (SNI) picks the pool through `rules`; bytes pass unchanged.
    TlsPassthrough,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Http => "http",
            Protocol::Https => "https",
            Protocol::Tls => "tls",
            Protocol::TlsPassthrough => "tls_passthrough",
        }
    }

    /// Requests are balanced one by one (HTTP or HTTPS).
    pub fn is_http(self) -> bool {
        matches!(self, Protocol::Http | Protocol::Https)
    }

    /// TLS is terminated on the listener.
    pub fn terminates_tls(self) -> bool {
        matches!(self, Protocol::Https | Protocol::Tls)
    }
}

/// A set of members that share a balancing algorithm and a health check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pool {
    pub name: String,
    pub algorithm: Algorithm,
    pub health_check: Option<HealthCheck>,
    /// How long a removed or disabled member keeps its established
    /// connections and in-flight requests before they are cut.
    #[serde(with = "duration_text")]
    pub drain_timeout: Duration,
    /// How long to wait for a TCP connection to a member.
    #[serde(with = "duration_text")]
    pub connect_timeout: Duration,
    /// HTTP only: how long to wait for a member's response head.
    #[serde(with = "duration_text")]
    pub response_timeout: Duration,
    /// Sends each member connection a PROXY header naming the client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_protocol: Option<ProxyProtocol>,
    /// `consistent_hash` only: what is hashed (the client's IP by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_on: Option<HashOn>,
    /// HTTP only: keeps a client on the member it first reached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stickiness: Option<Stickiness>,
    /// Connections to members use TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<MemberTls>,
    /// HTTP only: the version spoken to members (HTTP/2: h2c on cleartext,
    /// ALPN `h2` over TLS; needed for gRPC).
    #[serde(default, skip_serializing_if = "HttpVersion::is_default")]
    pub http_version: HttpVersion,
    pub members: Vec<Member>,
}

/// TLS from Keel to a pool's members.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberTls {
    /// Check the member's certificate (against `ca_pem`); `false` skips
    /// every check and must be asked for explicitly.
    pub verify: bool,
    /// The CA certificates (PEM) member certificates must chain to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_pem: Option<String>,
    /// The name sent as SNI and checked in the certificate; the member's IP
    /// address when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
}

impl fmt::Debug for MemberTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemberTls")
            .field("verify", &self.verify)
            .field("ca_pem", &self.ca_pem.as_ref().map(|_| "<pem>"))
            .field("server_name", &self.server_name)
            .finish()
    }
}

/// The HTTP version Keel speaks to a pool's members.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HttpVersion {
    #[default]
    Http1,
    Http2,
}

impl HttpVersion {
    fn is_default(&self) -> bool {
        *self == HttpVersion::default()
    }

    pub fn as_str(self) -> &'static str {
        match self {
            HttpVersion::Http1 => "http1",
            HttpVersion::Http2 => "http2",
        }
    }
}

/// What a `consistent_hash` pool hashes to choose a member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HashOn {
    /// The client's IP address.
    Source,
    /// A request header's value (HTTP; the source IP when absent).
    Header(String),
    /// A request cookie's value (HTTP; the source IP when absent).
    Cookie(String),
}

impl fmt::Display for HashOn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HashOn::Source => f.write_str("source"),
            HashOn::Header(h) => write!(f, "header:{h}"),
            HashOn::Cookie(c) => write!(f, "cookie:{c}"),
        }
    }
}

/// Session stickiness of an HTTP pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stickiness {
    /// Keel issues a signed cookie naming the member, valid for `duration`.
    LbCookie {
        #[serde(with = "duration_text")]
        duration: Duration,
    },
    /// Keel follows the application's session cookie `cookie`: when a
    /// member sets it, Keel issues a signed cookie naming that member,
    /// honoured for `duration` while the client still sends `cookie`.
    AppCookie {
        cookie: String,
        #[serde(with = "duration_text")]
        duration: Duration,
    },
}

/// The longest stickiness accepted: seven days.
pub const MAX_STICKINESS: Duration = Duration::from_secs(7 * 24 * 3600);

/// The PROXY protocol version a pool sends to its members.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProxyProtocol {
    /// Text: `PROXY TCP4 client-ip dest-ip client-port dest-port`.
    V1,
    /// Binary.
    V2,
}

impl ProxyProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyProtocol::V1 => "v1",
            ProxyProtocol::V2 => "v2",
        }
    }
}

/// How a pool chooses a member for a new connection or request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    /// Smooth weighted round robin: members take turns in proportion to weight.
    #[serde(alias = "weighted_round_robin")]
    RoundRobin,
    /// The member with the fewest in-flight requests (HTTP) or connections (TCP), per weight.
    LeastOutstanding,
    /// Two members picked at random; the less loaded one wins.
    RandomTwo,
    /// The client's IP address picks the member (rendezvous hashing, weighted).
    SourceHash,
    /// `hash_on` (source IP, a header or a cookie) picks the member by
    /// weighted rendezvous hashing: a member leaving moves only its share.
    ConsistentHash,
}

impl Algorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::RoundRobin => "round_robin",
            Algorithm::LeastOutstanding => "least_outstanding",
            Algorithm::RandomTwo => "random_two",
            Algorithm::SourceHash => "source_hash",
            Algorithm::ConsistentHash => "consistent_hash",
        }
    }
}

/// A backend server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub address: SocketAddr,
    /// Relative share of new traffic, 0 to 1000; 0 sends none.
    pub weight: u32,
    /// A disabled member gets no new traffic and drains what it has.
    pub enabled: bool,
}

/// An active health check run against every member of a pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheck {
    pub kind: CheckKind,
    /// Time between the start of one check and the next.
    #[serde(with = "duration_text")]
    pub interval: Duration,
    /// A check not finished in this time fails.
    #[serde(with = "duration_text")]
    pub timeout: Duration,
    /// Consecutive passes that bring a down member up.
    pub healthy_threshold: u32,
    /// Consecutive failures that take an up member down.
    pub unhealthy_threshold: u32,
    /// The port checks go to; the member's own port when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

/// What a health check does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckKind {
    /// The check passes when a TCP connection is accepted.
    Tcp,
    /// The check passes when an HTTP request gets an expected status.
    Http {
        method: String,
        path: String,
        /// The `Host` header to send; the member's address when unset.
        host: Option<String>,
        expected_codes: StatusRanges,
    },
}

/// Inclusive ranges of HTTP status codes, written `200-299,302`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusRanges(pub Vec<(u16, u16)>);

impl StatusRanges {
    pub fn contains(&self, code: u16) -> bool {
        self.0.iter().any(|&(lo, hi)| lo <= code && code <= hi)
    }

    /// Parses `200-399` or `200,301-302`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut ranges = Vec::new();
        for part in text.split(',').map(str::trim) {
            let (lo, hi) = match part.split_once('-') {
                Some((lo, hi)) => (lo.trim(), hi.trim()),
                None => (part, part),
            };
            let code = |s: &str| match s.parse::<u16>() {
                Ok(c) if (100..=599).contains(&c) => Ok(c),
                _ => Err(format!("{s:?} is not an HTTP status code (100-599)")),
            };
            let (lo, hi) = (code(lo)?, code(hi)?);
            if lo > hi {
                return Err(format!("range {lo}-{hi} is empty"));
            }
            ranges.push((lo, hi));
        }
        Ok(StatusRanges(ranges))
    }
}

impl fmt::Display for StatusRanges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, &(lo, hi)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if lo == hi {
                write!(f, "{lo}")?;
            } else {
                write!(f, "{lo}-{hi}")?;
            }
        }
        Ok(())
    }
}

impl Spec {
    /// Checks the rules that span objects: names, references and ports.
    /// Paths name objects (`load_balancers[web]`); [`crate::Document`] turns
    /// them into list positions.
    pub fn check(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        let mut bound: Vec<(SocketAddr, &str, usize)> = Vec::new();
        for (key, lb) in &self.load_balancers {
            let at = Path::root().field("load_balancers").name(key);
            if key != &lb.name {
                errors.push(FieldError::new(at.field("name"), "does not match its key"));
            }
            check_name(&lb.name, &at.field("name"), &mut errors);
            for (i, l) in lb.listeners.iter().enumerate() {
                let lat = at.field("listeners").index(i);
                if l.port == 0 {
                    errors.push(FieldError::new(lat.field("port"), "must be 1-65535"));
                }
                if lb.vip.is_some() && l.bind.is_some() {
                    errors.push(FieldError::new(
                        lat.field("bind"),
                        "cannot be set on a load balancer with a vip (listeners bind the vip)",
                    ));
                }
                if let Some(pool) = l
                    .default_pool
                    .as_ref()
                    .filter(|p| !self.pools.contains_key(*p))
                {
                    errors.push(FieldError::new(
                        lat.field("default_pool"),
                        format!("no pool named {pool:?}"),
                    ));
                }
                check_positive(l.idle_timeout, &lat.field("idle_timeout"), &mut errors);
                check_positive(l.header_timeout, &lat.field("header_timeout"), &mut errors);
                self.check_listener_tls(l, &lat, &mut errors);
                check_limits(l, &lat, &mut errors);
                self.check_rules(l, &lat, &mut errors);
                let addr = l.bind_addr(lb.vip.as_ref());
                if let Some((_, lb, n)) = bound.iter().find(|(b, ..)| overlaps(*b, addr)) {
                    errors.push(FieldError::new(
                        lat.field("port"),
                        format!("{addr} is already used by load balancer {lb:?} (listener {n})"),
                    ));
                }
                bound.push((addr, &lb.name, i));
            }
        }
        for (key, cert) in &self.certificates {
            let at = Path::root().field("certificates").name(key);
            if key != &cert.name {
                errors.push(FieldError::new(at.field("name"), "does not match its key"));
            }
            check_name(&cert.name, &at.field("name"), &mut errors);
            if !cert.cert_pem.contains("-----BEGIN CERTIFICATE-----") {
                errors.push(FieldError::new(
                    at.field("cert_pem"),
                    "needs at least one PEM certificate (-----BEGIN CERTIFICATE-----)",
                ));
            }
            if !(cert.key_pem.contains("-----BEGIN ") && cert.key_pem.contains("PRIVATE KEY-----"))
            {
                errors.push(FieldError::new(
                    at.field("key_pem"),
                    "needs a PEM private key (-----BEGIN PRIVATE KEY-----)",
                ));
            }
        }
        for (key, pool) in &self.pools {
            let at = Path::root().field("pools").name(key);
            if key != &pool.name {
                errors.push(FieldError::new(at.field("name"), "does not match its key"));
            }
            check_name(&pool.name, &at.field("name"), &mut errors);
            check_positive(pool.drain_timeout, &at.field("drain_timeout"), &mut errors);
            check_positive(
                pool.connect_timeout,
                &at.field("connect_timeout"),
                &mut errors,
            );
            check_positive(
                pool.response_timeout,
                &at.field("response_timeout"),
                &mut errors,
            );
            for (i, m) in pool.members.iter().enumerate() {
                let mat = at.field("members").index(i);
                if m.weight > MAX_WEIGHT {
                    errors.push(FieldError::new(
                        mat.field("weight"),
                        format!("must be 0-{MAX_WEIGHT}"),
                    ));
                }
                if m.address.port() == 0 || m.address.ip().is_unspecified() {
                    errors.push(FieldError::new(
                        mat.field("address"),
                        "needs a specific IP address and a non-zero port",
                    ));
                }
                if pool.members[..i].iter().any(|o| o.address == m.address) {
                    errors.push(FieldError::new(
                        mat.field("address"),
                        format!("{} is listed twice in this pool", m.address),
                    ));
                }
            }
            if let Some(hc) = &pool.health_check {
                hc.check(&at.field("health_check"), &mut errors);
            }
            check_affinity(pool, &at, &mut errors);
            if let Some(tls) = &pool.tls {
                check_member_tls(tls, &at.field("tls"), &mut errors);
            }
        }
        errors
    }
}

impl Spec {
    fn check_rules(&self, l: &Listener, at: &Path, errors: &mut Vec<FieldError>) {
        if l.rules.is_empty() {
            return;
        }
        if l.protocol == Protocol::TlsPassthrough {
            // Only the server name and the client's address are known
            // before the member's TLS starts, and Keel cannot answer itself.
            for (i, rule) in l.rules.iter().enumerate() {
                let rat = at.field("rules").index(i);
                let c = &rule.conditions;
                if !(c.paths.is_empty()
                    && c.headers.is_empty()
                    && c.methods.is_empty()
                    && c.query.is_empty())
                {
                    errors.push(FieldError::new(
                        rat.clone(),
                        "a tls_passthrough listener matches only host (the SNI name) and source",
                    ));
                }
                if !matches!(
                    rule.action,
                    crate::rules::Action::Forward(_) | crate::rules::Action::Weighted(_)
                ) {
                    errors.push(FieldError::new(
                        rat,
                        "a tls_passthrough listener can only forward (pool or forward)",
                    ));
                }
            }
        } else if !l.protocol.is_http() {
            errors.push(FieldError::new(
                at.field("rules"),
                "only apply to http, https and tls_passthrough listeners",
            ));
            return;
        }
        if l.rules.len() > MAX_RULES {
            errors.push(FieldError::new(
                at.field("rules"),
                format!("at most {MAX_RULES} rules per listener"),
            ));
        }
        for (i, rule) in l.rules.iter().enumerate() {
            let rat = at.field("rules").index(i);
            if let Some(j) = l.rules[..i]
                .iter()
                .position(|r| r.priority == rule.priority)
            {
                errors.push(FieldError::new(
                    rat.field("priority"),
                    format!("{} is also the priority of rules[{j}]", rule.priority),
                ));
            }
            rule.check(&rat, errors);
            for pool in rule.pools() {
                if !self.pools.contains_key(pool) {
                    let field = if matches!(rule.action, crate::rules::Action::Forward(_)) {
                        "pool"
                    } else {
                        "forward"
                    };
                    errors.push(FieldError::new(
                        rat.field(field),
                        format!("no pool named {pool:?}"),
                    ));
                }
            }
        }
    }

    fn check_listener_tls(&self, l: &Listener, at: &Path, errors: &mut Vec<FieldError>) {
        if !l.protocol.terminates_tls() {
            if !l.certificates.is_empty() {
                errors.push(FieldError::new(
                    at.field("certificates"),
                    "only applies to https and tls listeners",
                ));
            }
            if l.tls_policy != TlsPolicy::default() {
                errors.push(FieldError::new(
                    at.field("tls_policy"),
                    "only applies to https and tls listeners",
                ));
            }
            return;
        }
        if l.certificates.is_empty() {
            errors.push(FieldError::new(
                at.field("certificates"),
                format!(
                    "a {} listener needs at least one certificate",
                    l.protocol.as_str()
                ),
            ));
        }
        for (i, name) in l.certificates.iter().enumerate() {
            if !self.certificates.contains_key(name) {
                errors.push(FieldError::new(
                    at.field("certificates").index(i),
                    format!("no certificate named {name:?}"),
                ));
            } else if l.certificates[..i].contains(name) {
                errors.push(FieldError::new(
                    at.field("certificates").index(i),
                    format!("{name:?} is listed twice"),
                ));
            }
        }
    }
}

impl HealthCheck {
    fn check(&self, at: &Path, errors: &mut Vec<FieldError>) {
        check_positive(self.interval, &at.field("interval"), errors);
        check_positive(self.timeout, &at.field("timeout"), errors);
        if self.timeout > self.interval {
            errors.push(FieldError::new(
                at.field("timeout"),
                "must not be longer than interval",
            ));
        }
        for (name, n) in [
            ("healthy_threshold", self.healthy_threshold),
            ("unhealthy_threshold", self.unhealthy_threshold),
        ] {
            if !(1..=100).contains(&n) {
                errors.push(FieldError::new(at.field(name), "must be 1-100"));
            }
        }
        if let CheckKind::Http {
            method,
            path,
            host,
            expected_codes,
        } = &self.kind
        {
            if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
                errors.push(FieldError::new(
                    at.field("method"),
                    "must be an HTTP method in capitals, such as GET",
                ));
            }
            if !path.starts_with('/') || path.bytes().any(|b| b <= b' ' || b == 0x7f) {
                errors.push(FieldError::new(
                    at.field("path"),
                    "must start with / and contain no spaces or control characters",
                ));
            }
            if let Some(h) = host {
                if h.is_empty() || h.bytes().any(|b| b <= b' ' || b == 0x7f) {
                    errors.push(FieldError::new(
                        at.field("host"),
                        "is not a valid host name",
                    ));
                }
            }
            if expected_codes.0.is_empty() {
                errors.push(FieldError::new(at.field("expected_codes"), "is empty"));
            }
        }
    }
}

fn check_affinity(pool: &Pool, at: &Path, errors: &mut Vec<FieldError>) {
    match &pool.hash_on {
        Some(_) if pool.algorithm != Algorithm::ConsistentHash => errors.push(FieldError::new(
            at.field("hash_on"),
            "only applies to algorithm consistent_hash",
        )),
        Some(HashOn::Header(name)) if !is_token(name) => errors.push(FieldError::new(
            at.field("hash_on"),
            format!("{name:?} is not a valid header name"),
        )),
        Some(HashOn::Cookie(name)) if !is_token(name) => errors.push(FieldError::new(
            at.field("hash_on"),
            format!("{name:?} is not a valid cookie name"),
        )),
        _ => {}
    }
    let (duration, cookie) = match &pool.stickiness {
        None => return,
        Some(Stickiness::LbCookie { duration }) => (duration, None),
        Some(Stickiness::AppCookie { cookie, duration }) => (duration, Some(cookie)),
    };
    let sat = at.field("stickiness");
    if duration.as_secs() < 1 || *duration > MAX_STICKINESS {
        errors.push(FieldError::new(
            sat.field("duration"),
            "must be 1s to 7 days",
        ));
    }
    if let Some(name) = cookie {
        if !is_token(name) {
            errors.push(FieldError::new(
                sat.field("cookie"),
                format!("{name:?} is not a valid cookie name"),
            ));
        } else if name.to_ascii_lowercase().starts_with("keel-") {
            errors.push(FieldError::new(
                sat.field("cookie"),
                "names starting with keel- are Keel's own",
            ));
        }
    }
}

fn check_limits(l: &Listener, at: &Path, errors: &mut Vec<FieldError>) {
    if let Some(t) = l.keepalive_timeout {
        if !l.protocol.is_http() {
            errors.push(FieldError::new(
                at.field("keepalive_timeout"),
                "only applies to http and https listeners",
            ));
        }
        check_positive(t, &at.field("keepalive_timeout"), errors);
    }
    if let Some(t) = l.client_timeout {
        if !l.protocol.is_http() {
            errors.push(FieldError::new(
                at.field("client_timeout"),
                "only applies to http and https listeners",
            ));
        }
        check_positive(t, &at.field("client_timeout"), errors);
    }
    if let Some(t) = l.request_timeout {
        if !l.protocol.is_http() {
            errors.push(FieldError::new(
                at.field("request_timeout"),
                "only applies to http and https listeners",
            ));
        }
        check_positive(t, &at.field("request_timeout"), errors);
    }
    if let Some(n) = l.max_connections {
        if !(1..=MAX_LIMIT).contains(&n) {
            errors.push(FieldError::new(
                at.field("max_connections"),
                format!("must be 1-{MAX_LIMIT}"),
            ));
        }
    }
    if let Some(r) = l.rate_limit {
        for (name, n) in [("per_second", r.per_second), ("burst", r.burst)] {
            if !(1..=MAX_LIMIT).contains(&n) {
                errors.push(FieldError::new(
                    at.field("rate_limit").field(name),
                    format!("must be 1-{MAX_LIMIT}"),
                ));
            }
        }
    }
}

fn check_member_tls(tls: &MemberTls, at: &Path, errors: &mut Vec<FieldError>) {
    match (&tls.ca_pem, tls.verify) {
        (None, true) => errors.push(FieldError::new(
            at.field("ca"),
            "is required to verify members (or set verify: false to skip verification)",
        )),
        (Some(_), false) => errors.push(FieldError::new(
            at.field("ca"),
            "is unused when verify is false",
        )),
        (Some(pem), true) if !pem.contains("-----BEGIN CERTIFICATE-----") => {
            errors.push(FieldError::new(
                at.field("ca"),
                "needs at least one PEM certificate (-----BEGIN CERTIFICATE-----)",
            ))
        }
        _ => {}
    }
    if let Some(name) = &tls.server_name {
        let ok = name.parse::<IpAddr>().is_ok()
            || (!name.is_empty()
                && name.len() <= 253
                && name.split('.').all(|label| {
                    !label.is_empty()
                        && label.len() <= 63
                        && label
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                }));
        if !ok {
            errors.push(FieldError::new(
                at.field("server_name"),
                format!("{name:?} is not a DNS name or IP address"),
            ));
        }
    }
}

/// An HTTP token (RFC 9110 §5.6.2): what cookie and header names are made of.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Two bind addresses collide when their ports match and their IPs are equal
/// or one of them is the wildcard of the same family.
fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port()
        && (a.ip() == b.ip()
            || (a.is_ipv4() == b.is_ipv4() && (a.ip().is_unspecified() || b.ip().is_unspecified())))
}

fn check_name(name: &str, at: &Path, errors: &mut Vec<FieldError>) {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if name.is_empty() || name.len() > 64 || !name.chars().all(ok_char) {
        errors.push(FieldError::new(
            at.clone(),
            "must be 1-64 characters of letters, digits, '-', '_' or '.'",
        ));
    }
}

fn check_positive(d: Duration, at: &Path, errors: &mut Vec<FieldError>) {
    if d.is_zero() {
        errors.push(FieldError::new(at.clone(), "must be longer than zero"));
    }
}

/// Optional durations, as [`duration_text`] when present.
pub(crate) mod optional_duration_text {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.collect_str(&humantime::format_duration(*d)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(None),
            Some(text) => humantime::parse_duration(&text)
                .map(Some)
                .map_err(serde::de::Error::custom),
        }
    }
}

/// Durations stored as human text (`1s 500ms`) so entries and snapshots read well.
pub(crate) mod duration_text {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}
