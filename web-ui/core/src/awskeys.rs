//! Access keys for the AWS-compatible API. SigV4 signs with the secret
//! itself, so Keel keeps the secret — sealed (AES-256-GCM) under a key
//! derived from the cluster secret (label `keel aws sealing key v2`), which
//! only cluster nodes hold. Records sealed before the last rotation, or
//! before the cluster had a secret (under its CA key), still open; a
//! rotation seals every record again under the new secret ([`reseal`]).

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use sha2::{Digest, Sha256};

use keel_model::{ClusterCommand, ClusterSecret, ClusterState};

const LABEL: &str = "keel aws sealing key v2";

fn aead(key: &[u8]) -> Option<LessSafeKey> {
    Some(LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).ok()?))
}

/// The key a cluster seals with before it has a secret: from its CA key.
fn legacy_key(state: &ClusterState) -> Option<LessSafeKey> {
    let key = state.identity.as_ref()?.legacy_key()?;
    let mut h = Sha256::new();
    h.update(b"keel aws secret sealing key\0");
    h.update(key.as_bytes());
    aead(&h.finalize())
}

/// The keys records of `state` may be sealed with, the one to seal with
/// first.
fn sealing_keys(state: &ClusterState) -> Vec<LessSafeKey> {
    [&state.secret, &state.previous_secret]
        .into_iter()
        .flatten()
        .filter_map(|secret| aead(&secret.derive(LABEL)))
        .chain(legacy_key(state))
        .collect()
}

/// Seals `secret` for storage: hex of nonce ‖ ciphertext ‖ tag.
pub fn seal(state: &ClusterState, access_key_id: &str, secret: &str) -> Option<String> {
    let key = sealing_keys(state).into_iter().next()?;
    seal_with(&key, access_key_id, secret)
}

fn seal_with(key: &LessSafeKey, access_key_id: &str, secret: &str) -> Option<String> {
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::fill(&mut nonce).ok()?;
    let mut data = secret.as_bytes().to_vec();
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(access_key_id.as_bytes()),
        &mut data,
    )
    .ok()?;
    let mut out = nonce.to_vec();
    out.extend(data);
    Some(out.iter().map(|b| format!("{b:02x}")).collect())
}

/// The secret of access key `access_key_id`, if it exists and unseals.
pub fn secret_of(state: &ClusterState, access_key_id: &str) -> Option<String> {
    let record = state.aws_keys.get(access_key_id)?;
    let bytes: Vec<u8> = (0..record.secret_sealed.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(record.secret_sealed.get(i..i + 2)?, 16).ok())
        .collect::<Option<_>>()?;
    if bytes.len() < NONCE_LEN {
        return None;
    }
    let (nonce, sealed) = bytes.split_at(NONCE_LEN);
    sealing_keys(state).iter().find_map(|key| {
        let mut sealed = sealed.to_vec();
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let plain = key
            .open_in_place(nonce, Aad::from(access_key_id.as_bytes()), &mut sealed)
            .ok()?;
        String::from_utf8(plain.to_vec()).ok()
    })
}

/// Every access key of `state` sealed again under `next` (the cluster
/// secret a rotation sets): committed with the rotation, so no record is
/// left under a key the rotation after it forgets.
pub fn reseal(state: &ClusterState, next: &ClusterSecret) -> ClusterCommand {
    let key = aead(&next.derive(LABEL));
    let sealed = state
        .aws_keys
        .keys()
        .filter_map(|id| {
            let Some(secret) = secret_of(state, id) else {
                tracing::warn!(access_key_id = %id, "an AWS access key does not open: left as it is");
                return None;
            };
            Some((id.clone(), seal_with(key.as_ref()?, id, &secret)?))
        })
        .collect();
    ClusterCommand::ResealAwsKeys(sealed)
}

/// A new access key id (`AKIA` and 16 capitals or digits, as AWS's look)
/// and a 40-character secret.
pub fn new_key() -> (String, String) {
    const UPPER: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    const SECRET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut raw = [0u8; 56];
    // The operating system's random source failing is not recoverable here.
    getrandom::fill(&mut raw).expect("the operating system's random source failed");
    let id: String = raw[..16]
        .iter()
        .map(|b| UPPER[usize::from(*b) % UPPER.len()] as char)
        .collect();
    let secret: String = raw[16..]
        .iter()
        .map(|b| SECRET[usize::from(*b) % SECRET.len()] as char)
        .collect();
    (format!("AKIA{id}"), secret)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use keel_model::ClusterIdentity;

    fn state(ca_key: &str) -> ClusterState {
        ClusterState {
            identity: Some(ClusterIdentity {
                cluster_id: "c".into(),
                ca_cert_pem: String::new(),
                ca_key_pem: ca_key.into(),
                ca_key_moved: false,
                ca_rotation: None,
            }),
            ..ClusterState::default()
        }
    }

    #[test]
    fn a_sealed_secret_opens_only_with_its_cluster_and_id() {
        let mut s = state("key one");
        let (id, secret) = new_key();
        assert!(id.starts_with("AKIA") && id.len() == 20 && secret.len() == 40);
        let sealed = seal(&s, &id, &secret).expect("sealed");
        assert!(!sealed.contains(&secret));
        s.aws_keys.insert(
            id.clone(),
            keel_model::AwsKey {
                name: "ci".into(),
                user: "admin".into(),
                secret_sealed: sealed.clone(),
                created_at: 0,
            },
        );
        assert_eq!(secret_of(&s, &id).as_deref(), Some(secret.as_str()));
        // Another cluster's key, or the record under another id, does not open.
        let mut other = state("key two");
        other.aws_keys = s.aws_keys.clone();
        assert_eq!(secret_of(&other, &id), None);
        let moved = s.aws_keys[&id].clone();
        s.aws_keys.insert("AKIAOTHER".into(), moved);
        assert_eq!(secret_of(&s, "AKIAOTHER"), None);
        s.aws_keys.remove("AKIAOTHER");

        // Sealed under the CA key, then the first secret: it opens through
        // one rotation, and a rotation's reseal keeps it open through more.
        s.apply(&ClusterCommand::SetVersion { version: 6 }).unwrap();
        s.apply(&ClusterCommand::SetSecret(ClusterSecret::new("one".into())))
            .unwrap();
        assert_eq!(
            secret_of(&s, &id).as_deref(),
            Some(secret.as_str()),
            "under the CA key"
        );
        let two = ClusterSecret::new("two".into());
        let resealed = reseal(&s, &two);
        assert!(matches!(&resealed, ClusterCommand::ResealAwsKeys(k) if k.len() == 1));
        s.apply(&ClusterCommand::Atomic(vec![
            ClusterCommand::SetSecret(two),
            resealed,
        ]))
        .unwrap();
        for next in ["three", "four"] {
            let next = ClusterSecret::new(next.into());
            let resealed = reseal(&s, &next);
            s.apply(&ClusterCommand::Atomic(vec![
                ClusterCommand::SetSecret(next),
                resealed,
            ]))
            .unwrap();
        }
        assert_eq!(secret_of(&s, &id).as_deref(), Some(secret.as_str()));
        let mut without_ca = s.clone();
        without_ca.identity = None;
        assert_eq!(
            secret_of(&without_ca, &id).as_deref(),
            Some(secret.as_str()),
            "sealed under the secret now"
        );
    }
}
