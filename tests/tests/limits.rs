//! Per-listener limits: connection limit, per-client rate limit (HTTP 429,
//! L4 refusal), the request timeout, and retries on another member when a
//! connection cannot be made.

#![allow(clippy::unwrap_used)] // a failed unwrap is how a test fails

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use keel_dataplane::Dataplane;
use keel_tests::backend::{EchoBackend, HttpBackend};
use keel_tests::client::{client, get};
use keel_tests::{free_port, spec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

fn config(port: u16, protocol: &str, member: SocketAddr, listener_extra: &str) -> String {
    format!(
        "load_balancers:\n  - {{ name: web, listeners: [ {{ port: {port}, protocol: {protocol}, bind: 127.0.0.1, default_pool: app {listener_extra} }} ] }}\n\
         pools:\n  - {{ name: app, members: [ {{ address: \"{member}\" }} ] }}\n"
    )
}

fn refused(dp: &Dataplane, limit: &str) -> u64 {
    dp.render_metrics()
        .lines()
        .find(|l| l.starts_with("keel_listener_refused_total") && l.contains(limit))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// Sends one GET on `s` and reads the status line's code.
async fn status_on(s: &mut TcpStream) -> Option<u16> {
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .ok()?;
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&buf[..n]);
    text.get(9..12)?.parse().ok()
}

/// A connection from a chosen loopback source address.
async fn connect_from(source: [u8; 4], port: u16) -> TcpStream {
    try_connect_from(source, port).await.unwrap()
}

/// The same, for a connection that may be refused: its reset can come
/// before the connect is seen through.
async fn try_connect_from(source: [u8; 4], port: u16) -> std::io::Result<TcpStream> {
    let s = TcpSocket::new_v4()?;
    s.bind(SocketAddr::from((source, 0)))?;
    s.connect(SocketAddr::from(([127, 0, 0, 1], port))).await
}

#[tokio::test]
async fn connections_beyond_the_limit_are_refused_until_one_closes() {
    let b = HttpBackend::start("b").await;
    let port = free_port();
    let dp = keel_tests::dataplane();
    dp.apply(&spec(&config(port, "http", b.addr, ", max_connections: 2")))
        .await
        .unwrap();
    let mut one = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut two = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    assert_eq!(status_on(&mut one).await, Some(200));
    assert_eq!(status_on(&mut two).await, Some(200));
    // Refused: closed unanswered (its reset may come before the connect
    // is seen through).
    if let Ok(mut three) = TcpStream::connect(("127.0.0.1", port)).await {
        assert_eq!(
            status_on(&mut three).await,
            None,
            "third connection answered"
        );
    }
    assert_eq!(refused(&dp, "max_connections"), 1);
    // The open ones are unaffected; closing one makes room.
    assert_eq!(status_on(&mut one).await, Some(200));
    drop(two);
    keel_tests::eventually(Duration::from_secs(5), "room again", || async {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        status_on(&mut s).await == Some(200)
    })
    .await;
    dp.shutdown(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn http_requests_over_the_rate_get_429_per_client() {
    let b = HttpBackend::start("b").await;
    let port = free_port();
    let dp = keel_tests::dataplane();
    dp.apply(&spec(&config(
        port,
        "http",
        b.addr,
        ", rate_limit: { per_second: 5, burst: 5 }",
    )))
    .await
    .unwrap();
    let mut a = connect_from([127, 0, 0, 2], port).await;
    let mut statuses = Vec::new();
    for _ in 0..15 {
        statuses.push(status_on(&mut a).await.unwrap());
    }
    let ok = statuses.iter().filter(|&&s| s == 200).count();
    assert!((5..=6).contains(&ok), "{statuses:?}");
    assert_eq!(ok + statuses.iter().filter(|&&s| s == 429).count(), 15);
    assert_eq!(b.hits(), ok as u64, "429s never reach the member");
    // Another client is not held back by the first one's bucket.
    let mut other = connect_from([127, 0, 0, 3], port).await;
    assert_eq!(status_on(&mut other).await, Some(200));
    // The bucket refills at the rate.
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(status_on(&mut a).await, Some(200));
    assert!(refused(&dp, "rate_limit") >= 9);

    // 429 carries Retry-After.
    let mut last = String::new();
    for _ in 0..10 {
        a.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; 4096];
        let n = a.read(&mut buf).await.unwrap();
        last = String::from_utf8_lossy(&buf[..n]).into_owned();
    }
    assert!(last.starts_with("HTTP/1.1 429"), "{last}");
    assert!(
        last.to_ascii_lowercase().contains("retry-after: 1"),
        "{last}"
    );
    dp.shutdown(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn tcp_connections_over_the_rate_are_refused() {
    let echo = EchoBackend::start().await;
    let port = free_port();
    let dp = keel_tests::dataplane();
    dp.apply(&spec(&config(
        port,
        "tcp",
        echo.addr,
        ", rate_limit: { per_second: 1, burst: 2 }",
    )))
    .await
    .unwrap();
    let mut results = Vec::new();
    for _ in 0..4 {
        let ok = async {
            let mut s = try_connect_from([127, 0, 0, 4], port).await.ok()?;
            s.write_all(b"ping").await.ok()?;
            let mut buf = [0u8; 4];
            tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf))
                .await
                .ok()?
                .ok()?;
            Some(buf == *b"ping")
        }
        .await;
        results.push(ok == Some(true));
    }
    assert_eq!(results, [true, true, false, false]);
    assert_eq!(refused(&dp, "rate_limit"), 2);
    dp.shutdown(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn a_request_body_that_takes_too_long_gets_408() {
    let b = HttpBackend::start("b").await;
    let port = free_port();
    let dp = keel_tests::dataplane();
    dp.apply(&spec(&config(
        port,
        "http",
        b.addr,
        ", request_timeout: 500ms",
    )))
    .await
    .unwrap();

    // Content-Length 100, 10 bytes sent, then silence.
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let started = Instant::now();
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
        .await
        .unwrap();
    let mut text = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut text))
        .await
        .unwrap()
        .unwrap();
    let took = started.elapsed();
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_secs(2),
        "{took:?}"
    );

    // A chunked body whose first chunk never comes: 408 too, nothing forwarded.
    let hits = b.hits();
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut text))
        .await
        .unwrap()
        .unwrap();
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert_eq!(b.hits(), hits);

    // A whole request in time is served.
    let c = client();
    assert_eq!(
        get(&c, &format!("http://127.0.0.1:{port}/"))
            .await
            .unwrap()
            .0,
        200
    );
    dp.shutdown(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn a_member_that_cannot_be_reached_is_retried_on_another() {
    let live = HttpBackend::start("live").await;
    // A port nothing listens on: connections are refused.
    let dead: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let port = free_port();
    let dp = keel_tests::dataplane();
    dp.apply(&spec(&format!(
        "load_balancers:\n  - {{ name: web, listeners: [ {{ port: {port}, protocol: http, bind: 127.0.0.1, default_pool: app }} ] }}\n\
         pools:\n  - {{ name: app, members: [ {{ address: \"{dead}\" }}, {{ address: \"{}\" }} ] }}\n",
        live.addr
    )))
    .await
    .unwrap();
    // POST too: nothing reached the dead member, so any request may move.
    let c = client();
    for i in 0..20 {
        let method = if i % 2 == 0 { "GET" } else { "POST" };
        let req = http::Request::builder()
            .method(method)
            .uri(format!("http://127.0.0.1:{port}/"))
            .body(http_body_util::Full::new(bytes::Bytes::from("x")))
            .unwrap();
        let resp = c.request(req).await.unwrap();
        assert_eq!(resp.status(), 200, "{method}");
    }
    assert_eq!(live.hits(), 20);
    dp.shutdown(Duration::from_millis(100)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_connections_cannot_use_up_the_nodes_file_descriptors() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    // This test runs in a process of its own (nextest): a small open-file
    // limit that the flood below would exhaust.
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, 600, hard).unwrap();
    // A member that closes after each answer, so every request needs a
    // new member connection (a descriptor) from Keel.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let member = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                if matches!(s.read(&mut buf).await, Ok(n) if n > 0) {
                    let _ = s
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                        )
                        .await;
                }
            });
        }
    });
    let port = free_port();
    let dp = keel_tests::dataplane();
    dp.apply(&spec(&config(port, "http", member, "")))
        .await
        .unwrap();
    let mut good = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    assert_eq!(status_on(&mut good).await, Some(200));
    // Idle connections, as many as this process can open.
    let mut flood = Vec::new();
    for _ in 0..300 {
        match TcpStream::connect(("127.0.0.1", port)).await {
            Ok(s) => flood.push(s),
            Err(_) => break,
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The node stopped taking clients before it ran out: the client it
    // already serves still gets answers, which need new descriptors.
    for _ in 0..3 {
        assert_eq!(status_on(&mut good).await, Some(200));
    }
    assert!(refused(&dp, "max_connections") > 0);
    drop(flood);
}
