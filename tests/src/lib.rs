//! The end-to-end harness: backends with controllable behaviour, an HTTP
//! client, deadline-bound waiting, and `keel` processes.
#![allow(clippy::unwrap_used)]

pub mod aws;
pub mod backend;
pub mod browser;
pub mod client;
pub mod cluster;
pub mod delay;
pub mod fuzz;
pub mod linearizable;
pub mod netns;
pub mod node;
pub mod tls;
pub mod vip;
pub mod vm;

use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use keel_model::{Document, Spec};

/// A data plane as the tests drive it: serving on worker threads of its
/// own, as `keel run` serves, one unless `KEEL_TEST_WORKERS` says more
/// (`tests/run` runs these tests on one worker, then on two).
pub fn dataplane() -> keel_dataplane::Dataplane {
    use keel_dataplane::{Dataplane, Workers};
    Dataplane::with_workers(Workers::start(test_workers(), false).unwrap())
}

/// The worker threads [`dataplane`] serves on: what a test of something
/// kept per worker (round robin, outstanding requests, idle member
/// connections) allows for.
pub fn test_workers() -> usize {
    match std::env::var("KEEL_TEST_WORKERS") {
        Ok(n) if !n.is_empty() => n.parse().expect("KEEL_TEST_WORKERS: a number"),
        _ => 1,
    }
}

/// A loopback port free at the time of asking.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

/// `N` loopback ports free at the time of asking, all different: each is
/// held until all are chosen (asked one at a time, the kernel may give
/// the same port twice).
pub fn free_ports<const N: usize>() -> [u16; N] {
    let held: Vec<TcpListener> = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("no free loopback port"))
        .collect();
    std::array::from_fn(|i| held[i].local_addr().expect("a bound socket").port())
}

/// Parses a YAML config, panicking with every problem if it is invalid.
pub fn spec(yaml: &str) -> Spec {
    Document::parse_spec(yaml).unwrap_or_else(|e| panic!("test config invalid: {e}\n{yaml}"))
}

/// A config with load balancer `web`: one HTTP listener on 127.0.0.1:`port`
/// sending to pool `app`, whose other fields are `pool_fields` in YAML flow
/// form (`algorithm: random_two, members: [ ... ]`).
pub fn http_lb(port: u16, pool_fields: &str) -> String {
    format!(
        "load_balancers:\n  - {{ name: web, listeners: [ {{ port: {port}, protocol: http, bind: 127.0.0.1, default_pool: app }} ] }}\n\
         pools:\n  - {{ name: app, {pool_fields} }}\n"
    )
}

/// Members list in the YAML flow form, from backend addresses.
pub fn members(addrs: &[SocketAddr]) -> String {
    let items: Vec<String> = addrs
        .iter()
        .map(|a| format!("{{ address: \"{a}\" }}"))
        .collect();
    format!("[ {} ]", items.join(", "))
}

/// Polls `check` until it returns true, failing the test after `timeout`.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Lifts this process's open-file limit to its hard limit (tests that
/// open thousands of connections); the limit now in force.
pub fn raise_fd_limit() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(_) => soft,
        },
        Err(_) => 1024,
    }
}

/// This process's open file descriptors (a data plane started in-process
/// holds its sockets here).
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

/// A line of a PEM key's body that only that key has (every P-256 key's
/// first line starts alike).
pub fn key_needle(pem: &str) -> String {
    pem.lines()
        .filter(|l| !l.starts_with("-----"))
        .nth(1)
        .expect("a PEM key of more than one line")
        .to_owned()
}

/// Files under `dir` that hold `needle`: as written, or inside base64 text
/// (a snapshot keeps the state as base64).
pub fn files_holding(dir: &std::path::Path, needle: &str) -> Vec<std::path::PathBuf> {
    use base64::Engine;
    let mut found = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(at) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&at) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                todo.push(path);
                continue;
            }
            let bytes = std::fs::read(&path).unwrap_or_default();
            let plain = bytes.windows(needle.len()).any(|w| w == needle.as_bytes());
            let b64 = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=');
            let encoded = bytes
                .split(|b| !b64(b))
                .filter(|run| run.len() >= 64)
                .filter_map(|run| base64::engine::general_purpose::STANDARD.decode(run).ok())
                .any(|text| text.windows(needle.len()).any(|w| w == needle.as_bytes()));
            if plain || encoded {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}
