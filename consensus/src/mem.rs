//! An in-memory transport: nodes call each other's `Raft` directly through a
//! shared [`Router`], which can cut links to simulate partitions and crashes.
//! For tests of this crate; the product uses [`crate::rpc`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{RaftNetwork, RaftNetworkFactory};

use crate::{Consensus, NodeId, NodeInfo, TypeConfig};

#[derive(Default)]
struct Links {
    nodes: BTreeMap<NodeId, Consensus>,
    /// Nodes cut off from everyone else.
    isolated: BTreeSet<NodeId>,
    /// Links that carry nothing one way: `(from, to)`.
    cut: BTreeSet<(NodeId, NodeId)>,
    /// Nodes whose requests arrive but whose answers never come back.
    deaf: BTreeSet<NodeId>,
    /// One-way delay of every message: base ± spread, uniformly.
    jitter: Option<(Duration, Duration)>,
}

/// The shared switchboard of an in-memory cluster.
#[derive(Clone, Default)]
pub struct Router {
    links: Arc<Mutex<Links>>,
}

impl Router {
    /// Make `node` reachable as node `id` (replacing a previous
    /// incarnation).
    pub fn register(&self, id: NodeId, node: Consensus) {
        self.lock().nodes.insert(id, node);
    }

    /// Make node `id` unreachable (a crash, from the others' point of view).
    pub fn unregister(&self, id: NodeId) {
        self.lock().nodes.remove(&id);
    }

    /// Cut node `id` off from every other node, both ways.
    pub fn isolate(&self, id: NodeId) {
        self.lock().isolated.insert(id);
    }

    /// Drop every request `from` sends `to` (`to` can still reach `from`):
    /// an asymmetric partition.
    pub fn cut(&self, from: NodeId, to: NodeId) {
        self.lock().cut.insert((from, to));
    }

    /// Deliver node `id`'s requests but lose every answer to them (replies
    /// slower than any timeout).
    pub fn deafen(&self, id: NodeId) {
        self.lock().deaf.insert(id);
    }

    /// Reconnect every isolated node, cut link and deaf node.
    pub fn heal(&self) {
        let mut links = self.lock();
        links.isolated.clear();
        links.cut.clear();
        links.deaf.clear();
    }

    /// Delay every message, each way, by `base` ± `spread` (like
    /// `tc netem delay BASE SPREAD`).
    pub fn set_jitter(&self, base: Duration, spread: Duration) {
        self.lock().jitter = Some((base, spread));
    }

    /// One message's delay.
    async fn delay(&self) {
        let jitter = self.lock().jitter;
        if let Some((base, spread)) = jitter {
            let spread_us = spread.as_micros() as u64;
            let offset = fastrand::u64(0..=2 * spread_us);
            let d = (base + Duration::from_micros(offset)).saturating_sub(spread);
            tokio::time::sleep(d).await;
        }
    }

    /// A network factory for node `from`.
    pub fn network(&self, from: NodeId) -> MemNetwork {
        MemNetwork {
            router: self.clone(),
            from,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Links> {
        self.links.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn route(&self, from: NodeId, to: NodeId) -> Result<Consensus, Unreachable> {
        let links = self.lock();
        if links.isolated.contains(&from)
            || links.isolated.contains(&to)
            || links.cut.contains(&(from, to))
        {
            return Err(Unreachable::new(&std::io::Error::other("partitioned")));
        }
        links
            .nodes
            .get(&to)
            .cloned()
            .ok_or_else(|| Unreachable::new(&std::io::Error::other("node down")))
    }
}

/// Node `from`'s view of the router.
#[derive(Clone)]
pub struct MemNetwork {
    router: Router,
    from: NodeId,
}

impl RaftNetworkFactory<TypeConfig> for MemNetwork {
    type Network = MemPeer;

    async fn new_client(&mut self, target: NodeId, node: &NodeInfo) -> MemPeer {
        MemPeer {
            router: self.router.clone(),
            from: self.from,
            to: target,
            node: node.clone(),
        }
    }
}

/// A link from one node to another.
pub struct MemPeer {
    router: Router,
    from: NodeId,
    to: NodeId,
    node: NodeInfo,
}

impl MemPeer {
    /// The target after the outbound delay; the caller delays the answer.
    async fn target<E: std::error::Error>(
        &self,
    ) -> Result<Consensus, RPCError<NodeId, NodeInfo, E>> {
        self.router.delay().await;
        self.router
            .route(self.from, self.to)
            .map_err(RPCError::Unreachable)
    }

    /// The answer, unless this node is deaf.
    fn answer<T, E: std::error::Error>(
        &self,
        answer: Result<T, RPCError<NodeId, NodeInfo, E>>,
    ) -> Result<T, RPCError<NodeId, NodeInfo, E>> {
        if self.router.lock().deaf.contains(&self.from) {
            return Err(RPCError::Unreachable(Unreachable::new(
                &std::io::Error::other("the answer was lost"),
            )));
        }
        answer
    }

    fn remote<E: std::error::Error>(
        &self,
        e: E,
    ) -> RPCError<NodeId, NodeInfo, RaftError<NodeId, E>> {
        RPCError::RemoteError(RemoteError::new_with_node(
            self.to,
            self.node.clone(),
            RaftError::APIError(e),
        ))
    }
}

impl RaftNetwork<TypeConfig> for MemPeer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, NodeInfo, RaftError<NodeId>>> {
        let node = self.target().await?;
        let answer = node.append_entries(rpc).await;
        self.router.delay().await;
        self.answer(answer.map_err(|e| RPCError::Network(NetworkError::new(&e))))
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, NodeInfo, RaftError<NodeId, InstallSnapshotError>>,
    > {
        let node = self.target().await?;
        let answer = node.install_snapshot(rpc).await;
        self.router.delay().await;
        self.answer(match answer {
            Ok(r) => Ok(r),
            Err(RaftError::APIError(e)) => Err(self.remote(e)),
            Err(e) => Err(RPCError::Network(NetworkError::new(&e))),
        })
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, NodeInfo, RaftError<NodeId>>> {
        let node = self.target().await?;
        let answer = node.vote(rpc).await;
        self.router.delay().await;
        self.answer(answer.map_err(|e| RPCError::Network(NetworkError::new(&e))))
    }
}

impl crate::PreVotePeer for MemPeer {
    async fn pre_vote(&mut self, ask: crate::PreVote) -> Result<bool, String> {
        let node = self
            .target::<openraft::error::Infallible>()
            .await
            .map_err(|e| e.to_string())?;
        let answer = node.pre_vote(ask);
        self.router.delay().await;
        self.answer::<bool, openraft::error::Infallible>(Ok(answer))
            .map_err(|e| e.to_string())
    }
}
