//! Pre-vote: a node stands for election only once a quorum says it would
//! vote for it now (the Raft thesis, §9.6; openraft 0.9 has none).
//!
//! Without it, a voter that cannot hear the leader but can still reach the
//! others (a one-way cut, a flapping link) stands for election again and
//! again: the others refuse it while the leader's lease holds, but its term
//! climbs with every try, and when the cut heals the leader's next
//! heartbeat meets that term and the leader steps down: an election, and
//! the VIP moves, for nothing.
//!
//! So openraft's own election timer runs only while [`Gate`] is open. A
//! follower that has not heard from a leader for the longest election
//! timeout asks every voter ([`Consensus::pre_vote`] answers): "would you
//! vote for me, with this log?". A voter says yes only when it would grant
//! the real vote too: it has not heard from a leader for as long itself
//! (or leads without a valid lease) and the asker's log is at least as
//! long as its own. With a quorum of yes in every voter set, the gate
//! opens and openraft's timer (itself longer than that) elects as before;
//! nothing changes the node's term or vote until then. A node alone in the
//! voter set needs nobody. A peer that predates pre-vote (a rolling
//! upgrade) counts as a yes: its real vote decides, as before.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use openraft::RaftNetworkFactory;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::{Consensus, NodeId, NodeInfo, TypeConfig};

/// "Would you vote for me now?"
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreVote {
    /// The asker's last log index.
    pub last_log_index: Option<u64>,
}

/// A link that can carry a [`PreVote`]: the answer, or why there is none
/// (counted as a no).
pub trait PreVotePeer {
    fn pre_vote(&mut self, ask: PreVote) -> impl Future<Output = Result<bool, String>> + Send;
}

/// When this node may stand for election, and what that depends on.
#[derive(Debug)]
pub(crate) struct Gate {
    /// How long a follower waits after hearing from a leader before it may
    /// stand (and before it tells another it would vote for it).
    quiet: Duration,
    /// When this node last took a leader's `AppendEntries` or snapshot.
    heard: Mutex<Instant>,
    /// A quorum said yes (or this node is the only voter).
    open: AtomicBool,
    /// Not stepped down (see [`Consensus::stop_leading`]).
    pub(crate) standing: AtomicBool,
    /// Drained by an operator.
    pub(crate) drained: AtomicBool,
}

impl Gate {
    pub(crate) fn new(quiet: Duration) -> Arc<Self> {
        Arc::new(Gate {
            quiet,
            heard: Mutex::new(Instant::now()),
            open: AtomicBool::new(false),
            standing: AtomicBool::new(true),
            drained: AtomicBool::new(false),
        })
    }

    /// A leader was heard from now.
    pub(crate) fn heard(&self) {
        *self.heard.lock().unwrap_or_else(PoisonError::into_inner) = Instant::now();
    }

    /// How long since a leader was heard from.
    fn silent(&self) -> Duration {
        self.heard
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .elapsed()
    }

    /// Whether a leader was heard from within the longest election
    /// timeout.
    pub(crate) fn hears_a_leader(&self) -> bool {
        self.silent() < self.quiet
    }

    /// Whether openraft may run its election timer.
    pub(crate) fn elects(&self) -> bool {
        self.open.load(Ordering::SeqCst)
            && self.standing.load(Ordering::SeqCst)
            && !self.drained.load(Ordering::SeqCst)
    }
}

impl Consensus {
    /// The answer to a [`PreVote`]: yes only if this node would grant the
    /// real vote now (see the module's documentation).
    pub fn pre_vote(&self, ask: PreVote) -> bool {
        let mine = self.raft.metrics().borrow().last_log_index;
        if ask.last_log_index < mine {
            return false;
        }
        if self.leadership.borrow().is_leader {
            !self.book.refuses_votes()
        } else {
            self.gate.silent() >= self.gate.quiet
        }
    }

    /// Opens and closes the gate, until Raft stops (see the module's
    /// documentation). `network` reaches the other voters.
    pub(crate) async fn keep_gate<N>(self, mut network: N, retry: Duration)
    where
        N: RaftNetworkFactory<TypeConfig>,
        N::Network: PreVotePeer,
    {
        let mut metrics = self.raft.metrics();
        loop {
            let m = metrics.borrow_and_update().clone();
            // A leader no longer heard from is no longer shown.
            crate::publish(&self.leadership_tx, crate::leadership_of(&m, &self.gate));
            let configs = m.membership_config.membership().get_joint_config().clone();
            let alone = configs.iter().all(|c| c.len() == 1 && c.contains(&self.id));
            let leading = self.leadership.borrow().is_leader;
            let silent = self.gate.silent();
            let was = self.gate.open.load(Ordering::SeqCst);
            let open = alone
                || (!leading
                    && silent >= self.gate.quiet
                    && (was || self.ask_quorum(&mut network, &m, &configs).await));
            if open != was {
                self.gate.open.store(open, Ordering::SeqCst);
                self.update_elect();
                if open && !alone {
                    tracing::info!(
                        silent_ms = silent.as_millis() as u64,
                        "no leader heard from and a quorum would vote for this node: standing for election"
                    );
                }
            }
            let wait = if leading || alone {
                retry
            } else if silent < self.gate.quiet {
                self.gate.quiet - silent
            } else if open {
                retry / 4
            } else {
                retry
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                r = metrics.changed() => if r.is_err() { return },
            }
        }
    }

    /// Asks every other voter; true with a quorum of yes in every voter
    /// set (this node's own yes counted).
    async fn ask_quorum<N>(
        &self,
        network: &mut N,
        m: &openraft::RaftMetrics<NodeId, NodeInfo>,
        configs: &[BTreeSet<NodeId>],
    ) -> bool
    where
        N: RaftNetworkFactory<TypeConfig>,
        N::Network: PreVotePeer,
    {
        let ask = PreVote {
            last_log_index: m.last_log_index,
        };
        let voters: BTreeSet<NodeId> = configs.iter().flatten().copied().collect();
        let mut asks = tokio::task::JoinSet::new();
        for id in voters.iter().copied().filter(|id| *id != self.id) {
            let Some(node) = m.membership_config.membership().get_node(&id) else {
                continue;
            };
            let mut peer = network.new_client(id, node).await;
            let wait = self.gate.quiet;
            asks.spawn(async move {
                let answer = tokio::time::timeout(wait, peer.pre_vote(ask)).await;
                (id, matches!(answer, Ok(Ok(true))))
            });
        }
        // Done at the first quorum: a dead voter's answer never comes, and
        // waiting for it would delay every failover.
        let mut yes = BTreeSet::from([self.id]);
        let quorum = |yes: &BTreeSet<NodeId>| {
            configs
                .iter()
                .all(|c| c.iter().filter(|id| yes.contains(id)).count() > c.len() / 2)
        };
        while !quorum(&yes) {
            match asks.join_next().await {
                Some(Ok((id, true))) => {
                    yes.insert(id);
                }
                Some(_) => {}
                None => {
                    tracing::debug!(?yes, "pre-vote: no quorum would vote for this node");
                    return false;
                }
            }
        }
        true
    }

    /// openraft's election timer runs only while the gate says so.
    pub(crate) fn update_elect(&self) {
        self.raft.runtime_config().elect(self.gate.elects());
    }
}
