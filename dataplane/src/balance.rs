//! Choosing a member of a pool for a new connection or request.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use keel_model::Algorithm;

use crate::member::MemberState;
use crate::workers::{self, Padded, Ref, Refs};

/// The schedule of a weighted round robin is capped at this many slots;
/// larger weight sums are scaled down proportionally.
const MAX_SCHEDULE: u64 = 8192;

/// An immutable choice of members with their weights, built once per plan.
pub struct Balancer {
    algorithm: Algorithm,
    members: Vec<Arc<MemberState>>,
    /// What a pick hands out: the picking worker's reference to the member.
    refs: Vec<Refs<MemberState>>,
    weights: Vec<u32>,
    /// Smooth weighted round-robin order, as indexes into `members`.
    schedule: Vec<usize>,
    /// Where each worker is in the schedule: workers go round on their
    /// own (each spreads its share evenly), on lines of their own.
    cursors: Box<[Padded<AtomicUsize>]>,
}

impl Balancer {
    /// `members` are the pool's enabled members with their weights.
    pub fn new(algorithm: Algorithm, members: Vec<(Arc<MemberState>, u32)>) -> Self {
        let (members, weights): (Vec<_>, Vec<_>) = members.into_iter().unzip();
        let schedule = smooth_schedule(&weights);
        Balancer {
            algorithm,
            refs: members.iter().map(Refs::new).collect(),
            members,
            weights,
            schedule,
            cursors: (0..workers::shards())
                .map(|_| Padded(AtomicUsize::new(fastrand::usize(..1024))))
                .collect(),
        }
    }

    pub fn members(&self) -> &[Arc<MemberState>] {
        &self.members
    }

    /// Picks a member for a client, skipping members already tried.
    /// `key` is what a `consistent_hash` pool hashes (a header's or
    /// cookie's value); without one, the client's IP is hashed.
    pub fn pick(
        &self,
        client: IpAddr,
        key: Option<&[u8]>,
        tried: &[SocketAddr],
    ) -> Option<&Ref<MemberState>> {
        let eligible =
            |i: usize| self.takes_traffic(i) && !tried.contains(&self.members[i].address);
        let i = match self.algorithm {
            Algorithm::RoundRobin => self.round_robin(eligible),
            Algorithm::LeastOutstanding => self.least_outstanding(eligible),
            Algorithm::RandomTwo => self.random_two(eligible),
            Algorithm::SourceHash => self.rendezvous(&ip_bytes(client), eligible),
            Algorithm::ConsistentHash => match key {
                Some(k) => self.rendezvous(k, eligible),
                None => self.rendezvous(&ip_bytes(client), eligible),
            },
        }?;
        Some(self.refs[i].mine())
    }

    /// The member at `address` if it may take new traffic now (in the
    /// plan, up, weight above zero): how stickiness checks its member.
    pub fn available(&self, address: SocketAddr) -> Option<&Ref<MemberState>> {
        let i = self.members.iter().position(|m| m.address == address)?;
        self.takes_traffic(i).then(|| self.refs[i].mine())
    }

    fn takes_traffic(&self, i: usize) -> bool {
        self.weights[i] > 0 && self.members[i].is_up()
    }

    fn round_robin(&self, eligible: impl Fn(usize) -> bool) -> Option<usize> {
        let n = self.schedule.len();
        if n == 0 {
            return None;
        }
        let start = self.next();
        (0..n)
            .map(|k| self.schedule[(start + k) % n])
            .find(|&i| eligible(i))
    }

    /// Lower load per unit of weight wins; ties go round the members.
    /// The calling worker's next place in the schedule.
    fn next(&self) -> usize {
        workers::mine(&self.cursors).0.fetch_add(1, Relaxed)
    }

    fn least_outstanding(&self, eligible: impl Fn(usize) -> bool) -> Option<usize> {
        let n = self.members.len();
        let start = self.next();
        let mut best: Option<usize> = None;
        for k in 0..n {
            let i = (start + k) % n;
            if eligible(i) && best.is_none_or(|b| self.less_loaded(i, b)) {
                best = Some(i);
            }
        }
        best
    }

    fn random_two(&self, eligible: impl Fn(usize) -> bool) -> Option<usize> {
        let n = self.members.len();
        if n == 0 {
            return None;
        }
        let a = fastrand::usize(..n);
        let b = (a + 1 + fastrand::usize(..n.max(2) - 1)) % n;
        match (eligible(a), eligible(b)) {
            (true, true) => Some(if self.less_loaded(b, a) { b } else { a }),
            (true, false) => Some(a),
            (false, true) => Some(b),
            (false, false) => (0..n).map(|k| (a + k) % n).find(|&i| eligible(i)),
        }
    }

    /// Weighted rendezvous hashing: a member leaving moves only its own keys.
    fn rendezvous(&self, key: &[u8], eligible: impl Fn(usize) -> bool) -> Option<usize> {
        let mut best: Option<(f64, usize)> = None;
        for i in (0..self.members.len()).filter(|&i| eligible(i)) {
            let h = hash_pair(key, self.members[i].address);
            // A uniform number in (0, 1), then -w / ln(u): the largest wins.
            let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
            let score = -f64::from(self.weights[i]) / u.ln();
            if best.is_none_or(|(s, _)| score > s) {
                best = Some((score, i));
            }
        }
        best.map(|(_, i)| i)
    }

    fn less_loaded(&self, a: usize, b: usize) -> bool {
        let load = |i: usize| u128::from(self.members[i].outstanding_here());
        load(a) * u128::from(self.weights[b]) < load(b) * u128::from(self.weights[a])
    }
}

/// The interleaved order of nginx's smooth weighted round robin: each
/// member appears `weight` times, spread out rather than in runs.
fn smooth_schedule(weights: &[u32]) -> Vec<usize> {
    let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
    if total == 0 {
        return Vec::new();
    }
    let weights: Vec<i64> = weights
        .iter()
        .map(|&w| match u64::from(w) * MAX_SCHEDULE / total {
            0 if w > 0 && total > MAX_SCHEDULE => 1,
            _ if total <= MAX_SCHEDULE => i64::from(w),
            scaled => scaled as i64,
        })
        .collect();
    let g = weights.iter().fold(0, |g, &w| gcd(g, w));
    let weights: Vec<i64> = weights.iter().map(|w| w / g.max(1)).collect();
    let total: i64 = weights.iter().sum();
    let mut current = vec![0i64; weights.len()];
    let mut order = Vec::with_capacity(total as usize);
    for _ in 0..total {
        for (c, w) in current.iter_mut().zip(&weights) {
            *c += w;
        }
        let (best, _) = current
            .iter()
            .enumerate()
            .max_by_key(|&(i, c)| (*c, std::cmp::Reverse(i)))
            .unwrap_or((0, &0));
        current[best] -= total;
        order.push(best);
    }
    order
}

fn gcd(a: i64, b: i64) -> i64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v) => v.octets().to_vec(),
        IpAddr::V6(v) => v.octets().to_vec(),
    }
}

/// FNV-1a over the key and the member address: stable across processes
/// and versions, so every node maps a key to the same member.
fn hash_pair(key: &[u8], member: SocketAddr) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    eat(key);
    match member.ip() {
        IpAddr::V4(v) => eat(&v.octets()),
        IpAddr::V6(v) => eat(&v.octets()),
    }
    eat(&member.port().to_be_bytes());
    // A final mix so nearby inputs spread over the whole range.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^ (h >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(weights: &[u32]) -> Vec<(Arc<MemberState>, u32)> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &w)| {
                (
                    MemberState::new("p", SocketAddr::from(([10, 0, 0, i as u8 + 1], 80))),
                    w,
                )
            })
            .collect()
    }

    fn counts(b: &Balancer, n: usize, client: impl Fn(usize) -> IpAddr) -> Vec<usize> {
        let mut c = vec![0; b.members().len()];
        for k in 0..n {
            let m = b.pick(client(k), None, &[]).unwrap();
            let i = b
                .members()
                .iter()
                .position(|x| x.address == m.address)
                .unwrap();
            c[i] += 1;
        }
        c
    }

    #[test]
    fn smooth_schedule_interleaves() {
        assert_eq!(smooth_schedule(&[5, 1, 1]), vec![0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(smooth_schedule(&[2, 2]), vec![0, 1]);
        assert_eq!(smooth_schedule(&[0, 3]), vec![1]);
        assert!(smooth_schedule(&[0, 0]).is_empty());
        let big = smooth_schedule(&[1000; 100]);
        assert_eq!(big.len(), 100);
    }

    #[test]
    fn round_robin_honours_weight_and_skips_down_and_zero() {
        let b = Balancer::new(Algorithm::RoundRobin, members(&[3, 1, 0]));
        let ip = IpAddr::from([1, 1, 1, 1]);
        assert_eq!(counts(&b, 400, |_| ip), vec![300, 100, 0]);
        b.members()[0].set_up(false);
        assert_eq!(counts(&b, 100, |_| ip), vec![0, 100, 0]);
        b.members()[1].set_up(false);
        assert!(b.pick(ip, None, &[]).is_none());
    }

    #[test]
    fn least_outstanding_prefers_idle() {
        let b = Balancer::new(Algorithm::LeastOutstanding, members(&[1, 1, 1]));
        let ip = IpAddr::from([1, 1, 1, 1]);
        let _g1 = b.available(b.members()[0].address).unwrap().begin();
        let _g2 = b.available(b.members()[1].address).unwrap().begin();
        for _ in 0..10 {
            assert_eq!(
                b.pick(ip, None, &[]).unwrap().address,
                b.members()[2].address
            );
        }
        let tried = [b.members()[2].address];
        assert_ne!(b.pick(ip, None, &tried).unwrap().address, tried[0]);
    }

    /// A request keeps its worker's reference to the member, not the member's own `Arc`:
    /// picking and counting it in flight leave the member's reference
    /// count (a line every worker's requests would write) alone, and each
    /// worker is handed a reference of its own.
    #[tokio::test]
    async fn a_request_writes_no_count_of_the_members_own() {
        let workers = crate::workers::Workers::start(2, false).unwrap();
        let b = Arc::new(Balancer::new(Algorithm::RoundRobin, members(&[1])));
        let ip = IpAddr::from([1, 1, 1, 1]);
        let member = b.members()[0].clone();
        let count = Arc::strong_count(&member);
        let guard = b.pick(ip, None, &[]).unwrap().begin();
        assert_eq!(Arc::strong_count(&member), count);
        assert_eq!(member.outstanding(), 1);
        assert!(Arc::ptr_eq(guard.member(), &member));
        drop(guard);
        assert_eq!(member.outstanding(), 0);

        let mut handed = Vec::new();
        for worker in workers.handles() {
            let b = b.clone();
            let at = worker
                .spawn(async move { std::ptr::from_ref(b.pick(ip, None, &[]).unwrap()) as usize });
            handed.push(at.await.unwrap());
        }
        assert_ne!(handed[0], handed[1], "each worker has its own reference");
    }

    /// Workers pick on their own: each goes round the members and sees
    /// the requests it started, while the member's total counts them all.
    #[tokio::test]
    async fn each_worker_goes_round_and_balances_its_own_in_flight() {
        let workers = crate::workers::Workers::start(2, false).unwrap();
        let ip = IpAddr::from([1, 1, 1, 1]);
        let rr = Arc::new(Balancer::new(Algorithm::RoundRobin, members(&[1, 1])));
        for worker in workers.handles() {
            let rr = rr.clone();
            let c = worker.spawn(async move { counts(&rr, 10, |_| ip) });
            assert_eq!(c.await.unwrap(), vec![5, 5]);
        }
        let lo = Arc::new(Balancer::new(Algorithm::LeastOutstanding, members(&[1, 1])));
        let (w0, w1) = (&workers.handles()[0], &workers.handles()[1]);
        let l = lo.clone();
        let first = l.members()[0].address;
        let busy = w0
            .spawn(async move { l.available(first).unwrap().begin() })
            .await
            .unwrap();
        assert_eq!(lo.members()[0].outstanding(), 1);
        let l = lo.clone();
        let c = w0.spawn(async move { counts(&l, 4, |_| ip) });
        assert_eq!(
            c.await.unwrap(),
            vec![0, 4],
            "worker 0 avoids its busy member"
        );
        let l = lo.clone();
        let c = w1.spawn(async move { counts(&l, 4, |_| ip) });
        assert_eq!(c.await.unwrap(), vec![2, 2], "worker 1 sees none of it");
        drop(busy);
        assert_eq!(lo.members()[0].outstanding(), 0);
    }

    #[test]
    fn random_two_spreads_and_avoids_loaded() {
        let b = Balancer::new(Algorithm::RandomTwo, members(&[1, 1]));
        let ip = IpAddr::from([1, 1, 1, 1]);
        let c = counts(&b, 1000, |_| ip);
        assert!(c[0] > 300 && c[1] > 300, "{c:?}");
        let _busy = b.available(b.members()[0].address).unwrap().begin();
        assert_eq!(counts(&b, 100, |_| ip), vec![0, 100]);
    }

    #[test]
    fn source_hash_is_sticky_and_minimal_on_removal() {
        let all = members(&[1, 1, 1, 1]);
        let b = Balancer::new(Algorithm::SourceHash, all.clone());
        let ip = |k: usize| IpAddr::from([10, 1, (k / 256) as u8, (k % 256) as u8]);
        let before: Vec<_> = (0..2000)
            .map(|k| b.pick(ip(k), None, &[]).unwrap().address)
            .collect();
        let again: Vec<_> = (0..2000)
            .map(|k| b.pick(ip(k), None, &[]).unwrap().address)
            .collect();
        assert_eq!(before, again);
        let c = counts(&b, 2000, ip);
        assert!(c.iter().all(|&n| n > 350), "{c:?}");
        let removed = all[2].0.address;
        let fewer = Balancer::new(
            Algorithm::SourceHash,
            all.into_iter()
                .filter(|(m, _)| m.address != removed)
                .collect(),
        );
        for (k, &was) in before.iter().enumerate() {
            let now = fewer.pick(ip(k), None, &[]).unwrap().address;
            if was != removed {
                assert_eq!(now, was, "client {k} moved although its member stayed");
            }
        }
    }

    #[test]
    fn consistent_hash_follows_keys_and_weights() {
        let all = members(&[1, 1, 2]);
        let b = Balancer::new(Algorithm::ConsistentHash, all.clone());
        let ip = IpAddr::from([1, 1, 1, 1]);
        let key = |k: usize| format!("user-{k}").into_bytes();
        let pick = |b: &Balancer, k: usize| b.pick(ip, Some(&key(k)), &[]).unwrap().address;
        let mut c = [0usize; 3];
        for k in 0..3000 {
            let m = pick(&b, k);
            assert_eq!(m, pick(&b, k));
            c[all.iter().position(|(x, _)| x.address == m).unwrap()] += 1;
        }
        // Weight 2 takes about half; weight 1 a quarter each.
        assert!(c[2] > 1300 && c[2] < 1700, "{c:?}");
        assert!(c[0] > 600 && c[1] > 600, "{c:?}");
        // A member going down moves only the keys it had.
        all[0].0.set_up(false);
        for k in 0..3000 {
            let now = pick(&b, k);
            assert_ne!(now, all[0].0.address);
        }
        all[0].0.set_up(true);
        let before: Vec<_> = (0..3000).map(|k| pick(&b, k)).collect();
        all[1].0.set_up(false);
        for (k, &was) in before.iter().enumerate() {
            if was != all[1].0.address {
                assert_eq!(pick(&b, k), was, "key {k} moved");
            }
        }
    }
}
