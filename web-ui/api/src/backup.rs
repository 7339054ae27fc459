//! Backups of the replicated state: what `POST /api/v1/backup` answers and
//! `keel run --restore` reads. The state holds the cluster CA's key,
//! password hashes and the AWS keys' sealed secrets, so a backup is sealed
//! with a key derived from a passphrase (argon2id, a random salt per file)
//! with ChaCha20-Poly1305. A SHA-256 of the sealed bytes in the header
//! tells a damaged file from a wrong passphrase.
//!
//! Layout: `KEEL-BACKUP-1\n`, salt (16), nonce (12), checksum (32), sealed
//! JSON of [`Backup`] (with its 16-byte tag). The magic and salt are
//! authenticated with it.

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use http::{header, StatusCode};
use keel_model::{ClusterCommand, ClusterState, FieldError, Path as FieldPath, ValidationErrors};
use keel_web_core::access::Caller;
use keel_web_core::{commit, now, ApiError, ControlPlane};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::AppState;

const MAGIC: &[u8] = b"KEEL-BACKUP-1\n";
const SALT_LEN: usize = 16;
const SUM_LEN: usize = 32;
/// The shortest passphrase a backup is sealed with.
pub const MIN_PASSPHRASE: usize = 12;

/// What a backup holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Backup {
    /// When it was taken (unix seconds, the taking node's clock).
    pub taken_at: u64,
    /// The log index of the state it holds.
    pub version: u64,
    /// The node that took it.
    pub node: String,
    /// The whole replicated state (login sessions left out).
    pub state: ClusterState,
}

/// Why a backup cannot be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BackupError {
    #[error("not a Keel backup (it does not start with {:?})", String::from_utf8_lossy(MAGIC).trim())]
    NotABackup,
    #[error("the backup is damaged: its checksum does not match (truncated or changed)")]
    Damaged,
    #[error("wrong passphrase (the backup's checksum matches, it does not open)")]
    WrongPassphrase,
    #[error("the passphrase must have at least {MIN_PASSPHRASE} characters")]
    ShortPassphrase,
    #[error("the backup opened but does not hold a cluster state: {0}")]
    Contents(String),
    #[error("cannot seal the backup: {0}")]
    Seal(String),
}

/// The state as a backup keeps it: login sessions (short-lived, tied to
/// the cluster they were made on) are left out.
pub fn backup_of(state: &ClusterState, version: u64, node: &str, now: u64) -> Backup {
    let mut state = state.clone();
    state
        .api_tokens
        .retain(|_, t| !t.name.starts_with("session:"));
    state.requests.clear();
    Backup {
        taken_at: now,
        version,
        node: node.to_owned(),
        state,
    }
}

fn key(passphrase: &str, salt: &[u8]) -> Result<LessSafeKey, BackupError> {
    let mut key = [0u8; 32];
    argon2::Argon2::default()
        .hash_password_into(passphrase.as_bytes(), salt, &mut key)
        .map_err(|e| BackupError::Seal(e.to_string()))?;
    let key =
        UnboundKey::new(&CHACHA20_POLY1305, &key).map_err(|e| BackupError::Seal(e.to_string()))?;
    Ok(LessSafeKey::new(key))
}

fn aad(salt: &[u8]) -> Vec<u8> {
    [MAGIC, salt].concat()
}

/// Seals `backup` with `passphrase`. Slow on purpose (argon2id).
pub fn seal(backup: &Backup, passphrase: &str) -> Result<Vec<u8>, BackupError> {
    if passphrase.chars().count() < MIN_PASSPHRASE {
        return Err(BackupError::ShortPassphrase);
    }
    let mut salt = [0u8; SALT_LEN];
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::fill(&mut salt).map_err(|e| BackupError::Seal(e.to_string()))?;
    getrandom::fill(&mut nonce).map_err(|e| BackupError::Seal(e.to_string()))?;
    let mut sealed = serde_json::to_vec(backup).map_err(|e| BackupError::Seal(e.to_string()))?;
    key(passphrase, &salt)?
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad(&salt)),
            &mut sealed,
        )
        .map_err(|_| BackupError::Seal("encryption failed".into()))?;
    let sum = Sha256::digest(&sealed);
    Ok([MAGIC, &salt, &nonce, &sum, &sealed].concat())
}

/// Opens a file [`seal`] made.
pub fn open(file: &[u8], passphrase: &str) -> Result<Backup, BackupError> {
    let rest = file.strip_prefix(MAGIC).ok_or(BackupError::NotABackup)?;
    if rest.len() < SALT_LEN + NONCE_LEN + SUM_LEN {
        return Err(BackupError::Damaged);
    }
    let (salt, rest) = rest.split_at(SALT_LEN);
    let (nonce, rest) = rest.split_at(NONCE_LEN);
    let (sum, sealed) = rest.split_at(SUM_LEN);
    if Sha256::digest(sealed).as_slice() != sum {
        return Err(BackupError::Damaged);
    }
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| BackupError::Damaged)?;
    let mut plain = sealed.to_vec();
    let opened = key(passphrase, salt)?
        .open_in_place(nonce, Aad::from(aad(salt)), &mut plain)
        .map_err(|_| BackupError::WrongPassphrase)?;
    serde_json::from_slice(opened).map_err(|e| BackupError::Contents(e.to_string()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BackupRequest {
    pub(super) passphrase: String,
}

/// `POST /api/v1/backup`: the whole replicated state sealed with the
/// passphrase (`crate::backup`), as a file `keel run --restore` reads.
/// A read barrier first, so it holds every write committed before it.
pub(super) async fn backup<C: ControlPlane>(
    State(app): AppState<C>,
    Extension(Caller { user: caller, .. }): Extension<Caller>,
    body: Result<Json<BackupRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(req) = body?;
    if req.passphrase.chars().count() < crate::backup::MIN_PASSPHRASE {
        return Err(ApiError::invalid(&ValidationErrors(vec![FieldError::new(
            FieldPath::root().field("passphrase"),
            format!(
                "must have at least {} characters",
                crate::backup::MIN_PASSPHRASE
            ),
        )])));
    }
    app.control.propose(ClusterCommand::Noop).await?;
    let (version, state) = app.control.state();
    let node = app.control.status().await.this_node;
    let mut backup = crate::backup::backup_of(&state, version, &node, now());
    // A backup restores the CA too: its key comes from this node's disk.
    if let Some(identity) = &mut backup.state.identity {
        if identity.ca_key_pem.is_empty() {
            identity.ca_key_pem = app.control.ca_key().ok_or_else(|| {
                ApiError::new(
                    StatusCode::CONFLICT,
                    "conflict",
                    format!(
                        "{node} holds no CA key (only voters do): take the backup through a voter"
                    ),
                )
            })?;
        }
    }
    let sealed = tokio::task::spawn_blocking(move || crate::backup::seal(&backup, &req.passphrase))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
    tracing::info!(user = %caller, version, bytes = sealed.len(), "backup taken");
    // In the history, for the dashboard; a cluster mid-upgrade (below
    // version 3) cannot record it, and the backup is no worse for that.
    let record = ClusterCommand::Record {
        kind: "backup".into(),
        what: format!(
            "taken on {node} at config version {version}, {} bytes",
            sealed.len()
        ),
    };
    if state.version() >= record.needs() {
        if let Err(e) = commit(&*app.control, &caller, record).await {
            tracing::warn!(error = %e.message(), "could not record the backup in the history");
        }
    }
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"keel-backup-{version}.keel\""),
            ),
        ],
        sealed,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use keel_model::{ApiToken, User};

    fn sample() -> Backup {
        let mut state = ClusterState::default();
        state.users.insert(
            "admin".into(),
            User {
                password_hash: "$argon2id$x".into(),
                must_change_password: false,
                role: keel_model::Role::Admin,
            },
        );
        for name in ["session:admin", "ci"] {
            state.api_tokens.insert(
                name.into(),
                ApiToken {
                    name: name.into(),
                    user: "admin".into(),
                    secret_sha256: "00".into(),
                    created_at: 1,
                    expires_at: None,
                    role: None,
                    load_balancers: Vec::new(),
                    pools: Vec::new(),
                },
            );
        }
        backup_of(&state, 42, "n1", 1_700_000_000)
    }

    #[test]
    fn a_sealed_backup_opens_with_its_passphrase_only() {
        let file = seal(&sample(), "correct horse battery").unwrap();
        let back = open(&file, "correct horse battery").unwrap();
        assert_eq!(back.version, 42);
        assert!(back.state.users.contains_key("admin"));
        // Sessions are left out; API tokens made for automation are kept.
        let tokens: Vec<&String> = back.state.api_tokens.keys().collect();
        assert_eq!(tokens, ["ci"]);
        assert_eq!(
            open(&file, "wrong horse battery").unwrap_err(),
            BackupError::WrongPassphrase
        );
        // The secrets are not readable in the file.
        let text = String::from_utf8_lossy(&file);
        assert!(!text.contains("argon2id"), "{text}");
    }

    #[test]
    fn damage_anywhere_is_named_and_nothing_opens() {
        let file = seal(&sample(), "correct horse battery").unwrap();
        assert_eq!(
            open(b"hello", "correct horse battery").unwrap_err(),
            BackupError::NotABackup
        );
        for at in [MAGIC.len() + 3, file.len() / 2, file.len() - 1] {
            let mut bad = file.clone();
            bad[at] ^= 0x40;
            let err = open(&bad, "correct horse battery").unwrap_err();
            // The salt is covered by the seal, the rest by the checksum too.
            assert!(
                matches!(err, BackupError::Damaged | BackupError::WrongPassphrase),
                "byte {at}: {err}"
            );
        }
        let mut body = file.clone();
        let last = body.len() - 1;
        body[last] ^= 1;
        assert_eq!(
            open(&body, "correct horse battery").unwrap_err(),
            BackupError::Damaged
        );
        assert_eq!(
            open(&file[..file.len() - 10], "correct horse battery").unwrap_err(),
            BackupError::Damaged
        );
        assert_eq!(
            seal(&sample(), "short").unwrap_err(),
            BackupError::ShortPassphrase
        );
    }
}
