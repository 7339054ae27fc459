//! `keel recover --force-new-cluster`: after a quorum is lost for good, a
//! stopped survivor becomes a one-node cluster with its last committed
//! state, as etcd's `--force-new-cluster` does. Refused while the node runs
//! or while a quorum of the old cluster still answers (then restarting the
//! stopped nodes is the fix, and forcing would fork the cluster). What it
//! does: reads the committed state from the node's Raft storage, leaves it
//! in `recover.json`, and moves the Raft directory aside; the next
//! `keel run` on the data directory starts a new one-node Raft group with
//! that state, the same node id, name, cluster id and CA.

use std::time::Duration;

use anyhow::{anyhow, bail, Context};

use crate::cli::RecoverArgs;
use crate::cluster::{write_private, NodeFile, RECOVERY_FILE};

/// How long a peer gets to answer before it counts as gone.
const REACH_TIMEOUT: Duration = Duration::from_secs(2);

pub async fn run(args: RecoverArgs) -> anyhow::Result<()> {
    let dir = &args.data_dir;
    let node_path = dir.join("node.json");
    let file: NodeFile =
        serde_json::from_str(&std::fs::read_to_string(&node_path).with_context(|| {
            format!("{} (is this a node's data directory?)", node_path.display())
        })?)
        .with_context(|| format!("{} is corrupt", node_path.display()))?;
    let raft = dir.join("raft");
    let committed = keel_consensus::store::committed(&raft).await.map_err(|e| {
        anyhow!(
            "cannot read {}: {e} (stop the node first: recovery works on a stopped node)",
            raft.display()
        )
    })?;
    if committed.state.identity.is_none() {
        bail!("this node holds no committed cluster state yet: nothing to recover");
    }
    let voters = committed.voters.len();
    let me_voter = committed.voters.iter().any(|(id, _)| *id == file.id);
    let mut answering = Vec::new();
    for (id, info) in committed.voters.iter().filter(|(id, _)| *id != file.id) {
        let reached = tokio::time::timeout(
            REACH_TIMEOUT,
            tokio::net::TcpStream::connect(&info.cluster_addr),
        )
        .await;
        if matches!(reached, Ok(Ok(_))) {
            answering.push(format!("{} ({id:x}) at {}", info.name, info.cluster_addr));
        }
    }
    let with_me = answering.len() + usize::from(me_voter);
    if with_me > voters / 2 {
        bail!(
            "a quorum of the cluster is still reachable ({with_me} of {voters} voters with this \
             node; answering: {}): start this node again instead; recover only when a majority \
             is gone for good",
            if answering.is_empty() {
                "none".to_owned()
            } else {
                answering.join(", ")
            }
        );
    }
    let backup = keel_api::backup::Backup {
        taken_at: unix_now(),
        version: committed.index,
        node: file.name.clone(),
        state: committed.state,
    };
    let text = serde_json::to_string(&backup)?;
    write_private(&dir.join(RECOVERY_FILE), &text)?;
    let aside = dir.join(format!("raft.before-recover-{}", backup.taken_at));
    std::fs::rename(&raft, &aside)
        .with_context(|| format!("cannot move {} aside", raft.display()))?;
    println!(
        "{name} will start as a one-node cluster with its last committed state (index {index}; \
         {voters} voters before, {answering} answering). The old Raft log is kept in {aside}.\n\
         Next: start the node as before (keel run --data-dir {dir} ...), then create a join \
         token on it; the other nodes rejoin with it after their data directories are cleared.",
        name = file.name,
        index = backup.version,
        answering = answering.len(),
        aside = aside.display(),
        dir = dir.display(),
    );
    Ok(())
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
