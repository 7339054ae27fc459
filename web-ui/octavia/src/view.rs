//! Keel's objects as Octavia (and Neutron) objects. The mapping:
//!
//! - a load balancer is a Keel load balancer; a listener is the Keel
//!   listener on its port (`HTTP` is `http`, `TCP` `tcp`, Octavia's
//!   `HTTPS` is TLS left to the members, `tls_passthrough`, and
//!   `TERMINATED_HTTPS` is `https` with Keel certificates named by the
//!   container refs); a pool is a Keel pool; a member is a pool member
//!   (`admin_state_up` is `enabled`); a health monitor is the pool's health
//!   check; an L7 policy with at least one L7 rule is a listener rule
//!   (priority 40000 + position, so rules made in Keel come first);
//! - IDs are derived from Keel names (a hash shaped as a UUID), so they are
//!   stable, need no storage, and objects made through Keel's own API show
//!   here too; L7 policies and rules, which have no Keel name, keep theirs;
//! - what Keel's model has no field for (Octavia names that are not valid
//!   or not free Keel names, descriptions, tags, a pool's load balancer,
//!   L7 policies themselves) is kept in annotations `octavia/...`, which
//!   go with their object however it is removed;
//! - `provisioning_status` is `ACTIVE` once this node's data plane serves
//!   the newest config, `PENDING_UPDATE` before, `ERROR` while it refuses
//!   it (a port in use); `operating_status` comes from the health checks.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

pub(crate) use keel_compat::uuid;
use keel_compat::Provisioning;
use keel_model::{ClusterState, Listener, Pool, Protocol};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::Fault;
use keel_web_core::{HostNetwork, MemberHealth, Serving};

/// Octavia L7 policies are listener rules at this priority plus their
/// position.
pub(crate) const POLICY_PRIORITY: u32 = 40_000;

/// The project of objects made without one (and of the Neutron objects).
pub(crate) const PROJECT: &str = "keel";

/// Everything a view needs, read once per request.
pub(crate) struct View {
    pub version: u64,
    pub state: Arc<ClusterState>,
    pub serving: Serving,
    pub health: Vec<MemberHealth>,
    pub networks: Vec<HostNetwork>,
}

/// A fresh random UUID (for L7 policies and rules).
pub(crate) fn random_uuid() -> String {
    uuid("random", &keel_web_core::random_hex(16))
}

/// The name Octavia's messages give a kind of object.
pub(crate) fn title(kind: &str) -> String {
    match kind {
        "loadbalancer" => "Load Balancer",
        "listener" => "Listener",
        "pool" => "Pool",
        "member" => "Member",
        "healthmonitor" => "Health Monitor",
        "l7policy" => "L7 Policy",
        "rule" => "L7 Rule",
        "subnet" => "Subnet",
        "network" => "Network",
        "port" => "Port",
        other => other,
    }
    .to_owned()
}

pub(crate) fn lb_key(lb: &str) -> String {
    format!("octavia/loadbalancer/{lb}")
}

pub(crate) fn listener_key(lb: &str, port: u16) -> String {
    format!("octavia/listener/{lb}/{port}")
}

pub(crate) fn pool_key(pool: &str) -> String {
    format!("octavia/pool/{pool}")
}

pub(crate) fn member_key(pool: &str, address: SocketAddr) -> String {
    format!("octavia/member/{pool}/{address}")
}

pub(crate) fn monitor_key(pool: &str) -> String {
    format!("octavia/healthmonitor/{pool}")
}

pub(crate) fn policy_key(lb: &str, port: u16, id: &str) -> String {
    format!("octavia/l7policy/{lb}/{port}/{id}")
}

pub(crate) fn listener_id(lb: &str, port: u16) -> String {
    uuid("listener", &format!("{lb}/{port}"))
}

pub(crate) fn member_id(pool: &str, address: SocketAddr) -> String {
    uuid("member", &format!("{pool}/{address}"))
}

/// An L7 policy, as kept in its annotation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Policy {
    pub id: String,
    pub lb: String,
    pub port: u16,
    pub name: String,
    pub description: String,
    pub position: u32,
    /// `REDIRECT_TO_POOL`, `REDIRECT_TO_URL`, `REDIRECT_PREFIX` or `REJECT`.
    pub action: String,
    /// The Keel pool of `REDIRECT_TO_POOL`.
    pub redirect_pool: Option<String>,
    pub redirect_url: Option<String>,
    pub redirect_prefix: Option<String>,
    pub redirect_http_code: Option<u16>,
    pub rules: Vec<L7Rule>,
    pub tags: Vec<String>,
    pub created_at: String,
    pub updated_at: String,
}

/// An L7 rule: one condition of its policy.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct L7Rule {
    pub id: String,
    /// `PATH`, `HOST_NAME`, `HEADER` or `FILE_TYPE`.
    pub kind: String,
    /// `EQUAL_TO`, `STARTS_WITH`, `ENDS_WITH` or `CONTAINS`.
    pub compare_type: String,
    pub key: Option<String>,
    pub value: String,
    pub tags: Vec<String>,
    pub created_at: String,
    pub updated_at: String,
}

impl Policy {
    /// The policy kept in annotation values, if they hold one.
    pub fn from_note(values: &BTreeMap<String, String>) -> Option<Self> {
        serde_json::from_str(values.get("policy")?).ok()
    }

    pub fn note(&self) -> BTreeMap<String, String> {
        BTreeMap::from([(
            "policy".to_owned(),
            serde_json::to_string(self).unwrap_or_default(),
        )])
    }
}

/// A subnet of this node: an interface's network.
pub(crate) struct Subnet {
    pub id: String,
    pub cidr: String,
    pub interface: String,
    /// This node's address in it.
    pub address: IpAddr,
    pub prefix_len: u8,
}

impl Subnet {
    pub fn contains(&self, ip: IpAddr) -> bool {
        network_of(ip, self.prefix_len) == network_of(self.address, self.prefix_len)
    }
}

pub(super) fn network_of(ip: IpAddr, len: u8) -> (bool, u128) {
    match ip {
        IpAddr::V4(v4) => {
            let bits = u128::from(u32::from(v4));
            let mask = if len == 0 {
                0
            } else {
                (u128::from(u32::MAX) << (32 - u32::from(len.min(32)))) & u128::from(u32::MAX)
            };
            (true, bits & mask)
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let mask = if len == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(len.min(128)))
            };
            (false, bits & mask)
        }
    }
}

pub(super) fn cidr_of(ip: IpAddr, len: u8) -> String {
    let (v4, bits) = network_of(ip, len);
    if v4 {
        let n = u32::try_from(bits).unwrap_or(0);
        format!("{}/{len}", std::net::Ipv4Addr::from(n))
    } else {
        format!("{}/{len}", std::net::Ipv6Addr::from(bits))
    }
}

pub(super) fn octavia_protocol(p: Protocol) -> &'static str {
    match p {
        Protocol::Http => "HTTP",
        Protocol::Tcp | Protocol::Tls => "TCP",
        Protocol::TlsPassthrough => "HTTPS",
        Protocol::Https => "TERMINATED_HTTPS",
    }
}

pub(super) fn secs(d: std::time::Duration) -> u64 {
    d.as_secs().max(u64::from(d.subsec_nanos() > 0))
}

pub(super) fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Annotation text as a JSON list (`tags`, comma-joined).
pub(super) fn tags(note: &BTreeMap<String, String>) -> Value {
    json!(note
        .get("tags")
        .map(|t| t.split(',').filter(|s| !s.is_empty()).collect::<Vec<_>>())
        .unwrap_or_default())
}

impl View {
    pub(super) fn note(&self, key: &str) -> BTreeMap<String, String> {
        self.state.annotations.get(key).cloned().unwrap_or_default()
    }

    /// Every object shares one provisioning status: whether this node's
    /// data plane serves the newest config.
    pub fn provisioning(&self) -> &'static str {
        match Provisioning::of(self.serving, self.version) {
            Provisioning::Active => "ACTIVE",
            Provisioning::Pending => "PENDING_UPDATE",
            Provisioning::Failed => "ERROR",
        }
    }

    /// The project an object is in: its load balancer's, as given when
    /// that was created, else [`PROJECT`]. Lists filter on it.
    pub(crate) fn project(&self, lb: Option<&str>) -> String {
        lb.and_then(|lb| self.note(&lb_key(lb)).get("project_id").cloned())
            .unwrap_or_else(|| PROJECT.to_owned())
    }

    pub(super) fn times(&self, note: &BTreeMap<String, String>) -> (Value, Value) {
        let created = note.get("created_at").cloned();
        let updated = note.get("updated_at").cloned().or_else(|| created.clone());
        (json!(created), json!(updated))
    }

    /// Every object of an Octavia collection.
    pub fn all(&self, collection: &str) -> Vec<Value> {
        match collection {
            "loadbalancers" => self
                .state
                .spec
                .load_balancers
                .keys()
                .map(|lb| self.lb_json(lb))
                .collect(),
            "listeners" => self
                .state
                .spec
                .load_balancers
                .values()
                .flat_map(|lb| lb.listeners.iter().map(|l| self.listener_json(&lb.name, l)))
                .collect(),
            "pools" => self
                .state
                .spec
                .pools
                .values()
                .map(|p| self.pool_json(p))
                .collect(),
            "healthmonitors" => self
                .state
                .spec
                .pools
                .values()
                .filter(|p| p.health_check.is_some())
                .map(|p| self.monitor_json(p))
                .collect(),
            "l7policies" => self
                .policies()
                .iter()
                .map(|p| self.policy_json(p))
                .collect(),
            _ => Vec::new(),
        }
    }

    pub fn lb_named(&self, id: &str) -> Result<String, Fault> {
        self.state
            .spec
            .load_balancers
            .keys()
            .find(|lb| uuid("loadbalancer", lb) == id)
            .cloned()
            .ok_or_else(|| Fault::not_found("Load Balancer", id))
    }

    pub fn listener_named(&self, id: &str) -> Result<(String, u16), Fault> {
        self.state
            .spec
            .load_balancers
            .values()
            .flat_map(|lb| lb.listeners.iter().map(|l| (lb.name.clone(), l.port)))
            .find(|(lb, port)| listener_id(lb, *port) == id)
            .ok_or_else(|| Fault::not_found("Listener", id))
    }

    pub fn pool_named(&self, id: &str) -> Result<String, Fault> {
        self.state
            .spec
            .pools
            .keys()
            .find(|p| uuid("pool", p) == id)
            .cloned()
            .ok_or_else(|| Fault::not_found("Pool", id))
    }

    pub fn monitor_named(&self, id: &str) -> Result<String, Fault> {
        self.state
            .spec
            .pools
            .values()
            .find(|p| p.health_check.is_some() && uuid("healthmonitor", &p.name) == id)
            .map(|p| p.name.clone())
            .ok_or_else(|| Fault::not_found("Health Monitor", id))
    }

    pub fn member_named(&self, pool: &str, id: &str) -> Result<SocketAddr, Fault> {
        self.state
            .spec
            .pools
            .get(pool)
            .and_then(|p| p.members.iter().find(|m| member_id(pool, m.address) == id))
            .map(|m| m.address)
            .ok_or_else(|| Fault::not_found("Member", id))
    }

    /// The load balancer a pool belongs to: the one recorded when it was
    /// made here, else the first whose listeners use it.
    pub fn pool_lb(&self, pool: &str) -> Option<String> {
        if let Some(lb) = self.note(&pool_key(pool)).get("loadbalancer") {
            if self.state.spec.load_balancers.contains_key(lb) {
                return Some(lb.clone());
            }
        }
        self.state
            .spec
            .load_balancers
            .values()
            .find(|lb| {
                lb.listeners.iter().any(|l| {
                    l.default_pool.as_deref() == Some(pool)
                        || l.rules.iter().any(|r| r.pools().contains(&pool))
                })
            })
            .map(|lb| lb.name.clone())
    }

    pub(super) fn member_status(&self, pool: &Pool, m: &keel_model::Member) -> &'static str {
        if !m.enabled {
            return "OFFLINE";
        }
        if pool.health_check.is_none() {
            return "NO_MONITOR";
        }
        let address = m.address.to_string();
        let views: Vec<&String> = self
            .health
            .iter()
            .filter(|h| h.pool == pool.name && h.address == address)
            .flat_map(|h| h.views.values())
            .collect();
        if views.is_empty() {
            "NO_MONITOR"
        } else if views.iter().all(|v| *v == "up") {
            "ONLINE"
        } else {
            "ERROR"
        }
    }

    pub(super) fn pool_status(&self, pool: &Pool) -> &'static str {
        let all: Vec<&str> = pool
            .members
            .iter()
            .filter(|m| m.enabled)
            .map(|m| self.member_status(pool, m))
            .collect();
        let failing = all.iter().filter(|s| **s == "ERROR").count();
        if failing > 0 && failing == all.len() {
            "ERROR"
        } else if failing > 0 {
            "DEGRADED"
        } else {
            "ONLINE"
        }
    }

    pub(super) fn listener_status(&self, l: &Listener) -> &'static str {
        l.default_pool
            .as_ref()
            .and_then(|p| self.state.spec.pools.get(p))
            .map_or("ONLINE", |p| self.pool_status(p))
    }

    pub(super) fn lb_status(&self, lb: &str) -> &'static str {
        let Some(x) = self.state.spec.load_balancers.get(lb) else {
            return "OFFLINE";
        };
        let mut all: Vec<&str> = x
            .listeners
            .iter()
            .map(|l| self.listener_status(l))
            .collect();
        all.extend(
            self.lb_pools(lb)
                .iter()
                .filter_map(|p| self.state.spec.pools.get(p))
                .map(|p| self.pool_status(p)),
        );
        if !all.is_empty() && all.iter().all(|s| *s == "ERROR") {
            "ERROR"
        } else if all.iter().any(|s| *s != "ONLINE") {
            "DEGRADED"
        } else {
            "ONLINE"
        }
    }

    /// The pools that belong to `lb`.
    pub fn lb_pools(&self, lb: &str) -> Vec<String> {
        self.state
            .spec
            .pools
            .keys()
            .filter(|p| self.pool_lb(p).as_deref() == Some(lb))
            .cloned()
            .collect()
    }

    /// The subnets of this node's interfaces (one per network; IPv6
    /// link-local ones left out).
    pub fn subnets(&self) -> Vec<Subnet> {
        let mut out: Vec<Subnet> = Vec::new();
        for n in &self.networks {
            if let IpAddr::V6(v6) = n.address {
                if v6.segments()[0] & 0xffc0 == 0xfe80 {
                    continue;
                }
            }
            let cidr = cidr_of(n.address, n.prefix_len);
            if out.iter().any(|s| s.cidr == cidr) {
                continue;
            }
            out.push(Subnet {
                id: uuid("subnet", &cidr),
                cidr,
                interface: n.interface.clone(),
                address: n.address,
                prefix_len: n.prefix_len,
            });
        }
        out
    }

    /// The VIP address of `lb`: its Keel VIP, else the address recorded
    /// when it was made, else this node's first address outside loopback.
    pub fn vip_address(&self, lb: &str) -> Option<IpAddr> {
        let x = self.state.spec.load_balancers.get(lb)?;
        if let Some(v) = x.vip {
            return Some(v.addr);
        }
        let note = self.note(&lb_key(lb));
        if let Some(ip) = note.get("vip_address").and_then(|a| a.parse().ok()) {
            return Some(ip);
        }
        let subnets = self.subnets();
        subnets
            .iter()
            .find(|s| !s.address.is_loopback())
            .or(subnets.first())
            .map(|s| s.address)
    }

    /// `GET .../loadbalancers/ID/status`: the tree of statuses.
    pub fn status_tree(&self, id: &str) -> Result<Value, Fault> {
        let lb = self.lb_named(id)?;
        let x = &self.state.spec.load_balancers[&lb];
        let prov = self.provisioning();
        let pool_tree = |name: &str| {
            self.state.spec.pools.get(name).map(|p| {
                let mut tree = json!({
                    "id": uuid("pool", name),
                    "name": self.pool_json(p)["name"],
                    "provisioning_status": prov,
                    "operating_status": self.pool_status(p),
                    "members": p.members.iter().map(|m| json!({
                        "id": member_id(name, m.address),
                        "name": self.note(&member_key(name, m.address)).get("name").cloned().unwrap_or_default(),
                        "address": m.address.ip().to_string(),
                        "protocol_port": m.address.port(),
                        "provisioning_status": prov,
                        "operating_status": self.member_status(p, m),
                    })).collect::<Vec<_>>(),
                });
                if p.health_check.is_some() {
                    tree["health_monitor"] = json!({
                        "id": uuid("healthmonitor", name),
                        "name": self.note(&monitor_key(name)).get("name").cloned().unwrap_or_default(),
                        "type": self.monitor_json(p)["type"],
                        "provisioning_status": prov,
                        "operating_status": "ONLINE",
                    });
                }
                tree
            })
        };
        let listeners: Vec<Value> = x
            .listeners
            .iter()
            .map(|l| {
                let mut pools: Vec<String> = l.default_pool.iter().cloned().collect();
                for r in &l.rules {
                    for p in r.pools() {
                        if !pools.iter().any(|x| x == p) {
                            pools.push(p.to_owned());
                        }
                    }
                }
                json!({
                    "id": listener_id(&lb, l.port),
                    "name": self.note(&listener_key(&lb, l.port)).get("name").cloned().unwrap_or_default(),
                    "provisioning_status": prov,
                    "operating_status": self.listener_status(l),
                    "pools": pools.iter().filter_map(|p| pool_tree(p)).collect::<Vec<_>>(),
                })
            })
            .collect();
        Ok(json!({
            "id": id,
            "name": self.lb_json(&lb)["name"],
            "provisioning_status": prov,
            "operating_status": self.lb_status(&lb),
            "listeners": listeners,
        }))
    }

    /// `GET .../{loadbalancers,listeners}/ID/stats`: this node's counters.
    pub fn stats(
        &self,
        collection: &str,
        id: &str,
        counters: &[keel_web_core::ListenerCounters],
    ) -> Result<Value, Fault> {
        let chosen: Vec<&keel_web_core::ListenerCounters> = if collection == "loadbalancers" {
            let lb = self.lb_named(id)?;
            counters.iter().filter(|c| c.load_balancer == lb).collect()
        } else {
            let (lb, port) = self.listener_named(id)?;
            counters
                .iter()
                .filter(|c| c.load_balancer == lb && c.port == port)
                .collect()
        };
        let sum = |f: fn(&keel_web_core::ListenerCounters) -> u64| {
            chosen.iter().map(|c| f(c)).sum::<u64>()
        };
        Ok(json!({
            "active_connections": sum(|c| c.active),
            "bytes_in": sum(|c| c.bytes_in),
            "bytes_out": sum(|c| c.bytes_out),
            "request_errors": sum(|c| c.errors),
            "total_connections": sum(|c| c.connections),
        }))
    }

    /// Neutron's view of this node: a network per interface, a subnet per
    /// network address, a port per address (and one per load balancer VIP).
    pub fn neutron(&self, collection: &str) -> Vec<Value> {
        let subnets = self.subnets();
        match collection {
            "networks" => {
                let mut names: Vec<&str> = subnets.iter().map(|s| s.interface.as_str()).collect();
                names.dedup();
                names
                    .iter()
                    .map(|name| {
                        json!({
                            "id": uuid("network", name),
                            "name": name,
                            "description": format!("interface {name} of this Keel node"),
                            "status": "ACTIVE",
                            "admin_state_up": true,
                            "shared": false,
                            "router:external": false,
                            "project_id": PROJECT,
                            "tenant_id": PROJECT,
                            "subnets": subnets.iter().filter(|s| s.interface == *name).map(|s| s.id.clone()).collect::<Vec<_>>(),
                            "tags": [],
                        })
                    })
                    .collect()
            }
            "subnets" => subnets
                .iter()
                .map(|s| {
                    json!({
                        "id": s.id,
                        "name": s.cidr,
                        "description": format!("on interface {}", s.interface),
                        "cidr": s.cidr,
                        "ip_version": if s.address.is_ipv4() { 4 } else { 6 },
                        "network_id": uuid("network", &s.interface),
                        "gateway_ip": null,
                        "enable_dhcp": false,
                        "allocation_pools": [],
                        "dns_nameservers": [],
                        "host_routes": [],
                        "project_id": PROJECT,
                        "tenant_id": PROJECT,
                        "tags": [],
                    })
                })
                .collect(),
            "ports" => {
                let mut ports: Vec<Value> = self
                    .networks
                    .iter()
                    .filter_map(|n| {
                        let s = subnets.iter().find(|s| s.contains(n.address))?;
                        Some(port_json(
                            &uuid("port", &n.address.to_string()),
                            &format!("{}-{}", n.interface, n.address),
                            s,
                            n.address,
                            "keel:node",
                        ))
                    })
                    .collect();
                for lb in self.state.spec.load_balancers.keys() {
                    let Some(ip) = self.vip_address(lb) else {
                        continue;
                    };
                    if let Some(s) = subnets.iter().find(|s| s.contains(ip)) {
                        ports.push(port_json(
                            &uuid("port", &format!("vip/{lb}")),
                            &format!("octavia-lb-{}", uuid("loadbalancer", lb)),
                            s,
                            ip,
                            "Octavia",
                        ));
                    }
                }
                ports
            }
            _ => Vec::new(),
        }
    }
}

pub(super) fn port_json(id: &str, name: &str, s: &Subnet, ip: IpAddr, owner: &str) -> Value {
    json!({
        "id": id,
        "name": name,
        "network_id": uuid("network", &s.interface),
        "fixed_ips": [ { "subnet_id": s.id, "ip_address": ip.to_string() } ],
        "device_owner": owner,
        "status": "ACTIVE",
        "admin_state_up": true,
        "mac_address": "",
        "project_id": PROJECT,
        "tenant_id": PROJECT,
        "tags": [],
    })
}
