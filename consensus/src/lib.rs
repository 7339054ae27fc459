//! Keel's Raft: openraft (pinned 0.9.25) behind a small API.
//!
//! - [`Consensus::propose`] returns once a [`ClusterCommand`] is committed and
//!   applied on this node, or a typed [`ProposeError::NotLeader`] naming the
//!   leader so the caller can forward.
//! - [`Consensus::applied`] and [`Consensus::leadership`] are `watch`
//!   receivers for the applied [`ClusterState`] (with its log index as the
//!   version) and for who leads.
//! - Storage is durable in the data directory ([`store`]); the transport is a
//!   trait ([`openraft::RaftNetworkFactory`]) with two implementations: mutual
//!   TLS over TCP ([`rpc`]) and an in-memory router that can partition
//!   ([`mem`]) for tests of this crate alone.

// openraft's trait signatures dictate its (large) error types.
#![allow(clippy::result_large_err)]

mod b64;
mod lease;
pub mod mem;
mod prevote;
pub mod rpc;
pub mod store;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::Cursor;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use keel_model::{ClusterCommand, ClusterState, Refusal, Timing};
use openraft::error::{ClientWriteError, InitializeError, RaftError};
use openraft::{ChangeMembers, Config, Raft, RaftNetworkFactory, ServerState, SnapshotPolicy};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;

pub use lease::{Lease, GUARD_MARGIN};
pub use prevote::{PreVote, PreVotePeer};

/// A node's id in Raft: random at bootstrap or join, never reused.
pub type NodeId = u64;

/// What a committed command did: applied, or refused with the reason (a
/// refused command is still in the log, and changed nothing).
pub type Outcome = Result<(), Refusal>;

openraft::declare_raft_types!(
    /// openraft's type configuration for Keel.
    pub TypeConfig:
        D = ClusterCommand,
        R = Outcome,
        NodeId = NodeId,
        Node = NodeInfo,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// The Raft handle type.
pub type KeelRaft = Raft<TypeConfig>;

/// What the cluster knows about a node (kept in the Raft membership).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Operator-facing name, unique in the cluster.
    pub name: String,
    /// `HOST:PORT` of the cluster (Raft RPC and join) listener.
    pub cluster_addr: String,
    /// `HOST:PORT` of the admin API.
    pub admin_addr: String,
    /// `HOST:PORT` of the gossip socket (UDP); empty from nodes that
    /// predate gossip until they restart.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub gossip_addr: String,
}

impl fmt::Display for NodeInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.cluster_addr)
    }
}

/// The applied state and its version (the index of the last applied entry).
#[derive(Debug, Clone, Default)]
pub struct Applied {
    /// Log index of the last applied entry; grows with every change.
    pub index: u64,
    /// The state after that entry.
    pub state: Arc<ClusterState>,
}

/// Who leads, as this node sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Leadership {
    /// The current leader, if one is known.
    pub leader: Option<NodeId>,
    /// The current term.
    pub term: u64,
    /// True when this node is the leader.
    pub is_leader: bool,
}

/// A node's place in the membership.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Raft id.
    pub id: NodeId,
    /// Name and addresses.
    pub info: NodeInfo,
    /// Voter (counts for quorum) or learner (replicates and serves).
    pub voter: bool,
}

/// Timing and compaction settings.
///
/// A follower that has heard from its leader refuses to vote for anyone else
/// for `election_timeout.1`, and starts an election of its own only after
/// `election_timeout.1` plus a random time in `election_timeout`. The
/// leader's [`Lease`] (`lease` from the send time of a heartbeat a quorum
/// acknowledged) therefore ends before any other node can lead, with
/// `election_timeout.1 - lease` to spare for scheduling and for releasing
/// what the lease guards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// How often the leader sends heartbeats; also the timeout of one
    /// heartbeat, so it must exceed the round trip between nodes.
    pub heartbeat: Duration,
    /// Followers start an election after a random time in this range (on top
    /// of the leader's vote lease, `election_timeout.1`) without hearing from
    /// a leader.
    pub election_timeout: (Duration, Duration),
    /// How long a quorum acknowledgement keeps the leader's lease valid.
    pub lease: Duration,
    /// Take a snapshot (and compact the log) after this many entries.
    pub snapshot_every: u64,
}

impl Default for Settings {
    /// Failover in well under a second, with room for 100 ms round trips.
    fn default() -> Self {
        Settings {
            heartbeat: Duration::from_millis(100),
            election_timeout: (Duration::from_millis(200), Duration::from_millis(400)),
            lease: Duration::from_millis(300),
            snapshot_every: 1000,
        }
    }
}

impl Settings {
    /// For a quiet LAN with sub-10 ms round trips: failover in about a third
    /// of a second.
    pub fn fast() -> Self {
        Settings {
            heartbeat: Duration::from_millis(30),
            election_timeout: (Duration::from_millis(80), Duration::from_millis(160)),
            lease: Duration::from_millis(110),
            ..Settings::default()
        }
    }

    /// Rejects timings that are unsafe or cannot work, naming the setting
    /// ([`keel_model::Timing::check`]: the one set of rules).
    pub fn check(&self) -> Result<(), String> {
        self.timing()
            .check()
            .map_err(|(field, why)| format!("{}: {why}", field.replace('_', " ")))
    }

    /// The timing part, as the cluster state keeps it.
    pub fn timing(&self) -> Timing {
        let ms = |d: Duration| d.as_millis() as u64;
        Timing {
            heartbeat_ms: ms(self.heartbeat),
            election_min_ms: ms(self.election_timeout.0),
            election_max_ms: ms(self.election_timeout.1),
            lease_ms: ms(self.lease),
        }
    }

    /// These settings with `timing` instead of their own.
    pub fn with_timing(&self, timing: &Timing) -> Settings {
        Settings {
            heartbeat: Duration::from_millis(timing.heartbeat_ms),
            election_timeout: (
                Duration::from_millis(timing.election_min_ms),
                Duration::from_millis(timing.election_max_ms),
            ),
            lease: Duration::from_millis(timing.lease_ms),
            ..self.clone()
        }
    }
}

/// Why a proposal did not go through.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProposeError {
    /// This node is not the leader; `leader` is who is, if known.
    #[error("not the leader{}", leader.as_ref().map(|(id, n)| format!(" (leader is node {id}, {n})")).unwrap_or_default())]
    NotLeader {
        /// The leader's id and info, if known.
        leader: Option<(NodeId, NodeInfo)>,
    },
    /// The command was committed but refused by the state machine.
    #[error("{0}")]
    Refused(Refusal),
    /// A membership change was not possible (the text says why).
    #[error("membership change refused: {0}")]
    Membership(String),
    /// Raft has stopped (shutdown or a storage failure).
    #[error("raft has stopped: {0}")]
    Stopped(String),
    /// This leader could not confirm with a quorum that it still leads.
    #[error("leadership not confirmed by a quorum: {0}")]
    Unconfirmed(String),
    /// The command needs a cluster version the cluster is not at yet: some
    /// member could not read it.
    #[error(
        "this change needs cluster version {needs}; the cluster is at version {version} until \
         every node runs a Keel that understands it"
    )]
    NeedsVersion {
        /// What the command needs.
        needs: u32,
        /// What the cluster is at.
        version: u32,
    },
}

/// Why the node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The data directory could not be opened.
    #[error("cannot open raft storage in {dir}: {source}")]
    Storage {
        /// The directory.
        dir: String,
        /// The cause.
        source: std::io::Error,
    },
    /// openraft refused the configuration or failed to start.
    #[error("raft failed to start: {0}")]
    Raft(String),
}

/// A running Raft node.
#[derive(Clone)]
pub struct Consensus {
    id: NodeId,
    raft: KeelRaft,
    applied: watch::Receiver<Applied>,
    leadership: watch::Receiver<Leadership>,
    lease: watch::Receiver<Lease>,
    book: Arc<lease::Book>,
    snapshots: Arc<store::SnapshotStats>,
    log: store::LogStoreRef,
    /// When this node may stand for election (pre-vote, drained, stepped
    /// down).
    gate: Arc<prevote::Gate>,
    leadership_tx: Arc<watch::Sender<Leadership>>,
}

impl Consensus {
    /// Start a node with storage in `dir` (created if missing).
    pub async fn start<N>(
        id: NodeId,
        dir: &Path,
        settings: &Settings,
        network: N,
    ) -> Result<Self, StartError>
    where
        N: RaftNetworkFactory<TypeConfig> + Clone,
        N::Network: PreVotePeer,
    {
        let storage_err = |source| StartError::Storage {
            dir: dir.display().to_string(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(storage_err)?;
        let log = store::LogStore::open(dir).map_err(storage_err)?;
        let machine = store::StateMachineStore::open(dir).map_err(storage_err)?;
        let applied = machine.subscribe();
        let snapshots = machine.stats();
        settings.check().map_err(StartError::Raft)?;
        let config = Config {
            cluster_name: "keel".into(),
            heartbeat_interval: settings.heartbeat.as_millis() as u64,
            election_timeout_min: settings.election_timeout.0.as_millis() as u64,
            election_timeout_max: settings.election_timeout.1.as_millis() as u64,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(settings.snapshot_every),
            max_in_snapshot_log_to_keep: settings.snapshot_every / 2,
            // A chunk of 1 MiB (about 1.4 MB as base64) gets 5 s to travel
            // and, the last one, to be installed: at 2 Mbit/s and up. The
            // default (3 MiB in 200 ms) let a large state never install.
            snapshot_max_chunk_size: 1 << 20,
            install_snapshot_timeout: 5_000,
            // Opened by the pre-vote gate (`prevote.rs`).
            enable_elect: false,
            ..Config::default()
        }
        .validate()
        .map_err(|e| StartError::Raft(e.to_string()))?;
        let book = lease::Book::new(id, settings.lease);
        let asking = network.clone();
        let network = lease::Acking {
            inner: network,
            book: book.clone(),
        };
        let log_ref = log.downgrade();
        let raft = Raft::new(id, Arc::new(config), network, log, machine)
            .await
            .map_err(|e| StartError::Raft(e.to_string()))?;
        let gate = prevote::Gate::new(settings.election_timeout.1);
        let (leadership, leadership_tx) = watch_leadership(&raft, &book, &gate);
        let consensus = Consensus {
            id,
            raft,
            applied,
            leadership,
            lease: book.subscribe(),
            book,
            snapshots,
            log: log_ref,
            gate,
            leadership_tx,
        };
        tokio::spawn(consensus.clone().fence(settings.election_timeout.1));
        tokio::spawn(
            consensus
                .clone()
                .keep_gate(asking, settings.election_timeout.0),
        );
        Ok(consensus)
    }

    /// What this node's snapshots cost (size, build time, count).
    pub fn snapshots(&self) -> &store::SnapshotStats {
        &self.snapshots
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The raw openraft handle, for the RPC server.
    pub fn raft(&self) -> &KeelRaft {
        &self.raft
    }

    /// Make this node a one-voter cluster. Only on an empty, never-initialised
    /// store; returns `false` if it already was part of a cluster.
    pub async fn bootstrap(&self, me: NodeInfo) -> Result<bool, ProposeError> {
        let members = BTreeMap::from([(self.id, me)]);
        match self.raft.initialize(members).await {
            Ok(()) => Ok(true),
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(false),
            Err(e) => Err(ProposeError::Stopped(e.to_string())),
        }
    }

    /// True once this node has a membership (bootstrapped, joined or restored).
    pub async fn is_initialized(&self) -> bool {
        self.raft.is_initialized().await.unwrap_or(false)
    }

    /// Propose a command. Returns the log index once it is committed and
    /// applied on this node (which is the leader).
    pub async fn propose(&self, command: ClusterCommand) -> Result<u64, ProposeError> {
        // Never into the log: an older member could not decode it and its
        // replication would stop there.
        let version = self.applied.borrow().state.version();
        if command.needs() > version {
            return Err(ProposeError::NeedsVersion {
                needs: command.needs(),
                version,
            });
        }
        match self.raft.client_write(command).await {
            Ok(resp) => match resp.data {
                Ok(()) => Ok(resp.log_id.index),
                Err(refusal) => Err(ProposeError::Refused(refusal)),
            },
            Err(e) => Err(write_error(e)),
        }
    }

    /// The read index of a linearizable read (Raft's ReadIndex): on the
    /// leader, after a quorum confirmed it still leads, the log index up to
    /// which any node must have applied before it answers a read that
    /// began before this call. Not the leader: [`ProposeError::NotLeader`].
    pub async fn read_index(&self) -> Result<u64, ProposeError> {
        use openraft::error::CheckIsLeaderError;
        match self.raft.get_read_log_id().await {
            Ok((read, applied)) => Ok(read.max(applied).map_or(0, |l| l.index)),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                Err(ProposeError::NotLeader {
                    leader: f.leader_id.zip(f.leader_node),
                })
            }
            Err(RaftError::APIError(e)) => Err(ProposeError::Unconfirmed(e.to_string())),
            Err(RaftError::Fatal(f)) => Err(ProposeError::Stopped(f.to_string())),
        }
    }

    /// The applied state, as it changes.
    pub fn applied(&self) -> watch::Receiver<Applied> {
        self.applied.clone()
    }

    /// Leadership, as it changes.
    pub fn leadership(&self) -> watch::Receiver<Leadership> {
        self.leadership.clone()
    }

    /// The leader lease, renewed with every quorum acknowledgement.
    pub fn lease(&self) -> watch::Receiver<Lease> {
        self.lease.clone()
    }

    /// Wait until this node has applied `index`, up to `timeout`.
    pub async fn wait_applied(&self, index: u64, timeout: Duration) -> bool {
        let mut rx = self.applied.clone();
        tokio::time::timeout(timeout, rx.wait_for(|a| a.index >= index))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Snapshot what this node has applied, purge the log up to it and
    /// rewrite the log's file: no entry from before stays on disk, not even
    /// in freed pages. Waits at most ten seconds for the snapshot and the
    /// purge.
    pub async fn compact(&self) -> Result<(), String> {
        let target = self.applied.borrow().index;
        self.raft
            .trigger()
            .snapshot()
            .await
            .map_err(|e| e.to_string())?;
        let mut metrics = self.raft.metrics();
        let built = tokio::time::timeout(
            Duration::from_secs(10),
            metrics.wait_for(|m| m.snapshot.is_some_and(|s| s.index >= target)),
        )
        .await
        .map_err(|_| format!("no snapshot at index {target} within ten seconds"))?
        .map_err(|e| e.to_string())?
        .snapshot
        .map_or(target, |s| s.index);
        self.raft
            .trigger()
            .purge_log(built)
            .await
            .map_err(|e| e.to_string())?;
        tokio::time::timeout(
            Duration::from_secs(10),
            metrics.wait_for(|m| m.purged.is_some_and(|p| p.index >= built)),
        )
        .await
        .map_err(|_| format!("the log not purged to index {built} within ten seconds"))?
        .map_err(|e| e.to_string())?;
        let log = self.log.upgrade().ok_or("the Raft log is closed")?;
        log.rewrite().await.map_err(|e| e.to_string())
    }

    /// Members of the cluster with their roles, from the latest membership.
    pub fn members(&self) -> Vec<Member> {
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        membership
            .nodes()
            .map(|(id, info)| Member {
                id: *id,
                info: info.clone(),
                voter: voters.contains(id),
            })
            .collect()
    }

    /// The leader's id and info, if known.
    pub fn leader(&self) -> Option<(NodeId, NodeInfo)> {
        let id = self.leadership.borrow().leader?;
        let metrics = self.raft.metrics().borrow().clone();
        let info = metrics
            .membership_config
            .membership()
            .get_node(&id)?
            .clone();
        Some((id, info))
    }

    /// Admit a node: add it as a learner (waiting until it has caught up),
    /// then promote it to voter while there are fewer than `max_voters`.
    /// Returns whether it became a voter.
    pub async fn admit(
        &self,
        id: NodeId,
        info: NodeInfo,
        max_voters: usize,
    ) -> Result<bool, ProposeError> {
        self.raft
            .add_learner(id, info, true)
            .await
            .map_err(write_error)?;
        let voters = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .count();
        if voters >= max_voters {
            return Ok(false);
        }
        self.raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
            .await
            .map_err(write_error)?;
        Ok(true)
    }

    /// Remove a node from the membership (voter or learner). When a voter
    /// leaves, the first learner (if any) is promoted in its place.
    pub async fn remove(&self, id: NodeId) -> Result<(), ProposeError> {
        let membership = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .clone();
        if membership.get_node(&id).is_none() {
            return Err(ProposeError::Membership(format!(
                "node {id} is not a member"
            )));
        }
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        if voters.contains(&id) {
            if voters.len() == 1 {
                return Err(ProposeError::Membership(
                    "cannot remove the last voter".into(),
                ));
            }
            let mut next: BTreeSet<NodeId> = voters.iter().copied().filter(|v| *v != id).collect();
            if let Some(learner) = membership.learner_ids().find(|l| *l != id) {
                next.insert(learner);
            }
            self.raft
                .change_membership(ChangeMembers::ReplaceAllVoters(next), false)
                .await
                .map_err(write_error)?;
        }
        self.raft
            .change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false)
            .await
            .map_err(write_error)?;
        Ok(())
    }

    /// Record new addresses for a member (it restarted elsewhere).
    pub async fn update_node(&self, id: NodeId, info: NodeInfo) -> Result<(), ProposeError> {
        self.raft
            .change_membership(ChangeMembers::SetNodes(BTreeMap::from([(id, info)])), true)
            .await
            .map_err(write_error)?;
        Ok(())
    }

    /// Hand leadership to another voter, if this node leads, and stop
    /// standing for election until [`Consensus::stand_again`]. Returns once
    /// another node leads or `deadline` passes.
    pub async fn step_down(&self, deadline: Duration) {
        if self.stop_leading().is_some() {
            self.wait_for_another_leader(deadline).await;
        }
    }

    /// The first half of [`Consensus::step_down`]: stop standing for
    /// election and, if leading, stop heartbeating, so that a follower's
    /// election timer runs out (openraft 0.9 has no leadership transfer; see
    /// [`Consensus::elect_now`] for the faster way). The term this node
    /// led, if it led.
    pub fn stop_leading(&self) -> Option<u64> {
        self.gate
            .standing
            .store(false, std::sync::atomic::Ordering::SeqCst);
        self.update_elect();
        let leadership = self.leadership.borrow().clone();
        if !leadership.is_leader {
            return None;
        }
        self.raft.runtime_config().heartbeat(false);
        self.book.hand_over(true);
        Some(leadership.term)
    }

    /// A leader's `AppendEntries`, for openraft; one it takes as from its
    /// leader is noted for the pre-vote gate.
    pub async fn append_entries(
        &self,
        rpc: openraft::raft::AppendEntriesRequest<TypeConfig>,
    ) -> Result<openraft::raft::AppendEntriesResponse<NodeId>, RaftError<NodeId>> {
        let from_leader = rpc.vote.is_committed();
        let answer = self.raft.append_entries(rpc).await;
        if from_leader
            && matches!(&answer, Ok(r) if !matches!(r, openraft::raft::AppendEntriesResponse::HigherVote(_)))
        {
            self.gate.heard();
        }
        answer
    }

    /// A leader's snapshot chunk, for openraft; noted like
    /// [`Consensus::append_entries`].
    pub async fn install_snapshot(
        &self,
        rpc: openraft::raft::InstallSnapshotRequest<TypeConfig>,
    ) -> Result<
        openraft::raft::InstallSnapshotResponse<NodeId>,
        RaftError<NodeId, openraft::error::InstallSnapshotError>,
    > {
        let ours = rpc.vote;
        let answer = self.raft.install_snapshot(rpc).await;
        if matches!(&answer, Ok(r) if r.vote == ours) {
            self.gate.heard();
        }
        answer
    }

    /// A vote request, answered by openraft unless this node leads with a
    /// valid lease: then it is refused (with this node's vote, as openraft
    /// refuses while its own lease holds), because a quorum it counted on
    /// for the lease could otherwise elect someone before the lease ends.
    /// openraft 0.9 would grant it once its own vote is an election timeout
    /// old. The refusal gives no last log id (the candidate reads it only to
    /// delay its next election).
    pub async fn vote(
        &self,
        rpc: openraft::raft::VoteRequest<NodeId>,
    ) -> Result<openraft::raft::VoteResponse<NodeId>, RaftError<NodeId>> {
        if self.book.refuses_votes() {
            let vote = self.raft.metrics().borrow().vote;
            tracing::debug!(candidate = %rpc.vote, "refused a vote: leading with a valid lease");
            return Ok(openraft::raft::VoteResponse {
                vote,
                vote_granted: false,
                last_log_id: None,
            });
        }
        self.raft.vote(rpc).await
    }

    /// Keeps the lease safe against followers that run a shorter election
    /// timeout than this node (a timing change rolling through the
    /// cluster): the lease is shortened to fit `longest_election`, the
    /// shortest any voter runs, as [`Settings::check`] would fit it.
    pub fn limit_lease(&self, longest_election: Duration) {
        self.book.limit(longest_election);
    }

    /// Steps down a leader that has had no quorum acknowledgement for the
    /// longest election timeout (its lease long gone, its VIPs released):
    /// followers that still hear it but whose answers do not come back
    /// would otherwise never elect anyone, and no node would hold the VIP.
    /// It stops heartbeating and standing until another node leads (or
    /// twice the timeout passes), then stands again.
    async fn fence(self, longest_election: Duration) {
        // One receiver for the whole loop: it wakes the fence only when
        // the instant moves (a fresh one each turn would wake at once,
        // every turn: a spin on the control thread).
        let mut unacknowledged = self.book.unacknowledged_since();
        let mut warned = 0;
        loop {
            let since = *unacknowledged.borrow_and_update();
            let Some(since) = since else {
                if unacknowledged.changed().await.is_err() {
                    return;
                }
                continue;
            };
            let deadline = since + longest_election;
            if Instant::now() < deadline {
                tokio::select! {
                    () = tokio::time::sleep_until(deadline) => {}
                    r = unacknowledged.changed() => if r.is_err() { return },
                }
                continue;
            }
            let term = self.leadership.borrow().term;
            if warned != term {
                warned = term;
                tracing::warn!(
                    term,
                    "no quorum has acknowledged this leader for {longest_election:?}: stepping down"
                );
            }
            self.step_down(longest_election * 2).await;
            self.stand_again();
        }
    }

    /// Waits until another node leads, at most `deadline`.
    pub async fn wait_for_another_leader(&self, deadline: Duration) {
        let me = self.id;
        let mut leadership = self.leadership.clone();
        let moved = leadership.wait_for(|l| l.leader.is_some_and(|id| id != me));
        let _ = tokio::time::timeout(deadline, moved).await;
    }

    /// The voters other than this one, most up to date first (by the last
    /// log index this leader knows each has matched); empty unless leading.
    pub fn successors(&self) -> Vec<NodeId> {
        let metrics = self.raft.metrics().borrow().clone();
        let voters: BTreeSet<NodeId> = metrics.membership_config.membership().voter_ids().collect();
        let mut progress: Vec<(u64, NodeId)> = metrics
            .replication
            .iter()
            .flatten()
            .filter(|(id, _)| **id != self.id && voters.contains(id))
            .map(|(id, matched)| (matched.as_ref().map_or(0, |l| l.index), *id))
            .collect();
        progress.sort_by(|a, b| b.cmp(a));
        progress.into_iter().map(|(_, id)| id).collect()
    }

    /// Asked by a leader handing over after [`Consensus::stop_leading`]:
    /// stand for election now instead of waiting for the election timer.
    /// Only while `term` (the hand-over's) is still the current term, this
    /// node does not lead and is not drained: a late or repeated request
    /// changes nothing. It wins at once when the old leader grants its
    /// vote: having stopped leading it gave up its lease (so
    /// [`Consensus::vote`] refuses nothing), and openraft's own refusal
    /// runs only an election timeout from a leader's election
    /// (`Engine::handle_vote_req`, openraft 0.9.25); the other followers
    /// grant theirs once the old leader's heartbeats are that old.
    pub async fn elect_now(&self, term: u64) -> bool {
        let leadership = self.leadership.borrow().clone();
        if leadership.is_leader
            || leadership.term != term
            || self.gate.drained.load(std::sync::atomic::Ordering::SeqCst)
        {
            return false;
        }
        self.raft.trigger().elect().await.is_ok()
    }

    /// Undo [`Consensus::step_down`]: heartbeat if leading, stand for
    /// election (unless drained).
    pub fn stand_again(&self) {
        self.book.hand_over(false);
        self.raft.runtime_config().heartbeat(true);
        self.gate
            .standing
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.update_elect();
    }

    /// Drained, this node stands for no election (it still votes and
    /// replicates) until undrained; a leader also has to
    /// [`Consensus::step_down`].
    pub fn set_drained(&self, drained: bool) {
        self.gate
            .drained
            .store(drained, std::sync::atomic::Ordering::SeqCst);
        if !drained {
            // Undrained, it stands again (a drained leader stepped down).
            self.gate
                .standing
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
        self.update_elect();
        if !drained {
            self.book.hand_over(false);
            self.raft.runtime_config().heartbeat(true);
        }
    }

    /// Stop Raft.
    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft did not shut down cleanly");
        }
    }
}

fn write_error(e: RaftError<NodeId, ClientWriteError<NodeId, NodeInfo>>) -> ProposeError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => ProposeError::NotLeader {
            leader: f.leader_id.zip(f.leader_node),
        },
        RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => {
            ProposeError::Membership(c.to_string())
        }
        RaftError::Fatal(f) => ProposeError::Stopped(f.to_string()),
    }
}

/// Publishes who leads and tells the lease's book.
/// Who leads, as this node sees it: openraft's view, except that a
/// follower that has not heard from its leader for the longest election
/// timeout knows of no leader (with pre-vote it may stay a follower of a
/// dead leader for as long as no quorum would elect it).
pub(crate) fn leadership_of(
    m: &openraft::RaftMetrics<NodeId, NodeInfo>,
    gate: &prevote::Gate,
) -> Leadership {
    let is_leader = m.state == ServerState::Leader;
    Leadership {
        leader: m
            .current_leader
            .filter(|_| is_leader || gate.hears_a_leader()),
        term: m.current_term,
        is_leader,
    }
}

/// Publishes `next` if it differs.
pub(crate) fn publish(tx: &watch::Sender<Leadership>, next: Leadership) {
    tx.send_if_modified(|current| {
        let changed = *current != next;
        *current = next;
        changed
    });
}

fn watch_leadership(
    raft: &KeelRaft,
    book: &Arc<lease::Book>,
    gate: &Arc<prevote::Gate>,
) -> (watch::Receiver<Leadership>, Arc<watch::Sender<Leadership>>) {
    let mut metrics = raft.metrics();
    let observe = |book: &lease::Book, m: &openraft::RaftMetrics<NodeId, NodeInfo>| {
        let leading = (m.state == ServerState::Leader).then_some(m.current_term);
        let configs = m.membership_config.membership().get_joint_config().clone();
        book.observe(leading, configs);
    };
    observe(book, &metrics.borrow());
    let (tx, rx) = watch::channel(leadership_of(&metrics.borrow(), gate));
    let tx = Arc::new(tx);
    let book = book.clone();
    let gate = gate.clone();
    let sender = tx.clone();
    tokio::spawn(async move {
        while metrics.changed().await.is_ok() {
            let m = metrics.borrow_and_update().clone();
            observe(&book, &m);
            publish(&sender, leadership_of(&m, &gate));
        }
    });
    (rx, tx)
}
