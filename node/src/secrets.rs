//! The keys the cluster secret gives (`ClusterSecret::derive`, one label
//! each): gossip (`keel gossip key v2`) and sticky cookies (`keel sticky
//! cookie key v2`); the admin API seals AWS secrets with its own (`keel aws
//! sealing key v2`). A cluster from before the secret derived them from its
//! CA key; those keys are still honoured where a change of key must not cut
//! anyone off.

use keel_model::{ClusterSecret, ClusterState};
use sha2::{Digest, Sha256};

/// The gossip key of a cluster with `secret`.
pub fn gossip_key(secret: &ClusterSecret) -> [u8; 32] {
    secret.derive("keel gossip key v2")
}

/// The gossip key of a cluster without a secret yet: from its CA key.
pub fn legacy_gossip_key(ca_key_pem: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"keel gossip key v1\0");
    h.update(ca_key_pem.as_bytes());
    h.finalize().into()
}

/// The secrets sticky cookies are signed with, the one to sign with first:
/// the cluster secret's key, then the one before it (the previous secret's,
/// or, for the first secret, the CA key a cluster signed with before it had
/// one), so a cookie issued before a rotation keeps its member until it
/// expires. Empty before the cluster has an identity.
pub fn cookie_secrets(state: &ClusterState) -> Vec<Vec<u8>> {
    let label = "keel sticky cookie key v2";
    let legacy = state
        .identity
        .as_ref()
        .and_then(|identity| identity.legacy_key())
        .map(|key| key.as_bytes().to_vec());
    match (&state.secret, &state.previous_secret) {
        (Some(secret), Some(previous)) => {
            vec![
                secret.derive(label).to_vec(),
                previous.derive(label).to_vec(),
            ]
        }
        (Some(secret), None) => std::iter::once(secret.derive(label).to_vec())
            .chain(legacy)
            .collect(),
        (None, _) => legacy.into_iter().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_keys_follow_the_secret_and_keep_the_one_before() {
        let mut state = ClusterState::default();
        assert!(cookie_secrets(&state).is_empty());
        state.identity = Some(keel_model::ClusterIdentity {
            cluster_id: "c".into(),
            ca_cert_pem: "cert".into(),
            ca_key_pem: "ca key".into(),
            ca_key_moved: false,
            ca_rotation: None,
        });
        assert_eq!(cookie_secrets(&state), vec![b"ca key".to_vec()]);
        state.secret = Some(ClusterSecret::new("one".into()));
        let first = cookie_secrets(&state);
        assert_eq!(first.len(), 2);
        assert_eq!(
            first[1],
            b"ca key".to_vec(),
            "cookies from before the secret"
        );
        state.previous_secret = state.secret.take();
        state.secret = Some(ClusterSecret::new("two".into()));
        let second = cookie_secrets(&state);
        assert_eq!(second[1], first[0], "the key before the rotation");
        assert_ne!(second[0], first[0]);
        assert_ne!(
            ClusterSecret::new("two".into()).derive("keel sticky cookie key v2"),
            gossip_key(&ClusterSecret::new("two".into())),
            "each key its own label"
        );
    }
}
