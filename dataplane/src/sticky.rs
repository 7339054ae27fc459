//! Session stickiness: signed cookies that keep a client on one member, and
//! the request values a `consistent_hash` pool hashes.
//!
//! A sticky cookie's value is `ID.EXPIRY.MAC`: `ID` names the member without
//! revealing its address (a keyed hash of pool and address), `EXPIRY` is
//! Unix seconds, and `MAC` signs both with the cluster's cookie key, so a
//! client can neither forge a member choice nor extend its session. Every
//! node of a cluster derives the same key, so a client keeps its member
//! whichever node answers (after a VIP failover too). A plan signs with
//! its first key and honours cookies signed with any of its keys (the key
//! before a rotation of the cluster secret), so a rotation moves no
//! client: its next answer carries a cookie signed with the new key.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http::header::{self, HeaderMap, HeaderValue};
use keel_model::{HashOn, Pool, Stickiness};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// The secret that signs sticky cookies.
#[derive(Clone)]
pub struct CookieKey([u8; 32]);

impl CookieKey {
    /// A key of this process only: sticky cookies survive as long as it does.
    pub fn random() -> Self {
        let mut k = [0u8; 32];
        if getrandom::fill(&mut k).is_err() {
            // No OS randomness: still unpredictable enough to not be a
            // constant, and stickiness is a convenience, not an access control.
            let t = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            k = Sha256::digest(format!("{t:?}{}", std::process::id())).into();
        }
        CookieKey(k)
    }

    /// A key derived from a secret every node of a cluster shares.
    pub fn derive(secret: &[u8]) -> Self {
        let mut h = Sha256::new();
        h.update(b"keel sticky cookie key\0");
        h.update(secret);
        CookieKey(h.finalize().into())
    }

    fn mac(&self, parts: &[&[u8]]) -> [u8; 32] {
        // HMAC takes keys of any length: this cannot fail.
        let Ok(mut m) = HmacSha256::new_from_slice(&self.0) else {
            return [0; 32];
        };
        for p in parts {
            m.update(p);
            m.update(b"\0");
        }
        m.finalize().into_bytes().into()
    }
}

/// A pool's stickiness, compiled for one plan.
pub(crate) struct StickyPlan {
    /// Keel's cookie: `keel-POOL` (lb_cookie) or `keel-app-POOL` (app_cookie).
    cookie: String,
    /// app_cookie: the application's cookie that must accompany Keel's.
    follows: Option<String>,
    duration: Duration,
    pool: String,
    /// Per key, the first signing: the key and each member's cookie id
    /// under it.
    keys: Vec<(CookieKey, Vec<(String, SocketAddr)>)>,
}

impl StickyPlan {
    /// `keys`: the first signs, every one is honoured; none, no stickiness.
    pub fn new(pool: &Pool, keys: &[CookieKey]) -> Option<Self> {
        let (cookie, follows, duration) = match pool.stickiness.as_ref()? {
            Stickiness::LbCookie { duration } => (format!("keel-{}", pool.name), None, *duration),
            Stickiness::AppCookie { cookie, duration } => (
                format!("keel-app-{}", pool.name),
                Some(cookie.clone()),
                *duration,
            ),
        };
        let keys: Vec<_> = keys
            .iter()
            .map(|key| {
                let ids = pool
                    .members
                    .iter()
                    .map(|m| (member_id(key, &pool.name, m.address), m.address))
                    .collect();
                (key.clone(), ids)
            })
            .collect();
        if keys.is_empty() {
            return None;
        }
        Some(StickyPlan {
            cookie,
            follows,
            duration,
            pool: pool.name.clone(),
            keys,
        })
    }

    /// The member a request's cookie names, if the cookie is genuine and
    /// unexpired (and, for app_cookie, the application's cookie came too).
    pub fn pinned(&self, headers: &HeaderMap, now: u64) -> Option<SocketAddr> {
        if let Some(app) = &self.follows {
            cookie_value(headers, app)?;
        }
        let value = cookie_value(headers, &self.cookie)?;
        let mut parts = value.split('.');
        let (id, expiry, mac) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || u64::from_str_radix(expiry, 16).ok()? < now {
            return None;
        }
        self.keys.iter().find_map(|(key, ids)| {
            let want = self.sign(key, id, expiry);
            if !keel_model::constant_time_eq(want.as_bytes(), mac.as_bytes()) {
                return None;
            }
            ids.iter().find(|(i, _)| i == id).map(|(_, a)| *a)
        })
    }

    /// Adds Keel's cookie for `member` to a response: always for
    /// lb_cookie (each answer extends the session); for app_cookie when
    /// the member set the application's cookie or the client sent it.
    pub fn stamp(
        &self,
        response: &mut HeaderMap,
        request_had_app_cookie: bool,
        member: SocketAddr,
        now: u64,
        secure: bool,
    ) {
        if let Some(app) = &self.follows {
            let sets_app = response
                .get_all(header::SET_COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .any(|v| v.trim_start().split('=').next() == Some(app.as_str()));
            if !sets_app && !request_had_app_cookie {
                return;
            }
        }
        let Some((key, ids)) = self.keys.first() else {
            return;
        };
        let Some((id, _)) = ids.iter().find(|(_, a)| *a == member) else {
            return;
        };
        let expiry = format!("{:x}", now + self.duration.as_secs());
        let mac = self.sign(key, id, &expiry);
        let text = format!(
            "{}={id}.{expiry}.{mac}; Max-Age={}; Path=/; HttpOnly; SameSite=Lax{}",
            self.cookie,
            self.duration.as_secs(),
            if secure { "; Secure" } else { "" }
        );
        if let Ok(v) = HeaderValue::from_str(&text) {
            response.append(header::SET_COOKIE, v);
        }
    }

    /// For app_cookie: whether the request carries the application's cookie.
    pub fn has_app_cookie(&self, headers: &HeaderMap) -> bool {
        self.follows
            .as_ref()
            .is_some_and(|app| cookie_value(headers, app).is_some())
    }

    fn sign(&self, key: &CookieKey, id: &str, expiry: &str) -> String {
        hex(&key.mac(&[self.pool.as_bytes(), id.as_bytes(), expiry.as_bytes()])[..16])
    }
}

/// A member's id in cookies: a keyed hash, so addresses stay private.
fn member_id(key: &CookieKey, pool: &str, address: SocketAddr) -> String {
    hex(&key.mac(&[b"member", pool.as_bytes(), address.to_string().as_bytes()])[..8])
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The value of cookie `name` in a request's `Cookie` headers.
pub(crate) fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim().trim_matches('"'))
}

/// What a `consistent_hash` pool hashes for this request, if the header or
/// cookie it names is present (else the balancer hashes the client's IP).
pub(crate) fn hash_key(pool: &Pool, headers: &HeaderMap) -> Option<Bytes> {
    match pool.hash_on.as_ref()? {
        HashOn::Source => None,
        HashOn::Header(name) => headers
            .get(name.as_str())
            .map(|v| Bytes::copy_from_slice(v.as_bytes())),
        HashOn::Cookie(name) => {
            cookie_value(headers, name).map(|v| Bytes::copy_from_slice(v.as_bytes()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(stickiness: Stickiness) -> Pool {
        keel_model::Document::parse_spec(
            "load_balancers: []\npools:\n  - { name: p, members: [ { address: \"10.0.0.1:80\" }, { address: \"10.0.0.2:80\" } ] }\n",
        )
        .map(|s| {
            let mut p = s.pools["p"].clone();
            p.stickiness = Some(stickiness);
            p
        })
        .expect("valid")
    }

    fn cookie_of(h: &HeaderMap) -> String {
        let set = h[header::SET_COOKIE].to_str().expect("ascii");
        set.split(';').next().expect("pair").to_owned()
    }

    fn request(cookies: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_str(cookies).expect("ascii"),
        );
        h
    }

    #[test]
    fn a_stamped_cookie_pins_its_member_until_it_expires() {
        let key = CookieKey::derive(b"cluster secret");
        let plan = StickyPlan::new(
            &pool(Stickiness::LbCookie {
                duration: Duration::from_secs(60),
            }),
            std::slice::from_ref(&key),
        )
        .expect("sticky");
        let member: SocketAddr = "10.0.0.2:80".parse().expect("addr");
        let mut h = HeaderMap::new();
        plan.stamp(&mut h, false, member, 1000, true);
        let set = h[header::SET_COOKIE].to_str().expect("ascii");
        assert!(
            set.contains("Max-Age=60") && set.ends_with("; Secure"),
            "{set}"
        );
        assert!(
            !set.contains("10.0.0.2"),
            "the address must not show: {set}"
        );
        let c = cookie_of(&h);
        assert_eq!(plan.pinned(&request(&c), 1000), Some(member));
        assert_eq!(
            plan.pinned(&request(&format!("a=b; {c}")), 1060),
            Some(member)
        );
        assert_eq!(plan.pinned(&request(&c), 1061), None, "expired");

        // Another cluster's key, or any change to the value, is refused.
        let other = StickyPlan::new(
            &pool(Stickiness::LbCookie {
                duration: Duration::from_secs(60),
            }),
            &[CookieKey::derive(b"another")],
        )
        .expect("sticky");
        assert_eq!(other.pinned(&request(&c), 1000), None);
        // After a rotation the old key is still honoured, and the next
        // cookie is signed with the new one.
        let rotated = StickyPlan::new(
            &pool(Stickiness::LbCookie {
                duration: Duration::from_secs(60),
            }),
            &[CookieKey::derive(b"another"), key.clone()],
        )
        .expect("sticky");
        assert_eq!(rotated.pinned(&request(&c), 1000), Some(member));
        let mut fresh = HeaderMap::new();
        rotated.stamp(&mut fresh, false, member, 1000, true);
        let fresh = cookie_of(&fresh);
        assert_eq!(other.pinned(&request(&fresh), 1000), Some(member));
        assert_eq!(plan.pinned(&request(&fresh), 1000), None);
        let (name, value) = c.split_once('=').expect("pair");
        let parts: Vec<&str> = value.split('.').collect();
        let later = format!("{name}={}.{:x}.{}", parts[0], 999_999, parts[2]);
        assert_eq!(plan.pinned(&request(&later), 1000), None, "extended");
        for bad in ["", "x", "a.b.c", "..", "ff.ff.ff.ff"] {
            assert_eq!(plan.pinned(&request(&format!("{name}={bad}")), 0), None);
        }
    }

    #[test]
    fn app_cookie_pins_only_alongside_the_applications_cookie() {
        let key = CookieKey::derive(b"k");
        let plan = StickyPlan::new(
            &pool(Stickiness::AppCookie {
                cookie: "SESSION".into(),
                duration: Duration::from_secs(60),
            }),
            std::slice::from_ref(&key),
        )
        .expect("sticky");
        let member: SocketAddr = "10.0.0.1:80".parse().expect("addr");
        let mut plain = HeaderMap::new();
        plan.stamp(&mut plain, false, member, 0, false);
        assert!(plain.get(header::SET_COOKIE).is_none(), "no session yet");
        let mut h = HeaderMap::new();
        h.insert(
            header::SET_COOKIE,
            HeaderValue::from_static("SESSION=abc; Path=/"),
        );
        plan.stamp(&mut h, false, member, 0, false);
        let ours = h
            .get_all(header::SET_COOKIE)
            .iter()
            .map(|v| v.to_str().expect("ascii").to_owned())
            .find(|v| v.starts_with("keel-app-p="))
            .expect("stamped");
        let pair = ours.split(';').next().expect("pair");
        assert_eq!(plan.pinned(&request(pair), 0), None, "without SESSION");
        assert_eq!(
            plan.pinned(&request(&format!("SESSION=abc; {pair}")), 0),
            Some(member)
        );
    }
}
