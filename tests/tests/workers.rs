//! Connections spread over a node's workers by load: the kernel hands each
//! new connection to one worker's socket by a hash of its addresses, and a
//! worker that then serves more than another passes it on.

#![allow(clippy::unwrap_used)] // a failed unwrap is how a test fails

use std::time::Duration;

use keel_dataplane::{Dataplane, Workers};
use keel_tests::backend::HttpBackend;
use keel_tests::node::KeelProcess;
use keel_tests::{eventually, free_port, http_lb, members, spec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Each worker's open client connections, from `/metrics`.
fn per_worker(dp: &Dataplane) -> Vec<i64> {
    dp.render_metrics()
        .lines()
        .filter_map(|l| l.strip_prefix("keel_worker_connections{worker=\""))
        .map(|l| l.split_whitespace().nth(1).unwrap().parse().unwrap())
        .collect()
}

/// One request on `conn`, which stays open: the answer's body.
async fn ask(conn: &mut TcpStream) -> String {
    conn.write_all(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.ends_with(b"a") {
        let n = conn.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// A connection from 127.0.0.1:`port` (closed with a reset, so the port
/// is free again at once), answered once.
async fn from_port(port: u16, to: u16) -> Option<TcpStream> {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_reuseaddr(true).unwrap();
    socket.bind(([127, 0, 0, 1], port).into()).ok()?;
    let mut conn = socket.connect(([127, 0, 0, 1], to).into()).await.ok()?;
    let reset = nix::libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    nix::sys::socket::setsockopt(&conn, nix::sys::socket::sockopt::Linger, &reset).unwrap();
    assert!(ask(&mut conn).await.starts_with("HTTP/1.1 200"));
    Some(conn)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_the_kernel_gives_one_worker_are_served_by_both() {
    let member = HttpBackend::start("a").await;
    let port = free_port();
    let dp = Dataplane::with_workers(Workers::start(2, false).unwrap());
    let config = http_lb(
        port,
        &format!("members: [ {{ address: \"{}\" }} ]", member.addr),
    );
    dp.apply(&spec(&config)).await.unwrap();
    // Which worker's socket the kernel picks follows from the connection's
    // addresses: a connection alone on the node stays where it landed, so
    // its worker shows which one that is. Find 40 source ports it gives
    // worker 0.
    let mut ports = Vec::new();
    for source in 41000..44000 {
        if ports.len() == 40 {
            break;
        }
        let Some(conn) = from_port(source, port).await else {
            continue;
        };
        if per_worker(&dp) == [1, 0] {
            ports.push(source);
        }
        drop(conn);
        eventually(Duration::from_secs(5), "the probe closed", || async {
            per_worker(&dp) == [0, 0]
        })
        .await;
    }
    assert_eq!(ports.len(), 40, "too few source ports land on worker 0");
    // All of them at once: the kernel queues each on worker 0's socket,
    // and worker 0 hands every one it would serve beyond one more than
    // worker 1 over to worker 1.
    let mut open = Vec::new();
    for &source in &ports {
        open.push(from_port(source, port).await.unwrap());
    }
    let counts = per_worker(&dp);
    assert!(
        counts == [20, 20] || counts == [21, 19],
        "uneven: {counts:?}"
    );
    // Every connection, wherever it went, keeps being served.
    for conn in &mut open {
        assert!(ask(conn).await.starts_with("HTTP/1.1 200"));
    }
    drop(open);
    eventually(
        Duration::from_secs(5),
        "the workers count their connections closed",
        || async { per_worker(&dp) == [0, 0] },
    )
    .await;
}

/// The CPUs in a `/proc` status file's `Cpus_allowed_list` ("0-3,6").
fn allowed(status: &str) -> Vec<usize> {
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap()
        .trim();
    list.split(',')
        .flat_map(|part| {
            let (from, to) = part.split_once('-').unwrap_or((part, part));
            from.parse::<usize>().unwrap()..=to.parse::<usize>().unwrap()
        })
        .collect()
}

/// Each thread of `pid` by name, with the CPUs it may run on.
fn threads(pid: nix::unistd::Pid) -> Vec<(String, Vec<usize>)> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|task| {
            let path = task.unwrap().path();
            let name = std::fs::read_to_string(path.join("comm")).unwrap();
            let status = std::fs::read_to_string(path.join("status")).unwrap();
            (name.trim().to_owned(), allowed(&status))
        })
        .collect()
}

/// `keel run` with a worker per CPU pins each worker to a CPU of its own,
/// in turn; with `--cpu-affinity=false`, or fewer workers than CPUs, the
/// kernel places them. The control plane is never pinned.
#[tokio::test]
async fn a_worker_per_cpu_is_pinned_unless_told_otherwise() {
    let cpus = allowed(&std::fs::read_to_string("/proc/self/status").unwrap());
    let member = HttpBackend::start("a").await;
    let config = http_lb(
        free_port(),
        &format!("members: {}", members(&[member.addr])),
    );
    let per_cpu = cpus.len().to_string();
    let cases: &[(&[&str], bool)] = &[
        (&["--workers", &per_cpu], true),
        (&["--workers", &per_cpu, "--cpu-affinity=false"], false),
        (&["--workers", "1"], cpus.len() == 1),
        (&["--workers", "1", "--cpu-affinity"], true),
    ];
    for (args, pinned) in cases {
        let node = KeelProcess::start_with(&config, args);
        let threads = threads(node.pid());
        let workers: Vec<_> = threads
            .iter()
            .filter(|(name, _)| name.starts_with("keel-worker-"))
            .collect();
        assert!(!workers.is_empty(), "{args:?}: {threads:?}");
        for (name, on) in &workers {
            let i: usize = name["keel-worker-".len()..].parse().unwrap();
            let expected = if *pinned { vec![cpus[i]] } else { cpus.clone() };
            assert_eq!(on, &expected, "{args:?}: {name}");
        }
        let control: Vec<_> = threads
            .iter()
            .filter(|(name, _)| name.starts_with("keel-control"))
            .collect();
        assert!(!control.is_empty(), "{args:?}: {threads:?}");
        assert!(
            control.iter().all(|(_, on)| on == &cpus),
            "{args:?}: {control:?}"
        );
    }
}
