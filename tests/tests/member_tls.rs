//! TLS from Keel to members: verified against a CA bundle with SNI, or
//! explicitly unverified; HTTP/2 by ALPN; health checks over the same TLS;
//! re-encryption behind tls listeners and TLS origination behind tcp ones.

#![allow(clippy::unwrap_used)] // a failed unwrap is how a test fails

use std::net::SocketAddr;
use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use keel_tests::client::{client, get};
use keel_tests::tls::{server_config, Ca, HttpsConn, TlsMember};
use keel_tests::{free_port, spec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn yaml_block(pem: &str) -> String {
    format!("{pem:?}")
}

fn config(port: u16, protocol: &str, member: SocketAddr, pool_extra: &str, extra: &str) -> String {
    format!(
        "load_balancers:\n  - {{ name: web, listeners: [ {{ port: {port}, protocol: {protocol}, bind: 127.0.0.1, default_pool: api {extra} }} ] }}\n\
         pools:\n  - {{ name: api, members: [ {{ address: \"{member}\" }} ] {pool_extra} }}\n"
    )
}

#[tokio::test]
async fn members_are_reached_over_verified_tls_with_sni() {
    let ca = Ca::new();
    let member = TlsMember::start("secure", &ca.issue(&["api.internal"])).await;
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/");
    let dp = keel_tests::dataplane();
    let with = |tls: &str, version: &str| {
        spec(&config(
            port,
            "http",
            member.addr,
            &format!(", tls: {tls}{version}"),
            "",
        ))
    };
    let c = client();

    // Verified against the CA, with the configured name as SNI.
    let good = format!(
        "{{ ca: {}, server_name: api.internal }}",
        yaml_block(&ca.pem())
    );
    dp.apply(&with(&good, "")).await.unwrap();
    for _ in 0..5 {
        assert_eq!(get(&c, &url).await.unwrap(), (200, "secure".into()));
    }
    assert!(member
        .names_seen
        .lock()
        .unwrap()
        .iter()
        .all(|n| n.as_deref() == Some("api.internal")));
    assert_eq!(member.http2_connections.load(SeqCst), 0);

    // HTTP/2 to the member, chosen by ALPN.
    dp.apply(&with(&good, ", http_version: http2"))
        .await
        .unwrap();
    for _ in 0..5 {
        assert_eq!(get(&c, &url).await.unwrap(), (200, "secure".into()));
    }
    assert_eq!(
        member.http2_connections.load(SeqCst),
        1,
        "one shared connection"
    );

    // A name the certificate does not cover, or another CA: refused (502).
    let wrong_name = format!(
        "{{ ca: {}, server_name: other.internal }}",
        yaml_block(&ca.pem())
    );
    dp.apply(&with(&wrong_name, "")).await.unwrap();
    assert_eq!(get(&c, &url).await.unwrap().0, 502);
    let other_ca = Ca::new();
    let wrong_ca = format!(
        "{{ ca: {}, server_name: api.internal }}",
        yaml_block(&other_ca.pem())
    );
    dp.apply(&with(&wrong_ca, "")).await.unwrap();
    assert_eq!(get(&c, &url).await.unwrap().0, 502);

    // Verification skipped, asked for explicitly: accepted.
    dp.apply(&with("{ verify: false }", "")).await.unwrap();
    assert_eq!(get(&c, &url).await.unwrap(), (200, "secure".into()));

    // A CA bundle that is not PEM is refused at apply; the old plan serves.
    let bad = "{ ca: \"-----BEGIN CERTIFICATE-----\\nnot base64\\n-----END CERTIFICATE-----\\n\" }";
    let err = dp.apply(&with(bad, "")).await.unwrap_err().to_string();
    assert!(err.starts_with("pool api: tls:"), "{err}");
    assert_eq!(get(&c, &url).await.unwrap(), (200, "secure".into()));
    dp.shutdown(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn health_checks_use_the_pools_tls() {
    let ca = Ca::new();
    let member = TlsMember::start("checked", &ca.issue(&["api.internal"])).await;
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/");
    let check = "health_check: { type: http, path: /health, interval: 100ms, timeout: 90ms, healthy_threshold: 1, unhealthy_threshold: 1 }";
    let dp = keel_tests::dataplane();
    let c = client();
    for (version, tls) in [
        (
            "",
            format!(
                "{{ ca: {}, server_name: api.internal }}",
                yaml_block(&ca.pem())
            ),
        ),
        (", http_version: http2", "{ verify: false }".to_owned()),
    ] {
        let pool = format!(", tls: {tls}{version}, {check}");
        dp.apply(&spec(&config(port, "http", member.addr, &pool, "")))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(dp.members()[0].healthy, "{version}");
        assert_eq!(get(&c, &url).await.unwrap(), (200, "checked".into()));
    }
    // The same check without TLS fails against a TLS member: down, 503.
    let pool = format!(", {check}");
    dp.apply(&spec(&config(port, "http", member.addr, &pool, "")))
        .await
        .unwrap();
    keel_tests::eventually(Duration::from_secs(5), "member down", || async {
        !dp.members()[0].healthy
    })
    .await;
    assert_eq!(get(&c, &url).await.unwrap().0, 503);
    dp.shutdown(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn tls_and_tcp_listeners_re_encrypt_and_originate() {
    let ca = Ca::new();
    let member = TlsMember::start("inner", &ca.issue(&["inner.internal"])).await;
    let tls = format!(
        ", tls: {{ ca: {}, server_name: inner.internal }}",
        yaml_block(&ca.pem())
    );

    // tls listener → TLS member: decrypted, then encrypted again.
    let front = ca.issue(&["front.example"]);
    let port = free_port();
    let yaml = format!(
        "{}certificates:\n  - {}\n",
        config(port, "tls", member.addr, &tls, ", certificates: [front]"),
        front.yaml("front")
    );
    let dp = keel_tests::dataplane();
    dp.apply(&spec(&yaml)).await.unwrap();
    let mut conn = HttpsConn::open(
        SocketAddr::from(([127, 0, 0, 1], port)),
        "front.example",
        ca.client_config(&[b"http/1.1"]),
    )
    .await
    .unwrap();
    assert_eq!(
        conn.leaf.as_ref(),
        Some(&front.der),
        "Keel's certificate outside"
    );
    for _ in 0..3 {
        assert_eq!(conn.get("/").await.unwrap(), (200, "inner".into()));
    }
    dp.shutdown(Duration::from_millis(100)).await;

    // tcp listener → TLS member: plain text in, TLS out.
    let port = free_port();
    let dp = keel_tests::dataplane();
    dp.apply(&spec(&config(port, "tcp", member.addr, &tls, "")))
        .await
        .unwrap();
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut text))
        .await
        .unwrap()
        .unwrap();
    assert!(
        text.starts_with("HTTP/1.1 200") && text.ends_with("inner"),
        "{text}"
    );
    dp.shutdown(Duration::from_millis(100)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_answer_over_tls_reaches_the_client_when_the_member_then_closes() {
    // The member refuses an upload from its head, then closes with the body
    // unread: its kernel resets the connection, and Keel's next write fails.
    // The answer, sent before the reset, is still there to read.
    let ca = Ca::new();
    let acceptor = tokio_rustls::TlsAcceptor::from(server_config(&ca.issue(&["api.internal"])));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(s).await else {
                    return;
                };
                let mut head = Vec::new();
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    let mut more = [0u8; 4096];
                    match tls.read(&mut more).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&more[..n]),
                    }
                }
                // Until Keel's writes wait on this side's full buffers.
                tokio::time::sleep(Duration::from_millis(200)).await;
                let _ = tls
                    .write_all(b"HTTP/1.1 413 Content Too Large\r\ncontent-length: 8\r\nconnection: close\r\n\r\ntoo big\n")
                    .await;
                let _ = tls.flush().await;
            });
        }
    });
    let port = free_port();
    let dp = keel_tests::dataplane();
    let pool = format!(
        ", response_timeout: 2s, tls: {{ ca: {}, server_name: api.internal }}",
        yaml_block(&ca.pem())
    );
    dp.apply(&spec(&config(port, "http", addr, &pool, "")))
        .await
        .unwrap();
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let size = 256 * 1024 * 1024;
    s.write_all(
        format!("PUT /upload HTTP/1.1\r\nHost: t\r\nContent-Length: {size}\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let (mut rd, mut wr) = s.into_split();
    let sender = tokio::spawn(async move {
        let chunk = vec![b'x'; 256 * 1024];
        for _ in 0..size / chunk.len() {
            if wr.write_all(&chunk).await.is_err() {
                return;
            }
        }
    });
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), rd.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer:?}");
    assert!(answer.ends_with("too big\n"), "{answer:?}");
    sender.abort();
    dp.shutdown(Duration::from_millis(100)).await;
}
