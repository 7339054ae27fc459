//! Request-smuggling and response-desync vectors, the way an attacker
//! sends them: `tests/desync/desync.py` drives 133 of them through Keel
//! over real sockets, in front of a scripted member, and judges both ends
//! with h11 (an independent strict parser). Keel must have no unsafe and
//! no nonconforming result. `tests/bench/desync.sh` runs the same vectors
//! through HAProxy and nginx beside Keel. HTTP/2 requests that cannot be
//! written as HTTP/1.1 without changing their meaning go in as raw frames.

#![allow(clippy::unwrap_used)] // a failed unwrap is how a test fails

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keel_dataplane::Dataplane;
use keel_tests::{free_port, spec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_vector_desyncs_keel_or_gets_past_it_unrefused() {
    let (port, member) = (free_port(), free_port());
    let dp = Dataplane::new();
    // Keel's defaults, but for the timeouts of a client or member that
    // stops mid-message: the vectors that leave one waiting end sooner.
    dp.apply(&spec(&format!(
        "load_balancers:\n  - {{ name: lb, listeners: [ {{ port: {port}, protocol: http, bind: 127.0.0.1, default_pool: p, header_timeout: 1s, client_timeout: 1s }} ] }}\n\
         pools:\n  - {{ name: p, response_timeout: 1s, members: [ {{ address: \"127.0.0.1:{member}\" }} ] }}\n"
    )))
    .await
    .unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = root.join("../target/pyenv/bin/python");
    assert!(python.exists(), "no Python environment: tests/run makes it");
    let mut child = Command::new(python)
        .arg(root.join("desync/desync.py"))
        .args(["--member-port", &member.to_string()])
        .args(["--proxy", &format!("keel=127.0.0.1:{port}")])
        .args(["--require-clean", "keel"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let out = child.wait_with_output().unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    println!("{report}");
    assert!(
        out.status.success(),
        "vectors Keel failed (or the run timed out):\n{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The table names every vector's verdict: all 133 were judged.
    assert!(report.contains("| keel | 133 | 0 | 0 | 0 |"), "{report}");
    dp.shutdown(Duration::from_secs(1)).await;
}

/// A request's fields, each `(name, value)` as raw bytes.
type Fields<'a> = Vec<(&'a [u8], &'a [u8])>;

/// An HPACK string: its length (7-bit prefix, no Huffman), then its bytes.
fn hpack_string(out: &mut Vec<u8>, s: &[u8]) {
    let mut n = s.len();
    if n < 127 {
        out.push(n as u8);
    } else {
        out.push(127);
        n -= 127;
        while n >= 128 {
            out.push((n % 128) as u8 | 0x80);
            n /= 128;
        }
        out.push(n as u8);
    }
    out.extend_from_slice(s);
}

/// A frame: length, type, flags, stream 1 (or 0 for SETTINGS), payload.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = len.to_be_bytes()[1..].to_vec();
    f.extend_from_slice(&[kind, flags]);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// What Keel did with an HTTP/2 request: reset the stream or the
/// connection, or answered with this first byte of the header block
/// (0x88 is `:status 200`, 0x8c `:status 400`, from HPACK's static table).
#[derive(Debug, PartialEq)]
enum H2Outcome {
    Reset,
    GoAway,
    Answered(u8),
    Nothing,
}

/// Sends one request as raw frames on a new prior-knowledge connection:
/// every field a literal (names and values exactly as given), then `data`.
async fn h2_request(port: u16, fields: &[(&[u8], &[u8])], data: Option<&[u8]>) -> H2Outcome {
    let mut block = Vec::new();
    for (name, value) in fields {
        block.push(0); // a literal without indexing, with a new name
        hpack_string(&mut block, name);
        hpack_string(&mut block, value);
    }
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(4, 0, 0, &[]));
    let end_stream = if data.is_none() { 0x1 } else { 0 };
    out.extend(frame(1, 0x4 | end_stream, 1, &block));
    if let Some(d) = data {
        out.extend(frame(0, 0x1, 1, d));
    }
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let _ = s.write_all(&out).await;
    let mut buf = Vec::new();
    let read = async {
        loop {
            // Every whole frame so far, in order.
            let mut at = 0;
            while buf.len() >= at + 9 {
                let len = u32::from_be_bytes([0, buf[at], buf[at + 1], buf[at + 2]]) as usize;
                if buf.len() < at + 9 + len {
                    break;
                }
                let (kind, stream) = (buf[at + 3], buf[at + 5..at + 9].to_vec());
                let payload = &buf[at + 9..at + 9 + len];
                match kind {
                    7 => return H2Outcome::GoAway,
                    3 if stream == [0, 0, 0, 1] => return H2Outcome::Reset,
                    1 if stream == [0, 0, 0, 1] => {
                        return H2Outcome::Answered(payload.first().copied().unwrap_or(0))
                    }
                    _ => {}
                }
                at += 9 + len;
            }
            let mut more = [0u8; 4096];
            match s.read(&mut more).await {
                Ok(0) | Err(_) => return H2Outcome::Nothing,
                Ok(n) => buf.extend_from_slice(&more[..n]),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(3), read)
        .await
        .unwrap_or(H2Outcome::Nothing)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_requests_that_http1_would_read_otherwise_never_reach_the_member() {
    // A member that records every byte it gets and answers each read 200.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let member = listener.local_addr().unwrap();
    let got = Arc::new(Mutex::new(Vec::<u8>::new()));
    let log = got.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 8192];
                while let Ok(n @ 1..) = s.read(&mut buf).await {
                    log.lock().unwrap().extend_from_slice(&buf[..n]);
                    let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
                    if s.write_all(ok).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    let port = free_port();
    let dp = Dataplane::new();
    dp.apply(&spec(&format!(
        "load_balancers:\n  - {{ name: lb, listeners: [ {{ port: {port}, protocol: http, bind: 127.0.0.1, default_pool: p }} ] }}\n\
         pools:\n  - {{ name: p, members: [ {{ address: \"{member}\" }} ] }}\n"
    )))
    .await
    .unwrap();
    let base: [(&[u8], &[u8]); 4] = [
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":authority", b"t"),
        (b":path", b"/x"),
    ];
    let with = |extra: &[(&'static [u8], &'static [u8])]| {
        let mut f = base.to_vec();
        f.extend_from_slice(extra);
        f
    };
    let smuggled: &[u8] = b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n";
    // The same request, well formed: it must get through (the test can fail).
    let outcome = h2_request(port, &with(&[(b"content-length", b"5")]), Some(b"hello")).await;
    assert_eq!(outcome, H2Outcome::Answered(0x88));
    let seen = String::from_utf8_lossy(&got.lock().unwrap()).into_owned();
    assert!(
        seen.starts_with("POST /x HTTP/1.1\r\n") && seen.ends_with("hello"),
        "{seen}"
    );
    let vectors: Vec<(&str, Fields, Option<&[u8]>)> = vec![
        (
            "CRLF in a value",
            with(&[(b"x-a", b"b\r\ntransfer-encoding: chunked")]),
            Some(smuggled),
        ),
        ("LF in a value", with(&[(b"x-a", b"b\nx-b: c")]), None),
        ("NUL in a value", with(&[(b"x-a", b"b\0c")]), None),
        ("CRLF in a name", with(&[(b"x-a\r\nx-b", b"c")]), None),
        ("an uppercase name", with(&[(b"X-Upper", b"a")]), None),
        ("a space in a name", with(&[(b"x a", b"b")]), None),
        ("a colon in a name", with(&[(b"x:a", b"b")]), None),
        (
            "transfer-encoding",
            with(&[(b"transfer-encoding", b"chunked")]),
            Some(smuggled),
        ),
        ("connection", with(&[(b"connection", b"close")]), None),
        ("keep-alive", with(&[(b"keep-alive", b"timeout=5")]), None),
        ("upgrade", with(&[(b"upgrade", b"websocket")]), None),
        ("te other than trailers", with(&[(b"te", b"gzip")]), None),
        (
            "a length below the data",
            with(&[(b"content-length", b"5")]),
            Some(b"helloGET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n"),
        ),
        (
            "a length above the data",
            with(&[(b"content-length", b"50")]),
            Some(b"hello"),
        ),
        (
            "a length with a sign",
            with(&[(b"content-length", b"+5")]),
            Some(b"hello"),
        ),
        (
            "a request line in :path",
            vec![
                (b":method", b"GET"),
                (b":scheme", b"http"),
                (b":authority", b"t"),
                (b":path", b"/x HTTP/1.1\r\nHost: t\r\n\r\nGET /smuggled"),
            ],
            None,
        ),
        (
            "a request line in :method",
            vec![
                (b":method", b"GET /smuggled HTTP/1.1\r\nHost: t\r\n\r\nGET"),
                (b":scheme", b"http"),
                (b":authority", b"t"),
                (b":path", b"/x"),
            ],
            None,
        ),
        (
            "CRLF in :authority",
            vec![
                (b":method", b"GET"),
                (b":scheme", b"http"),
                (b":authority", b"t\r\nx: y"),
                (b":path", b"/x"),
            ],
            None,
        ),
        (
            "host other than :authority",
            with(&[(b"host", b"other")]),
            None,
        ),
        (
            "an empty :path",
            vec![
                (b":method", b"GET"),
                (b":scheme", b"http"),
                (b":authority", b"t"),
                (b":path", b""),
            ],
            None,
        ),
        ("two :authority", with(&[(b":authority", b"u")]), None),
        (
            "a pseudo-header after a field",
            vec![
                (b":method", b"GET"),
                (b"x-a", b"b"),
                (b":scheme", b"http"),
                (b":authority", b"t"),
                (b":path", b"/x"),
            ],
            None,
        ),
    ];
    for (name, fields, data) in vectors {
        got.lock().unwrap().clear();
        let outcome = h2_request(port, &fields, data).await;
        assert!(
            matches!(
                outcome,
                H2Outcome::Reset | H2Outcome::GoAway | H2Outcome::Answered(0x8c)
            ),
            "{name}: {outcome:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        let seen = String::from_utf8_lossy(&got.lock().unwrap()).into_owned();
        assert!(seen.is_empty(), "{name} reached the member: {seen}");
    }
    dp.shutdown(Duration::from_secs(1)).await;
}
