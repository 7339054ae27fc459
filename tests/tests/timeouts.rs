//! Every phase of an HTTP exchange has a limit, and a peer that goes quiet
//! in it is let go at that limit: a client that stops sending its head or
//! its body, stops reading its answer, keeps an HTTP/2 connection idle or
//! leaves early; a member that stops sending its body. And a peer that is
//! slow but moving is never cut. Limits are set short here (1 s).

#![allow(clippy::unwrap_used)] // a failed unwrap is how a test fails

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_dataplane::Dataplane;
use keel_tests::backend::{stalling_member, HttpBackend};
use keel_tests::{eventually, free_port, open_fds, spec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A data plane with one HTTP listener in front of `member`, every limit 1 s.
async fn keel_before(member: SocketAddr) -> (u16, Dataplane) {
    keel_with(
        member,
        "header_timeout: 1s, client_timeout: 1s",
        "response_timeout: 1s",
    )
    .await
}

/// A data plane with one HTTP listener (with `limits`, YAML flow fields) in
/// front of `member`, in a pool with `pool_fields` (or none).
async fn keel_with(member: SocketAddr, limits: &str, pool_fields: &str) -> (u16, Dataplane) {
    let port = free_port();
    let pool_fields = if pool_fields.is_empty() {
        String::new()
    } else {
        format!("{pool_fields}, ")
    };
    let dp = keel_tests::dataplane();
    dp.apply(&spec(&format!(
        r#"
load_balancers:
  - name: lb
    listeners:
      - {{ port: {port}, protocol: http, bind: 127.0.0.1, default_pool: p, {limits} }}
pools:
  - {{ name: p, {pool_fields}members: [ {{ address: "{member}" }} ] }}
"#
    )))
    .await
    .unwrap();
    (port, dp)
}

/// Reads until the peer closes (or fails); what came and how long it took.
async fn read_until_closed(s: &mut TcpStream, limit: Duration) -> (Vec<u8>, Duration) {
    let started = Instant::now();
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let _ = tokio::time::timeout(limit, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    (out, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_not_finished_in_time_is_answered_408() {
    let web = HttpBackend::start("web").await;
    let (port, _dp) = keel_before(web.addr).await;
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nX-Slow: ")
        .await
        .unwrap();
    let (out, took) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 408"), "{out}");
    assert!(took < Duration::from_secs(3), "{took:?}");
}

/// Reads one whole response (framed by `content-length`) off `s`.
async fn one_response(s: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if body.len() >= len {
                return text;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_idle_has_its_own_limit_apart_from_the_head() {
    let web = HttpBackend::start("web").await;
    let (port, _dp) = keel_with(
        web.addr,
        "header_timeout: 400ms, keepalive_timeout: 1500ms",
        "",
    )
    .await;
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    assert!(one_response(&mut s).await.starts_with("HTTP/1.1 200"));
    // Idle past the head timeout, within the keep-alive one: still served.
    tokio::time::sleep(Duration::from_millis(900)).await;
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    assert!(one_response(&mut s).await.starts_with("HTTP/1.1 200"));
    // Then idle: closed at the keep-alive limit, without an answer.
    let (got, took) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
    assert!(
        took >= Duration::from_millis(1300) && took < Duration::from_millis(3000),
        "idle connection closed after {took:?}, not at its 1.5 s keep-alive limit"
    );
    // A head begun after an idle wait has the head limit from its first byte.
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    one_response(&mut s).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    s.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    let (got, took) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    assert!(
        String::from_utf8_lossy(&got).starts_with("HTTP/1.1 408"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    assert!(took < Duration::from_millis(1200), "408 after {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_upload_is_the_clients_fault_408_and_a_slow_one_passes() {
    let web = HttpBackend::start("web").await;
    let (port, _dp) = keel_before(web.addr).await;
    // One chunk, then nothing: 408 at the client limit, not a 504.
    for head in [
        &b"POST /upload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"[..],
        b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nhello",
        b"POST /upload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n",
    ] {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        s.write_all(head).await.unwrap();
        let (out, took) = read_until_closed(&mut s, Duration::from_secs(5)).await;
        let out = String::from_utf8_lossy(&out);
        assert!(out.starts_with("HTTP/1.1 408"), "{out}");
        assert!(took < Duration::from_secs(3), "{took:?}");
    }
    // An upload that keeps moving for three times the member's response
    // limit: that limit counts from the end of the request.
    slow_upload_passes(port).await;
}

/// Uploads 30 bytes, one every 100 ms (3 s, three times the member's 1 s
/// limit), to a member that answers with the length it got: 200 and 30.
async fn slow_upload_passes(port: u16) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(
        b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 30\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        s.write_all(b"x").await.unwrap();
    }
    let (out, _) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.ends_with("30"), "{out}");
}

/// An HTTP/2 (h2c) member that answers each request with its body's length.
async fn h2_counting_member() -> SocketAddr {
    use http_body_util::{BodyExt, Full};
    use hyper::service::service_fn;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let count = service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                    let n = match req.into_body().collect().await {
                        Ok(b) => b.to_bytes().len(),
                        Err(_) => 0,
                    };
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                        bytes::Bytes::from(n.to_string()),
                    )))
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), count)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_members_limit_counts_from_the_end_of_the_request_too() {
    let member = h2_counting_member().await;
    let (port, _dp) = keel_with(
        member,
        "header_timeout: 1s, client_timeout: 1s",
        "http_version: http2, response_timeout: 1s",
    )
    .await;
    // An upload that keeps moving for three times the member's limit.
    slow_upload_passes(port).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_let_go() {
    let web = HttpBackend::start("web").await;
    let (port, _dp) = keel_before(web.addr).await;
    let baseline = open_fds();
    let mut stalled = Vec::new();
    for _ in 0..20 {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        s.write_all(b"GET /download/50000000 HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        stalled.push(s);
    }
    // Nobody reads: after the client limit Keel gives up on every one.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    for mut s in stalled {
        let (out, took) = read_until_closed(&mut s, Duration::from_secs(10)).await;
        assert!(out.len() < 50_000_000, "the whole answer was held for it");
        assert!(took < Duration::from_secs(5), "{took:?}");
    }
    eventually(
        Duration::from_secs(5),
        "descriptors back to baseline",
        || async move { open_fds() <= baseline },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_stalls_mid_body_is_cut_at_its_limit() {
    let addr = stalling_member().await;
    let (port, _dp) = keel_before(addr).await;
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let (out, took) = read_until_closed(&mut s, Duration::from_secs(10)).await;
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.ends_with("partial"), "{out}");
    assert!(took < Duration::from_secs(3), "cut after {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_releases_its_member_connection_at_once() {
    // The member reads the request and never answers; it records when
    // Keel closes the connection.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let released = Arc::new(AtomicUsize::new(0));
    let counted = released.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let counted = counted.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
                counted.fetch_add(1, SeqCst);
            });
        }
    });
    let port = free_port();
    let dp = keel_tests::dataplane();
    // A long response limit: only the client's leaving can end the wait.
    dp.apply(&spec(&format!(
        "load_balancers:\n  - {{ name: lb, listeners: [ {{ port: {port}, protocol: http, bind: 127.0.0.1, default_pool: p }} ] }}\n\
         pools:\n  - {{ name: p, response_timeout: 60s, members: [ {{ address: \"{addr}\" }} ] }}\n"
    )))
    .await
    .unwrap();
    let baseline = open_fds();
    for request in [
        &b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"[..],
        b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi",
    ] {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        s.write_all(request).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        drop(s);
    }
    let left = Instant::now();
    let released = &released;
    eventually(
        Duration::from_secs(1),
        "both member connections closed",
        || async move { released.load(SeqCst) == 2 },
    )
    .await;
    assert!(left.elapsed() < Duration::from_secs(1));
    eventually(
        Duration::from_secs(2),
        "descriptors back to baseline",
        || async move { open_fds() <= baseline },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_http2_connection_is_closed() {
    use http_body_util::Empty;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let web = HttpBackend::start("web").await;
    let (port, _dp) = keel_before(web.addr).await;
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    let started = Instant::now();
    let conn = tokio::spawn(conn);
    // One request, then idle: Keel closes the connection after about the
    // keep-alive limit (the head timeout, 1 s here).
    let req = http::Request::get("http://t/")
        .body(Empty::<bytes::Bytes>::new())
        .unwrap();
    assert_eq!(sender.send_request(req).await.unwrap().status(), 200);
    let ended = tokio::time::timeout(Duration::from_secs(5), conn).await;
    assert!(ended.is_ok(), "still open after 5 s");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "{took:?}"
    );
}

/// CPU time this process has used (the data plane runs in it).
fn cpu_used() -> Duration {
    use nix::sys::resource::{getrusage, UsageWho};
    getrusage(UsageWho::RUSAGE_SELF).map_or(Duration::ZERO, |u| {
        let t = |tv: nix::sys::time::TimeVal| {
            Duration::from_secs(tv.tv_sec() as u64) + Duration::from_micros(tv.tv_usec() as u64)
        };
        t(u.user_time()) + t(u.system_time())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_for_the_rest_of_a_preface_header_or_hello_costs_no_cpu() {
    let web = HttpBackend::start("web").await;
    let (h2c, proxied, passthrough) = (free_port(), free_port(), free_port());
    let dp = keel_tests::dataplane();
    dp.apply(&spec(&format!(
        r#"
load_balancers:
  - name: lb
    listeners:
      - {{ port: {h2c}, protocol: http, bind: 127.0.0.1, default_pool: p, header_timeout: 10s }}
      - {{ port: {proxied}, protocol: http, bind: 127.0.0.1, default_pool: p, header_timeout: 10s,
          accept_proxy_protocol: true, trusted_proxies: [127.0.0.1/32] }}
      - {{ port: {passthrough}, protocol: tls_passthrough, bind: 127.0.0.1, default_pool: p, header_timeout: 10s }}
pools:
  - {{ name: p, members: [ {{ address: "{}" }} ] }}
"#,
        web.addr
    )))
    .await
    .unwrap();
    // Each waits for bytes that do not come: part of the h2c preface, of a
    // PROXY header, of a TLS record.
    let mut held = Vec::new();
    for (port, start) in [
        (h2c, &b"PRI * HTTP/2.0\r\n"[..]),
        (proxied, b"PROXY TCP4 203.0.113.9 "),
        (passthrough, &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01][..]),
    ] {
        for _ in 0..100 {
            let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            s.write_all(start).await.unwrap();
            held.push(s);
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = cpu_used();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let used = cpu_used() - before;
    // Polling each every few milliseconds costs hundreds of milliseconds a
    // second here; waiting on readiness costs next to nothing.
    assert!(
        used < Duration::from_millis(60),
        "{used:?} of CPU in 1 s of waiting"
    );
    // And the rest, when it comes, is read.
    let mut s = held.swap_remove(0);
    s.write_all(b"\r\nSM\r\n\r\n").await.unwrap();
    drop(held);
}
