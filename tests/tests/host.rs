//! The authority a request is routed on is the one its member receives,
//! and a request whose `Host` is missing, repeated or malformed is refused
//! (RFC 9112 §3.2) before it is routed or forwarded.

#![allow(clippy::unwrap_used)] // a failed unwrap is how a test fails

use std::time::Duration;

use keel_dataplane::Dataplane;
use keel_tests::backend::HttpBackend;
use keel_tests::{free_port, spec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A listener whose rule refuses host `x` with 403; everything else goes
/// to a member that echoes the fields it got.
async fn fixture() -> (u16, Dataplane, HttpBackend) {
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
        rules: [ {{ priority: 1, host: x, fixed_response: {{ status: 403 }} }} ]
pools:
  - {{ name: web, members: [ {{ address: "{}" }} ] }}
"#,
        web.addr
    )))
    .await
    .unwrap();
    (port, dp, web)
}

/// Sends `request` on a new connection and returns what came back.
async fn send(port: u16, request: &[u8]) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// The `host` fields the member saw in the answer to a `/headers` request.
fn hosts_seen(answer: &str) -> Vec<String> {
    answer
        .lines()
        .filter_map(|l| l.strip_prefix("host: "))
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_member_receives_the_authority_the_request_was_routed_on() {
    let (port, _dp, _web) = fixture().await;
    let out = send(
        port,
        b"GET /headers HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 403"), "{out}");

    // An absolute-form target names the authority; `Host` is replaced by
    // it (RFC 9112 §3.2.2), so routing and the member agree.
    for request in [
        &b"GET http://z/headers HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"[..],
        &b"POST http://z/headers HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nConnection: close\r\n\r\nb"[..],
    ] {
        let out = send(port, request).await;
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        assert_eq!(hosts_seen(&out), ["z"], "{out}");
    }
    // An absolute-form target routed to the refused host is refused.
    let out = send(
        port,
        b"GET http://x/headers HTTP/1.1\r\nHost: z\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 403"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_repeated_or_malformed_hosts_are_refused_400() {
    let (port, _dp, web) = fixture().await;
    let before = web.hits();
    let refused: [&[u8]; 9] = [
        b"GET /headers HTTP/1.1\r\n\r\n",
        b"GET /headers HTTP/1.1\r\nHost: z\r\nHost: x\r\n\r\n",
        b"GET /headers HTTP/1.1\r\nHost: z\r\nHost: z\r\n\r\n",
        b"POST /headers HTTP/1.1\r\nHost: z\r\nHost: x\r\nContent-Length: 1\r\n\r\nb",
        b"GET /headers HTTP/1.1\r\nHost: x y\r\n\r\n",
        b"GET /headers HTTP/1.1\r\nHost: user@x\r\n\r\n",
        b"GET /headers HTTP/1.1\r\nHost: z:port\r\n\r\n",
        b"GET /headers HTTP/1.1\r\nHost: z,x\r\n\r\n",
        b"GET http://user@z/headers HTTP/1.1\r\nHost: z\r\n\r\n",
    ];
    for request in refused {
        let out = send(port, request).await;
        assert!(
            out.starts_with("HTTP/1.1 400"),
            "{}: {out}",
            String::from_utf8_lossy(request)
        );
    }
    assert_eq!(web.hits(), before, "nothing refused reached the member");

    // Well-formed authorities pass: a name with a port, an IPv6 literal,
    // and HTTP/1.0 without any `Host` (which the member gets empty, as
    // RFC 9112 §3.2 has a client send when it has no authority).
    for (request, host) in [
        (
            &b"GET /headers HTTP/1.1\r\nHost: Z.example:8080\r\nConnection: close\r\n\r\n"[..],
            "Z.example:8080",
        ),
        (
            &b"GET /headers HTTP/1.1\r\nHost: [fd77::1]:80\r\nConnection: close\r\n\r\n"[..],
            "[fd77::1]:80",
        ),
        (&b"GET /headers HTTP/1.0\r\n\r\n"[..], ""),
    ] {
        let out = send(port, request).await;
        assert!(out.starts_with("HTTP/1."), "{out}");
        assert!(out[..12].contains(" 200"), "{out}");
        assert_eq!(hosts_seen(&format!("{out}\n")), [host], "{out}");
    }
}
