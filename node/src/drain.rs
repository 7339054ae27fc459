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

use keel_consensus::Consensus;
use keel_dataplane::Dataplane;
use tokio::sync::watch;

/// Follows this node's drained flag until `stop`.
pub async fn run(
    consensus: Consensus,
    dataplane: Arc<Dataplane>,
    held: watch::Receiver<BTreeSet<String>>,
    drained_tx: watch::Sender<bool>,
    mut stop: watch::Receiver<bool>,
) {
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
            // Heartbeats stop, a follower's election timer runs out, and it
            // takes over (openraft 0.9 has no leadership transfer).
            consensus.step_down(Duration::from_secs(3)).await;
        }
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = applied.changed() => {}
            _ = leadership.changed() => {}
        }
    }
}

/// The addresses of `addr/len` VIP strings.
pub fn ips(vips: &BTreeSet<String>) -> Vec<IpAddr> {
    vips.iter()
        .filter_map(|v| v.split_once('/').and_then(|(ip, _)| ip.parse().ok()))
        .collect()
}
