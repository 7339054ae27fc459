//! Authentication: passwords (argon2), bearer tokens (random, stored as a
//! SHA-256), and a limiter on failed logins.
//!
//! A bearer token reads `keel_<id>_<secret>`: the id finds the record, the
//! secret is compared (in constant time) through its hash.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use keel_model::{constant_time_eq, ClusterState};
use sha2::{Digest, Sha256};

/// Hex SHA-256 of `text`.
pub fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `bytes` random bytes from the OS, as hex.
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    // The OS RNG failing is not something a node can carry on from.
    #[allow(clippy::expect_used)]
    getrandom::fill(&mut buf).expect("the operating system's random source failed");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// An argon2id hash of `password`, PHC string form. Slow on purpose.
pub fn hash_password(password: &str) -> Result<String, String> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| e.to_string())?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// Is `text` a password hash this crate can check (an argon2 PHC string)?
pub fn is_password_hash(text: &str) -> bool {
    text.starts_with("$argon2") && PasswordHash::new(text).is_ok()
}

/// A well-formed hash no password matches: verified against for unknown
/// users, so the time taken does not tell which users exist.
pub(crate) const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

/// Does `password` match the stored hash?
pub fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|h| {
        Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

/// A new bearer token: (id, full token string, hash of the secret).
pub fn new_bearer() -> (String, String, String) {
    new_secret_token("keel")
}

/// A new registration token: (id, token to hand out once, hash to store).
pub fn new_registration_token() -> (String, String, String) {
    new_secret_token("keelreg")
}

/// `PREFIX_ID_SECRET`: (id, the token, hex SHA-256 of the secret).
fn new_secret_token(prefix: &str) -> (String, String, String) {
    let id = random_hex(6);
    let secret = random_hex(24);
    let token = format!("{prefix}_{id}_{secret}");
    (id, token, sha256_hex(&secret))
}

/// The id of a `PREFIX_ID_SECRET` token whose secret hashes to what
/// `stored` gives for that id (`(hash, expires_at)`) and is unexpired.
fn check_secret_token<'a>(
    token: &'a str,
    prefix: &str,
    now: u64,
    stored: impl Fn(&str) -> Option<(&'a str, Option<u64>)>,
) -> Option<&'a str> {
    let rest = token.strip_prefix(prefix)?.strip_prefix('_')?;
    let (id, secret) = rest.split_once('_')?;
    let (hash, expires_at) = stored(id)?;
    if !constant_time_eq(hash.as_bytes(), sha256_hex(secret).as_bytes()) {
        return None;
    }
    if expires_at.is_some_and(|at| now >= at) {
        return None;
    }
    Some(id)
}

/// The pool a registration token may change, if it is valid at `now`.
pub fn check_registration(state: &ClusterState, token: &str, now: u64) -> Option<String> {
    let id = check_secret_token(token, "keelreg", now, |id| {
        let r = state.registration_tokens.get(id)?;
        Some((r.secret_sha256.as_str(), r.expires_at))
    })?;
    Some(state.registration_tokens.get(id)?.pool.clone())
}

/// The user a bearer token acts as, if it is valid at `now` (unix seconds).
pub fn check_bearer(state: &ClusterState, token: &str, now: u64) -> Option<String> {
    let id = check_secret_token(token, "keel", now, |id| {
        let r = state.api_tokens.get(id)?;
        Some((r.secret_sha256.as_str(), r.expires_at))
    })?;
    Some(state.api_tokens.get(id)?.user.clone())
}

/// Counts failed logins per client address; refuses more than `max` within
/// `window` (HAProxy-style stick-table behaviour, kept in memory per node).
#[derive(Clone)]
pub struct LoginLimiter {
    failures: Arc<Mutex<HashMap<IpAddr, (Instant, u32)>>>,
    max: u32,
    window: Duration,
}

impl Default for LoginLimiter {
    fn default() -> Self {
        LoginLimiter {
            failures: Arc::default(),
            max: 5,
            window: Duration::from_secs(60),
        }
    }
}

impl LoginLimiter {
    /// `Err(retry_after)` when `client` has failed too often.
    pub fn check(&self, client: IpAddr) -> Result<(), Duration> {
        let failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        match failures.get(&client) {
            Some((since, n)) if *n >= self.max && since.elapsed() < self.window => {
                Err(self.window.saturating_sub(since.elapsed()))
            }
            _ => Ok(()),
        }
    }

    /// Record a failed attempt.
    pub fn failed(&self, client: IpAddr) {
        let mut failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = failures.entry(client).or_insert((Instant::now(), 0));
        if entry.0.elapsed() >= self.window {
            *entry = (Instant::now(), 0);
        }
        entry.1 += 1;
        if failures.len() > 10_000 {
            let window = self.window;
            failures.retain(|_, (since, _)| since.elapsed() < window);
        }
    }

    /// Forget failures after a success.
    pub fn succeeded(&self, client: IpAddr) {
        self.failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&client);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use keel_model::ApiToken;

    #[test]
    fn passwords_and_bearer_tokens() {
        let hash = hash_password("correct horse").unwrap();
        assert!(verify_password("correct horse", &hash));
        assert!(!verify_password("wrong", &hash));
        assert!(!verify_password("x", "not a hash"));

        let (id, token, secret_sha256) = new_bearer();
        let mut state = ClusterState::default();
        state.api_tokens.insert(
            id.clone(),
            ApiToken {
                name: "t".into(),
                user: "admin".into(),
                secret_sha256,
                created_at: 0,
                expires_at: Some(100),
            },
        );
        assert_eq!(check_bearer(&state, &token, 10).as_deref(), Some("admin"));
        assert_eq!(check_bearer(&state, &token, 100), None, "expired");
        assert_eq!(check_bearer(&state, &format!("{token}x"), 10), None);
        assert_eq!(check_bearer(&state, "keel_", 10), None);
        assert_eq!(check_bearer(&state, "garbage", 10), None);
    }

    #[test]
    fn limiter_blocks_after_repeated_failures() {
        let l = LoginLimiter::default();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..5 {
            assert!(l.check(ip).is_ok());
            l.failed(ip);
        }
        assert!(l.check(ip).is_err());
        assert!(l.check("10.0.0.2".parse().unwrap()).is_ok());
    }
}
