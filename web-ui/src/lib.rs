//! Keel's admin HTTP surface: the REST API under `/api/v1`.
//!
//! Handlers depend on the [`ControlPlane`] trait, not on Raft, so they can be
//! tested with a fake. Every write is validated here (whole-spec validation
//! with field paths) before it becomes a [`ClusterCommand`], and returns after
//! the control plane reports it committed and applied on this node.

mod api;
mod auth;
mod certs;
mod error;
mod openapi;

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use keel_model::{ClusterCommand, ClusterState, Refusal};
use serde::{Deserialize, Serialize};

pub use auth::{hash_password, random_hex, sha256_hex, LoginLimiter};
pub use error::ApiError;

/// What the API needs from the node.
pub trait ControlPlane: Send + Sync + 'static {
    /// The applied state and its version (log index).
    fn state(&self) -> (u64, Arc<ClusterState>);

    /// Commit a command through the leader (forwarding if needed); resolves
    /// once it is applied on this node, with its log index.
    fn propose(
        &self,
        command: ClusterCommand,
    ) -> impl Future<Output = Result<u64, ControlError>> + Send;

    /// Nodes, roles and what each one serves.
    fn status(&self) -> impl Future<Output = ClusterStatus> + Send;

    /// Remove a node from the cluster by name.
    fn remove_node(&self, name: &str) -> impl Future<Output = Result<(), ControlError>> + Send;

    /// The fingerprint of the cluster CA, for join tokens.
    fn ca_fingerprint(&self) -> String;
}

/// Why the control plane could not do what was asked.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ControlError {
    /// No leader is reachable (this node is cut off, or an election is on).
    #[error("no leader is reachable, so the change cannot be committed: {0}")]
    NoLeader(String),
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

/// The cluster as one node sees it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// The node answering.
    pub this_node: String,
    /// The leader's name, if known.
    pub leader: Option<String>,
    /// The current Raft term.
    pub term: u64,
    /// The version (log index) this node has applied.
    pub applied_version: u64,
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
}

/// The `/api/v1` router over a control plane.
pub fn router<C: ControlPlane>(control: Arc<C>) -> Router {
    api::router(control)
}
