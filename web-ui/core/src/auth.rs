//! Authentication: passwords (argon2), bearer tokens (random, stored as a
//! SHA-256), attempt limiters, and the gate every password check goes
//! through.
//!
//! A bearer token reads `keel_<id>_<secret>`: the id finds the record, the
//! secret is compared (in constant time) through its hash.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use http::{header, HeaderMap};
use keel_model::{constant_time_eq, ClusterState};
use sha2::{Digest, Sha256};

use crate::access::Caller;

/// The dashboard's session cookie: an API token, HttpOnly so scripts never
/// see it.
pub const SESSION_COOKIE: &str = "keel_session";

/// The CSRF token that goes with a session: derived from the session token
/// (which scripts cannot read), so a page of another site cannot produce it.
pub fn csrf_token(session: &str) -> String {
    sha256_hex(&format!("keel-csrf\0{session}"))
}

/// The session token in a request's cookies, if any.
pub fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value.to_owned())
}

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
const DUMMY_HASH: &str =
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

/// A registration token's id and the pool it may change, if it is valid at
/// `now`.
pub fn check_registration(state: &ClusterState, token: &str, now: u64) -> Option<(String, String)> {
    let id = check_secret_token(token, "keelreg", now, |id| {
        let r = state.registration_tokens.get(id)?;
        Some((r.secret_sha256.as_str(), r.expires_at))
    })?;
    Some((
        id.to_owned(),
        state.registration_tokens.get(id)?.pool.clone(),
    ))
}

/// Who a bearer token stands for, if it is valid at `now` (unix seconds)
/// and its user still exists.
pub fn check_bearer(state: &ClusterState, token: &str, now: u64) -> Option<Caller> {
    let id = check_secret_token(token, "keel", now, |id| {
        let r = state.api_tokens.get(id)?;
        Some((r.secret_sha256.as_str(), r.expires_at))
    })?;
    Caller::of_token(state, id, state.api_tokens.get(id)?)
}

/// Most keys an [`Attempts`] remembers; past it, new keys are refused until
/// old windows end (memory stays bounded whatever the sources).
const MAX_KEYS: usize = 50_000;

/// Attempts per key (a client address, a user name) within a window,
/// counted *before* the work they ask for, so a burst in parallel is cut at
/// `max` however long each attempt takes. A success may [`Attempts::forget`]
/// the key. Kept in memory per node, like an HAProxy stick table.
pub struct Attempts<K> {
    seen: Mutex<HashMap<K, (Instant, u32)>>,
    max: u32,
    window: Duration,
}

impl<K: Eq + Hash + Clone> Attempts<K> {
    /// At most `max` attempts per key in each `window`.
    pub fn new(max: u32, window: Duration) -> Self {
        Attempts {
            seen: Mutex::default(),
            max,
            window,
        }
    }

    /// Counts one attempt for `key`; `Err(retry_after)` when it has none left.
    pub fn attempt(&self, key: &K) -> Result<(), Duration> {
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        let window = self.window;
        if !seen.contains_key(key) && seen.len() >= MAX_KEYS {
            seen.retain(|_, (since, _)| now.duration_since(*since) < window);
            if seen.len() >= MAX_KEYS {
                return Err(window);
            }
        }
        let entry = seen.entry(key.clone()).or_insert((now, 0));
        if now.duration_since(entry.0) >= window {
            *entry = (now, 0);
        }
        if entry.1 >= self.max {
            return Err(window.saturating_sub(now.duration_since(entry.0)));
        }
        entry.1 += 1;
        Ok(())
    }

    /// `Err(retry_after)` when `key` has no attempts left; counts nothing
    /// (for limits on failures, counted with [`Attempts::attempt`] after).
    pub fn left(&self, key: &K) -> Result<(), Duration> {
        let seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        match seen.get(key) {
            Some((since, n)) if *n >= self.max && since.elapsed() < self.window => {
                Err(self.window.saturating_sub(since.elapsed()))
            }
            _ => Ok(()),
        }
    }

    /// Forget `key`'s attempts (after a success).
    pub fn forget(&self, key: &K) {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(key);
    }
}

/// Why a password was not checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotChecked {
    /// Too many attempts from this address or for this user; retry after.
    TooMany(Duration),
    /// Every password-hash slot is busy; retry shortly.
    Busy,
}

impl NotChecked {
    /// The refusal as a client should read it.
    pub fn message(&self) -> String {
        match self {
            NotChecked::TooMany(wait) => format!(
                "too many login attempts; try again in {} s",
                wait.as_secs().max(1)
            ),
            NotChecked::Busy => "too many logins in progress; try again in a moment".into(),
        }
    }
}

/// Password checks with a bounded cost. Each argon2 check takes about
/// 19 MiB and tens of milliseconds of CPU on the node that also carries the
/// traffic, so: attempts are counted per client address and per user name
/// before any hashing, and at most `max_hashes` run at once (the rest are
/// refused at once rather than queued). One gate per node, shared by the
/// admin API and the Octavia API.
#[derive(Clone)]
pub struct PasswordGate(Arc<Gate>);

struct Gate {
    by_client: Attempts<IpAddr>,
    by_user: Attempts<String>,
    hashes: tokio::sync::Semaphore,
    max_hashes: usize,
    in_flight: AtomicUsize,
    peak: AtomicUsize,
    /// Checks by outcome: matched, wrong, too many, busy.
    outcomes: [AtomicU64; 4],
}

const OUTCOMES: [&str; 4] = ["matched", "wrong", "rate_limited", "busy"];

impl Default for PasswordGate {
    fn default() -> Self {
        PasswordGate::new(2)
    }
}

impl PasswordGate {
    /// A gate running at most `max_hashes` (at least 1) checks at once; 5
    /// attempts per client address and 20 per user name each minute.
    pub fn new(max_hashes: usize) -> Self {
        let max_hashes = max_hashes.max(1);
        PasswordGate(Arc::new(Gate {
            by_client: Attempts::new(5, Duration::from_secs(60)),
            by_user: Attempts::new(20, Duration::from_secs(60)),
            hashes: tokio::sync::Semaphore::new(max_hashes),
            max_hashes,
            in_flight: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            outcomes: Default::default(),
        }))
    }

    /// Does `password` match `hash`, `user`'s stored hash (`None` for an
    /// unknown user: a dummy hash is checked instead, so the time taken does
    /// not tell which users exist)?
    pub async fn check(
        &self,
        client: IpAddr,
        user: &str,
        password: &str,
        hash: Option<&str>,
    ) -> Result<bool, NotChecked> {
        let gate = &self.0;
        let counted = gate
            .by_client
            .attempt(&client)
            .and_then(|()| gate.by_user.attempt(&user.to_owned()));
        if let Err(wait) = counted {
            gate.count(2);
            return Err(NotChecked::TooMany(wait));
        }
        let Ok(_permit) = gate.hashes.try_acquire() else {
            gate.count(3);
            return Err(NotChecked::Busy);
        };
        let now = gate.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        gate.peak.fetch_max(now, Ordering::SeqCst);
        let (password, hash) = (password.to_owned(), hash.unwrap_or(DUMMY_HASH).to_owned());
        let matched = tokio::task::spawn_blocking(move || verify_password(&password, &hash))
            .await
            .unwrap_or(false);
        gate.in_flight.fetch_sub(1, Ordering::SeqCst);
        if matched {
            gate.by_client.forget(&client);
            gate.by_user.forget(&user.to_owned());
            gate.count(0);
        } else {
            gate.count(1);
        }
        Ok(matched)
    }

    /// Prometheus text: checks by outcome, in flight, most at once.
    pub fn render_metrics(&self) -> String {
        let gate = &self.0;
        let mut out = String::from(
            "# HELP keel_password_checks_total Password checks (logins, Octavia Basic) by outcome.\n\
             # TYPE keel_password_checks_total counter\n",
        );
        for (name, n) in OUTCOMES.iter().zip(&gate.outcomes) {
            out += &format!(
                "keel_password_checks_total{{outcome=\"{name}\"}} {}\n",
                n.load(Ordering::Relaxed)
            );
        }
        out += &format!(
            "# HELP keel_password_hashes_in_flight Password hashes running now.\n\
             # TYPE keel_password_hashes_in_flight gauge\n\
             keel_password_hashes_in_flight {}\n\
             # HELP keel_password_hashes_in_flight_peak Most password hashes that ran at once.\n\
             # TYPE keel_password_hashes_in_flight_peak gauge\n\
             keel_password_hashes_in_flight_peak {}\n\
             # HELP keel_password_hashes_max Password hashes allowed at once.\n\
             # TYPE keel_password_hashes_max gauge\n\
             keel_password_hashes_max {}\n",
            gate.in_flight.load(Ordering::Relaxed),
            gate.peak.load(Ordering::Relaxed),
            gate.max_hashes,
        );
        out
    }
}

impl Gate {
    fn count(&self, outcome: usize) {
        self.outcomes[outcome].fetch_add(1, Ordering::Relaxed);
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
                role: None,
                load_balancers: Vec::new(),
                pools: Vec::new(),
            },
        );
        let user = |state: &ClusterState, token: &str, now| {
            check_bearer(state, token, now).map(|c| c.user)
        };
        assert_eq!(user(&state, &token, 10), None, "no such user");
        state.users.insert(
            "admin".into(),
            keel_model::User {
                password_hash: String::new(),
                must_change_password: false,
                role: keel_model::Role::Operator,
            },
        );
        assert_eq!(user(&state, &token, 10).as_deref(), Some("admin"));
        assert_eq!(user(&state, &token, 100), None, "expired");
        assert_eq!(user(&state, &format!("{token}x"), 10), None);
        assert_eq!(user(&state, "keel_", 10), None);
        assert_eq!(user(&state, "garbage", 10), None);
        // The token may be less than its user, never more.
        if let Some(t) = state.api_tokens.get_mut(&id) {
            t.role = Some(keel_model::Role::Admin);
        }
        let caller = check_bearer(&state, &token, 10).unwrap();
        assert_eq!(caller.role, keel_model::Role::Operator);
        if let Some(t) = state.api_tokens.get_mut(&id) {
            t.role = Some(keel_model::Role::Viewer);
        }
        let caller = check_bearer(&state, &token, 10).unwrap();
        assert_eq!(caller.role, keel_model::Role::Viewer);
    }

    #[test]
    fn attempts_are_cut_at_the_limit_per_key() {
        let l = Attempts::new(5, Duration::from_secs(60));
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..5 {
            assert!(l.attempt(&ip).is_ok());
        }
        let wait = l.attempt(&ip).unwrap_err();
        assert!(wait > Duration::from_secs(58) && wait <= Duration::from_secs(60));
        assert!(l.attempt(&"10.0.0.2".parse().unwrap()).is_ok());
        l.forget(&ip);
        assert!(l.attempt(&ip).is_ok());
    }

    #[test]
    fn attempts_start_over_when_the_window_ends() {
        let l = Attempts::new(1, Duration::from_millis(50));
        assert!(l.attempt(&1).is_ok());
        assert!(l.attempt(&1).is_err());
        std::thread::sleep(Duration::from_millis(60));
        assert!(l.attempt(&1).is_ok());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn the_gate_counts_before_hashing_and_bounds_hashes_in_flight() {
        let hash = hash_password("right").unwrap();
        let gate = PasswordGate::new(2);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        // 50 at once from one address: 5 are checked, the rest refused
        // without hashing; never more than 2 hashes at once.
        let tries: Vec<_> = (0..50)
            .map(|_| {
                let (gate, hash) = (gate.clone(), hash.clone());
                tokio::spawn(async move { gate.check(ip, "admin", "wrong", Some(&hash)).await })
            })
            .collect();
        let mut results = Vec::new();
        for t in tries {
            results.push(t.await.unwrap());
        }
        let checked = results.iter().filter(|r| r.is_ok()).count();
        let limited = results
            .iter()
            .filter(|r| matches!(r, Err(NotChecked::TooMany(_))))
            .count();
        let busy = results
            .iter()
            .filter(|r| **r == Err(NotChecked::Busy))
            .count();
        assert_eq!(checked + busy, 5, "{results:?}");
        assert_eq!(limited, 45);
        assert!(results.iter().all(|r| *r != Ok(true)));
        let metrics = gate.render_metrics();
        assert!(
            metrics.contains("keel_password_hashes_in_flight 0\n"),
            "{metrics}"
        );
        let peak: usize = metrics
            .lines()
            .find_map(|l| l.strip_prefix("keel_password_hashes_in_flight_peak "))
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=2).contains(&peak), "{metrics}");

        // Per user too: 20 addresses, one wrong attempt each for "admin",
        // leave the user limited from a 21st address ...
        let gate = PasswordGate::new(1);
        for i in 0..20u8 {
            let ip = IpAddr::from([10, 0, 1, i]);
            assert_eq!(
                gate.check(ip, "admin", "wrong", Some(&hash)).await,
                Ok(false)
            );
        }
        let other = IpAddr::from([10, 0, 2, 1]);
        assert!(matches!(
            gate.check(other, "admin", "right", Some(&hash)).await,
            Err(NotChecked::TooMany(_))
        ));
        // ... while another user from that address is checked, and a
        // success forgets that address's attempts.
        assert_eq!(
            gate.check(other, "ops", "right", Some(&hash)).await,
            Ok(true)
        );
        assert_eq!(gate.check(other, "ops", "wrong", None).await, Ok(false));
    }
}
