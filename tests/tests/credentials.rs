//! Credentials under attack, against a real `keel` process: password
//! guessing cannot be turned into a memory or CPU weapon.

#![allow(clippy::unwrap_used)] // a failed unwrap is how a test fails

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_tests::backend::HttpBackend;
use keel_tests::client::{client, get};
use keel_tests::node::{rss_of, KeelProcess};
use keel_tests::{free_port, http_lb, members};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

/// One login from `source`: the status code (0 when the call failed).
async fn login_from(source: IpAddr, admin: SocketAddr, user: String, password: &str) -> u16 {
    let call = async {
        let s = TcpSocket::new_v4().ok()?;
        s.bind(SocketAddr::new(source, 0)).ok()?;
        let mut s = s.connect(admin).await.ok()?;
        let body = format!("{{\"user\": \"{user}\", \"password\": \"{password}\"}}");
        let head = format!(
            "POST /api/v1/login HTTP/1.1\r\nHost: keel\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(head.as_bytes()).await.ok()?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.ok()?;
        String::from_utf8_lossy(&out).get(9..12)?.parse().ok()
    };
    tokio::time::timeout(Duration::from_secs(30), call)
        .await
        .ok()
        .flatten()
        .unwrap_or(0)
}

/// A metric's value from the node's `/metrics`.
fn metric(node: &KeelProcess, line_start: &str) -> u64 {
    let (_, text) = node.admin_get("/metrics").unwrap();
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {line_start} in:\n{text}"))
}

/// Requests through the data plane one after another until `stop`; their
/// latencies.
async fn probe(url: String, stop: Arc<AtomicBool>) -> Vec<Duration> {
    let c = client();
    let mut took = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let start = Instant::now();
        let (status, _) = get(&c, &url).await.unwrap();
        assert_eq!(status, 200);
        took.push(start.elapsed());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    took.sort();
    took
}

fn p90(sorted: &[Duration]) -> Duration {
    sorted[sorted.len() * 9 / 10]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_of_wrong_logins_costs_bounded_memory_and_leaves_traffic_alone() {
    let backend = HttpBackend::start("a").await;
    let port = free_port();
    let node = KeelProcess::start_with(
        &http_lb(port, &format!("members: {}", members(&[backend.addr]))),
        &["--max-password-checks", "2"],
    );
    let url = format!("http://127.0.0.1:{port}/");
    node.login(); // one hash done: the allocator has seen one
    let pid = node.child.id();
    let baseline_kib = rss_of(pid);

    // Memory is sampled all along.
    let peak_kib = Arc::new(AtomicU64::new(baseline_kib));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (peak, on) = (peak_kib.clone(), sampling.clone());
        std::thread::spawn(move || {
            while on.load(Ordering::Relaxed) {
                peak.fetch_max(rss_of(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };

    // The data plane's latency, quiet.
    let stop = Arc::new(AtomicBool::new(false));
    let quiet = tokio::spawn(probe(url.clone(), stop.clone()));
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let quiet = quiet.await.unwrap();

    // 500 wrong logins at once from one address: five are checked, the
    // rest refused before any hashing.
    let stop = Arc::new(AtomicBool::new(false));
    let busy = tokio::spawn(probe(url.clone(), stop.clone()));
    let attacker: IpAddr = "127.0.0.2".parse().unwrap();
    let attempts: Vec<_> = (0..500)
        .map(|_| tokio::spawn(login_from(attacker, node.admin, "admin".into(), "guess")))
        .collect();
    let mut statuses = Vec::new();
    for a in attempts {
        statuses.push(a.await.unwrap());
    }
    let count = |code| statuses.iter().filter(|&&s| s == code).count();
    assert_eq!(count(401) + count(429), 500, "{statuses:?}");
    assert!(
        count(401) <= 5,
        "{} wrong passwords were checked",
        count(401)
    );

    // 200 at once from 200 addresses and names: each passes the limiter,
    // but at most two hashes run at a time and the rest are turned away.
    let busy_metric = "keel_password_checks_total{outcome=\"busy\"}";
    let busy_before = metric(&node, busy_metric);
    let attempts: Vec<_> = (0..200u8)
        .map(|i| {
            let source = IpAddr::from([127, 0, 1, i]);
            tokio::spawn(login_from(source, node.admin, format!("u{i}"), "guess"))
        })
        .collect();
    let mut statuses = Vec::new();
    for a in attempts {
        statuses.push(a.await.unwrap());
    }
    let count = |code| statuses.iter().filter(|&&s| s == code).count();
    assert_eq!(count(401) + count(429), 200, "{statuses:?}");
    assert!(count(429) > 0, "no attempt was turned away: {statuses:?}");
    stop.store(true, Ordering::Relaxed);
    let busy = busy.await.unwrap();
    sampling.store(false, Ordering::Relaxed);
    sampler.join().unwrap();

    let peak_hashes = metric(&node, "keel_password_hashes_in_flight_peak ");
    assert!(
        (1..=2).contains(&peak_hashes),
        "{peak_hashes} hashes at once"
    );
    assert_eq!(
        (metric(&node, busy_metric) - busy_before) as usize,
        count(429)
    );
    let grew_mib = peak_kib
        .load(Ordering::Relaxed)
        .saturating_sub(baseline_kib)
        / 1024;
    assert!(grew_mib <= 64, "RSS grew by {grew_mib} MiB");
    let (quiet_p90, busy_p90) = (p90(&quiet), p90(&busy));
    eprintln!(
        "RSS +{grew_mib} MiB; data plane p90 {quiet_p90:?} quiet, {busy_p90:?} under the burst"
    );
    assert!(
        busy_p90 < quiet_p90 + Duration::from_millis(50),
        "data plane p90 went from {quiet_p90:?} to {busy_p90:?}"
    );

    // The right password still works from another address.
    node.login();
}
