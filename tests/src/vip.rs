//! Watching a VIP from the outside: a client that polls it, a sampler of
//! which node namespaces hold it, and the arithmetic of failover gaps.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Runs a command inside namespace `ns`; its stdout (panics if it fails).
pub fn ns_run(ns: &str, args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .output()
        .expect("run ip netns exec");
    assert!(
        out.status.success(),
        "{ns}: {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// True when namespace `ns` has `vip` (an address without prefix) on an
/// interface.
pub fn holds(ns: &str, vip: &str) -> bool {
    let out = Command::new("ip")
        .args(["-n", ns, "-o", "addr", "show"])
        .output()
        .expect("run ip addr");
    let needle = format!(" {vip}/");
    String::from_utf8_lossy(&out.stdout).contains(&needle)
}

/// One request of the poller: when it started, and whether it succeeded.
#[derive(Debug, Clone, Copy)]
pub struct Attempt {
    pub at: Instant,
    pub ok: bool,
    /// How long it took to succeed or fail.
    pub took: Duration,
}

/// A client in its own namespace that starts a fresh-connection `GET /` to
/// a target every `every`, each with `timeout`, without waiting for the
/// previous one.
pub struct Poller {
    stop: Arc<AtomicBool>,
    attempts: Arc<Mutex<Vec<Attempt>>>,
    thread: Option<JoinHandle<()>>,
}

impl Poller {
    pub fn start(ns: &str, target: SocketAddr, every: Duration, timeout: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let attempts = Arc::new(Mutex::new(Vec::new()));
        let ns = ns.to_owned();
        let (s, a) = (stop.clone(), attempts.clone());
        let thread = std::thread::spawn(move || {
            crate::netns::enter(&ns).expect("enter the client namespace");
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                let mut inflight = tokio::task::JoinSet::new();
                while !s.load(Ordering::Relaxed) {
                    tick.tick().await;
                    let a = a.clone();
                    inflight.spawn(async move {
                        let at = Instant::now();
                        let ok = tokio::time::timeout(timeout, get(target))
                            .await
                            .is_ok_and(|ok| ok);
                        a.lock().expect("attempts").push(Attempt {
                            at,
                            ok,
                            took: at.elapsed(),
                        });
                    });
                    while inflight.try_join_next().is_some() {}
                }
                while inflight.join_next().await.is_some() {}
            });
        });
        Poller {
            stop,
            attempts,
            thread: Some(thread),
        }
    }

    /// Every attempt that finished, in start order.
    pub fn attempts(&self) -> Vec<Attempt> {
        let mut v = self.attempts.lock().expect("attempts").clone();
        v.sort_by_key(|a| a.at);
        v
    }

    /// Waits until an attempt that started after `since` succeeded.
    pub fn wait_success_after(&self, since: Instant, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.attempts().iter().any(|a| a.at > since && a.ok) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    pub fn stop(mut self) -> Vec<Attempt> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.attempts()
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn get(target: SocketAddr) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(target).await else {
        return false;
    };
    if s.write_all(b"GET / HTTP/1.0\r\nHost: vip\r\n\r\n")
        .await
        .is_err()
    {
        return false;
    }
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.is_ok() && out.get(8..13) == Some(b" 200 ".as_slice())
}

/// The outage seen by a poller after `fault`: from the start of the first
/// failed attempt to the start of the first successful one after it. Zero
/// when nothing failed; `None` when it never recovered.
pub fn gap(attempts: &[Attempt], fault: Instant) -> Option<Duration> {
    let after: Vec<&Attempt> = attempts.iter().filter(|a| a.at >= fault).collect();
    let Some(first_fail) = after.iter().position(|a| !a.ok) else {
        return Some(Duration::ZERO);
    };
    let failed_at = after[first_fail].at;
    after[first_fail..]
        .iter()
        .find(|a| a.ok)
        .map(|a| a.at - failed_at)
}

/// When a sample was taken, and which nodes (1-based) held the VIP.
pub type Sample = (Instant, Vec<usize>);

/// True when the calling thread's namespace has `vip` on an interface
/// (`getifaddrs`, a netlink dump: no process to start).
fn here(vip: std::net::IpAddr) -> bool {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return false;
    };
    addrs.filter_map(|a| a.address).any(|a| {
        a.as_sockaddr_in().map(|s| std::net::IpAddr::V4(s.ip())) == Some(vip)
            || a.as_sockaddr_in6().map(|s| std::net::IpAddr::V6(s.ip())) == Some(vip)
    })
}

/// One tick of the sampler: when it was due, and per node when it was
/// taken and whether that node held the VIP.
type Tick = (Instant, Vec<Option<(Instant, bool)>>);

/// Which node namespaces held the VIP, sampled every `every`: one thread
/// per namespace (entered once, so a sample is a netlink dump, not a
/// process), all on one schedule, each sample recording how late it was.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    ticks: Arc<Mutex<Vec<Tick>>>,
    threads: Vec<JoinHandle<()>>,
}

impl Sampler {
    /// `nodes[i]` is the namespace of node `i + 1`.
    pub fn start(nodes: Vec<String>, vip: &str, every: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ticks: Arc<Mutex<Vec<Tick>>> = Arc::default();
        let vip: std::net::IpAddr = vip.parse().expect("a VIP address");
        let first = Instant::now() + Duration::from_millis(20);
        let count = nodes.len();
        let threads = nodes
            .into_iter()
            .enumerate()
            .map(|(i, ns)| {
                let (stop, ticks) = (stop.clone(), ticks.clone());
                std::thread::spawn(move || {
                    crate::netns::enter(&ns).expect("enter a node namespace");
                    let mut k: u32 = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let due = first + every * k;
                        std::thread::sleep(due.saturating_duration_since(Instant::now()));
                        let taken = Instant::now();
                        let held = here(vip);
                        let mut ticks = ticks.lock().expect("ticks");
                        let n = k as usize;
                        while ticks.len() <= n {
                            let at = first + every * ticks.len() as u32;
                            ticks.push((at, vec![None; count]));
                        }
                        ticks[n].1[i] = Some((taken, held));
                        drop(ticks);
                        // A sample taken late skips the ticks it missed.
                        k = k.max(((taken - first).as_nanos() / every.as_nanos()) as u32) + 1;
                    }
                })
            })
            .collect();
        Sampler {
            stop,
            ticks,
            threads,
        }
    }

    /// The ticks every namespace sampled: when each was due and who held
    /// the VIP.
    pub fn samples(&self) -> Vec<Sample> {
        let ticks = self.ticks.lock().expect("ticks");
        ticks
            .iter()
            .filter(|(_, per)| per.iter().all(Option::is_some))
            .map(|(at, per)| {
                let holders = per
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| s.is_some_and(|(_, held)| held))
                    .map(|(i, _)| i + 1)
                    .collect();
                (*at, holders)
            })
            .collect()
    }

    /// How late the latest sample came after the tick it was due at, over
    /// every sample so far; and how many ticks were missed by some node.
    pub fn lateness(&self) -> (Duration, usize) {
        let ticks = self.ticks.lock().expect("ticks");
        let mut late = Duration::ZERO;
        let mut missed = 0;
        for (at, per) in ticks.iter() {
            if per.iter().any(Option::is_none) {
                missed += 1;
            }
            for (taken, _) in per.iter().flatten() {
                late = late.max(taken.saturating_duration_since(*at));
            }
        }
        (late, missed)
    }

    /// How many ticks have begun: a mark for [`Sampler::overlap_since`].
    pub fn ticks(&self) -> usize {
        self.ticks.lock().expect("ticks").len()
    }

    /// The longest time two nodes held the VIP at once over every sample
    /// so far: [`Sampler::overlap_since`] the first.
    pub fn longest_overlap(&self) -> Duration {
        self.overlap_since(0)
    }

    /// The longest time two nodes held the VIP at once, from the ticks
    /// since `from`. Each node's holding is judged on its own sample times
    /// (a node held from its first sample that saw the VIP to its first
    /// sample that did not), so a sample taken late on one node cannot
    /// pair with another node's sample of a different moment: an upper
    /// bound, coarse by one sampling interval.
    pub fn overlap_since(&self, from: usize) -> Duration {
        let ticks = self.ticks.lock().expect("ticks");
        let nodes = ticks.first().map_or(0, |(_, per)| per.len());
        // Per node, the intervals it held: [first seen, first not seen).
        let held: Vec<Vec<(Instant, Instant)>> = (0..nodes)
            .map(|i| {
                let mut runs = Vec::new();
                let mut since: Option<Instant> = None;
                for (taken, holds) in ticks[from.min(ticks.len())..]
                    .iter()
                    .filter_map(|(_, per)| per[i])
                {
                    match (holds, since) {
                        (true, None) => since = Some(taken),
                        (false, Some(s)) => {
                            runs.push((s, taken));
                            since = None;
                        }
                        _ => {}
                    }
                }
                if let Some(s) = since {
                    runs.push((s, Instant::now()));
                }
                runs
            })
            .collect();
        let mut longest = Duration::ZERO;
        for a in 0..nodes {
            for b in a + 1..nodes {
                for (sa, ea) in &held[a] {
                    for (sb, eb) in &held[b] {
                        let (start, end) = ((*sa).max(*sb), (*ea).min(*eb));
                        longest = longest.max(end.saturating_duration_since(start));
                    }
                }
            }
        }
        longest
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Median and maximum of some durations.
pub fn median_max(values: &[Duration]) -> (Duration, Duration) {
    let mut v = values.to_vec();
    v.sort();
    let median = v.get(v.len() / 2).copied().unwrap_or_default();
    (median, v.last().copied().unwrap_or_default())
}
