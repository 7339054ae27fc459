//! Cluster lifecycle: bootstrap, join, restart, leave; the cluster listener's
//! routes (Raft, join, forwarding, status); and the node's [`ControlPlane`].
//!
//! Data directory layout:
//! - `node.json` — this node's id, name and cluster id (and a pending join
//!   address while admission is not yet confirmed).
//! - `tls/` — the CA certificate, this node's certificate and key (0600).
//! - `raft/` — the Raft log, vote and snapshots.
//! - `initial-admin-password` — the generated first password (0600), when
//!   none was given; removed once the admin user has changed it.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use keel_consensus::rpc::{node_server_name, RpcClient, RpcError, TlsNetwork, ANY_NODE};
use keel_consensus::{Consensus, NodeId, NodeInfo, ProposeError, Settings};
use keel_dataplane::Dataplane;
use keel_model::{ClusterCommand, ClusterIdentity, ClusterState, Command, Refusal, Spec, User};
use keel_web_core::{ClusterStatus, ControlError, ControlPlane, NodeStatus};
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Mutex};

use crate::pki::{self, NodeTls};

/// How long a write waits for a leader before giving up.
const WRITE_DEADLINE: Duration = Duration::from_secs(5);

/// Why the cluster part of a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// A file in the data directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A file in the data directory is corrupt.
    #[error("{path}: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Certificates could not be made or loaded.
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
    /// Raft could not start.
    #[error(transparent)]
    Raft(#[from] keel_consensus::StartError),
    /// The join token is malformed.
    #[error("the join token is malformed: {0}")]
    BadToken(&'static str),
    /// Joining failed; the text says why (from the cluster, or the network).
    #[error("cannot join: {0}")]
    Join(String),
    /// A cluster write failed during bootstrap.
    #[error("bootstrap: {0}")]
    Bootstrap(String),
}

/// This node's identity on disk.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeFile {
    /// Raft id.
    pub id: NodeId,
    /// Name, unique in the cluster.
    pub name: String,
    /// The cluster it belongs to.
    pub cluster_id: String,
    /// Set until the cluster has confirmed the admission of a joiner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_join: Option<String>,
}

/// How to start: from the command line.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// The data directory.
    pub data_dir: PathBuf,
    /// Where the cluster listener binds.
    pub cluster_addr: SocketAddr,
    /// What other nodes dial to reach it (default: `cluster_addr`).
    pub advertise_addr: Option<SocketAddr>,
    /// The admin API address, advertised to other nodes.
    pub admin_addr: SocketAddr,
    /// The node's name (default: the host name).
    pub node_name: Option<String>,
    /// `--join HOST:PORT` and `--token`.
    pub join: Option<(String, String)>,
    /// Raft timings.
    pub settings: Settings,
    /// Where gossip binds (UDP).
    pub gossip_addr: SocketAddr,
    /// Password hashes checked at once.
    pub password_checks: usize,
    /// How long the node certificates this node issues are valid.
    pub cert_validity: Duration,
    /// How many voters this node, leading, promotes joiners to.
    pub max_voters: usize,
    /// `--restore`: a new cluster seeded from this backup (its CA, cluster
    /// id and state; new node ids and membership).
    pub restore: Option<Box<keel_api::backup::Backup>>,
}

/// A started cluster node.
pub struct ClusterNode {
    /// This node's identity.
    pub file: NodeFile,
    /// The Raft settings it runs (the cluster's timing, see `timing`).
    pub settings: Settings,
    /// Raft.
    pub consensus: Consensus,
    /// TLS identity, as loaded at start.
    pub tls: NodeTls,
    /// The certificate this node presents now (renewed while it runs).
    pub identity: Arc<pki::LiveIdentity>,
    /// The bound cluster listener, until the RPC server takes it.
    pub listener: Option<tokio::net::TcpListener>,
    /// Where the cluster listener is bound.
    pub bound: SocketAddr,
    /// True when this start created a new cluster.
    pub bootstrapped: bool,
    /// The state `keel recover` left for this node to restart into.
    pub recovered: Option<Box<keel_api::backup::Backup>>,
}

/// Where `keel recover` leaves the state a node restarts into as a
/// one-node cluster (read only while its Raft directory is empty).
pub const RECOVERY_FILE: &str = "recover.json";

fn read_recovery(dir: &Path) -> Result<Option<Box<keel_api::backup::Backup>>, ClusterError> {
    let path = dir.join(RECOVERY_FILE);
    let raft_empty = std::fs::read_dir(dir.join("raft"))
        .map(|mut entries| entries.next().is_none())
        .unwrap_or(true);
    match std::fs::read(&path) {
        Ok(_) if !raft_empty => {
            tracing::warn!(file = %path.display(), "ignored: the Raft directory is not empty");
            Ok(None)
        }
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| ClusterError::Corrupt {
                path,
                reason: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(&path)(e)),
    }
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ClusterError + '_ {
    move |source| ClusterError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Writes `text` to `path` (mode 0600) through a temporary file of this
/// write's own and a rename, so a reader sees the old text or the new.
/// Tasks may write files of one directory at once (a CA key placed while
/// the certificate is renewed): no two writes share a temporary file.
pub(crate) fn write_private(path: &Path, text: &str) -> Result<(), ClusterError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    static WRITES: AtomicU64 = AtomicU64::new(0);
    let n = WRITES.fetch_add(1, Ordering::Relaxed);
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(format!(".{}-{n}.tmp", std::process::id()));
    let tmp = path.with_file_name(name);
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(text.as_bytes())?;
            f.sync_all()
        })
        .map_err(io_err(&tmp))
        .and_then(|()| std::fs::rename(&tmp, path).map_err(io_err(path)));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    // The rename is durable only once the directory is: `node.json` and the
    // keys decide this node's identity after a power loss.
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

fn read(path: &Path) -> Result<String, ClusterError> {
    std::fs::read_to_string(path).map_err(io_err(path))
}

fn tls_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("tls")
}

fn save_tls(data_dir: &Path, tls: &NodeTls) -> Result<(), ClusterError> {
    let dir = tls_dir(data_dir);
    std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    write_private(&dir.join("ca.pem"), &tls.ca_pem)?;
    write_private(&dir.join("node.pem"), &tls.cert_pem)?;
    write_private(&dir.join("node.key"), &tls.key_pem)
}

fn load_tls(data_dir: &Path) -> Result<NodeTls, ClusterError> {
    let dir = tls_dir(data_dir);
    Ok(NodeTls {
        ca_pem: read(&dir.join("ca.pem"))?,
        cert_pem: read(&dir.join("node.pem"))?,
        key_pem: read(&dir.join("node.key"))?,
    })
}

fn save_node_file(data_dir: &Path, file: &NodeFile) -> Result<(), ClusterError> {
    let text = serde_json::to_string_pretty(file).map_err(|e| ClusterError::Corrupt {
        path: data_dir.join("node.json"),
        reason: e.to_string(),
    })?;
    write_private(&data_dir.join("node.json"), &text)
}

fn random_id() -> NodeId {
    let mut b = [0u8; 8];
    // An id of zero is avoided only for readability of logs.
    loop {
        if getrandom::fill(&mut b).is_err() {
            return 1;
        }
        let id = u64::from_be_bytes(b) >> 1;
        if id != 0 {
            return id;
        }
    }
}

fn default_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "keel".into())
}

/// Unix seconds now.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A node name: 1 to 63 letters, digits, '-', '_' or '.'.
pub fn check_node_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > 63
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        return Err("the node name must be 1 to 63 letters, digits, '-', '_' or '.'".into());
    }
    Ok(())
}

/// A parsed join token: `KEEL1.<ca fingerprint>.<id>.<secret>`.
#[derive(Clone)]
pub struct JoinToken {
    /// SHA-256 of the cluster CA, hex.
    pub ca_fingerprint: String,
    /// The token's id.
    pub id: String,
    /// The secret (never logged).
    pub secret: String,
}

impl std::str::FromStr for JoinToken {
    type Err = ClusterError;
    fn from_str(s: &str) -> Result<Self, ClusterError> {
        let mut parts = s.trim().split('.');
        let (Some("KEEL1"), Some(fp), Some(id), Some(secret), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(ClusterError::BadToken(
                "expected KEEL1.<fingerprint>.<id>.<secret>",
            ));
        };
        let hex = |t: &str, len: usize| t.len() == len && t.bytes().all(|b| b.is_ascii_hexdigit());
        if !hex(fp, 64) {
            return Err(ClusterError::BadToken(
                "the CA fingerprint is not 64 hex digits",
            ));
        }
        if !hex(id, 8) || !hex(secret, 32) {
            return Err(ClusterError::BadToken(
                "the id or secret has the wrong form",
            ));
        }
        Ok(JoinToken {
            ca_fingerprint: fp.to_ascii_lowercase(),
            id: id.to_owned(),
            secret: secret.to_owned(),
        })
    }
}

/// What a joiner sends first (anonymous TLS, CA pinned by the joiner).
#[derive(Serialize, Deserialize)]
struct CertificateRequest {
    token_id: String,
    secret: String,
    name: String,
    csr_pem: String,
}

/// What it gets back.
#[derive(Serialize, Deserialize)]
struct CertificateGrant {
    node_id: NodeId,
    cluster_id: String,
    ca_pem: String,
    cert_pem: String,
    /// The cluster's Raft timing, which the joiner runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    timing: Option<keel_model::Timing>,
}

/// Membership changes, carried out by the leader.
#[derive(Debug, Serialize, Deserialize)]
enum MembershipRequest {
    Admit {
        id: NodeId,
        info: NodeInfo,
    },
    /// From a Keel before retirement drove removals: refused (see
    /// `retire_members`).
    Remove {
        id: NodeId,
    },
    /// A member restarted with other addresses.
    Update {
        id: NodeId,
        info: NodeInfo,
    },
}

/// A forwarded write's answer.
#[derive(Debug, Serialize, Deserialize)]
enum ForwardError {
    NotLeader,
    Refused(Refusal),
    Failed(String),
}

/// What a node reports about itself to `status`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct LocalStatus {
    applied_version: u64,
    serving_version: u64,
    ready: bool,
    keel_version: String,
    #[serde(default)]
    vips: Vec<String>,
    /// The Raft timing it runs.
    #[serde(default)]
    timing: Option<keel_model::Timing>,
}

/// Start the cluster side of a node: restart, join or bootstrap.
pub async fn start(opts: &ClusterOptions) -> Result<ClusterNode, ClusterError> {
    let dir = &opts.data_dir;
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    // The Raft log and snapshots hold the CA key and password hashes.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io_err(dir))?;
    }
    let what = PathBuf::from(format!("cluster address {}", opts.cluster_addr));
    let listener = tokio::net::TcpListener::bind(opts.cluster_addr)
        .await
        .map_err(io_err(&what))?;
    let node_path = dir.join("node.json");
    let existing =
        match std::fs::read_to_string(&node_path) {
            Ok(text) => Some(serde_json::from_str::<NodeFile>(&text).map_err(|e| {
                ClusterError::Corrupt {
                    path: node_path.clone(),
                    reason: e.to_string(),
                }
            })?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_err(&node_path)(e)),
        };
    let (file, tls, bootstrapped) = match existing {
        Some(file) if opts.restore.is_some() => {
            return Err(ClusterError::Bootstrap(format!(
                "--restore seeds a new cluster and needs an empty data directory: {} holds \
                 node {} of cluster {}",
                dir.display(),
                file.name,
                file.cluster_id
            )))
        }
        Some(file) => {
            if opts.join.is_some() && file.pending_join.is_none() {
                tracing::info!(
                    "already a member of cluster {}; ignoring --join",
                    file.cluster_id
                );
            }
            (file.clone(), load_tls(dir)?, false)
        }
        None => match &opts.join {
            Some((addr, token)) => {
                let (file, tls) = obtain_certificate(opts, addr, &token.parse()?).await?;
                (file, tls, false)
            }
            None => {
                refuse_bootstrap_over_raft_state(dir)?;
                let id = random_id();
                let (cluster_id, ca_pem, ca_key) = match &opts.restore {
                    Some(backup) => restored_ca(dir, backup)?,
                    None => {
                        let cluster_id = keel_web_core::random_hex(8);
                        let (ca_pem, _) = ca_for_bootstrap(dir, &cluster_id)?;
                        let ca_key = read(&tls_dir(dir).join("ca.key"))?;
                        (cluster_id, ca_pem, ca_key)
                    }
                };
                let (cert_pem, key_pem) =
                    pki::new_node_cert(id, opts.cert_validity, &ca_pem, &ca_key)?;
                let tls = NodeTls {
                    ca_pem,
                    cert_pem,
                    key_pem,
                };
                save_tls(dir, &tls)?;
                let file = NodeFile {
                    id,
                    name: opts.node_name.clone().unwrap_or_else(default_name),
                    cluster_id,
                    pending_join: None,
                };
                save_node_file(dir, &file)?;
                (file, tls, true)
            }
        },
    };
    let recovered = read_recovery(dir)?;
    let identity = pki::LiveIdentity::new(&tls)?;
    let network = TlsNetwork::new(identity.client_config()?);
    let settings = crate::timing::running(dir, &opts.settings)?;
    let consensus = Consensus::start(file.id, &dir.join("raft"), &settings, network).await?;
    let bound = listener.local_addr().map_err(io_err(&what))?;
    Ok(ClusterNode {
        file,
        settings,
        consensus,
        tls,
        identity,
        listener: Some(listener),
        bound,
        bootstrapped,
        recovered,
    })
}

/// A data directory without `node.json` but with a Raft log is a node whose
/// identity file was lost (say, a power loss before it reached the disk):
/// bootstrapping a new identity over its log would fork the cluster, so the
/// node stops and says what to do.
fn refuse_bootstrap_over_raft_state(dir: &Path) -> Result<(), ClusterError> {
    let raft = dir.join("raft");
    let holds_state = std::fs::read_dir(&raft)
        .map(|mut entries| entries.next().is_some())
        .unwrap_or(false);
    if holds_state {
        return Err(ClusterError::Bootstrap(format!(
            "{} holds Raft state but {} is missing: this node was a member; restore \
             node.json from a backup, or remove {} to start a new node",
            raft.display(),
            dir.join("node.json").display(),
            dir.display()
        )));
    }
    Ok(())
}

/// A restored cluster keeps its backup's CA and cluster id (so clients that
/// trust its fingerprint, and the AWS keys sealed with a key derived from
/// it, still work): written where a bootstrap keeps its new one.
fn restored_ca(
    dir: &Path,
    backup: &keel_api::backup::Backup,
) -> Result<(String, String, String), ClusterError> {
    let identity = backup.state.identity.as_ref().ok_or_else(|| {
        ClusterError::Bootstrap("the backup holds no cluster identity (CA)".into())
    })?;
    let tdir = tls_dir(dir);
    std::fs::create_dir_all(&tdir).map_err(io_err(&tdir))?;
    // A backup holds the key; a survivor's own state (a recovery) does
    // not: it kept its key on disk, as a voter does.
    let key = match identity.legacy_key() {
        Some(key) => key.to_owned(),
        None => read(&tdir.join("ca.key")).map_err(|_| {
            ClusterError::Bootstrap(
                "the backup holds no CA key, and this node has none (only voters keep it)".into(),
            )
        })?,
    };
    write_private(&tdir.join("ca.key"), &key)?;
    write_private(&tdir.join("ca.pem"), &identity.ca_cert_pem)?;
    Ok((
        identity.cluster_id.clone(),
        identity.ca_cert_pem.clone(),
        key,
    ))
}

/// The bootstrap CA lives in `tls/ca.key` until it is replicated (and stays,
/// so a crash between the two steps can finish the bootstrap).
fn ca_for_bootstrap(dir: &Path, cluster_id: &str) -> Result<(String, String), ClusterError> {
    let tdir = tls_dir(dir);
    std::fs::create_dir_all(&tdir).map_err(io_err(&tdir))?;
    let (cert, key) = pki::new_ca(cluster_id)?;
    write_private(&tdir.join("ca.key"), &key)?;
    write_private(&tdir.join("ca.pem"), &cert)?;
    Ok((cert, key))
}

async fn obtain_certificate(
    opts: &ClusterOptions,
    addr: &str,
    token: &JoinToken,
) -> Result<(NodeFile, NodeTls), ClusterError> {
    let name = opts.node_name.clone().unwrap_or_else(default_name);
    let (key_pem, csr_pem) = pki::new_csr(&name)?;
    // The pinned configuration refuses the handshake unless the server's
    // chain holds the CA with the token's fingerprint, so the secret below
    // is only ever sent to the real cluster.
    let tls = pki::pinned_client_config(std::slice::from_ref(&token.ca_fingerprint))?;
    let mut client =
        RpcClient::new(tls, addr, ANY_NODE).map_err(|e| ClusterError::Join(e.to_string()))?;
    let grant: Result<CertificateGrant, String> = client
        .post(
            "/join/certificate",
            &CertificateRequest {
                token_id: token.id.clone(),
                secret: token.secret.clone(),
                name: name.clone(),
                csr_pem,
            },
            Duration::from_secs(15),
        )
        .await
        .map_err(|e| ClusterError::Join(join_failure(e)))?;
    let grant = grant.map_err(ClusterError::Join)?;
    if pki::fingerprint(&grant.ca_pem)? != token.ca_fingerprint {
        return Err(ClusterError::Join(
            "the cluster sent a CA that does not match the token".into(),
        ));
    }
    let tls = NodeTls {
        ca_pem: grant.ca_pem,
        cert_pem: grant.cert_pem,
        key_pem,
    };
    save_tls(&opts.data_dir, &tls)?;
    if let Some(timing) = &grant.timing {
        crate::timing::save(&opts.data_dir, timing)?;
    }
    let file = NodeFile {
        id: grant.node_id,
        name,
        cluster_id: grant.cluster_id,
        pending_join: Some(addr.to_owned()),
    };
    save_node_file(&opts.data_dir, &file)?;
    tracing::info!(node = %file.name, id = %format!("{:x}", file.id), cluster = %file.cluster_id, "received a node certificate");
    Ok((file, tls))
}

fn join_failure(e: RpcError) -> String {
    match e {
        RpcError::Unreachable { reason, addr } if reason.contains("fingerprint") => format!(
            "{addr} is not the cluster the token belongs to (its CA fingerprint differs; a token made before a CA rotation pins the old CA: make a new one); nothing secret was sent"
        ),
        other => other.to_string(),
    }
}

/// The first admin password, given to a node that bootstraps a cluster.
#[derive(Debug, Clone)]
pub enum AdminPassword {
    /// The password itself.
    Plain(String),
    /// Its argon2 hash (PHC string), as `keel hash-password` prints.
    Hash(String),
}

/// The file a generated first password is kept in until it is changed.
pub const INITIAL_PASSWORD_FILE: &str = "initial-admin-password";

async fn hash_off_thread(password: String) -> Result<String, ClusterError> {
    tokio::task::spawn_blocking(move || keel_web_core::hash_password(&password))
        .await
        .map_err(|e| ClusterError::Bootstrap(e.to_string()))?
        .map_err(ClusterError::Bootstrap)
}

impl ClusterNode {
    /// Finish starting: bootstrap the one-voter cluster and its first entries,
    /// or ask the cluster to admit this node. Returns the generated admin
    /// password when one was made.
    pub async fn settle(
        &mut self,
        opts: &ClusterOptions,
        control: &Arc<Control>,
        initial: Option<&Spec>,
        admin_password: Option<AdminPassword>,
    ) -> Result<Option<String>, ClusterError> {
        if let Some(join_addr) = self.file.pending_join.clone() {
            self.admit(control, &join_addr).await?;
            self.file.pending_join = None;
            save_node_file(&opts.data_dir, &self.file)?;
            return Ok(None);
        }
        let me = control.me.clone();
        if !self.consensus.is_initialized().await {
            self.consensus
                .bootstrap(me)
                .await
                .map_err(|e| ClusterError::Bootstrap(e.to_string()))?;
            self.bootstrapped = true;
        }
        if self.consensus.applied().borrow().state.identity.is_some() {
            tokio::spawn(refresh_addresses(control.clone(), self.file.id));
            return Ok(None);
        }
        // First entries of a new cluster (or a bootstrap interrupted before
        // they were committed).
        let restore = opts.restore.clone().or_else(|| self.recovered.clone());
        let identity = match restore.as_ref().and_then(|b| b.state.identity.clone()) {
            Some(identity) => identity,
            None => ClusterIdentity {
                cluster_id: self.file.cluster_id.clone(),
                ca_cert_pem: self.tls.ca_pem.clone(),
                ca_key_pem: String::new(),
                ca_key_moved: false,
                ca_rotation: None,
            },
        };
        // The CA key stays on this node's disk (`restored_ca` put a
        // backup's there): it is never replicated.
        let identity = ClusterIdentity {
            ca_key_pem: String::new(),
            ca_key_moved: false,
            ca_rotation: None,
            ..identity
        };
        let bootstrap_err = |e: ControlError| ClusterError::Bootstrap(e.to_string());
        // The config before the identity: the data plane follows the
        // replicated state only once it has an identity, so its first step
        // is to the whole config, not through an empty one (which would
        // unbind the file's listeners and drain their members, then bind
        // them again). A restored cluster's first config is its backup's,
        // with its users, tokens and keys.
        let first = match &restore {
            // Without the identity (`Init` sets it, without the CA key).
            Some(backup) => Some(ClusterCommand::Restore(Box::new(ClusterState {
                identity: None,
                ..backup.state.clone()
            }))),
            None => initial.map(|spec| ClusterCommand::Spec(Command::ReplaceSpec(spec.clone()))),
        };
        if let Some(first) = first {
            control.propose(first).await.map_err(bootstrap_err)?;
        }
        // This node is the whole cluster: it is at this Keel's version, and
        // a new cluster (or a restored one without them) starts with this
        // node's timing and a secret of its own, all before the identity
        // makes it ready, so no write of its own follows a ready cluster.
        control
            .propose(ClusterCommand::SetVersion {
                version: keel_model::CLUSTER_VERSION,
            })
            .await
            .map_err(bootstrap_err)?;
        // The file's objects are the file's: a later edit of it that drops
        // one removes it (see `source`).
        if let (None, Some(spec)) = (&restore, initial) {
            let own = ClusterCommand::Own {
                manager: "file".to_owned(),
                objects: spec.objects(true),
                force: false,
            };
            control.propose(own).await.map_err(bootstrap_err)?;
        }
        let state = self.consensus.applied().borrow().state.clone();
        if state.timing.is_none() {
            control
                .propose(ClusterCommand::SetTiming(control.timing))
                .await
                .map_err(bootstrap_err)?;
        }
        if state.secret.is_none() {
            let secret = keel_model::ClusterSecret::new(keel_web_core::random_hex(32));
            control
                .propose(ClusterCommand::SetSecret(secret))
                .await
                .map_err(bootstrap_err)?;
        }
        control
            .propose(ClusterCommand::Init(identity))
            .await
            .map_err(bootstrap_err)?;
        if let Some(backup) = &restore {
            // The history says where the state came from.
            let (kind, what) = if self.recovered.is_some() {
                (
                    "recovery",
                    format!(
                        "{} became a one-node cluster with its last committed state (config \
                         version {}) after the loss of a quorum (keel recover \
                         --force-new-cluster)",
                        self.file.name, backup.version
                    ),
                )
            } else {
                (
                    "restore",
                    format!(
                        "a new cluster on {} from a backup taken on {} at config version {}",
                        self.file.name, backup.node, backup.version
                    ),
                )
            };
            control
                .propose(ClusterCommand::Authored {
                    by: self.file.name.clone(),
                    at: std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs()),
                    command: Box::new(ClusterCommand::Record {
                        kind: kind.into(),
                        what,
                    }),
                })
                .await
                .map_err(bootstrap_err)?;
            if self.recovered.take().is_some() {
                let file = opts.data_dir.join(RECOVERY_FILE);
                std::fs::remove_file(&file).map_err(io_err(&file))?;
                tracing::warn!(
                    cluster = %self.file.cluster_id,
                    node = %self.file.name,
                    index = backup.version,
                    "recovered: a one-node cluster with this node's last committed state; \
                     the other nodes rejoin with tokens"
                );
            } else {
                tracing::info!(
                    cluster = %self.file.cluster_id,
                    node = %self.file.name,
                    backup_version = backup.version,
                    backup_taken_at = backup.taken_at,
                    backup_node = %backup.node,
                    "restored a new cluster from a backup"
                );
            }
            return Ok(None);
        }
        let (hash, password) = match admin_password {
            Some(AdminPassword::Hash(hash)) => (hash, None),
            Some(AdminPassword::Plain(p)) => (hash_off_thread(p).await?, None),
            None => {
                let p = keel_web_core::random_hex(12);
                (hash_off_thread(p.clone()).await?, Some(p))
            }
        };
        control
            .propose(ClusterCommand::SetUser {
                name: "admin".into(),
                user: User {
                    password_hash: hash,
                    must_change_password: password.is_some(),
                    role: keel_model::Role::Admin,
                },
            })
            .await
            .map_err(bootstrap_err)?;
        tracing::info!(cluster = %self.file.cluster_id, node = %self.file.name, "bootstrapped a new cluster");
        if let Some(password) = password {
            write_private(&opts.data_dir.join(INITIAL_PASSWORD_FILE), &password)?;
            return Ok(Some(password));
        }
        Ok(None)
    }

    /// The admin API's TLS, signed by the cluster CA (once this node has
    /// the replicated identity).
    pub async fn admin_tls(
        &self,
        control: &Control,
        opts: &ClusterOptions,
        also: &[SocketAddr],
    ) -> Result<Arc<rustls::ServerConfig>, ClusterError> {
        let mut applied = self.consensus.applied();
        let identity = tokio::time::timeout(
            Duration::from_secs(30),
            applied.wait_for(|a| a.state.identity.is_some()),
        )
        .await
        .ok()
        .and_then(|r| r.ok().and_then(|a| a.state.identity.clone()))
        .ok_or_else(|| ClusterError::Bootstrap("the cluster identity never arrived".into()))?;
        // The node's name, localhost, and the admin address, or with a
        // wildcard one every address of the host: kept across restarts, so
        // clients that pinned it keep working.
        let mut names = vec![self.file.name.clone(), "localhost".to_owned()];
        // The AWS and Octavia endpoints (`also`) present it too.
        for ip in std::iter::once(opts.admin_addr.ip()).chain(also.iter().map(SocketAddr::ip)) {
            if ip.is_unspecified() {
                names.extend(["127.0.0.1".to_owned(), "::1".to_owned()]);
                names.extend(
                    keel_vip::host_addresses()
                        .into_iter()
                        .map(|(_, ip, _)| ip.to_string()),
                );
            } else {
                names.push(ip.to_string());
            }
        }
        names.sort();
        names.dedup();
        if let Some((live, _)) = control.admin_cert.get() {
            return Ok(live.server_config()?);
        }
        let dir = tls_dir(&opts.data_dir);
        let (cert_path, key_path) = (dir.join("admin.pem"), dir.join("admin.key"));
        let kept = read(&cert_path)
            .and_then(|cert| Ok((cert, read(&key_path)?)))
            .ok()
            .filter(|(cert, _)| pki::admin_cert_fits(cert, &identity.ca_cert_pem, &names));
        let (cert, key) = match kept {
            Some(kept) => kept,
            None => control.save_admin_cert(&names).await?,
        };
        let live = pki::LiveCert::new(&cert, &key, &identity.ca_cert_pem)?;
        let (live, _) = control.admin_cert.get_or_init(|| (live, names));
        Ok(live.server_config()?)
    }

    async fn admit(&self, control: &Control, join_addr: &str) -> Result<(), ClusterError> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let request = MembershipRequest::Admit {
            id: self.file.id,
            info: control.me.clone(),
        };
        loop {
            let mut client = RpcClient::new(control.client_tls.clone(), join_addr, ANY_NODE)
                .map_err(|e| ClusterError::Join(e.to_string()))?;
            let answer: Result<Result<(), String>, RpcError> = client
                .post("/cluster/membership", &request, Duration::from_secs(30))
                .await;
            match answer {
                Ok(Ok(())) => {
                    tracing::info!(node = %self.file.name, via = %join_addr, "admitted to the cluster");
                    return Ok(());
                }
                Ok(Err(why)) if Instant::now() >= deadline => return Err(ClusterError::Join(why)),
                Err(e) if Instant::now() >= deadline => {
                    return Err(ClusterError::Join(e.to_string()))
                }
                other => {
                    tracing::info!(answer = ?other.map_err(|e| e.to_string()), "admission not confirmed yet; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }
}

/// After a restart with other addresses, tell the cluster: the leader may no
/// longer reach this node, so ask each other member (any of them forwards
/// to the leader) until one confirms.
async fn refresh_addresses(control: Arc<Control>, id: NodeId) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        let members = control.consensus.members();
        let Some(me) = members.iter().find(|m| m.id == id) else {
            return;
        };
        if me.info == control.me {
            return;
        }
        tracing::info!(old = %me.info, new = %control.me, "this node's addresses changed; updating the membership");
        let request = MembershipRequest::Update {
            id,
            info: control.me.clone(),
        };
        for peer in members.iter().filter(|m| m.id != id) {
            let Ok(mut client) = RpcClient::new(
                control.client_tls.clone(),
                peer.info.cluster_addr.clone(),
                &node_server_name(peer.id),
            ) else {
                continue;
            };
            let answer: Result<Result<(), String>, RpcError> = client
                .post("/cluster/membership", &request, Duration::from_secs(10))
                .await;
            if let Ok(Ok(())) = answer {
                tracing::info!(via = %peer.info.name, "membership updated with this node's new addresses");
                return;
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    tracing::warn!("could not update this node's addresses in the membership");
}

/// The node's control plane: proposes (forwarding to the leader), reports
/// status, answers the cluster routes.
pub struct Control {
    /// This node's membership info.
    pub me: NodeInfo,
    consensus: Consensus,
    client_tls: Arc<rustls::ClientConfig>,
    dataplane: Arc<Dataplane>,
    /// The Raft index whose spec the data plane serves.
    pub serving: Arc<AtomicU64>,
    /// False while the data plane refuses the applied spec.
    pub healthy: watch::Sender<bool>,
    /// The VIPs this node holds, from the VIP rule.
    pub held_vips: crate::vip::Held,
    /// The VIP rule's counters.
    pub vip_metrics: Arc<crate::vip::VipMetrics>,
    /// The cluster as gossip shows it.
    pub gossip: watch::Sender<keel_gossip::ClusterView>,
    /// Gossip datagrams dropped (not sealed with a key this node opens,
    /// stale, replayed or unreadable), as the gossip task last saw.
    pub gossip_rejected: AtomicU64,
    /// Traffic history for the dashboard.
    pub traffic: Arc<crate::traffic::TrafficLog>,
    /// What this node saw happen, for the dashboard.
    pub events: Arc<crate::events::EventLog>,
    /// Every password check on this node goes through it.
    pub passwords: keel_web_core::PasswordGate,
    /// Anonymous join attempts.
    pub joins: JoinLimits,
    /// The certificate this node presents, renewed while it runs.
    pub identity: Arc<pki::LiveIdentity>,
    /// How long the node certificates this node issues are valid.
    cert_validity: Duration,
    /// How many voters this node, leading, promotes joiners to.
    max_voters: usize,
    /// The Raft timing this node runs.
    pub timing: keel_model::Timing,
    data_dir: PathBuf,
    leader_link: Mutex<Option<(NodeId, RpcClient)>>,
    /// The fingerprint of the CA this node started with, until the
    /// replicated identity is applied.
    ca_fingerprint: String,
    /// The CA key, on a voter (see `ca.rs`).
    pub(crate) ca_key: crate::ca::CaKey,
    /// A rotation's new CA key, on a voter while every node comes to trust
    /// the new CA (see `ca.rs`).
    pub(crate) ca_next_key: crate::ca::CaKey,
    /// Held while the CA keys are placed or a rotation begins (so the new
    /// key is never taken for a stray one before its entry applies).
    pub(crate) ca_placing: tokio::sync::Mutex<()>,
    /// The admin API's certificate, once made, and the names it must carry:
    /// made again when the CA that signs changes.
    pub(crate) admin_cert: std::sync::OnceLock<(Arc<pki::LiveCert>, Vec<String>)>,
}

impl Control {
    /// A control plane over a started node.
    pub fn new(
        node: &ClusterNode,
        opts: &ClusterOptions,
        dataplane: Arc<Dataplane>,
    ) -> Result<Arc<Self>, ClusterError> {
        let advertise = opts.advertise_addr.unwrap_or(opts.cluster_addr);
        let cluster_addr = if advertise.port() == 0 {
            SocketAddr::new(advertise.ip(), node.bound.port())
        } else {
            advertise
        };
        Ok(Arc::new(Control {
            me: NodeInfo {
                name: node.file.name.clone(),
                cluster_addr: cluster_addr.to_string(),
                // A wildcard admin address is reached at the advertised IP.
                admin_addr: if opts.admin_addr.ip().is_unspecified() {
                    SocketAddr::new(cluster_addr.ip(), opts.admin_addr.port()).to_string()
                } else {
                    opts.admin_addr.to_string()
                },
                gossip_addr: SocketAddr::new(cluster_addr.ip(), opts.gossip_addr.port())
                    .to_string(),
            },
            consensus: node.consensus.clone(),
            client_tls: node.identity.client_config()?,
            dataplane,
            serving: Arc::new(AtomicU64::new(0)),
            healthy: watch::Sender::new(true),
            held_vips: watch::Sender::new(Default::default()),
            vip_metrics: Default::default(),
            gossip: watch::Sender::new(Default::default()),
            gossip_rejected: AtomicU64::new(0),
            traffic: Arc::default(),
            events: Arc::default(),
            passwords: keel_web_core::PasswordGate::new(opts.password_checks),
            joins: JoinLimits::default(),
            identity: node.identity.clone(),
            cert_validity: opts.cert_validity,
            max_voters: opts.max_voters,
            timing: node.settings.timing(),
            data_dir: opts.data_dir.clone(),
            leader_link: Mutex::new(None),
            ca_fingerprint: pki::fingerprint(&node.tls.ca_pem)?,
            ca_key: crate::ca::CaKey::load(tls_dir(&opts.data_dir).join("ca.key")),
            ca_next_key: crate::ca::CaKey::load(tls_dir(&opts.data_dir).join("ca-next.key")),
            ca_placing: tokio::sync::Mutex::new(()),
            admin_cert: std::sync::OnceLock::new(),
        }))
    }

    /// The fingerprint of the CA that signs now (join tokens pin it).
    pub(crate) fn ca_fingerprint_now(&self) -> String {
        let (_, state) = self.state();
        state
            .identity
            .as_ref()
            .and_then(|i| pki::fingerprint(&i.ca_cert_pem).ok())
            .unwrap_or_else(|| self.ca_fingerprint.clone())
    }

    /// A new admin certificate for `names` and its key: signed here on a
    /// voter, by the leader on a learner (which holds no CA key).
    pub(crate) async fn new_admin_cert(
        &self,
        names: &[String],
    ) -> Result<(String, String), ClusterError> {
        let control = self;
        let identity = control.state().1.identity.clone();
        if let (Ok(key), Some(identity)) = (control.ca_key_here(), identity) {
            return Ok(pki::new_admin_cert(
                &self.me.name,
                names,
                &identity.ca_cert_pem,
                &key,
            )?);
        }
        let (key_pem, csr_pem) = pki::new_csr(&self.me.name)?;
        let request = AdminCertRequest {
            csr_pem,
            names: names.to_vec(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let asked = async {
                let leader = control.leader(deadline).await.map_err(|e| e.to_string())?;
                control
                    .to_leader::<_, Result<String, String>>(
                        &leader,
                        "/cluster/admin-cert",
                        &request,
                        WRITE_DEADLINE,
                    )
                    .await
                    .map_err(|e| e.to_string())?
            };
            match asked.await {
                Ok(cert) => return Ok((cert, key_pem)),
                Err(why) if Instant::now() >= deadline => {
                    return Err(ClusterError::Bootstrap(format!(
                        "no admin certificate from the leader: {why}"
                    )))
                }
                Err(why) => {
                    tracing::debug!(%why, "asking the leader for an admin certificate again");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }

    /// A new admin certificate for `names`, kept in the data directory:
    /// (certificate, key) PEM.
    async fn save_admin_cert(&self, names: &[String]) -> Result<(String, String), ClusterError> {
        let (cert, key) = self.new_admin_cert(names).await?;
        let dir = tls_dir(&self.data_dir);
        write_private(&dir.join("admin.key"), &key)?;
        write_private(&dir.join("admin.pem"), &cert)?;
        tracing::info!(names = %names.join(","), "made a new admin API certificate");
        Ok((cert, key))
    }

    /// Makes the admin API's certificate again when it no longer fits (the
    /// CA that signs changed, or a third of its life is left), and presents
    /// the new one from the next handshake on.
    pub(crate) async fn refresh_admin_cert(&self) -> Result<(), String> {
        let Some((live, names)) = self.admin_cert.get() else {
            return Ok(());
        };
        let (_, state) = self.state();
        let Some(identity) = state.identity.as_ref() else {
            return Ok(());
        };
        if pki::admin_cert_fits(&live.cert_pem(), &identity.ca_cert_pem, names) {
            return Ok(());
        }
        let (cert, key) = self
            .save_admin_cert(names)
            .await
            .map_err(|e| e.to_string())?;
        live.replace(&cert, &key, &identity.ca_cert_pem)
            .map_err(|e| e.to_string())
    }

    /// The client configuration for calls to other nodes.
    pub(crate) fn client_tls(&self) -> Arc<rustls::ClientConfig> {
        self.client_tls.clone()
    }

    /// The CA key, or why this node cannot sign with it.
    fn ca_key_here(&self) -> Result<String, String> {
        let (_, state) = self.state();
        let signing = state.identity.as_ref().map(|i| i.ca_cert_pem.as_str());
        if let (Some(key), Some(signing)) = (self.ca_key.get(), signing) {
            if !pki::key_matches_ca(&key, signing) {
                return Err(
                    "this node does not hold the key of the CA that signs now yet \
                            (a CA rotation moves it to every voter): retry shortly"
                        .into(),
                );
            }
        }
        self.ca_key.get().ok_or_else(|| {
            let voters: Vec<String> = self
                .consensus
                .members()
                .into_iter()
                .filter(|m| m.voter)
                .map(|m| format!("{} at {}", m.info.name, m.info.cluster_addr))
                .collect();
            format!(
                "this node does not hold the cluster CA key (only voters do): ask a voter ({})",
                voters.join(", ")
            )
        })
    }

    /// The Raft node behind this control plane.
    pub fn consensus(&self) -> &Consensus {
        &self.consensus
    }

    /// Wait for a leader to be known, up to the write deadline.
    async fn leader(&self, deadline: Instant) -> Result<(NodeId, NodeInfo), ControlError> {
        loop {
            if let Some(leader) = self.consensus.leader() {
                return Ok(leader);
            }
            if Instant::now() >= deadline {
                return Err(ControlError::NoLeader(
                    "this node does not know a leader (cut off, or an election is under way)"
                        .into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// POST to the leader over the mutual-TLS link.
    async fn to_leader<Req: Serialize, Resp: serde::de::DeserializeOwned>(
        &self,
        leader: &(NodeId, NodeInfo),
        path: &str,
        body: &Req,
        timeout: Duration,
    ) -> Result<Resp, RpcError> {
        let mut link = self.leader_link.lock().await;
        if link.as_ref().is_none_or(|(id, _)| *id != leader.0) {
            let client = RpcClient::new(
                self.client_tls.clone(),
                leader.1.cluster_addr.clone(),
                &node_server_name(leader.0),
            )?;
            *link = Some((leader.0, client));
        }
        match link.as_mut() {
            Some((_, client)) => client.post(path, body, timeout).await,
            None => Err(RpcError::Network {
                addr: leader.1.cluster_addr.clone(),
                reason: "no link".into(),
            }),
        }
    }

    /// Asks node `id` to stand for election now, after this node stopped
    /// leading `term` (`/raft/elect`); whether it did.
    pub(crate) async fn ask_to_elect(&self, id: NodeId, info: &NodeInfo, term: u64) -> bool {
        let Ok(mut client) = RpcClient::new(
            self.client_tls.clone(),
            info.cluster_addr.clone(),
            &node_server_name(id),
        ) else {
            return false;
        };
        client
            .post::<u64, bool>("/raft/elect", &term, Duration::from_millis(500))
            .await
            .unwrap_or(false)
    }

    async fn membership(&self, request: MembershipRequest) -> Result<(), ControlError> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let leader = self.leader(deadline).await?;
            let result = if leader.0 == self.consensus.id() {
                self.change_membership(&request).await
            } else {
                match self
                    .to_leader::<_, Result<(), String>>(
                        &leader,
                        "/cluster/membership",
                        &request,
                        Duration::from_secs(30),
                    )
                    .await
                {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(why)) => Err(ControlError::Conflict(why)),
                    Err(e) => Err(ControlError::NoLeader(e.to_string())),
                }
            };
            match result {
                Err(ControlError::NoLeader(_)) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                other => return other,
            }
        }
    }

    async fn change_membership(&self, request: &MembershipRequest) -> Result<(), ControlError> {
        let result = match request {
            MembershipRequest::Admit { id, info } => {
                let taken = self
                    .consensus
                    .members()
                    .into_iter()
                    .any(|m| m.info.name == info.name && m.id != *id);
                if taken {
                    return Err(ControlError::Conflict(format!(
                        "a node named {:?} is already a member",
                        info.name
                    )));
                }
                self.consensus
                    .admit(*id, info.clone(), self.max_voters)
                    .await
                    .map(|voter| {
                        tracing::info!(node = %info.name, voter, "admitted node");
                    })
            }
            MembershipRequest::Remove { .. } => {
                return Err(ControlError::Conflict(REMOVE_BY_RETIRING.into()))
            }
            MembershipRequest::Update { id, info } => {
                self.consensus.update_node(*id, info.clone()).await
            }
        };
        result.map_err(|e| match e {
            ProposeError::NotLeader { .. } => ControlError::NoLeader(e.to_string()),
            other => ControlError::Conflict(other.to_string()),
        })
    }

    async fn local_status(&self) -> LocalStatus {
        LocalStatus {
            applied_version: self.consensus.applied().borrow().index,
            serving_version: self.serving.load(Ordering::Relaxed),
            ready: self.ready(),
            keel_version: env!("CARGO_PKG_VERSION").into(),
            vips: self.held_vips.borrow().iter().cloned().collect(),
            timing: Some(self.timing),
        }
    }

    /// Ready: a member of an initialised cluster, and the data plane serves
    /// the applied config.
    pub fn ready(&self) -> bool {
        let applied = self.consensus.applied().borrow().clone();
        applied.state.identity.is_some()
            && self.dataplane.version() > 0
            && self.serving.load(Ordering::Relaxed) > 0
    }

    /// The cluster listener's routes (besides Raft's own).
    pub fn routes(self: &Arc<Self>) -> Router {
        use keel_consensus::rpc::{require, Standing};
        let members = Router::new()
            .route("/cluster/propose", post(forwarded_propose))
            .route("/cluster/read-index", post(forwarded_read_index))
            .route("/cluster/status", post(local_status))
            .route("/cluster/renew", post(renew_certificate))
            .route("/cluster/admin-cert", post(admin_certificate))
            .route("/cluster/ca-report", post(ca_report))
            .layer(axum::middleware::from_fn_with_state(
                (self.consensus.clone(), Standing::Member),
                require,
            ));
        let voters = Router::new()
            .route("/cluster/ca-key", post(ca_key))
            .route("/cluster/ca-next-key", post(ca_next_key))
            .layer(axum::middleware::from_fn_with_state(
                (self.consensus.clone(), Standing::Voter),
                require,
            ));
        // A joiner is not a member yet when it asks to be admitted: the
        // handler checks what each request needs of its caller.
        let certified = Router::new()
            .route("/cluster/membership", post(forwarded_membership))
            .layer(axum::middleware::from_fn_with_state(
                (self.consensus.clone(), Standing::Any),
                require,
            ));
        Router::new()
            .route("/join/certificate", post(join_certificate))
            .merge(members)
            .merge(voters)
            .merge(certified)
            .layer(axum::extract::DefaultBodyLimit::max(256 << 10))
            .with_state(self.clone())
    }
}

impl ControlPlane for Control {
    fn state(&self) -> (u64, Arc<ClusterState>) {
        let applied = self.consensus.applied().borrow().clone();
        (applied.index, applied.state)
    }

    async fn propose(&self, command: ClusterCommand) -> Result<u64, ControlError> {
        let version = self.consensus.applied().borrow().state.version();
        if command.needs() > version {
            return Err(ControlError::Conflict(crate::upgrade::conflict(
                self,
                command.needs(),
                version,
            )));
        }
        let deadline = Instant::now() + WRITE_DEADLINE;
        // One id for every try: a try whose answer was lost after it
        // committed must not apply again when the next one does.
        let command = ClusterCommand::Once {
            request: keel_web_core::random_hex(12),
            command: Box::new(command),
        };
        loop {
            let leader = self.leader(deadline).await?;
            let attempt = if leader.0 == self.consensus.id() {
                match self.consensus.propose(command.clone()).await {
                    Ok(index) => Ok(index),
                    Err(ProposeError::Refused(r)) => return Err(ControlError::Refused(r)),
                    Err(ProposeError::NeedsVersion { needs, version }) => {
                        return Err(ControlError::Conflict(crate::upgrade::conflict(
                            self, needs, version,
                        )))
                    }
                    Err(e) => Err(e.to_string()),
                }
            } else {
                match self
                    .to_leader::<_, Result<u64, ForwardError>>(
                        &leader,
                        "/cluster/propose",
                        &command,
                        WRITE_DEADLINE,
                    )
                    .await
                {
                    Ok(Ok(index)) => Ok(index),
                    Ok(Err(ForwardError::Refused(r))) => return Err(ControlError::Refused(r)),
                    Ok(Err(e)) => Err(format!("{e:?}")),
                    Err(e) => Err(e.to_string()),
                }
            };
            match attempt {
                Ok(index) => {
                    // A write returns once this node applies it, so a read
                    // right after the write sees it.
                    if !self.consensus.wait_applied(index, WRITE_DEADLINE).await {
                        return Err(ControlError::NoLeader(format!(
                            "committed as version {index} but not applied here in time"
                        )));
                    }
                    return Ok(index);
                }
                Err(why) if Instant::now() >= deadline => return Err(ControlError::NoLeader(why)),
                Err(why) => {
                    tracing::debug!(%why, "write not accepted yet; retrying");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    async fn read(&self) -> Result<(u64, Arc<ClusterState>), ControlError> {
        let deadline = Instant::now() + WRITE_DEADLINE;
        loop {
            let leader = self.leader(deadline).await.map_err(|e| match e {
                ControlError::NoLeader(why) => ControlError::Unconfirmed(why),
                other => other,
            })?;
            let index = if leader.0 == self.consensus.id() {
                self.consensus.read_index().await.map_err(|e| e.to_string())
            } else {
                match self
                    .to_leader::<_, Result<u64, ForwardError>>(
                        &leader,
                        "/cluster/read-index",
                        &(),
                        WRITE_DEADLINE,
                    )
                    .await
                {
                    Ok(Ok(index)) => Ok(index),
                    Ok(Err(e)) => Err(format!("{e:?}")),
                    Err(e) => Err(e.to_string()),
                }
            };
            match index {
                Ok(index) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if !self.consensus.wait_applied(index, left).await {
                        return Err(ControlError::Unconfirmed(format!(
                            "this node has not applied version {index} yet"
                        )));
                    }
                    return Ok(self.state());
                }
                Err(why) if Instant::now() >= deadline => {
                    return Err(ControlError::Unconfirmed(why))
                }
                Err(why) => {
                    tracing::debug!(%why, "read not confirmed yet; retrying");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    async fn status(&self) -> ClusterStatus {
        let leadership = self.consensus.leadership().borrow().clone();
        let members = self.consensus.members();
        // Ask every other node at once; each answer is bounded by a timeout.
        let mut queries = Vec::new();
        for m in &members {
            if m.id == self.consensus.id() {
                queries.push(None);
                continue;
            }
            let tls = self.client_tls.clone();
            let addr = m.info.cluster_addr.clone();
            let name = node_server_name(m.id);
            queries.push(Some(tokio::spawn(async move {
                let mut client = RpcClient::new(tls, addr, &name).ok()?;
                client
                    .post::<_, LocalStatus>("/cluster/status", &(), Duration::from_secs(1))
                    .await
                    .ok()
            })));
        }
        let mut reports = Vec::new();
        for query in queries {
            reports.push(match query {
                None => Some(self.local_status().await),
                Some(handle) => handle.await.ok().flatten(),
            });
        }
        let view = self.gossip.borrow().clone();
        let drained = self
            .consensus
            .applied()
            .borrow()
            .state
            .drained_nodes
            .clone();
        let versions: std::collections::BTreeMap<String, Option<u32>> =
            crate::upgrade::member_versions(self).into_iter().collect();
        let leader_name = leadership
            .leader
            .and_then(|l| members.iter().find(|m| m.id == l))
            .map(|m| m.info.name.clone());
        ClusterStatus {
            this_node: self.me.name.clone(),
            ca_fingerprint: format!("SHA256:{}", self.ca_fingerprint_now()),
            leader: leader_name,
            term: leadership.term,
            applied_version: self.consensus.applied().borrow().index,
            cluster_version: self.consensus.applied().borrow().state.version(),
            timing: self.consensus.applied().borrow().state.timing,
            nodes: members
                .iter()
                .zip(reports)
                .map(|(m, report)| NodeStatus {
                    id: format!("{:x}", m.id),
                    name: m.info.name.clone(),
                    role: if Some(m.id) == leadership.leader {
                        "leader"
                    } else if m.voter {
                        "follower"
                    } else {
                        "learner"
                    }
                    .into(),
                    cluster_addr: m.info.cluster_addr.clone(),
                    admin_addr: m.info.admin_addr.clone(),
                    reachable: report.is_some(),
                    applied_version: report.as_ref().map(|r| r.applied_version),
                    serving_version: report.as_ref().map(|r| r.serving_version),
                    ready: report.as_ref().map(|r| r.ready),
                    vips: report.as_ref().map(|r| r.vips.clone()).unwrap_or_default(),
                    live: view.get(&m.info.name).map(|p| p.live),
                    timing: report.as_ref().and_then(|r| r.timing),
                    keel_version: report.map(|r| r.keel_version),
                    drained: drained.contains(&m.id),
                    cluster_version: versions.get(&m.info.name).copied().flatten(),
                })
                .collect(),
            members: crate::gossip::member_health(&view),
        }
    }

    async fn remove_node(&self, name: &str, by: &str) -> Result<(), ControlError> {
        let members = self.consensus.members();
        let member = members
            .iter()
            .find(|m| m.info.name == name)
            .ok_or_else(|| ControlError::NotFound(format!("node {name:?} is not a member")))?;
        let voters: Vec<_> = members.iter().filter(|m| m.voter).collect();
        if member.voter && voters.len() == 1 {
            return Err(ControlError::Conflict(format!(
                "node {name:?} is the last voter: a cluster needs one"
            )));
        }
        // Retired in the replicated state: from the moment that applies,
        // its certificate is refused everywhere; the leader then takes it
        // out of the membership (`retire_members`).
        self.propose(ClusterCommand::Authored {
            by: by.to_owned(),
            at: unix_now(),
            command: Box::new(ClusterCommand::RetireNode { id: member.id }),
        })
        .await?;
        let id = member.id;
        // A node leaving does not hear of its own removal once it is out.
        let wait = if id == self.consensus.id() {
            Duration::from_secs(3)
        } else {
            Duration::from_secs(30)
        };
        let deadline = Instant::now() + wait;
        while self.consensus.members().iter().any(|m| m.id == id) {
            if Instant::now() >= deadline {
                if id == self.consensus.id() {
                    break;
                }
                return Err(ControlError::NoLeader(format!(
                    "node {name:?} is retired (its certificate is refused) but the leader has \
                     not taken it out of the membership yet"
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tracing::info!(node = %name, by, "removed node from the cluster");
        Ok(())
    }

    async fn ca(&self) -> Result<keel_web_core::CaStatus, ControlError> {
        crate::ca::status(self).await
    }

    async fn rotate_ca(
        &self,
        by: &str,
        abandon: bool,
    ) -> Result<keel_web_core::CaStatus, ControlError> {
        crate::ca::rotate(self, by, abandon).await
    }

    fn ca_fingerprint(&self) -> String {
        self.ca_fingerprint_now()
    }

    fn ca_key(&self) -> Option<String> {
        // The key of the CA that signs: during a CA rotation's hand-over a
        // voter may still hold the old one for a moment.
        self.ca_key_here().ok()
    }

    fn cluster_addresses(&self) -> Vec<SocketAddr> {
        self.consensus
            .members()
            .iter()
            .flat_map(|m| {
                [
                    &m.info.admin_addr,
                    &m.info.cluster_addr,
                    &m.info.gossip_addr,
                ]
            })
            .chain([
                &self.me.admin_addr,
                &self.me.cluster_addr,
                &self.me.gossip_addr,
            ])
            .filter_map(|a| a.parse().ok())
            .collect()
    }

    fn traffic(&self) -> keel_web_core::Traffic {
        self.traffic.snapshot()
    }

    fn serving(&self) -> keel_web_core::Serving {
        keel_web_core::Serving {
            version: self.serving.load(Ordering::Relaxed),
            refused: !*self.healthy.borrow(),
        }
    }

    fn listener_counters(&self) -> Vec<keel_web_core::ListenerCounters> {
        self.dataplane
            .listener_counters()
            .into_iter()
            .map(|(lb, addr, c)| keel_web_core::ListenerCounters {
                load_balancer: lb,
                port: addr.port(),
                connections: c.connections,
                active: c.active,
                bytes_in: c.bytes_in,
                bytes_out: c.bytes_out,
                errors: c.errors,
            })
            .collect()
    }

    fn host_networks(&self) -> Vec<keel_web_core::HostNetwork> {
        let vips: Vec<std::net::IpAddr> = self
            .consensus
            .applied()
            .borrow()
            .state
            .spec
            .load_balancers
            .values()
            .filter_map(|l| l.vip.map(|v| v.addr))
            .collect();
        keel_vip::host_addresses()
            .into_iter()
            .filter(|(_, ip, _)| !vips.contains(ip))
            .map(
                |(interface, address, prefix_len)| keel_web_core::HostNetwork {
                    interface,
                    address,
                    prefix_len,
                },
            )
            .collect()
    }

    fn events(&self) -> Vec<keel_web_core::Event> {
        self.events.list()
    }
}

/// Why a member's request to remove a node is refused.
const REMOVE_BY_RETIRING: &str = "membership changes are the leader's own: a node is removed by \
     committing its retirement (`keel node remove`), and the leader then takes it out";

/// On the leader: takes retired nodes out of the membership (the second
/// half of `keel node remove`, and of a removal a leader that lost its
/// leadership left unfinished). Until `stop`.
pub(crate) async fn retire_members(control: Arc<Control>, mut stop: watch::Receiver<bool>) {
    let mut applied = control.consensus.applied().clone();
    loop {
        let leads = control.consensus.leadership().borrow().is_leader;
        if leads {
            let retired = applied.borrow_and_update().state.retired_nodes.clone();
            for member in control.consensus.members() {
                if !retired.contains(&member.id) {
                    continue;
                }
                match control.consensus.remove(member.id).await {
                    Ok(()) => {
                        tracing::info!(node = %member.info.name, "took a retired node out of the membership")
                    }
                    Err(e) => {
                        tracing::warn!(node = %member.info.name, error = %e, "cannot take a retired node out of the membership yet")
                    }
                }
            }
        }
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = applied.changed() => {}
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

/// A write a member forwards: only what a follower's own API makes (see
/// `ClusterCommand::forwardable`), and a change a user made is recorded as
/// made through that node.
async fn forwarded_propose(
    State(control): State<Arc<Control>>,
    axum::Extension(peer): axum::Extension<keel_consensus::rpc::Peer>,
    Json(command): Json<ClusterCommand>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let from = peer.node.map_or_else(
        || peer.addr.to_string(),
        |id| {
            control
                .consensus
                .members()
                .into_iter()
                .find(|m| m.id == id)
                .map_or_else(|| format!("{id:x}"), |m| m.info.name)
        },
    );
    if let Err(why) = command.forwardable() {
        tracing::warn!(peer = %peer.addr, node = %from, %why, "refused a forwarded write");
        return (http::StatusCode::FORBIDDEN, format!("{why}\n")).into_response();
    }
    tracing::info!(node = %from, change = %command, "a member forwarded a write");
    let command = match command {
        ClusterCommand::Once { request, command } => ClusterCommand::Once {
            request,
            command: Box::new(match *command {
                ClusterCommand::Authored { by, at, command } => ClusterCommand::Authored {
                    by: format!("{by} via {from}"),
                    at,
                    command,
                },
                other => other,
            }),
        },
        other => other,
    };
    Json(match control.consensus.propose(command).await {
        Ok(index) => Ok(index),
        Err(ProposeError::NotLeader { .. }) => Err(ForwardError::NotLeader),
        Err(ProposeError::Refused(r)) => Err(ForwardError::Refused(r)),
        Err(e) => Err(ForwardError::Failed(e.to_string())),
    })
    .into_response()
}

/// A member's linearizable read: this leader's read index.
async fn forwarded_read_index(
    State(control): State<Arc<Control>>,
) -> Json<Result<u64, ForwardError>> {
    Json(match control.consensus.read_index().await {
        Ok(index) => Ok(index),
        Err(ProposeError::NotLeader { .. }) => Err(ForwardError::NotLeader),
        Err(e) => Err(ForwardError::Failed(e.to_string())),
    })
}

async fn forwarded_membership(
    State(control): State<Arc<Control>>,
    axum::Extension(peer): axum::Extension<keel_consensus::rpc::Peer>,
    Json(request): Json<MembershipRequest>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    use keel_consensus::rpc::{refusal, Standing};
    // A node asks to be admitted or updated only as itself (a member may
    // pass such a request on to the leader: it checked the asker); anything
    // else (removing a node) only a member asks.
    let member = refusal(&control.consensus, Some(&peer), Standing::Member);
    let refused = match &request {
        MembershipRequest::Admit { id, .. } | MembershipRequest::Update { id, .. }
            if peer.node != Some(*id) && member.is_some() =>
        {
            Some(format!(
                "a node may only ask to admit or update itself, not node {id:x}"
            ))
        }
        MembershipRequest::Admit { id, .. } if control.state().1.retired_nodes.contains(id) => {
            Some(format!("node {id:x} was removed from the cluster"))
        }
        MembershipRequest::Remove { .. } => Some(REMOVE_BY_RETIRING.into()),
        _ => None,
    };
    if let Some(why) = refused {
        tracing::warn!(peer = %peer.addr, %why, "refused a membership request");
        return (http::StatusCode::FORBIDDEN, format!("{why}\n")).into_response();
    }
    Json(control.membership(request).await.map_err(|e| e.to_string())).into_response()
}

async fn local_status(State(control): State<Arc<Control>>) -> Json<LocalStatus> {
    Json(control.local_status().await)
}

async fn join_certificate(
    State(control): State<Arc<Control>>,
    peer: Option<axum::Extension<keel_consensus::rpc::Peer>>,
    Json(req): Json<CertificateRequest>,
) -> Json<Result<CertificateGrant, String>> {
    let from = peer.map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |p| p.addr.ip());
    if let Err(wait) = control.joins.attempt(from) {
        tracing::debug!(peer = %from, "join attempt over the limit");
        return Json(Err(format!(
            "too many join attempts; try again in {} s",
            wait.as_secs().max(1)
        )));
    }
    let result = grant_certificate(&control, req).await;
    match &result {
        Ok(g) => {
            control.joins.granted(from);
            tracing::info!(peer = %from, id = %format!("{:x}", g.node_id), "issued a node certificate to a joiner")
        }
        Err(why) => {
            control.joins.refused();
            tracing::warn!(peer = %from, %why, "refused a join")
        }
    }
    Json(result)
}

/// Anonymous join attempts, limited before any work is done for them: 10 a
/// minute from one address and 100 a minute in all (a success forgets its
/// address's count). With the token judged before anything is proposed,
/// a flood of joins costs neither Raft nor the VIP anything.
pub struct JoinLimits {
    by_source: keel_web_core::Attempts<IpAddr>,
    total: keel_web_core::Attempts<()>,
    /// Attempts by outcome: granted, refused, over the limit.
    outcomes: [AtomicU64; 3],
}

impl Default for JoinLimits {
    fn default() -> Self {
        JoinLimits {
            by_source: keel_web_core::Attempts::new(10, Duration::from_secs(60)),
            total: keel_web_core::Attempts::new(100, Duration::from_secs(60)),
            outcomes: Default::default(),
        }
    }
}

impl JoinLimits {
    fn attempt(&self, from: IpAddr) -> Result<(), Duration> {
        let counted = self
            .by_source
            .attempt(&from)
            .and_then(|()| self.total.attempt(&()));
        if counted.is_err() {
            self.outcomes[2].fetch_add(1, Ordering::Relaxed);
        }
        counted
    }

    fn granted(&self, from: IpAddr) {
        self.by_source.forget(&from);
        self.outcomes[0].fetch_add(1, Ordering::Relaxed);
    }

    fn refused(&self) {
        self.outcomes[1].fetch_add(1, Ordering::Relaxed);
    }

    /// Prometheus text.
    pub fn render_metrics(&self) -> String {
        let mut out = String::from(
            "# HELP keel_join_attempts_total Join requests on the cluster listener by outcome.\n\
             # TYPE keel_join_attempts_total counter\n",
        );
        for (name, n) in ["granted", "refused", "rate_limited"]
            .iter()
            .zip(&self.outcomes)
        {
            out += &format!(
                "keel_join_attempts_total{{outcome=\"{name}\"}} {}\n",
                n.load(Ordering::Relaxed)
            );
        }
        out
    }
}

/// How far ahead of this node's clock another node's may be: a join token
/// is judged as if it were that much later, so no node applies a join this
/// node thought was in time but which is expired by the leader's clock.
const CLOCK_SKEW_MARGIN_SECS: u64 = 2;

async fn grant_certificate(
    control: &Control,
    req: CertificateRequest,
) -> Result<CertificateGrant, String> {
    check_node_name(&req.name)?;
    // Everything that can be judged here is, before Raft sees anything: only
    // a token that the applied state would accept is proposed.
    let secret_sha256 = keel_web_core::sha256_hex(&req.secret);
    let now = unix_now() + CLOCK_SKEW_MARGIN_SECS;
    control
        .state()
        .1
        .join_token(&req.token_id, &secret_sha256, now)
        .map_err(|refusal| refusal.to_string())?;
    if control
        .consensus
        .members()
        .iter()
        .any(|m| m.info.name == req.name)
    {
        return Err(format!(
            "a node named {:?} is already a member; choose another --node-name",
            req.name
        ));
    }
    pki::check_csr(&req.csr_pem).map_err(|e| format!("bad certificate request: {e}"))?;
    let ca_key = control.ca_key_here()?;
    control
        .propose(ClusterCommand::ConsumeJoinToken {
            id: req.token_id.clone(),
            secret_sha256,
            now,
        })
        .await
        .map_err(|e| e.to_string())?;
    let (_, state) = control.state();
    let identity = state
        .identity
        .as_ref()
        .ok_or("the cluster is not initialised yet")?;
    let node_id = random_id();
    let cert_pem = pki::sign_node_csr(
        &req.csr_pem,
        node_id,
        control.cert_validity,
        &identity.ca_cert_pem,
        &ca_key,
    )
    .map_err(|e| format!("bad certificate request: {e}"))?;
    Ok(CertificateGrant {
        node_id,
        cluster_id: identity.cluster_id.clone(),
        ca_pem: identity.ca_cert_pem.clone(),
        cert_pem,
        timing: state.timing,
    })
}

/// A member's request for a new certificate: a CSR for a key it made.
#[derive(Serialize, Deserialize)]
struct RenewRequest {
    csr_pem: String,
}

/// A learner's request for an admin certificate: a CSR for a key it made,
/// and the names it is reached by.
#[derive(Serialize, Deserialize)]
struct AdminCertRequest {
    csr_pem: String,
    names: Vec<String>,
}

/// `/cluster/admin-cert`: an admin certificate for the calling member.
async fn admin_certificate(
    State(control): State<Arc<Control>>,
    axum::Extension(peer): axum::Extension<keel_consensus::rpc::Peer>,
    Json(req): Json<AdminCertRequest>,
) -> Json<Result<String, String>> {
    let Some(id) = peer.node else {
        return Json(Err("a node certificate is required".into()));
    };
    let result = control.sign_admin_for(id, &req);
    match &result {
        Ok(_) => {
            tracing::info!(node = %format!("{id:x}"), names = %req.names.join(","), "issued an admin certificate")
        }
        Err(why) => {
            tracing::warn!(node = %format!("{id:x}"), %why, "refused an admin certificate")
        }
    }
    Json(result)
}

/// `/cluster/ca-key`: the CA key, for a voter (the route admits voters
/// only) that lacks it.
async fn ca_key(
    State(control): State<Arc<Control>>,
    axum::Extension(peer): axum::Extension<keel_consensus::rpc::Peer>,
) -> Json<Result<String, String>> {
    let result = control.ca_key_here();
    if result.is_ok() {
        tracing::info!(node = ?peer.node.map(|id| format!("{id:x}")), "gave the CA key to a voter");
    }
    Json(result)
}

/// `/cluster/ca-next-key`: the key of the CA a rotation brings, for a
/// voter (the route admits voters only), while every node comes to trust
/// it.
async fn ca_next_key(
    State(control): State<Arc<Control>>,
    axum::Extension(peer): axum::Extension<keel_consensus::rpc::Peer>,
) -> Json<Result<String, String>> {
    let (_, state) = control.state();
    let next = state
        .identity
        .as_ref()
        .and_then(|i| i.ca_rotation.as_ref())
        .filter(|r| r.stage == keel_model::CaStage::Trusting)
        .map(|r| r.other_pem.clone());
    let result = next
        .and_then(|pem| control.ca_next_key.of(&pem))
        .ok_or_else(|| "this node holds no key of a CA a rotation brings".to_owned());
    if result.is_ok() {
        tracing::info!(node = ?peer.node.map(|id| format!("{id:x}")), "gave the new CA's key to a voter");
    }
    Json(result)
}

/// `/cluster/ca-report`: this node's part in a CA rotation (for `keel ca`).
async fn ca_report(State(control): State<Arc<Control>>) -> Json<crate::ca::CaReport> {
    Json(crate::ca::report(&control))
}

/// `/cluster/renew`: a new certificate for the calling member (the id comes
/// from the certificate it calls with, never from the request).
async fn renew_certificate(
    State(control): State<Arc<Control>>,
    axum::Extension(peer): axum::Extension<keel_consensus::rpc::Peer>,
    Json(req): Json<RenewRequest>,
) -> Json<Result<String, String>> {
    let Some(id) = peer.node else {
        return Json(Err("a node certificate is required".into()));
    };
    let result = control.sign_for(id, &req.csr_pem);
    match &result {
        Ok(_) => tracing::info!(node = %format!("{id:x}"), "renewed a node certificate"),
        Err(why) => {
            tracing::warn!(node = %format!("{id:x}"), %why, "refused to renew a node certificate")
        }
    }
    Json(result)
}

impl Control {
    /// A certificate for node `id` from its CSR, signed with the cluster CA.
    fn sign_for(&self, id: NodeId, csr_pem: &str) -> Result<String, String> {
        let (_, state) = self.state();
        let identity = state
            .identity
            .as_ref()
            .ok_or("the cluster is not initialised yet")?;
        pki::sign_node_csr(
            csr_pem,
            id,
            self.cert_validity,
            &identity.ca_cert_pem,
            &self.ca_key_here()?,
        )
        .map_err(|e| format!("bad certificate request: {e}"))
    }

    /// An admin certificate for member `id` (a learner, which holds no CA
    /// key) from its CSR: for its own name, loopback and addresses, never
    /// for a name or address another member is known by.
    fn sign_admin_for(&self, id: NodeId, request: &AdminCertRequest) -> Result<String, String> {
        let members = self.consensus.members();
        let name = members
            .iter()
            .find(|m| m.id == id)
            .map(|m| m.info.name.clone())
            .ok_or("not a member")?;
        let host = |addr: &str| {
            addr.parse::<SocketAddr>()
                .map(|a| a.ip().to_string())
                .unwrap_or_default()
        };
        for asked in &request.names {
            let loopback =
                asked == "localhost" || asked.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
            let others = members.iter().filter(|m| m.id != id);
            let taken = others.into_iter().any(|m| {
                m.info.name == *asked
                    || [
                        &m.info.cluster_addr,
                        &m.info.admin_addr,
                        &m.info.gossip_addr,
                    ]
                    .iter()
                    .any(|addr| host(addr) == *asked)
            });
            if taken && !loopback {
                return Err(format!(
                    "{asked:?} is another member's name or address: not in {name}'s certificate"
                ));
            }
        }
        let (_, state) = self.state();
        let identity = state
            .identity
            .as_ref()
            .ok_or("the cluster is not initialised yet")?;
        pki::sign_admin_csr(
            &request.csr_pem,
            &name,
            &request.names,
            &identity.ca_cert_pem,
            &self.ca_key_here()?,
        )
        .map_err(|e| format!("bad certificate request: {e}"))
    }

    /// Get a new certificate for this node from the leader (signed here
    /// when this node leads), save it and present it from now on.
    async fn renew(&self) -> Result<(), String> {
        let (key_pem, csr_pem) = pki::new_csr(&self.me.name).map_err(|e| e.to_string())?;
        let leader = self
            .leader(Instant::now() + WRITE_DEADLINE)
            .await
            .map_err(|e| e.to_string())?;
        let cert_pem = if leader.0 == self.consensus.id() {
            self.sign_for(leader.0, &csr_pem)?
        } else {
            let request = RenewRequest { csr_pem };
            self.to_leader::<_, Result<String, String>>(
                &leader,
                "/cluster/renew",
                &request,
                WRITE_DEADLINE,
            )
            .await
            .map_err(|e| e.to_string())??
        };
        // The CA that signed it: the one that signs now, as the leader
        // (which may have applied a rotation's step first) saw it.
        let (_, state) = self.state();
        let ca_pem = state
            .identity
            .as_ref()
            .and_then(|i| {
                i.trusted()
                    .into_iter()
                    .find(|ca| pki::signed_by(&cert_pem, ca))
            })
            .map_or_else(|| self.identity.tls().ca_pem, str::to_owned);
        let tls = NodeTls {
            ca_pem,
            cert_pem,
            key_pem,
        };
        save_tls(&self.data_dir, &tls).map_err(|e| e.to_string())?;
        self.identity.replace(&tls).map_err(|e| e.to_string())
    }

    /// When this node's certificate expires (Unix seconds; 0 if unreadable).
    pub fn certificate_expires(&self) -> u64 {
        pki::validity(&self.identity.tls().cert_pem).map_or(0, |(_, not_after)| not_after)
    }
}

/// Renews this node's certificate with a third of its life left, or at once
/// when the CA that signs is no longer the one that signed it (a CA
/// rotation), retrying every few seconds on failure, until `stop`.
pub async fn keep_certificate_fresh(control: Arc<Control>, mut stop: watch::Receiver<bool>) {
    let mut applied = control.consensus.applied();
    loop {
        let cert_pem = control.identity.tls().cert_pem;
        let validity = pki::validity(&cert_pem).unwrap_or((0, 0));
        let signing = applied
            .borrow_and_update()
            .state
            .identity
            .as_ref()
            .map(|i| i.ca_cert_pem.clone());
        let wait = if signing.is_some_and(|ca| !pki::signed_by(&cert_pem, &ca)) {
            0
        } else {
            pki::renew_at(validity).saturating_sub(pki::unix_now())
        };
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            r = applied.changed(), if wait > 0 => {
                if r.is_err() {
                    return;
                }
                continue;
            }
            () = tokio::time::sleep(Duration::from_secs(wait)) => {}
        }
        match control.renew().await {
            Ok(()) => tracing::info!(
                expires = control.certificate_expires(),
                "renewed this node's certificate"
            ),
            Err(why) => {
                tracing::warn!(%why, "could not renew this node's certificate; retrying");
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => return,
                    () = tokio::time::sleep(Duration::from_secs(2)) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    fn token(fp: &str, id: &str, secret: &str) -> String {
        format!("KEEL1.{fp}.{id}.{secret}")
    }

    /// Files written at once from different tasks (a CA key placed while
    /// the node's certificate is renewed, a rotation's keys) each keep
    /// their own text: `ca.pem` and `ca.key` once shared a temporary
    /// `ca.tmp`, so one could be renamed into the other's place.
    #[test]
    fn files_written_at_once_keep_their_own_text() {
        let dir = tempfile::tempdir().unwrap();
        let writers: Vec<_> = ["ca.pem", "ca.key", "ca.pem", "ca.key"]
            .into_iter()
            .enumerate()
            .map(|(i, name)| {
                let path = dir.path().join(name);
                std::thread::spawn(move || {
                    for n in 0..300 {
                        let text = format!("{name} {}\n", "x".repeat(64 * (i + n % 7)));
                        write_private(&path, &text).unwrap();
                        let now = std::fs::read_to_string(&path).unwrap();
                        assert!(now.starts_with(name), "{name} holds {now:?}");
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left.len(), 2, "no temporary file left: {left:?}");
    }

    #[test]
    fn join_tokens_parse_strictly() {
        let (fp, id, secret) = ("ab".repeat(32), "0a0b0c0d", "11".repeat(16));
        let t: JoinToken = token(&fp, id, &secret).parse().unwrap();
        assert_eq!(
            (t.ca_fingerprint.as_str(), t.id.as_str(), t.secret.as_str()),
            (fp.as_str(), id, secret.as_str())
        );
        for bad in [
            String::new(),
            "KEEL1".into(),
            token(&fp, id, &secret).replace("KEEL1", "KEEL2"),
            token(&fp[2..], id, &secret),
            token(&fp, "0a0b", &secret),
            token(&fp, id, &secret[2..]),
            token(&fp, id, &format!("{secret}.x")),
            token(&"zz".repeat(32), id, &secret),
        ] {
            assert!(bad.parse::<JoinToken>().is_err(), "{bad:?}");
        }
    }

    proptest! {
        /// Arbitrary text never panics the parser; whatever it accepts has
        /// the exact shape of a token.
        #[test]
        fn any_text_is_parsed_or_refused(text in ".{0,200}") {
            if let Ok(t) = text.parse::<JoinToken>() {
                prop_assert_eq!(t.ca_fingerprint.len(), 64);
                prop_assert_eq!(t.id.len(), 8);
                prop_assert_eq!(t.secret.len(), 32);
            }
        }

        #[test]
        fn near_miss_tokens_are_refused(cut in 0usize..120, junk in "[^0-9a-fA-F.]") {
            let good = token(&"ab".repeat(32), "0a0b0c0d", &"11".repeat(16));
            let cut = cut.min(good.len() - 1);
            let mut bad = good.clone();
            bad.replace_range(cut..cut + 1, &junk);
            prop_assume!(bad != good);
            prop_assert!(bad.parse::<JoinToken>().is_err());
        }
    }
}
