//! Wiring of gossip: start it with the cluster's key once the node is a
//! member, publish this node's report, and keep [`Control::gossip`] current.
//!
//! The gossip key derives (HKDF-SHA256, label `keel gossip key v2`) from
//! the cluster secret in the replicated state, which every member receives
//! with it; a host without a node certificate never sees it. A cluster from
//! before the secret derived it from the CA key: until the leader sets a
//! secret, that key is used, and for [`ROLL`] after a node first seals with
//! a new key it still opens the one before, so gossip keeps running while
//! the entry that changes it (`keel secrets rotate`) reaches every node.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use keel_dataplane::Dataplane;
use keel_gossip::{ClusterView, GossipConfig, MemberView, Report};
use keel_web_core::MemberHealth;
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use crate::cluster::Control;

/// Time between gossip rounds; a stopped node is judged dead after about
/// six of them.
const INTERVAL: Duration = Duration::from_millis(100);
/// How often this node's report is refreshed and check duties are revised.
const PUBLISH_EVERY: Duration = Duration::from_millis(500);
/// How many live nodes actively check each pool member; the others follow
/// their gossiped verdict, so checks on a backend do not grow with the
/// cluster.
const CHECKERS: usize = 2;

/// How long a node still opens datagrams sealed with the key it replaced:
/// every live node applies the entry that changes it within milliseconds.
const ROLL: Duration = Duration::from_secs(10);

pub use crate::secrets::{gossip_key, legacy_gossip_key};

/// Gossips until `stop`.
pub(crate) async fn run(
    control: Arc<Control>,
    dataplane: Arc<Dataplane>,
    listen: SocketAddr,
    mut stop: watch::Receiver<bool>,
) {
    let mut applied = control.consensus().applied();
    // A joiner is admitted before it has applied the state that names the
    // cluster (and its secret): gossip starts once it has.
    let identity = loop {
        if let Some(identity) = applied.borrow_and_update().state.identity.clone() {
            break identity;
        }
        tokio::select! {
            r = applied.changed() => if r.is_err() { return },
            _ = stop.wait_for(|s| *s) => return,
        }
    };
    let advertise = control.me.gossip_addr.parse().unwrap_or(listen);
    let config = GossipConfig {
        node_name: control.me.name.clone(),
        cluster_id: identity.cluster_id.clone(),
        listen,
        advertise,
        seeds: peers(&control),
        key: key_of(&applied.borrow().state),
        also_accept: identity
            .legacy_key()
            .map(legacy_gossip_key)
            .into_iter()
            .collect(),
        interval: INTERVAL,
    };
    let mut key = config.key;
    // Until when the key before `key` still opens.
    let mut rolling = Some(tokio::time::Instant::now() + ROLL);
    let gossip = match keel_gossip::spawn_gossip(config).await {
        Ok(g) => g,
        Err(e) => {
            tracing::error!(error = %e, "gossip did not start; member health is this node's own view only");
            return;
        }
    };
    tracing::info!(addr = %listen, "gossip running");
    let mut view = gossip.view();
    let mut tick = tokio::time::interval(PUBLISH_EVERY);
    loop {
        tokio::select! {
            r = stop.changed() => if r.is_err() || *stop.borrow() { break },
            _ = tick.tick() => {
                if rolling.is_some_and(|until| tokio::time::Instant::now() >= until) {
                    gossip.set_keys(&key, &[]);
                    rolling = None;
                }
                control
                    .gossip_rejected
                    .store(gossip.rejected(), std::sync::atomic::Ordering::Relaxed);
                assign_checks(&control.me.name, &dataplane, &view.borrow());
                gossip.publish(&report(&control, &dataplane)).await;
                // Members that joined after this node started are not seeds.
                let known = view.borrow().clone();
                for (name, addr) in members(&control) {
                    if !known.get(&name).is_some_and(|p| p.live) {
                        gossip.contact(addr);
                    }
                }
            }
            changed = applied.changed() => {
                if changed.is_err() { break }
                let next = key_of(&applied.borrow_and_update().state);
                if next != key {
                    tracing::info!("the cluster secret changed: sealing gossip with the new key");
                    gossip.set_keys(&next, &[key]);
                    key = next;
                    rolling = Some(tokio::time::Instant::now() + ROLL);
                }
            }
            changed = view.changed() => {
                if changed.is_err() { break }
                let v = view.borrow_and_update().clone();
                control.gossip.send_replace(v);
            }
        }
    }
    gossip.shutdown().await;
}

/// The key `state` seals gossip with: from its secret, or (a cluster from
/// before secrets) from its CA key.
fn key_of(state: &keel_model::ClusterState) -> [u8; 32] {
    match (&state.secret, &state.identity) {
        (Some(secret), _) => gossip_key(secret),
        (None, Some(identity)) => identity.legacy_key().map_or([0; 32], legacy_gossip_key),
        (None, None) => [0; 32],
    }
}

fn members(control: &Control) -> Vec<(String, SocketAddr)> {
    control
        .consensus()
        .members()
        .into_iter()
        .filter(|m| m.info.name != control.me.name)
        .filter_map(|m| Some((m.info.name, m.info.gossip_addr.parse().ok()?)))
        .collect()
}

fn peers(control: &Control) -> Vec<SocketAddr> {
    members(control).into_iter().map(|(_, a)| a).collect()
}

fn report(control: &Control, dataplane: &Dataplane) -> Report {
    Report {
        ready: control.ready(),
        applied_version: control.consensus().applied().borrow().index,
        connections: dataplane.active_connections() as u64,
        vips: control.held_vips.borrow().iter().cloned().collect(),
        traffic: control.traffic.latest(),
        cluster_version: keel_model::CLUSTER_VERSION,
        timing: Some(control.timing),
        members: dataplane
            .members()
            .into_iter()
            .map(|m| {
                (
                    format!("{}/{}", m.pool, m.address),
                    MemberView {
                        up: m.healthy,
                        check_ms: m.last_check_ms,
                        checked: m.has_check && m.checked_here,
                        disabled: !m.enabled,
                        outstanding: m.outstanding,
                    },
                )
            })
            .collect(),
    }
}

/// The `k` nodes of `live` that check `member`: highest rendezvous hash of
/// (node, member) first, so every node computes the same choice from the
/// same live set, and a node leaving moves only its own members.
pub(crate) fn checkers<'a>(live: &[&'a str], member: &str, k: usize) -> Vec<&'a str> {
    let mut ranked: Vec<(u64, &str)> = live
        .iter()
        .map(|node| {
            let mut h = Sha256::new();
            h.update(node.as_bytes());
            h.update([0]);
            h.update(member.as_bytes());
            let digest = h.finalize();
            let mut first = [0u8; 8];
            first.copy_from_slice(&digest[..8]);
            (u64::from_be_bytes(first), *node)
        })
        .collect();
    ranked.sort_unstable_by(|a, b| b.cmp(a));
    ranked.into_iter().take(k).map(|(_, n)| n).collect()
}

/// Decides, member by member, whether this node checks it or follows the
/// chosen checkers. A follower marks a member down only when every checker
/// that reported says down (one checker's own network trouble does not take
/// a member out), and checks it itself when no checker has reported.
fn assign_checks(me: &str, dataplane: &Dataplane, view: &ClusterView) {
    let mut live: Vec<&str> = view
        .iter()
        .filter(|(_, p)| p.live)
        .map(|(n, _)| n.as_str())
        .collect();
    if !live.contains(&me) {
        live.push(me);
    }
    for m in dataplane.members().into_iter().filter(|m| m.has_check) {
        let key = format!("{}/{}", m.pool, m.address);
        let chosen = checkers(&live, &key, CHECKERS);
        let verdicts: Vec<bool> = chosen
            .iter()
            .filter(|c| **c != me)
            .filter_map(|c| view.get(*c)?.report.as_ref()?.members.get(&key))
            .filter(|v| v.checked)
            .map(|v| v.up)
            .collect();
        if chosen.contains(&me) || verdicts.is_empty() {
            dataplane.set_checking(&m.pool, m.address, true);
        } else {
            dataplane.set_checking(&m.pool, m.address, false);
            dataplane.set_peer_health(&m.pool, m.address, verdicts.iter().any(|up| *up));
        }
    }
}

/// Every pool member with each live node's verdict on it.
pub(crate) fn member_health(view: &ClusterView) -> Vec<MemberHealth> {
    let mut out: BTreeMap<String, MemberHealth> = BTreeMap::new();
    for (node, peer) in view.iter().filter(|(_, p)| p.live) {
        let Some(report) = &peer.report else { continue };
        for (key, m) in &report.members {
            let Some((pool, address)) = key.split_once('/') else {
                continue;
            };
            let entry = out.entry(key.clone()).or_insert_with(|| MemberHealth {
                pool: pool.to_owned(),
                address: address.to_owned(),
                views: BTreeMap::new(),
            });
            let word = match (m.disabled, m.outstanding > 0, m.up) {
                (true, true, _) => "draining",
                (true, false, _) => "disabled",
                (false, _, true) => "up",
                (false, _, false) => "down",
            };
            entry.views.insert(node.clone(), word.to_owned());
        }
    }
    out.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::checkers;

    #[test]
    fn checkers_are_stable_and_move_only_with_their_node() {
        let live = ["n1", "n2", "n3", "n4", "n5"];
        let mut per_node = std::collections::BTreeMap::new();
        for i in 0..200 {
            let member = format!("app/10.0.0.{i}:80");
            let chosen = checkers(&live, &member, 2);
            assert_eq!(chosen.len(), 2);
            assert_eq!(chosen, checkers(&live, &member, 2), "deterministic");
            for n in &chosen {
                *per_node.entry(*n).or_insert(0) += 1;
            }
            // Without n5, members n5 did not check keep their checkers.
            let fewer = checkers(&live[..4], &member, 2);
            if !chosen.contains(&"n5") {
                assert_eq!(chosen, fewer);
            }
        }
        // 400 duties over 5 nodes: each gets a fair share.
        for (n, count) in per_node {
            assert!((50..=110).contains(&count), "{n} checks {count} members");
        }
    }

    #[test]
    fn the_gossip_key_follows_the_cluster_secret_not_the_ca_key() {
        let mut state = keel_model::ClusterState {
            identity: Some(keel_model::ClusterIdentity {
                cluster_id: "c".into(),
                ca_cert_pem: String::new(),
                ca_key_pem: "ca key".into(),
                ca_key_moved: false,
                ca_rotation: None,
            }),
            ..Default::default()
        };
        assert_eq!(super::key_of(&state), super::legacy_gossip_key("ca key"));
        state.secret = Some(keel_model::ClusterSecret::new("one".into()));
        let one = super::key_of(&state);
        assert_ne!(one, super::legacy_gossip_key("ca key"));
        state.secret = Some(keel_model::ClusterSecret::new("two".into()));
        assert_ne!(super::key_of(&state), one, "a new secret, a new key");
        state.identity = None;
        assert_ne!(super::key_of(&state), one);
    }
}
