//! The `keel` binary driven the way an operator drives it.

#![allow(clippy::unwrap_used)] // a failed unwrap is how a test fails

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use keel_tests::backend::HttpBackend;
use keel_tests::node::{keel_bin, raw_get, KeelProcess};
use keel_tests::{free_port, http_lb, members};
use nix::sys::signal::{kill, Signal};

fn config(port: u16, pool_members: &str) -> String {
    http_lb(port, &format!("members: {pool_members}"))
}

const BROKEN: &str = r#"
load_balancers:
  - name: web
    listeners: [ { port: 80, protocol: udp, default_pool: missing } ]
pools:
  - name: app
    colour: blue
    members: [ { address: "nowhere" }, { address: "10.0.0.1:80", weight: 5000 } ]
"#;

fn wait_for(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(30));
    }
    panic!("timed out after {timeout:?} waiting for: {what}");
}

fn body_at(port: u16) -> Option<String> {
    raw_get(format!("127.0.0.1:{port}").parse().unwrap(), "/").map(|(_, b)| b)
}

#[test]
fn check_lists_every_problem_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, BROKEN).unwrap();
    let out = Command::new(keel_bin())
        .arg("check")
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    // A misspelt field hides nothing else; each problem has its line.
    for line in [
        "line 7: pools[0].colour: unknown field `colour`",
        "line 4: load_balancers[0].listeners[0].protocol: unknown protocol \"udp\"",
        "line 8: pools[0].members[0].address: not a socket address",
        "line 8: pools[0].members[1].weight: must be 0-1000",
        "line 4: load_balancers[0].listeners[0].default_pool: no pool named \"missing\"",
    ] {
        assert!(err.contains(line), "missing {line:?} in:\n{err}");
    }
    let good = dir.path().join("good.yaml");
    std::fs::write(&good, config(8080, "[ { address: \"127.0.0.1:9\" } ]")).unwrap();
    let out = Command::new(keel_bin())
        .arg("check")
        .arg(&good)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(keel_bin()).arg("check").output().unwrap();
    assert_eq!(out.status.code(), Some(2), "usage errors exit 2");
}

#[test]
fn a_worker_count_outside_1_to_1024_is_a_usage_error() {
    for bad in ["0", "1025", "many"] {
        let out = Command::new(keel_bin())
            .args(["run", "--workers", bad])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "--workers {bad}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("not a number of workers from 1 to 1024"),
            "{err}"
        );
    }
}

/// Runs `keel run --config FILE`, asserts it exits 1, returns its stderr.
fn run_expecting_exit_1(config: &std::path::Path, dir: &std::path::Path) -> String {
    let out = Command::new(keel_bin())
        .args(["run", "--admin-addr", &format!("127.0.0.1:{}", free_port())])
        .args(["--cluster-addr", &format!("127.0.0.1:{}", free_port())])
        .arg("--config")
        .arg(config)
        .arg("--data-dir")
        .arg(dir.join("d"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn run_refuses_invalid_config_and_busy_port() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, BROKEN).unwrap();
    let err = run_expecting_exit_1(&bad, dir.path());
    assert_eq!(err.matches("5 problems").count(), 1, "listed once:\n{err}");

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap().port();
    let cfg = dir.path().join("busy.yaml");
    std::fs::write(&cfg, config(busy, "[ { address: \"127.0.0.1:9\" } ]")).unwrap();
    let err = run_expecting_exit_1(&cfg, dir.path());
    assert!(
        err.contains(&format!("cannot listen on 127.0.0.1:{busy}")),
        "{err}"
    );
}

#[test]
fn a_node_that_lost_its_identity_file_refuses_to_bootstrap_over_its_log() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("keel.yaml");
    std::fs::write(&cfg, "{}\n").unwrap();
    let admin = format!("127.0.0.1:{}", free_port());
    let mut first = Command::new(keel_bin())
        .args(["run", "--admin-addr", &admin])
        .args(["--cluster-addr", &format!("127.0.0.1:{}", free_port())])
        .arg("--config")
        .arg(&cfg)
        .arg("--data-dir")
        .arg(dir.path().join("d"))
        .env("KEEL_ADMIN_PASSWORD", "a-password-for-this-test")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for(Duration::from_secs(10), "the first start serves", || {
        raw_get(admin.parse().unwrap(), "/readyz").is_some_and(|(s, _)| s == 200)
    });
    first.kill().unwrap();
    first.wait().unwrap();
    // node.json lost (as after a power loss before it reached the disk):
    // a new identity over the old log would fork the cluster.
    std::fs::remove_file(dir.path().join("d/node.json")).unwrap();
    let err = run_expecting_exit_1(&cfg, dir.path());
    assert!(
        err.contains("holds Raft state") && err.contains("node.json"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_change_and_sighup_reload_and_bad_files_keep_serving() {
    let a = HttpBackend::start("a").await;
    let b = HttpBackend::start("b").await;
    let (port, port2) = (free_port(), free_port());
    let keel = KeelProcess::start(&config(port, &members(&[a.addr])));
    let served = |p| body_at(p);
    assert_eq!(served(port).as_deref(), Some("a"));

    // A change of the file is picked up by itself.
    std::fs::write(&keel.config, config(port, &members(&[b.addr]))).unwrap();
    wait_for(Duration::from_secs(5), "file change applied", || {
        served(port).as_deref() == Some("b")
    });

    // An invalid file is reported, every problem named, and b keeps serving.
    std::fs::write(&keel.config, BROKEN).unwrap();
    wait_for(Duration::from_secs(5), "invalid config logged", || {
        keel.log_text()
            .contains("pools[0].members[1].weight: must be 0-1000")
    });
    let log = keel.log_text();
    assert!(
        log.contains("load_balancers[0].listeners[0].protocol"),
        "{log}"
    );
    assert_eq!(served(port).as_deref(), Some("b"));

    // SIGHUP re-reads at once.
    std::fs::write(&keel.config, config(port2, &members(&[a.addr]))).unwrap();
    kill(keel.pid(), Signal::SIGHUP).unwrap();
    wait_for(Duration::from_secs(5), "SIGHUP applied", || {
        served(port2).as_deref() == Some("a")
    });
    wait_for(Duration::from_secs(5), "old port closed", || {
        served(port).is_none()
    });

    let (status, metrics) = keel.admin_get("/metrics").unwrap();
    assert_eq!(status, 200);
    assert!(
        metrics.contains(&format!(
            "keel_member_requests_total{{pool=\"app\",member=\"{}\",class=\"2xx\"}}",
            a.addr
        )),
        "{metrics}"
    );
    assert_eq!(keel.admin_get("/healthz").unwrap().0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_requests_then_exits_0() {
    let a = HttpBackend::start("a").await;
    let port = free_port();
    let mut keel = KeelProcess::start(&config(port, &members(&[a.addr])));
    let slow = std::thread::spawn(move || {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(b"GET /slow/700 HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    });
    std::thread::sleep(Duration::from_millis(200));
    kill(keel.pid(), Signal::SIGTERM).unwrap();
    let status = keel.child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    let out = slow.join().unwrap();
    assert!(
        out.starts_with("HTTP/1.1 200") && out.ends_with('a'),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_megabytes_stream_through_with_bounded_memory() {
    let a = HttpBackend::start("a").await;
    let port = free_port();
    let keel = KeelProcess::start(&config(port, &members(&[a.addr])));
    // Warm up so allocator pools exist before the baseline is taken.
    assert!(body_at(port).is_some());
    let base = keel.rss_kib();
    let size = 10 * 1024 * 1024;
    // Sample the resident size during the transfers (the process's own
    // high-water mark includes start-up work such as password hashing).
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let done = done.clone();
        let pid = keel.child.id();
        std::thread::spawn(move || {
            let mut peak = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(keel_tests::node::rss_of(pid));
                std::thread::sleep(Duration::from_millis(5));
            }
            peak
        })
    };

    // Upload, read slowly by the member.
    let up = std::thread::spawn(move || {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        write!(
            s,
            "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n\r\n"
        )
        .unwrap();
        let chunk = vec![b'u'; 64 * 1024];
        for _ in 0..size / chunk.len() {
            s.write_all(&chunk).unwrap();
        }
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    });
    let out = up.join().unwrap();
    assert!(
        out.ends_with(&size.to_string()),
        "{}",
        &out[..out.len().min(200)]
    );

    // Download, read slowly by the client.
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "GET /download/{size} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut total = 0usize;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = s.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        total += n;
        if total % (1024 * 1024) < n {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    assert!(total > size, "{total}");
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let peak = sampler.join().unwrap();
    let growth = peak.saturating_sub(base);
    eprintln!("keel rss before {base} KiB, peak {peak} KiB, growth {growth} KiB for 2 x 10 MiB");
    assert!(
        growth < 6 * 1024,
        "peak memory grew by {growth} KiB: bodies are being buffered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_node_goes_from_nothing_to_its_config_once() {
    let backend = HttpBackend::start("a").await;
    let port = free_port();
    let node = KeelProcess::start(&config(port, &members(&[backend.addr])));
    // Serving, then settled (the config committed and applied).
    wait_for(Duration::from_secs(5), "serving", || {
        body_at(port).is_some()
    });
    std::thread::sleep(Duration::from_millis(500));
    let log = node.log_text();
    let bound = log
        .lines()
        .filter(|l| l.contains("listening") && l.contains(&format!(":{port}")))
        .count();
    assert_eq!(bound, 1, "the listener was bound more than once:\n{log}");
    assert!(!log.contains("listener removed"), "{log}");
    assert!(!log.contains("member draining"), "{log}");
}
