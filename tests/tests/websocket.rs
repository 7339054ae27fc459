//! Websockets (HTTP/1.1 Upgrade) through HTTP and HTTPS listeners: echoed
//! both ways, counted, refused upgrades passed back, drained on change.

#![allow(clippy::unwrap_used)] // a failed unwrap is how a test fails

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use keel_dataplane::Dataplane;
use keel_tests::backend::HttpBackend;
use keel_tests::tls::Ca;
use keel_tests::{free_port, spec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

/// A websocket member that echoes every text and binary message, prefixed
/// with its name, and counts the upgrades it accepted.
struct WsMember {
    addr: SocketAddr,
    upgrades: Arc<AtomicU64>,
}

impl WsMember {
    async fn start(name: &'static str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let upgrades = Arc::new(AtomicU64::new(0));
        let counted = upgrades.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                let counted = counted.clone();
                tokio::spawn(async move {
                    let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else {
                        return;
                    };
                    counted.fetch_add(1, SeqCst);
                    while let Some(Ok(m)) = ws.next().await {
                        let reply = match m {
                            Message::Text(t) => Message::text(format!("{name}:{t}")),
                            Message::Binary(b) => Message::binary(b),
                            Message::Close(_) => break,
                            _ => continue,
                        };
                        if ws.send(reply).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        WsMember { addr, upgrades }
    }
}

fn ws_config(port: u16, members: &[SocketAddr], drain: &str) -> String {
    let m: Vec<String> = members
        .iter()
        .map(|a| format!("{{ address: \"{a}\" }}"))
        .collect();
    format!(
        "load_balancers:\n  - {{ name: web, listeners: [ {{ port: {port}, protocol: http, bind: 127.0.0.1, default_pool: ws }} ] }}\n\
         pools:\n  - {{ name: ws, drain_timeout: {drain}, members: [ {} ] }}\n",
        m.join(", ")
    )
}

fn metric(dp: &Dataplane, name: &str) -> u64 {
    dp.render_metrics()
        .lines()
        .find(|l| l.starts_with(name) && !l.starts_with('#'))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in metrics"))
}

#[tokio::test]
async fn websocket_messages_echo_both_ways_and_are_counted() {
    let member = WsMember::start("m1").await;
    let port = free_port();
    let dp = keel_tests::dataplane();
    dp.apply(&spec(&ws_config(port, &[member.addr], "5s")))
        .await
        .unwrap();

    let url = format!("ws://127.0.0.1:{port}/chat");
    let (mut ws, response) = tokio_tungstenite::connect_async(&url).await.unwrap();
    assert_eq!(response.status(), 101);
    for i in 0..100 {
        ws.send(Message::text(format!("hello {i}"))).await.unwrap();
        let got = ws.next().await.unwrap().unwrap();
        assert_eq!(got, Message::text(format!("m1:hello {i}")));
    }
    // A large binary message crosses in both directions intact.
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    ws.send(Message::binary(big.clone())).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::binary(big));
    // Ping is answered by the member through the tunnel.
    ws.send(Message::Ping(b"p".to_vec().into())).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::Pong(b"p".to_vec().into())
    );

    assert_eq!(metric(&dp, "keel_listener_upgrades_total"), 1);
    assert_eq!(metric(&dp, "keel_listener_upgraded_connections"), 1);
    assert_eq!(metric(&dp, "keel_listener_active_connections"), 1);
    ws.close(None).await.unwrap();
    drop(ws);
    keel_tests::eventually(Duration::from_secs(5), "tunnel closed", || async {
        metric(&dp, "keel_listener_upgraded_connections") == 0
            && metric(&dp, "keel_listener_active_connections") == 0
    })
    .await;

    // Several at once, each kept apart.
    let mut socks = Vec::new();
    for _ in 0..10 {
        socks.push(tokio_tungstenite::connect_async(&url).await.unwrap().0);
    }
    for (i, ws) in socks.iter_mut().enumerate() {
        ws.send(Message::text(format!("n{i}"))).await.unwrap();
    }
    for (i, ws) in socks.iter_mut().enumerate() {
        assert_eq!(
            ws.next().await.unwrap().unwrap(),
            Message::text(format!("m1:n{i}"))
        );
    }
    assert_eq!(member.upgrades.load(SeqCst), 11);
    assert_eq!(metric(&dp, "keel_listener_upgrades_total"), 11);
    dp.shutdown(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn wss_through_an_https_listener() {
    let member = WsMember::start("m1").await;
    let ca = Ca::new();
    let cert = ca.issue(&["chat.example"]);
    let port = free_port();
    let dp = keel_tests::dataplane();
    let yaml = format!(
        "load_balancers:\n  - {{ name: web, listeners: [ {{ port: {port}, protocol: https, bind: 127.0.0.1, default_pool: ws, certificates: [chat] }} ] }}\n\
         pools:\n  - {{ name: ws, members: [ {{ address: \"{}\" }} ] }}\ncertificates:\n  - {}\n",
        member.addr,
        cert.yaml("chat")
    );
    dp.apply(&spec(&yaml)).await.unwrap();
    let tls = keel_tests::tls::connect(
        SocketAddr::from(([127, 0, 0, 1], port)),
        "chat.example",
        ca.client_config(&[b"http/1.1"]),
    )
    .await
    .unwrap();
    let (mut ws, response) = tokio_tungstenite::client_async("wss://chat.example/live", tls)
        .await
        .unwrap();
    assert_eq!(response.status(), 101);
    ws.send(Message::text("over tls")).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::text("m1:over tls")
    );
    dp.shutdown(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn a_refused_upgrade_is_answered_as_the_member_answered() {
    // An ordinary HTTP member: no websocket, so it answers the handshake
    // like any GET (200, not 101). The client must see that answer and no
    // tunnel may open.
    let plain = HttpBackend::start("plain").await;
    let port = free_port();
    let dp = keel_tests::dataplane();
    dp.apply(&spec(&ws_config(port, &[plain.addr], "5s")))
        .await
        .unwrap();
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(
        b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.ends_with("plain"), "{text}");
    assert_eq!(metric(&dp, "keel_listener_upgrades_total"), 0);
    // HTTP/2 has no Upgrade: a websocket handshake over h2c is plain GET.
    dp.shutdown(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn websockets_drain_with_their_member_then_are_cut() {
    let a = WsMember::start("a").await;
    let b = WsMember::start("b").await;
    let port = free_port();
    let dp = keel_tests::dataplane();
    dp.apply(&spec(&ws_config(port, &[a.addr], "1s")))
        .await
        .unwrap();
    let url = format!("ws://127.0.0.1:{port}/");
    let (mut old, _) = tokio_tungstenite::connect_async(&url).await.unwrap();

    // Replace the member: the open websocket keeps working while it drains
    // and new websockets go to the new member.
    dp.apply(&spec(&ws_config(port, &[b.addr], "1s")))
        .await
        .unwrap();
    let changed = Instant::now();
    old.send(Message::text("still")).await.unwrap();
    assert_eq!(old.next().await.unwrap().unwrap(), Message::text("a:still"));
    let (mut new, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    new.send(Message::text("fresh")).await.unwrap();
    assert_eq!(new.next().await.unwrap().unwrap(), Message::text("b:fresh"));

    // Drain time over: the old one is cut, the new one lives on.
    let ended = tokio::time::timeout(Duration::from_secs(5), old.next())
        .await
        .unwrap();
    assert!(!matches!(ended, Some(Ok(Message::Text(_)))), "{ended:?}");
    let took = changed.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "cut after {took:?}"
    );
    new.send(Message::text("again")).await.unwrap();
    assert_eq!(new.next().await.unwrap().unwrap(), Message::text("b:again"));
    dp.shutdown(Duration::from_millis(100)).await;
}
