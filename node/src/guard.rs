//! The VIP guard: a small helper process that removes this node's VIPs when
//! the node stops renewing them. A paused (SIGSTOP) or wedged `keel run`
//! cannot remove its own addresses, and the kernel's address lifetime acts
//! only after 1–2 s, longer than the lease.
//!
//! `keel run` starts `keel vip-guard` (the same executable) as a child and
//! writes a line on its stdin whenever its lease is renewed or the set of
//! VIPs it holds changes: `@<ms> <vip> <vip>…`, hold these until `ms` on
//! the system's monotonic clock (`CLOCK_MONOTONIC`, shared by both
//! processes, so a line written late, after a pause, still names the right
//! instant). The deadline is the lease's `hard_until`: its end plus
//! `keel_consensus::GUARD_MARGIN` (20 ms) for the guard's own lateness. A
//! busy but healthy node renews long before it, and no other node can lead
//! before the longest election timeout after the acknowledged heartbeat,
//! later still, so a paused node's VIPs are gone before another node claims
//! them. When the deadline passes without a newer line, the guard removes
//! the VIPs; when stdin closes (keel exited or was killed), it removes them
//! and exits. A guard that dies is started again (at most once a second)
//! and told at once what it guards.

use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::Duration;

use keel_consensus::Lease;
use keel_vip::{Addresses, Netlink, Vip};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::watch;
use tokio::time::Instant;

/// How long a write to the guard may wait. Lines are far shorter than
/// PIPE_BUF, so a write is all or nothing; a guard that is not reading is
/// skipped rather than allowed to stall the node.
const WRITE_TIMEOUT: Duration = Duration::from_millis(20);

/// The node's end: the child process and the pipe to it.
pub struct Guard {
    child: Child,
    feed: ChildStdin,
    last_empty: bool,
    /// When the guard was last started (a new one waits a second after).
    started: Instant,
}

impl Guard {
    /// Starts `keel vip-guard`.
    pub fn spawn() -> std::io::Result<Self> {
        let exe = std::env::current_exe()?;
        let mut child = Command::new(exe)
            .arg("vip-guard")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            // Outlive the node on purpose: a crashed node's guard removes
            // its VIPs when the pipe closes.
            .kill_on_drop(false)
            .spawn()?;
        let feed = child
            .stdin
            .take()
            .ok_or_else(|| std::io::Error::other("no stdin for the VIP guard"))?;
        Ok(Guard {
            child,
            feed,
            last_empty: false,
            started: Instant::now(),
        })
    }

    /// Starts a new guard if this one has died; false while there is none.
    fn alive(&mut self) -> bool {
        if self.child.try_wait().ok().flatten().is_none() {
            return true;
        }
        if self.started.elapsed() < Duration::from_secs(1) {
            return false;
        }
        match Guard::spawn() {
            Ok(new) => {
                tracing::warn!("the VIP guard died; started a new one");
                *self = new;
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "the VIP guard died and cannot be started again; retrying");
                self.started = Instant::now();
                false
            }
        }
    }

    /// Tells the guard to let `vips` (`addr/len`) live until `deadline`.
    async fn hold(&mut self, vips: &BTreeSet<String>, deadline: Option<Instant>) {
        if !self.alive() || (vips.is_empty() && self.last_empty) {
            return;
        }
        let remaining = deadline.map_or(Duration::ZERO, |d| {
            d.saturating_duration_since(Instant::now())
        });
        // Read right after `Instant::now()`: the two clocks are one.
        let Some(now) = monotonic() else { return };
        let mut line = format!("@{}", (now + remaining).as_millis());
        for v in vips {
            line.push(' ');
            line.push_str(v);
        }
        line.push('\n');
        match tokio::time::timeout(WRITE_TIMEOUT, self.feed.write_all(line.as_bytes())).await {
            Ok(Ok(())) => self.last_empty = vips.is_empty(),
            Ok(Err(e)) => {
                // It died since `alive` looked: the next renewal starts a
                // new one (`try_wait` reaps it by then).
                tracing::debug!(error = %e, "the VIP guard's pipe is closed");
            }
            Err(_) => tracing::debug!("the VIP guard is not reading; skipped a renewal"),
        }
    }
}

/// Keeps the guard told until `stop`: on every lease renewal and every
/// change of the VIPs held, "hold these until the lease's hard deadline".
pub async fn feed(
    mut guard: Guard,
    mut lease: watch::Receiver<Lease>,
    mut held: watch::Receiver<BTreeSet<String>>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let vips = held.borrow_and_update().clone();
        let hard_until = lease.borrow_and_update().hard_until;
        guard.hold(&vips, hard_until).await;
        // Renewals come every heartbeat while VIPs are held; the tick
        // notices a dead guard when they do not.
        tokio::select! {
            r = stop.changed() => if r.is_err() || *stop.borrow() { return },
            r = lease.changed() => if r.is_err() { return },
            r = held.changed() => if r.is_err() { return },
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// `keel vip-guard`: runs until stdin closes, then removes what it guards
/// and exits.
pub async fn run() -> anyhow::Result<()> {
    // A Ctrl-C or SIGTERM meant for the node reaches its whole process
    // group; the guard waits for the node to close the pipe instead.
    let _int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let _term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let netlink = Netlink::open()?;
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut held: BTreeSet<Vip> = BTreeSet::new();
    let mut deadline: Option<Instant> = None;
    loop {
        let expired = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            line = lines.next_line() => match line {
                Ok(Some(line)) => {
                    if let Some((ms, vips)) = parse(&line) {
                        // VIPs dropped from the set were released by the node.
                        held = vips;
                        let left = monotonic().map_or(Duration::ZERO, |now| {
                            Duration::from_millis(ms).saturating_sub(now)
                        });
                        deadline = (!held.is_empty()).then(|| Instant::now() + left);
                    }
                }
                _ => {
                    release(&netlink, &held, "keel stopped").await;
                    return Ok(());
                }
            },
            _ = expired => {
                release(&netlink, &held, "the lease ran out without a renewal").await;
                held.clear();
                deadline = None;
            }
        }
    }
}

/// The system's monotonic clock (the one `Instant` reads), as a duration
/// since its start; `None` if it cannot be read.
fn monotonic() -> Option<Duration> {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).ok()?;
    Some(Duration::from(t))
}

/// `@<ms> <vip>…`: the deadline on the monotonic clock and the VIPs.
fn parse(line: &str) -> Option<(u64, BTreeSet<Vip>)> {
    let mut words = line.split_whitespace();
    let ms = words.next()?.strip_prefix('@')?.parse().ok()?;
    let vips = words
        .map(|w| {
            let (addr, len) = w.split_once('/')?;
            Some(Vip {
                addr: addr.parse().ok()?,
                prefix_len: len.parse().ok()?,
            })
        })
        .collect::<Option<_>>()?;
    Some((ms, vips))
}

async fn release(netlink: &Netlink, vips: &BTreeSet<Vip>, reason: &str) {
    for vip in vips {
        if let Ok(true) = netlink.release(*vip).await {
            // The node's log may be paused; the guard writes its own line.
            eprintln!("keel vip-guard: removed {vip}: {reason}");
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::parse;

    #[test]
    fn feed_lines_parse() {
        let (ms, vips) = parse("@250 10.0.0.100/24 fd00::100/64").unwrap();
        assert_eq!(ms, 250);
        assert_eq!(vips.len(), 2);
        assert_eq!(parse("@0").unwrap().1.len(), 0);
        assert!(parse("").is_none());
        assert!(
            parse("250 10.0.0.1/24").is_none(),
            "a deadline starts with @"
        );
        assert!(parse("@soon 10.0.0.1/24").is_none());
        assert!(
            parse("@10 10.0.0.1").is_none(),
            "a malformed VIP spoils the line"
        );
    }
}
