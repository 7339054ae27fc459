//! Hot reconfiguration: nothing dropped, removed things drain, then are cut.
//! Each data plane here serves on two worker threads, as a node does: every
//! listener has two sockets and two accept loops.

#![allow(clippy::unwrap_used)] // a failed unwrap is how a test fails

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keel_dataplane::{Dataplane, Workers};
use keel_tests::backend::{EchoBackend, HttpBackend};
use keel_tests::client::{client, client_no_reuse, get};
use keel_tests::{free_port, http_lb, spec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A data plane serving on two worker threads of its own.
fn two_workers() -> Dataplane {
    Dataplane::with_workers(Workers::start(2, false).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_changes_a_second_under_load_fail_no_request() {
    let mut b = Vec::new();
    for i in 0..4 {
        b.push(HttpBackend::start(&format!("b{i}")).await);
    }
    let echo = EchoBackend::start().await;
    let (port, tport, extra) = (free_port(), free_port(), free_port());
    let config = |i: usize| {
        // Rotate membership (never empty), change weights, switch the
        // listener between pools, and add/remove a whole listener.
        let app: Vec<String> = (0..4)
            .filter(|k| !(i + k).is_multiple_of(3))
            .map(|k| {
                format!(
                    "{{ address: \"{}\", weight: {} }}",
                    b[k].addr,
                    1 + (i + k) % 3
                )
            })
            .collect();
        let pool = if (i / 5).is_multiple_of(2) {
            "app"
        } else {
            "alt"
        };
        let extra_listener = if i.is_multiple_of(2) {
            format!("- {{ port: {extra}, protocol: http, bind: 127.0.0.1, default_pool: alt }}")
        } else {
            String::new()
        };
        format!(
            r#"
load_balancers:
  - name: web
    listeners:
      - {{ port: {port}, protocol: http, bind: 127.0.0.1, default_pool: {pool} }}
      - {{ port: {tport}, protocol: tcp, bind: 127.0.0.1, default_pool: echo }}
      {extra_listener}
pools:
  - {{ name: app, algorithm: {algo}, drain_timeout: 5s, members: [ {app} ] }}
  - {{ name: alt, drain_timeout: 5s, members: [ {{ address: "{b3}" }}, {{ address: "{b0}" }} ] }}
  - {{ name: echo, members: [ {{ address: "{echo}" }} ] }}
"#,
            algo = [
                "round_robin",
                "least_outstanding",
                "random_two",
                "source_hash"
            ][i % 4],
            app = app.join(", "),
            b0 = b[0].addr,
            b3 = b[3].addr,
            echo = echo.addr,
        )
    };
    let dp = Arc::new(two_workers());
    dp.apply(&spec(&config(0))).await.unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut clients = Vec::new();
    for n in 0..4 {
        let (stop, ok, failures) = (stop.clone(), ok.clone(), failures.clone());
        clients.push(tokio::spawn(async move {
            // Half the clients reuse connections, half open one per request.
            let c = if n % 2 == 0 {
                client()
            } else {
                client_no_reuse()
            };
            let url = format!("http://127.0.0.1:{port}/slow/{}", n * 3);
            while !stop.load(SeqCst) {
                match get(&c, &url).await {
                    Ok((200, _)) => {
                        ok.fetch_add(1, SeqCst);
                    }
                    other => failures.lock().unwrap().push(format!("http: {other:?}")),
                }
            }
        }));
    }
    {
        let (stop, ok, failures) = (stop.clone(), ok.clone(), failures.clone());
        clients.push(tokio::spawn(async move {
            while !stop.load(SeqCst) {
                let r = async {
                    let mut s = TcpStream::connect(("127.0.0.1", tport)).await?;
                    s.write_all(b"ping").await?;
                    s.shutdown().await?;
                    let mut out = Vec::new();
                    s.read_to_end(&mut out).await?;
                    Ok::<_, std::io::Error>(out)
                }
                .await;
                match r {
                    Ok(out) if out == b"pingbye" => {
                        ok.fetch_add(1, SeqCst);
                    }
                    other => failures.lock().unwrap().push(format!("tcp: {other:?}")),
                }
            }
        }));
    }

    let started = Instant::now();
    let mut ticks = tokio::time::interval(Duration::from_millis(100));
    for i in 1..=30 {
        ticks.tick().await;
        dp.apply(&spec(&config(i))).await.unwrap();
    }
    let elapsed = started.elapsed();
    stop.store(true, SeqCst);
    for c in clients {
        c.await.unwrap();
    }
    let failures = failures.lock().unwrap();
    let ok = ok.load(SeqCst);
    eprintln!(
        "30 applies in {elapsed:?}; {ok} requests ok, {} failed",
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(ok > 300, "too little traffic to mean anything: {ok}");
    assert_eq!(dp.version(), 31);
}

fn one_member(port: u16, member: std::net::SocketAddr, drain: &str) -> String {
    http_lb(
        port,
        &format!("drain_timeout: {drain}, members: [ {{ address: \"{member}\" }} ]"),
    )
}

/// A backend, and two workers serving it on `port` with drain time
/// `drain`; `other` is free for the listener that replaces it.
async fn listening(drain: &str) -> (HttpBackend, Dataplane, u16, u16) {
    let a = HttpBackend::start("a").await;
    let (port, other) = (free_port(), free_port());
    let dp = two_workers();
    dp.apply(&spec(&one_member(port, a.addr, drain)))
        .await
        .unwrap();
    (a, dp, port, other)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_member_finishes_in_flight_within_drain_then_is_cut() {
    let a = HttpBackend::start("a").await;
    let b = HttpBackend::start("b").await;
    let port = free_port();
    let dp = two_workers();
    dp.apply(&spec(&one_member(port, a.addr, "5s")))
        .await
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/slow/800");
    let slow = tokio::spawn(async move { get(&client(), &url).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    // a leaves: its in-flight request finishes, new ones go to b.
    dp.apply(&spec(&one_member(port, b.addr, "5s")))
        .await
        .unwrap();
    let c = client();
    assert_eq!(
        get(&c, &format!("http://127.0.0.1:{port}/")).await.unwrap(),
        (200, "b".into())
    );
    assert_eq!(slow.await.unwrap().unwrap(), (200, "a".into()));

    // With a short drain, a request that outlives it is cut.
    dp.apply(&spec(&one_member(port, b.addr, "300ms")))
        .await
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/slow/5000");
    let t = Instant::now();
    let slow = tokio::spawn(async move { get(&client(), &url).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    dp.apply(&spec(&one_member(port, a.addr, "300ms")))
        .await
        .unwrap();
    let r = slow.await.unwrap();
    assert!(
        !matches!(r, Ok((200, _))),
        "request outlived its drain: {r:?}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "cut late: {:?}",
        t.elapsed()
    );
    assert_eq!(
        get(&c, &format!("http://127.0.0.1:{port}/")).await.unwrap(),
        (200, "a".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_listener_stops_accepting_and_finishes_in_flight() {
    let (a, dp, port, other) = listening("5s").await;
    let url = format!("http://127.0.0.1:{port}/slow/600");
    let slow = tokio::spawn(async move { get(&client(), &url).await });
    tokio::time::sleep(Duration::from_millis(150)).await;
    dp.apply(&spec(&one_member(other, a.addr, "5s")))
        .await
        .unwrap();
    assert_eq!(slow.await.unwrap().unwrap(), (200, "a".into()));
    assert!(
        TcpStream::connect(("127.0.0.1", port)).await.is_err(),
        "old port still accepts"
    );
    assert_eq!(
        get(&client(), &format!("http://127.0.0.1:{other}/"))
            .await
            .unwrap()
            .0,
        200
    );
}

/// A removed listener closes its idle keep-alive connections at once, and
/// cuts one still busy when the drain time is over.
#[tokio::test]
async fn removed_listener_closes_idle_connections_and_cuts_busy_ones_at_drain_end() {
    let (a, dp, port, other) = listening("1s").await;
    let request = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut idle = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    idle.write_all(request("/").as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = idle.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    let mut busy = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    busy.write_all(request("/slow/5000").as_bytes())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;

    let removed = Instant::now();
    dp.apply(&spec(&one_member(other, a.addr, "1s")))
        .await
        .unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(3), idle.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "idle connection left open: {closed:?}"
    );
    assert!(
        removed.elapsed() < Duration::from_millis(500),
        "closed late"
    );
    let cut = tokio::time::timeout(Duration::from_secs(4), busy.read(&mut buf)).await;
    assert!(
        matches!(cut, Ok(Ok(0)) | Ok(Err(_))),
        "busy connection not cut: {cut:?}"
    );
    let waited = removed.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_millis(2500),
        "cut after {waited:?}, drain is 1 s"
    );
}

/// Every idle connection of a removed listener closes at once, on both
/// workers: each waits on its worker's signal with a place of its own in
/// the signal's list, and the signal wakes them all (places freed by
/// connections that closed earlier are taken again by later ones).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_listener_closes_all_its_idle_connections_on_every_worker() {
    let (a, dp, port, other) = listening("5s").await;
    let served = |mut s: TcpStream| async move {
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &buf[..n]);
        s
    };
    // Some come and go first, leaving free places behind them.
    for _ in 0..20 {
        let s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        drop(served(s).await);
    }
    let mut idle = Vec::new();
    for _ in 0..200 {
        let s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        idle.push(served(s).await);
    }

    let removed = Instant::now();
    dp.apply(&spec(&one_member(other, a.addr, "5s")))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    for (i, mut s) in idle.into_iter().enumerate() {
        let mut buf = [0u8; 64];
        let closed = tokio::time::timeout_at(deadline, s.read(&mut buf)).await;
        assert!(
            matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
            "idle connection {i} left open: {closed:?}"
        );
    }
    assert!(
        removed.elapsed() < Duration::from_secs(1),
        "closed after {:?}",
        removed.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_failure_keeps_the_old_plan() {
    let a = HttpBackend::start("a").await;
    let port = free_port();
    let dp = two_workers();
    dp.apply(&spec(&one_member(port, a.addr, "5s")))
        .await
        .unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap().port();
    let err = dp
        .apply(&spec(&one_member(busy, a.addr, "5s")))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains(&format!("cannot listen on 127.0.0.1:{busy}")),
        "{err}"
    );
    assert_eq!(dp.version(), 1);
    assert_eq!(
        get(&client(), &format!("http://127.0.0.1:{port}/"))
            .await
            .unwrap(),
        (200, "a".into())
    );
}

/// Before a VIP moves away: new connection attempts get no answer at all
/// (not a refusal, so clients retransmit), while a connection already open
/// finishes its requests.
#[tokio::test]
async fn a_quiesced_listener_ignores_new_connections_and_finishes_old_ones() {
    let backend = HttpBackend::start("a").await;
    let port = free_port();
    let dp = two_workers();
    dp.apply(&spec(&http_lb(
        port,
        &format!("members: [ {{ address: \"{}\" }} ]", backend.addr),
    )))
    .await
    .unwrap();
    let addr = format!("127.0.0.1:{port}");
    let mut open = TcpStream::connect(&addr).await.unwrap();
    keel_tests::eventually(
        Duration::from_secs(2),
        "the connection accepted",
        || async { dp.active_connections() == 1 },
    )
    .await;

    let left = dp
        .quiesce(&["127.0.0.1".parse().unwrap()], Duration::from_millis(100))
        .await;
    assert_eq!(left, 1, "the open connection is still there");

    let attempt = tokio::time::timeout(Duration::from_millis(500), TcpStream::connect(&addr)).await;
    assert!(
        attempt.is_err(),
        "a new connection got an answer: {attempt:?}"
    );

    open.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    open.read_to_string(&mut answer).await.unwrap();
    // Answered as HTTP/1.1, the highest version of the client's major one
    // (RFC 9110 §2.5), as nginx does.
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    dp.shutdown(Duration::from_secs(1)).await;
}
