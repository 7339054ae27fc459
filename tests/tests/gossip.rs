#![allow(clippy::unwrap_used)]
//! Gossip between real `keel` processes in namespaces: every node's view of
//! every pool member reaches every other node, and junk sent to the gossip
//! port changes nothing.

use std::time::{Duration, Instant};

use keel_tests::cluster::{Cluster, A, B};
use keel_tests::netns::{in_ns, wait_until};
use serde_json::Value;

fn config() -> String {
    format!(
        "load_balancers:\n  - name: web\n    listeners: [ {{ port: 8000, protocol: http, default_pool: app }} ]\n\
         pools:\n  - name: app\n    health_check: {{ type: http, path: /health, interval: 200ms, timeout: 100ms, \
         healthy_threshold: 1, unhealthy_threshold: 2 }}\n    members: [ {{ address: \"{A}\" }}, {{ address: \"{B}\" }} ]\n"
    )
}

/// `address` → node → verdict, from node `i`'s status.
fn views(c: &Cluster, i: usize, address: &str) -> Vec<(String, String)> {
    let status = c.status(i);
    status["members"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["address"] == address)
        .and_then(|m| m["views"].as_object().cloned())
        .map(|v| {
            v.into_iter()
                .map(|(k, v)| (k, v.as_str().unwrap_or("").to_owned()))
                .collect()
        })
        .unwrap_or_default()
}

fn all_say(c: &Cluster, address: &str, verdict: &str) -> bool {
    (1..=3).all(|i| {
        let v = views(c, i, address);
        v.len() == 3 && v.iter().all(|(_, s)| s == verdict)
    })
}

#[test]
fn every_node_sees_every_nodes_view_of_a_member() {
    let c = Cluster::start_with(3, &config(), &[]);
    wait_until(
        Duration::from_secs(15),
        "every node sees b up everywhere",
        || all_say(&c, B, "up"),
    );
    let status = c.status(1);
    for n in status["nodes"].as_array().unwrap() {
        assert_eq!(
            n["live"],
            Value::Bool(true),
            "gossip liveness of {}",
            n["name"]
        );
    }

    // Two of the three nodes check each member; the third follows them.
    std::thread::sleep(Duration::from_secs(2));
    let window = Duration::from_secs(4);
    let before = c.backends[0].health_checks();
    std::thread::sleep(window);
    let checks = c.backends[0].health_checks() - before;
    let per_interval = checks as f64 / (window.as_millis() as f64 / 200.0);
    eprintln!("member a: {checks} checks in {window:?} = {per_interval:.2} per 200 ms interval");
    assert!(
        (1.5..=2.4).contains(&per_interval),
        "a member should be checked by two nodes, got {per_interval:.2} per interval"
    );

    // Junk at the gossip port: dropped, nothing else happens.
    in_ns(&c.topo.ns("c"), || {
        let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        for len in [0usize, 1, 27, 28, 200, 1400] {
            let junk: Vec<u8> = (0..len).map(|i| (i * 31 + 7) as u8).collect();
            for i in 1..=3 {
                s.send_to(&junk, format!("10.77.0.{i}:9092")).unwrap();
            }
        }
    });

    // The member dies behind the cluster: every node's view says so.
    let killed = Instant::now();
    c.backends[1].kill();
    wait_until(
        Duration::from_secs(5),
        "every node sees b down everywhere",
        || all_say(&c, B, "down"),
    );
    eprintln!(
        "b down in every view on every node after {:?}",
        killed.elapsed()
    );
    assert!(all_say(&c, A, "up"), "a stays up: {:?}", views(&c, 1, A));
}
