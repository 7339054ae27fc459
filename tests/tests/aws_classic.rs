//! The classic ELB API (2012-06-01) driven by its real clients (installed
//! by `tests/run` into `target/pyenv`): boto3's `elb`, and compared with
//! moto. Instances are loopback addresses (127.0.0.2, 127.0.0.3), each
//! with an HTTP server and a TCP echo server on the same ports, as EC2
//! instances behind a classic load balancer would be.

#![allow(clippy::unwrap_used)] // a failed unwrap is how a test fails

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use keel_tests::aws::{python, script, AwsNode, Moto};
use keel_tests::backend::{EchoBackend, HttpBackend};
use keel_tests::client::{client_no_reuse, get_with};
use keel_tests::free_port;
use keel_tests::node::raw_call;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One instance: an HTTP server (which answers `/health`) and an echo
/// server on the instance's own address.
struct Instance {
    http: HttpBackend,
    _echo: EchoBackend,
}

async fn instance(name: &str, ip: &str, http_port: u16, echo_port: u16) -> Instance {
    Instance {
        http: HttpBackend::start_on(name, format!("{ip}:{http_port}").parse().unwrap()).await,
        _echo: EchoBackend::start_on(format!("{ip}:{echo_port}").parse().unwrap()).await,
    }
}

async fn wait_for(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {addr}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boto3_builds_a_classic_load_balancer_that_serves_sticks_and_sends_proxy_headers() {
    let (instance_port, echo_port) = (free_port(), free_port());
    let a = instance("a", "127.0.0.2", instance_port, echo_port).await;
    let b = instance("b", "127.0.0.3", instance_port, echo_port).await;
    let n = AwsNode::start();
    n.keel(&["instance", "add", "i-0aaa", "127.0.0.2"]);
    n.keel(&["instance", "add", "i-0bbb", "127.0.0.3"]);
    let listed = n.keel(&["instance", "list"]);
    assert!(
        listed.contains("i-0aaa  127.0.0.2") && listed.contains("i-0bbb  127.0.0.3"),
        "{listed}"
    );
    // The registry refuses garbage and keeps what it has.
    let put = |id: &str, body: &str| {
        raw_call(
            &n.admin,
            "PUT",
            &format!("/api/v1/instances/{id}"),
            Some(&n.token),
            Some(body),
        )
        .unwrap()
    };
    let (status, body) = put("i-0ccc", r#"{"address": "not-an-ip"}"#);
    assert!(
        (400..500).contains(&status) && body.contains("address"),
        "{status} {body}"
    );
    let (status, body) = put("bad%20id", r#"{"address": "127.0.0.9"}"#);
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("id:"), "{body}");
    let (status, _) = put("i-0ccc", r#"{"address": "127.0.0.9", "extra": 1}"#);
    assert!((400..500).contains(&status));
    let (status, _) = raw_call(
        &n.admin,
        "DELETE",
        "/api/v1/instances/i-nope",
        Some(&n.token),
        None,
    )
    .unwrap();
    assert_eq!(status, 404);
    assert_eq!(n.keel(&["instance", "list"]), listed);
    let (http_port, tcp_port) = (free_port(), free_port());
    let run = |phase: &str| {
        n.run(
            python(),
            &[script("elb_cycle.py"), phase.into()],
            &[
                ("HTTP_PORT", http_port.to_string()),
                ("TCP_PORT", tcp_port.to_string()),
                ("OTHER_PORT", free_port().to_string()),
                ("INSTANCE_PORT", instance_port.to_string()),
                ("ECHO_PORT", echo_port.to_string()),
            ],
        )
    };
    assert!(run("create").contains("created"));

    // HTTP: both instances serve; the LB-cookie policy pins a client.
    let lb: SocketAddr = format!("127.0.0.1:{http_port}").parse().unwrap();
    wait_for(lb).await;
    let c = client_no_reuse();
    let url = format!("http://{lb}/");
    let mut seen = BTreeSet::new();
    let mut cookie = String::new();
    for _ in 0..10 {
        let (status, headers, body) = get_with(&c, &url, &[]).await.unwrap();
        assert_eq!(status, 200);
        seen.insert(body);
        if let Some(v) = headers.get("set-cookie") {
            cookie = v.to_str().unwrap().split(';').next().unwrap().to_owned();
        }
    }
    assert_eq!(seen, BTreeSet::from(["a".to_owned(), "b".to_owned()]));
    assert!(
        cookie.starts_with(&format!("keel-web.{http_port}=")),
        "{cookie:?}"
    );
    let (_, _, first) = get_with(&c, &url, &[("cookie", &cookie)]).await.unwrap();
    for _ in 0..6 {
        let (_, _, body) = get_with(&c, &url, &[("cookie", &cookie)]).await.unwrap();
        assert_eq!(body, first, "a sticky client moved");
    }

    // TCP: the ProxyProtocolPolicyType policy on the echo port puts a
    // PROXY v1 line before the client's bytes.
    let tcp: SocketAddr = format!("127.0.0.1:{tcp_port}").parse().unwrap();
    wait_for(tcp).await;
    let mut s = tokio::net::TcpStream::connect(tcp).await.unwrap();
    s.write_all(b"hello").await.unwrap();
    s.shutdown().await.unwrap();
    let mut echoed = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut echoed))
        .await
        .unwrap()
        .unwrap();
    assert!(
        echoed.starts_with("PROXY TCP4 127.0.0.1 127.0.0.1 ") && echoed.contains("\r\nhello"),
        "{echoed:?}"
    );

    // Keel's own API shows the same objects: pools, health check (on the
    // HTTP port for the TCP pool too), stickiness, PROXY, draining.
    let pool = |port: u16| {
        let (status, body) = raw_call(
            &n.admin,
            "GET",
            &format!("/api/v1/pools/web.{port}"),
            Some(&n.token),
            None,
        )
        .unwrap();
        assert_eq!(status, 200, "{body}");
        serde_json::from_str::<serde_json::Value>(&body).unwrap()
    };
    let http_pool = pool(http_port);
    assert_eq!(http_pool["stickiness"]["type"], "lb_cookie", "{http_pool}");
    assert_eq!(http_pool["drain_timeout"], "20s", "{http_pool}");
    let members: BTreeSet<String> = http_pool["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["address"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        members,
        BTreeSet::from([
            format!("127.0.0.2:{instance_port}"),
            format!("127.0.0.3:{instance_port}")
        ])
    );
    let tcp_pool = pool(tcp_port);
    assert_eq!(tcp_pool["proxy_protocol"], "v1", "{tcp_pool}");
    assert_eq!(
        tcp_pool["health_check"]["port"], instance_port,
        "{tcp_pool}"
    );
    assert!(a.http.health_checks() > 0 && b.http.health_checks() > 0);

    assert!(run("errors").contains("errors ok"));
    assert!(run("delete").contains("deleted"));
    let (_, pools) = raw_call(&n.admin, "GET", "/api/v1/pools", Some(&n.token), None).unwrap();
    assert_eq!(pools.trim(), "[]");
    let (_, events) = raw_call(&n.admin, "GET", "/api/v1/events", Some(&n.token), None).unwrap();
    assert!(events.contains(&format!("aws key {}", n.id)), "{events}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boto3_gets_the_same_classic_answers_from_keel_as_from_moto() {
    let instance_port = free_port();
    let _a = instance("a", "127.0.0.2", instance_port, free_port()).await;
    let _b = instance("b", "127.0.0.3", instance_port, free_port()).await;
    let moto = Moto::start();
    let n = AwsNode::start();
    n.keel(&["instance", "add", "i-0aaa", "127.0.0.2"]);
    n.keel(&["instance", "add", "i-0bbb", "127.0.0.3"]);
    let text = n.run(
        python(),
        &[script("elb_compare.py")],
        &[
            ("MOTO", moto.url.clone()),
            ("LB_PORT", free_port().to_string()),
            ("TCP_PORT", free_port().to_string()),
            ("INSTANCE_PORT", instance_port.to_string()),
            ("INSTANCES", "i-0aaa,i-0bbb".into()),
        ],
    );
    drop(moto);
    assert!(text.contains("0 undocumented differences"), "{text}");
    eprintln!("{text}");
}
