//! PROXY protocol v1 and v2 towards members (checked byte for byte by the
//! member), accepted from trusted upstreams on a listener, and the
//! forwarding headers a trusted proxy may extend.

#![allow(clippy::unwrap_used)] // a failed unwrap is how a test fails

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use keel_tests::backend::HttpBackend;
use keel_tests::{free_port, spec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

/// A member that reads a PROXY header of `header_len` bytes off every
/// connection, keeps it, then echoes (TCP) or answers `ok` (HTTP).
struct ProxiedMember {
    addr: SocketAddr,
    headers: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl ProxiedMember {
    async fn start(header_len: usize, http: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let headers = Arc::new(Mutex::new(Vec::new()));
        let seen = headers.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut header = vec![0u8; header_len];
                    if s.read_exact(&mut header).await.is_err() {
                        return;
                    }
                    seen.lock().unwrap().push(header);
                    if http {
                        let svc = service_fn(|_req| async {
                            Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from("ok"))))
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(s), svc)
                            .await;
                    } else {
                        let mut buf = [0u8; 1024];
                        while let Ok(n) = s.read(&mut buf).await {
                            if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                });
            }
        });
        ProxiedMember { addr, headers }
    }

    fn headers(&self) -> Vec<Vec<u8>> {
        self.headers.lock().unwrap().clone()
    }
}

fn v2_ipv4(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let ip = |a: SocketAddr| match a.ip() {
        std::net::IpAddr::V4(v4) => v4.octets(),
        _ => panic!("IPv4 expected"),
    };
    let mut out = V2_SIGNATURE.to_vec();
    out.extend([0x21, 0x11, 0x00, 0x0c]);
    out.extend(ip(src));
    out.extend(ip(dst));
    out.extend(src.port().to_be_bytes());
    out.extend(dst.port().to_be_bytes());
    out
}

/// Sends `bytes`, then reads until the server closes or 3 s pass.
async fn exchange(port: u16, bytes: &[u8]) -> (SocketAddr, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let me = s.local_addr().unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut out)).await;
    (me, String::from_utf8_lossy(&out).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_get_v1_on_tcp_and_v2_on_http_byte_for_byte() {
    let (tport, hport) = (free_port(), free_port());
    // Lengths of the headers for 127.0.0.1 to 127.0.0.1 with 5-digit ports.
    let v1_len = format!("PROXY TCP4 127.0.0.1 127.0.0.1 {} {}\r\n", 10000, tport).len();
    let tcp_member = ProxiedMember::start(v1_len, false).await;
    let http_member = ProxiedMember::start(28, true).await;
    let dp = keel_tests::dataplane();
    dp.apply(&spec(&format!(
        "load_balancers:\n  - {{ name: lb, listeners: [\n\
           {{ port: {tport}, protocol: tcp, bind: 127.0.0.1, default_pool: t }},\n\
           {{ port: {hport}, protocol: http, bind: 127.0.0.1, default_pool: h }} ] }}\n\
         pools:\n\
           - {{ name: t, proxy_protocol: v1, members: [ {{ address: \"{}\" }} ] }}\n\
           - {{ name: h, proxy_protocol: v2, members: [ {{ address: \"{}\" }} ] }}\n",
        tcp_member.addr, http_member.addr
    )))
    .await
    .unwrap();

    let mut s = TcpStream::connect(("127.0.0.1", tport)).await.unwrap();
    let me = s.local_addr().unwrap();
    s.write_all(b"ping").await.unwrap();
    let mut pong = [0u8; 4];
    s.read_exact(&mut pong).await.unwrap();
    assert_eq!(&pong, b"ping");
    let want = format!("PROXY TCP4 127.0.0.1 127.0.0.1 {} {tport}\r\n", me.port());
    assert_eq!(want.len(), v1_len, "the test assumed a 5-digit client port");
    assert_eq!(tcp_member.headers(), vec![want.into_bytes()]);

    // Two requests from one client connection: each member connection
    // carries that client's header (connections with headers are not shared).
    let (me, out) = exchange(
        hport,
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(out.matches("HTTP/1.1 200").count(), 2, "{out}");
    let want = v2_ipv4(me, ([127, 0, 0, 1], hport).into());
    assert_eq!(http_member.headers(), vec![want.clone(), want]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_takes_the_client_from_a_trusted_proxy_header() {
    let web = HttpBackend::start("web").await;
    let (open, strict) = (free_port(), free_port());
    let named_len = "PROXY TCP4 203.0.113.9 10.77.0.100 4444 80\r\n".len();
    let relayed = ProxiedMember::start(named_len, false).await;
    let tport = free_port();
    let dp = keel_tests::dataplane();
    dp.apply(&spec(&format!(
        "load_balancers:\n  - {{ name: lb, listeners: [\n\
           {{ port: {open}, protocol: http, bind: 127.0.0.1, default_pool: web, accept_proxy_protocol: true, trusted_proxies: [127.0.0.0/8] }},\n\
           {{ port: {strict}, protocol: http, bind: 127.0.0.1, default_pool: web, accept_proxy_protocol: true, trusted_proxies: [10.0.0.0/8] }},\n\
           {{ port: {tport}, protocol: tcp, bind: 127.0.0.1, default_pool: relay, accept_proxy_protocol: true, trusted_proxies: [127.0.0.1/32] }} ] }}\n\
         pools:\n\
           - {{ name: web, members: [ {{ address: \"{}\" }} ] }}\n\
           - {{ name: relay, proxy_protocol: v1, members: [ {{ address: \"{}\" }} ] }}\n",
        web.addr, relayed.addr
    )))
    .await
    .unwrap();

    // v1 from a trusted peer: the member sees the named client.
    let (_, out) = exchange(
        open,
        b"PROXY TCP4 203.0.113.9 10.77.0.100 4444 80\r\nGET /headers HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let h = web.last_headers();
    assert!(h.contains("x-forwarded-for: 203.0.113.9\n"), "{h}");

    // v2, with the request in the same packet.
    let mut v2 = v2_ipv4(
        "198.51.100.7:5555".parse().unwrap(),
        "10.77.0.100:80".parse().unwrap(),
    );
    v2.extend(b"GET /headers HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
    let (_, out) = exchange(open, &v2).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(web
        .last_headers()
        .contains("x-forwarded-for: 198.51.100.7\n"));

    // No header, a malformed one, or a header from an untrusted peer: closed unanswered.
    let hits = web.hits();
    for (port, bytes) in [
        (open, &b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"[..]),
        (
            open,
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 70000\r\nGET / HTTP/1.1\r\n\r\n",
        ),
        (
            strict,
            b"PROXY TCP4 203.0.113.9 10.77.0.100 4444 80\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
        ),
    ] {
        let (_, out) = exchange(port, bytes).await;
        assert_eq!(out, "", "port {port}: {out}");
    }
    assert_eq!(web.hits(), hits, "a refused connection reached the member");

    // Read from one proxy, written to the member: the named client passes through.
    let mut s = TcpStream::connect(("127.0.0.1", tport)).await.unwrap();
    s.write_all(b"PROXY TCP4 203.0.113.9 10.77.0.100 4444 80\r\nhi")
        .await
        .unwrap();
    let mut back = [0u8; 2];
    s.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"hi");
    assert_eq!(
        relayed.headers(),
        vec![b"PROXY TCP4 203.0.113.9 10.77.0.100 4444 80\r\n".to_vec()]
    );
    drop(dp);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_trusted_proxy_extends_the_forwarding_headers() {
    let web = HttpBackend::start("web").await;
    let (trusting, wary) = (free_port(), free_port());
    let dp = keel_tests::dataplane();
    dp.apply(&spec(&format!(
        "load_balancers:\n  - {{ name: lb, listeners: [\n\
           {{ port: {trusting}, protocol: http, bind: 127.0.0.1, default_pool: web, trusted_proxies: [127.0.0.1/32] }},\n\
           {{ port: {wary}, protocol: http, bind: 127.0.0.1, default_pool: web, trusted_proxies: [\"fd00::/8\"] }} ] }}\n\
         pools:\n  - {{ name: web, members: [ {{ address: \"{}\" }} ] }}\n",
        web.addr
    )))
    .await
    .unwrap();
    let request = b"GET /headers HTTP/1.1\r\nHost: shop.test\r\nX-Forwarded-For: 192.0.2.1\r\n\
                    Forwarded: for=192.0.2.1;proto=https\r\nX-Forwarded-Host: spoof.test\r\nConnection: close\r\n\r\n";

    exchange(trusting, request).await;
    let h = web.last_headers();
    assert!(h.contains("x-forwarded-for: 192.0.2.1, 127.0.0.1\n"), "{h}");
    assert!(
        h.contains(
            "forwarded: for=192.0.2.1;proto=https, for=127.0.0.1;proto=http;host=\"shop.test\"\n"
        ),
        "{h}"
    );
    assert!(h.contains("x-forwarded-host: spoof.test\n"), "{h}");

    exchange(wary, request).await;
    let h = web.last_headers();
    assert!(h.contains("x-forwarded-for: 127.0.0.1\n"), "{h}");
    assert!(
        h.contains("forwarded: for=127.0.0.1;proto=http;host=\"shop.test\"\n"),
        "{h}"
    );
    assert!(!h.contains("x-forwarded-host"), "{h}");
    assert!(!h.contains("192.0.2.1"), "{h}");
}
