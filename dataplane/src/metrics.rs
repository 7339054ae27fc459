//! Lock-free counters and histograms, and their Prometheus text rendering.
//!
//! Counters live in the runtime objects they describe (listeners, pools,
//! members), so the hot path touches a few atomics and never a registry.
//! Each object keeps one set per worker ([`PerWorker`]), each on cache lines
//! of its own: a worker only ever writes its own set, and readers (the
//! metrics page, the traffic view) add the sets up.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use crate::workers::Padded;

/// Upper bounds of the latency buckets, in seconds.
pub const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A latency histogram with fixed buckets.
#[derive(Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|&b| secs <= b) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_micros
            .fetch_add(d.as_micros().try_into().unwrap_or(u64::MAX), Relaxed);
    }

    /// Adds this histogram's observations per bucket to `into`: one slot per
    /// bound of [`BUCKETS`], then one for slower ones.
    pub fn add_to(&self, into: &mut [u64; BUCKETS.len() + 1]) {
        let mut counted = 0;
        for (slot, bucket) in into.iter_mut().zip(&self.buckets) {
            let n = bucket.load(Relaxed);
            *slot += n;
            counted += n;
        }
        into[BUCKETS.len()] += self.count.load(Relaxed).saturating_sub(counted);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (i, b) in BUCKETS.iter().enumerate() {
            cumulative += self.buckets[i].load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{b}\"}} {cumulative}");
        }
        let count = self.count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
    }
}

/// Responses counted by status class: 1xx to 5xx.
#[derive(Default)]
pub struct ByClass([AtomicU64; 5]);

impl ByClass {
    pub fn count(&self, status: u16) {
        self.0[Self::class(status)].fetch_add(1, Relaxed);
    }

    /// Moves a response counted as `from` to `to`: an answer counted when
    /// its head came, and replaced by Keel's own before any of it went out.
    /// On the set that counted it (a connection stays on its worker).
    pub fn recount(&self, from: u16, to: u16) {
        let (from, to) = (Self::class(from), Self::class(to));
        if from != to {
            self.0[from].fetch_sub(1, Relaxed);
            self.0[to].fetch_add(1, Relaxed);
        }
    }

    fn class(status: u16) -> usize {
        usize::from(status / 100).clamp(1, 5) - 1
    }

    /// Responses of every class.
    pub fn total(&self) -> u64 {
        self.0.iter().map(|c| c.load(Relaxed)).sum()
    }

    /// 5xx responses.
    pub fn server_errors(&self) -> u64 {
        self.0[4].load(Relaxed)
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        for (i, c) in self.0.iter().enumerate() {
            let _ = writeln!(
                out,
                "{name}{{{labels},class=\"{}xx\"}} {}",
                i + 1,
                c.load(Relaxed)
            );
        }
    }
}

/// One set of `T` per worker, each on cache lines of its own: the worker
/// running a connection adds to its own ([`PerWorker::here`]), so no two
/// workers write the same line; readers add them up. Each set is an
/// allocation of its own, so what keeps one ([`PerWorker::kept`]) changes
/// a reference count no other worker changes.
pub struct PerWorker<T>(Box<[Arc<Padded<T>>]>);

impl<T: Default> Default for PerWorker<T> {
    fn default() -> Self {
        PerWorker(
            (0..crate::workers::shards())
                .map(|_| Arc::new(Padded(T::default())))
                .collect(),
        )
    }
}

impl<T> PerWorker<T> {
    /// The calling worker's set (the first one off the workers).
    pub fn here(&self) -> &T {
        &crate::workers::mine(&self.0).0
    }

    /// The calling worker's set, kept by what outlives the call (a body
    /// counting its bytes).
    pub(crate) fn kept(&self) -> Kept<T> {
        Kept(crate::workers::mine(&self.0).clone())
    }

    /// `count` over every worker's set, added up.
    pub fn sum<N: std::iter::Sum>(&self, count: impl Fn(&T) -> N) -> N {
        self.0.iter().map(|p| count(&p.0)).sum()
    }

    /// A counter's value over every worker's set.
    pub fn total(&self, counter: impl Fn(&T) -> &AtomicU64) -> u64 {
        self.sum(|t| counter(t).load(Relaxed))
    }

    /// Every worker's responses by class, added up.
    pub fn classes(&self, of: impl Fn(&T) -> &ByClass) -> ByClass {
        let all = ByClass::default();
        for p in self.0.iter() {
            for (into, from) in all.0.iter().zip(&of(&p.0).0) {
                into.fetch_add(from.load(Relaxed), Relaxed);
            }
        }
        all
    }

    /// Every worker's latency histogram, added up.
    pub fn histogram(&self, of: impl Fn(&T) -> &Histogram) -> Histogram {
        let all = Histogram::default();
        for p in self.0.iter() {
            let h = of(&p.0);
            for (into, from) in all.buckets.iter().zip(&h.buckets) {
                into.fetch_add(from.load(Relaxed), Relaxed);
            }
            all.count.fetch_add(h.count.load(Relaxed), Relaxed);
            all.sum_micros
                .fetch_add(h.sum_micros.load(Relaxed), Relaxed);
        }
        all
    }
}

/// One worker's set of a [`PerWorker`], kept.
pub(crate) struct Kept<T>(Arc<Padded<T>>);

impl<T> std::ops::Deref for Kept<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0 .0
    }
}

/// Traffic through one listener, on every worker.
pub type ListenerStats = PerWorker<ListenerCounts>;
/// Traffic through one pool, on every worker.
pub type PoolStats = PerWorker<PoolCounts>;
/// Traffic to one member, on every worker.
pub type MemberStats = PerWorker<MemberCounts>;

/// Traffic through one listener (on one worker).
#[derive(Default)]
pub struct ListenerCounts {
    pub connections: AtomicU64,
    pub active: AtomicI64,
    pub requests: ByClass,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub latency: Histogram,
    /// TLS handshakes that failed or timed out.
    pub tls_failures: AtomicU64,
    /// HTTP connections upgraded (websockets), ever and open now.
    pub upgrades: AtomicU64,
    pub tunnels: AtomicI64,
    /// Connections refused by `max_connections`.
    pub over_limit: AtomicU64,
    /// Connections or requests refused by `rate_limit`.
    pub rate_limited: AtomicU64,
}

/// Traffic through one pool, whichever member served it (on one worker).
#[derive(Default)]
pub struct PoolCounts {
    pub requests: ByClass,
    pub connections: AtomicU64,
    pub no_member: AtomicU64,
}

/// Traffic to one member (on one worker).
#[derive(Default)]
pub struct MemberCounts {
    pub connections: AtomicU64,
    pub requests: ByClass,
    pub connect_failures: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub latency: Histogram,
    pub health_flips: AtomicU64,
}

/// Writes Prometheus `# HELP`/`# TYPE` headers once per family.
pub(crate) struct Writer {
    pub out: String,
}

impl Writer {
    pub fn header(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    /// One metric family: its header, then `row` for each item.
    pub fn family<T>(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        items: &[T],
        mut row: impl FnMut(&mut Self, &str, &T),
    ) {
        self.header(name, kind, help);
        for item in items {
            row(self, name, item);
        }
    }

    pub fn value(&mut self, name: &str, labels: &str, v: impl std::fmt::Display) {
        let _ = if labels.is_empty() {
            writeln!(self.out, "{name} {v}")
        } else {
            writeln!(self.out, "{name}{{{labels}}} {v}")
        };
    }

    pub fn classes(&mut self, name: &str, labels: &str, c: &ByClass) {
        c.render(&mut self.out, name, labels);
    }

    pub fn histogram(&mut self, name: &str, labels: &str, h: &Histogram) {
        h.render(&mut self.out, name, labels);
    }
}

/// Escapes a Prometheus label value.
pub(crate) fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn each_worker_counts_on_its_own_lines_and_readers_add_them_up() {
        let workers = crate::workers::Workers::start(2, false).unwrap();
        let stats = Arc::new(ListenerStats::default());
        let mut lines = Vec::new();
        for (i, worker) in workers.handles().iter().enumerate() {
            let stats = stats.clone();
            let line = worker
                .spawn(async move {
                    let here = stats.here();
                    here.connections.fetch_add(10 * (i as u64 + 1), Relaxed);
                    here.requests.count(200);
                    here.requests.count(503);
                    here.latency.observe(Duration::from_millis(3));
                    here.active.fetch_add(1, Relaxed);
                    std::ptr::from_ref(here) as usize
                })
                .await
                .unwrap();
            lines.push(line);
        }
        // Each worker wrote a set of its own, at least a cache line pair apart.
        assert!(lines[0].abs_diff(lines[1]) >= 128, "{lines:?}");
        // One worker's connection ends on another: the gauge adds up.
        stats.here().active.fetch_sub(1, Relaxed);
        assert_eq!(stats.total(|s| &s.connections), 30);
        assert_eq!(stats.sum(|s| s.active.load(Relaxed)), 1);
        let classes = stats.classes(|s| &s.requests);
        assert_eq!((classes.total(), classes.server_errors()), (4, 2));
        let mut buckets = [0; BUCKETS.len() + 1];
        stats.histogram(|s| &s.latency).add_to(&mut buckets);
        assert_eq!(buckets.iter().sum::<u64>(), 2);
        assert_eq!(
            buckets[BUCKETS.iter().position(|b| *b >= 0.003).unwrap()],
            2
        );
    }
}
