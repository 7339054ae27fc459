//! TLS passthrough: the ClientHello's server name picks the pool, the
//! members do the TLS (the client sees the member's own certificate).

#![allow(clippy::unwrap_used)] // a failed unwrap is how a test fails

use std::net::SocketAddr;
use std::time::Duration;

use keel_tests::tls::{Ca, HttpsConn, TlsMember};
use keel_tests::{free_port, spec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn the_server_name_picks_the_pool_and_tls_reaches_the_member() {
    let ca = Ca::new();
    let shop_cert = ca.issue(&["shop.example", "*.shop.example"]);
    let blog_cert = ca.issue(&["blog.example"]);
    let other_cert = ca.issue(&["fallback.example"]);
    let shop = TlsMember::start("shop", &shop_cert).await;
    let blog = TlsMember::start("blog", &blog_cert).await;
    let other = TlsMember::start("other", &other_cert).await;
    let port = free_port();
    let yaml = format!(
        r#"
load_balancers:
  - name: edge
    listeners:
      - port: {port}
        protocol: tls_passthrough
        bind: 127.0.0.1
        default_pool: other
        rules:
          - {{ priority: 1, host: ["shop.example", "*.shop.example"], pool: shop }}
          - {{ priority: 2, host: blog.example, forward: [ {{ pool: blog, weight: 1 }} ] }}
          - {{ priority: 3, host: "*", source: 10.0.0.0/8, pool: shop }}
pools:
  - {{ name: shop, members: [ {{ address: "{}" }} ] }}
  - {{ name: blog, members: [ {{ address: "{}" }} ] }}
  - {{ name: other, members: [ {{ address: "{}" }} ] }}
"#,
        shop.addr, blog.addr, other.addr
    );
    let dp = keel_tests::dataplane();
    dp.apply(&spec(&yaml)).await.unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));

    for (sni, cert, who) in [
        ("shop.example", &shop_cert, "shop"),
        ("www.shop.example", &shop_cert, "shop"),
        ("BLOG.example", &blog_cert, "blog"),
        ("fallback.example", &other_cert, "other"),
    ] {
        let mut c = HttpsConn::open(addr, sni, ca.client_config(&[b"http/1.1"]))
            .await
            .unwrap_or_else(|e| panic!("{sni}: {e}"));
        // The member's own certificate: Keel did not terminate.
        assert_eq!(c.leaf.as_ref(), Some(&cert.der), "{sni}");
        for _ in 0..3 {
            assert_eq!(c.get("/").await.unwrap(), (200, who.to_owned()), "{sni}");
        }
    }
    keel_tests::eventually(Duration::from_secs(5), "shop saw both names", || async {
        shop.names_seen.lock().unwrap().as_slice()
            == [
                Some("shop.example".to_owned()),
                Some("www.shop.example".to_owned()),
            ]
    })
    .await;

    // curl through the same listener, HTTP/2 by the member's ALPN.
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--http2", "-w", " %{http_version}", "--cacert"])
        .arg(&ca_file)
        .arg("--resolve")
        .arg(format!("blog.example:{port}:127.0.0.1"))
        .arg(format!("https://blog.example:{port}/"))
        .output()
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "blog 2",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Not TLS: closed without reaching any member, and counted.
    let before = blog.names_seen.lock().unwrap().len() + other.names_seen.lock().unwrap().len();
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: blog.example\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert!(dp
        .render_metrics()
        .contains(&format!("keel_listener_tls_handshake_failures_total{{lb=\"edge\",listener=\"127.0.0.1:{port}\",protocol=\"tls_passthrough\"}} 1")));
    let after = blog.names_seen.lock().unwrap().len() + other.names_seen.lock().unwrap().len();
    assert_eq!(before, after);
    dp.shutdown(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn a_client_hello_that_trickles_in_is_still_routed() {
    let ca = Ca::new();
    let cert = ca.issue(&["slow.example"]);
    let member = TlsMember::start("slow", &cert).await;
    let fallback = TlsMember::start("fallback", &ca.issue(&["x.example"])).await;
    let port = free_port();
    let yaml = format!(
        "load_balancers:\n  - {{ name: e, listeners: [ {{ port: {port}, protocol: tls_passthrough, bind: 127.0.0.1, default_pool: d, rules: [ {{ priority: 1, host: slow.example, pool: s }} ] }} ] }}\n\
         pools:\n  - {{ name: s, members: [ {{ address: \"{}\" }} ] }}\n  - {{ name: d, members: [ {{ address: \"{}\" }} ] }}\n",
        member.addr, fallback.addr
    );
    let dp = keel_tests::dataplane();
    dp.apply(&spec(&yaml)).await.unwrap();

    // A stream that writes its first bytes (the ClientHello) 7 at a time.
    struct Trickle(TcpStream, usize);
    impl tokio::io::AsyncRead for Trickle {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
        }
    }
    impl tokio::io::AsyncWrite for Trickle {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            let n = if self.1 < 2 {
                buf.len().min(7)
            } else {
                buf.len()
            };
            let r = std::pin::Pin::new(&mut self.0).poll_write(cx, &buf[..n]);
            if r.is_ready() && self.1 < 2 {
                // Make each piece its own segment.
                std::thread::sleep(Duration::from_millis(3));
            }
            r
        }
        fn poll_flush(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            self.1 += 1;
            std::pin::Pin::new(&mut self.0).poll_flush(cx)
        }
        fn poll_shutdown(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
        }
    }
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let name = rustls::pki_types::ServerName::try_from("slow.example").unwrap();
    let tls = tokio_rustls::TlsConnector::from(ca.client_config(&[b"http/1.1"]))
        .connect(name, Trickle(tcp, 0))
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.peer_certificates().unwrap()[0], cert.der);
    // The member finishes its side of the handshake a moment later.
    keel_tests::eventually(Duration::from_secs(5), "member saw the name", || async {
        member.names_seen.lock().unwrap().as_slice() == [Some("slow.example".to_owned())]
    })
    .await;
    assert!(fallback.names_seen.lock().unwrap().is_empty());
    dp.shutdown(Duration::from_millis(100)).await;
}
