//! Hostile clients get the right error or a timeout, and never disturb a
//! well-behaved client running at the same time.

#![allow(clippy::unwrap_used)] // a failed unwrap is how a test fails

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keel_dataplane::Dataplane;
use keel_tests::backend::{EchoBackend, HttpBackend};
use keel_tests::client::{client, get};
use keel_tests::{free_port, raise_fd_limit, spec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Fixture {
    _dp: Dataplane,
    _web: HttpBackend,
    _echo: EchoBackend,
    http: u16,
    tcp: u16,
}

async fn fixture() -> Fixture {
    raise_fd_limit();
    let web = HttpBackend::start("web").await;
    let echo = EchoBackend::start().await;
    let (http, tcp) = (free_port(), free_port());
    let dp = keel_tests::dataplane();
    dp.apply(&spec(&format!(
        r#"
load_balancers:
  - name: lb
    listeners:
      - {{ port: {http}, protocol: http, bind: 127.0.0.1, default_pool: web, header_timeout: 500ms }}
      - {{ port: {tcp}, protocol: tcp, bind: 127.0.0.1, default_pool: echo, idle_timeout: 2s }}
pools:
  - {{ name: web, members: [ {{ address: "{}" }} ] }}
  - {{ name: echo, members: [ {{ address: "{}" }} ] }}
"#,
        web.addr, echo.addr
    )))
    .await
    .unwrap();
    Fixture {
        _dp: dp,
        _web: web,
        _echo: echo,
        http,
        tcp,
    }
}

/// A good client requesting every 10 ms until stopped; it records every
/// failure and its slowest request.
struct GoodClient {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    slowest: Arc<Mutex<Duration>>,
    task: tokio::task::JoinHandle<()>,
}

impl GoodClient {
    fn start(port: u16) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let slowest = Arc::new(Mutex::new(Duration::ZERO));
        let (s, o, f, sl) = (stop.clone(), ok.clone(), failures.clone(), slowest.clone());
        let task = tokio::spawn(async move {
            let c = client();
            let url = format!("http://127.0.0.1:{port}/");
            while !s.load(SeqCst) {
                let t = Instant::now();
                match get(&c, &url).await {
                    Ok((200, _)) => {
                        o.fetch_add(1, SeqCst);
                    }
                    other => f.lock().unwrap().push(format!("{other:?}")),
                }
                let took = t.elapsed();
                {
                    let mut m = sl.lock().unwrap();
                    *m = (*m).max(took);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        GoodClient {
            stop,
            ok,
            failures,
            slowest,
            task,
        }
    }

    async fn finish(self) {
        // The bad input may be over in milliseconds: the good client gets
        // a few more requests in before it is judged.
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.ok.load(SeqCst) <= 10 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.stop.store(true, SeqCst);
        self.task.await.unwrap();
        let failures = self.failures.lock().unwrap();
        assert!(
            failures.is_empty(),
            "good client failed: {:?}",
            &failures[..failures.len().min(5)]
        );
        assert!(self.ok.load(SeqCst) > 10, "good client barely ran");
        let slowest = *self.slowest.lock().unwrap();
        assert!(
            slowest < Duration::from_millis(500),
            "good client slowed to {slowest:?}"
        );
    }
}

/// Sends `bytes` (ignoring write errors: the server may close early) and
/// returns what comes back before the server closes, within 5 s.
async fn exchange(port: u16, bytes: Vec<u8>) -> String {
    let s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let (mut r, mut w) = s.into_split();
    let writer = tokio::spawn(async move {
        let _ = w.write_all(&bytes).await;
        w
    });
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), r.read_to_end(&mut out)).await;
    drop(writer);
    String::from_utf8_lossy(&out).into_owned()
}

fn status_of(response: &str) -> &str {
    response.split_whitespace().nth(1).unwrap_or("none")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_4xx() {
    let f = fixture().await;
    let good = GoodClient::start(f.http);

    let r = exchange(f.http, b"\x16\x03\x01\x02\x00garbage\r\n\r\n".to_vec()).await;
    assert_eq!(status_of(&r), "400", "garbage: {r}");

    let mut big = b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 70 * 1024));
    big.extend(b"\r\n\r\n");
    let r = exchange(f.http, big).await;
    assert_eq!(status_of(&r), "431", "oversized header: {r}");

    let mut many = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
    for i in 0..150 {
        many.extend(format!("X-H{i}: v\r\n").as_bytes());
    }
    many.extend(b"\r\n");
    let r = exchange(f.http, many).await;
    assert_eq!(status_of(&r), "431", "too many headers: {r}");

    let mut long = b"GET /".to_vec();
    long.extend(std::iter::repeat_n(b'a', 1024 * 1024));
    long.extend(b" HTTP/1.1\r\nHost: a\r\n\r\n");
    let r = exchange(f.http, long).await;
    assert!(
        ["414", "431"].contains(&status_of(&r)),
        "1 MB request line: {r}"
    );

    let r = exchange(
        f.http,
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: nope\r\n\r\n".to_vec(),
    )
    .await;
    assert_eq!(status_of(&r), "400", "bad content-length: {r}");

    good.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_is_cut_at_the_header_timeout() {
    let f = fixture().await;
    let good = GoodClient::start(f.http);
    let mut s = TcpStream::connect(("127.0.0.1", f.http)).await.unwrap();
    let t = Instant::now();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n").await.unwrap();
    // Trickle a byte of header every 100 ms; the head never completes.
    let mut closed_after = None;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if s.write_all(b"X").await.is_err() {
            closed_after = Some(t.elapsed());
            break;
        }
        // Any answer (a 408, or end of stream) means the server gave up on us.
        let mut buf = [0u8; 256];
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(1), s.read(&mut buf)).await {
            closed_after = Some(t.elapsed());
            break;
        }
    }
    let after = closed_after.expect("slowloris connection never closed");
    assert!(
        after < Duration::from_millis(1500),
        "closed only after {after:?}"
    );
    good.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_flood_does_not_starve_others() {
    let f = fixture().await;
    let good = GoodClient::start(f.http);
    // Hundreds of connections that never send a byte, on both listeners.
    let mut idle = Vec::new();
    for _ in 0..400 {
        idle.push(TcpStream::connect(("127.0.0.1", f.http)).await.unwrap());
        idle.push(TcpStream::connect(("127.0.0.1", f.tcp)).await.unwrap());
    }
    // TCP still works for a good client during the flood.
    let mut s = TcpStream::connect(("127.0.0.1", f.tcp)).await.unwrap();
    s.write_all(b"hi").await.unwrap();
    s.shutdown().await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    assert_eq!(out, b"hibye");
    tokio::time::sleep(Duration::from_millis(800)).await;
    // The silent HTTP connections have been closed by the header timeout.
    let mut closed = 0;
    for s in idle.iter_mut().step_by(2) {
        let mut b = [0u8; 1];
        if let Ok(Ok(0)) = tokio::time::timeout(Duration::from_millis(5), s.read(&mut b)).await {
            closed += 1;
        }
    }
    assert_eq!(
        closed, 400,
        "silent HTTP connections left open past the header timeout"
    );
    good.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_attempts_are_refused_and_never_forwarded() {
    let f = fixture().await;
    // Both Content-Length and Transfer-Encoding: the chunked coding
    // decides, Content-Length is dropped before forwarding, and the
    // connection closes after the response (RFC 9112 §6.3). The member
    // gets one well-framed request; what follows the body is never read.
    let before = f._web.hits();
    let r = exchange(
        f.http,
        b"POST /headers HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(),
    )
    .await;
    assert_eq!(r.matches("HTTP/1.1 ").count(), 1, "one response only: {r}");
    assert_eq!(
        f._web.hits(),
        before + 1,
        "the smuggled request reached the member"
    );
    let seen = f._web.last_headers();
    assert!(!seen.contains("content-length"), "{seen}");

    // Two equal Content-Length lines are one length (RFC 9110 §8.6 lets a
    // recipient collapse them):
    // nothing is ambiguous, the member gets one request with one length.
    let before = f._web.hits();
    let r = exchange(
        f.http,
        b"POST /headers HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 4\r\nConnection: close\r\n\r\nabcd".to_vec(),
    )
    .await;
    assert_eq!(status_of(&r), "200", "{r}");
    assert_eq!(f._web.hits(), before + 1);
    assert_eq!(
        f._web.last_headers().matches("content-length: 4\n").count(),
        1
    );

    let cases: [(&str, &[u8]); 5] = [
        (
            "two different content-lengths",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 40\r\n\r\nabcdGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
        ),
        (
            "content-length list",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4, 4\r\n\r\nabcd",
        ),
        (
            "obs-fold",
            b"GET / HTTP/1.1\r\nHost: a\r\nX-Folded: one\r\n two\r\n\r\n",
        ),
        (
            "invalid chunk size",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        ),
        (
            "transfer-encoding not ending in chunked",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        ),
    ];
    for (what, bytes) in cases {
        let before = f._web.hits();
        let r = exchange(f.http, bytes.to_vec()).await;
        assert_eq!(status_of(&r), "400", "{what}: {r}");
        assert!(!r.contains("200 OK"), "{what}: a request got through: {r}");
        assert_eq!(f._web.hits(), before, "{what}: the member saw a request");
    }
}
