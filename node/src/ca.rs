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
//!
//! # Rotating the CA
//!
//! `keel ca rotate` (`POST /api/v1/cluster/ca/rotate`) walks three steps,
//! each taken only once every member is ready for it:
//!
//! 1. **Trust the new CA.** A voter makes a new CA, keeps its key in
//!    `tls/ca-next.key` and commits [`ClusterCommand::TrustCa`]; every node
//!    trusts both CAs as soon as it applies that ([`place_once`]), and every
//!    voter takes the new key from another (`/cluster/ca-next-key`). The
//!    old CA still signs.
//! 2. **Sign with it** ([`ClusterCommand::SignWithCa`]), once every member
//!    reports trusting it and every voter holds its key: voters make the new
//!    key their `ca.key`, and every node gets a new node certificate and
//!    admin certificate from it, without a restart.
//! 3. **Drop the old CA** ([`ClusterCommand::DropCa`]), once every member's
//!    certificates come from the new one: from then on a certificate the old
//!    CA signed is refused everywhere.
//!
//! Until step 2 a rotation can be abandoned (the new CA dropped). A member
//! that does not answer holds a rotation up (remove it, or bring it back).
//! Join tokens pin the CA that signed when they were made: after step 2
//! they are made again; a CLI that pinned the CA is re-pinned by the
//! rotation it runs, others log in again with the new fingerprint.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel_consensus::rpc::{node_server_name, RpcClient};
use keel_consensus::NodeId;
use keel_model::{CaStage, ClusterCommand, ClusterIdentity};
use keel_web_core::{CaMember, CaStatus, ControlError, ControlPlane};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::cluster::{write_private, Control};
use crate::pki;

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

    /// The key, when this node holds it and it is the key of `ca_pem`.
    pub fn of(&self, ca_pem: &str) -> Option<String> {
        self.get().filter(|k| pki::key_matches_ca(k, ca_pem))
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

/// Keeps the CA key where it belongs as the membership changes, the trusted
/// CAs and the admin API's certificate in step with the state (see the
/// module's documentation), until `stop`.
pub async fn keep_placed(control: Arc<Control>, mut stop: watch::Receiver<bool>) {
    let mut applied = control.consensus().applied();
    let mut purged_at = None;
    loop {
        let (placed_for, _) = control.state();
        if let Err(why) = place_once(&control, &mut purged_at).await {
            tracing::warn!(%why, "could not place the cluster CA key; retrying");
        }
        // The admin certificate follows the state the key was placed for:
        // an entry applied meanwhile (a rotation's new CA beginning to
        // sign) is placed first, in the next round at once, so the node
        // signs with the key it holds rather than asking the leader.
        let moved_on = control.state().0 != placed_for;
        if !moved_on {
            if let Err(why) = control.refresh_admin_cert().await {
                tracing::warn!(%why, "could not make the admin API certificate again; retrying");
            }
        }
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            r = applied.changed() => if r.is_err() { return },
            () = tokio::time::sleep(RECHECK) => {}
        }
    }
}

async fn place_once(control: &Control, purged_at: &mut Option<u64>) -> Result<(), String> {
    let _placing = control.ca_placing.lock().await;
    let consensus = control.consensus();
    let me = consensus.id();
    let members = consensus.members();
    let (index, state) = control.state();
    if state.retired_nodes.contains(&me) {
        if control.ca_key.get().is_some() || control.ca_next_key.get().is_some() {
            control.ca_key.forget()?;
            control.ca_next_key.forget()?;
            tracing::info!("removed from the cluster: deleted this node's copy of the CA key");
        }
        return Ok(());
    }
    let Some(identity) = state.identity.clone() else {
        return Ok(());
    };
    // Every node trusts what the state says, from the next handshake on.
    control
        .identity
        .trust(&identity.trusted())
        .map_err(|e| format!("trusting the cluster's CAs: {e}"))?;
    let Some(mine) = members.iter().find(|m| m.id == me) else {
        // Not a member yet: nothing more to decide.
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
        if control.ca_key.get().is_some() || control.ca_next_key.get().is_some() {
            control.ca_key.forget()?;
            control.ca_next_key.forget()?;
            tracing::info!("not a voter: deleted this node's copy of the CA key");
        }
        return Ok(());
    }
    place_signing_key(control, &identity, &members).await?;
    match &identity.ca_rotation {
        Some(r) if r.stage == CaStage::Trusting => {
            if control.ca_next_key.of(&r.other_pem).is_none() {
                let key =
                    from_a_voter(control, &members, "/cluster/ca-next-key", &r.other_pem).await?;
                control.ca_next_key.keep(&key)?;
                tracing::info!("took the key of the CA a rotation brings from another voter");
            }
        }
        _ => {
            if control.ca_next_key.get().is_some() {
                control.ca_next_key.forget()?;
                tracing::info!("no CA rotation under way: deleted the key of the CA it brought");
            }
        }
    }
    Ok(())
}

/// A voter keeps the key of the CA that signs: its own, the one a rotation
/// brought (when that CA has begun to sign), the replicated one of a
/// cluster from before version 7, or another voter's.
async fn place_signing_key(
    control: &Control,
    identity: &ClusterIdentity,
    members: &[keel_consensus::Member],
) -> Result<(), String> {
    let signing = &identity.ca_cert_pem;
    if control.ca_key.of(signing).is_some() {
        return Ok(());
    }
    if let Some(key) = control.ca_next_key.of(signing) {
        control.ca_key.keep(&key)?;
        control.ca_next_key.forget()?;
        tracing::info!("the CA a rotation brought signs now: its key is this node's CA key");
        return Ok(());
    }
    if let Some(key) = identity.legacy_key() {
        control.ca_key.keep(key)?;
        tracing::info!("kept the replicated CA key on disk");
        return Ok(());
    }
    let key = from_a_voter(control, members, "/cluster/ca-key", signing).await?;
    control.ca_key.keep(&key)?;
    tracing::info!("a voter now: took the CA key from another voter");
    Ok(())
}

/// The key of `ca_pem` from the first other voter that gives it (`route`:
/// `/cluster/ca-key` or `/cluster/ca-next-key`).
async fn from_a_voter(
    control: &Control,
    members: &[keel_consensus::Member],
    route: &str,
    ca_pem: &str,
) -> Result<String, String> {
    let me = control.consensus().id();
    let mut why = "no other voter".to_owned();
    for voter in members.iter().filter(|m| m.voter && m.id != me) {
        match fetch(control, voter.id, &voter.info.cluster_addr, route).await {
            Ok(key) if pki::key_matches_ca(&key, ca_pem) => return Ok(key),
            Ok(_) => why = format!("{} sent a key that is not the CA's", voter.info.name),
            Err(e) => why = format!("{}: {e}", voter.info.name),
        }
    }
    Err(format!(
        "a voter without a CA key it needs, and no voter gave it: {why}"
    ))
}

async fn fetch(control: &Control, id: NodeId, addr: &str, route: &str) -> Result<String, String> {
    let mut client = RpcClient::new(control.client_tls(), addr.to_owned(), &node_server_name(id))
        .map_err(|e| e.to_string())?;
    client
        .post::<_, Result<String, String>>(route, &(), Duration::from_secs(5))
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

/// What a member reports of its part in a CA rotation
/// (`/cluster/ca-report`): fingerprints, never keys.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct CaReport {
    trusts: Vec<String>,
    node_certificate_ca: Option<String>,
    admin_certificate_ca: Option<String>,
    keys: Vec<String>,
}

/// This node's [`CaReport`].
pub(crate) fn report(control: &Control) -> CaReport {
    let (_, state) = control.state();
    let trusted: Vec<String> = state
        .identity
        .as_ref()
        .map(|i| i.trusted().into_iter().map(str::to_owned).collect())
        .unwrap_or_default();
    let signer = |cert: &str| {
        trusted
            .iter()
            .find(|ca| pki::signed_by(cert, ca))
            .and_then(|ca| pki::fingerprint(ca).ok())
    };
    let keys = trusted
        .iter()
        .filter(|ca| control.ca_key.of(ca).is_some() || control.ca_next_key.of(ca).is_some())
        .filter_map(|ca| pki::fingerprint(ca).ok())
        .collect();
    CaReport {
        trusts: control.identity.trusted(),
        node_certificate_ca: signer(&control.identity.tls().cert_pem),
        admin_certificate_ca: control
            .admin_cert
            .get()
            .and_then(|(live, _)| signer(&live.cert_pem())),
        keys,
    }
}

/// The CA, the rotation under way, and every member's report (asked over
/// mutual TLS; a member that does not answer is shown with why).
pub(crate) async fn status(control: &Control) -> Result<CaStatus, ControlError> {
    let (_, state) = control.state();
    let identity = state
        .identity
        .clone()
        .ok_or_else(|| ControlError::NotFound("the cluster has no identity yet".into()))?;
    let fp = |pem: &str| {
        pki::fingerprint(pem)
            .map(|f| format!("SHA256:{f}"))
            .unwrap_or_default()
    };
    let me = control.consensus().id();
    let mut members = Vec::new();
    for m in control.consensus().members() {
        let report = if m.id == me {
            Ok(report(control))
        } else {
            ask_report(control, m.id, &m.info.cluster_addr).await
        };
        let shown = |f: String| format!("SHA256:{f}");
        members.push(match report {
            Ok(r) => CaMember {
                name: m.info.name.clone(),
                voter: m.voter,
                trusts: r.trusts.into_iter().map(shown).collect(),
                node_certificate_ca: r.node_certificate_ca.map(shown),
                admin_certificate_ca: r.admin_certificate_ca.map(shown),
                keys: r.keys.into_iter().map(shown).collect(),
                error: None,
            },
            Err(why) => CaMember {
                name: m.info.name.clone(),
                voter: m.voter,
                error: Some(why),
                ..CaMember::default()
            },
        });
    }
    members.sort_by(|a, b| a.name.cmp(&b.name));
    let signing = fp(&identity.ca_cert_pem);
    let other = identity.ca_rotation.as_ref().map(|r| fp(&r.other_pem));
    let mut waiting_for = Vec::new();
    let mut wait = |m: &CaMember, what: &str| {
        waiting_for.push(match &m.error {
            Some(why) => format!("{} does not answer ({why})", m.name),
            None => format!("{} {what}", m.name),
        })
    };
    let (stage, next) = match (&identity.ca_rotation, &other) {
        (Some(r), Some(new)) if r.stage == CaStage::Trusting => {
            for m in &members {
                if !m.trusts.contains(new) {
                    wait(m, &format!("does not trust {new} yet"));
                } else if m.voter && !m.keys.contains(new) {
                    wait(m, "does not hold the new CA's key yet");
                }
            }
            (
                "trusting",
                format!("sign with {new} and make every certificate again"),
            )
        }
        (Some(_), Some(old)) => {
            for m in &members {
                if m.node_certificate_ca.as_ref() != Some(&signing) {
                    wait(m, "presents a node certificate from the old CA");
                } else if m
                    .admin_certificate_ca
                    .as_ref()
                    .is_some_and(|ca| *ca != signing)
                {
                    wait(m, "presents an admin certificate from the old CA");
                }
            }
            ("reissuing", format!("stop trusting the old CA {old}"))
        }
        _ => (
            "none",
            "begin: make a new CA and trust it besides the old one".to_owned(),
        ),
    };
    let trusted: Vec<String> = identity.trusted().into_iter().map(fp).collect();
    Ok(CaStatus {
        stage: stage.to_owned(),
        signing,
        trusted,
        bundle_pem: identity.trusted().concat(),
        next,
        waiting_for,
        members,
    })
}

async fn ask_report(control: &Control, id: NodeId, addr: &str) -> Result<CaReport, String> {
    let mut client = RpcClient::new(control.client_tls(), addr.to_owned(), &node_server_name(id))
        .map_err(|e| e.to_string())?;
    client
        .post::<_, CaReport>("/cluster/ca-report", &(), Duration::from_secs(3))
        .await
        .map_err(|e| e.to_string())
}

/// The next step of a CA rotation (see the module's documentation), as
/// `by`'s; the status after it.
pub(crate) async fn rotate(
    control: &Control,
    by: &str,
    abandon: bool,
) -> Result<CaStatus, ControlError> {
    let before = status(control).await?;
    let (_, state) = control.state();
    let identity = state
        .identity
        .clone()
        .ok_or_else(|| ControlError::NotFound("the cluster has no identity yet".into()))?;
    let rotation = identity.ca_rotation.clone();
    let authored = |command| ClusterCommand::Authored {
        by: by.to_owned(),
        at: pki::unix_now(),
        command: Box::new(command),
    };
    match (rotation, abandon) {
        (None, true) => Err(ControlError::Conflict("no CA rotation is under way".into())),
        (None, false) => {
            let me = control.consensus().id();
            let voter = control
                .consensus()
                .members()
                .iter()
                .any(|m| m.id == me && m.voter);
            if !voter {
                return Err(ControlError::Conflict(
                    "a learner keeps no CA key: begin the rotation on a voter".into(),
                ));
            }
            // Held until the entry applies, so the key is never taken for
            // the leftover of an abandoned rotation meanwhile.
            let _placing = control.ca_placing.lock().await;
            let (cert_pem, key_pem) = pki::next_ca(&identity.cluster_id)
                .map_err(|e| ControlError::Conflict(format!("making a new CA: {e}")))?;
            control
                .ca_next_key
                .keep(&key_pem)
                .map_err(ControlError::Conflict)?;
            control
                .propose(authored(ClusterCommand::TrustCa { cert_pem }))
                .await?;
            drop(_placing);
            status(control).await
        }
        (Some(r), true) => {
            if r.stage != CaStage::Trusting {
                return Err(ControlError::Conflict(
                    "the new CA signs already: finish the rotation (keel ca rotate)".into(),
                ));
            }
            control
                .propose(authored(ClusterCommand::DropCa {
                    cert_pem: r.other_pem,
                }))
                .await?;
            status(control).await
        }
        (Some(r), false) => {
            if !before.waiting_for.is_empty() {
                return Err(ControlError::Conflict(format!(
                    "not yet ({}): {}",
                    before.next,
                    before.waiting_for.join("; ")
                )));
            }
            let command = match r.stage {
                CaStage::Trusting => ClusterCommand::SignWithCa {
                    cert_pem: r.other_pem,
                },
                CaStage::Reissuing => ClusterCommand::DropCa {
                    cert_pem: r.other_pem,
                },
            };
            control.propose(authored(command)).await?;
            status(control).await
        }
    }
}
