//! Who manages what. Every load balancer, pool, member, certificate and
//! (from cluster version [`PARTS_APART`]) listener rule records the
//! manager that created or applied it (`file`, `cli`, `dashboard`, `api`,
//! `registration`, a compatibility API's name, or a name a script passes),
//! in [`crate::ClusterState::managers`]; from that version a field another
//! manager changes in it is theirs ([`FieldManagers`]) and the object stays
//! its manager's (before, the last writer took the whole object). A
//! declarative apply ([`Spec::apply_as`]) then changes only what its
//! document names, removes only what its own manager set before, and lists
//! as conflicts what it would change that another manager set, with that
//! manager and the fields ([`Conflict`]).

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::document::{CertificateDoc, LoadBalancerDoc, MemberDoc, PoolDoc, RuleDoc};
use crate::spec::{LoadBalancer, Pool, Spec};

/// An object of the spec: one a manager can own (a load balancer, pool,
/// member or certificate), or a part of one that annotations can describe
/// (a listener, a pool's health check). Stored as a string key
/// (`load-balancer/NAME`, `pool/NAME`, `member/POOL/ADDRESS`,
/// `certificate/NAME`, `listener/LB/PORT`, `health-check/POOL`): names
/// never hold a `/`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum ObjectRef {
    LoadBalancer(String),
    Pool(String),
    Member {
        pool: String,
        address: SocketAddr,
    },
    Certificate(String),
    /// A load balancer's listener: its load balancer's manager's.
    Listener {
        load_balancer: String,
        port: u16,
    },
    /// A pool's health check: its pool's manager's.
    HealthCheck(String),
    /// A listener rule, by its priority (unique within its listener).
    /// Owned on its own from cluster version [`PARTS_APART`]: before, a
    /// listener's rules were its load balancer's.
    Rule {
        load_balancer: String,
        port: u16,
        priority: u32,
    },
}

/// The cluster version from which a listener rule has a manager of its own
/// (before, its load balancer's manager said what its rules are), and a
/// field another manager changes is that manager's while the object stays
/// its own manager's ([`FieldManagers`]; before, the object became the
/// other's).
pub const PARTS_APART: u32 = 11;

/// Who set a field of an object where that is not the object's own
/// manager: object → field path (as [`Spec::changed_fields`] names it,
/// `health_check.path`) → manager.
pub type FieldManagers = BTreeMap<ObjectRef, BTreeMap<String, String>>;

/// Who manages what, as an apply reads it.
#[derive(Debug, Clone, Copy)]
pub struct Owners<'a> {
    pub managers: &'a Managers,
    pub fields: &'a FieldManagers,
    /// Rules and fields apart (cluster version [`PARTS_APART`]).
    pub apart: bool,
}

impl Owners<'_> {
    /// Who set `field` of `object`: the managers of what other managers
    /// set of it (the field itself, a part of it, or what holds it), else
    /// the object's own manager.
    fn of_field(&self, object: &ObjectRef, field: &str) -> Vec<String> {
        let mut by: Vec<String> = self
            .fields
            .get(object)
            .into_iter()
            .flatten()
            .filter(|(path, _)| related(path, field))
            .map(|(_, m)| m.clone())
            .collect();
        if by.is_empty() {
            by.extend(self.managers.get(object).cloned());
        }
        by.sort();
        by.dedup();
        by
    }
}

/// Is one of two field paths the other, or a part of it?
pub(crate) fn related(a: &str, b: &str) -> bool {
    let under = |path: &str, holder: &str| {
        path.strip_prefix(holder)
            .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
    };
    a == b || under(a, b) || under(b, a)
}

impl ObjectRef {
    /// The stored key.
    pub fn key(&self) -> String {
        match self {
            ObjectRef::LoadBalancer(name) => format!("load-balancer/{name}"),
            ObjectRef::Pool(name) => format!("pool/{name}"),
            ObjectRef::Member { pool, address } => format!("member/{pool}/{address}"),
            ObjectRef::Certificate(name) => format!("certificate/{name}"),
            ObjectRef::Listener {
                load_balancer,
                port,
            } => format!("listener/{load_balancer}/{port}"),
            ObjectRef::HealthCheck(pool) => format!("health-check/{pool}"),
            ObjectRef::Rule {
                load_balancer,
                port,
                priority,
            } => format!("rule/{load_balancer}/{port}/{priority}"),
        }
    }

    /// The object a stored key names.
    pub fn parse(key: &str) -> Result<ObjectRef, String> {
        let bad = || {
            format!(
                "{key:?} names no load balancer, pool, member, certificate, listener, \
                 rule or health check"
            )
        };
        let (kind, rest) = key.split_once('/').ok_or_else(bad)?;
        Ok(match kind {
            "load-balancer" => ObjectRef::LoadBalancer(rest.to_owned()),
            "pool" => ObjectRef::Pool(rest.to_owned()),
            "certificate" => ObjectRef::Certificate(rest.to_owned()),
            "health-check" => ObjectRef::HealthCheck(rest.to_owned()),
            "member" => {
                let (pool, address) = rest.split_once('/').ok_or_else(bad)?;
                ObjectRef::Member {
                    pool: pool.to_owned(),
                    address: address.parse().map_err(|_| bad())?,
                }
            }
            "listener" => {
                let (load_balancer, port) = rest.split_once('/').ok_or_else(bad)?;
                ObjectRef::Listener {
                    load_balancer: load_balancer.to_owned(),
                    port: port.parse().map_err(|_| bad())?,
                }
            }
            "rule" => {
                let (load_balancer, rest) = rest.split_once('/').ok_or_else(bad)?;
                let (port, priority) = rest.split_once('/').ok_or_else(bad)?;
                ObjectRef::Rule {
                    load_balancer: load_balancer.to_owned(),
                    port: port.parse().map_err(|_| bad())?,
                    priority: priority.parse().map_err(|_| bad())?,
                }
            }
            _ => return Err(bad()),
        })
    }

    /// Can a manager own it (or is it a part of something it owns)?
    pub fn ownable(&self) -> bool {
        !matches!(self, ObjectRef::Listener { .. } | ObjectRef::HealthCheck(_))
    }
}

impl From<ObjectRef> for String {
    fn from(r: ObjectRef) -> String {
        r.key()
    }
}

impl TryFrom<String> for ObjectRef {
    type Error = String;
    fn try_from(key: String) -> Result<ObjectRef, String> {
        ObjectRef::parse(&key)
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ObjectRef::LoadBalancer(name) => write!(f, "load balancer {name:?}"),
            ObjectRef::Pool(name) => write!(f, "pool {name:?}"),
            ObjectRef::Member { pool, address } => write!(f, "member {address} of pool {pool:?}"),
            ObjectRef::Certificate(name) => write!(f, "certificate {name:?}"),
            ObjectRef::Listener {
                load_balancer,
                port,
            } => write!(f, "listener {port} of load balancer {load_balancer:?}"),
            ObjectRef::HealthCheck(pool) => write!(f, "the health check of pool {pool:?}"),
            ObjectRef::Rule {
                load_balancer,
                port,
                priority,
            } => write!(
                f,
                "rule {priority} of listener {port} of load balancer {load_balancer:?}"
            ),
        }
    }
}

/// Who manages each object.
pub type Managers = BTreeMap<ObjectRef, String>;

/// Is `name` usable as a manager: 1 to 64 letters, digits, `.`, `_`, `-`.
pub fn check_manager(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "manager {name:?}: 1 to 64 letters, digits, '.', '_' or '-'"
        ))
    }
}

/// A change a declarative apply would make to what another manager set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub object: ObjectRef,
    /// The manager that set it.
    pub manager: String,
    /// The fields the apply would change, as paths in the document
    /// (`algorithm`, `health_check.path`, `listeners[8080].default_pool`);
    /// empty when it would remove the object.
    pub fields: Vec<String>,
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (managed by {})", self.object, self.manager)?;
        if self.fields.is_empty() {
            write!(f, ": removed")
        } else {
            write!(f, ": {}", self.fields.join(", "))
        }
    }
}

/// What a declarative apply by one manager would do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagedApply {
    /// The spec after the apply.
    pub spec: Spec,
    /// What the apply would change that another manager set.
    pub conflicts: Vec<Conflict>,
    /// Objects that become the applying manager's: those it creates or
    /// changes, and those of its document that match and had no manager
    /// (written before managers were kept).
    pub claims: Vec<ObjectRef>,
    /// Objects it removes.
    pub removed: Vec<ObjectRef>,
}

impl Spec {
    /// Every object in the spec that can have a manager; with
    /// `rules_apart` (cluster version [`PARTS_APART`]), each listener rule
    /// too.
    pub fn objects(&self, rules_apart: bool) -> Vec<ObjectRef> {
        let mut out: Vec<ObjectRef> = Vec::new();
        for (name, lb) in &self.load_balancers {
            out.push(ObjectRef::LoadBalancer(name.clone()));
            if rules_apart {
                for l in &lb.listeners {
                    out.extend(l.rules.iter().map(|r| ObjectRef::Rule {
                        load_balancer: name.clone(),
                        port: l.port,
                        priority: r.priority,
                    }));
                }
            }
        }
        for (name, pool) in &self.pools {
            out.push(ObjectRef::Pool(name.clone()));
            out.extend(pool.members.iter().map(|m| ObjectRef::Member {
                pool: name.clone(),
                address: m.address,
            }));
        }
        out.extend(
            self.certificates
                .keys()
                .cloned()
                .map(ObjectRef::Certificate),
        );
        out
    }

    /// Is `object` in the spec?
    pub fn has(&self, object: &ObjectRef) -> bool {
        match object {
            ObjectRef::LoadBalancer(name) => self.load_balancers.contains_key(name),
            ObjectRef::Pool(name) => self.pools.contains_key(name),
            ObjectRef::Certificate(name) => self.certificates.contains_key(name),
            ObjectRef::Member { pool, address } => self
                .pools
                .get(pool)
                .is_some_and(|p| p.members.iter().any(|m| m.address == *address)),
            ObjectRef::Listener {
                load_balancer,
                port,
            } => self
                .load_balancers
                .get(load_balancer)
                .is_some_and(|lb| lb.listeners.iter().any(|l| l.port == *port)),
            ObjectRef::HealthCheck(pool) => self
                .pools
                .get(pool)
                .is_some_and(|p| p.health_check.is_some()),
            ObjectRef::Rule { .. } => self.rule(object).is_some(),
        }
    }

    /// The rule `object` names, if it names one that is here.
    fn rule(&self, object: &ObjectRef) -> Option<&crate::Rule> {
        let ObjectRef::Rule {
            load_balancer,
            port,
            priority,
        } = object
        else {
            return None;
        };
        self.load_balancers
            .get(load_balancer)?
            .listeners
            .iter()
            .find(|l| l.port == *port)?
            .rules
            .iter()
            .find(|r| r.priority == *priority)
    }

    /// Is `object` the same in `self` and `other` (both absent counts)?
    /// A pool is compared without its members: each member is an object
    /// of its own; with `rules_apart`, so is a load balancer without its
    /// listeners' rules.
    fn same(&self, other: &Spec, object: &ObjectRef, rules_apart: bool) -> bool {
        match object {
            ObjectRef::LoadBalancer(name) if rules_apart => {
                self.load_balancers.get(name).map(without_rules)
                    == other.load_balancers.get(name).map(without_rules)
            }
            ObjectRef::LoadBalancer(name) => {
                self.load_balancers.get(name) == other.load_balancers.get(name)
            }
            ObjectRef::Rule { .. } => self.rule(object) == other.rule(object),
            ObjectRef::Certificate(name) => {
                self.certificates.get(name) == other.certificates.get(name)
            }
            ObjectRef::Pool(name) => {
                self.pools.get(name).map(settings) == other.pools.get(name).map(settings)
            }
            ObjectRef::Member { pool, address } => {
                let member = |s: &Spec| {
                    s.pools
                        .get(pool)
                        .and_then(|p| p.members.iter().find(|m| m.address == *address))
                        .cloned()
                };
                member(self) == member(other)
            }
            ObjectRef::Listener {
                load_balancer,
                port,
            } => {
                let listener = |s: &Spec| {
                    s.load_balancers
                        .get(load_balancer)
                        .and_then(|lb| lb.listeners.iter().find(|l| l.port == *port))
                        .cloned()
                };
                listener(self) == listener(other)
            }
            ObjectRef::HealthCheck(pool) => {
                let check = |s: &Spec| s.pools.get(pool).and_then(|p| p.health_check.clone());
                check(self) == check(other)
            }
        }
    }

    /// The objects `after` has that `self` has not, or has otherwise
    /// (with `rules_apart`, rules are objects of their own).
    pub fn changed_objects(&self, after: &Spec, rules_apart: bool) -> Vec<ObjectRef> {
        after
            .objects(rules_apart)
            .into_iter()
            .filter(|o| !self.same(after, o, rules_apart))
            .collect()
    }

    /// What turning `self` into `after` does, one line per object:
    /// `create`, `change` or `remove`, then the object.
    pub fn object_changes(&self, after: &Spec, rules_apart: bool) -> Vec<String> {
        let mut out: Vec<String> = self
            .changed_objects(after, rules_apart)
            .into_iter()
            .map(|o| {
                let verb = if self.has(&o) { "change" } else { "create" };
                format!("{verb} {o}")
            })
            .collect();
        out.extend(
            self.objects(rules_apart)
                .into_iter()
                .filter(|o| !after.has(o))
                .map(|o| format!("remove {o}")),
        );
        out
    }

    /// What turning `self` into `after` changes that a manager other than
    /// `manager` set: the fields it changes (by whoever set each one,
    /// from cluster version [`PARTS_APART`]; before, by the object's
    /// manager), and the objects it removes.
    pub fn conflicts(&self, after: &Spec, owners: &Owners, manager: &str) -> Vec<Conflict> {
        let mut out = Vec::new();
        for object in self.changed_objects(after, owners.apart) {
            if !self.has(&object) {
                continue;
            }
            let fields = self.changed_fields(after, &object, owners.apart);
            let mut by: BTreeMap<String, Vec<String>> = BTreeMap::new();
            if owners.apart && !fields.is_empty() {
                for field in &fields {
                    for m in owners.of_field(&object, field) {
                        by.entry(m).or_default().push(field.clone());
                    }
                }
            } else if let Some(m) = owners.managers.get(&object) {
                by.insert(m.clone(), fields);
            }
            out.extend(
                by.into_iter()
                    .filter(|(m, _)| m != manager)
                    .map(|(m, fields)| Conflict {
                        object: object.clone(),
                        manager: m,
                        fields,
                    }),
            );
        }
        for object in self.objects(owners.apart) {
            if after.has(&object) {
                continue;
            }
            let mut by: Vec<&String> = owners.managers.get(&object).into_iter().collect();
            by.extend(
                owners
                    .fields
                    .get(&object)
                    .into_iter()
                    .flat_map(BTreeMap::values),
            );
            by.sort();
            by.dedup();
            out.extend(by.into_iter().filter(|m| *m != manager).map(|m| Conflict {
                object: object.clone(),
                manager: m.clone(),
                fields: Vec::new(),
            }));
        }
        out
    }

    /// The fields of `object` that differ between `self` and `after`, as
    /// paths in its document form (a pool without its members, which are
    /// objects of their own); none when either side lacks it. Names only:
    /// a certificate's key never shows.
    pub fn changed_fields(
        &self,
        after: &Spec,
        object: &ObjectRef,
        rules_apart: bool,
    ) -> Vec<String> {
        let mut fields = Vec::new();
        if let (Some(before), Some(now)) = (
            self.object_doc(object, rules_apart),
            after.object_doc(object, rules_apart),
        ) {
            diff_fields("", &before, &now, &mut fields);
        }
        fields
    }

    /// `object` as its document says it (JSON), if it is here.
    fn object_doc(&self, object: &ObjectRef, rules_apart: bool) -> Option<serde_json::Value> {
        let doc = match object {
            ObjectRef::LoadBalancer(name) => {
                let lb = self.load_balancers.get(name)?;
                let lb = if rules_apart {
                    without_rules(lb)
                } else {
                    lb.clone()
                };
                serde_json::to_value(LoadBalancerDoc::from(&lb))
            }
            ObjectRef::Rule { .. } => serde_json::to_value(RuleDoc::from(self.rule(object)?)),
            ObjectRef::Pool(name) => {
                serde_json::to_value(PoolDoc::from(&settings(self.pools.get(name)?)))
            }
            ObjectRef::Certificate(name) => {
                let c = self.certificates.get(name)?;
                serde_json::to_value(CertificateDoc {
                    name: c.name.clone(),
                    cert_pem: c.cert_pem.clone(),
                    key_pem: Some(c.key_pem.clone()),
                })
            }
            ObjectRef::Member { pool, address } => serde_json::to_value(MemberDoc::from(
                self.pools
                    .get(pool)?
                    .members
                    .iter()
                    .find(|m| m.address == *address)?,
            )),
            ObjectRef::Listener { .. } | ObjectRef::HealthCheck(_) => return None,
        };
        doc.ok()
    }

    /// `doc` applied by `manager`: its objects created or replaced; the
    /// members of each pool it names that `manager` set and `doc` no
    /// longer lists removed (a pool's member list is its manager's whole
    /// say over its members; members others set stay); with `prune`, the
    /// load balancers, pools and certificates `manager` set that `doc` no
    /// longer has removed too. Nothing else is touched.
    pub fn apply_as(
        &self,
        owners: &Owners,
        manager: &str,
        doc: &Spec,
        prune: bool,
    ) -> ManagedApply {
        let (managers, rules_apart) = (owners.managers, owners.apart);
        let mine = |o: &ObjectRef| managers.get(o).is_some_and(|m| m == manager);
        let mut next = self.clone();
        for (name, cert) in &doc.certificates {
            next.certificates.insert(name.clone(), cert.clone());
        }
        for (name, pool) in &doc.pools {
            let mut merged = pool.clone();
            if let Some(live) = self.pools.get(name) {
                // In the order the pool has them, new ones last.
                merged.members = live
                    .members
                    .iter()
                    .filter_map(|m| {
                        let listed = pool.members.iter().find(|d| d.address == m.address);
                        let member = ObjectRef::Member {
                            pool: name.clone(),
                            address: m.address,
                        };
                        match listed {
                            Some(d) => Some(d.clone()),
                            None if mine(&member) => None,
                            None => Some(m.clone()),
                        }
                    })
                    .collect();
                for d in &pool.members {
                    if !merged.members.iter().any(|m| m.address == d.address) {
                        merged.members.push(d.clone());
                    }
                }
            }
            next.pools.insert(name.clone(), merged);
        }
        for (name, lb) in &doc.load_balancers {
            let mut merged = lb.clone();
            if let (true, Some(live)) = (rules_apart, self.load_balancers.get(name)) {
                // A listener's rules as the document says them, and those
                // another manager set at priorities the document leaves
                // free; a rule goes with its listener.
                for listener in &mut merged.listeners {
                    let Some(was) = live.listeners.iter().find(|l| l.port == listener.port) else {
                        continue;
                    };
                    for rule in &was.rules {
                        let object = ObjectRef::Rule {
                            load_balancer: name.clone(),
                            port: listener.port,
                            priority: rule.priority,
                        };
                        let taken = listener.rules.iter().any(|r| r.priority == rule.priority);
                        if !taken && !mine(&object) {
                            listener.rules.push(rule.clone());
                        }
                    }
                    listener.rules.sort_by_key(|r| r.priority);
                }
            }
            next.load_balancers.insert(name.clone(), merged);
        }
        if prune {
            for object in managers.keys().filter(|o| mine(o) && !doc.has(o)) {
                match object {
                    ObjectRef::LoadBalancer(name) => {
                        next.load_balancers.remove(name);
                    }
                    ObjectRef::Pool(name) => {
                        next.pools.remove(name);
                    }
                    ObjectRef::Certificate(name) => {
                        next.certificates.remove(name);
                    }
                    ObjectRef::Rule {
                        load_balancer,
                        port,
                        priority,
                    } => {
                        let listener = next
                            .load_balancers
                            .get_mut(load_balancer)
                            .and_then(|lb| lb.listeners.iter_mut().find(|l| l.port == *port));
                        if let Some(listener) = listener {
                            listener.rules.retain(|r| r.priority != *priority);
                        }
                    }
                    // Gone with its pool, or dropped above; parts have no
                    // manager of their own.
                    ObjectRef::Member { .. }
                    | ObjectRef::Listener { .. }
                    | ObjectRef::HealthCheck(_) => {}
                }
            }
        }
        let changed = self.changed_objects(&next, rules_apart);
        let removed: Vec<ObjectRef> = self
            .objects(rules_apart)
            .into_iter()
            .filter(|o| !next.has(o))
            .collect();
        let conflicts = self.conflicts(&next, owners, manager);
        let adopted = doc
            .objects(rules_apart)
            .into_iter()
            .filter(|o| !managers.contains_key(o) && self.has(o) && !changed.contains(o));
        let mut claims = changed.clone();
        claims.extend(adopted);
        ManagedApply {
            spec: next,
            conflicts,
            claims,
            removed,
        }
    }
}

/// The paths under `at` where `before` and `now` differ. A list of
/// objects that each have a `port`, `name` or `address` is matched item by
/// item on it (`listeners[8080]`); any other list is one value.
fn diff_fields(
    at: &str,
    before: &serde_json::Value,
    now: &serde_json::Value,
    out: &mut Vec<String>,
) {
    use serde_json::Value;
    if before == now {
        return;
    }
    let join = |key: &str| {
        if at.is_empty() {
            key.to_owned()
        } else {
            format!("{at}.{key}")
        }
    };
    match (before, now) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            let null = Value::Null;
            for key in keys {
                let (x, y) = (a.get(key).unwrap_or(&null), b.get(key).unwrap_or(&null));
                diff_fields(&join(key), x, y, out);
            }
        }
        (Value::Array(a), Value::Array(b)) => match (keyed(a), keyed(b)) {
            (Some(a), Some(b)) => {
                let ids: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
                let null = Value::Null;
                for id in ids {
                    let (x, y) = (
                        a.get(id).copied().unwrap_or(&null),
                        b.get(id).copied().unwrap_or(&null),
                    );
                    diff_fields(&format!("{at}[{id}]"), x, y, out);
                }
            }
            _ => out.push(at.to_owned()),
        },
        _ => out.push(at.to_owned()),
    }
}

/// A list of objects by their `port`, `name` or `address`, when every one
/// has the same one of them and no two share it.
fn keyed(list: &[serde_json::Value]) -> Option<BTreeMap<String, &serde_json::Value>> {
    ["port", "name", "address"].iter().find_map(|key| {
        let map: BTreeMap<String, &serde_json::Value> = list
            .iter()
            .map(|item| {
                let id = item.get(key)?;
                Some((
                    id.as_str().map_or_else(|| id.to_string(), str::to_owned),
                    item,
                ))
            })
            .collect::<Option<_>>()?;
        (map.len() == list.len()).then_some(map)
    })
}

/// A load balancer without its listeners' rules, which are objects of
/// their own from cluster version [`PARTS_APART`].
fn without_rules(lb: &LoadBalancer) -> LoadBalancer {
    let mut lb = lb.clone();
    for l in &mut lb.listeners {
        l.rules.clear();
    }
    lb
}

/// A pool's own settings: everything but its members.
fn settings(pool: &Pool) -> Pool {
    Pool {
        members: Vec::new(),
        ..pool.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Document;

    fn spec(yaml: &str) -> Spec {
        Document::parse_spec(yaml).expect("valid spec")
    }

    const FILE: &str = "
load_balancers:
  - name: web
    listeners:
      - port: 8080
        protocol: http
        default_pool: app
pools:
  - name: app
    members:
      - address: 10.0.0.1:80
      - address: 10.0.0.2:80
";

    /// Whole-object managers, as before cluster version 11 (`apart`
    /// false) or after it.
    fn owners(managers: &Managers, apart: bool) -> Owners<'_> {
        static NO_FIELDS: FieldManagers = BTreeMap::new();
        Owners {
            managers,
            fields: &NO_FIELDS,
            apart,
        }
    }

    fn owned(spec: &Spec, manager: &str) -> Managers {
        spec.objects(true)
            .into_iter()
            .map(|o| (o, manager.to_owned()))
            .collect()
    }

    fn member(address: &str) -> ObjectRef {
        ObjectRef::Member {
            pool: "app".into(),
            address: address.parse().unwrap(),
        }
    }

    #[test]
    fn keys_round_trip_and_refuse_nonsense() {
        for o in [
            ObjectRef::LoadBalancer("web".into()),
            ObjectRef::Pool("app".into()),
            ObjectRef::Certificate("site".into()),
            member("10.0.0.1:80"),
            ObjectRef::Member {
                pool: "app".into(),
                address: "[2001:db8::1]:443".parse().unwrap(),
            },
            ObjectRef::Rule {
                load_balancer: "web".into(),
                port: 8080,
                priority: 20,
            },
        ] {
            assert_eq!(ObjectRef::parse(&o.key()), Ok(o.clone()));
            let json = serde_json::to_string(&BTreeMap::from([(o.clone(), "cli")])).unwrap();
            let back: BTreeMap<ObjectRef, String> = serde_json::from_str(&json).unwrap();
            assert_eq!(back.keys().next(), Some(&o));
        }
        for bad in [
            "",
            "pool",
            "member/app",
            "member/app/nope",
            "rule/x",
            "rule/web/80/x",
        ] {
            assert!(ObjectRef::parse(bad).is_err(), "{bad}");
        }
        assert!(check_manager("gitops-prod.1").is_ok());
        for bad in ["", "a b", "x/y", &"m".repeat(65)] {
            assert!(check_manager(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn an_apply_leaves_other_managers_objects_alone() {
        let applied = spec(FILE);
        let mut live = applied.clone();
        let mut managers = owned(&applied, "file");
        // A registration adds a member, an API a load balancer and pool.
        let extra = spec(
            "
load_balancers:
  - name: boto
    listeners:
      - port: 9090
        protocol: http
        default_pool: tg
pools:
  - name: tg
    members:
      - address: 10.0.1.1:80
",
        );
        live.load_balancers.extend(extra.load_balancers.clone());
        live.pools.extend(extra.pools.clone());
        managers.extend(owned(&extra, "elbv2"));
        let newcomer = "10.0.0.9:80".parse().unwrap();
        live.pools
            .get_mut("app")
            .unwrap()
            .members
            .push(crate::Member {
                address: newcomer,
                weight: 1,
                enabled: true,
            });
        managers.insert(member("10.0.0.9:80"), "registration".into());

        for prune in [false, true] {
            let out = live.apply_as(&owners(&managers, true), "file", &applied, prune);
            assert_eq!(out.spec, live, "prune {prune}: nothing changes");
            assert!(out.conflicts.is_empty() && out.removed.is_empty() && out.claims.is_empty());
        }

        // The file drops a member and the load balancer: the member goes at
        // once, the load balancer only with prune; the newcomer stays.
        let mut smaller = applied.clone();
        smaller.pools.get_mut("app").unwrap().members.remove(1);
        smaller.load_balancers.clear();
        let out = live.apply_as(&owners(&managers, true), "file", &smaller, false);
        assert_eq!(out.removed, vec![member("10.0.0.2:80")]);
        assert!(out.spec.has(&ObjectRef::LoadBalancer("web".into())));
        assert!(out.spec.has(&member("10.0.0.9:80")));
        let mut no_lb = smaller.clone();
        no_lb.pools.remove("app");
        let out = live.apply_as(&owners(&managers, true), "file", &no_lb, true);
        assert_eq!(
            out.removed
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            [
                "load balancer \"web\"",
                "pool \"app\"",
                "member 10.0.0.1:80 of pool \"app\"",
                "member 10.0.0.2:80 of pool \"app\"",
                "member 10.0.0.9:80 of pool \"app\"",
            ]
        );
        assert!(out.spec.has(&ObjectRef::LoadBalancer("boto".into())));
        assert!(out.spec.has(&ObjectRef::Pool("tg".into())));
        // The registered member went with its pool: a conflict to report.
        assert_eq!(
            out.conflicts,
            vec![Conflict {
                object: member("10.0.0.9:80"),
                manager: "registration".to_owned(),
                fields: Vec::new(),
            }]
        );
        assert_eq!(
            out.conflicts[0].to_string(),
            "member 10.0.0.9:80 of pool \"app\" (managed by registration): removed"
        );
    }

    #[test]
    fn changing_another_managers_object_is_a_conflict_and_unmanaged_ones_are_adopted() {
        let live = spec(FILE);
        let mut managers = owned(&live, "dashboard");
        managers.remove(&member("10.0.0.1:80"));
        let mut doc = live.clone();
        doc.pools.get_mut("app").unwrap().members[1].weight = 5;
        let out = live.apply_as(&owners(&managers, true), "cli", &doc, false);
        assert_eq!(
            out.conflicts,
            vec![Conflict {
                object: member("10.0.0.2:80"),
                manager: "dashboard".to_owned(),
                fields: vec!["weight".to_owned()],
            }]
        );
        // The changed member, and the unmanaged one the document matches.
        assert_eq!(
            out.claims,
            vec![member("10.0.0.2:80"), member("10.0.0.1:80")]
        );
        // A pool's settings are one object, its members others.
        let mut doc = live.clone();
        doc.pools.get_mut("app").unwrap().algorithm = crate::Algorithm::LeastOutstanding;
        let out = live.apply_as(&owners(&managers, true), "cli", &doc, false);
        assert_eq!(
            out.conflicts,
            vec![Conflict {
                object: ObjectRef::Pool("app".into()),
                manager: "dashboard".to_owned(),
                fields: vec!["algorithm".to_owned()],
            }]
        );
        assert_eq!(
            live.changed_objects(&out.spec, true),
            vec![ObjectRef::Pool("app".into())]
        );
    }

    #[test]
    fn a_conflict_names_the_fields_the_apply_would_change() {
        let live = spec(
            "
load_balancers:
  - name: web
    listeners:
      - { port: 8080, protocol: http, default_pool: app }
      - { port: 8443, protocol: tcp, default_pool: app }
pools:
  - name: app
    drain_timeout: 5s
    health_check: { type: http, path: /health }
    members: [{ address: 10.0.0.1:80 }]
  - name: other
    members: []
",
        );
        let managers = owned(&live, "dashboard");
        let doc = spec(
            "
load_balancers:
  - name: web
    listeners:
      - { port: 8080, protocol: http, default_pool: other }
      - { port: 8443, protocol: tcp, default_pool: app }
      - { port: 9000, protocol: tcp, default_pool: app }
pools:
  - name: app
    health_check: { type: http, path: /ready }
    members: [{ address: 10.0.0.1:80, weight: 1 }]
  - name: other
    members: []
",
        );
        let out = live.apply_as(&owners(&managers, true), "file", &doc, false);
        let fields: Vec<(String, Vec<String>)> = out
            .conflicts
            .iter()
            .map(|c| (c.object.to_string(), c.fields.clone()))
            .collect();
        assert_eq!(
            fields,
            [
                (
                    "load balancer \"web\"".to_owned(),
                    vec![
                        "listeners[8080].default_pool".to_owned(),
                        "listeners[9000]".to_owned()
                    ]
                ),
                (
                    "pool \"app\"".to_owned(),
                    vec!["drain_timeout".to_owned(), "health_check.path".to_owned()]
                ),
            ]
        );
        // Nothing of a certificate's key shows, only which field changed.
        let with_cert = |key: &str| {
            let mut s = live.clone();
            s.certificates.insert(
                "c".into(),
                crate::Certificate {
                    name: "c".into(),
                    cert_pem: "CERT".into(),
                    key_pem: key.into(),
                },
            );
            s
        };
        assert_eq!(
            with_cert("SECRET-1").changed_fields(
                &with_cert("SECRET-2"),
                &ObjectRef::Certificate("c".into()),
                true
            ),
            ["key_pem"]
        );
    }

    #[test]
    fn a_rule_another_manager_set_stays_when_its_load_balancer_is_applied_again() {
        let with_rules = |rules: &str| {
            spec(&format!(
                "
load_balancers:
  - name: web
    listeners:
      - {{ port: 8080, protocol: http, default_pool: app, rules: [{rules}] }}
pools:
  - name: app
    members: [{{ address: 10.0.0.1:80 }}]
"
            ))
        };
        let rule = |priority| ObjectRef::Rule {
            load_balancer: "web".into(),
            port: 8080,
            priority,
        };
        let file = with_rules("{ priority: 10, path_prefix: /a, pool: app }");
        let live = with_rules(
            "{ priority: 10, path_prefix: /a, pool: app }, { priority: 20, path_prefix: /b, pool: app }",
        );
        let mut managers = owned(&file, "file");
        managers.insert(rule(10), "file".into());
        managers.insert(rule(20), "api".into());
        // Rules apart: the file's document leaves the other rule alone.
        let out = live.apply_as(&owners(&managers, true), "file", &file, false);
        assert_eq!(out.spec, live);
        assert!(out.conflicts.is_empty(), "{:?}", out.conflicts);
        assert_eq!(
            live.objects(true)
                .into_iter()
                .filter(|o| matches!(o, ObjectRef::Rule { .. }))
                .collect::<Vec<_>>(),
            [rule(10), rule(20)]
        );
        // A document without its own rule drops it, and only it.
        let bare = with_rules("");
        let out = live.apply_as(&owners(&managers, true), "file", &bare, false);
        assert_eq!(
            out.spec.load_balancers["web"].listeners[0]
                .rules
                .iter()
                .map(|r| r.priority)
                .collect::<Vec<_>>(),
            [20]
        );
        assert_eq!(out.removed, [rule(10)]);
        assert!(out.conflicts.is_empty());
        // One at the other's priority is a conflict naming that rule.
        let clash = with_rules("{ priority: 20, path_prefix: /c, pool: app }");
        let out = live.apply_as(&owners(&managers, true), "file", &clash, false);
        assert_eq!(
            out.conflicts,
            [Conflict {
                object: rule(20),
                manager: "api".into(),
                fields: vec!["path_prefix".into()],
            }]
        );
        // Before cluster version 11 the rules were the load balancer's:
        // the same document changes it, and the other rule goes.
        let out = live.apply_as(&owners(&managers, false), "file", &file, false);
        assert_eq!(out.spec, file);
        assert!(!live.objects(false).contains(&rule(20)));
    }
}
