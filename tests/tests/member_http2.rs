//! How Keel speaks HTTP/2 to members, against a member scripted frame by
//! frame: one that goes away (GOAWAY) or refuses streams before it takes
//! a request, as servers do when they end a connection after so many
//! requests (nginx: 1,000) or shut down.

#![allow(clippy::unwrap_used)] // a failed unwrap is how a test fails

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use keel_dataplane::Dataplane;
use keel_tests::client::{client, get};
use keel_tests::{free_port, http_lb, spec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const DATA: u8 = 0x0;
const SETTINGS: u8 = 0x4;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const GOAWAY: u8 = 0x7;
const END_STREAM: u8 = 0x1;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len().to_be_bytes();
    let mut f = vec![len[5], len[6], len[7], kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// What the member does with the first request of its first connection.
#[derive(Clone, Copy)]
enum First {
    /// GOAWAY, NO_ERROR, naming stream 0 as the last it took.
    GoAway,
    /// RST_STREAM with REFUSED_STREAM.
    Refuse,
    /// GOAWAY with INTERNAL_ERROR, naming stream 0 as the last it took.
    GoAwayWithError,
    /// GOAWAY naming this request's stream as the last it took (with
    /// INTERNAL_ERROR if `.0`, else NO_ERROR), then the connection closed
    /// unanswered: it may have been acted on.
    TookItAndLeft(bool),
    /// One stream at a time (`SETTINGS_MAX_CONCURRENT_STREAMS` 1): the
    /// first request held for a second, then GOAWAY, NO_ERROR, naming it
    /// as the last taken, and its answer.
    OneAtATimeThenAway,
    /// One stream at a time, the first request held for 600 ms, then
    /// answered.
    OneAtATime,
    /// One stream at a time and windows of 0 bytes: the first request
    /// answered at once, before its body is in (so Keel's side of its
    /// stream stays open, the body waiting for window), then, 800 ms
    /// later, GOAWAY naming it as the last taken, and the connection
    /// closed. A request Keel sent meanwhile waited in h2 for a free
    /// stream.
    AnswerEarlyThenAway,
    /// No streams at all (`SETTINGS_MAX_CONCURRENT_STREAMS` 0), on every
    /// connection it is given `first` for.
    NoStreams,
    /// No SETTINGS (its preface): silent after the client's.
    Silent,
    /// Windows of 0 bytes, and REFUSED_STREAM: the request's body was
    /// waiting for window when the stream was refused.
    RefuseWithoutWindow,
    /// Windows of 100,000 bytes, and GOAWAY, NO_ERROR, no stream taken,
    /// once 70,000 bytes of the first request's body are in: more than
    /// Keel keeps to send again.
    AwayAfterBody,
}

/// A member that answers every request `200 second` (once its body is
/// in) but the first of its first connection, which it treats as `first`
/// says. Counts the requests it answered and the connections it took, and
/// keeps the request body bytes it answered.
struct Member {
    addr: SocketAddr,
    answered: Arc<AtomicUsize>,
    connections: Arc<AtomicUsize>,
    /// Connections Keel closed (or the member ended).
    closed: Arc<AtomicUsize>,
    bodies: Arc<Mutex<Vec<u8>>>,
}

async fn member(first: First) -> Member {
    member_of(first, 1).await
}

/// The same, treating the first request of each of its first `times`
/// connections as `first` says.
async fn member_of(first: First, times: usize) -> Member {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let answered = Arc::new(AtomicUsize::new(0));
    let connections = Arc::new(AtomicUsize::new(0));
    let closed = Arc::new(AtomicUsize::new(0));
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let (a, c, b, d) = (
        answered.clone(),
        connections.clone(),
        bodies.clone(),
        closed.clone(),
    );
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let first = (c.fetch_add(1, SeqCst) < times).then_some(first);
            let served = serve(s, first, a.clone(), b.clone());
            let d = d.clone();
            tokio::spawn(async move {
                served.await;
                d.fetch_add(1, SeqCst);
            });
        }
    });
    Member {
        addr,
        answered,
        connections,
        closed,
        bodies,
    }
}

/// `:status: 200` (static entry 8), then the body, on `stream`.
fn second(stream: u32) -> Vec<u8> {
    [
        frame(HEADERS, 0x4, stream, b"\x88"),
        frame(DATA, END_STREAM, stream, b"second"),
    ]
    .concat()
}

async fn serve(
    mut s: TcpStream,
    mut first: Option<First>,
    answered: Arc<AtomicUsize>,
    bodies: Arc<Mutex<Vec<u8>>>,
) {
    let mut preface = [0u8; 24];
    if s.read_exact(&mut preface).await.is_err() {
        return;
    }
    // SETTINGS_MAX_CONCURRENT_STREAMS (3) for the first connection only.
    let settings: &[u8] = match first {
        Some(First::OneAtATimeThenAway | First::OneAtATime) => &[0, 3, 0, 0, 0, 1],
        // And SETTINGS_INITIAL_WINDOW_SIZE (4) 0.
        Some(First::AnswerEarlyThenAway) => &[0, 3, 0, 0, 0, 1, 0, 4, 0, 0, 0, 0],
        Some(First::RefuseWithoutWindow) => &[0, 4, 0, 0, 0, 0],
        Some(First::NoStreams) => &[0, 3, 0, 0, 0, 0],
        // SETTINGS_INITIAL_WINDOW_SIZE (4).
        Some(First::AwayAfterBody) => &[0, 4, 0, 1, 0x86, 0xa0],
        _ => &[],
    };
    if let Some(First::Silent) = first {
        tokio::time::sleep(Duration::from_secs(30)).await;
        return;
    }
    let _ = s.write_all(&frame(SETTINGS, 0, 0, settings)).await;
    if let Some(First::AwayAfterBody) = first {
        // The connection's window too (WINDOW_UPDATE).
        let _ = s
            .write_all(&frame(0x8, 0, 0, &100_000u32.to_be_bytes()))
            .await;
    }
    let away_after_body = matches!(first, Some(First::AwayAfterBody));
    // The bytes of the first request's body in so far.
    let mut special_body = 0;
    // The stream of the request treated as `first` says.
    let mut special = None;
    loop {
        let mut head = [0u8; 9];
        if s.read_exact(&mut head).await.is_err() {
            return;
        }
        let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
        let mut payload = vec![0u8; len];
        if s.read_exact(&mut payload).await.is_err() {
            return;
        }
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let ends = head[4] & END_STREAM != 0;
        let out = match head[3] {
            SETTINGS if head[4] & 1 == 0 => frame(SETTINGS, 1, 0, &[]),
            DATA if Some(stream) == special => {
                if !away_after_body {
                    continue;
                }
                special_body += payload.len();
                if special_body < 70_000 || special_body - payload.len() >= 70_000 {
                    continue;
                }
                frame(GOAWAY, 0, 0, &[0, 0, 0, 0, 0, 0, 0, 0])
            }
            DATA if first.is_none() => {
                bodies.lock().unwrap().extend_from_slice(&payload);
                if !ends {
                    continue;
                }
                answered.fetch_add(1, SeqCst);
                second(stream)
            }
            HEADERS => match first.take().inspect(|_| special = Some(stream)) {
                Some(First::GoAway) => frame(GOAWAY, 0, 0, &[0, 0, 0, 0, 0, 0, 0, 0]),
                Some(First::Refuse | First::RefuseWithoutWindow) => {
                    frame(RST_STREAM, 0, stream, &[0, 0, 0, 7])
                }
                Some(First::GoAwayWithError) => frame(GOAWAY, 0, 0, &[0, 0, 0, 0, 0, 0, 0, 2]),
                Some(First::TookItAndLeft(error)) => {
                    let mut goaway = stream.to_be_bytes().to_vec();
                    goaway.extend_from_slice(&[0, 0, 0, if error { 2 } else { 0 }]);
                    let _ = s.write_all(&frame(GOAWAY, 0, 0, &goaway)).await;
                    return;
                }
                Some(First::AwayAfterBody | First::NoStreams | First::Silent) => continue,
                Some(First::OneAtATime) => {
                    // Every request of the connection, not only its first.
                    first = Some(First::OneAtATime);
                    tokio::time::sleep(Duration::from_millis(600)).await;
                    answered.fetch_add(1, SeqCst);
                    second(stream)
                }
                Some(First::AnswerEarlyThenAway) => {
                    answered.fetch_add(1, SeqCst);
                    let _ = s.write_all(&second(stream)).await;
                    tokio::time::sleep(Duration::from_millis(800)).await;
                    let mut goaway = stream.to_be_bytes().to_vec();
                    goaway.extend_from_slice(&[0, 0, 0, 0]);
                    let _ = s.write_all(&frame(GOAWAY, 0, 0, &goaway)).await;
                    return;
                }
                Some(First::OneAtATimeThenAway) => {
                    tokio::time::sleep(Duration::from_millis(1000)).await;
                    answered.fetch_add(1, SeqCst);
                    let mut goaway = stream.to_be_bytes().to_vec();
                    goaway.extend_from_slice(&[0, 0, 0, 0]);
                    [frame(GOAWAY, 0, 0, &goaway), second(stream)].concat()
                }
                None if !ends => continue,
                None => {
                    answered.fetch_add(1, SeqCst);
                    second(stream)
                }
            },
            _ => continue,
        };
        if s.write_all(&out).await.is_err() {
            return;
        }
    }
}

/// Keel listening on a port of its own, in front of `member` over HTTP/2
/// (connect timeout 1 s).
async fn keel_before(member: SocketAddr) -> (Dataplane, u16) {
    let port = free_port();
    let dp = keel_tests::dataplane();
    dp.apply(&spec(&http_lb(
        port,
        &format!(
            "http_version: http2, connect_timeout: 1s, members: [ {{ address: \"{member}\" }} ]"
        ),
    )))
    .await
    .unwrap();
    (dp, port)
}

/// `clients` GETs at once through Keel to a member that treats its first
/// request as `first` says: what each got, and the member.
async fn through_keel(
    first: First,
    clients: usize,
) -> (Vec<Result<(u16, String), String>>, Member) {
    let member = member(first).await;
    let (dp, port) = keel_before(member.addr).await;
    let c = client();
    let url = format!("http://127.0.0.1:{port}/");
    let gets: Vec<_> = (0..clients)
        .map(|_| {
            let (c, url) = (c.clone(), url.clone());
            tokio::spawn(async move { get(&c, &url).await })
        })
        .collect();
    let mut got = Vec::new();
    for g in gets {
        got.push(
            tokio::time::timeout(Duration::from_secs(10), g)
                .await
                .unwrap()
                .unwrap(),
        );
    }
    dp.shutdown(Duration::from_secs(1)).await;
    (got, member)
}

/// RFC 9113 §8.7: a stream past a GOAWAY's last stream (whatever its
/// error code), or one refused with REFUSED_STREAM, was not acted on and
/// may go again, whatever its method; Keel sends it once more on a new
/// connection.
#[tokio::test]
async fn a_request_the_member_did_not_take_goes_again_on_a_new_connection() {
    for first in [First::GoAway, First::Refuse, First::GoAwayWithError] {
        let (got, member) = through_keel(first, 1).await;
        assert_eq!(got, [Ok((200, "second".to_owned()))]);
        assert_eq!(member.answered.load(SeqCst), 1);
    }
}

/// A POST to Keel at `port` over HTTP/1.1 whose body is `parts`, sent
/// 300 ms apart: the status, and the answer's text.
async fn post_in_parts(port: u16, parts: &[&[u8]]) -> (u16, String) {
    let mut c = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let length: usize = parts.iter().map(|p| p.len()).sum();
    let head = format!(
        "POST / HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: {length}\r\n\r\n"
    );
    c.write_all(head.as_bytes()).await.unwrap();
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        c.write_all(part).await.unwrap();
    }
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, answer)
}

/// A member that refuses again on the next connection is asked again,
/// up to five tries in all, each on a new connection, and no more.
#[tokio::test]
async fn a_request_the_member_keeps_refusing_is_tried_five_times() {
    for first in [First::GoAway, First::Refuse] {
        for (refusals, status) in [(4, 200), (5, 502)] {
            let member = member_of(first, refusals).await;
            let (dp, port) = keel_before(member.addr).await;
            let (got, answer) = post_in_parts(port, &[b"a body"]).await;
            assert_eq!(got, status, "{refusals} refusals: {answer}");
            assert_eq!(member.connections.load(SeqCst), 5, "{refusals} refusals");
            let answered = usize::from(status == 200);
            assert_eq!(member.answered.load(SeqCst), answered);
            dp.shutdown(Duration::from_secs(1)).await;
        }
    }
}

/// The same with a request body: it goes again, whether the refusal came
/// after its end, while it waited for the member's window (h2 wakes the
/// task sending it, which lets it go), or while some of it was still to
/// come from the client (the part sent goes again first, then the rest).
/// One of which more
/// than Keel keeps to send again (64 KiB) had gone when the member
/// refused it is answered 502 and not sent again.
#[tokio::test]
async fn a_request_body_the_member_did_not_take_goes_again() {
    let whole: Vec<u8> = (0..5_000).map(|i| b'a' + (i % 26) as u8).collect();
    let big = vec![b'b'; 100_000];
    let cases: [(First, &[&[u8]], bool); 6] = [
        (First::GoAway, &[&whole], true),
        (First::Refuse, &[&whole], true),
        (First::RefuseWithoutWindow, &[&whole], true),
        (First::GoAway, &[b"sent, ", b"then the rest"], true),
        (First::Refuse, &[b"sent, ", b"then the rest"], true),
        (First::AwayAfterBody, &[&big], false),
    ];
    for (first, parts, again) in cases {
        let member = member(first).await;
        let (dp, port) = keel_before(member.addr).await;
        let (status, answer) = post_in_parts(port, parts).await;
        let size = parts.concat().len();
        if again {
            assert_eq!(status, 200, "{size}: {answer}");
            assert!(answer.contains("second"), "{size}: {answer}");
            assert_eq!(*member.bodies.lock().unwrap(), parts.concat(), "{size}");
            assert_eq!(member.connections.load(SeqCst), 2, "{size}");
        } else {
            assert_eq!(status, 502, "{size}: {answer}");
            assert_eq!(member.answered.load(SeqCst), 0, "{size}");
            assert_eq!(member.connections.load(SeqCst), 1, "{size}");
        }
        dp.shutdown(Duration::from_secs(1)).await;
    }
}

/// Many requests at once, the first connection going away under them:
/// every one is answered, over one new connection per worker, not one
/// each (nor one each at the start, when there is no connection yet).
#[tokio::test]
async fn requests_a_member_sent_away_share_one_new_connection() {
    let (got, member) = through_keel(First::GoAway, 20).await;
    for g in &got {
        assert_eq!(g, &Ok((200, "second".to_owned())));
    }
    let connections = member.connections.load(SeqCst);
    assert!(
        connections <= 5,
        "{connections} connections for 20 requests"
    );
}

/// A member that takes one stream at a time (its
/// `SETTINGS_MAX_CONCURRENT_STREAMS`): requests in flight together each
/// get a connection, at once, rather than waiting in turn for the one
/// stream (as HAProxy and Envoy do). Three requests the member holds for
/// 600 ms each are answered together.
#[tokio::test]
async fn requests_past_the_members_stream_limit_go_on_more_connections() {
    let member = member_of(First::OneAtATime, usize::MAX).await;
    let (dp, port) = keel_before(member.addr).await;
    let c = client();
    let url = format!("http://127.0.0.1:{port}/");
    let started = std::time::Instant::now();
    three_at_once(&c, &url).await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(1500),
        "three requests took {took:?}"
    );
    assert_eq!(member.connections.load(SeqCst), 3);
    dp.shutdown(Duration::from_secs(1)).await;
}

/// Three GETs of `url` at once through `c`, each answered 200 `second`.
async fn three_at_once(c: &keel_tests::client::HttpClient, url: &str) {
    let gets: Vec<_> = (0..3)
        .map(|_| {
            let (c, url) = (c.clone(), url.to_owned());
            tokio::spawn(async move { get(&c, &url).await })
        })
        .collect();
    for g in gets {
        let got = tokio::time::timeout(Duration::from_secs(10), g).await;
        assert_eq!(got.unwrap().unwrap(), Ok((200, "second".to_owned())));
    }
}

/// The connections made past the member's stream limit are closed once
/// no request used them for 4 s (as idle HTTP/1.1 connections are), though
/// no request comes to find them; the first stays open for the next.
#[tokio::test]
async fn connections_past_the_first_close_once_idle_without_a_request_to_find_them() {
    let member = member_of(First::OneAtATime, usize::MAX).await;
    let (dp, port) = keel_before(member.addr).await;
    // One client connection (HTTP/2, prior knowledge): every request on one
    // worker, whose connections to the member these are.
    let c = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let url = format!("http://127.0.0.1:{port}/");
    three_at_once(&c, &url).await;
    assert_eq!(member.connections.load(SeqCst), 3);
    let answered = std::time::Instant::now();
    let all_but_one = async {
        while member.closed.load(SeqCst) < 2 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(8), all_but_one)
        .await
        .expect("the two connections past the first are still open 8 s after their last request");
    let took = answered.elapsed();
    assert!(took >= Duration::from_secs(3), "closed after {took:?}");
    // The first is still open, and serves the next request.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(member.closed.load(SeqCst), 2);
    let got = tokio::time::timeout(Duration::from_secs(10), get(&c, &url)).await;
    assert_eq!(got.unwrap(), Ok((200, "second".to_owned())));
    assert_eq!(member.connections.load(SeqCst), 3);
    dp.shutdown(Duration::from_secs(1)).await;
}

/// A member that takes one stream at a time holds the first request,
/// then goes away naming it as the last it took: a second request, GET or
/// POST, went on a connection of its own at once, never behind the first
/// (where the GOAWAY would leave it unsent, and a POST unanswerable).
#[tokio::test]
async fn a_request_that_finds_the_members_streams_taken_goes_on_a_new_connection() {
    for method in [http::Method::GET, http::Method::POST] {
        let member = member(First::OneAtATimeThenAway).await;
        let (dp, port) = keel_before(member.addr).await;
        let c = client();
        let url = format!("http://127.0.0.1:{port}/");
        let first = tokio::spawn({
            let (c, url) = (c.clone(), url.clone());
            async move { get(&c, &url).await }
        });
        // The second once the first holds the member's one stream.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let req = http::Request::builder()
            .method(method.clone())
            .uri(&url)
            .body(Full::new(Bytes::new()))
            .unwrap();
        let started = std::time::Instant::now();
        let second = tokio::time::timeout(Duration::from_secs(10), c.request(req))
            .await
            .unwrap()
            .unwrap();
        let took = started.elapsed();
        let status = second.status().as_u16();
        let body = second.into_body().collect().await.unwrap().to_bytes();
        assert_eq!((status, &body[..]), (200, &b"second"[..]), "{method}");
        assert!(took < Duration::from_millis(500), "{method} took {took:?}");
        let first = tokio::time::timeout(Duration::from_secs(10), first)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(first, Ok((200, "second".to_owned())));
        assert_eq!(member.answered.load(SeqCst), 2, "{method}");
        assert_eq!(member.connections.load(SeqCst), 2, "{method}");
        dp.shutdown(Duration::from_secs(1)).await;
    }
}

/// A request can still wait in h2 for a free stream that Keel counted as
/// free: a member that answers a request before its body could go keeps
/// that stream open (Keel's side is still sending) after Keel's count let
/// it go. When the member then goes away, hyper ends the waiting request
/// with "dispatch task is gone" (`hyper::proto::h2::client::ClientTask`
/// drops the request it held for a free stream); h2 had given it a stream
/// and may have sent it, so a GET goes again on a new connection and a
/// POST is answered 502.
#[tokio::test]
async fn a_request_queued_behind_a_member_that_went_away_goes_again_if_idempotent() {
    for (method, again) in [(http::Method::GET, true), (http::Method::POST, false)] {
        let member = member(First::AnswerEarlyThenAway).await;
        let (dp, port) = keel_before(member.addr).await;
        // A POST answered before its body could go (no window).
        let mut early = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        early
            .write_all(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhello")
            .await
            .unwrap();
        let mut answer = Vec::new();
        while !answer.windows(6).any(|w| w == b"second") {
            let mut buf = [0u8; 1024];
            let n = tokio::time::timeout(Duration::from_secs(5), early.read(&mut buf))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0, "closed: {}", String::from_utf8_lossy(&answer));
            answer.extend_from_slice(&buf[..n]);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        // The second on the same client connection: the same worker, so
        // the same member connection.
        let second = format!(
            "{method} / HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        );
        early.write_all(second.as_bytes()).await.unwrap();
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), early.read_to_end(&mut rest))
            .await
            .unwrap()
            .unwrap();
        let rest = String::from_utf8_lossy(&rest);
        let answer = rest.find("HTTP/1.1 ").map_or("", |at| &rest[at..]);
        let status: u16 = answer.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
        if again {
            assert_eq!(status, 200, "{method}: {answer}");
            assert!(answer.contains("second"), "{method}: {answer}");
            assert_eq!(member.answered.load(SeqCst), 2, "{method}");
            assert_eq!(member.connections.load(SeqCst), 2, "{method}");
        } else {
            assert_eq!(status, 502, "{method}");
            assert_eq!(member.answered.load(SeqCst), 1, "{method}");
            assert_eq!(member.connections.load(SeqCst), 1, "{method}");
        }
        drop(early);
        dp.shutdown(Duration::from_secs(1)).await;
    }
}

/// A member that allows no streams (`SETTINGS_MAX_CONCURRENT_STREAMS` 0)
/// gets no request: the client is answered 502 at once, not after the
/// response timeout (60 s) spent waiting in h2 for a stream. One that
/// sends no SETTINGS is a connection that did not come up: 504 after the
/// connect timeout (1 s here).
#[tokio::test]
async fn a_member_that_allows_no_streams_is_answered_for_at_once() {
    for (first, status) in [(First::NoStreams, 502), (First::Silent, 504)] {
        let member = member_of(first, usize::MAX).await;
        let (dp, port) = keel_before(member.addr).await;
        let started = std::time::Instant::now();
        let got = tokio::time::timeout(
            Duration::from_secs(10),
            get(&client(), &format!("http://127.0.0.1:{port}/")),
        )
        .await
        .unwrap();
        assert_eq!(got.map(|(status, _)| status), Ok(status));
        let took = started.elapsed();
        assert!(took < Duration::from_secs(3), "{status} after {took:?}");
        assert_eq!(member.answered.load(SeqCst), 0);
        dp.shutdown(Duration::from_secs(1)).await;
    }
}

/// A stream a GOAWAY names as taken may have been acted on, whatever the
/// GOAWAY's error code: when the connection then closes unanswered, the
/// client gets a 502, and nothing is sent again. (This rests on h2 giving
/// such a stream a broken pipe, not the GOAWAY's error, which it gives
/// only the streams past the last: `h2::proto::streams::Streams::recv_eof`
/// and `recv_go_away`.)
#[tokio::test]
async fn a_member_that_fails_the_connection_is_not_asked_again() {
    for first in [First::TookItAndLeft(false), First::TookItAndLeft(true)] {
        let (got, member) = through_keel(first, 1).await;
        assert_eq!(got[0].as_ref().map(|(status, _)| *status), Ok(502));
        assert_eq!(member.answered.load(SeqCst), 0);
        assert_eq!(member.connections.load(SeqCst), 1);
    }
}

/// A member whose connections hang (its accept queue is full, so the
/// kernel drops the SYNs): requests that waited for one attempt at a new
/// connection fail with it, after one connect timeout, not one after
/// another (the one-at-a-time connect must not make them queue).
#[tokio::test]
async fn requests_waiting_on_a_hanging_connect_fail_together() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    // Fill the accept queue (128 and one more) and let it be.
    let mut held = Vec::new();
    while held.len() < 200 {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            Ok(s) => held.push(s),
            Err(_) => break,
        }
    }
    assert!(held.len() < 200, "the accept queue never filled");
    let (dp, port) = keel_before(addr).await;
    let c = client();
    let url = format!("http://127.0.0.1:{port}/");
    let started = std::time::Instant::now();
    let gets: Vec<_> = (0..5)
        .map(|_| {
            let (c, url) = (c.clone(), url.clone());
            tokio::spawn(async move { get(&c, &url).await })
        })
        .collect();
    for g in gets {
        let (status, _) = tokio::time::timeout(Duration::from_secs(20), g)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(status >= 500, "{status}");
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(2500),
        "five requests took {took:?}"
    );
    dp.shutdown(Duration::from_secs(1)).await;
    drop((listener, held));
}
