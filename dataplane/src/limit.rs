//! Per-client rate limits: a token bucket for each client IP address.

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
        let rate = f64::from(self.limit.per_second);
        let burst = f64::from(self.limit.burst);
        let shard = self.hasher.hash_one(client) as usize % SHARDS;
        let mut buckets = lock(&self.shards[shard]);
        if buckets.len() >= SHARD_CAPACITY && !buckets.contains_key(&client) {
            // A full bucket is the same as none: forget those.
            buckets.retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * rate < burst);
            if buckets.len() >= SHARD_CAPACITY {
                // Flooded by distinct addresses: start over rather than grow.
                tracing::warn!(
                    clients = buckets.len(),
                    "rate limiter full: forgetting every client"
                );
                buckets.clear();
            }
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
}
