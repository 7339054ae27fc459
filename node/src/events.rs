//! What this node saw happen, for the dashboard's "recent events": leader
//! changes (from Raft), nodes going silent or coming back, VIPs moving and
//! members flipping (from gossip). Kept in memory, newest last; config
//! changes and who made them are in the replicated history instead.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use keel_consensus::Consensus;
use keel_gossip::ClusterView;
use keel_web_core::Event;
use tokio::sync::watch;

/// How many events are kept.
const KEEP: usize = 500;

/// A bounded in-memory event list.
#[derive(Default)]
pub struct EventLog {
    events: Mutex<VecDeque<Event>>,
}

impl EventLog {
    /// Every kept event, oldest first.
    pub fn list(&self) -> Vec<Event> {
        self.lock().iter().cloned().collect()
    }

    fn push(&self, kind: &str, message: String) {
        let at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut events = self.lock();
        if events.len() >= KEEP {
            events.pop_front();
        }
        events.push_back(Event {
            at,
            kind: kind.to_owned(),
            message,
            by: None,
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Event>> {
        self.events.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// What the events are derived from, in a comparable form.
#[derive(Default, PartialEq)]
struct Seen {
    live: BTreeMap<String, bool>,
    vip_holders: BTreeMap<String, BTreeSet<String>>,
    members: BTreeMap<String, bool>,
}

impl Seen {
    fn from(view: &ClusterView) -> Seen {
        let mut seen = Seen::default();
        for (node, peer) in view {
            seen.live.insert(node.clone(), peer.live);
            let Some(report) = peer.report.as_ref().filter(|_| peer.live) else {
                continue;
            };
            for vip in &report.vips {
                seen.vip_holders
                    .entry(vip.clone())
                    .or_default()
                    .insert(node.clone());
            }
            for (member, m) in report.members.iter().filter(|(_, m)| !m.disabled) {
                // Up if any live node's data plane has it up (the same rule a
                // following node applies to its checkers' verdicts).
                *seen.members.entry(member.clone()).or_insert(false) |= m.up;
            }
        }
        seen
    }
}

/// Records events until `stop`.
pub(crate) async fn run(
    log: Arc<EventLog>,
    consensus: Consensus,
    mut gossip: watch::Receiver<ClusterView>,
    mut stop: watch::Receiver<bool>,
) {
    let mut leadership = consensus.leadership();
    let name_of = |id| {
        consensus
            .members()
            .into_iter()
            .find(|m| m.id == id)
            .map_or_else(|| format!("{id:x}"), |m| m.info.name)
    };
    let mut leader = leadership.borrow().leader;
    let mut seen = Seen::from(&gossip.borrow());
    loop {
        tokio::select! {
            r = stop.changed() => if r.is_err() || *stop.borrow() { return },
            r = leadership.changed() => {
                if r.is_err() { return }
                let now = leadership.borrow_and_update().clone();
                if now.leader != leader {
                    leader = now.leader;
                    let text = match now.leader {
                        Some(id) => format!("{} is the leader (term {})", name_of(id), now.term),
                        None => format!("no leader (term {}): an election is under way", now.term),
                    };
                    log.push("leader", text);
                }
            }
            r = gossip.changed() => {
                if r.is_err() { return }
                let now = Seen::from(&gossip.borrow_and_update());
                if now != seen {
                    compare(&log, &seen, &now);
                    seen = now;
                }
            }
        }
    }
}

fn compare(log: &EventLog, before: &Seen, now: &Seen) {
    for (node, live) in &now.live {
        match (before.live.get(node), live) {
            (Some(true), false) => log.push("node", format!("{node} stopped answering gossip")),
            (Some(false), true) => log.push("node", format!("{node} answers gossip again")),
            (None, true) if !before.live.is_empty() => {
                log.push("node", format!("{node} joined gossip"))
            }
            _ => {}
        }
    }
    let vips: BTreeSet<&String> = before
        .vip_holders
        .keys()
        .chain(now.vip_holders.keys())
        .collect();
    for vip in vips {
        let empty = BTreeSet::new();
        let old = before.vip_holders.get(vip).unwrap_or(&empty);
        let new = now.vip_holders.get(vip).unwrap_or(&empty);
        if old == new {
            continue;
        }
        let names = |s: &BTreeSet<String>| s.iter().cloned().collect::<Vec<_>>().join(", ");
        if new.is_empty() {
            log.push("vip", format!("{vip} released by {}", names(old)));
        } else {
            log.push("vip", format!("{vip} held by {}", names(new)));
        }
    }
    for (member, up) in &now.members {
        if let Some(was) = before.members.get(member) {
            if was != up {
                let word = if *up { "up" } else { "down" };
                log.push("member", format!("member {member} is {word}"));
            }
        }
    }
}
