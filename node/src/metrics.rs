//! The cluster's own metrics for `/metrics`, beside the data plane's: Raft
//! (term, leadership, log, apply and snapshot positions, snapshot sizes and
//! build times, the version this node runs, how far each
//! follower is behind, the lease), the VIPs this node holds, gossip's view
//! of its peers, this node's certificate, password checks and joins.
//! `docs/alerts.yml` alerts on them.

use std::fmt::Write;
use std::sync::atomic::Ordering::Relaxed;
use tokio::time::Instant;

use crate::cluster::Control;

/// One metric family: its help, type and samples (`labels`, value).
struct Family<'a> {
    name: &'a str,
    help: &'a str,
    kind: &'a str,
    samples: Vec<(String, f64)>,
}

impl Family<'_> {
    fn render(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP {} {}", self.name, self.help);
        let _ = writeln!(out, "# TYPE {} {}", self.name, self.kind);
        for (labels, value) in &self.samples {
            let _ = writeln!(out, "{}{labels} {value}", self.name);
        }
    }
}

fn gauge<'a>(name: &'a str, help: &'a str, value: f64) -> Family<'a> {
    Family {
        name,
        help,
        kind: "gauge",
        samples: vec![(String::new(), value)],
    }
}

fn flag(on: bool) -> f64 {
    if on {
        1.0
    } else {
        0.0
    }
}

/// Prometheus text for the cluster as this node sees it.
pub fn render(control: &Control) -> String {
    let consensus = control.consensus();
    let snapshots = consensus.snapshots();
    let raft = consensus.raft().metrics().borrow().clone();
    let leadership = consensus.leadership().borrow().clone();
    let lease = *consensus.lease().borrow();
    let members = consensus.members();
    let last_log = raft.last_log_index.unwrap_or(0);
    let name_of = |id: u64| {
        members
            .iter()
            .find(|m| m.id == id)
            .map_or_else(|| format!("{id:x}"), |m| m.info.name.clone())
    };
    let behind: Vec<(String, f64)> = raft
        .replication
        .iter()
        .flatten()
        .filter(|(id, _)| **id != consensus.id())
        .map(|(id, matched)| {
            let matched = matched.map_or(0, |l| l.index);
            (
                format!("{{node=\"{}\"}}", name_of(*id)),
                last_log.saturating_sub(matched) as f64,
            )
        })
        .collect();
    let lease_left = lease.until.map_or(0.0, |until| {
        until
            .saturating_duration_since(Instant::now())
            .as_secs_f64()
    });
    let view = control.gossip.borrow().clone();
    let voters = members.iter().filter(|m| m.voter).count();
    let families = [
        gauge(
            "keel_raft_term",
            "The current Raft term.",
            leadership.term as f64,
        ),
        gauge(
            "keel_raft_leader",
            "1 when this node leads the cluster.",
            flag(leadership.is_leader),
        ),
        gauge(
            "keel_raft_has_leader",
            "1 when this node knows a leader (0 everywhere: quorum lost).",
            flag(leadership.leader.is_some()),
        ),
        gauge(
            "keel_raft_last_log_index",
            "The index of the last entry in this node's log.",
            last_log as f64,
        ),
        gauge(
            "keel_raft_applied_index",
            "The index of the last entry this node applied.",
            raft.last_applied.map_or(0, |l| l.index) as f64,
        ),
        gauge(
            "keel_raft_snapshot_index",
            "The last index this node's snapshot covers.",
            raft.snapshot.map_or(0, |l| l.index) as f64,
        ),
        gauge(
            "keel_raft_snapshot_bytes",
            "Size of the snapshot file this node last wrote (built here or installed from the leader).",
            snapshots.bytes.load(Relaxed) as f64,
        ),
        gauge(
            "keel_raft_snapshot_build_seconds",
            "How long building and writing the last snapshot built here took.",
            snapshots.build_micros.load(Relaxed) as f64 / 1e6,
        ),
        Family {
            name: "keel_raft_snapshots_built_total",
            help: "Snapshots built here since the node started.",
            kind: "counter",
            samples: vec![(String::new(), snapshots.built.load(Relaxed) as f64)],
        },
        gauge(
            "keel_cluster_version",
            "The cluster version (replicated): raised once every node runs a Keel that understands the next.",
            f64::from(consensus.applied().borrow().state.version()),
        ),
        gauge(
            "keel_node_cluster_version",
            "The newest cluster version this node's Keel runs.",
            f64::from(keel_model::CLUSTER_VERSION),
        ),
        Family {
            name: "keel_build_info",
            help: "1, labelled with the Keel version this node runs.",
            kind: "gauge",
            samples: vec![(
                format!("{{version=\"{}\"}}", env!("CARGO_PKG_VERSION")),
                1.0,
            )],
        },
        Family {
            name: "keel_raft_follower_entries_behind",
            help: "On the leader: entries each follower has yet to match.",
            kind: "gauge",
            samples: behind,
        },
        gauge(
            "keel_raft_lease_remaining_seconds",
            "On the leader: what is left of the lease that lets it hold VIPs.",
            lease_left,
        ),
        Family {
            name: "keel_cluster_members",
            help: "Members of the cluster by role.",
            kind: "gauge",
            samples: vec![
                ("{role=\"voter\"}".into(), voters as f64),
                ("{role=\"learner\"}".into(), (members.len() - voters) as f64),
            ],
        },
        Family {
            name: "keel_vip_configured",
            help: "1 for each VIP the config asks for (the same on every node).",
            kind: "gauge",
            samples: crate::vip::vips_of(&consensus.applied().borrow())
                .iter()
                .map(|vip| (format!("{{vip=\"{vip}\"}}"), 1.0))
                .collect(),
        },
        Family {
            name: "keel_vip_holder",
            help: "1 for each VIP this node holds (summed over nodes: exactly 1 per VIP).",
            kind: "gauge",
            samples: control
                .held_vips
                .borrow()
                .iter()
                .map(|vip| (format!("{{vip=\"{vip}\"}}"), 1.0))
                .collect(),
        },
        Family {
            name: "keel_gossip_peer_live",
            help: "1 when gossip's failure detector thinks the node is alive.",
            kind: "gauge",
            samples: view
                .iter()
                .map(|(name, peer)| (format!("{{node=\"{name}\"}}"), flag(peer.live)))
                .collect(),
        },
        Family {
            name: "keel_gossip_datagrams_rejected_total",
            help: "Gossip datagrams dropped: not sealed with a key this node opens, stale, \
                   replayed or unreadable.",
            kind: "counter",
            samples: vec![(
                String::new(),
                control
                    .gossip_rejected
                    .load(std::sync::atomic::Ordering::Relaxed) as f64,
            )],
        },
        gauge(
            "keel_node_certificate_expiry_timestamp_seconds",
            "When this node's cluster certificate expires (Unix seconds).",
            control.certificate_expires() as f64,
        ),
    ];
    let mut out = String::new();
    for family in &families {
        family.render(&mut out);
    }
    out + &control.vip_metrics.render()
        + &control.passwords.render_metrics()
        + &control.joins.render_metrics()
}
