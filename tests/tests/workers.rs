//! Connections spread over a node's workers by load: the kernel hands each
//! new connection to one worker's socket by a hash of its addresses, and a
//! worker that then serves more than another passes it on.

#![allow(clippy::unwrap_used)] // a failed unwrap is how a test fails

use std::time::Duration;

use keel_dataplane::{Dataplane, Workers};
use keel_tests::backend::HttpBackend;
use keel_tests::{eventually, free_port, http_lb, spec};
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
