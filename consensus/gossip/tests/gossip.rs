#![allow(clippy::unwrap_used)]
//! Real UDP on loopback: nodes with the key see each other and each other's
//! reports; a node without it is never heard; a stopped node is judged dead.

use std::net::SocketAddr;
use std::time::Duration;

use keel_gossip::{spawn_gossip, ClusterView, GossipConfig, GossipHandle, Report};

const INTERVAL: Duration = Duration::from_millis(100);

fn free_udp() -> SocketAddr {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.local_addr().unwrap()
}

async fn node(name: &str, addr: SocketAddr, seeds: &[SocketAddr], key: [u8; 32]) -> GossipHandle {
    let g = spawn_gossip(GossipConfig {
        node_name: name.into(),
        cluster_id: "c1".into(),
        listen: addr,
        advertise: addr,
        seeds: seeds.to_vec(),
        key,
        also_accept: Vec::new(),
        interval: INTERVAL,
    })
    .await
    .unwrap();
    g.publish(&Report {
        ready: true,
        applied_version: 7,
        connections: 1,
        ..Report::default()
    })
    .await;
    g
}

async fn wait_view(g: &GossipHandle, what: &str, ok: impl Fn(&ClusterView) -> bool) {
    let mut view = g.view();
    let found = tokio::time::timeout(Duration::from_secs(15), view.wait_for(|v| ok(v)))
        .await
        .is_ok();
    assert!(found, "timed out waiting for {what}: {:?}", *view.borrow());
}

#[tokio::test]
async fn keyed_nodes_see_each_other_and_strangers_are_not_heard() {
    let key = [7u8; 32];
    let addrs: Vec<SocketAddr> = (0..3).map(|_| free_udp()).collect();
    let mut nodes = Vec::new();
    for (i, a) in addrs.iter().enumerate() {
        nodes.push(node(&format!("n{i}"), *a, &addrs, key).await);
    }
    for g in &nodes {
        wait_view(g, "three live peers with reports", |v| {
            v.len() == 3
                && v.values()
                    .all(|p| p.live && p.report.as_ref().is_some_and(|r| r.applied_version == 7))
        })
        .await;
    }

    // Same cluster id, wrong key: it talks to everyone, nobody listens.
    let stranger = node("intruder", free_udp(), &addrs, [9u8; 32]).await;
    tokio::time::sleep(INTERVAL * 20).await;
    for g in &nodes {
        assert!(
            !g.view().borrow().contains_key("intruder"),
            "a node without the key got into the view"
        );
        assert!(
            g.rejected() > 0,
            "the intruder's datagrams were not even seen"
        );
    }
    assert_eq!(
        stranger.view().borrow().len(),
        1,
        "the intruder learned about the cluster"
    );

    // A node that stops is judged dead by the others.
    let gone = nodes.pop().unwrap();
    gone.shutdown().await;
    let started = tokio::time::Instant::now();
    for g in &nodes {
        wait_view(g, "n2 to be dead", |v| v.get("n2").is_some_and(|p| !p.live)).await;
    }
    eprintln!(
        "a stopped node was judged dead after {:?}",
        started.elapsed()
    );
}
