//! Rolling upgrades: the cluster version. Every node gossips the newest
//! cluster version its Keel runs ([`CLUSTER_VERSION`]); the leader raises the
//! replicated version once every member runs a newer one; until then, a
//! command an older node could not read is refused before it reaches the log
//! (409, naming the version it needs and the nodes still behind).

use std::sync::Arc;
use std::time::Duration;

use keel_model::{ClusterCommand, CLUSTER_VERSION};
use tokio::sync::watch;

use crate::cluster::Control;
use keel_web_core::ControlPlane;

/// How often the leader looks at what its members run.
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// Each member's name and the cluster version its Keel runs, as gossip
/// tells (`None`: not live in gossip, or no report yet). A report without
/// one comes from a Keel before versions: 1.
pub(crate) fn member_versions(control: &Control) -> Vec<(String, Option<u32>)> {
    let view = control.gossip.borrow();
    control
        .consensus()
        .members()
        .into_iter()
        .map(|m| {
            let version = if m.info.name == control.me.name {
                Some(CLUSTER_VERSION)
            } else {
                view.get(&m.info.name)
                    .filter(|p| p.live)
                    .and_then(|p| p.report.as_ref())
                    .map(|r| r.cluster_version.max(1))
            };
            (m.info.name, version)
        })
        .collect()
}

/// Why a command that needs `needs` is refused at `version`.
pub(crate) fn conflict(control: &Control, needs: u32, version: u32) -> String {
    let behind: Vec<String> = member_versions(control)
        .into_iter()
        .filter(|(_, v)| v.is_none_or(|v| v < needs))
        .map(|(name, v)| match v {
            Some(v) => format!("{name} runs version {v}"),
            None => format!("{name}'s version is not known (not live in gossip)"),
        })
        .collect();
    format!(
        "this change needs cluster version {needs}; the cluster is at version {version} until \
         every node runs a Keel that understands it ({})",
        if behind.is_empty() {
            "every node does now: the leader raises the version within seconds".to_owned()
        } else {
            behind.join(", ")
        }
    )
}

/// On the leader: raises the cluster version once every member runs a newer
/// one. Until `stop`.
pub(crate) async fn run(control: Arc<Control>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(LOOK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tick.tick() => {}
        }
        if !control.consensus().leadership().borrow().is_leader {
            continue;
        }
        let current = control.consensus().applied().borrow().state.version();
        let secret = control
            .consensus()
            .applied()
            .borrow()
            .state
            .secret
            .is_some();
        if current >= 5 && !secret {
            // The cluster secret the gossip key derives from (see `gossip`).
            let secret = keel_model::ClusterSecret::new(keel_web_core::random_hex(32));
            match control
                .consensus()
                .propose(ClusterCommand::SetSecret(secret))
                .await
            {
                Ok(_) => tracing::info!("set the cluster secret"),
                Err(e) => tracing::warn!(error = %e, "could not set the cluster secret"),
            }
        }
        if let (Some(forget), Some(secret)) = (
            crate::ca::forget_replicated_key(&control),
            control.state().1.secret.clone(),
        ) {
            // AWS secrets sealed under the CA key lose it: sealed again
            // under the cluster secret in the same entry.
            let reseal = keel_web_core::awskeys::reseal(&control.state().1, &secret);
            match control
                .consensus()
                .propose(ClusterCommand::Atomic(vec![reseal, forget]))
                .await
            {
                Ok(_) => tracing::info!(
                    "the CA key is out of the replicated state: on voters' disks only"
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "could not take the CA key out of the replicated state")
                }
            }
        }
        let Some(lowest) = member_versions(&control)
            .into_iter()
            .map(|(_, v)| v)
            .collect::<Option<Vec<u32>>>()
            .and_then(|vs| vs.into_iter().min())
        else {
            continue;
        };
        if lowest <= current {
            continue;
        }
        match control
            .consensus()
            .propose(ClusterCommand::SetVersion { version: lowest })
            .await
        {
            Ok(_) => tracing::info!(
                from = current,
                to = lowest,
                "every node runs a newer Keel: cluster version raised"
            ),
            Err(e) => tracing::warn!(error = %e, "could not raise the cluster version"),
        }
    }
}
