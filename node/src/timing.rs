//! The cluster's Raft timing: one for every node. The leader's lease is
//! safe only if every follower refuses other candidates at least as long as
//! the leader assumes, so the timing lives in the replicated state
//! (`ClusterState::timing`), not in each node's flags.
//!
//! - A new cluster takes its bootstrap node's flags (one of its first
//!   entries); a cluster upgraded to version 5 gets its leader's timing.
//! - A joiner gets the cluster's timing with its certificate and runs it,
//!   whatever its flags say.
//! - `keel timing set` changes it (checked before it is proposed). openraft
//!   0.9 cannot change its timers while it runs, so each node keeps the
//!   cluster's timing in `timing.json` in its data directory and runs it
//!   from its next start; `keel status` marks the nodes still to restart.
//!   Until every node runs the new timing, the leader fits its lease to the
//!   shortest longest election timeout any voter runs (gossip says which),
//!   so the roll is safe in either direction.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use keel_consensus::Settings;
use keel_model::{ClusterCommand, Timing};
use tokio::sync::watch;

use crate::cluster::{ClusterError, Control};

const FILE: &str = "timing.json";

/// The settings this node runs: the cluster's timing from its data
/// directory when it has one, otherwise `flags`.
pub(crate) fn running(dir: &Path, flags: &Settings) -> Result<Settings, ClusterError> {
    let path = dir.join(FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(flags.clone()),
        Err(e) => return Err(crate::cluster::io_err(&path)(e)),
    };
    let timing: Timing = serde_json::from_str(&text).map_err(|e| ClusterError::Corrupt {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    let settings = flags.with_timing(&timing);
    if let Err(why) = settings.check() {
        return Err(ClusterError::Corrupt { path, reason: why });
    }
    if settings != *flags {
        tracing::info!(
            cluster = %timing,
            flags = %flags.timing(),
            "running the cluster's timing; the timing flags only seed a new cluster"
        );
    }
    Ok(settings)
}

/// Keeps `timing` as the one this node runs from its next start.
pub(crate) fn save(dir: &Path, timing: &Timing) -> Result<(), ClusterError> {
    let text = serde_json::to_string_pretty(timing).map_err(|e| ClusterError::Corrupt {
        path: dir.join(FILE),
        reason: e.to_string(),
    })?;
    crate::cluster::write_private(&dir.join(FILE), &text)
}

/// The shortest longest election timeout among this node, the cluster's
/// timing and every voter gossip reports.
fn shortest_election(control: &Control) -> Duration {
    let applied = control.consensus().applied().borrow().state.timing;
    let view = control.gossip.borrow();
    let voters = control
        .consensus()
        .members()
        .into_iter()
        .filter(|m| m.voter);
    let reported = voters.filter_map(|m| view.get(&m.info.name)?.report.as_ref()?.timing);
    let ms = reported
        .chain(applied)
        .chain([control.timing])
        .map(|t| t.election_max_ms)
        .min()
        .unwrap_or(control.timing.election_max_ms);
    Duration::from_millis(ms)
}

/// Until `stop`, on every node: keeps `timing.json` equal to the cluster's
/// timing and the lease fitted to every voter's; on the leader, records
/// its timing in a cluster that has none.
pub(crate) async fn run(
    control: Arc<Control>,
    dir: std::path::PathBuf,
    mut stop: watch::Receiver<bool>,
) {
    let mut applied = control.consensus().applied();
    let mut gossip = control.gossip.subscribe();
    let mut saved: Option<Timing> = None;
    let mut recorded = false;
    loop {
        let state = applied.borrow_and_update().state.clone();
        gossip.borrow_and_update();
        control.consensus().limit_lease(shortest_election(&control));
        if let Some(timing) = state.timing.filter(|t| saved != Some(*t)) {
            match save(&dir, &timing) {
                Ok(()) => {
                    saved = Some(timing);
                    if timing != control.timing {
                        tracing::warn!(
                            cluster = %timing,
                            running = %control.timing,
                            "the cluster's timing changed: restart this node to run it"
                        );
                    }
                }
                Err(e) => tracing::warn!(error = %e, "could not keep the cluster's timing"),
            }
        }
        let leads = control.consensus().leadership().borrow().is_leader;
        if leads && !recorded && state.timing.is_none() && state.version() >= 5 {
            match control
                .consensus()
                .propose(ClusterCommand::SetTiming(control.timing))
                .await
            {
                Ok(_) => {
                    recorded = true;
                    tracing::info!(timing = %control.timing, "recorded the cluster's timing");
                }
                Err(e) => tracing::debug!(error = %e, "could not record the cluster's timing yet"),
            }
        }
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            r = applied.changed() => if r.is_err() { return },
            r = gossip.changed() => if r.is_err() { return },
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}
