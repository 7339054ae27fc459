//! The leader lease, kept by Keel from the heartbeats it sends rather than
//! read back from openraft's metrics.
//!
//! Every `AppendEntries` this node sends as leader goes through [`Acking`],
//! which notes the instant just before it left. When a follower answers
//! without a higher vote, it has taken that message as from its leader and
//! refuses to vote for anyone else for the longest election timeout after
//! it arrived (`Engine::handle_vote_req`, openraft 0.9.25), so after the
//! instant it left. The lease runs `lease` from the newest send instant a
//! quorum (this node counted) has acknowledged: anchored no later than the
//! acknowledgement, and never lengthened by reading a report late.
//!
//! While its lease holds, the leader itself refuses votes
//! ([`Book::refuses_votes`]; openraft 0.9 would grant them once its own
//! vote is an election timeout old), so no quorum can elect anyone before
//! the lease ends. A leader handing over ([`Book::hand_over`]) gives the
//! lease up first.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use openraft::error::{InstallSnapshotError, RPCError, RaftError};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{RaftNetwork, RaftNetworkFactory};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::{NodeId, NodeInfo, TypeConfig};

/// How much later than the lease's end a watchdog acting for a paused
/// node (the VIP guard) may remove what the lease guards: its own timer's
/// lateness. `Settings::check` keeps the lease this much shorter than the
/// longest election timeout, so even then no other node leads yet.
pub const GUARD_MARGIN: Duration = Duration::from_millis(keel_model::GUARD_MARGIN_MS);

/// A lease with no other voter to ask: a one-voter cluster's leader holds
/// it until the membership changes.
const ALONE: Duration = Duration::from_secs(365 * 24 * 3600);

/// The leader's right to act alone (hold the VIP): valid until `until`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Lease {
    /// The term the lease belongs to.
    pub term: u64,
    /// When it runs out; `None` when this node does not lead, hands over,
    /// or no quorum has acknowledged it yet.
    pub until: Option<Instant>,
    /// `until` plus [`GUARD_MARGIN`]: the deadline for a watchdog acting
    /// for a paused or wedged node. No other node can lead before the
    /// longest election timeout after the acknowledged send, later still.
    pub hard_until: Option<Instant>,
}

impl Lease {
    /// True while the lease has not run out.
    pub fn is_valid(&self) -> bool {
        self.until.is_some_and(|u| Instant::now() < u)
    }
}

/// What the lease is computed from.
#[derive(Debug)]
struct State {
    /// The term this node leads, if it leads.
    leading: Option<u64>,
    /// When it began to lead (or the membership changed while it led).
    since: Instant,
    /// The voter sets a quorum is needed in (two during a joint change).
    configs: Vec<BTreeSet<NodeId>>,
    /// Per follower: the term and send instant of the newest
    /// `AppendEntries` it acknowledged.
    acks: BTreeMap<NodeId, (u64, Instant)>,
    /// Handing over: no lease, votes granted.
    handing_over: bool,
}

/// The lease's book: acknowledgements in, [`Lease`] out.
#[derive(Debug)]
pub(crate) struct Book {
    me: NodeId,
    /// The lease this node's settings give.
    length: Duration,
    /// What it is cut to for the shortest election timeout among voters
    /// (see [`Book::limit`]), as milliseconds; `u64::MAX` when uncut.
    cut_to: std::sync::atomic::AtomicU64,
    state: Mutex<State>,
    tx: watch::Sender<Lease>,
    /// [`Book::unacknowledged_since`], for the fence: it moves without the
    /// lease changing (a membership change, a hand-over taken back before
    /// any acknowledgement).
    unacknowledged: watch::Sender<Option<Instant>>,
}

impl Book {
    pub(crate) fn new(me: NodeId, length: Duration) -> Arc<Self> {
        Arc::new(Book {
            me,
            length,
            cut_to: std::sync::atomic::AtomicU64::new(u64::MAX),
            state: Mutex::new(State {
                leading: None,
                since: Instant::now(),
                configs: Vec::new(),
                acks: BTreeMap::new(),
                handing_over: false,
            }),
            tx: watch::channel(Lease::default()).0,
            unacknowledged: watch::channel(None).0,
        })
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<Lease> {
        self.tx.subscribe()
    }

    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let r = f(&mut state);
        let next = self.compute(&state);
        send_if_changed(&self.tx, next);
        send_if_changed(&self.unacknowledged, self.unacknowledged_since_in(&state));
        r
    }

    /// A follower acknowledged an `AppendEntries` sent at `sent` in `term`.
    pub(crate) fn ack(&self, target: NodeId, term: u64, sent: Instant) {
        self.with(|s| {
            let newer = s
                .acks
                .get(&target)
                .is_none_or(|&(t, at)| (t, at) < (term, sent));
            if newer {
                s.acks.insert(target, (term, sent));
            }
        });
    }

    /// What openraft reports: whether (and in which term) this node leads,
    /// and the voter sets.
    pub(crate) fn observe(&self, leading: Option<u64>, configs: Vec<BTreeSet<NodeId>>) {
        self.with(|s| {
            if s.leading != leading || s.configs != configs {
                s.since = Instant::now();
            }
            if s.leading != leading {
                s.acks.clear();
            }
            s.leading = leading;
            s.configs = configs;
        });
    }

    /// Fits the lease to `longest_election`, the shortest longest election
    /// timeout any voter runs: at most 3/4 of it and more than
    /// [`GUARD_MARGIN`] shorter (as `Timing::check` requires of one node).
    pub(crate) fn limit(&self, longest_election: Duration) {
        let fit = (longest_election * 3 / 4)
            .min(longest_election.saturating_sub(GUARD_MARGIN + Duration::from_millis(1)));
        let ms = fit.as_millis() as u64;
        let old = self.cut_to.swap(ms, std::sync::atomic::Ordering::Relaxed);
        if old != ms {
            if fit < self.length {
                tracing::warn!(lease = ?fit, "a voter runs a shorter election timeout: lease shortened");
            }
            self.with(|_| ());
        }
    }

    /// The lease's length now.
    fn length(&self) -> Duration {
        let cut = self.cut_to.load(std::sync::atomic::Ordering::Relaxed);
        self.length.min(Duration::from_millis(cut))
    }

    /// Handing over (true) gives the lease up and lets this node vote for
    /// its successor; false takes the lease back at the next
    /// acknowledgement.
    pub(crate) fn hand_over(&self, on: bool) {
        self.with(|s| s.handing_over = on);
    }

    /// True while this node leads with a valid lease and is not handing
    /// over: it must not vote for anyone else.
    pub(crate) fn refuses_votes(&self) -> bool {
        self.tx.borrow().is_valid()
    }

    /// Since when this leader has had no quorum acknowledgement: the
    /// acknowledged send instant, or when it began leading; `None` unless
    /// it leads and is not handing over.
    /// Watched: every change is sent, so a waiter holding one receiver
    /// wakes exactly when its deadline may have moved.
    pub(crate) fn unacknowledged_since(&self) -> watch::Receiver<Option<Instant>> {
        self.unacknowledged.subscribe()
    }

    fn unacknowledged_since_in(&self, s: &State) -> Option<Instant> {
        if s.leading.is_none() || s.handing_over {
            return None;
        }
        Some(self.anchor(s).map_or(s.since, |a| a.max(s.since)))
    }

    /// The newest send instant a quorum of every voter set acknowledged in
    /// the term this node leads (`since` + a year when it is alone).
    fn anchor(&self, s: &State) -> Option<Instant> {
        let term = s.leading?;
        let mut anchor: Option<Instant> = None;
        for config in &s.configs {
            let quorum = config.len() / 2 + 1;
            let needed = quorum - usize::from(config.contains(&self.me));
            let at = if needed == 0 {
                s.since + ALONE
            } else {
                let mut sent: Vec<Instant> = config
                    .iter()
                    .filter_map(|id| s.acks.get(id))
                    .filter(|(t, _)| *t == term)
                    .map(|(_, at)| *at)
                    .collect();
                sent.sort_unstable_by(|a, b| b.cmp(a));
                *sent.get(needed - 1)?
            };
            anchor = Some(anchor.map_or(at, |a| a.min(at)));
        }
        anchor
    }

    fn compute(&self, s: &State) -> Lease {
        let term = s.leading.unwrap_or_default();
        let until = if s.handing_over {
            None
        } else {
            self.anchor(s).map(|a| a + self.length())
        };
        Lease {
            term,
            until,
            hard_until: until.map(|u| u + GUARD_MARGIN),
        }
    }
}

fn send_if_changed<T: PartialEq>(tx: &watch::Sender<T>, next: T) {
    tx.send_if_modified(|current| {
        let changed = *current != next;
        *current = next;
        changed
    });
}

/// A network factory whose links note every acknowledged `AppendEntries`
/// in the lease's book.
pub(crate) struct Acking<N> {
    pub(crate) inner: N,
    pub(crate) book: Arc<Book>,
}

impl<N: RaftNetworkFactory<TypeConfig>> RaftNetworkFactory<TypeConfig> for Acking<N> {
    type Network = AckingPeer<N::Network>;

    async fn new_client(&mut self, target: NodeId, node: &NodeInfo) -> Self::Network {
        AckingPeer {
            inner: self.inner.new_client(target, node).await,
            target,
            book: self.book.clone(),
        }
    }
}

/// One link of [`Acking`].
pub(crate) struct AckingPeer<P> {
    inner: P,
    target: NodeId,
    book: Arc<Book>,
}

impl<P: RaftNetwork<TypeConfig>> RaftNetwork<TypeConfig> for AckingPeer<P> {
    fn backoff(&self) -> openraft::network::Backoff {
        self.inner.backoff()
    }

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, NodeInfo, RaftError<NodeId>>> {
        let sent = Instant::now();
        let term = rpc.vote.leader_id().term;
        let committed = rpc.vote.is_committed();
        let answer = self.inner.append_entries(rpc, option).await;
        // Success, a partial success and a log conflict all mean the
        // follower took the message as its leader's (openraft updates the
        // vote before it compares logs).
        if committed
            && matches!(&answer, Ok(r) if !matches!(r, AppendEntriesResponse::HigherVote(_)))
        {
            self.book.ack(self.target, term, sent);
        }
        answer
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, NodeInfo, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.inner.install_snapshot(rpc, option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, NodeInfo, RaftError<NodeId>>> {
        self.inner.vote(rpc, option).await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn voters(ids: &[NodeId]) -> Vec<BTreeSet<NodeId>> {
        vec![ids.iter().copied().collect()]
    }

    #[tokio::test(start_paused = true)]
    async fn the_lease_runs_from_the_newest_send_a_quorum_acknowledged() {
        let book = Book::new(1, Duration::from_millis(300));
        let lease = book.subscribe();
        book.observe(Some(5), voters(&[1, 2, 3, 4, 5]));
        assert_eq!(lease.borrow().until, None, "no acknowledgement yet");
        let t0 = Instant::now();
        book.ack(2, 5, t0);
        assert_eq!(lease.borrow().until, None, "two of five is no quorum");
        tokio::time::advance(Duration::from_millis(50)).await;
        let t1 = Instant::now();
        book.ack(3, 5, t1);
        assert_eq!(
            lease.borrow().until,
            Some(t1.min(t0) + Duration::from_millis(300))
        );
        // A third follower's newer acknowledgement moves the anchor to the
        // second-newest: the quorum's oldest.
        tokio::time::advance(Duration::from_millis(50)).await;
        book.ack(4, 5, Instant::now());
        assert_eq!(lease.borrow().until, Some(t1 + Duration::from_millis(300)));
        assert_eq!(
            lease.borrow().hard_until,
            Some(t1 + Duration::from_millis(320))
        );
        assert!(book.refuses_votes());
        // An acknowledgement from an older term counts for nothing; an
        // older send instant never moves the lease back.
        book.ack(5, 4, Instant::now());
        book.ack(4, 5, t0);
        assert_eq!(lease.borrow().until, Some(t1 + Duration::from_millis(300)));
        tokio::time::advance(Duration::from_millis(300)).await;
        assert!(!lease.borrow().is_valid());
        assert!(!book.refuses_votes(), "an expired lease refuses nothing");
    }

    #[tokio::test(start_paused = true)]
    async fn a_voter_with_a_shorter_election_timeout_shortens_the_lease() {
        let book = Book::new(1, Duration::from_millis(300));
        let lease = book.subscribe();
        book.observe(Some(2), voters(&[1, 2, 3]));
        let sent = Instant::now();
        book.ack(2, 2, sent);
        assert_eq!(
            lease.borrow().until,
            Some(sent + Duration::from_millis(300))
        );
        // A follower runs the fast profile (160 ms): 120 ms at most.
        book.limit(Duration::from_millis(160));
        assert_eq!(
            lease.borrow().until,
            Some(sent + Duration::from_millis(120))
        );
        // Back to the default (400 ms): this node's own 300 ms again.
        book.limit(Duration::from_millis(400));
        assert_eq!(
            lease.borrow().until,
            Some(sent + Duration::from_millis(300))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn handing_over_or_losing_leadership_gives_the_lease_up() {
        let book = Book::new(1, Duration::from_millis(300));
        let lease = book.subscribe();
        book.observe(Some(2), voters(&[1, 2, 3]));
        book.ack(2, 2, Instant::now());
        assert!(lease.borrow().is_valid());
        book.hand_over(true);
        assert!(!lease.borrow().is_valid());
        assert!(!book.refuses_votes());
        assert_eq!(*book.unacknowledged_since().borrow(), None);
        book.hand_over(false);
        assert!(lease.borrow().is_valid());
        book.observe(None, voters(&[1, 2, 3]));
        assert_eq!(lease.borrow().until, None);
        book.observe(Some(3), voters(&[1, 2, 3]));
        assert_eq!(
            lease.borrow().until,
            None,
            "the old term's acknowledgements are gone"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_joint_change_needs_a_quorum_of_both_sets_and_one_voter_needs_none() {
        let book = Book::new(1, Duration::from_millis(300));
        let lease = book.subscribe();
        book.observe(Some(1), vec![[1, 2, 3].into(), [1, 4, 5].into()]);
        book.ack(2, 1, Instant::now());
        assert_eq!(
            lease.borrow().until,
            None,
            "no quorum in the second set yet"
        );
        book.ack(4, 1, Instant::now());
        assert!(lease.borrow().is_valid());
        book.observe(Some(1), voters(&[1]));
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert!(
            lease.borrow().is_valid(),
            "a lone voter needs no acknowledgement"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_leader_unacknowledged_counts_from_its_election_or_last_quorum() {
        let book = Book::new(1, Duration::from_millis(300));
        let mut since = book.unacknowledged_since();
        book.observe(Some(2), voters(&[1, 2, 3]));
        let began = Instant::now();
        assert_eq!(*since.borrow_and_update(), Some(began));
        tokio::time::advance(Duration::from_millis(100)).await;
        let sent = Instant::now();
        book.ack(3, 2, sent);
        assert!(since.has_changed().unwrap());
        assert_eq!(*since.borrow_and_update(), Some(sent));
        book.observe(None, voters(&[1, 2, 3]));
        assert_eq!(*since.borrow_and_update(), None);
    }

    /// The fence waits on this watch alone: it must move whenever the
    /// instant does, the lease unchanged or not, and only then.
    #[tokio::test(start_paused = true)]
    async fn the_unacknowledged_instant_is_sent_even_when_the_lease_stays() {
        let book = Book::new(1, Duration::from_millis(300));
        let lease = book.subscribe();
        let mut since = book.unacknowledged_since();
        book.observe(Some(2), voters(&[1, 2, 3]));
        since.borrow_and_update();
        // Taken back before any acknowledgement: no lease either way.
        book.hand_over(true);
        assert_eq!(*since.borrow_and_update(), None);
        tokio::time::advance(Duration::from_millis(50)).await;
        book.hand_over(false);
        assert!(since.has_changed().unwrap());
        assert!(since.borrow_and_update().is_some());
        assert_eq!(lease.borrow().until, None);
        // A membership change restarts the count, the lease still none.
        tokio::time::advance(Duration::from_millis(50)).await;
        book.observe(Some(2), voters(&[1, 2, 3, 4]));
        assert_eq!(*since.borrow_and_update(), Some(Instant::now()));
        // A duplicate acknowledgement changes nothing, and says nothing.
        let sent = Instant::now();
        book.ack(3, 2, sent);
        book.ack(4, 2, sent);
        since.borrow_and_update();
        book.ack(4, 2, sent);
        assert!(!since.has_changed().unwrap());
    }
}
