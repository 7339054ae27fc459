//! Balancing over real backends on loopback, through the in-process data plane.

#![allow(clippy::unwrap_used)] // a failed unwrap is how a test fails

use std::collections::HashMap;
use std::time::Duration;

use keel_tests::backend::HttpBackend;
use keel_tests::client::{client, get};
use keel_tests::{free_port, http_lb, spec};

async fn backends(n: usize) -> Vec<HttpBackend> {
    let mut v = Vec::new();
    for i in 0..n {
        v.push(HttpBackend::start(&format!("b{i}")).await);
    }
    v
}

fn config(port: u16, algorithm: &str, members: &str) -> String {
    http_lb(
        port,
        &format!("algorithm: {algorithm}, response_timeout: 1s, members: {members}"),
    )
}

async fn tally(url: &str, n: usize) -> HashMap<String, usize> {
    let c = client();
    let mut seen = HashMap::new();
    for _ in 0..n {
        let (status, body) = get(&c, url).await.unwrap();
        assert_eq!(status, 200, "{body}");
        *seen.entry(body).or_default() += 1;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_evenly_and_weights_are_honoured() {
    let b = backends(3).await;
    let port = free_port();
    let dp = keel_tests::dataplane();
    let m = format!(
        r#"[ {{ address: "{}", weight: 3 }}, {{ address: "{}", weight: 1 }}, {{ address: "{}", weight: 0 }} ]"#,
        b[0].addr, b[1].addr, b[2].addr
    );
    dp.apply(&spec(&config(port, "round_robin", &m)))
        .await
        .unwrap();
    // Each worker goes round on its own: off by less than one request
    // each from the exact share.
    let off = keel_tests::test_workers() - 1;
    let near = |seen: &HashMap<String, usize>, name: &str, share: usize| {
        seen.get(name).is_some_and(|&n| n.abs_diff(share) <= off)
    };
    let seen = tally(&format!("http://127.0.0.1:{port}/"), 400).await;
    assert!(near(&seen, "b0", 300), "{seen:?}");
    assert!(near(&seen, "b1", 100), "{seen:?}");
    assert_eq!(seen.get("b2"), None, "weight 0 got traffic: {seen:?}");

    // Equal weights, one member disabled.
    let m = format!(
        r#"[ {{ address: "{}" }}, {{ address: "{}" }}, {{ address: "{}", enabled: false }} ]"#,
        b[0].addr, b[1].addr, b[2].addr
    );
    dp.apply(&spec(&config(port, "round_robin", &m)))
        .await
        .unwrap();
    let seen = tally(&format!("http://127.0.0.1:{port}/"), 200).await;
    assert!(near(&seen, "b0", 100), "{seen:?}");
    assert!(near(&seen, "b1", 100), "{seen:?}");
    assert_eq!(b[2].hits(), 0);
}

/// Sends `per_client` requests from each of `clients` concurrent clients.
async fn load(url: &str, clients: usize, per_client: usize) {
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let u = url.to_owned();
        tasks.push(tokio::spawn(async move {
            let c = client();
            for _ in 0..per_client {
                assert_eq!(get(&c, &u).await.unwrap().0, 200);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_outstanding_prefers_the_idle_member_under_a_slow_one() {
    let fast = HttpBackend::start("fast").await;
    let slow = HttpBackend::start("slow").await;
    slow.set_delay(Duration::from_millis(200));
    let m = format!(
        r#"[ {{ address: "{}" }}, {{ address: "{}" }} ]"#,
        fast.addr, slow.addr
    );
    let url = |port| format!("http://127.0.0.1:{port}/");

    // Round robin, the baseline: the slow member gets half, however slow.
    let port = free_port();
    let dp = keel_tests::dataplane();
    dp.apply(&spec(&config(port, "round_robin", &m)))
        .await
        .unwrap();
    load(&url(port), 4, 10).await;
    assert_eq!((fast.hits(), slow.hits()), (20, 20));

    // Least outstanding: work flows to the member that finishes it.
    let port = free_port();
    let dp2 = keel_tests::dataplane();
    dp2.apply(&spec(&config(port, "least_outstanding", &m)))
        .await
        .unwrap();
    load(&url(port), 4, 50).await;
    let (f, s) = (fast.hits() - 20, slow.hits() - 20);
    assert_eq!(f + s, 200);
    // It still holds about one request at a time (one per worker: each
    // worker counts the requests it started); round robin gave it half.
    let most = 40 * u64::try_from(keel_tests::test_workers()).unwrap();
    assert!(s <= most, "slow member got {s} of 200 requests (fast {f})");

    // random_two, too, steers away from the loaded member.
    let port = free_port();
    let dp3 = keel_tests::dataplane();
    dp3.apply(&spec(&config(port, "random_two", &m)))
        .await
        .unwrap();
    let (f0, s0) = (fast.hits(), slow.hits());
    load(&url(port), 4, 50).await;
    let (f, s) = (fast.hits() - f0, slow.hits() - s0);
    assert!(
        s <= most,
        "random_two: slow member got {s} of 200 requests (fast {f})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_hash_keeps_a_client_on_one_member() {
    let b = backends(3).await;
    let port = free_port();
    let dp = keel_tests::dataplane();
    let m = format!(
        r#"[ {{ address: "{}" }}, {{ address: "{}" }}, {{ address: "{}" }} ]"#,
        b[0].addr, b[1].addr, b[2].addr
    );
    dp.apply(&spec(&config(port, "source_hash", &m)))
        .await
        .unwrap();
    let seen = tally(&format!("http://127.0.0.1:{port}/"), 30).await;
    assert_eq!(
        seen.len(),
        1,
        "one client address went to several members: {seen:?}"
    );
}
