//! Active health checks against real backends that die and come back.

#![allow(clippy::unwrap_used)] // a failed unwrap is how a test fails

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_dataplane::Dataplane;
use keel_tests::backend::{EchoBackend, HttpBackend};
use keel_tests::client::{client, get};
use keel_tests::{eventually, free_port, http_lb, members, spec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const INTERVAL_MS: u64 = 200;
const UNHEALTHY: u64 = 2;
const HEALTHY: u64 = 2;

fn config(port: u16, members: &str) -> String {
    http_lb(
        port,
        &format!(
            "health_check: {{ type: http, path: /health, interval: {INTERVAL_MS}ms, timeout: 100ms, \
             healthy_threshold: {HEALTHY}, unhealthy_threshold: {UNHEALTHY} }}, members: {members}"
        ),
    )
}

fn healthy(dp: &Dataplane, addr: std::net::SocketAddr) -> bool {
    dp.members().iter().any(|m| m.address == addr && m.healthy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_member_is_marked_down_in_time_and_comes_back() {
    let a = HttpBackend::start("a").await;
    let b = HttpBackend::start("b").await;
    let port = free_port();
    let dp = Arc::new(keel_tests::dataplane());
    dp.apply(&spec(&config(port, &members(&[a.addr, b.addr]))))
        .await
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/");

    // A client loop runs throughout, counting failures before and after
    // the member is known to be down.
    let stop = Arc::new(AtomicBool::new(false));
    let marked_down = Arc::new(AtomicBool::new(false));
    let (ok, failed_after_down) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let loop_task = {
        let (stop, marked_down, ok, failed) = (
            stop.clone(),
            marked_down.clone(),
            ok.clone(),
            failed_after_down.clone(),
        );
        let url = url.clone();
        tokio::spawn(async move {
            let c = client();
            while !stop.load(SeqCst) {
                let down_before = marked_down.load(SeqCst);
                match get(&c, &url).await {
                    Ok((200, _)) => ok.fetch_add(1, SeqCst),
                    _ if down_before => failed.fetch_add(1, SeqCst),
                    _ => 0,
                };
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let b_addr = b.addr;
    let killed = Instant::now();
    b.kill();
    eventually(
        Duration::from_secs(3),
        "killed member marked down",
        || async { !healthy(&dp, b_addr) },
    )
    .await;
    let took = killed.elapsed();
    marked_down.store(true, SeqCst);
    let bound = Duration::from_millis(INTERVAL_MS * UNHEALTHY + INTERVAL_MS);
    assert!(
        took <= bound + Duration::from_millis(150),
        "marked down after {took:?}, bound {bound:?}"
    );
    let ok_at_down = ok.load(SeqCst);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        ok.load(SeqCst) > ok_at_down + 20,
        "traffic did not continue on the other member"
    );

    // Back on the same address: up again after `healthy_threshold` passes.
    let b = HttpBackend::start_on("b", b_addr).await;
    let back = Instant::now();
    eventually(Duration::from_secs(3), "member back up", || async {
        healthy(&dp, b_addr)
    })
    .await;
    let took = back.elapsed();
    assert!(
        took >= Duration::from_millis(INTERVAL_MS * (HEALTHY - 1)),
        "up after {took:?}: fewer than {HEALTHY} passes"
    );
    eventually(
        Duration::from_secs(2),
        "returned member gets traffic",
        || async { b.hits() > 0 },
    )
    .await;
    stop.store(true, SeqCst);
    loop_task.await.unwrap();
    assert_eq!(
        failed_after_down.load(SeqCst),
        0,
        "requests failed after the member was marked down"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_check_status_takes_member_out() {
    let a = HttpBackend::start("a").await;
    let b = HttpBackend::start("b").await;
    let port = free_port();
    let dp = keel_tests::dataplane();
    dp.apply(&spec(&config(port, &members(&[a.addr, b.addr]))))
        .await
        .unwrap();
    b.set_healthy(false); // answers 503 to /health, still serves
    eventually(Duration::from_secs(2), "b down", || async {
        !healthy(&dp, b.addr)
    })
    .await;
    let c = client();
    let hits = b.hits();
    for _ in 0..20 {
        assert_eq!(
            get(&c, &format!("http://127.0.0.1:{port}/")).await.unwrap(),
            (200, "a".into())
        );
    }
    assert_eq!(b.hits(), hits);
    b.set_healthy(true);
    eventually(Duration::from_secs(2), "b up", || async {
        healthy(&dp, b.addr)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_down_gives_503_on_http_and_refusal_on_tcp_then_recovers() {
    let web = HttpBackend::start("web").await;
    let echo = EchoBackend::start().await;
    let (hport, tport) = (free_port(), free_port());
    let yaml = format!(
        r#"
load_balancers:
  - name: lb
    listeners:
      - {{ port: {hport}, protocol: http, bind: 127.0.0.1, default_pool: web }}
      - {{ port: {tport}, protocol: tcp, bind: 127.0.0.1, default_pool: echo }}
pools:
  - name: web
    health_check: {{ type: http, path: /health, interval: 100ms, timeout: 50ms, healthy_threshold: 1, unhealthy_threshold: 1 }}
    members: [ {{ address: "{}" }} ]
  - name: echo
    health_check: {{ type: tcp, interval: 100ms, timeout: 50ms, healthy_threshold: 1, unhealthy_threshold: 1 }}
    members: [ {{ address: "{}" }} ]
"#,
        web.addr, echo.addr
    );
    let dp = keel_tests::dataplane();
    dp.apply(&spec(&yaml)).await.unwrap();
    let c = client();
    let url = format!("http://127.0.0.1:{hport}/");
    assert_eq!(get(&c, &url).await.unwrap().0, 200);

    web.set_healthy(false);
    let (echo_addr, web_addr) = (echo.addr, web.addr);
    drop(echo);
    eventually(Duration::from_secs(2), "both pools down", || async {
        !healthy(&dp, web_addr) && !healthy(&dp, echo_addr)
    })
    .await;
    let (status, body) = get(&c, &url).await.unwrap();
    assert_eq!((status, body.as_str()), (503, "503 Service Unavailable\n"));

    // TCP: accepted, then reset at once with nothing sent. On loopback the
    // reset can arrive before `connect` returns, which is a refusal too.
    if let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", tport)).await {
        let _ = s.write_all(b"hello").await;
        let mut buf = [0u8; 16];
        let r = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf))
            .await
            .unwrap();
        assert!(matches!(r, Ok(0) | Err(_)), "expected refusal, got {r:?}");
    }

    // Recovery needs nobody's help.
    web.set_healthy(true);
    let _echo = keel_tests::backend::EchoBackend::start_on(echo_addr).await;
    eventually(Duration::from_secs(2), "web pool recovers", || async {
        matches!(get(&c, &url).await, Ok((200, _)))
    })
    .await;
    eventually(Duration::from_secs(2), "echo pool recovers", || async {
        healthy(&dp, echo_addr)
    })
    .await;
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", tport))
        .await
        .unwrap();
    s.write_all(b"ping").await.unwrap();
    s.shutdown().await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    assert_eq!(out, b"pingbye");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_port_probes_that_port_instead_of_the_members() {
    let app = HttpBackend::start("app").await;
    let monitor = HttpBackend::start("monitor").await;
    let port = free_port();
    let dp = keel_tests::dataplane();
    let config = http_lb(
        port,
        &format!(
            "health_check: {{ type: http, path: /health, interval: {INTERVAL_MS}ms, timeout: 100ms, \
             healthy_threshold: 1, unhealthy_threshold: 1, port: {} }}, members: {}",
            monitor.addr.port(),
            members(&[app.addr])
        ),
    );
    dp.apply(&spec(&config)).await.unwrap();
    eventually(Duration::from_secs(2), "monitor port checked", || async {
        monitor.health_checks() >= 2
    })
    .await;
    assert_eq!(
        app.health_checks(),
        0,
        "the member's own port is not checked"
    );
    monitor.set_healthy(false);
    eventually(
        Duration::from_secs(2),
        "member down by its monitor",
        || async { !healthy(&dp, app.addr) },
    )
    .await;
    monitor.set_healthy(true);
    eventually(Duration::from_secs(2), "member up again", || async {
        healthy(&dp, app.addr)
    })
    .await;
    let c = client();
    assert_eq!(
        get(&c, &format!("http://127.0.0.1:{port}/")).await.unwrap(),
        (200, "app".into())
    );
}

/// A member that requires a PROXY header (v2) on every connection before
/// its HTTP/1.1 requests, as one behind a `proxy_protocol` pool does, and
/// answers `/health` with `health` (raw bytes) and anything else with "ok".
/// It counts the connections that came without a header.
async fn proxied_member(health: &'static [u8]) -> (std::net::SocketAddr, Arc<AtomicU64>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let refused = Arc::new(AtomicU64::new(0));
    let counted = refused.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let refused = counted.clone();
            tokio::spawn(async move {
                let mut sig = [0u8; 16];
                if s.read_exact(&mut sig).await.is_err() || &sig[..12] != b"\r\n\r\n\0\r\nQUIT\n" {
                    refused.fetch_add(1, SeqCst);
                    return;
                }
                let len = usize::from(u16::from_be_bytes([sig[14], sig[15]]));
                let mut rest = vec![0u8; len];
                if s.read_exact(&mut rest).await.is_err() {
                    return;
                }
                let mut buf = Vec::new();
                loop {
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        let mut more = [0u8; 4096];
                        match s.read(&mut more).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&more[..n]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    buf.drain(..end + 4);
                    let answer: &[u8] = if head.contains(" /health ") {
                        health
                    } else {
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
                    };
                    if s.write_all(answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, refused)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_send_the_pools_proxy_header_and_read_answers_as_traffic_does() {
    let (good, refused_good) =
        proxied_member(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await;
    // An answer traffic refuses (two lengths): the check refuses it too,
    // so the member is down rather than up and failing every request.
    let (bad, _) =
        proxied_member(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 2\r\n\r\nok")
            .await;
    let port = free_port();
    let dp = keel_tests::dataplane();
    dp.apply(&spec(&http_lb(
        port,
        &format!(
            "proxy_protocol: v2, health_check: {{ type: http, path: /health, interval: {INTERVAL_MS}ms, \
             timeout: 150ms, healthy_threshold: 1, unhealthy_threshold: 1 }}, members: {}",
            members(&[good, bad])
        ),
    )))
    .await
    .unwrap();
    let dp = &dp;
    eventually(
        Duration::from_secs(3),
        "the bad member down",
        || async move { !healthy(dp, bad) },
    )
    .await;
    // Several check rounds later the good member is still up.
    tokio::time::sleep(Duration::from_millis(INTERVAL_MS * 4)).await;
    assert!(healthy(dp, good), "{:?}", dp.members());
    assert_eq!(
        refused_good.load(SeqCst),
        0,
        "a check came without a PROXY header"
    );
    let c = client();
    for _ in 0..6 {
        let (status, body) = get(&c, &format!("http://127.0.0.1:{port}/")).await.unwrap();
        assert_eq!((status, body.as_str()), (200, "ok"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_on_another_port_sends_no_proxy_header() {
    // The members take PROXY headers on their traffic port; their health
    // endpoint is a plain HTTP server on another port.
    let health = HttpBackend::start("health").await;
    let echo = EchoBackend::start().await;
    let port = free_port();
    let dp = keel_tests::dataplane();
    dp.apply(&spec(&format!(
        "load_balancers:\n  - {{ name: l4, listeners: [ {{ port: {port}, protocol: tcp, bind: 127.0.0.1, default_pool: p }} ] }}\n\
         pools:\n  - {{ name: p, proxy_protocol: v1, health_check: {{ type: http, path: /health, port: {}, \
         interval: {INTERVAL_MS}ms, timeout: 150ms, healthy_threshold: 1, unhealthy_threshold: 1 }}, \
         members: [ {{ address: \"{}\" }} ] }}\n",
        health.addr.port(),
        echo.addr
    )))
    .await
    .unwrap();
    let checks = health.health_checks();
    let health = &health;
    eventually(
        Duration::from_secs(3),
        "two checks answered",
        || async move { health.health_checks() >= checks + 2 },
    )
    .await;
    assert!(healthy(&dp, echo.addr), "{:?}", dp.members());
}
