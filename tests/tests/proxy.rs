//! What the proxy does to traffic: headers, errors, L4 half-close, streaming.

#![allow(clippy::unwrap_used)] // a failed unwrap is how a test fails

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use keel_dataplane::Dataplane;
use keel_tests::backend::{EchoBackend, HttpBackend};
use keel_tests::client::{client, get};
use keel_tests::{free_port, http_lb, spec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One backend named `b` behind one HTTP listener: the backend, the port, the data plane.
async fn one_backend() -> (HttpBackend, u16, Dataplane) {
    let b = HttpBackend::start("b").await;
    let port = free_port();
    let dp = keel_tests::dataplane();
    let members = format!("members: [ {{ address: \"{}\" }} ]", b.addr);
    dp.apply(&spec(&http_lb(port, &members))).await.unwrap();
    (b, port, dp)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_headers_set_host_kept_hop_by_hop_removed() {
    let (b, port, _dp) = one_backend().await;
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(
        b"GET /headers HTTP/1.1\r\nHost: shop.example\r\nX-Forwarded-For: 203.0.113.7\r\n\
          X-Forwarded-Proto: https\r\nX-Forwarded-Port: 1\r\nForwarded: for=203.0.113.7\r\n\
          Connection: close, X-Private\r\nX-Private: secret\r\nKeep-Alive: timeout=5\r\n\
          Proxy-Connection: keep-alive\r\nX-Kept: yes\r\n\r\n",
    )
    .await
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let h = b.last_headers();
    assert!(h.contains("host: shop.example\n"), "{h}");
    // The client is not a trusted proxy: what it claims is replaced.
    assert!(h.contains("x-forwarded-for: 127.0.0.1\n"), "{h}");
    assert!(
        h.contains("forwarded: for=127.0.0.1;proto=http;host=\"shop.example\"\n"),
        "{h}"
    );
    assert!(h.contains("x-forwarded-proto: http\n"), "{h}");
    assert!(h.contains(&format!("x-forwarded-port: {port}\n")), "{h}");
    assert!(h.contains("x-kept: yes\n"), "{h}");
    // Each forwarding field once: the client's own are gone, not kept beside Keel's.
    for name in [
        "x-forwarded-for:",
        "x-forwarded-proto:",
        "x-forwarded-port:",
        "forwarded:",
    ] {
        let lines = h.lines().filter(|l| l.starts_with(name)).count();
        assert_eq!(lines, 1, "{name} {h}");
    }
    assert!(!h.contains("203.0.113.7"), "{h}");
    for gone in ["x-private", "keep-alive", "proxy-connection"] {
        assert!(!h.contains(gone), "{gone} reached the member: {h}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_proxys_forwarding_fields_are_kept_and_extended() {
    let b = HttpBackend::start("b").await;
    let port = free_port();
    let dp = keel_tests::dataplane();
    dp.apply(&spec(&format!(
        "load_balancers:\n  - {{ name: web, listeners: [ {{ port: {port}, protocol: http, bind: 127.0.0.1, \
         default_pool: app, trusted_proxies: [127.0.0.1/32] }} ] }}\n\
         pools:\n  - {{ name: app, members: [ {{ address: \"{}\" }} ] }}\n",
        b.addr
    )))
    .await
    .unwrap();
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    // A CDN that terminated TLS on 443 says so.
    s.write_all(
        b"GET /headers HTTP/1.1\r\nHost: shop.example\r\nX-Forwarded-For: 203.0.113.7\r\n\
          X-Forwarded-Proto: https\r\nX-Forwarded-Port: 443\r\nX-Forwarded-Host: shop.example\r\n\
          Forwarded: for=203.0.113.7;proto=https\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let h = b.last_headers();
    assert!(
        h.contains("x-forwarded-for: 203.0.113.7, 127.0.0.1\n"),
        "{h}"
    );
    assert!(h.contains("x-forwarded-proto: https\n"), "{h}");
    assert!(h.contains("x-forwarded-port: 443\n"), "{h}");
    assert!(h.contains("x-forwarded-host: shop.example\n"), "{h}");
    assert!(
        h.contains("forwarded: for=203.0.113.7;proto=https, for=127.0.0.1;proto=http;host=\"shop.example\"\n"),
        "{h}"
    );
    drop(dp);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_are_reused() {
    let (b, port, _dp) = one_backend().await;
    let c = client();
    for path in ["/", "/download/100", "/download/0", "/headers"] {
        for _ in 0..20 {
            assert_eq!(
                get(&c, &format!("http://127.0.0.1:{port}{path}"))
                    .await
                    .unwrap()
                    .0,
                200
            );
        }
    }
    // Sequential requests, each response read to its end: one connection
    // serves all, or one per worker (hyper's client may open a second
    // connection when the first is not back in its pool yet: with two
    // workers, the kernel can give it to the other one, which has its own).
    assert!(
        b.connections() <= keel_tests::test_workers() as u64,
        "upstream connections were not reused: {}",
        b.connections()
    );
}

/// Splits `wire` into responses framed by `Content-Length`: (status line, body).
fn responses(wire: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = wire;
    while let Some(end) = rest.find("\r\n\r\n") {
        let head = &rest[..end];
        let length: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length: ")
                    .map(str::to_owned)
            })
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        let body = &rest[end + 4..end + 4 + length];
        out.push((head.lines().next().unwrap().to_owned(), body.to_owned()));
        rest = &rest[end + 4 + length..];
    }
    assert!(rest.is_empty(), "left over: {rest:?}");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_with_and_without_bodies_share_one_connection() {
    let (b, port, _dp) = one_backend().await;
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    // Plain requests, then one with a body, then plain ones again, all
    // sent at once: each is answered, in order, on the one connection.
    s.write_all(
        b"GET /headers HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\n\r\n\
          GET / HTTP/1.1\r\nHost: a\r\n\r\n\
          POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello\
          GET /nothing-here HTTP/1.1\r\nHost: a\r\n\r\n\
          GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut wire = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut wire))
        .await
        .expect("the connection was not closed after the last request")
        .unwrap();
    let got = responses(&wire);
    let bodies: Vec<&str> = got.iter().map(|(_, body)| body.as_str()).collect();
    assert_eq!(got.len(), 5, "{wire}");
    assert!(
        got.iter().all(|(status, _)| status == "HTTP/1.1 200 OK"),
        "{wire}"
    );
    assert!(bodies[0].contains("host: a\n"), "{wire}");
    assert!(
        !bodies[0].contains("connection"),
        "hop-by-hop passed on: {wire}"
    );
    assert_eq!(bodies[1..], ["b", "5", "b", "b"], "{wire}");
    assert!(wire.contains("date: "), "no Date: {wire}");
    assert_eq!(b.hits(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed_at_the_header_timeout() {
    let b = HttpBackend::start("b").await;
    let port = free_port();
    let dp = keel_tests::dataplane();
    let members = format!("members: [ {{ address: \"{}\" }} ]", b.addr);
    let config = http_lb(port, &members)
        .replace("protocol: http,", "protocol: http, header_timeout: 300ms,");
    assert_ne!(
        config,
        http_lb(port, &members),
        "header_timeout not set: {config}"
    );
    dp.apply(&spec(&config)).await.unwrap();
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let t = Instant::now();
    let mut wire = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut wire))
        .await
        .expect("an idle connection was left open")
        .unwrap();
    let idle = t.elapsed();
    assert_eq!(responses(&wire).len(), 1, "{wire}");
    assert!(
        idle >= Duration::from_millis(250) && idle < Duration::from_secs(2),
        "closed after {idle:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clear_502_503_504() {
    let slow = HttpBackend::start("slow").await;
    let dead = format!("127.0.0.1:{}", free_port()); // nothing listens here
    let c = client();

    let port = free_port();
    let dp = keel_tests::dataplane();
    dp.apply(&spec(&http_lb(
        port,
        &format!("members: [ {{ address: \"{dead}\" }} ]"),
    )))
    .await
    .unwrap();
    let url = format!("http://127.0.0.1:{port}/");
    assert_eq!(
        get(&c, &url).await.unwrap(),
        (502, "502 Bad Gateway\n".into())
    );

    dp.apply(&spec(&http_lb(
        port,
        &format!("members: [ {{ address: \"{dead}\", enabled: false }} ]"),
    )))
    .await
    .unwrap();
    assert_eq!(
        get(&c, &url).await.unwrap(),
        (503, "503 Service Unavailable\n".into())
    );

    // A quick answer first, under a long timeout: the slow request then
    // goes out on the same member connection, whose response timer was set
    // for the request before and must now move to an earlier deadline.
    let slow_member = |timeout: &str| {
        spec(&http_lb(
            port,
            &format!(
                "response_timeout: {timeout}, members: [ {{ address: \"{}\" }} ]",
                slow.addr
            ),
        ))
    };
    dp.apply(&slow_member("30s")).await.unwrap();
    assert_eq!(get(&c, &url).await.unwrap().0, 200);
    dp.apply(&slow_member("300ms")).await.unwrap();
    let t = Instant::now();
    let r = get(&c, &format!("http://127.0.0.1:{port}/slow/3000"))
        .await
        .unwrap();
    assert_eq!(r, (504, "504 Gateway Timeout\n".into()));
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert!(slow.connections() <= 1, "the connection was not reused");
    // The timed-out connection is gone; the next request is served.
    assert_eq!(get(&c, &url).await.unwrap().0, 200);

    // A refused member is skipped in favour of a working one: no error at all.
    dp.apply(&spec(&http_lb(
        port,
        &format!(
            "members: [ {{ address: \"{dead}\" }}, {{ address: \"{}\" }} ]",
            slow.addr
        ),
    )))
    .await
    .unwrap();
    for _ in 0..10 {
        assert_eq!(get(&c, &url).await.unwrap(), (200, "slow".into()));
    }
    let metrics = dp.render_metrics();
    assert!(
        metrics.contains("keel_listener_requests_total{lb=\"web\""),
        "{metrics}"
    );
    assert!(metrics.contains(&format!(
        "keel_member_connect_failures_total{{pool=\"app\",member=\"{dead}\"}}"
    )));
}

fn tcp_lb(port: u16, member: std::net::SocketAddr, idle: &str) -> String {
    format!(
        r#"
load_balancers:
  - name: db
    listeners: [ {{ port: {port}, protocol: tcp, bind: 127.0.0.1, default_pool: echo, idle_timeout: {idle} }} ]
pools:
  - {{ name: echo, members: [ {{ address: "{member}" }} ] }}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_echo_with_half_close() {
    let echo = EchoBackend::start().await;
    let port = free_port();
    let dp = keel_tests::dataplane();
    dp.apply(&spec(&tcp_lb(port, echo.addr, "10s")))
        .await
        .unwrap();
    let s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    // Enough to fill the relay's pipe many times both ways, so it is
    // moved in the larger pipe of a bulk transfer too.
    let payload: Vec<u8> = (0..8_000_000u32).map(|i| (i % 251) as u8).collect();
    let (mut read, mut write) = s.into_split();
    let sent = payload.clone();
    let writer = tokio::spawn(async move {
        write.write_all(&sent).await.unwrap();
        // Half-close: we are done sending, but still want the reply. The
        // member sees our FIN, sends "bye" after the echo, then closes its
        // side.
        write.shutdown().await.unwrap();
        write
    });
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), read.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    writer.await.unwrap();
    assert_eq!(out.len(), payload.len() + 3);
    assert_eq!(&out[..payload.len()], &payload[..]);
    assert_eq!(&out[payload.len()..], b"bye");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_idle_timeout_closes() {
    let echo = EchoBackend::start().await;
    let port = free_port();
    let dp = keel_tests::dataplane();
    dp.apply(&spec(&tcp_lb(port, echo.addr, "300ms")))
        .await
        .unwrap();
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    // Activity keeps it open past the timeout.
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        s.write_all(b"x").await.unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.unwrap();
    }
    // Silence closes it.
    let t = Instant::now();
    let mut buf = [0u8; 8];
    let n = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf))
        .await
        .unwrap();
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    let waited = t.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_millis(1000),
        "{waited:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_megabytes_each_way() {
    let (_b, port, dp) = one_backend().await;
    let c = client();
    let size = 10 * 1024 * 1024;
    let req = http::Request::post(format!("http://127.0.0.1:{port}/upload"))
        .body(Full::new(Bytes::from(vec![7u8; size])))
        .unwrap();
    let resp = c.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, size.to_string().as_bytes());

    let resp = c
        .request(
            http::Request::get(format!("http://127.0.0.1:{port}/download/{size}"))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body.len(), size);
    let metrics = dp.render_metrics();
    let line = metrics
        .lines()
        .find(|l| l.starts_with("keel_listener_bytes_total") && l.contains("direction=\"out\""))
        .unwrap();
    let out: u64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(out >= size as u64, "{line}");
}
