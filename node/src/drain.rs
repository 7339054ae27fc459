//! `keel node drain`: a drained node keeps serving on its own addresses and
//! keeps voting and replicating, but holds no VIP and stands for no
//! election, until `keel node undrain`. The flag is replicated
//! (`ClusterState::drained_nodes`), so it outlives restarts and every node's
//! dashboard shows it.
//!
//! Draining the node that holds the VIPs hands them over the way a shutdown
//! does: its VIP listeners stop answering new connection attempts (clients
//! retransmit their SYN and reach the next holder) and the connections they
//! have get [`crate::VIP_QUIESCE`] to finish; then the VIP rule lets the
//! addresses go and, if it leads, the node steps down so another is elected.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use keel_dataplane::Dataplane;
use tokio::sync::watch;

use crate::cluster::Control;

/// Follows this node's drained flag until `stop`.
pub(crate) async fn run(
    control: Arc<Control>,
    dataplane: Arc<Dataplane>,
    held: watch::Receiver<BTreeSet<String>>,
    drained_tx: watch::Sender<bool>,
    mut stop: watch::Receiver<bool>,
) {
    let consensus = control.consensus().clone();
    let mut applied = consensus.applied();
    let mut leadership = consensus.leadership();
    let me = consensus.id();
    let mut was = false;
    // The VIP listeners made quiet when the drain began, to answer again
    // when it ends.
    let mut quieted: Vec<IpAddr> = Vec::new();
    loop {
        let drained = applied
            .borrow_and_update()
            .state
            .drained_nodes
            .contains(&me);
        let leads = leadership.borrow_and_update().is_leader;
        if drained && !was {
            tracing::warn!(
                "this node is drained: it hands over its VIPs and leadership, and keeps serving \
                 on its own addresses until undrained"
            );
            consensus.set_drained(true);
            quieted = ips(&held.borrow());
            if !quieted.is_empty() {
                let open = dataplane.quiesce(&quieted, crate::VIP_QUIESCE).await;
                tracing::info!(open, "VIP listeners quiet; releasing the VIPs");
            }
            drained_tx.send_replace(true);
        } else if !drained && was {
            tracing::info!("this node is no longer drained: it may hold VIPs and lead again");
            dataplane.resume(&std::mem::take(&mut quieted)).await;
            drained_tx.send_replace(false);
            consensus.set_drained(false);
        }
        was = drained;
        if drained && leads {
            hand_over(&control, Duration::from_secs(3)).await;
        }
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = applied.changed() => {}
            _ = leadership.changed() => {}
        }
    }
}

/// Hands leadership over, if this node leads: it stops heartbeating and
/// standing for election, and asks the most up-to-date follower that gossip
/// sees live and ready to stand at once (openraft 0.9 has no leadership
/// transfer; see `Consensus::elect_now`); then waits up to `deadline` for
/// another leader. If none can be asked, or the one asked cannot win yet, a
/// follower's election timer ends the wait, as before.
pub(crate) async fn hand_over(control: &Control, deadline: Duration) {
    let consensus = control.consensus();
    let Some(term) = consensus.stop_leading() else {
        return;
    };
    let members = consensus.members();
    let healthy = |name: &str| {
        control
            .gossip
            .borrow()
            .get(name)
            .is_some_and(|p| p.live && p.report.as_ref().is_some_and(|r| r.ready))
    };
    let next = consensus.successors().into_iter().find_map(|id| {
        let member = members.iter().find(|m| m.id == id)?;
        healthy(&member.info.name).then(|| member.clone())
    });
    if let Some(next) = next {
        let asked = control.ask_to_elect(next.id, &next.info, term).await;
        tracing::info!(to = %next.info.name, term, asked, "handing leadership over");
    }
    consensus.wait_for_another_leader(deadline).await;
}

/// The addresses of `addr/len` VIP strings.
pub fn ips(vips: &BTreeSet<String>) -> Vec<IpAddr> {
    vips.iter()
        .filter_map(|v| v.split_once('/').and_then(|(ip, _)| ip.parse().ok()))
        .collect()
}
