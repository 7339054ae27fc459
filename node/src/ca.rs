//! The cluster CA's private key lives on the voters' disks only
//! (`tls/ca.key`, 0600): never in the replicated state, never on a learner.
//!
//! Voters issue certificates (a joiner's, a renewal, a learner's admin
//! certificate), so each keeps the key; a learner asks the leader instead.
//! [`keep_placed`] follows the membership: a node promoted to voter takes
//! the key from another voter over mutual TLS (`/cluster/ca-key`, served
//! to voters only), a node that is no longer a voter deletes its copy. A
//! cluster from before version 7 replicated the key: its voters first
//! copy it to their disks, then the leader takes it out of the state
//! ([`ClusterCommand::ForgetCaKey`], see `upgrade.rs`), and every node
//! snapshots and purges its log so no entry on disk still holds it.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel_consensus::rpc::{node_server_name, RpcClient};
use keel_consensus::NodeId;
use keel_model::ClusterCommand;
use tokio::sync::watch;

use crate::cluster::{write_private, Control};
use crate::pki;
use keel_web::ControlPlane;

/// This node's copy of the CA key, if it holds one.
pub struct CaKey {
    path: PathBuf,
    key: Mutex<Option<String>>,
}

impl CaKey {
    /// The key kept at `path`, if there is one.
    pub fn load(path: PathBuf) -> Self {
        let key = std::fs::read_to_string(&path)
            .ok()
            .filter(|k| !k.is_empty());
        CaKey {
            path,
            key: Mutex::new(key),
        }
    }

    /// The key, when this node holds it.
    pub fn get(&self) -> Option<String> {
        self.key.lock().ok().and_then(|k| k.clone())
    }

    /// Keeps `pem` on disk and in memory.
    pub fn keep(&self, pem: &str) -> Result<(), String> {
        write_private(&self.path, pem).map_err(|e| e.to_string())?;
        if let Ok(mut key) = self.key.lock() {
            *key = Some(pem.to_owned());
        }
        Ok(())
    }

    /// Deletes this node's copy.
    pub fn forget(&self) -> Result<(), String> {
        match std::fs::remove_file(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("{}: {e}", self.path.display())),
        }
        if let Ok(mut key) = self.key.lock() {
            *key = None;
        }
        Ok(())
    }
}

/// How often [`keep_placed`] looks again when nothing changed (a voter
/// still without the key retries this often).
const RECHECK: Duration = Duration::from_secs(2);

/// Keeps the CA key where it belongs as the membership changes (see the
/// module's documentation), until `stop`.
pub async fn keep_placed(control: Arc<Control>, mut stop: watch::Receiver<bool>) {
    let mut applied = control.consensus().applied();
    let mut purged_at = None;
    loop {
        if let Err(why) = place_once(&control, &mut purged_at).await {
            tracing::warn!(%why, "could not place the cluster CA key; retrying");
        }
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            r = applied.changed() => if r.is_err() { return },
            () = tokio::time::sleep(RECHECK) => {}
        }
    }
}

async fn place_once(control: &Control, purged_at: &mut Option<u64>) -> Result<(), String> {
    let consensus = control.consensus();
    let me = consensus.id();
    let members = consensus.members();
    let (index, state) = control.state();
    if state.retired_nodes.contains(&me) {
        if control.ca_key.get().is_some() {
            control.ca_key.forget()?;
            tracing::info!("removed from the cluster: deleted this node's copy of the CA key");
        }
        return Ok(());
    }
    let Some(mine) = members.iter().find(|m| m.id == me) else {
        // Not a member yet: nothing to decide.
        return Ok(());
    };
    let Some(identity) = state.identity.clone() else {
        return Ok(());
    };
    if identity.ca_key_moved && purged_at.is_none() {
        // The replicated state no longer holds the key: neither should the
        // log and snapshot on this node's disk (entries from before
        // version 7 did). Once per start: a restart may find entries a
        // crash left.
        consensus
            .compact()
            .await
            .map_err(|e| format!("compacting the Raft log: {e}"))?;
        *purged_at = Some(index);
    }
    if !mine.voter {
        if control.ca_key.get().is_some() {
            control.ca_key.forget()?;
            tracing::info!("not a voter: deleted this node's copy of the CA key");
        }
        return Ok(());
    }
    if control.ca_key.get().is_some() {
        return Ok(());
    }
    if let Some(key) = identity.legacy_key() {
        control.ca_key.keep(key)?;
        tracing::info!("kept the replicated CA key on disk");
        return Ok(());
    }
    let mut why = "no other voter".to_owned();
    for voter in members.iter().filter(|m| m.voter && m.id != me) {
        match fetch(control, voter.id, &voter.info.cluster_addr).await {
            Ok(key) if pki::key_matches_ca(&key, &identity.ca_cert_pem) => {
                control.ca_key.keep(&key)?;
                tracing::info!(from = %voter.info.name, "a voter now: took the CA key from another voter");
                return Ok(());
            }
            Ok(_) => why = format!("{} sent a key that is not the CA's", voter.info.name),
            Err(e) => why = format!("{}: {e}", voter.info.name),
        }
    }
    Err(format!(
        "a voter without the CA key, and no voter gave it: {why}"
    ))
}

async fn fetch(control: &Control, id: NodeId, addr: &str) -> Result<String, String> {
    let mut client = RpcClient::new(control.client_tls(), addr.to_owned(), &node_server_name(id))
        .map_err(|e| e.to_string())?;
    client
        .post::<_, Result<String, String>>("/cluster/ca-key", &(), Duration::from_secs(5))
        .await
        .map_err(|e| e.to_string())?
}

/// A leader of a cluster at version 7 or later whose replicated state still
/// holds the CA key (it predates version 7) takes it out, once its own copy
/// is on disk; the other voters copied theirs when they applied it (or
/// take it from a voter when they find it gone).
pub(crate) fn forget_replicated_key(control: &Control) -> Option<ClusterCommand> {
    let (_, state) = control.state();
    let identity = state.identity.as_ref()?;
    let key = identity.legacy_key()?;
    (state.version() >= 7 && control.ca_key.get().as_deref() == Some(key))
        .then_some(ClusterCommand::ForgetCaKey)
}
