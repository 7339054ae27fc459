//! The VIP rule: this node holds the cluster's virtual IPs exactly while it
//! leads with a valid quorum lease, its data plane serves the current config
//! and the VIP's interface is up. Everything else releases.
//!
//! One task evaluates the rule whenever the lease, the config or health
//! changes, when the lease is about to run out, and every
//! [`Timing::refresh`] to renew the kernel lifetime of held addresses (so a
//! stopped process loses them by itself) and to notice interface changes.
//! Once a second it also reconciles with the kernel: an address someone
//! removed is put back, a stray VIP on a non-owner is removed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use keel_consensus::{Applied, Consensus, Lease};
use keel_vip::{Addresses, Interface, Vip};
use tokio::sync::watch;
use tokio::time::Instant;

/// How the rule paces itself.
#[derive(Debug, Clone)]
pub struct Timing {
    /// How often held addresses get their kernel lifetime renewed and
    /// interfaces are looked at.
    pub refresh: Duration,
    /// The kernel lifetime of a held address: how long a VIP outlives a
    /// process that stopped refreshing it.
    pub lifetime: Duration,
    /// Announcements after a claim, this far apart.
    pub repeat_every: Duration,
    /// How many announcements a claim sends.
    pub repeats: u32,
    /// Announce again this often while holding, so switch tables do not age
    /// the VIP out.
    pub reannounce: Duration,
    /// How often the kernel's addresses are compared with the rule.
    pub reconcile: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            refresh: Duration::from_millis(250),
            lifetime: Duration::from_secs(1),
            repeat_every: Duration::from_millis(1100),
            repeats: 4,
            reannounce: Duration::from_secs(45),
            reconcile: Duration::from_secs(1),
        }
    }
}

/// Claims and releases, for `/metrics`.
#[derive(Debug, Default)]
pub struct VipMetrics {
    claims: AtomicU64,
    releases: AtomicU64,
    announcements: AtomicU64,
    errors: AtomicU64,
    held: AtomicU64,
}

impl VipMetrics {
    /// Prometheus text.
    pub fn render(&self) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            "# HELP keel_vip_claims_total VIPs this node claimed.\n\
             # TYPE keel_vip_claims_total counter\n\
             keel_vip_claims_total {}\n\
             # HELP keel_vip_releases_total VIPs this node released.\n\
             # TYPE keel_vip_releases_total counter\n\
             keel_vip_releases_total {}\n\
             # HELP keel_vip_announcements_total Gratuitous ARP / neighbour advertisement rounds sent.\n\
             # TYPE keel_vip_announcements_total counter\n\
             keel_vip_announcements_total {}\n\
             # HELP keel_vip_errors_total Failed address or announcement operations.\n\
             # TYPE keel_vip_errors_total counter\n\
             keel_vip_errors_total {}\n\
             # HELP keel_vip_held VIPs this node holds now.\n\
             # TYPE keel_vip_held gauge\n\
             keel_vip_held {}\n",
            get(&self.claims),
            get(&self.releases),
            get(&self.announcements),
            get(&self.errors),
            get(&self.held),
        )
    }
}

/// What the rule reads.
pub struct Inputs {
    pub lease: watch::Receiver<Lease>,
    pub applied: watch::Receiver<Applied>,
    /// True while the data plane serves the applied config.
    pub healthy: watch::Receiver<bool>,
    /// True while this node is drained (`drain.rs`), once its VIP
    /// listeners are quiet.
    pub drained: watch::Receiver<bool>,
    /// `--vip-interface`, or found by subnet.
    pub interface: Option<String>,
}

/// What the rule reports: the VIPs held now, as `addr/len` strings.
pub type Held = watch::Sender<BTreeSet<String>>;

struct Claim {
    interface: Interface,
    announced: u32,
    next_announce: Instant,
}

struct Rule<A> {
    addresses: Arc<A>,
    consensus: Consensus,
    timing: Timing,
    metrics: Arc<VipMetrics>,
    held: Held,
    interface: Option<String>,
    claims: BTreeMap<Vip, Claim>,
    /// Stepping down when this node leads but must not hold the VIPs.
    stepping: StepDowns,
    /// Whether the data plane serves the applied config (for step-downs).
    healthy: watch::Receiver<bool>,
    /// The last error logged per VIP, so a lasting problem is logged once.
    last_errors: BTreeMap<Vip, String>,
}

/// How long a node that stepped down for being unable to serve stays out
/// of elections while it still cannot.
const SIT_OUT: Duration = Duration::from_secs(3);

/// Step-downs for a reason that lasts: one task at a time, repeated with a
/// backoff while the reason lasts (a node re-elected while still unable to
/// hold its VIPs steps down again), reset once the reason is gone.
struct StepDowns {
    running: Arc<std::sync::atomic::AtomicBool>,
    next: Instant,
    backoff: Duration,
    attempts: u32,
}

impl Default for StepDowns {
    fn default() -> Self {
        StepDowns {
            running: Arc::default(),
            next: Instant::now(),
            backoff: Duration::from_secs(1),
            attempts: 0,
        }
    }
}

impl StepDowns {
    /// Whether to step down now (`Some(attempt)`), counting it if so.
    fn begin(&mut self) -> Option<u32> {
        let now = Instant::now();
        if self.running.load(Ordering::SeqCst) || now < self.next {
            return None;
        }
        self.running.store(true, Ordering::SeqCst);
        self.attempts += 1;
        self.next = now + self.backoff;
        self.backoff = (self.backoff * 2).min(Duration::from_secs(30));
        Some(self.attempts)
    }

    fn reason_cleared(&mut self) {
        if self.attempts > 0 && !self.running.load(Ordering::SeqCst) {
            *self = StepDowns {
                running: self.running.clone(),
                ..StepDowns::default()
            };
        }
    }
}

/// Runs the rule until `stop`; releases everything on the way out.
pub async fn run<A: Addresses>(
    addresses: A,
    consensus: Consensus,
    mut inputs: Inputs,
    timing: Timing,
    metrics: Arc<VipMetrics>,
    held: Held,
    mut stop: watch::Receiver<bool>,
) {
    let mut rule = Rule {
        addresses: Arc::new(addresses),
        consensus,
        metrics,
        held,
        interface: inputs.interface.take(),
        claims: BTreeMap::new(),
        stepping: StepDowns::default(),
        healthy: inputs.healthy.clone(),
        last_errors: BTreeMap::new(),
        timing,
    };
    let mut next_reconcile = Instant::now();
    loop {
        let lease = *inputs.lease.borrow_and_update();
        let wanted = vips_of(&inputs.applied.borrow_and_update());
        let healthy = *inputs.healthy.borrow_and_update();
        let drained = *inputs.drained.borrow_and_update();
        let reconcile = Instant::now() >= next_reconcile;
        if reconcile {
            next_reconcile = Instant::now() + rule.timing.reconcile;
        }
        rule.evaluate(lease, &wanted, healthy, drained, reconcile)
            .await;

        let mut wake = Instant::now() + rule.timing.refresh;
        wake = wake.min(next_reconcile);
        if let Some(until) = lease.until.filter(|_| !rule.claims.is_empty()) {
            wake = wake.min(until);
        }
        if let Some(next) = rule.claims.values().map(|c| c.next_announce).min() {
            wake = wake.min(next);
        }
        tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            _ = inputs.lease.changed() => {}
            _ = inputs.applied.changed() => {}
            _ = inputs.healthy.changed() => {}
            _ = inputs.drained.changed() => {}
            _ = tokio::time::sleep_until(wake) => {}
        }
    }
    let term = inputs.lease.borrow().term;
    rule.release_all("shutting down", term).await;
}

/// The VIPs the config asks for.
pub(crate) fn vips_of(applied: &Applied) -> BTreeSet<Vip> {
    applied
        .state
        .spec
        .load_balancers
        .values()
        .filter_map(|lb| lb.vip)
        .collect()
}

impl<A: Addresses> Rule<A> {
    async fn evaluate(
        &mut self,
        lease: Lease,
        wanted: &BTreeSet<Vip>,
        healthy: bool,
        drained: bool,
        reconcile: bool,
    ) {
        let term = lease.term;
        // Why this node must not hold VIPs, if it must not.
        let refuse = if !lease.is_valid() {
            Some(if self.consensus.leadership().borrow().is_leader {
                "leader lease expired (no quorum acknowledgement)"
            } else {
                "not the leader"
            })
        } else if drained {
            // drain.rs steps down; this rule only lets go.
            Some("this node is drained")
        } else if !healthy {
            Some("data plane cannot serve the applied config")
        } else {
            None
        };
        for vip in self.claims.keys().copied().collect::<Vec<_>>() {
            if let Some(reason) = refuse {
                self.release(vip, reason, term).await;
            } else if !wanted.contains(&vip) {
                self.release(vip, "removed from the config", term).await;
            }
        }
        if let Some(reason) = refuse {
            if reconcile {
                for vip in wanted {
                    self.remove_stray(*vip, reason, term).await;
                }
            }
            if reason == "data plane cannot serve the applied config"
                && self.consensus.leadership().borrow().is_leader
            {
                self.step_down(reason, term);
            } else if healthy {
                self.stepping.reason_cleared();
            }
            return;
        }
        let mut interface_down = false;
        for vip in wanted {
            let interface = match keel_vip::interface_for(vip, self.interface.as_deref()) {
                Ok(i) => i,
                Err(e) => {
                    self.error(*vip, &e.to_string());
                    continue;
                }
            };
            if !interface.running {
                interface_down = true;
                if self.claims.contains_key(vip) {
                    let reason = format!("interface {} is down", interface.name);
                    self.release(*vip, &reason, term).await;
                }
                continue;
            }
            self.hold(*vip, interface, term, reconcile).await;
        }
        if interface_down {
            self.step_down("a VIP interface is down", term);
        } else {
            self.stepping.reason_cleared();
        }
        self.announce_due().await;
    }

    /// Claims `vip`, or renews its lifetime when held.
    async fn hold(&mut self, vip: Vip, interface: Interface, term: u64, reconcile: bool) {
        let known = self.claims.contains_key(&vip);
        match self
            .addresses
            .hold(vip, &interface, self.timing.lifetime)
            .await
        {
            Ok(added) => {
                self.last_errors.remove(&vip);
                if !known {
                    tracing::info!(%vip, interface = %interface.name, term, reason = "leader with a valid lease", "claimed VIP");
                    self.metrics.claims.fetch_add(1, Ordering::Relaxed);
                    self.claims.insert(
                        vip,
                        Claim {
                            interface,
                            announced: 0,
                            next_announce: Instant::now(),
                        },
                    );
                    self.publish();
                } else if added && reconcile {
                    tracing::warn!(%vip, term, reason = "the address was removed from under us", "re-added VIP");
                    if let Some(c) = self.claims.get_mut(&vip) {
                        c.announced = 0;
                        c.next_announce = Instant::now();
                    }
                }
            }
            Err(e) => self.error(vip, &e.to_string()),
        }
    }

    async fn announce_due(&mut self) {
        let now = Instant::now();
        let due: Vec<(Vip, Interface)> = self
            .claims
            .iter()
            .filter(|(_, c)| c.next_announce <= now)
            .map(|(v, c)| (*v, c.interface.clone()))
            .collect();
        for (vip, interface) in due {
            let sent =
                tokio::task::spawn_blocking(move || keel_vip::announce(vip, &interface)).await;
            match sent {
                Ok(Ok(())) => {
                    self.metrics.announcements.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Err(e)) => self.error(vip, &e.to_string()),
                Err(e) => self.error(vip, &e.to_string()),
            }
            if let Some(c) = self.claims.get_mut(&vip) {
                c.announced += 1;
                let gap = if c.announced < self.timing.repeats {
                    self.timing.repeat_every
                } else {
                    self.timing.reannounce
                };
                c.next_announce = Instant::now() + gap;
            }
        }
    }

    async fn release(&mut self, vip: Vip, reason: &str, term: u64) {
        self.claims.remove(&vip);
        match self.addresses.release(vip).await {
            Ok(_) => {
                tracing::info!(%vip, term, reason, "released VIP");
                self.metrics.releases.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => self.error(vip, &e.to_string()),
        }
        self.publish();
    }

    async fn remove_stray(&mut self, vip: Vip, reason: &str, term: u64) {
        match self.addresses.holds(vip).await {
            Ok(true) => {
                if let Err(e) = self.addresses.release(vip).await {
                    self.error(vip, &e.to_string());
                } else {
                    tracing::warn!(%vip, term, reason, "removed a stray VIP from this non-owner");
                    self.metrics.releases.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(false) => {}
            Err(e) => self.error(vip, &e.to_string()),
        }
    }

    async fn release_all(&mut self, reason: &str, term: u64) {
        for vip in self.claims.keys().copied().collect::<Vec<_>>() {
            self.release(vip, reason, term).await;
        }
    }

    /// Hands leadership on without waiting here; this node stands for
    /// election again once someone else leads (or the attempt times out).
    /// One step-down at a time; while the reason lasts and this node is
    /// elected again, again, one second later, then two, four… up to 30.
    fn step_down(&mut self, reason: &str, term: u64) {
        let Some(attempt) = self.stepping.begin() else {
            return;
        };
        tracing::warn!(term, reason, attempt, "stepping down as leader");
        let consensus = self.consensus.clone();
        let running = self.stepping.running.clone();
        let mut healthy = self.healthy.clone();
        tokio::spawn(async move {
            consensus.step_down(Duration::from_secs(3)).await;
            // Still unable to serve, it sits out the next election too, so a
            // node that can serve wins it; for at most `SIT_OUT`, so that a
            // cluster where no node can serve still elects a leader (to take
            // the config that mends it).
            let _ = tokio::time::timeout(SIT_OUT, healthy.wait_for(|h| *h)).await;
            consensus.stand_again();
            running.store(false, Ordering::SeqCst);
        });
    }

    fn publish(&self) {
        let held: BTreeSet<String> = self.claims.keys().map(|v| v.to_string()).collect();
        self.metrics
            .held
            .store(held.len() as u64, Ordering::Relaxed);
        self.held.send_replace(held);
    }

    fn error(&mut self, vip: Vip, message: &str) {
        self.metrics.errors.fetch_add(1, Ordering::Relaxed);
        if self.last_errors.get(&vip).map(String::as_str) != Some(message) {
            tracing::warn!(%vip, error = message, "VIP operation failed");
            self.last_errors.insert(vip, message.to_owned());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn step_downs_take_turns_and_back_off_while_the_reason_lasts() {
        let mut s = StepDowns::default();
        assert_eq!(s.begin(), Some(1));
        assert_eq!(s.begin(), None, "one at a time");
        s.running.store(false, Ordering::SeqCst);
        assert_eq!(s.begin(), None, "not before the backoff");
        tokio::time::advance(Duration::from_millis(1001)).await;
        assert_eq!(s.begin(), Some(2));
        s.running.store(false, Ordering::SeqCst);
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert_eq!(s.begin(), None, "two seconds after the second");
        tokio::time::advance(Duration::from_millis(600)).await;
        assert_eq!(s.begin(), Some(3));
        s.running.store(false, Ordering::SeqCst);
        s.reason_cleared();
        assert_eq!(s.begin(), Some(1), "a new episode starts over");
    }
}
