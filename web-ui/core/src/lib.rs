//! What every HTTP surface of Keel shares: the admin REST API
//! (`keel-api`), the dashboard (`keel-dashboard`) and the compatibility APIs
//! (`keel-aws`, `keel-octavia`, over `keel-compat`).
//!
//! Handlers depend on the [`ControlPlane`] trait, not on Raft, so they can be
//! tested with a fake ([`fake`], feature `fake`). Every write is validated
//! before it becomes a [`ClusterCommand`], and returns after the control
//! plane reports it committed and applied on this node ([`commit`]).
//!
//! Here too: errors as the APIs answer them ([`ApiError`]), who may do what
//! ([`access`]), passwords, tokens and sessions ([`auth`]), sealed AWS keys
//! ([`awskeys`]), the instance registry ELB and the REST API share
//! ([`instances`]) and the declarative apply's planner ([`apply`]).

pub mod access;
pub mod apply;
pub mod auth;
pub mod awskeys;
mod error;
#[cfg(feature = "fake")]
pub mod fake;
#[doc(hidden)]
pub mod fuzz;
pub mod instances;

use std::future::Future;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use keel_model::{ClusterCommand, ClusterState, Refusal};
use serde::{Deserialize, Serialize};

pub use auth::{
    hash_password, is_password_hash, random_hex, sha256_hex, verify_password, Attempts, NotChecked,
    PasswordGate,
};
pub use error::ApiError;

/// What the API needs from the node.
pub trait ControlPlane: Send + Sync + 'static {
    /// The applied state and its version (log index).
    fn state(&self) -> (u64, Arc<ClusterState>);

    /// The applied state and its version as of a linearizable read: after
    /// the leader confirmed with a quorum that it leads, and once this node
    /// applied everything committed before the read began (Raft's
    /// ReadIndex), so no read returns older state than a write that
    /// completed before it. A single node's own state is that already.
    fn read(&self) -> impl Future<Output = Result<(u64, Arc<ClusterState>), ControlError>> + Send {
        let state = self.state();
        async move { Ok(state) }
    }

    /// Commit a command through the leader (forwarding if needed); resolves
    /// once it is applied on this node, with its log index.
    fn propose(
        &self,
        command: ClusterCommand,
    ) -> impl Future<Output = Result<u64, ControlError>> + Send;

    /// Nodes, roles and what each one serves.
    fn status(&self) -> impl Future<Output = ClusterStatus> + Send;

    /// Remove a node from the cluster by name, on behalf of `by` (recorded
    /// in the history).
    fn remove_node(
        &self,
        name: &str,
        by: &str,
    ) -> impl Future<Output = Result<(), ControlError>> + Send;

    /// The fingerprint of the cluster CA, for join tokens.
    fn ca_fingerprint(&self) -> String;

    /// The cluster CA, any rotation under way, and every member's part in
    /// it.
    fn ca(&self) -> impl Future<Output = Result<CaStatus, ControlError>> + Send {
        async {
            Err(ControlError::NotFound(
                "this node keeps no cluster CA".into(),
            ))
        }
    }

    /// Takes the next step of a CA rotation (see [`CaStatus::next`]) on
    /// behalf of `by`, or with `abandon` drops the new CA before it signs;
    /// refused, naming what it waits for, until every member is ready.
    fn rotate_ca(
        &self,
        by: &str,
        abandon: bool,
    ) -> impl Future<Output = Result<CaStatus, ControlError>> + Send {
        let _ = (by, abandon);
        async {
            Err(ControlError::NotFound(
                "this node keeps no cluster CA".into(),
            ))
        }
    }

    /// The CA key, where this node holds it (a voter), for a backup: the
    /// replicated state does not.
    fn ca_key(&self) -> Option<String> {
        None
    }

    /// Every member's admin, cluster and gossip addresses: never a pool
    /// member by registration.
    fn cluster_addresses(&self) -> Vec<std::net::SocketAddr> {
        Vec::new()
    }

    /// Recent traffic per load balancer and pool, cluster-wide.
    fn traffic(&self) -> Traffic {
        Traffic::default()
    }

    /// The config version this node's data plane serves, and whether it
    /// refuses the newest one (a port in use here).
    fn serving(&self) -> Serving {
        Serving {
            version: self.state().0,
            refused: false,
        }
    }

    /// This node's per-listener counters, since each listener started.
    fn listener_counters(&self) -> Vec<ListenerCounters> {
        Vec::new()
    }

    /// The networks this node's interfaces are on.
    fn host_networks(&self) -> Vec<HostNetwork> {
        Vec::new()
    }

    /// What happened lately that this node saw (leader changes, VIP moves,
    /// member and node flips), newest last. Config changes come from
    /// [`ClusterState::history`] and need not be repeated here.
    fn events(&self) -> Vec<Event> {
        Vec::new()
    }
}

/// What this node's data plane serves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Serving {
    /// The config version (log index) it serves.
    pub version: u64,
    /// It refuses the newest applied config (and keeps serving the old).
    pub refused: bool,
}

/// One listener's counters on this node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListenerCounters {
    pub load_balancer: String,
    pub port: u16,
    /// Connections accepted.
    pub connections: u64,
    /// Connections open now.
    pub active: u64,
    /// Bytes from clients and to them.
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// 5xx answers (HTTP).
    pub errors: u64,
}

/// An address of one of this node's interfaces, with its network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostNetwork {
    pub interface: String,
    pub address: std::net::IpAddr,
    pub prefix_len: u8,
}

/// Traffic over the last minutes, sampled at a fixed interval.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Traffic {
    /// Seconds between points.
    pub interval_s: u64,
    /// One series per load balancer and per pool.
    pub series: Vec<TrafficSeries>,
}

/// The traffic of one load balancer or pool.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TrafficSeries {
    /// `load_balancer` or `pool`.
    pub kind: String,
    /// Its name.
    pub name: String,
    /// Oldest first.
    pub points: Vec<TrafficPoint>,
}

/// One interval of traffic, summed over the nodes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct TrafficPoint {
    /// Unix milliseconds at the end of the interval.
    pub at: u64,
    /// Requests (HTTP) or new connections (TCP) per second.
    pub requests_per_s: f64,
    /// Failed share of those (5xx answers, no member, member refused), 0 to 1.
    pub error_rate: f64,
    /// Connections open at the end of the interval.
    pub active: u64,
    /// Median response time in milliseconds, when there were responses.
    pub p50_ms: Option<f64>,
    /// 99th percentile response time in milliseconds (the slowest node's).
    pub p99_ms: Option<f64>,
}

/// Something that happened in the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Unix seconds.
    pub at: u64,
    /// `leader`, `vip`, `member`, `node` or `config`.
    pub kind: String,
    /// For people.
    pub message: String,
    /// Who asked for it, for changes people make.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

/// Why the control plane could not do what was asked.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ControlError {
    /// No leader is reachable (this node is cut off, or an election is on).
    #[error("no leader is reachable, so the change cannot be committed: {0}")]
    NoLeader(String),
    /// No leader confirmed a read, so this node's state may be stale.
    #[error("no leader confirmed this read, so the state here may be out of date: {0}")]
    Unconfirmed(String),
    /// The state machine refused the command.
    #[error("{0}")]
    Refused(Refusal),
    /// The request names something that does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with the cluster's rules (removing the last voter).
    #[error("{0}")]
    Conflict(String),
}

/// The cluster CA and a rotation of it (`GET /api/v1/cluster/ca`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CaStatus {
    /// `none`, `trusting` (every node trusts the new CA; the old one still
    /// signs) or `reissuing` (the new one signs; the old one is trusted
    /// until every certificate is made again).
    pub stage: String,
    /// The fingerprint (`SHA256:…`) of the CA that signs.
    pub signing: String,
    /// The fingerprints of every CA trusted, the signing one first.
    pub trusted: Vec<String>,
    /// Every trusted CA certificate, PEM: what a client trusts meanwhile.
    pub bundle_pem: String,
    /// What the next step does, if a rotation is under way or can begin.
    pub next: String,
    /// Why the next step cannot be taken yet (empty when it can).
    pub waiting_for: Vec<String>,
    pub members: Vec<CaMember>,
}

/// One member's part in a CA rotation, as it reports it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CaMember {
    pub name: String,
    pub voter: bool,
    /// The fingerprints of the CAs it trusts now.
    pub trusts: Vec<String>,
    /// The fingerprint of the CA that signed its node certificate.
    pub node_certificate_ca: Option<String>,
    /// The fingerprint of the CA that signed its admin API certificate
    /// (none when its admin API is plain HTTP on loopback).
    pub admin_certificate_ca: Option<String>,
    /// The fingerprints of the CA keys it holds (voters only).
    pub keys: Vec<String>,
    /// Why it did not answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The cluster as one node sees it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// The node answering.
    pub this_node: String,
    /// The cluster CA's fingerprint (`SHA256:…`), to pin with `keel login
    /// --ca-fingerprint`.
    #[serde(default)]
    pub ca_fingerprint: String,
    /// The leader's name, if known.
    pub leader: Option<String>,
    /// The current Raft term.
    pub term: u64,
    /// The version (log index) this node has applied.
    pub applied_version: u64,
    /// The cluster version (see `keel_model::CLUSTER_VERSION`): raised once
    /// every node runs a Keel that understands the next one.
    #[serde(default)]
    pub cluster_version: u32,
    /// The Raft timing every node runs from its next start.
    #[serde(default)]
    pub timing: Option<keel_model::Timing>,
    /// Every member.
    pub nodes: Vec<NodeStatus>,
    /// Every pool member's health as each node sees it (from gossip).
    #[serde(default)]
    pub members: Vec<MemberHealth>,
}

/// One pool member, as every node sees it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MemberHealth {
    /// The pool.
    pub pool: String,
    /// The member's address.
    pub address: String,
    /// Node name → `up` or `down` in that node's data plane.
    pub views: std::collections::BTreeMap<String, String>,
}

/// One node's entry in [`ClusterStatus`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Raft id (hex).
    pub id: String,
    /// Name.
    pub name: String,
    /// `leader`, `follower` or `learner`.
    pub role: String,
    /// Cluster (Raft RPC) address.
    pub cluster_addr: String,
    /// Admin API address.
    pub admin_addr: String,
    /// Whether it answered the status query just now.
    pub reachable: bool,
    /// The config version it has applied, when reachable.
    pub applied_version: Option<u64>,
    /// The config version its data plane serves, when reachable.
    pub serving_version: Option<u64>,
    /// Whether its data plane is ready, when reachable.
    pub ready: Option<bool>,
    /// Its software version, when reachable.
    pub keel_version: Option<String>,
    /// The VIPs it holds (`addr/len`), when reachable.
    #[serde(default)]
    pub vips: Vec<String>,
    /// Alive by the answering node's gossip failure detector.
    #[serde(default)]
    pub live: Option<bool>,
    /// Drained (`keel node drain`): serves, votes, holds no VIP, does not
    /// lead.
    #[serde(default)]
    pub drained: bool,
    /// The newest cluster version its Keel runs, by gossip.
    #[serde(default)]
    pub cluster_version: Option<u32>,
    /// The Raft timing it runs, when reachable (it runs the cluster's
    /// after a restart when the two differ).
    #[serde(default)]
    pub timing: Option<keel_model::Timing>,
}

/// Unix seconds now.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `command` made by `manager`, who is then recorded as the manager of what
/// it creates or changes (once every node runs a version that keeps them).
pub fn managed<C: ControlPlane>(
    control: &C,
    manager: &str,
    command: ClusterCommand,
) -> ClusterCommand {
    apply::managed(&control.state().1, manager, command)
}

/// Commit `command` on behalf of `by`, recorded in the cluster's history.
pub async fn commit<C: ControlPlane>(
    control: &C,
    by: &str,
    command: ClusterCommand,
) -> Result<u64, ApiError> {
    Ok(control
        .propose(ClusterCommand::Authored {
            by: by.to_owned(),
            at: now(),
            command: Box::new(command),
        })
        .await?)
}
