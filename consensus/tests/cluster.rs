#![allow(clippy::unwrap_used)]
//! A 3-node cluster on the in-memory transport, with real on-disk storage.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel_consensus::mem::Router;
use keel_consensus::{Consensus, NodeId, NodeInfo, ProposeError, Settings};
use keel_model::{ClusterCommand, Command, Pool};

struct Cluster {
    router: Router,
    dir: tempfile::TempDir,
    nodes: BTreeMap<NodeId, Consensus>,
    settings: Settings,
}

fn info(id: NodeId) -> NodeInfo {
    NodeInfo {
        name: format!("n{id}"),
        cluster_addr: format!("mem:{id}"),
        admin_addr: String::new(),
        gossip_addr: String::new(),
    }
}

fn pool(name: &str) -> ClusterCommand {
    let mut pool: Pool = keel_model::Document::parse_spec(&format!(
        "pools: [{{ name: {name}, members: [{{ address: 127.0.0.1:1 }}] }}]"
    ))
    .unwrap()
    .pools
    .into_values()
    .next()
    .unwrap();
    pool.name = name.into();
    ClusterCommand::Spec(Command::UpsertPool(Box::new(pool)))
}

impl Cluster {
    async fn new(settings: Settings) -> Self {
        Cluster {
            router: Router::default(),
            dir: tempfile::tempdir().unwrap(),
            nodes: BTreeMap::new(),
            settings,
        }
    }

    async fn start(&mut self, id: NodeId) -> Consensus {
        let dir = self.dir.path().join(id.to_string());
        let node = Consensus::start(id, &dir, &self.settings, self.router.network(id))
            .await
            .unwrap();
        self.router.register(id, node.clone());
        self.nodes.insert(id, node.clone());
        node
    }

    async fn crash(&mut self, id: NodeId) {
        self.router.unregister(id);
        if let Some(node) = self.nodes.remove(&id) {
            node.shutdown().await;
        }
    }

    /// Bootstrap node 1 and admit 2 and 3 as voters.
    async fn three(settings: Settings) -> Self {
        let mut c = Cluster::new(settings).await;
        let n1 = c.start(1).await;
        assert!(n1.bootstrap(info(1)).await.unwrap());
        c.wait_leader(&[1]).await;
        for id in [2, 3] {
            c.start(id).await;
            assert!(n1.admit(id, info(id), 5).await.unwrap());
        }
        c
    }

    async fn wait_leader(&self, among: &[NodeId]) -> NodeId {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            for id in among {
                if let Some(n) = self.nodes.get(id) {
                    let l = n.leadership().borrow().clone();
                    if l.is_leader {
                        return *id;
                    }
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no leader among {among:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A node among `among` that leads with a valid lease. A leader found
    /// by [`Cluster::wait_leader`] may still lose its first term (its
    /// fence steps it down when a new member's answers are slow on a
    /// loaded machine), and its lease would then never become valid.
    async fn wait_lease(&self, among: &[NodeId]) -> NodeId {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let leader = self.wait_leader(among).await;
            if self.nodes[&leader].lease().borrow().is_valid() {
                return leader;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no leader with a valid lease among {among:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Propose through whichever node leads, following NotLeader.
    async fn propose(&self, among: &[NodeId], cmd: ClusterCommand) -> u64 {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let leader = self.wait_leader(among).await;
            match self.nodes[&leader].propose(cmd.clone()).await {
                Ok(index) => return index,
                Err(ProposeError::NotLeader { .. }) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Err(e) => panic!("propose failed: {e}"),
            }
        }
    }

    async fn all_applied(&self, ids: &[NodeId], index: u64) {
        for id in ids {
            assert!(
                self.nodes[id]
                    .wait_applied(index, Duration::from_secs(10))
                    .await,
                "node {id} did not apply {index}"
            );
        }
    }

    /// Stop every node, start each again from its data directory, and wait
    /// until they have a leader and have applied `last`.
    async fn restart_all(&mut self, last: u64) {
        for id in [1, 2, 3] {
            self.crash(id).await;
        }
        for id in [1, 2, 3] {
            self.start(id).await;
        }
        self.wait_leader(&[1, 2, 3]).await;
        self.all_applied(&[1, 2, 3], last).await;
    }

    fn pools(&self, id: NodeId) -> Vec<String> {
        self.nodes[&id]
            .applied()
            .borrow()
            .state
            .spec
            .pools
            .keys()
            .cloned()
            .collect()
    }
}

#[tokio::test]
async fn replicates_to_every_node() {
    let c = Cluster::three(Settings::default()).await;
    let index = c.propose(&[1, 2, 3], pool("app")).await;
    c.all_applied(&[1, 2, 3], index).await;
    for id in [1, 2, 3] {
        assert_eq!(c.pools(id), vec!["app"]);
        assert_eq!(c.nodes[&id].members().len(), 3);
        assert!(c.nodes[&id].members().iter().all(|m| m.voter));
    }
    // A follower refuses with the leader's identity, so callers can forward.
    let leader = c.wait_leader(&[1, 2, 3]).await;
    let follower = [1, 2, 3].into_iter().find(|i| *i != leader).unwrap();
    match c.nodes[&follower].propose(pool("x")).await {
        Err(ProposeError::NotLeader {
            leader: Some((id, _)),
        }) => assert_eq!(id, leader),
        other => panic!("expected NotLeader, got {other:?}"),
    }
    // A refused command is reported and changes nothing.
    let leader_node = &c.nodes[&leader];
    let refused = leader_node
        .propose(ClusterCommand::Spec(Command::RemovePool {
            name: "nope".into(),
        }))
        .await;
    assert!(
        matches!(refused, Err(ProposeError::Refused(_))),
        "{refused:?}"
    );
}

#[tokio::test]
async fn a_command_above_the_cluster_version_never_reaches_the_log() {
    let c = Cluster::three(Settings::default()).await;
    let leader = c.wait_leader(&[1, 2, 3]).await;
    let node = &c.nodes[&leader];
    let drain = ClusterCommand::DrainNode {
        id: 2,
        drained: true,
    };
    let before = node.applied().borrow().index;
    match node.propose(drain.clone()).await {
        Err(ProposeError::NeedsVersion {
            needs: 2,
            version: 1,
        }) => {}
        other => panic!("expected NeedsVersion, got {other:?}"),
    }
    assert_eq!(node.applied().borrow().index, before, "it reached the log");
    let index = node
        .propose(ClusterCommand::SetVersion { version: 2 })
        .await
        .unwrap();
    c.all_applied(&[1, 2, 3], index).await;
    let index = node.propose(drain).await.unwrap();
    c.all_applied(&[1, 2, 3], index).await;
    for id in [1, 2, 3] {
        let state = c.nodes[&id].applied().borrow().state.clone();
        assert_eq!(state.version(), 2);
        assert!(state.drained_nodes.contains(&2));
    }
}

#[tokio::test]
async fn survives_leader_loss_and_the_old_leader_catches_up() {
    let mut c = Cluster::three(Settings::default()).await;
    let first = c.propose(&[1, 2, 3], pool("a")).await;
    c.all_applied(&[1, 2, 3], first).await;
    let leader = c.wait_leader(&[1, 2, 3]).await;
    c.crash(leader).await;
    let rest: Vec<NodeId> = [1, 2, 3].into_iter().filter(|i| *i != leader).collect();
    let index = c.propose(&rest, pool("b")).await;
    c.all_applied(&rest, index).await;
    // Restart from disk: it has everything it acknowledged and catches up.
    c.start(leader).await;
    c.all_applied(&[leader], index).await;
    assert_eq!(c.pools(leader), vec!["a", "b"]);
}

#[tokio::test]
async fn partition_minority_cannot_write_and_heals() {
    let c = Cluster::three(Settings::default()).await;
    let leader = c.wait_leader(&[1, 2, 3]).await;
    // Isolate the leader: it cannot commit; the majority elects a new one.
    c.router.isolate(leader);
    let isolated = c.nodes[&leader].clone();
    let stuck = tokio::time::timeout(Duration::from_secs(2), isolated.propose(pool("lost"))).await;
    assert!(
        !matches!(stuck, Ok(Ok(_))),
        "an isolated leader must not commit: {stuck:?}"
    );
    let rest: Vec<NodeId> = [1, 2, 3].into_iter().filter(|i| *i != leader).collect();
    let index = c.propose(&rest, pool("kept")).await;
    c.all_applied(&rest, index).await;
    c.router.heal();
    c.all_applied(&[leader], index).await;
    for id in [1, 2, 3] {
        assert_eq!(c.pools(id), vec!["kept"], "node {id}");
    }
}

#[tokio::test]
async fn restart_of_the_whole_cluster_keeps_every_entry() {
    let mut c = Cluster::three(Settings::default()).await;
    let mut last = 0;
    for i in 0..20 {
        last = c.propose(&[1, 2, 3], pool(&format!("p{i:02}"))).await;
    }
    c.all_applied(&[1, 2, 3], last).await;
    c.restart_all(last).await;
    for id in [1, 2, 3] {
        assert_eq!(c.pools(id).len(), 20, "node {id}");
    }
}

#[tokio::test]
async fn a_lagging_node_gets_a_snapshot() {
    let settings = Settings {
        snapshot_every: 10,
        ..Settings::default()
    };
    let mut c = Cluster::three(settings).await;
    // Node 3 misses many entries; the log behind the snapshot gets purged.
    let leader = c.wait_leader(&[1, 2, 3]).await;
    let lagging = [1, 2, 3].into_iter().find(|i| *i != leader).unwrap();
    c.crash(lagging).await;
    let rest: Vec<NodeId> = [1, 2, 3].into_iter().filter(|i| *i != lagging).collect();
    let mut last = 0;
    for i in 0..40 {
        last = c.propose(&rest, pool(&format!("p{i:02}"))).await;
    }
    c.all_applied(&rest, last).await;
    let leader_node = &c.nodes[&c.wait_leader(&rest).await];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while leader_node.raft().metrics().borrow().purged.is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "leader never purged its log"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let built = &leader_node.snapshots();
    assert!(built.built.load(Relaxed) >= 3, "{built:?}");
    assert!(built.bytes.load(Relaxed) > 1000, "{built:?}");
    assert!(built.build_micros.load(Relaxed) > 0, "{built:?}");
    let restarted = c.start(lagging).await;
    c.all_applied(&[lagging], last).await;
    assert_eq!(c.pools(lagging).len(), 40);
    assert!(
        restarted.raft().metrics().borrow().snapshot.is_some(),
        "no snapshot installed"
    );
    // The installed snapshot's size is counted; none was built there.
    let installed = restarted.snapshots();
    assert!(installed.bytes.load(Relaxed) > 1000, "{installed:?}");
    assert_eq!(installed.built.load(Relaxed), 0, "{installed:?}");
}

#[tokio::test]
async fn nodes_beyond_the_voter_cap_stay_learners_and_still_replicate() {
    let mut c = Cluster::new(Settings::default()).await;
    let n1 = c.start(1).await;
    assert!(n1.bootstrap(info(1)).await.unwrap());
    c.wait_leader(&[1]).await;
    c.start(2).await;
    assert!(
        n1.admit(2, info(2), 2).await.unwrap(),
        "second node becomes a voter"
    );
    c.start(3).await;
    assert!(
        !n1.admit(3, info(3), 2).await.unwrap(),
        "third stays a learner"
    );
    let index = c.propose(&[1, 2], pool("app")).await;
    c.all_applied(&[1, 2, 3], index).await;
    assert_eq!(c.pools(3), vec!["app"]);
    let roles: Vec<(NodeId, bool)> = n1.members().iter().map(|m| (m.id, m.voter)).collect();
    assert_eq!(roles, [(1, true), (2, true), (3, false)]);
    // Removing a voter promotes the learner in its place.
    n1.remove(2).await.unwrap();
    let roles: Vec<(NodeId, bool)> = n1.members().iter().map(|m| (m.id, m.voter)).collect();
    assert_eq!(roles, [(1, true), (3, true)]);
}

#[tokio::test]
async fn an_isolated_leader_loses_its_lease_before_anyone_else_leads() {
    for settings in [Settings::default(), Settings::fast()] {
        let c = Cluster::three(settings.clone()).await;
        let old = c.wait_lease(&[1, 2, 3]).await;
        let mut lease = c.nodes[&old].lease();
        // The furthest the old leader's lease ever reached (it gives the
        // lease up when it steps down, unacknowledged).
        let furthest = Arc::new(Mutex::new(lease.borrow().until));
        let watcher = tokio::spawn({
            let furthest = furthest.clone();
            async move {
                while lease.changed().await.is_ok() {
                    let until = lease.borrow().until;
                    let mut f = furthest.lock().unwrap();
                    *f = (*f).max(until);
                }
            }
        });
        c.router.isolate(old);
        let cut = tokio::time::Instant::now();
        let rest: Vec<NodeId> = [1, 2, 3].into_iter().filter(|i| *i != old).collect();
        let new = c.wait_leader(&rest).await;
        let elected = tokio::time::Instant::now();
        watcher.abort();
        let until = furthest.lock().unwrap().expect("lease was held");
        assert!(
            until + (settings.election_timeout.1 - settings.lease) / 2 <= elected,
            "old lease ran to {:?} after the cut but node {new} led after {:?}",
            until - cut,
            elected - cut
        );
        eprintln!(
            "lease ran {:?} past the cut; node {new} led {:?} after it",
            until.saturating_duration_since(cut),
            elected - cut
        );
        assert!(
            elected - cut < Duration::from_secs(2),
            "failover took {:?}",
            elected - cut
        );
        c.router.heal();
    }
}

#[tokio::test]
async fn step_down_hands_leadership_to_a_follower() {
    let c = Cluster::three(Settings::default()).await;
    let old = c.wait_leader(&[1, 2, 3]).await;
    let started = tokio::time::Instant::now();
    c.nodes[&old].step_down(Duration::from_secs(5)).await;
    let rest: Vec<NodeId> = [1, 2, 3].into_iter().filter(|i| *i != old).collect();
    let new = c.wait_leader(&rest).await;
    let took = started.elapsed();
    assert_ne!(new, old);
    assert!(took < Duration::from_secs(2), "hand-off took {took:?}");
    // It stays out of elections until told otherwise, then rejoins.
    assert!(!c.nodes[&old].leadership().borrow().is_leader);
    c.nodes[&old].stand_again();
    let index = c.propose(&[1, 2, 3], pool("after")).await;
    c.all_applied(&[1, 2, 3], index).await;
    eprintln!("hand-off took {took:?}");
}

/// A leader drained steps down; undrained, it stands again by its own
/// timer: here the only node that may lead once the new leader is lost.
#[tokio::test]
async fn an_undrained_node_stands_for_election_again() {
    let c = Cluster::three(Settings::default()).await;
    let old = c.wait_leader(&[1, 2, 3]).await;
    c.nodes[&old].set_drained(true);
    c.nodes[&old].step_down(Duration::from_secs(5)).await;
    let rest: Vec<NodeId> = [1, 2, 3].into_iter().filter(|i| *i != old).collect();
    let new = c.wait_leader(&rest).await;
    let other = rest.into_iter().find(|i| *i != new).unwrap();
    c.nodes[&other].set_drained(true);
    c.nodes[&old].set_drained(false);
    c.router.isolate(new);
    assert_eq!(c.wait_leader(&[old, other]).await, old);
    c.router.heal();
}

/// 20 ms ± 10 ms each way between nodes (netem's `delay 20ms 10ms`): the
/// default timing keeps one leader and its lease the whole time.
#[tokio::test]
async fn a_follower_asked_to_stand_takes_over_without_waiting_for_its_timer() {
    let c = Cluster::three(Settings::default()).await;
    let old = c.wait_leader(&[1, 2, 3]).await;
    let index = c.propose(&[1, 2, 3], pool("app")).await;
    c.all_applied(&[1, 2, 3], index).await;
    // The old leader's own lease (openraft refuses votes while it holds)
    // dates from its election: let it run out, as on a cluster that has
    // been up a while.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let successors = c.nodes[&old].successors();
    assert_eq!(successors.len(), 2, "{successors:?}");
    let next = successors[0];
    let other = successors[1];
    let term = c.nodes[&old].stop_leading().unwrap();
    // A stale or foreign request changes nothing, nor does one to a
    // drained node.
    assert!(!c.nodes[&next].elect_now(term + 7).await);
    c.nodes[&other].set_drained(true);
    assert!(!c.nodes[&other].elect_now(term).await);
    let started = tokio::time::Instant::now();
    assert!(c.nodes[&next].elect_now(term).await);
    let new = c.wait_leader(&[next, other]).await;
    let took = started.elapsed();
    eprintln!("the asked follower led {took:?} after it was asked");
    assert_eq!(new, next);
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert!(!c.nodes[&old].leadership().borrow().is_leader);
    c.nodes[&other].set_drained(false);
    c.nodes[&old].stand_again();
    let index = c.propose(&[1, 2, 3], pool("after")).await;
    c.all_applied(&[1, 2, 3], index).await;
}

/// The leader cannot reach one follower, which still reaches it: that
/// follower's elections must not unseat a leader whose lease the other
/// follower keeps up (openraft 0.9 alone grants the vote once the leader's
/// own vote is an election timeout old, and the leadership moves).
#[tokio::test]
async fn a_leader_with_a_valid_lease_refuses_votes_so_a_one_way_cut_changes_nothing() {
    let c = Cluster::three(Settings::default()).await;
    let old = c.wait_leader(&[1, 2, 3]).await;
    let term = c.nodes[&old].leadership().borrow().term;
    let unheard = if old == 1 { 2 } else { 1 };
    c.router.cut(old, unheard);
    let started = tokio::time::Instant::now();
    let mut samples = 0;
    while started.elapsed() < Duration::from_secs(3) {
        let holders: Vec<NodeId> = c
            .nodes
            .iter()
            .filter(|(_, n)| n.lease().borrow().is_valid())
            .map(|(id, _)| *id)
            .collect();
        assert!(holders.len() <= 1, "two leases at once: {holders:?}");
        let l = c.nodes[&old].leadership().borrow().clone();
        assert!(
            l.is_leader && l.term == term,
            "node {old} lost the leadership of term {term} after {:?}: {l:?}",
            started.elapsed()
        );
        samples += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(c.nodes[&old].lease().borrow().is_valid());
    eprintln!("{samples} samples: node {old} led term {term} throughout");
    // The cut-off follower never asked for a real vote (no quorum said it
    // would give one), so its term did not climb, and healing the cut
    // disturbs nothing: without pre-vote the leader met its higher term
    // at the next heartbeat and stepped down.
    assert_eq!(c.nodes[&unheard].leadership().borrow().term, term);
    c.router.heal();
    let healed = tokio::time::Instant::now();
    while healed.elapsed() < Duration::from_secs(2) {
        let l = c.nodes[&old].leadership().borrow().clone();
        assert!(
            l.is_leader && l.term == term,
            "node {old} lost the leadership of term {term} {:?} after the heal: {l:?}",
            healed.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Followers hear the leader but their answers never come back: its lease
/// lapses (its VIPs go) and, an election timeout later, it steps down so
/// that a follower can lead; otherwise no node would ever hold the VIPs.
#[tokio::test]
async fn a_leader_without_acknowledgements_steps_down_for_a_follower() {
    let settings = Settings::default();
    let c = Cluster::three(settings.clone()).await;
    let old = c.wait_lease(&[1, 2, 3]).await;
    c.router.deafen(old);
    let deafened = tokio::time::Instant::now();
    // No acknowledgement comes any more, so the lease ends where it stood.
    let until = c.nodes[&old].lease().borrow().until.unwrap();
    let lapsed = until - deafened;
    let rest: Vec<NodeId> = [1, 2, 3].into_iter().filter(|i| *i != old).collect();
    let new = c.wait_leader(&rest).await;
    let took = deafened.elapsed();
    eprintln!("lease lapsed {lapsed:?} after the answers stopped; node {new} led after {took:?}");
    assert!(lapsed <= settings.lease, "{lapsed:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    c.router.heal();
    // The old leader follows and writes go through.
    let index = c.propose(&[1, 2, 3], pool("after")).await;
    c.all_applied(&[1, 2, 3], index).await;
}

#[tokio::test]
async fn jitter_changes_no_leader_and_keeps_the_lease() {
    let soak = std::env::var("KEEL_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(15);
    let c = Cluster::three(Settings::default()).await;
    let leader = c.wait_leader(&[1, 2, 3]).await;
    c.router
        .set_jitter(Duration::from_millis(20), Duration::from_millis(10));
    let term = c.nodes[&leader].leadership().borrow().term;
    let lease = c.nodes[&leader].lease();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(soak);
    let mut lapses = 0;
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
        if !lease.borrow().is_valid() {
            lapses += 1;
        }
        for id in [1, 2, 3] {
            let l = c.nodes[&id].leadership().borrow().clone();
            assert_eq!(l.term, term, "node {id} saw a new term under jitter");
        }
    }
    assert_eq!(lapses, 0, "the lease lapsed {lapses} times (10 ms checks)");
}

/// Snapshots under churn: with a snapshot every few entries, a follower is
/// crashed, falls behind the leader's purged log, and restarts into a
/// snapshot install while the leader keeps writing (and so building
/// snapshots); 200 rounds. Every node then restarts cleanly from its data
/// directory and all hold the same state.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn snapshots_installed_while_others_are_built_leave_every_node_restartable() {
    let settings = Settings {
        snapshot_every: 4,
        ..Settings::default()
    };
    let mut c = Cluster::three(settings).await;
    let leader = c.wait_leader(&[1, 2, 3]).await;
    let followers: Vec<NodeId> = [1, 2, 3].into_iter().filter(|i| *i != leader).collect();
    let mut last = 0;
    // A pool per write, 40 names over and over: the state stays small, so
    // the rounds go fast, and every write still changes it.
    let write = |n: u64| {
        let mut cmd = pool(&format!("p{:02}", n % 40));
        if let ClusterCommand::Spec(Command::UpsertPool(p)) = &mut cmd {
            p.connect_timeout = Duration::from_millis(n);
        }
        cmd
    };
    let mut writes = 0;
    for round in 0..200 {
        let lagging = followers[round % 2];
        c.crash(lagging).await;
        let rest: Vec<NodeId> = [1, 2, 3].into_iter().filter(|i| *i != lagging).collect();
        for _ in 0..5 {
            writes += 1;
            last = c.propose(&rest, write(writes)).await;
        }
        c.start(lagging).await;
        // Writes go on while it catches up (by snapshot, mostly).
        for _ in 0..2 {
            writes += 1;
            last = c.propose(&rest, write(writes)).await;
        }
    }
    c.all_applied(&[1, 2, 3], last).await;
    let state = |c: &Cluster, id: NodeId| {
        serde_json::to_string(&*c.nodes[&id].applied().borrow().state).unwrap()
    };
    let expected = state(&c, leader);
    for id in [1, 2, 3] {
        assert!(state(&c, id) == expected, "node {id} differs");
    }
    // Every data directory opens again, with the same state.
    c.restart_all(last).await;
    for id in [1, 2, 3] {
        assert!(
            state(&c, id) == expected,
            "node {id} differs after a restart"
        );
    }
}
