//! Traffic history for the dashboard: every few seconds, this node turns its
//! data plane's counters into rates, gossips them, and adds the cluster's
//! sum (its own rates plus every live peer's latest) to a 15-minute history
//! per load balancer and pool.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use keel_dataplane::{Dataplane, TrafficCounters, LATENCY_BUCKETS};
use keel_gossip::{ClusterView, TrafficRate};
use keel_web_core::{Traffic, TrafficPoint, TrafficSeries};
use tokio::sync::watch;

/// Time between samples.
pub const INTERVAL: Duration = Duration::from_secs(3);
/// How much history is kept.
const WINDOW: Duration = Duration::from_secs(15 * 60);

/// The latest local rates and the cluster-wide history.
#[derive(Default)]
pub struct TrafficLog {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// This node's rates over the latest interval, by key.
    latest: BTreeMap<String, TrafficRate>,
    /// Cluster-wide points by key, oldest first.
    history: BTreeMap<String, VecDeque<TrafficPoint>>,
}

impl TrafficLog {
    /// This node's rates over the latest interval (for its gossip report).
    pub fn latest(&self) -> BTreeMap<String, TrafficRate> {
        self.lock().latest.clone()
    }

    /// The history, as the API shows it.
    pub fn snapshot(&self) -> Traffic {
        let inner = self.lock();
        let series = inner
            .history
            .iter()
            .filter_map(|(key, points)| {
                let (kind, name) = key.split_once('/')?;
                Some(TrafficSeries {
                    kind: kind.to_owned(),
                    name: name.to_owned(),
                    points: points.iter().copied().collect(),
                })
            })
            .collect();
        Traffic {
            interval_s: INTERVAL.as_secs(),
            series,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records one interval: `local` is this node's rates, `view` the
    /// cluster's gossip (this node's own entry in it is skipped).
    fn record(&self, me: &str, local: BTreeMap<String, TrafficRate>, view: &ClusterView, at: u64) {
        let mut inner = self.lock();
        let mut sum: BTreeMap<String, Vec<TrafficRate>> =
            local.iter().map(|(k, r)| (k.clone(), vec![*r])).collect();
        for (name, peer) in view {
            if name == me || !peer.live {
                continue;
            }
            let Some(report) = &peer.report else { continue };
            for (key, rate) in &report.traffic {
                // Only objects this node serves too: a peer still on an
                // older config does not resurrect a removed series.
                if let Some(rates) = sum.get_mut(key) {
                    rates.push(*rate);
                }
            }
        }
        let keep = WINDOW.as_millis() / INTERVAL.as_millis().max(1);
        inner.history.retain(|key, _| sum.contains_key(key));
        for (key, rates) in sum {
            let points = inner.history.entry(key).or_default();
            points.push_back(combine(&rates, at));
            while points.len() as u128 > keep {
                points.pop_front();
            }
        }
        inner.latest = local;
    }
}

/// Sums nodes' rates into one point: rates and counts add up; the median is
/// the request-weighted mean of the nodes' medians and the p99 the worst
/// node's (an upper bound: per-node histograms are not shipped).
fn combine(rates: &[TrafficRate], at: u64) -> TrafficPoint {
    let requests: u64 = rates.iter().map(|r| r.requests_milli).sum();
    let errors: u64 = rates.iter().map(|r| r.errors_milli).sum();
    let weighted: Vec<(u64, u64)> = rates
        .iter()
        .filter_map(|r| Some((r.p50_us?, r.requests_milli.max(1))))
        .collect();
    let weight: u64 = weighted.iter().map(|(_, w)| w).sum();
    let p50 = (weight > 0).then(|| {
        weighted
            .iter()
            .map(|(p, w)| *p as f64 * *w as f64)
            .sum::<f64>()
            / weight as f64
            / 1000.0
    });
    TrafficPoint {
        at,
        requests_per_s: requests as f64 / 1000.0,
        error_rate: if requests > 0 {
            (errors as f64 / requests as f64).min(1.0)
        } else {
            0.0
        },
        active: rates.iter().map(|r| r.active).sum(),
        p50_ms: p50,
        p99_ms: rates
            .iter()
            .filter_map(|r| r.p99_us)
            .max()
            .map(|us| us as f64 / 1000.0),
    }
}

/// The rate of each object between two counter readings `elapsed` apart.
pub(crate) fn rates(
    before: &BTreeMap<String, TrafficCounters>,
    now: &BTreeMap<String, TrafficCounters>,
    elapsed: Duration,
) -> BTreeMap<String, TrafficRate> {
    let millis = elapsed.as_millis().max(1) as u64;
    now.iter()
        .map(|(key, c)| {
            let zero = TrafficCounters::default();
            let b = before.get(key).unwrap_or(&zero);
            let mut latency = c.latency;
            for (slot, old) in latency.iter_mut().zip(b.latency) {
                *slot = slot.saturating_sub(old);
            }
            let per_s = |n: u64, o: u64| n.saturating_sub(o).saturating_mul(1_000_000) / millis;
            (
                key.clone(),
                TrafficRate {
                    requests_milli: per_s(c.requests, b.requests),
                    errors_milli: per_s(c.errors, b.errors),
                    active: c.active,
                    p50_us: quantile_us(&latency, 0.5),
                    p99_us: quantile_us(&latency, 0.99),
                },
            )
        })
        .collect()
}

/// The `q` quantile of a bucketed histogram, in microseconds, interpolated
/// linearly inside its bucket (the last, unbounded bucket reads as twice
/// the highest bound).
pub(crate) fn quantile_us(counts: &[u64], q: f64) -> Option<u64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut below = 0u64;
    for (i, &n) in counts.iter().enumerate() {
        if n > 0 && (below + n) as f64 >= rank {
            let low = if i == 0 { 0.0 } else { LATENCY_BUCKETS[i - 1] };
            let high = LATENCY_BUCKETS
                .get(i)
                .copied()
                .unwrap_or(LATENCY_BUCKETS[LATENCY_BUCKETS.len() - 1] * 2.0);
            let within = ((rank - below as f64) / n as f64).clamp(0.0, 1.0);
            return Some(((low + within * (high - low)) * 1e6) as u64);
        }
        below += n;
    }
    None
}

/// Samples every [`INTERVAL`] until `stop`.
pub(crate) async fn run(
    log: std::sync::Arc<TrafficLog>,
    me: String,
    dataplane: std::sync::Arc<Dataplane>,
    gossip: watch::Receiver<ClusterView>,
    mut stop: watch::Receiver<bool>,
) {
    let mut before = dataplane.traffic();
    let mut then = Instant::now();
    let mut tick = tokio::time::interval(INTERVAL);
    tick.tick().await;
    loop {
        tokio::select! {
            r = stop.changed() => if r.is_err() || *stop.borrow() { return },
            _ = tick.tick() => {
                let now = dataplane.traffic();
                let local = rates(&before, &now, then.elapsed());
                before = now;
                then = Instant::now();
                let at = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64);
                log.record(&me, local, &gossip.borrow(), at);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use keel_gossip::{Peer, Report};

    #[test]
    fn quantiles_interpolate_within_buckets() {
        let mut counts = [0u64; LATENCY_BUCKETS.len() + 1];
        assert_eq!(quantile_us(&counts, 0.5), None);
        // 100 answers between 1 ms and 2.5 ms.
        counts[2] = 100;
        let p50 = quantile_us(&counts, 0.5).unwrap();
        assert!((1700..=1800).contains(&p50), "{p50}");
        // One slow answer moves p99 only when it is more than 1%.
        counts[8] = 1;
        assert!(quantile_us(&counts, 0.99).unwrap() <= 2500);
        counts[8] = 5;
        assert!(quantile_us(&counts, 0.99).unwrap() > 100_000);
    }

    #[test]
    fn rates_are_differences_and_the_cluster_sums_them() {
        let key = "pool/app".to_owned();
        let mut before = BTreeMap::new();
        before.insert(key.clone(), TrafficCounters::default());
        let mut now = BTreeMap::new();
        let mut c = TrafficCounters {
            requests: 300,
            errors: 30,
            active: 4,
            ..Default::default()
        };
        c.latency[3] = 300;
        now.insert(key.clone(), c);
        let local = rates(&before, &now, Duration::from_secs(3));
        assert_eq!(local[&key].requests_milli, 100_000);
        assert_eq!(local[&key].errors_milli, 10_000);

        let mut view = ClusterView::new();
        let mut peer = Report::default();
        peer.traffic.insert(key.clone(), local[&key]);
        peer.traffic.insert("pool/gone".into(), local[&key]);
        view.insert(
            "b".into(),
            Peer {
                live: true,
                report: Some(peer.clone()),
            },
        );
        view.insert(
            "c".into(),
            Peer {
                live: false,
                report: Some(peer),
            },
        );
        let log = TrafficLog::default();
        log.record("a", local, &view, 1);
        let t = log.snapshot();
        assert_eq!(t.series.len(), 1, "a series only for what this node serves");
        let p = t.series[0].points[0];
        assert_eq!(p.requests_per_s, 200.0, "this node and the live peer");
        assert!((p.error_rate - 0.1).abs() < 1e-9);
        assert_eq!(p.active, 8);
        assert!(p.p50_ms.is_some() && p.p99_ms.is_some());
    }
}
