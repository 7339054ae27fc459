//! Keel's one HTTP/1 server, as a client on a raw socket sees it: request
//! bodies by length and by chunks on keep-alive connections, pipelining
//! behind a body, `100-continue`, HTTP/1.0, `HEAD`, trailers, and the
//! requests it refuses (and closes after).

#![allow(clippy::unwrap_used)] // a failed unwrap is how a test fails

use std::time::Duration;

use keel_dataplane::Dataplane;
use keel_tests::backend::HttpBackend;
use keel_tests::{free_port, spec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Fixture {
    _dp: Dataplane,
    web: HttpBackend,
    port: u16,
}

async fn fixture() -> Fixture {
    let web = HttpBackend::start("web").await;
    let port = free_port();
    let dp = keel_tests::dataplane();
    dp.apply(&spec(&format!(
        r#"
load_balancers:
  - name: lb
    listeners:
      - port: {port}
        protocol: http
        bind: 127.0.0.1
        default_pool: web
        rules:
          - {{ priority: 1, path: /refused, fixed_response: {{ status: 403 }} }}
          - {{ priority: 2, path: /chunked, forward: [ {{ pool: chunked }} ] }}
pools:
  - {{ name: web, members: [ {{ address: "{}" }} ] }}
  - {{ name: chunked, members: [ {{ address: "{}" }} ] }}
"#,
        web.addr,
        chunked_member().await,
    )))
    .await
    .unwrap();
    Fixture { _dp: dp, web, port }
}

/// A member that answers every request with a chunked `hello` and a
/// trailer, on keep-alive connections.
async fn chunked_member() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut b = [0u8; 4096];
                while let Ok(n) = s.read(&mut b).await {
                    if n == 0 {
                        return;
                    }
                    seen.extend_from_slice(&b[..n]);
                    while let Some(i) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        seen.drain(..i + 4);
                        let answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                                       5\r\nhello\r\n0\r\nx-sum: 5\r\n\r\n";
                        if s.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

/// One response read off a connection: status, head, body.
struct Answer {
    status: u16,
    head: String,
    body: Vec<u8>,
    /// A chunked body's trailer section, with its empty line.
    trailers: String,
}

/// Reads one response (framed by `content-length` or chunks; `head_only`
/// for the answer to `HEAD`) off `s`, leaving what follows in `buf`.
async fn answer(s: &mut TcpStream, buf: &mut Vec<u8>, head_only: bool) -> Answer {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    async fn fill(s: &mut TcpStream, buf: &mut Vec<u8>, deadline: tokio::time::Instant) {
        let mut more = [0u8; 16 * 1024];
        let n = tokio::time::timeout_at(deadline, s.read(&mut more))
            .await
            .expect("an answer within 10 s")
            .unwrap();
        assert!(n > 0, "closed mid-answer: {}", String::from_utf8_lossy(buf));
        buf.extend_from_slice(&more[..n]);
    }
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        fill(s, buf, deadline).await;
    };
    let head = String::from_utf8(buf.drain(..end).collect()).unwrap();
    let status = head[9..12].parse().unwrap();
    let field = |name: &str| {
        head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    };
    let mut body = Vec::new();
    let mut trailers = String::new();
    if head_only || status == 100 || status == 204 || status == 304 {
    } else if let Some(n) = field("content-length") {
        let n: usize = n.parse().unwrap();
        while buf.len() < n {
            fill(s, buf, deadline).await;
        }
        body = buf.drain(..n).collect();
    } else if field("transfer-encoding").is_some() {
        loop {
            let line = loop {
                if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                    break i;
                }
                fill(s, buf, deadline).await;
            };
            let size =
                usize::from_str_radix(std::str::from_utf8(&buf[..line]).unwrap(), 16).unwrap();
            while buf.len() < line + 2 + size + 2 {
                fill(s, buf, deadline).await;
            }
            if size == 0 {
                // The trailer section, up to its empty line.
                buf.drain(..line + 2);
                let end = loop {
                    if buf.starts_with(b"\r\n") {
                        break 2;
                    }
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                    fill(s, buf, deadline).await;
                };
                trailers = String::from_utf8(buf.drain(..end).collect()).unwrap();
                break;
            }
            body.extend_from_slice(&buf[line + 2..line + 2 + size]);
            buf.drain(..line + 2 + size + 2);
        }
    }
    Answer {
        status,
        head,
        body,
        trailers,
    }
}

/// Whether the server closes `s` within 2 s, with nothing more sent.
async fn closed(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 64];
    matches!(
        tokio::time::timeout(Duration::from_secs(2), s.read(&mut b)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_by_length_and_chunks_share_a_connection_with_pipelined_requests() {
    let f = fixture().await;
    let mut s = TcpStream::connect(("127.0.0.1", f.port)).await.unwrap();
    // A body by length, a chunked one with a trailer, and a GET, written
    // at once: each answered in order on the one connection.
    s.write_all(
        b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\nhello world\
          POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
          5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nx-sum: 1\r\n\r\n\
          GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    for want in [&b"11"[..], b"11", b"web"] {
        let a = answer(&mut s, &mut buf, false).await;
        assert_eq!((a.status, a.body.as_slice()), (200, want), "{}", a.head);
    }

    // A large upload, in pieces, then the connection carries on.
    let size = 8 * 1024 * 1024;
    s.write_all(
        format!("PUT /upload HTTP/1.1\r\nHost: a\r\nContent-Length: {size}\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let piece = vec![b'u'; 64 * 1024];
    for _ in 0..size / piece.len() {
        s.write_all(&piece).await.unwrap();
    }
    let a = answer(&mut s, &mut buf, false).await;
    assert_eq!(a.body, size.to_string().as_bytes());
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(answer(&mut s, &mut buf, false).await.status, 200);
    assert!(buf.is_empty(), "nothing more was sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_is_answered_once_and_not_forwarded() {
    let f = fixture().await;
    let mut s = TcpStream::connect(("127.0.0.1", f.port)).await.unwrap();
    s.write_all(
        b"POST /upload HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n",
    )
    .await
    .unwrap();
    // No body until the go-ahead.
    let mut buf = Vec::new();
    let go = answer(&mut s, &mut buf, false).await;
    assert_eq!(go.status, 100, "{}", go.head);
    s.write_all(b"body").await.unwrap();
    let a = answer(&mut s, &mut buf, false).await;
    assert_eq!(
        (a.status, a.body.as_slice()),
        (200, &b"4"[..]),
        "{}",
        a.head
    );

    // The member is not asked again. (It answers without reading the
    // body: the connection closes after, as the body was not read.)
    let mut other = TcpStream::connect(("127.0.0.1", f.port)).await.unwrap();
    other
        .write_all(b"POST /headers HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\nbody")
        .await
        .unwrap();
    let mut other_buf = Vec::new();
    let a = answer(&mut other, &mut other_buf, false).await;
    assert_eq!(a.status, 200, "{}", a.head);
    let seen = String::from_utf8(a.body).unwrap();
    assert!(
        !seen.contains("expect"),
        "the member was asked again: {seen}"
    );
    assert!(seen.contains("content-length: 4"), "{seen}");

    // An expectation Keel cannot meet is 417, and the connection closes.
    s.write_all(b"PUT / HTTP/1.1\r\nHost: a\r\nExpect: 200-ok\r\nContent-Length: 1\r\n\r\nx")
        .await
        .unwrap();
    assert_eq!(answer(&mut s, &mut buf, false).await.status, 417);
    assert!(closed(&mut s).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_1_0_and_head_are_framed_for_what_they_are() {
    let f = fixture().await;
    // HTTP/1.0 closes after the answer unless it asks to keep the connection.
    let mut s = TcpStream::connect(("127.0.0.1", f.port)).await.unwrap();
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
    let mut buf = Vec::new();
    let a = answer(&mut s, &mut buf, false).await;
    assert_eq!((a.status, a.body.as_slice()), (200, &b"web"[..]));
    assert!(
        a.head.to_ascii_lowercase().contains("connection: close"),
        "{}",
        a.head
    );
    assert!(closed(&mut s).await);

    let mut s = TcpStream::connect(("127.0.0.1", f.port)).await.unwrap();
    for _ in 0..2 {
        s.write_all(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .await
            .unwrap();
        let a = answer(&mut s, &mut buf, false).await;
        assert_eq!(a.status, 200);
        assert!(
            a.head
                .to_ascii_lowercase()
                .contains("connection: keep-alive"),
            "{}",
            a.head
        );
    }
    // A body of unknown length goes to HTTP/1.0 unchunked, and the
    // connection closes after it.
    s.write_all(b"GET /chunked HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        .await
        .unwrap();
    let mut all = buf.clone();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut all))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&all);
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(
        !head.to_ascii_lowercase().contains("transfer-encoding"),
        "{head}"
    );
    assert!(
        head.to_ascii_lowercase().contains("connection: close"),
        "{head}"
    );
    assert_eq!(body, "hello", "{head}");

    // HTTP/1.1 gets chunks, and the trailers if it asked for them.
    let mut s = TcpStream::connect(("127.0.0.1", f.port)).await.unwrap();
    s.write_all(b"GET /chunked HTTP/1.1\r\nHost: a\r\nTE: trailers\r\n\r\nGET /chunked HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let a = answer(&mut s, &mut buf, false).await;
    assert_eq!(
        (a.body.as_slice(), a.trailers.as_str()),
        (&b"hello"[..], "x-sum: 5\r\n\r\n")
    );
    let a = answer(&mut s, &mut buf, false).await;
    assert_eq!(
        (a.body.as_slice(), a.trailers.as_str()),
        (&b"hello"[..], "\r\n"),
        "no trailers unasked"
    );

    // HEAD: the member's length, no body, and the connection carries on.
    let mut s = TcpStream::connect(("127.0.0.1", f.port)).await.unwrap();
    s.write_all(b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let a = answer(&mut s, &mut buf, true).await;
    assert_eq!(a.status, 200);
    assert!(
        a.head.to_ascii_lowercase().contains("content-length: 3"),
        "{}",
        a.head
    );
    let a = answer(&mut s, &mut buf, false).await;
    assert_eq!(a.body, b"web");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_requests_close_the_connection_and_never_reach_the_member() {
    let f = fixture().await;
    for (what, bytes, status) in [
        (
            "HTTP/1.0 with a coding",
            &b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"[..],
            400,
        ),
        ("CONNECT", b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", 405),
        ("another version", b"GET / HTTP/3.0\r\nHost: a\r\n\r\n", 505),
        ("a target in no form", b"GET example HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (
            "a malformed chunk",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
            400,
        ),
    ] {
        let before = f.web.hits();
        let mut s = TcpStream::connect(("127.0.0.1", f.port)).await.unwrap();
        s.write_all(bytes).await.unwrap();
        let mut buf = Vec::new();
        let a = answer(&mut s, &mut buf, false).await;
        assert_eq!(a.status, status, "{what}: {}", a.head);
        assert!(closed(&mut s).await, "{what}: left open");
        // A malformed chunk reaches the member only as far as the bad
        // chunk; the request behind it never does.
        assert!(f.web.hits() <= before + 1, "{what}: more than one request got through");
        if status != 400 || what != "a malformed chunk" {
            assert_eq!(f.web.hits(), before, "{what}: the member saw it");
        }
    }

    // An answer given before the body was read (a fixed response) closes
    // the connection: what follows the body is never read as a request.
    let before = f.web.hits();
    let mut s = TcpStream::connect(("127.0.0.1", f.port)).await.unwrap();
    let mut req = b"POST /refused HTTP/1.1\r\nHost: a\r\nContent-Length: 1000000\r\n\r\n".to_vec();
    req.extend(std::iter::repeat_n(b'x', 100_000));
    s.write_all(&req).await.unwrap();
    let mut buf = Vec::new();
    let a = answer(&mut s, &mut buf, false).await;
    assert_eq!(a.status, 403);
    assert!(
        a.head.to_ascii_lowercase().contains("connection: close"),
        "{}",
        a.head
    );
    assert_eq!(f.web.hits(), before);

    // A client whose body is still unread when the answer comes gets the
    // answer whole: Keel shuts its side and reads what is left for a while
    // (a close with unread bytes resets the connection, and the reset can
    // destroy the answer before the client reads it).
    let mut s = TcpStream::connect(("127.0.0.1", f.port)).await.unwrap();
    let mut req = b"POST /refused HTTP/1.1\r\nHost: a\r\nContent-Length: 8000000\r\n\r\n".to_vec();
    req.extend(std::iter::repeat_n(b'x', 1_000_000));
    s.write_all(&req).await.unwrap();
    // The answer and Keel's close happen while the client is not reading.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut all = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut all))
        .await
        .expect("closed within 10 s")
        .expect("the connection was reset: the answer may be lost");
    let text = String::from_utf8_lossy(&all);
    assert!(text.starts_with("HTTP/1.1 403 "), "{text}");
    assert_eq!(f.web.hits(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_bytes_in_pieces_are_told_http1_or_http2_and_none_is_lost() {
    let f = fixture().await;
    let pause = Duration::from_millis(50);
    // A request that begins as HTTP/2's preface does (`P`), sent a byte at
    // a time, then another pipelined behind it: HTTP/1, every byte read.
    let mut s = TcpStream::connect(("127.0.0.1", f.port)).await.unwrap();
    // (No body: one the member answered before reading would close the
    // connection after its answer, as it should.)
    let post = b"POST /a HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\nGET /b HTTP/1.1\r\nHost: t\r\n\r\n";
    for (i, byte) in post.iter().enumerate() {
        s.write_all(&[*byte]).await.unwrap();
        if i < 4 {
            tokio::time::sleep(pause).await;
        }
    }
    let mut buf = Vec::new();
    let a = answer(&mut s, &mut buf, false).await;
    assert_eq!(a.status, 200, "{}", a.head);
    let b = answer(&mut s, &mut buf, false).await;
    assert_eq!(b.status, 200, "{}", b.head);

    // HTTP/2's preface in three pieces, then SETTINGS: Keel's HTTP/2 server
    // read the whole preface (it answers with its own SETTINGS frame).
    let mut s = TcpStream::connect(("127.0.0.1", f.port)).await.unwrap();
    for piece in [&b"PRI * HT"[..], b"TP/2.0\r\n\r\nS", b"M\r\n\r\n"] {
        s.write_all(piece).await.unwrap();
        tokio::time::sleep(pause).await;
    }
    s.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap();
    let mut frame = [0u8; 9];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut frame))
        .await
        .expect("an HTTP/2 frame")
        .unwrap();
    assert_eq!(frame[3], 4, "SETTINGS first: {frame:?}");

    // A head that matches the preface as far as it goes, then does not:
    // HTTP/1 (refused: `*` is for OPTIONS only).
    let mut s = TcpStream::connect(("127.0.0.1", f.port)).await.unwrap();
    s.write_all(b"PRI * HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    assert_eq!(answer(&mut s, &mut buf, false).await.status, 400);
}
