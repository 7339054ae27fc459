//! Explicit intents that change a [`Spec`], and the diff that produces them.

use std::fmt;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::error::ValidationErrors;
use crate::spec::{Certificate, LoadBalancer, Member, Pool, Spec};

/// One change to the config. Commands are stored in the replicated log, so
/// their serialised form is a format: add variants, do not reshape old ones.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    /// Replace the whole spec (a declarative `apply` of a full document).
    ReplaceSpec(Spec),
    /// Create or replace a load balancer.
    UpsertLoadBalancer(LoadBalancer),
    /// Remove a load balancer and its listeners.
    RemoveLoadBalancer { name: String },
    /// Create or replace a pool.
    UpsertPool(Box<Pool>),
    /// Remove a pool no listener uses.
    RemovePool { name: String },
    /// Add a member to a pool, or replace the member with the same address.
    UpsertMember { pool: String, member: Member },
    /// Remove a member; it drains.
    RemoveMember { pool: String, address: SocketAddr },
    /// Enable or disable a member; a disabled member drains.
    SetMemberEnabled {
        pool: String,
        address: SocketAddr,
        enabled: bool,
    },
    /// Several commands applied together: all of them or none.
    Batch(Vec<Command>),
    /// Create or replace a certificate.
    UpsertCertificate(Certificate),
    /// Remove a certificate.
    RemoveCertificate { name: String },
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::ReplaceSpec(s) => write!(
                f,
                "replace spec ({} load balancers, {} pools)",
                s.load_balancers.len(),
                s.pools.len()
            ),
            Command::UpsertLoadBalancer(lb) => write!(f, "upsert load balancer {}", lb.name),
            Command::RemoveLoadBalancer { name } => write!(f, "remove load balancer {name}"),
            Command::UpsertPool(p) => write!(f, "upsert pool {}", p.name),
            Command::RemovePool { name } => write!(f, "remove pool {name}"),
            Command::UpsertMember { pool, member } => {
                write!(f, "upsert member {} in pool {pool}", member.address)
            }
            Command::RemoveMember { pool, address } => {
                write!(f, "remove member {address} from pool {pool}")
            }
            Command::SetMemberEnabled {
                pool,
                address,
                enabled,
            } => {
                let verb = if *enabled { "enable" } else { "disable" };
                write!(f, "{verb} member {address} in pool {pool}")
            }
            Command::Batch(cmds) => write!(f, "batch of {} changes", cmds.len()),
            Command::UpsertCertificate(c) => write!(f, "upsert certificate {}", c.name),
            Command::RemoveCertificate { name } => write!(f, "remove certificate {name}"),
        }
    }
}

/// Why a command was refused. A refused command changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    /// The command names an object that does not exist.
    #[error("{kind} {name:?} does not exist")]
    NotFound { kind: &'static str, name: String },
    /// The spec the command would produce breaks a rule.
    #[error(transparent)]
    Invalid(#[from] ValidationErrors),
}

impl Spec {
    /// Applies `cmd`; on error the spec is left exactly as it was.
    pub fn apply(&mut self, cmd: &Command) -> Result<(), ApplyError> {
        let mut next = self.clone();
        next.apply_unchecked(cmd)?;
        let errors = next.check();
        if !errors.is_empty() {
            return Err(ValidationErrors(errors).into());
        }
        *self = next;
        Ok(())
    }

    fn apply_unchecked(&mut self, cmd: &Command) -> Result<(), ApplyError> {
        match cmd {
            Command::ReplaceSpec(spec) => *self = spec.clone(),
            Command::UpsertLoadBalancer(lb) => {
                self.load_balancers.insert(lb.name.clone(), lb.clone());
            }
            Command::RemoveLoadBalancer { name } => {
                self.load_balancers
                    .remove(name)
                    .ok_or_else(|| not_found("load balancer", name))?;
            }
            Command::UpsertPool(pool) => {
                self.pools.insert(pool.name.clone(), (**pool).clone());
            }
            Command::RemovePool { name } => {
                self.pools
                    .remove(name)
                    .ok_or_else(|| not_found("pool", name))?;
            }
            Command::UpsertMember { pool, member } => {
                let members = &mut self.pool_mut(pool)?.members;
                match members.iter_mut().find(|m| m.address == member.address) {
                    Some(m) => *m = member.clone(),
                    None => members.push(member.clone()),
                }
            }
            Command::RemoveMember { pool, address } => {
                let members = &mut self.pool_mut(pool)?.members;
                let before = members.len();
                members.retain(|m| m.address != *address);
                if members.len() == before {
                    return Err(not_found("member", &address.to_string()));
                }
            }
            Command::SetMemberEnabled {
                pool,
                address,
                enabled,
            } => {
                let member = self
                    .pool_mut(pool)?
                    .members
                    .iter_mut()
                    .find(|m| m.address == *address)
                    .ok_or_else(|| not_found("member", &address.to_string()))?;
                member.enabled = *enabled;
            }
            Command::Batch(cmds) => {
                for c in cmds {
                    self.apply_unchecked(c)?;
                }
            }
            Command::UpsertCertificate(cert) => {
                self.certificates.insert(cert.name.clone(), cert.clone());
            }
            Command::RemoveCertificate { name } => {
                self.certificates
                    .remove(name)
                    .ok_or_else(|| not_found("certificate", name))?;
            }
        }
        Ok(())
    }

    fn pool_mut(&mut self, name: &str) -> Result<&mut Pool, ApplyError> {
        self.pools
            .get_mut(name)
            .ok_or_else(|| not_found("pool", name))
    }

    /// The commands that turn `self` into `new`, to be applied as one
    /// [`Command::Batch`]: pools first, so load balancers never point at a
    /// missing pool, and unused pools last (certificates likewise).
    pub fn diff(&self, new: &Spec) -> Vec<Command> {
        let mut out = Vec::new();
        for (name, cert) in &new.certificates {
            if self.certificates.get(name) != Some(cert) {
                out.push(Command::UpsertCertificate(cert.clone()));
            }
        }
        for (name, pool) in &new.pools {
            if self.pools.get(name) != Some(pool) {
                out.push(Command::UpsertPool(Box::new(pool.clone())));
            }
        }
        for name in self.load_balancers.keys() {
            if !new.load_balancers.contains_key(name) {
                out.push(Command::RemoveLoadBalancer { name: name.clone() });
            }
        }
        for (name, lb) in &new.load_balancers {
            if self.load_balancers.get(name) != Some(lb) {
                out.push(Command::UpsertLoadBalancer(lb.clone()));
            }
        }
        for name in self.pools.keys() {
            if !new.pools.contains_key(name) {
                out.push(Command::RemovePool { name: name.clone() });
            }
        }
        for name in self.certificates.keys() {
            if !new.certificates.contains_key(name) {
                out.push(Command::RemoveCertificate { name: name.clone() });
            }
        }
        out
    }
}

fn not_found(kind: &'static str, name: &str) -> ApplyError {
    ApplyError::NotFound {
        kind,
        name: name.to_owned(),
    }
}
