//! Per-client rate limits: a token bucket for each client IPv4 address or
//! IPv6 /64.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::Mutex;

use keel_model::RateLimit;
use tokio::time::Instant;

use crate::member::lock;

/// Buckets are spread over this many locks.
const SHARDS: usize = 16;
/// Buckets kept per shard before full (idle) ones are swept.
const SHARD_CAPACITY: usize = 8192;

pub(crate) struct RateLimiter {
    limit: RateLimit,
    shards: Vec<Mutex<HashMap<IpAddr, Bucket>>>,
    hasher: RandomState,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

impl RateLimiter {
    pub fn new(limit: RateLimit) -> Self {
        RateLimiter {
            limit,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
        }
    }

    pub fn limit(&self) -> RateLimit {
        self.limit
    }

    /// Takes a token for `client`; false when its bucket is empty.
    pub fn allow(&self, client: IpAddr) -> bool {
        self.allow_at(client, Instant::now())
    }

    fn allow_at(&self, client: IpAddr, now: Instant) -> bool {
        let client = key(client);
        let rate = f64::from(self.limit.per_second);
        let burst = f64::from(self.limit.burst);
        let shard = self.hasher.hash_one(client) as usize % SHARDS;
        let mut buckets = lock(&self.shards[shard]);
        if buckets.len() >= SHARD_CAPACITY && !buckets.contains_key(&client) {
            evict(&mut buckets, now, rate, burst);
        }
        let b = buckets.entry(client).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * rate).min(burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The bucket a client draws from: its IPv4 address, or its IPv6 /64 (one
/// subscriber's network: a single host can use every address in it).
fn key(client: IpAddr) -> IpAddr {
    match client {
        IpAddr::V4(_) => client,
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !(u128::from(u64::MAX));
            IpAddr::V6(prefix.into())
        }
    }
}

/// Makes room in a full shard, one client at a time as far as who goes is
/// concerned: the buckets with the most tokens now (the clients least held
/// back, for whom being forgotten changes least) leave first, a quarter of
/// the shard at once so the cost per new client stays constant. A client
/// being limited keeps its empty bucket however many addresses flood in.
fn evict(buckets: &mut HashMap<IpAddr, Bucket>, now: Instant, rate: f64, burst: f64) {
    let mut by_tokens: Vec<(f64, IpAddr)> = buckets
        .iter()
        .map(|(ip, b)| {
            let tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * rate).min(burst);
            (tokens, *ip)
        })
        .collect();
    let leave = (by_tokens.len() / 4).max(1);
    by_tokens.select_nth_unstable_by(leave - 1, |a, b| b.0.total_cmp(&a.0));
    for (_, ip) in &by_tokens[..leave] {
        buckets.remove(ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bursts_then_the_rate_per_client() {
        let l = RateLimiter::new(RateLimit {
            per_second: 10,
            burst: 5,
        });
        let (a, b) = (IpAddr::from([10, 0, 0, 1]), IpAddr::from([10, 0, 0, 2]));
        let t0 = Instant::now();
        assert_eq!((0..8).filter(|_| l.allow_at(a, t0)).count(), 5);
        // Another client has its own bucket.
        assert!(l.allow_at(b, t0));
        // 10 per second: one more every 100 ms, never above the burst.
        assert!(!l.allow_at(a, t0 + Duration::from_millis(50)));
        assert!(l.allow_at(a, t0 + Duration::from_millis(110)));
        let later = t0 + Duration::from_secs(60);
        assert_eq!((0..8).filter(|_| l.allow_at(a, later)).count(), 5);
    }

    #[test]
    fn many_clients_do_not_grow_it_without_bound() {
        let l = RateLimiter::new(RateLimit {
            per_second: 1,
            burst: 2,
        });
        let t0 = Instant::now();
        for i in 0..200_000u32 {
            l.allow_at(IpAddr::from(i.to_be_bytes()), t0);
        }
        let total: usize = l.shards.iter().map(|s| lock(s).len()).sum();
        assert!(total <= SHARDS * SHARD_CAPACITY, "{total}");
    }

    #[test]
    fn a_flood_of_addresses_does_not_refill_a_limited_client() {
        let l = RateLimiter::new(RateLimit {
            per_second: 1,
            burst: 2,
        });
        let victim = IpAddr::from([192, 0, 2, 1]);
        let t0 = Instant::now();
        while l.allow_at(victim, t0) {}
        // Each flooding address sends one request, a few milliseconds
        // apart, as the limited client keeps trying.
        for i in 0..300_000u32 {
            let at = t0 + Duration::from_micros(u64::from(i) * 3);
            l.allow_at(IpAddr::from((i | 0x0a00_0000).to_be_bytes()), at);
            if i % 1000 == 0 {
                assert!(
                    !l.allow_at(victim, at),
                    "the limited client was let through at {i}"
                );
            }
        }
    }

    #[test]
    fn an_ipv6_client_is_limited_by_its_64() {
        let l = RateLimiter::new(RateLimit {
            per_second: 1,
            burst: 3,
        });
        let t0 = Instant::now();
        let hosts = (1..=10u16).map(|h| IpAddr::from([0xfd77, 0, 0, 0, 0, 0, 0, h]));
        assert_eq!(hosts.filter(|h| l.allow_at(*h, t0)).count(), 3);
        assert!(l.allow_at(IpAddr::from([0xfd77, 0, 0, 1, 0, 0, 0, 1]), t0));
    }
}
