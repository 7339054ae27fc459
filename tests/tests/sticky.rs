//! Sticky sessions (Keel's signed lb_cookie, the application's app_cookie)
//! and the consistent_hash algorithm, driven over real HTTP.

#![allow(clippy::unwrap_used)] // a failed unwrap is how a test fails

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use keel_tests::backend::HttpBackend;
use keel_tests::client::{client, get_with, HttpClient};
use keel_tests::{free_port, http_lb, members, spec};

async fn backends(n: usize) -> Vec<HttpBackend> {
    let mut b = Vec::new();
    for i in 0..n {
        b.push(HttpBackend::start(&format!("m{i}")).await);
    }
    b
}

fn addrs(b: &[HttpBackend]) -> Vec<SocketAddr> {
    b.iter().map(|b| b.addr).collect()
}

/// The `name=value` of the Set-Cookie named `name`, if any.
fn set_cookie(h: &http::HeaderMap, name: &str) -> Option<String> {
    h.get_all(http::header::SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(|v| v.split(';').next().unwrap().to_owned())
}

async fn fetch(c: &HttpClient, url: &str, cookie: Option<&str>) -> (String, http::HeaderMap) {
    let headers: Vec<(&str, &str)> = cookie.map(|c| ("cookie", c)).into_iter().collect();
    let (status, h, body) = get_with(c, url, &headers).await.unwrap();
    assert_eq!(status, 200, "{body}");
    (body, h)
}

#[tokio::test]
async fn lb_cookie_keeps_a_client_on_its_member_while_it_is_healthy() {
    let b = backends(3).await;
    let port = free_port();
    let pool = |m: &[SocketAddr]| {
        format!(
            "stickiness: {{ type: lb_cookie, duration: 1h }}, health_check: {{ type: http, path: /health, interval: 100ms, timeout: 90ms, healthy_threshold: 1, unhealthy_threshold: 1 }}, members: {}",
            members(m)
        )
    };
    let dp = keel_tests::dataplane();
    dp.set_cookie_secrets(&[b"shared by the cluster".to_vec()])
        .await;
    dp.apply(&spec(&http_lb(port, &pool(&addrs(&b)))))
        .await
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/");
    let c = client();

    // Without a cookie requests go round; each answer carries a cookie.
    let (first, h) = fetch(&c, &url, None).await;
    let cookie = set_cookie(&h, "keel-app").expect("a sticky cookie");
    let raw = h[http::header::SET_COOKIE].to_str().unwrap();
    assert!(
        raw.contains("Max-Age=3600") && raw.contains("HttpOnly"),
        "{raw}"
    );
    for m in &b {
        assert!(
            !raw.contains(&m.addr.to_string()),
            "member address leaked: {raw}"
        );
    }
    let mut spread = BTreeMap::new();
    for _ in 0..30 {
        *spread.entry(fetch(&c, &url, None).await.0).or_insert(0) += 1;
    }
    assert_eq!(spread.len(), 3, "{spread:?}");

    // With it, every request reaches the same member.
    for _ in 0..30 {
        assert_eq!(fetch(&c, &url, Some(&cookie)).await.0, first);
    }
    // A forged or tampered cookie is ignored (and replaced).
    let forged = format!("{}0", &cookie[..cookie.len() - 1]);
    let (_, h) = fetch(&c, &url, Some(&forged)).await;
    assert!(set_cookie(&h, "keel-app").is_some());

    // Another node of the same cluster (same secret) honours the cookie.
    let port2 = free_port();
    let other = keel_tests::dataplane();
    other
        .set_cookie_secrets(&[b"shared by the cluster".to_vec()])
        .await;
    other
        .apply(&spec(&http_lb(port2, &pool(&addrs(&b)))))
        .await
        .unwrap();
    let url2 = format!("http://127.0.0.1:{port2}/");
    for _ in 0..10 {
        assert_eq!(fetch(&c, &url2, Some(&cookie)).await.0, first);
    }

    // The member fails its checks: the client moves and gets a new cookie,
    // which then holds on the new member.
    let pinned = b.iter().find(|m| m.name == first).unwrap();
    pinned.set_healthy(false);
    keel_tests::eventually(Duration::from_secs(5), "member marked down", || async {
        dp.members()
            .iter()
            .any(|m| m.address == pinned.addr && !m.healthy)
    })
    .await;
    let (moved, h) = fetch(&c, &url, Some(&cookie)).await;
    assert_ne!(moved, first);
    let cookie2 = set_cookie(&h, "keel-app").unwrap();
    for _ in 0..10 {
        assert_eq!(fetch(&c, &url, Some(&cookie2)).await.0, moved);
    }
    dp.shutdown(Duration::from_millis(100)).await;
    other.shutdown(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn app_cookie_follows_the_applications_session() {
    let b = backends(3).await;
    let port = free_port();
    let dp = keel_tests::dataplane();
    let pool = format!(
        "stickiness: {{ type: app_cookie, cookie: SESSION, duration: 10m }}, members: {}",
        members(&addrs(&b))
    );
    dp.apply(&spec(&http_lb(port, &pool))).await.unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let c = client();

    // Plain pages: no session, no sticky cookie, requests go round.
    let (_, h) = fetch(&c, &format!("{base}/"), None).await;
    assert!(set_cookie(&h, "keel-app-app").is_none());

    // The application starts a session: Keel binds it to that member.
    let (who, h) = fetch(&c, &format!("{base}/login"), None).await;
    let session = set_cookie(&h, "SESSION").unwrap();
    let ours = set_cookie(&h, "keel-app-app").expect("Keel's cookie beside the app's");
    let both = format!("{session}; {ours}");
    for _ in 0..20 {
        assert_eq!(fetch(&c, &format!("{base}/page"), Some(&both)).await.0, who);
    }
    // Once the application's cookie is gone, Keel's alone pins nothing.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..20 {
        seen.insert(fetch(&c, &format!("{base}/page"), Some(&ours)).await.0);
    }
    assert!(seen.len() > 1, "{seen:?}");
    dp.shutdown(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn consistent_hash_moves_only_the_removed_members_share() {
    let b = backends(4).await;
    let port = free_port();
    let dp = keel_tests::dataplane();
    let config = |m: &[SocketAddr], on: &str| {
        http_lb(
            port,
            &format!(
                "algorithm: consistent_hash, hash_on: \"{on}\", members: {}",
                members(m)
            ),
        )
    };
    dp.apply(&spec(&config(&addrs(&b), "header:x-user")))
        .await
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/");
    let c = client();
    let user = |k: usize| format!("user-{k}");
    let route = |c: HttpClient, url: String, k: usize| async move {
        let (_, _, body) = get_with(&c, &url, &[("x-user", &user(k))]).await.unwrap();
        body
    };
    let mut before = HashMap::new();
    for k in 0..400 {
        before.insert(k, route(c.clone(), url.clone(), k).await);
    }
    // Stable per key, spread over every member.
    for k in 0..50 {
        assert_eq!(route(c.clone(), url.clone(), k).await, before[&k]);
    }
    let mut share = BTreeMap::new();
    for who in before.values() {
        *share.entry(who.clone()).or_insert(0) += 1;
    }
    assert_eq!(share.len(), 4, "{share:?}");
    assert!(share.values().all(|&n| n > 50), "{share:?}");

    // Remove m2: only its keys move, and they spread over the rest.
    let rest: Vec<SocketAddr> = b
        .iter()
        .filter(|m| m.name != "m2")
        .map(|m| m.addr)
        .collect();
    dp.apply(&spec(&config(&rest, "header:x-user")))
        .await
        .unwrap();
    let mut moved_to = BTreeMap::new();
    for k in 0..400 {
        let now = route(c.clone(), url.clone(), k).await;
        if before[&k] == "m2" {
            assert_ne!(now, "m2");
            *moved_to.entry(now).or_insert(0) += 1;
        } else {
            assert_eq!(now, before[&k], "key {k} moved although its member stayed");
        }
    }
    assert!(moved_to.len() >= 2, "{moved_to:?}");

    // Hashing on a cookie: the same cookie value, the same member.
    dp.apply(&spec(&config(&addrs(&b), "cookie:cart")))
        .await
        .unwrap();
    for k in 0..20 {
        let cookie = format!("cart=c{k}");
        let (first, _) = fetch(&c, &url, Some(&cookie)).await;
        for _ in 0..5 {
            assert_eq!(fetch(&c, &url, Some(&cookie)).await.0, first);
        }
    }
    dp.shutdown(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn consistent_hash_on_a_forwarding_field_hashes_what_the_member_gets() {
    let b = backends(4).await;
    let port = free_port();
    let dp = keel_tests::dataplane();
    // The client is a trusted proxy, so X-Forwarded-For reaches the member
    // as "<its value>, 127.0.0.1": a key per end client.
    dp.apply(&spec(&format!(
        "load_balancers:\n  - {{ name: web, listeners: [ {{ port: {port}, protocol: http, bind: 127.0.0.1, \
         default_pool: app, trusted_proxies: [127.0.0.1/32] }} ] }}\n\
         pools:\n  - {{ name: app, algorithm: consistent_hash, hash_on: \"header:x-forwarded-for\", members: {} }}\n",
        members(&addrs(&b))
    )))
    .await
    .unwrap();
    let url = format!("http://127.0.0.1:{port}/");
    let c = client();
    let route = |k: usize| {
        let (c, url) = (c.clone(), url.clone());
        async move {
            let ip = format!("192.0.2.{k}");
            get_with(&c, &url, &[("x-forwarded-for", &ip)])
                .await
                .unwrap()
                .2
        }
    };
    let mut share = BTreeMap::new();
    for k in 0..200 {
        let first = route(k).await;
        assert_eq!(route(k).await, first, "client {k} moved");
        *share.entry(first).or_insert(0) += 1;
    }
    // Without the key every request would hash the same source address.
    assert_eq!(share.len(), 4, "{share:?}");
    dp.shutdown(Duration::from_millis(100)).await;
}
