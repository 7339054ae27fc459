//! Keel's HTTP/1.1 framing against an independent strict parser, Python's
//! h11: generated requests and responses (lengths, codings, chunk forms,
//! field syntax, in combination) go through Keel over real sockets, and
//! the same bytes through h11. Where Keel passes a message on, h11 must
//! accept it too and frame the same body; Keel may refuse what h11 takes
//! (stricter is allowed), never the other way round.

#![allow(clippy::unwrap_used)] // a failed unwrap is how a test fails

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use keel_dataplane::Dataplane;
use keel_tests::{free_port, spec};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The ways a message can say how long its body is.
const FRAMINGS: &[&str] = &[
    "",
    "Content-Length: 5\r\n",
    "Content-Length: +5\r\n",
    "Content-Length: 5 \r\n",
    "Content-Length: 5, 5\r\n",
    "Content-Length: 5\r\nContent-Length: 5\r\n",
    "Content-Length: 5\r\nContent-Length: 6\r\n",
    "Content-Length: 0x5\r\n",
    "Content-Length: 05\r\n",
    "Content-Length: 99999999999999999999\r\n",
    "Transfer-Encoding: chunked\r\n",
    "Transfer-Encoding: Chunked\r\n",
    "Transfer-Encoding:  chunked \r\n",
    "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
    "Content-Length: 3\r\nTransfer-Encoding: chunked\r\n",
    "Transfer-Encoding: gzip, chunked\r\n",
    "Transfer-Encoding: chunked, gzip\r\n",
    "Transfer-Encoding: chunked, chunked\r\n",
    "Transfer-Encoding: identity\r\n",
    "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
    "Transfer-Encoding: xchunked\r\n",
    "Transfer-Encoding\t: chunked\r\n",
    "Content-Length : 5\r\n",
    "X-Folded: a\r\n b\r\nContent-Length: 5\r\n",
    "X-Nul: a\0b\r\nContent-Length: 5\r\n",
    "X-Cr: a\rb\r\nContent-Length: 5\r\n",
    "Bad Name: x\r\nContent-Length: 5\r\n",
];

/// Bodies as sent after the head: plain, and chunked in several forms.
const BODIES: &[&str] = &[
    "hello",
    "5\r\nhello\r\n0\r\n\r\n",
    "05\r\nhello\r\n0\r\n\r\n",
    "5;ext=1\r\nhello\r\n0\r\n\r\n",
    "5 \r\nhello\r\n0\r\n\r\n",
    "+5\r\nhello\r\n0\r\n\r\n",
    "0x5\r\nhello\r\n0\r\n\r\n",
    "5\nhello\n0\n\n",
    "5\r\nhelloXX\r\n0\r\n\r\n",
    "5\r\nhello\r\n0\r\nX-Trailer: t\r\n\r\n",
    "ffffffffffffffff5\r\nhello\r\n0\r\n\r\n",
    "2\r\nhe\r\n3\r\nllo\r\n0\r\n\r\n",
    "hello0\r\n\r\n",
];

/// A member that answers every request with what it received as body, and
/// one that sends a scripted answer; the data plane in front of each.
async fn echo_member() -> SocketAddr {
    use http_body_util::{BodyExt, Full};
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                    let body = req.into_body().collect().await.map(|b| b.to_bytes());
                    let body = body.unwrap_or_default();
                    Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(body)))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), service)
                    .await;
            });
        }
    });
    addr
}

async fn keel_before(member: SocketAddr) -> (u16, Dataplane) {
    let port = free_port();
    let dp = keel_tests::dataplane();
    dp.apply(&spec(&format!(
        "load_balancers:\n  - {{ name: lb, listeners: [ {{ port: {port}, protocol: http, bind: 127.0.0.1, default_pool: p, header_timeout: 1s, client_timeout: 1s }} ] }}\n\
         pools:\n  - {{ name: p, response_timeout: 1s, members: [ {{ address: \"{member}\" }} ] }}\n"
    )))
    .await
    .unwrap();
    (port, dp)
}

/// The first answer on `s`, framed as a client frames it (one to `HEAD`
/// when `head_only`): its status and body, or `None` if the connection
/// ended before a whole answer.
async fn first_answer(s: &mut TcpStream, head_only: bool) -> Option<(u16, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut more = [0u8; 8192];
    let read = async {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut resp = httparse::Response::new(&mut headers);
            if let Ok(httparse::Status::Complete(len)) = resp.parse(&buf) {
                let status = resp.code?;
                let field = |name: &str| {
                    resp.headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case(name))
                        .map(|h| String::from_utf8_lossy(h.value).into_owned())
                };
                let (length, chunked) = (field("content-length"), field("transfer-encoding"));
                let head = len;
                if head_only || status == 204 || status == 304 {
                    return Some((status, Vec::new()));
                }
                loop {
                    let body = &buf[head..];
                    if chunked.is_some() {
                        if let Some(decoded) = dechunk(body) {
                            return Some((status, decoded));
                        }
                    } else if let Some(n) = length.as_ref().and_then(|l| l.parse::<usize>().ok()) {
                        if body.len() >= n {
                            return Some((status, body[..n].to_vec()));
                        }
                    }
                    match s.read(&mut more).await {
                        Ok(0) | Err(_) => {
                            // Delimited by the close, or cut short.
                            let whole = chunked.is_none() && length.is_none();
                            return whole.then(|| (status, buf[head..].to_vec()));
                        }
                        Ok(n) => buf.extend_from_slice(&more[..n]),
                    }
                }
            }
            match s.read(&mut more).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => buf.extend_from_slice(&more[..n]),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .ok()
        .flatten()
}

/// A whole chunked body, decoded, if `body` holds one.
fn dechunk(mut body: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line = body.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&body[..line]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        body = &body[line + 2..];
        if size == 0 {
            // Trailers up to the empty line.
            return body.windows(2).position(|w| w == b"\r\n").map(|_| out);
        }
        if body.len() < size + 2 {
            return None;
        }
        out.extend_from_slice(&body[..size]);
        body = &body[size + 2..];
    }
}

/// h11's verdicts on `cases`, from `tests/h11/verdicts.py`.
fn h11_verdicts(cases: &[Value]) -> Vec<Value> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = root.join("../target/pyenv/bin/python");
    assert!(python.exists(), "no Python environment: tests/run makes it");
    let mut child = Command::new(python)
        .arg(root.join("h11/verdicts.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let input = serde_json::to_vec(cases).unwrap();
    child.stdin.take().unwrap().write_all(&input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "h11 verdicts failed");
    serde_json::from_slice(&out.stdout).unwrap()
}

fn bytes_of(v: &Value) -> Vec<u8> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|b| b.as_u64())
                .map(|b| b as u8)
                .collect()
        })
        .unwrap_or_default()
}

/// Every message Keel passed on was taken by h11 with the same body.
fn judge(kind: &str, messages: &[Vec<u8>], keel: &[Option<Vec<u8>>], h11: &[Value]) -> usize {
    let mut disagreements = Vec::new();
    let mut passed = 0;
    for ((message, keel), h11) in messages.iter().zip(keel).zip(h11) {
        let Some(body) = keel else { continue };
        passed += 1;
        let h11_body = (h11["ok"] == json!(true)).then(|| bytes_of(&h11["body"]));
        if h11_body.as_ref() != Some(body) {
            disagreements.push(format!(
                "{kind} {:?}: Keel passed on {:?}, h11: {h11}",
                String::from_utf8_lossy(message),
                String::from_utf8_lossy(body)
            ));
        }
    }
    assert!(disagreements.is_empty(), "{}", disagreements.join("\n"));
    println!(
        "{kind}s: Keel passed on {passed} of {}, each framed as h11 frames it",
        messages.len()
    );
    passed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_keel_passes_on_are_framed_as_h11_frames_them() {
    let member = echo_member().await;
    let (port, _dp) = keel_before(member).await;
    let mut messages = Vec::new();
    for method in ["POST", "GET"] {
        for framing in FRAMINGS {
            for body in BODIES {
                let version = "HTTP/1.1";
                messages.push(
                    format!("{method} /echo {version}\r\nHost: t\r\n{framing}Connection: close\r\n\r\n{body}")
                        .into_bytes(),
                );
            }
        }
    }
    for framing in ["Transfer-Encoding: chunked\r\n", "Content-Length: 5\r\n"] {
        messages.push(
            format!("POST /echo HTTP/1.0\r\nHost: t\r\n{framing}\r\n5\r\nhello\r\n0\r\n\r\n")
                .into_bytes(),
        );
    }
    let mut keel = Vec::new();
    for m in &messages {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let _ = s.write_all(m).await;
        // A 200 is the member's echo of the body Keel forwarded.
        let answer = first_answer(&mut s, false).await;
        keel.push(answer.filter(|(st, _)| *st == 200).map(|(_, b)| b));
    }
    let cases: Vec<Value> = messages
        .iter()
        .map(|m| json!({"kind": "request", "data": m}))
        .collect();
    let verdicts = h11_verdicts(&cases);
    let passed = judge("request", &messages, &keel, &verdicts);
    assert!(passed > 50, "only {passed} of {} passed on", messages.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_keel_passes_on_are_framed_as_h11_frames_them() {
    // The member sends one scripted answer per connection, then closes.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let member = listener.local_addr().unwrap();
    let script = std::sync::Arc::new(tokio::sync::Mutex::new(Vec::<u8>::new()));
    let serving = script.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let answer = serving.lock().await.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(&answer).await;
            });
        }
    });
    let (port, _dp) = keel_before(member).await;
    let mut messages = Vec::new();
    let mut methods = Vec::new();
    for (method, status) in [
        ("GET", "200 OK"),
        ("GET", "204 No Content"),
        ("GET", "304 Not Modified"),
        ("HEAD", "200 OK"),
    ] {
        for framing in FRAMINGS {
            for body in BODIES {
                messages.push(format!("HTTP/1.1 {status}\r\n{framing}\r\n{body}").into_bytes());
                methods.push(method);
            }
        }
    }
    messages.push(b"HTTP/1.0 200 OK\r\n\r\nuntil close".to_vec());
    methods.push("GET");
    messages.push(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello".to_vec(),
    );
    methods.push("GET");
    let mut keel = Vec::new();
    for (m, method) in messages.iter().zip(&methods) {
        *script.lock().await = m.clone();
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        s.write_all(
            format!("{method} / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let answer = first_answer(&mut s, *method == "HEAD").await;
        // A 502 is Keel refusing the member's answer.
        keel.push(answer.filter(|(st, _)| *st != 502).map(|(_, b)| b));
    }
    let cases: Vec<Value> = messages
        .iter()
        .zip(&methods)
        .map(|(m, method)| json!({"kind": "response", "data": m, "method": method}))
        .collect();
    let verdicts = h11_verdicts(&cases);
    let passed = judge("response", &messages, &keel, &verdicts);
    assert!(passed > 50, "only {passed} of {} passed on", messages.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codings_keel_cannot_pass_on_are_refused_and_the_connection_closed() {
    let member = echo_member().await;
    let (port, _dp) = keel_before(member).await;
    for (request, status) in [
        // HTTP/1.0 has no chunked coding: the message is faulty.
        (&b"POST / HTTP/1.0\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"[..], 400),
        (b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", 501),
        (b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", 400),
    ] {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        s.write_all(request).await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut out)).await;
        let out = String::from_utf8_lossy(&out);
        assert!(
            out.starts_with(&format!("HTTP/1.1 {status}")) || out.starts_with(&format!("HTTP/1.0 {status}")),
            "{}: {out}",
            String::from_utf8_lossy(request)
        );
        assert!(!out.contains("hello"), "{out}");
    }
}
