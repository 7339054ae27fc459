//! Packet delay with jitter between namespaces, for kernels without
//! `sch_netem`: an iptables NFQUEUE rule sends every packet a namespace
//! puts on `eth0` to a thread of this process, which lets each one go after
//! `delay ± jitter` (uniformly drawn, like netem's default distribution).
//! The thread runs inside the namespace; dropping the [`Delayer`] removes
//! the rule first, then stops the thread (fail-open on the queue, so no
//! packet is lost on the way out).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// One namespace's egress on `eth0`, delayed.
pub struct Delayer {
    ns: String,
    queue: u16,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<u64>>,
}

fn iptables(ns: &str, v6: bool, op: &str, queue: u16) -> std::io::Result<std::process::Output> {
    let tool = if v6 {
        "ip6tables-legacy"
    } else {
        "iptables-legacy"
    };
    Command::new("ip")
        .args(["netns", "exec", ns, tool, "-w", op, "OUTPUT", "-o", "eth0"])
        .args(["-j", "NFQUEUE", "--queue-num", &queue.to_string()])
        .args(["--queue-bypass"])
        .output()
}

impl Delayer {
    /// Delays what `ns` sends on `eth0` by `delay ± jitter`; `Err` with the
    /// reason when this host cannot (no NFQUEUE, no iptables).
    pub fn start(ns: &str, queue: u16, delay: Duration, jitter: Duration) -> Result<Self, String> {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let namespace = ns.to_owned();
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let bound = (|| -> std::io::Result<nfq::Queue> {
                crate::netns::enter(&namespace)?;
                let mut q = nfq::Queue::open()?;
                q.bind(queue)?;
                q.set_fail_open(queue, true)?;
                q.set_copy_range(queue, 0)?;
                q.set_nonblocking(true);
                Ok(q)
            })();
            let mut q = match bound {
                Ok(q) => {
                    let _ = ready_tx.send(Ok(()));
                    q
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                    return 0;
                }
            };
            pump(&mut q, &flag, delay, jitter)
        });
        ready_rx
            .recv()
            .map_err(|e| e.to_string())
            .and_then(|r| r)
            .map_err(|e| format!("NFQUEUE {queue} in {ns}: {e}"))?;
        let d = Delayer {
            ns: ns.to_owned(),
            queue,
            stop,
            thread: Some(thread),
        };
        for v6 in [false, true] {
            let out = iptables(ns, v6, "-A", queue).map_err(|e| format!("iptables: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "iptables NFQUEUE rule: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
        }
        Ok(d)
    }

    /// Stops delaying; how many packets went through the queue.
    pub fn stop(mut self) -> u64 {
        self.shutdown()
    }

    fn shutdown(&mut self) -> u64 {
        for v6 in [false, true] {
            let _ = iptables(&self.ns, v6, "-D", self.queue);
        }
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .map_or(0, |t| t.join().unwrap_or_default())
    }
}

impl Drop for Delayer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Receives queued packets and lets each go at its due time; returns the
/// number handled. On stop, lets everything still held go at once.
fn pump(q: &mut nfq::Queue, stop: &AtomicBool, delay: Duration, jitter: Duration) -> u64 {
    let mut held: BinaryHeap<Reverse<(Instant, u64)>> = BinaryHeap::new();
    let mut messages: std::collections::HashMap<u64, nfq::Message> = Default::default();
    let mut seq = 0u64;
    let mut handled = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let mut idle = true;
        while let Ok(msg) = q.recv() {
            idle = false;
            let spread = jitter.as_micros() as i64;
            let offset = if spread > 0 {
                fastrand::i64(-spread..=spread)
            } else {
                0
            };
            let wait = (delay.as_micros() as i64 + offset).max(0) as u64;
            held.push(Reverse((Instant::now() + Duration::from_micros(wait), seq)));
            messages.insert(seq, msg);
            seq += 1;
        }
        let now = Instant::now();
        while held.peek().is_some_and(|Reverse((due, _))| *due <= now) {
            let Some(Reverse((_, id))) = held.pop() else {
                break;
            };
            if let Some(mut msg) = messages.remove(&id) {
                msg.set_verdict(nfq::Verdict::Accept);
                let _ = q.verdict(msg);
                handled += 1;
            }
            idle = false;
        }
        if idle {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    for (_, mut msg) in messages.drain() {
        msg.set_verdict(nfq::Verdict::Accept);
        let _ = q.verdict(msg);
    }
    handled
}
