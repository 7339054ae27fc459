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

/// Which node namespaces held the VIP, sampled every `every`.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    thread: Option<JoinHandle<()>>,
}

impl Sampler {
    /// `nodes[i]` is the namespace of node `i + 1`.
    pub fn start(nodes: Vec<String>, vip: &str, every: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let (s, out, vip) = (stop.clone(), samples.clone(), vip.to_owned());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let at = Instant::now();
                let holders: Vec<usize> = nodes
                    .iter()
                    .enumerate()
                    .filter(|(_, ns)| holds(ns, &vip))
                    .map(|(i, _)| i + 1)
                    .collect();
                out.lock().expect("samples").push((at, holders));
                std::thread::sleep(every.saturating_sub(at.elapsed()));
            }
        });
        Sampler {
            stop,
            samples,
            thread: Some(thread),
        }
    }

    pub fn samples(&self) -> Vec<Sample> {
        self.samples.lock().expect("samples").clone()
    }

    /// The longest stretch during which two or more nodes held the VIP,
    /// from the first such sample to the first sample after it with at most
    /// one.
    pub fn longest_overlap(&self) -> Duration {
        let mut longest = Duration::ZERO;
        let mut since: Option<Instant> = None;
        for (at, holders) in self.samples() {
            match (holders.len() > 1, since) {
                (true, None) => since = Some(at),
                (false, Some(s)) => {
                    longest = longest.max(at - s);
                    since = None;
                }
                _ => {}
            }
        }
        if let Some(s) = since {
            longest = longest.max(s.elapsed());
        }
        longest
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
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
