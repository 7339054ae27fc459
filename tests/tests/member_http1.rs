//! How Keel speaks HTTP/1.1 to members, against members scripted byte by
//! byte: every way a response body can be delimited, informational
//! answers, members that close idle connections, broken responses, and a
//! member that answers before it has read the request body.

#![allow(clippy::unwrap_used)] // a failed unwrap is how a test fails

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use keel_dataplane::Dataplane;
use keel_tests::client::{client, get};
use keel_tests::{free_port, http_lb, spec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What a scripted member does with the `n`th request (from 0) on one of
/// its connections: the bytes to answer, and whether to close afterwards.
/// `None` closes the connection without answering.
type Script = fn(head: &str, n: usize) -> Option<(Vec<u8>, bool)>;

/// A member that reads request heads (and `content-length` bodies) and
/// answers them by `script`. Counts the connections it accepted.
struct Scripted {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
}

impl Scripted {
    async fn start(script: Script) -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = connections.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                counted.fetch_add(1, SeqCst);
                tokio::spawn(serve(s, script));
            }
        });
        Scripted { addr, connections }
    }
}

async fn serve(mut s: TcpStream, script: Script) {
    let mut buf = Vec::new();
    for n in 0.. {
        let Some(head) = read_head(&mut s, &mut buf).await else {
            return;
        };
        let length = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
            })
            .unwrap_or(0);
        while buf.len() < length {
            let mut more = [0u8; 4096];
            match s.read(&mut more).await {
                Ok(0) | Err(_) => return,
                Ok(k) => buf.extend_from_slice(&more[..k]),
            }
        }
        buf.drain(..length);
        match script(&head, n) {
            None => return,
            Some((answer, close)) => {
                if s.write_all(&answer).await.is_err() || close {
                    return;
                }
            }
        }
    }
}

/// Reads one request head off `s` (what follows stays in `buf`).
async fn read_head(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            buf.drain(..end + 4);
            return Some(head);
        }
        let mut more = [0u8; 4096];
        match s.read(&mut more).await {
            Ok(0) | Err(_) => return None,
            Ok(k) => buf.extend_from_slice(&more[..k]),
        }
    }
}

/// A data plane with one HTTP listener in front of `member`.
async fn keel_before(member: SocketAddr) -> (u16, Dataplane) {
    let port = free_port();
    let dp = keel_tests::dataplane();
    let members = format!("response_timeout: 2s, members: [ {{ address: \"{member}\" }} ]");
    dp.apply(&spec(&http_lb(port, &members))).await.unwrap();
    (port, dp)
}

/// Sends raw requests on one client connection and reads until `expect`
/// answers have come or the proxy closes; returns all it read.
async fn raw(port: u16, requests: &[u8], close_after: Duration) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(requests).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(close_after, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_bodies_with_extensions_and_trailers_keep_the_connection() {
    let member = Scripted::start(|_, _| {
        let body = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-digest\r\n\r\n\
            5;note=x\r\nhello\r\n6\r\n world\r\n0\r\nx-digest: abc\r\n\r\n";
        Some((body.to_vec(), false))
    })
    .await;
    let (port, _dp) = keel_before(member.addr).await;
    let c = client();
    for _ in 0..5 {
        let (status, body) = get(&c, &format!("http://127.0.0.1:{port}/")).await.unwrap();
        assert_eq!((status, body.as_str()), (200, "hello world"));
    }
    // A client that accepts trailers gets them.
    let out = raw(
        port,
        b"GET / HTTP/1.1\r\nHost: t\r\nTE: trailers\r\nConnection: close\r\n\r\n",
        Duration::from_secs(3),
    )
    .await;
    assert!(out.contains("hello") && out.contains(" world"), "{out}");
    assert!(out.to_ascii_lowercase().contains("x-digest: abc"), "{out}");
    // The body ended cleanly each time: one connection carried every
    // request (one per worker: each keeps its own).
    let most = keel_tests::test_workers();
    assert!(member.connections.load(SeqCst) <= most);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_delimited_by_close_and_http_1_0_members() {
    let member = Scripted::start(|_, _| {
        Some((
            b"HTTP/1.0 200 OK\r\ncontent-type: text/plain\r\n\r\nold school".to_vec(),
            true,
        ))
    })
    .await;
    let (port, _dp) = keel_before(member.addr).await;
    let c = client();
    for _ in 0..3 {
        let (status, body) = get(&c, &format!("http://127.0.0.1:{port}/")).await.unwrap();
        assert_eq!((status, body.as_str()), (200, "old school"));
    }
    // Such a connection cannot carry a second request.
    assert_eq!(member.connections.load(SeqCst), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_204_and_304_answers_have_no_body() {
    let member = Scripted::start(|head, _| {
        let answer: &[u8] = if head.starts_with("HEAD") {
            b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n"
        } else if head.starts_with("GET /204") {
            b"HTTP/1.1 204 No Content\r\n\r\n"
        } else if head.starts_with("GET /304") {
            b"HTTP/1.1 304 Not Modified\r\netag: \"v1\"\r\n\r\n"
        } else {
            b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\ndone"
        };
        Some((answer.to_vec(), false))
    })
    .await;
    let (port, _dp) = keel_before(member.addr).await;
    let out = raw(
        port,
        b"HEAD / HTTP/1.1\r\nHost: t\r\n\r\nGET /204 HTTP/1.1\r\nHost: t\r\n\r\n\
          GET /304 HTTP/1.1\r\nHost: t\r\n\r\nGET /end HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        Duration::from_secs(3),
    )
    .await;
    let statuses: Vec<&str> = out.lines().filter(|l| l.starts_with("HTTP/1.1 ")).collect();
    assert_eq!(
        statuses,
        [
            "HTTP/1.1 200 OK",
            "HTTP/1.1 204 No Content",
            "HTTP/1.1 304 Not Modified",
            "HTTP/1.1 200 OK"
        ],
        "{out}"
    );
    assert!(
        out.contains("content-length: 1000"),
        "HEAD keeps its length: {out}"
    );
    assert!(out.ends_with("done"), "{out}");
    assert_eq!(member.connections.load(SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn informational_answers_are_passed_over() {
    let member = Scripted::start(|_, _| {
        let answer =
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </app.css>\r\n\r\n\
            HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
        Some((answer.to_vec(), false))
    })
    .await;
    let (port, _dp) = keel_before(member.addr).await;
    let (status, body) = get(&client(), &format!("http://127.0.0.1:{port}/"))
        .await
        .unwrap();
    assert_eq!((status, body.as_str()), (200, "ok"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_closing_idle_connections_costs_no_request() {
    // Each connection serves one request; a second request on it is met
    // by a close, as when a member's keep-alive timeout crosses a request.
    let member = Scripted::start(|_, n| {
        (n == 0).then(|| {
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec(),
                false,
            )
        })
    })
    .await;
    let (port, _dp) = keel_before(member.addr).await;
    let c = client();
    for i in 0..20 {
        let (status, body) = get(&c, &format!("http://127.0.0.1:{port}/")).await.unwrap();
        assert_eq!((status, body.as_str()), (200, "ok"), "request {i}");
    }
    assert!(member.connections.load(SeqCst) >= 20);

    // A request with a body may have been acted on: it is not sent twice.
    // (After a GET on the same client connection, so on the same worker,
    // which leaves that worker a member connection to reuse.)
    let out = raw(
        port,
        b"GET / HTTP/1.1\r\nHost: t\r\n\r\n\
        POST /order HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
        Duration::from_secs(3),
    )
    .await;
    let (get, post) = out.split_at(out.find("HTTP/1.1 502").unwrap_or(0));
    assert!(
        get.starts_with("HTTP/1.1 200") && get.ends_with("ok"),
        "{out}"
    );
    assert!(post.starts_with("HTTP/1.1 502"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_responses_are_answered_502() {
    let member = Scripted::start(|head, _| {
        let answer: Vec<u8> = if head.starts_with("GET /status") {
            b"HTTP/1.1 2000 Nope\r\n\r\n".to_vec()
        } else if head.starts_with("GET /lengths") {
            b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\nabcd".to_vec()
        } else if head.starts_with("GET /huge") {
            let mut h = b"HTTP/1.1 200 OK\r\n".to_vec();
            for i in 0..2000 {
                h.extend_from_slice(format!("x-filler-{i}: {}\r\n", "y".repeat(40)).as_bytes());
            }
            h
        } else if head.starts_with("GET /short") {
            b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\ntoo short".to_vec()
        } else {
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec()
        };
        Some((answer, true))
    })
    .await;
    let (port, _dp) = keel_before(member.addr).await;
    let c = client();
    for path in ["/status", "/lengths", "/huge"] {
        let (status, _) = get(&c, &format!("http://127.0.0.1:{port}{path}"))
            .await
            .unwrap();
        assert_eq!(status, 502, "{path}");
    }
    // A body cut short: a 502 while nothing of the answer went out yet,
    // else the client's connection is cut; never a whole 200.
    let short = get(&c, &format!("http://127.0.0.1:{port}/short")).await;
    assert!(matches!(short, Ok((502, _)) | Err(_)), "{short:?}");
    // Nothing of that harmed the next request.
    let (status, body) = get(&c, &format!("http://127.0.0.1:{port}/")).await.unwrap();
    assert_eq!((status, body.as_str()), (200, "ok"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_answer_reaches_the_client_before_its_upload_ends() {
    early_answer(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_answer_reaches_the_client_when_the_member_then_closes() {
    // The member closes with the body unread: its kernel resets the
    // connection, and Keel's next write fails. The answer it sent is still
    // there to read (as HAProxy and nginx read it).
    early_answer(false).await;
}

/// A member refuses an upload from its head, without reading the body,
/// then drains the body (`keeps_reading`) or closes at once.
async fn early_answer(keeps_reading: bool) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                if read_head(&mut s, &mut buf).await.is_some() {
                    if !keeps_reading {
                        // Until Keel's writes wait on this side's full buffers.
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    let _ = s
                        .write_all(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 8\r\nconnection: close\r\n\r\ntoo big\n")
                        .await;
                    let mut sink = [0u8; 65536];
                    while keeps_reading && matches!(s.read(&mut sink).await, Ok(n) if n > 0) {}
                }
            });
        }
    });
    let (port, _dp) = keel_before(addr).await;
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let size = 64 * 1024 * 1024;
    s.write_all(
        format!("PUT /upload HTTP/1.1\r\nHost: t\r\nContent-Length: {size}\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let (mut rd, mut wr) = s.into_split();
    // The answer must come while most of the body is unsent: sent slowly,
    // or (to the member that closes) as fast as Keel takes it.
    let sender = tokio::spawn(async move {
        let chunk = vec![b'x'; 16 * 1024];
        for _ in 0..size / chunk.len() {
            if wr.write_all(&chunk).await.is_err() {
                return;
            }
            if keeps_reading {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    });
    let mut head = vec![0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), rd.read(&mut head))
        .await
        .expect("no answer while the upload was under way")
        .unwrap();
    assert!(
        head[..n].starts_with(b"HTTP/1.1 413"),
        "{}",
        String::from_utf8_lossy(&head[..n])
    );
    sender.abort();
}

/// Sends `requests` on one client connection as a CDN in front of Keel
/// would, reading until the proxy closes or `wait` passes.
async fn pipelined(port: u16, requests: &[u8], wait: Duration) -> String {
    raw(port, requests, wait).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_sending_both_lengths_cannot_desync_the_client_connection() {
    // The first answer is chunked and also claims `Content-Length: 5`; its
    // chunk carries a whole forged response. Trusting the length would end
    // the first body after 5 bytes and serve the forgery as the answer to
    // the client's second request.
    let member = Scripted::start(|head, _| {
        let answer: Vec<u8> = if head.contains(" /first ") {
            let forged = "HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nforged";
            let chunk = format!("hello{forged}");
            format!(
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n",
                chunk.len()
            )
            .into_bytes()
        } else {
            b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nsecond".to_vec()
        };
        Some((answer, false))
    })
    .await;
    let (port, _dp) = keel_before(member.addr).await;
    // Both the server loop (a plain GET) and hyper's server (after a body)
    // carry the answers.
    for first in [
        &b"GET /first HTTP/1.1\r\nHost: t\r\n\r\n"[..],
        &b"POST /first HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\n\r\nx"[..],
    ] {
        let mut requests = first.to_vec();
        requests.extend_from_slice(b"GET /second HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        let out = pipelined(port, &requests, Duration::from_secs(3)).await;
        // Read as a client reads: each answer by its own framing.
        let answers = framed(&out);
        assert_eq!(answers.len(), 2, "two answers, no more: {out}");
        assert_eq!(
            answers[0].1,
            "hello".to_owned() + "HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nforged",
            "{out}"
        );
        assert_eq!(
            answers[1].1, "second",
            "the second answer is the member's second response: {out}"
        );
    }
}

/// Splits what a client read into (head, body) answers, each delimited by
/// its own `content-length` or chunked coding, as a client would.
fn framed(mut out: &str) -> Vec<(String, String)> {
    let mut answers = Vec::new();
    while let Some(end) = out.find("\r\n\r\n") {
        let head = out[..end].to_ascii_lowercase();
        out = &out[end + 4..];
        let field = |name: &str| {
            head.lines()
                .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
        };
        let body = if field("transfer-encoding:").as_deref() == Some("chunked") {
            let mut body = String::new();
            while let Some(line_end) = out.find("\r\n") {
                let size = usize::from_str_radix(&out[..line_end], 16).unwrap();
                out = &out[line_end + 2..];
                if size == 0 {
                    out = out.strip_prefix("\r\n").unwrap_or(out);
                    break;
                }
                body.push_str(&out[..size]);
                out = &out[size + 2..];
            }
            body
        } else {
            let n: usize = field("content-length:").map_or(out.len(), |v| v.parse().unwrap());
            let body = out[..n.min(out.len())].to_owned();
            out = &out[n.min(out.len())..];
            body
        };
        answers.push((head, body));
    }
    answers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_response_lengths_are_refused() {
    let member = Scripted::start(|head, _| {
        let answer: &[u8] = if head.starts_with("GET /plus") {
            b"HTTP/1.1 200 OK\r\ncontent-length: +5\r\n\r\nhello"
        } else if head.starts_with("GET /space") {
            b"HTTP/1.1 200 OK\r\ncontent-length: 1 2\r\n\r\nhello"
        } else if head.starts_with("GET /hex") {
            b"HTTP/1.1 200 OK\r\ncontent-length: 0x5\r\n\r\nhello"
        } else if head.starts_with("GET /overflow") {
            b"HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999999\r\n\r\nhello"
        } else if head.starts_with("GET /list") {
            b"HTTP/1.1 200 OK\r\ncontent-length: 5, 6\r\n\r\nhello"
        } else if head.starts_with("GET /chunk-plus") {
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n+5\r\nhello\r\n0\r\n\r\n"
        } else if head.starts_with("GET /chunk-huge") {
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n10000000000000005\r\nhello\r\n0\r\n\r\n"
        } else {
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
        };
        Some((answer.to_vec(), true))
    })
    .await;
    let (port, dp) = keel_before(member.addr).await;
    let c = client();
    for path in ["/plus", "/space", "/hex", "/overflow", "/list"] {
        let (status, body) = get(&c, &format!("http://127.0.0.1:{port}{path}"))
            .await
            .unwrap();
        assert_eq!(status, 502, "{path}: {body}");
    }
    // A body that fails before any byte of the answer went out: the
    // client still gets an answer, a 502, not a connection cut.
    for path in ["/chunk-plus", "/chunk-huge"] {
        let r = get(&c, &format!("http://127.0.0.1:{port}{path}")).await;
        assert!(matches!(&r, Ok((502, _))), "{path}: {r:?}");
    }
    let (status, body) = get(&c, &format!("http://127.0.0.1:{port}/")).await.unwrap();
    assert_eq!((status, body.as_str()), (200, "ok"));
    // The listener's figures are what its clients got: seven 5xx answers,
    // though two of the member's heads said 200.
    let counters = dp.listener_counters();
    assert_eq!(counters.len(), 1);
    assert_eq!(counters[0].2.errors, 7, "5xx answers counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_after_a_response_body_end_the_member_connection() {
    // Each answer carries a second, unasked response after its body: the
    // connection must not be reused, or the next client gets those bytes.
    let member = Scripted::start(|_, n| {
        let answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nr{n:02}HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nextra"
        );
        Some((answer.into_bytes(), false))
    })
    .await;
    let (port, _dp) = keel_before(member.addr).await;
    let c = client();
    for _ in 0..5 {
        let (status, body) = get(&c, &format!("http://127.0.0.1:{port}/")).await.unwrap();
        assert_eq!((status, body.as_str()), (200, "r00"));
    }
}

/// POST heads the member behind `only_idempotent_requests_are_sent_twice` read.
static POSTS_SEEN: AtomicUsize = AtomicUsize::new(0);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_idempotent_requests_are_sent_twice() {
    // Each connection answers its first request and closes on the second
    // after reading its head, as a member restarting or timing out might.
    let member = Scripted::start(|head, n| {
        if head.starts_with("POST") {
            POSTS_SEEN.fetch_add(1, SeqCst);
        }
        (n == 0).then(|| {
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec(),
                false,
            )
        })
    })
    .await;
    let (port, _dp) = keel_before(member.addr).await;
    // `request` after a GET on the same client connection (so on the same
    // worker), which leaves the member connection it reuses: its answer.
    let after_warm = |request: &'static [u8]| async move {
        let warm = b"GET /warm HTTP/1.1\r\nHost: t\r\n\r\n";
        let out = raw(port, &[&warm[..], request].concat(), Duration::from_secs(3)).await;
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        out.get(1..)
            .and_then(|rest| rest.find("HTTP/1.1 ").map(|at| rest[at..].to_owned()))
            .unwrap_or_default()
    };
    // DELETE is idempotent: the failed attempt is repeated on a new connection.
    let out = after_warm(b"DELETE /item HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    // An empty POST reached the member (its head was read): the member
    // may have acted on it, so it is not sent again.
    let out = after_warm(
        b"POST /order HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 502"), "{out}");
    assert_eq!(POSTS_SEEN.load(SeqCst), 1, "the POST was sent once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_member_connections_the_member_closed_are_released() {
    // The member closes every connection 100 ms after its answer; Keel's
    // end must not linger half-closed (CLOSE_WAIT) in the idle list.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let closed = Arc::new(AtomicUsize::new(0));
    let counted = closed.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let counted = counted.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                if read_head(&mut s, &mut buf).await.is_some() {
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .await;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                drop(s);
                counted.fetch_add(1, SeqCst);
            });
        }
    });
    let (port, _dp) = keel_before(addr).await;
    // Several connections at once, so several go idle.
    let mut requests = tokio::task::JoinSet::new();
    for _ in 0..8 {
        requests.spawn(async move {
            let c = keel_tests::client::client_no_reuse();
            get(&c, &format!("http://127.0.0.1:{port}/")).await.unwrap()
        });
    }
    while let Some(answer) = requests.join_next().await {
        assert_eq!(answer.unwrap().0, 200);
    }
    let closed = &closed;
    keel_tests::eventually(
        Duration::from_secs(3),
        "the member closed them all",
        || async move { closed.load(SeqCst) >= 8 },
    )
    .await;
    keel_tests::eventually(
        Duration::from_secs(3),
        "no half-closed member connection",
        || async move { half_closed_to(addr.port()) == 0 },
    )
    .await;
}

/// Sockets in CLOSE_WAIT whose peer is loopback port `port`.
fn half_closed_to(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            cols.len() > 3 && cols[2].ends_with(&format!(":{port:04X}")) && cols[3] == "08"
        })
        .count()
}

/// A member that answers each request with the lines of its head that
/// start with `expect` or `cookie` (lower-cased), or `none`.
fn echo_fields(head: &str, _: usize) -> Option<(Vec<u8>, bool)> {
    let seen: Vec<String> = head
        .lines()
        .map(str::to_ascii_lowercase)
        .filter(|l| l.starts_with("expect") || l.starts_with("cookie"))
        .collect();
    let body = if seen.is_empty() {
        "none".to_owned()
    } else {
        seen.join("\n")
    };
    Some((
        format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
        false,
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_continue_is_answered_by_keel_and_not_forwarded() {
    let member = Scripted::start(echo_fields).await;
    let (port, _dp) = keel_before(member.addr).await;
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(
        b"POST /up HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 5\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut interim = [0u8; 25];
    tokio::time::timeout(Duration::from_secs(3), s.read_exact(&mut interim))
        .await
        .expect("a 100 Continue")
        .unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    s.write_all(b"hello").await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut out)).await;
    let out = String::from_utf8_lossy(&out);
    assert!(
        out.starts_with("HTTP/1.1 200"),
        "one interim answer only: {out}"
    );
    assert!(out.ends_with("none"), "the member got no Expect: {out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_clients_split_cookies_reach_an_http1_member_joined() {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let member = Scripted::start(echo_fields).await;
    let (port, _dp) = keel_before(member.addr).await;
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    // RFC 9113 §8.2.3: HTTP/2 may carry one cookie per field.
    let req = http::Request::get("http://t/")
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .header("cookie", "c=3")
        .body(Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "cookie: a=1; b=2; c=3");
}
