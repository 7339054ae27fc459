//! Access keys for the AWS-compatible API. SigV4 signs with the secret
//! itself, so Keel keeps the secret — sealed (AES-256-GCM) under a key
//! derived from the cluster CA key, which only cluster nodes hold.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use sha2::{Digest, Sha256};

use keel_model::ClusterState;

/// The sealing key of a cluster, from its CA key.
fn sealing_key(state: &ClusterState) -> Option<LessSafeKey> {
    let identity = state.identity.as_ref()?;
    let mut h = Sha256::new();
    h.update(b"keel aws secret sealing key\0");
    h.update(identity.ca_key_pem.as_bytes());
    let key = UnboundKey::new(&AES_256_GCM, &h.finalize()).ok()?;
    Some(LessSafeKey::new(key))
}

/// Seals `secret` for storage: hex of nonce ‖ ciphertext ‖ tag.
pub fn seal(state: &ClusterState, access_key_id: &str, secret: &str) -> Option<String> {
    let key = sealing_key(state)?;
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
    let key = sealing_key(state)?;
    let bytes: Vec<u8> = (0..record.secret_sealed.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(record.secret_sealed.get(i..i + 2)?, 16).ok())
        .collect::<Option<_>>()?;
    if bytes.len() < NONCE_LEN {
        return None;
    }
    let (nonce, sealed) = bytes.split_at(NONCE_LEN);
    let mut sealed = sealed.to_vec();
    let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
    let plain = key
        .open_in_place(nonce, Aad::from(access_key_id.as_bytes()), &mut sealed)
        .ok()?;
    String::from_utf8(plain.to_vec()).ok()
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
    use super::*;
    use keel_model::ClusterIdentity;

    fn state(ca_key: &str) -> ClusterState {
        ClusterState {
            identity: Some(ClusterIdentity {
                cluster_id: "c".into(),
                ca_cert_pem: String::new(),
                ca_key_pem: ca_key.into(),
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
    }
}
