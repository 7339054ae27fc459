#![allow(clippy::unwrap_used)]
//! Real `keel` processes, one per network namespace on a bridge: bootstrap,
//! join with tokens, applies through followers, crashes and partitions.

use std::time::{Duration, Instant};

use keel_tests::cluster::{config, json, node_args, percentile, Cluster, A, ADMIN, B, PASSWORD};
use keel_tests::netns::{call_from, get_from, keel_cli, wait_until, NsKeel, Topology};
use serde_json::Value;

#[test]
fn three_nodes_serve_every_apply_made_through_a_follower() {
    let c = Cluster::start(3);
    for i in 1..=3 {
        assert_eq!(
            c.served_by(i).as_deref(),
            Some("a"),
            "n{i} serves the bootstrap config"
        );
    }
    let leader = c.leader(1);
    let follower = (1..=3).find(|i| *i != leader).unwrap();

    // `keel apply -f` against a follower: forwarded, committed, served everywhere.
    let file = c.dir.path().join("b.yaml");
    std::fs::write(&file, config(B)).unwrap();
    let file_arg = file.display().to_string();
    let apply = || {
        let args = [
            "apply",
            "--replace",
            "-f",
            &file_arg,
            "--server",
            "http://127.0.0.1:9090",
        ];
        keel_cli(&c.ns(follower), &[("KEEL_TOKEN", &c.bearer)], &args, None)
    };
    let (code, out, err) = apply();
    assert_eq!(code, 0, "apply: {err}");
    // The file replaces the bootstrap file's member.
    assert!(
        out.contains(&format!("create member {B} of pool \"app\""))
            && out.contains(&format!("remove member {A} of pool \"app\"")),
        "{out}"
    );
    for i in 1..=3 {
        wait_until(Duration::from_secs(5), &format!("n{i} serves b"), || {
            c.served_by(i).as_deref() == Some("b")
        });
    }
    // Applying the same file again changes nothing.
    let (code, out, _) = apply();
    assert_eq!(code, 0);
    assert!(out.starts_with("unchanged"), "{out}");

    // 100 applies through the follower: time from the API call to every
    // node serving the change (observed from the client namespace).
    let mut times = Vec::new();
    for n in 0..100 {
        let (member, expect) = if n % 2 == 0 { (A, "a") } else { (B, "b") };
        let body = format!(
            "{{\"pools\": [{{\"name\": \"app\", \"members\": [{{\"address\": \"{member}\"}}]}}], \
              \"load_balancers\": [{{\"name\": \"web\", \"listeners\": [{{\"port\": 8000, \"protocol\": \"http\", \"default_pool\": \"app\"}}]}}]}}"
        );
        let t0 = Instant::now();
        let (status, answer) = c
            .call(follower, "PUT", "/api/v1/config", Some(&body))
            .unwrap();
        assert_eq!(status, 200, "{answer}");
        let mut pending: Vec<usize> = (1..=3).collect();
        while !pending.is_empty() {
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "apply {n} not served by {pending:?}"
            );
            pending.retain(|i| c.served_by(*i).as_deref() != Some(expect));
        }
        times.push(t0.elapsed());
    }
    times.sort();
    eprintln!(
        "apply → served on all 3 nodes, 100 applies via a follower: p50 {:?}, p99 {:?}, max {:?}",
        percentile(&times, 0.5),
        percentile(&times, 0.99),
        times[times.len() - 1]
    );
}

#[test]
fn a_killed_leader_loses_no_acknowledged_write_and_catches_up() {
    let mut c = Cluster::start(3);
    let leader = c.leader(1);
    let writer = (1..=3).find(|i| *i != leader).unwrap();
    let mut acked = Vec::new();
    let mut failed = 0;
    let mut killed_at = None;
    let mut n = 0;
    let started = Instant::now();
    // Write until 10 writes have been acknowledged after the kill.
    while acked.len() < 10 || killed_at.is_none_or(|k| acked.len() < k + 10) {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "writes did not resume; {failed} failed"
        );
        let name = format!("p{n:03}");
        n += 1;
        let body = format!("{{\"name\": \"{name}\", \"members\": [{{\"address\": \"{A}\"}}]}}");
        match c.call(writer, "POST", "/api/v1/pools", Some(&body)) {
            Some((201, _)) => acked.push(name),
            _ => failed += 1,
        }
        if acked.len() == 10 && killed_at.is_none() {
            c.nodes[leader - 1].kill();
            killed_at = Some(acked.len());
        }
    }
    eprintln!(
        "{} writes acknowledged, {failed} refused during the election",
        acked.len()
    );
    let survivors: Vec<usize> = (1..=3).filter(|i| *i != leader).collect();
    for i in &survivors {
        wait_until(
            Duration::from_secs(5),
            &format!("n{i} has every acknowledged write"),
            || {
                let pools = c.pools(*i);
                acked.iter().all(|p| pools.contains(p))
            },
        );
    }
    c.nodes[leader - 1].restart();
    c.wait_ready(leader);
    wait_until(
        Duration::from_secs(10),
        "the restarted node caught up",
        || {
            let pools = c.pools(leader);
            acked.iter().all(|p| pools.contains(p))
        },
    );
}

#[test]
fn an_isolated_node_refuses_writes_keeps_its_config_and_catches_up() {
    let c = Cluster::start(3);
    let leader = c.leader(1);
    let isolated = (1..=3).find(|i| *i != leader).unwrap();
    let other = (1..=3).find(|i| *i != leader && *i != isolated).unwrap();
    let before = c.call(isolated, "GET", "/api/v1/config", None).unwrap().1;

    c.topo.set_link(&format!("n{isolated}"), false);
    let body = format!("{{\"name\": \"during\", \"members\": [{{\"address\": \"{A}\"}}]}}");
    let (status, _) = c.call(other, "POST", "/api/v1/pools", Some(&body)).unwrap();
    assert_eq!(status, 201, "the majority keeps accepting writes");

    let t0 = Instant::now();
    let refused = c.call(
        isolated,
        "POST",
        "/api/v1/pools",
        Some(&body.replace("during", "lost")),
    );
    let (status, answer) = refused.unwrap();
    assert_eq!(status, 503, "{answer}");
    assert_eq!(json(&answer)["error"]["code"], "no_leader", "{answer}");
    eprintln!("isolated node refused the write after {:?}", t0.elapsed());
    // It keeps its last config (a stale read shows it) and its listener;
    // a default, linearizable read is refused: it cannot know it is fresh.
    assert_eq!(
        c.call(isolated, "GET", "/api/v1/config?stale=true", None)
            .unwrap()
            .1,
        before
    );
    let (status, answer) = c.call(isolated, "GET", "/api/v1/config", None).unwrap();
    assert_eq!(status, 503, "{answer}");
    assert!(answer.contains("may be out of date"), "{answer}");
    assert!(
        get_from(&c.ns(isolated), "127.0.0.1:8000", "/").is_some(),
        "listener still up"
    );

    c.topo.set_link(&format!("n{isolated}"), true);
    wait_until(
        Duration::from_secs(10),
        "the isolated node caught up",
        || c.pools(isolated).contains(&"during".to_owned()),
    );
    assert!(!c.pools(leader).contains(&"lost".to_owned()));
}

#[test]
fn joining_needs_a_valid_token_from_the_pinned_cluster() {
    let mut c = Cluster::bootstrap(3);
    let refused_joins = |c: &Cluster| c.nodes[0].log_text().matches("refused a join").count();

    // Each bad token is refused with a clear message; the joiner exits 1.
    let attempt = |c: &mut Cluster, token: &str, expect: &str| {
        let dir = c.dir.path().join("n2");
        let _ = std::fs::remove_dir_all(&dir);
        c.join(2, token);
        let code = c.nodes[1].wait_exit(Duration::from_secs(20));
        let log = c.nodes[1].log_text();
        assert_eq!(
            code,
            Some(1),
            "joiner should exit 1 ({expect}); log:\n{log}"
        );
        assert!(log.contains(expect), "expected {expect:?} in:\n{log}");
    };
    attempt(&mut c, "KEEL1.nonsense", "malformed");
    // A token on the command line is visible in `ps`: the node says so.
    let log = c.nodes[1].log_text();
    assert!(
        log.contains("pass the join token in KEEL_JOIN_TOKEN"),
        "{log}"
    );
    let good = c.join_token(&["--uses", "1"]);
    let fp = good.split('.').nth(1).unwrap().to_owned();
    let wrong_secret = format!("{}{}", &good[..good.len() - 4], "0000");
    attempt(&mut c, &wrong_secret, "wrong secret");
    let short = c.join_token(&["--ttl", "1s"]);
    std::thread::sleep(Duration::from_millis(1500));
    attempt(&mut c, &short, "expired");
    let revoked = c.join_token(&[]);
    let id = revoked.split('.').nth(2).unwrap().to_owned();
    let (code, _, err) = keel_cli(
        &c.ns(1),
        &[("KEEL_TOKEN", &c.bearer)],
        &["token", "revoke", &id, "--server", "http://127.0.0.1:9090"],
        None,
    );
    assert_eq!(code, 0, "{err}");
    attempt(&mut c, &revoked, "revoked");

    // A token for another cluster: the joiner refuses before sending the
    // secret, so the server never sees a join request.
    let before = refused_joins(&c);
    let foreign = good.replace(&fp, &"0".repeat(64));
    attempt(&mut c, &foreign, "not the cluster the token belongs to");
    assert_eq!(refused_joins(&c), before, "the secret reached the server");

    // None of that left a trace in the membership.
    assert_eq!(c.status(1)["nodes"].as_array().unwrap().len(), 1);

    // The good token works once, then is used up.
    let _ = std::fs::remove_dir_all(c.dir.path().join("n2"));
    c.join(2, &good);
    c.wait_ready(2);
    let dir3 = c.dir.path().join("n3");
    let mut args = node_args(3);
    args.extend([
        "--join".into(),
        "10.77.0.1:9091".into(),
        "--token".into(),
        good.clone(),
    ]);
    let mut n3 = NsKeel::start(&c.ns(3), c.dir.path(), "n3", &args, &[]);
    assert_eq!(n3.wait_exit(Duration::from_secs(20)), Some(1));
    assert!(n3.log_text().contains("used up"), "{}", n3.log_text());
    let _ = std::fs::remove_dir_all(dir3);
    assert_eq!(c.status(1)["nodes"].as_array().unwrap().len(), 2);

    // A restart needs no token.
    c.nodes[1].restart();
    c.wait_ready(2);

    // Raft RPCs need a cluster certificate: an anonymous TLS client gets 403.
    let out = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &c.topo.ns("c"),
            "curl",
            "-sk",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .args([
            "-X",
            "POST",
            "-H",
            "content-type: application/json",
            "-d",
            "{}",
        ])
        .arg("https://10.77.0.1:9091/raft/vote")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "403");

    // The API needs credentials.
    let anonymous = call_from(&c.ns(1), ADMIN, "GET", "/api/v1/pools", None, None).unwrap();
    assert_eq!(anonymous.0, 401, "{}", anonymous.1);
    let bogus = call_from(
        &c.ns(1),
        ADMIN,
        "GET",
        "/api/v1/pools",
        Some("keel_00_11"),
        None,
    )
    .unwrap();
    assert_eq!(bogus.0, 401);

    // `keel node remove` shrinks the membership.
    let (code, _, err) = keel_cli(
        &c.ns(1),
        &[("KEEL_TOKEN", &c.bearer)],
        &["node", "remove", "n2", "--server", "http://127.0.0.1:9090"],
        None,
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(c.status(1)["nodes"].as_array().unwrap().len(), 1);

    // No secret ever reached a log.
    let logs = c.logs() + &n3.log_text();
    for secret in [
        PASSWORD,
        c.bearer.as_str(),
        good.split('.').nth(3).unwrap(),
        "PRIVATE KEY",
    ] {
        assert!(!logs.contains(secret), "a secret ({secret}) is in the logs");
    }
}

#[test]
fn a_node_leaving_on_sigterm_shrinks_the_membership() {
    let mut c = Cluster::start(3);
    c.nodes[2].args.push("--leave".into());
    c.nodes[2].restart();
    c.wait_ready(3);
    c.nodes[2].terminate();
    assert_eq!(
        c.nodes[2].wait_exit(Duration::from_secs(20)),
        Some(0),
        "{}",
        c.nodes[2].log_text()
    );
    let names = |s: &Value| -> Vec<String> {
        s["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|n| n["name"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(names(&c.status(1)).len(), 2);
    assert!(!names(&c.status(1)).contains(&"n3".to_owned()));
    // The two left still commit writes (a quorum of two).
    let body = format!("{{\"name\": \"after\", \"members\": [{{\"address\": \"{A}\"}}]}}");
    let (status, v) = c.call(2, "POST", "/api/v1/pools", Some(&body)).unwrap();
    assert_eq!(status, 201, "{v}");
}

#[test]
fn an_admin_api_off_loopback_serves_tls_signed_by_the_cluster_ca() {
    let topo = Topology::new(1);
    let dir = tempfile::tempdir().unwrap();
    let mut args = node_args(1);
    let at = args.iter().position(|a| a == ADMIN).unwrap();
    args[at] = "10.77.0.1:9090".into();
    // The AWS and Octavia endpoints off loopback serve TLS too, with the
    // same certificate (naming their addresses as well).
    args.extend(
        [
            "--aws-api-addr",
            "10.77.0.1:9443",
            "--octavia-api-addr",
            "0.0.0.0:9876",
        ]
        .map(String::from),
    );
    let node = NsKeel::start(
        &topo.ns("n1"),
        dir.path(),
        "n1",
        &args,
        &[("KEEL_ADMIN_PASSWORD", PASSWORD)],
    );
    let ca = dir.path().join("n1/tls/ca.pem");
    let client = topo.ns("c");
    let curl = |extra: &[&str]| {
        let out = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &client,
                "curl",
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
            ])
            .args(extra)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let ca_arg = ca.display().to_string();
    wait_until(Duration::from_secs(20), "https admin up", || {
        curl(&["--cacert", &ca_arg, "https://10.77.0.1:9090/readyz"]) == "200"
    });
    assert_ne!(
        curl(&["http://10.77.0.1:9090/healthz"]),
        "200",
        "plain HTTP off loopback"
    );
    assert_ne!(
        curl(&["https://10.77.0.1:9090/healthz"]),
        "200",
        "trusted without the CA"
    );
    for api in ["10.77.0.1:9443", "10.77.0.1:9876"] {
        let code = curl(&["--cacert", &ca_arg, &format!("https://{api}/")]);
        assert!(
            code.starts_with('2') || code.starts_with('4'),
            "{api} over TLS: {code}"
        );
        assert_eq!(
            curl(&[&format!("http://{api}/")]),
            "000",
            "{api} in plain HTTP"
        );
    }

    let xdg = dir.path().join("config");
    let xdg = xdg.display().to_string();
    let env = [("XDG_CONFIG_HOME", xdg.as_str())];
    let server = ["--server", "https://10.77.0.1:9090"];
    let (code, _, err) = keel_cli(&client, &env, &[&["status"][..], &server].concat(), None);
    assert_eq!(code, 1);
    assert!(err.contains("--ca-file"), "{err}");
    let with_ca = [&server[..], &["--ca-file", &ca_arg]].concat();
    let (code, _, err) = keel_cli(
        &client,
        &env,
        &[&["login", "--password-stdin"][..], &with_ca].concat(),
        Some(PASSWORD),
    );
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = keel_cli(&client, &env, &[&["status"][..], &with_ca].concat(), None);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("n1") && out.contains("leader"), "{out}");
    drop(node);
}

#[test]
fn a_node_restarted_on_another_address_is_found_there() {
    let mut c = Cluster::start(3);
    c.nodes[1].kill();
    c.topo.add_addr("n2", "10.77.0.12/16");
    let at = c.nodes[1]
        .args
        .iter()
        .position(|a| a == "10.77.0.2:9091")
        .unwrap();
    c.nodes[1].args[at] = "10.77.0.12:9091".into();
    c.nodes[1].restart();
    c.wait_ready(2);
    wait_until(
        Duration::from_secs(30),
        "the membership has n2's new address",
        || {
            let status = c.status(1);
            status["nodes"].as_array().into_iter().flatten().any(|n| {
                n["name"] == "n2"
                    && n["cluster_addr"] == "10.77.0.12:9091"
                    && n["reachable"] == true
            })
        },
    );
    // And it follows changes again.
    let body = format!("{{\"name\": \"moved\", \"members\": [{{\"address\": \"{A}\"}}]}}");
    let (status, v) = c.call(1, "POST", "/api/v1/pools", Some(&body)).unwrap();
    assert_eq!(status, 201, "{v}");
    wait_until(Duration::from_secs(10), "n2 applies the change", || {
        c.pools(2).contains(&"moved".to_owned())
    });
}

/// The value of `name{labels}` (exactly) in Prometheus text.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn the_cluster_reports_leadership_positions_vip_holders_and_peers_in_metrics() {
    let vip = "10.77.0.100/24";
    let config = format!(
        "load_balancers:\n  - {{ name: web, vip: {vip}, listeners: [ {{ port: 8000, protocol: http, default_pool: app }} ] }}\n\
         pools:\n  - {{ name: app, members: [ {{ address: \"{A}\" }} ] }}\n"
    );
    let c = Cluster::start_with(3, &config, &[]);
    let metrics = |i: usize| c.call(i, "GET", "/metrics", None).unwrap().1;
    let held = format!("keel_vip_holder{{vip=\"{vip}\"}}");
    wait_until(
        Duration::from_secs(10),
        "one VIP holder in the metrics",
        || {
            (1..=3)
                .filter_map(|i| sample(&metrics(i), &held))
                .sum::<f64>()
                == 1.0
        },
    );
    // Gossip judges a peer live after a few rounds of its heartbeats; one
    // CI run under load took more than 10 s.
    wait_until(Duration::from_secs(20), "every peer live in gossip", || {
        (1..=3).all(|i| {
            let m = metrics(i);
            ["n1", "n2", "n3"]
                .iter()
                .all(|n| sample(&m, &format!("keel_gossip_peer_live{{node=\"{n}\"}}")) == Some(1.0))
        })
    });
    let all: Vec<String> = (1..=3).map(metrics).collect();
    let leaders: Vec<usize> = (0..3)
        .filter(|i| sample(&all[*i], "keel_raft_leader") == Some(1.0))
        .collect();
    assert_eq!(leaders.len(), 1, "one leader");
    let leader = &all[leaders[0]];
    let term = sample(leader, "keel_raft_term").unwrap();
    for m in &all {
        assert_eq!(sample(m, "keel_raft_term"), Some(term));
        assert_eq!(sample(m, "keel_raft_has_leader"), Some(1.0));
        assert_eq!(sample(m, "keel_cluster_members{role=\"voter\"}"), Some(3.0));
        assert_eq!(
            sample(m, &format!("keel_vip_configured{{vip=\"{vip}\"}}")),
            Some(1.0)
        );
        for n in ["n1", "n2", "n3"] {
            assert_eq!(
                sample(m, &format!("keel_gossip_peer_live{{node=\"{n}\"}}")),
                Some(1.0),
                "{n}"
            );
        }
        assert!(sample(m, "keel_node_certificate_expiry_timestamp_seconds").unwrap() > 1.7e9);
        let applied = sample(m, "keel_raft_applied_index").unwrap();
        assert!(applied > 0.0 && applied <= sample(m, "keel_raft_last_log_index").unwrap());
        // No snapshot yet (one every 1000 entries), but the families are there.
        assert_eq!(sample(m, "keel_raft_snapshots_built_total"), Some(0.0));
        assert!(sample(m, "keel_raft_snapshot_bytes").is_some());
        assert!(sample(m, "keel_raft_snapshot_build_seconds").is_some());
        let version = format!(
            "keel_build_info{{version=\"{}\"}}",
            env!("CARGO_PKG_VERSION")
        );
        assert_eq!(sample(m, &version), Some(1.0));
        let runs = f64::from(keel_model::CLUSTER_VERSION);
        assert_eq!(sample(m, "keel_node_cluster_version"), Some(runs));
        // A fresh cluster's leader raises the version within a second or so.
        assert!(sample(m, "keel_cluster_version").is_some_and(|v| (1.0..=runs).contains(&v)));
    }
    // The leader sees both followers caught up, and holds its lease.
    let followers: Vec<&str> = leader
        .lines()
        .filter(|l| l.starts_with("keel_raft_follower_entries_behind{"))
        .collect();
    assert_eq!(followers.len(), 2, "{followers:?}");
    assert!(followers.iter().all(|l| l.ends_with(" 0")), "{followers:?}");
    assert!(sample(leader, "keel_raft_lease_remaining_seconds").unwrap() > 0.0);

    // Every metric the sample alert rules read is one a node exports.
    let rules = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/alerts.yml"))
        .unwrap();
    let names: std::collections::BTreeSet<&str> = rules
        .split(|ch: char| !(ch.is_ascii_alphanumeric() || ch == '_'))
        .filter(|w| w.starts_with("keel_"))
        .collect();
    assert!(names.len() >= 7, "{names:?}");
    for name in names {
        assert!(
            leader.contains(&format!("# TYPE {name} ")),
            "docs/alerts.yml reads {name}, which no node exports"
        );
    }
}

#[test]
fn a_fresh_node_is_trusted_by_its_ca_fingerprint_and_keeps_its_admin_certificate() {
    let topo = Topology::new(1);
    let dir = tempfile::tempdir().unwrap();
    let mut args = node_args(1);
    let at = args.iter().position(|a| a == ADMIN).unwrap();
    args[at] = "0.0.0.0:9090".into();
    let mut node = NsKeel::start(
        &topo.ns("n1"),
        dir.path(),
        "n1",
        &args,
        &[("KEEL_ADMIN_PASSWORD", PASSWORD)],
    );
    let ca = dir.path().join("n1/tls/ca.pem").display().to_string();
    let client = topo.ns("c");
    let xdg = dir.path().join("config").display().to_string();
    let env = [("XDG_CONFIG_HOME", xdg.as_str())];
    let server = ["--server", "https://10.77.0.1:9090"];
    let cli = |args: &[&str], stdin: Option<&str>| {
        keel_cli(&client, &env, &[args, &server[..]].concat(), stdin)
    };
    // The fingerprint, as `keel status` (and the appliance's console) shows it.
    wait_until(Duration::from_secs(20), "https admin up", || {
        cli(
            &["login", "--password-stdin", "--ca-file", &ca],
            Some(PASSWORD),
        )
        .0 == 0
    });
    let (code, out, err) = cli(&["status", "--ca-file", &ca], None);
    assert_eq!(code, 0, "{err}");
    let fingerprint = out
        .split("CA fingerprint: ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap()
        .to_owned();
    assert!(
        fingerprint.starts_with("SHA256:") && fingerprint.len() == 71,
        "{out}"
    );
    std::fs::remove_dir_all(dir.path().join("config")).unwrap();

    // A wrong fingerprint is refused before the password is sent.
    let wrong = format!("SHA256:{}", "0".repeat(64));
    let (code, _, err) = cli(
        &["login", "--password-stdin", "--ca-fingerprint", &wrong],
        Some(PASSWORD),
    );
    assert_eq!(code, 1);
    assert!(err.contains("pinned fingerprint"), "{err}");
    // The right one: log in with nothing but it, and it is remembered.
    let (code, _, err) = cli(
        &[
            "login",
            "--password-stdin",
            "--ca-fingerprint",
            &fingerprint,
        ],
        Some(PASSWORD),
    );
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = cli(&["status"], None);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("n1"), "{out}");

    // The wildcard admin address's certificate names the host's addresses,
    // and survives a restart: what the client pinned still works.
    let cert = dir.path().join("n1/tls/admin.pem");
    let before = std::fs::read_to_string(&cert).unwrap();
    node.restart();
    wait_until(Duration::from_secs(20), "https admin back", || {
        cli(&["status"], None).0 == 0
    });
    assert_eq!(std::fs::read_to_string(&cert).unwrap(), before);
}

#[test]
fn a_survivor_recovers_the_cluster_after_two_of_three_nodes_are_lost() {
    let mut c = Cluster::start(3);
    // A change every node has: pool app now points at backend b.
    let file = c.dir.path().join("b.yaml");
    std::fs::write(&file, config(B)).unwrap();
    let args = [
        "apply",
        "--replace",
        "-f",
        file.to_str().unwrap(),
        "--server",
        "http://127.0.0.1:9090",
    ];
    let (code, _, err) = keel_cli(&c.ns(1), &[("KEEL_TOKEN", &c.bearer)], &args, None);
    assert_eq!(code, 0, "apply: {err}");
    wait_until(Duration::from_secs(10), "n3 serves b", || {
        c.served_by(3).as_deref() == Some("b")
    });
    let data = c.nodes[2].data_dir.display().to_string();
    let recover = |c: &Cluster| {
        keel_cli(
            &c.ns(3),
            &[],
            &["recover", "--force-new-cluster", "--data-dir", &data],
            None,
        )
    };

    // Refused while the node runs, and while a quorum answers.
    let (code, _, err) = recover(&c);
    assert_ne!(code, 0);
    assert!(err.contains("stop the node first"), "{err}");
    c.nodes[2].kill();
    let (code, _, err) = recover(&c);
    assert_ne!(code, 0);
    assert!(
        err.contains("a quorum of the cluster is still reachable") && err.contains("n1"),
        "{err}"
    );
    c.nodes[2].restart();
    c.wait_ready(3);

    // n1 and n2 are lost for good; n3 alone cannot commit anything.
    c.nodes[0].kill();
    c.nodes[1].kill();
    wait_until(Duration::from_secs(10), "n3 without a leader", || {
        c.status(3)["leader"].is_null()
    });
    c.nodes[2].kill();
    let (code, out, err) = recover(&c);
    assert_eq!(code, 0, "recover: {err}");
    println!("{}", out.trim());
    assert!(out.contains("one-node cluster"), "{out}");

    // Started as before, n3 leads a cluster of one with the last committed
    // state, and takes writes again.
    c.nodes[2].restart();
    c.wait_ready(3);
    wait_until(Duration::from_secs(10), "n3 leads alone", || {
        let s = c.status(3);
        s["leader"] == "n3" && s["nodes"].as_array().is_some_and(|n| n.len() == 1)
    });
    assert_eq!(c.served_by(3).as_deref(), Some("b"));
    assert!(c.nodes[2]
        .log_text()
        .contains("recovered: a one-node cluster"));
    let (code, token, err) = keel_cli(
        &c.ns(3),
        &[("KEEL_TOKEN", &c.bearer)],
        &["token", "create", "--server", "http://127.0.0.1:9090"],
        None,
    );
    assert_eq!(code, 0, "token create on the recovered node: {err}");

    // n1 rejoins it with a token, its old data directory cleared.
    std::fs::remove_dir_all(&c.nodes[0].data_dir).unwrap();
    let mut args = node_args(1);
    args.extend([
        "--join".to_owned(),
        "10.77.0.3:9091".to_owned(),
        "--token".to_owned(),
        token.trim().to_owned(),
    ]);
    c.nodes[0] = NsKeel::start(&c.ns(1), c.dir.path(), "n1", &args, &[]);
    c.wait_ready(1);
    wait_until(Duration::from_secs(15), "n1 a member again", || {
        c.status(3)["nodes"]
            .as_array()
            .is_some_and(|n| n.len() == 2 && n.iter().all(|n| n["ready"] == true))
    });
    assert_eq!(c.served_by(1).as_deref(), Some("b"));
    // `keel status` says which version each node runs.
    let (code, out, err) = keel_cli(
        &c.ns(3),
        &[("KEEL_TOKEN", &c.bearer)],
        &["status", "--server", "http://127.0.0.1:9090"],
        None,
    );
    assert_eq!(code, 0, "{err}");
    let running = format!("keel={}", env!("CARGO_PKG_VERSION"));
    assert_eq!(out.matches(&running).count(), 2, "{out}");
    // ... and the history, where the cluster came from.
    assert!(
        out.lines().any(|l| l
            .starts_with("last restore or recovery: n3 became a one-node cluster")
            && l.contains("keel recover --force-new-cluster")),
        "{out}"
    );
}

/// The Raft timing is the cluster's, not each node's: recorded from the
/// bootstrap node's flags, given to a joiner whatever its flags say,
/// changed with `keel timing set` (an unsafe one refused naming the field)
/// and run by each node from its next start, `keel status` naming the
/// nodes still to restart.
#[test]
fn the_raft_timing_is_the_clusters_and_each_node_runs_it_from_its_next_start() {
    let mut c = Cluster::bootstrap(3);
    let token = c.join_token(&["--uses", "2"]);
    c.join(2, &token);
    c.wait_ready(2);
    let lease_of = |v: &Value| v["timing"]["lease_ms"].as_u64();
    wait_until(Duration::from_secs(10), "the timing recorded", || {
        lease_of(&c.status(1)) == Some(300)
    });

    let unsafe_timing =
        r#"{"heartbeat_ms":30,"election_min_ms":80,"election_max_ms":160,"lease_ms":150}"#;
    let (status, body) = c
        .call(1, "PUT", "/api/v1/cluster/timing", Some(unsafe_timing))
        .unwrap();
    assert_eq!(status, 422, "{body}");
    assert_eq!(
        json(&body)["error"]["fields"][0]["field"],
        "lease",
        "{body}"
    );
    assert_eq!(lease_of(&c.status(1)), Some(300), "nothing changed");

    let (ns1, bearer) = (c.ns(1), c.bearer.clone());
    let cli = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--server", "http://127.0.0.1:9090"]);
        keel_cli(&ns1, &[("KEEL_TOKEN", &bearer)], &all, None)
    };
    let (code, out, err) = cli(&["timing", "set", "--timing", "fast"]);
    assert_eq!(code, 0, "{out}{err}");
    let (_, status_text, _) = cli(&["status"]);
    assert!(
        status_text.contains("timing: heartbeat 30ms, election timeout 80ms-160ms, lease 110ms"),
        "{status_text}"
    );
    assert_eq!(
        status_text.matches("RESTART TO APPLY TIMING").count(),
        2,
        "{status_text}"
    );

    // A joiner with the default flags runs the cluster's timing at once.
    c.join(3, &token);
    c.wait_ready(3);
    let node_lease = |c: &Cluster, name: &str| {
        c.status(1)["nodes"]
            .as_array()
            .and_then(|n| n.iter().find(|n| n["name"] == name).cloned())
            .and_then(|n| lease_of(&n))
    };
    wait_until(Duration::from_secs(10), "n3 in the status", || {
        node_lease(&c, "n3") == Some(110)
    });
    assert!(
        c.nodes[2]
            .log_text()
            .contains("running the cluster's timing"),
        "n3 says whose timing it runs"
    );

    // Restarted, the first two run it too.
    for i in [1, 2] {
        c.nodes[i - 1].terminate();
        c.nodes[i - 1].wait_exit(Duration::from_secs(15));
        c.nodes[i - 1].restart();
        for j in 1..=3 {
            c.wait_ready(j);
        }
    }
    wait_until(
        Duration::from_secs(10),
        "every node on the new timing",
        || {
            ["n1", "n2", "n3"]
                .iter()
                .all(|n| node_lease(&c, n) == Some(110))
        },
    );
    let (_, status_text, _) = cli(&["status"]);
    assert!(
        !status_text.contains("RESTART TO APPLY TIMING"),
        "{status_text}"
    );
    // And the cluster still commits.
    let body = format!("{{\"name\": \"after\", \"members\": [{{\"address\": \"{A}\"}}]}}");
    let (status, _) = c.call(3, "POST", "/api/v1/pools", Some(&body)).unwrap();
    assert_eq!(status, 201);
}

/// A GET of `/` on node `i`'s listener from the client namespace with
/// `cookie`: the body (the backend's name) and Keel's sticky cookie in the
/// answer (`name=value`).
fn sticky_get(c: &Cluster, i: usize, cookie: Option<&str>) -> (String, Option<String>) {
    use std::io::{Read, Write};
    let cookie = cookie.map(str::to_owned);
    let text = keel_tests::netns::in_ns(&c.topo.ns("c"), move || {
        let mut s = std::net::TcpStream::connect(format!("10.77.0.{i}:8000")).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let cookie = cookie
            .map(|c| format!("Cookie: {c}\r\n"))
            .unwrap_or_default();
        write!(
            s,
            "GET / HTTP/1.1\r\nHost: web\r\n{cookie}Connection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    });
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let set = head
        .lines()
        .filter_map(|l| {
            l.strip_prefix("set-cookie: ")
                .or(l.strip_prefix("Set-Cookie: "))
        })
        .find(|v| v.starts_with("keel-app="))
        .and_then(|v| v.split(';').next())
        .map(str::to_owned);
    (body.to_owned(), set)
}

/// `keel secrets rotate` makes a new cluster secret, and gossip runs
/// through it: both nodes stay live in each other's view while the old key
/// is still opened (10 s after a node switched), no datagram is dropped
/// after, and a node that joins later (which knows only the new secret)
/// gossips with them: so they seal with the new key. A sticky cookie from
/// before keeps its member on every node, and the next answer signs it
/// with the new key.
#[test]
fn rotating_the_cluster_secret_keeps_gossip_running() {
    let sticky = config(A).replace(
        &format!("members: [ {{ address: \"{A}\" }} ]"),
        &format!(
            "stickiness: {{ type: lb_cookie, duration: 1h }}\n    members: [ {{ address: \"{A}\" }}, {{ address: \"{B}\" }} ]"
        ),
    );
    assert!(sticky.contains("lb_cookie"), "{sticky}");
    let mut c = Cluster::bootstrap_with(3, &sticky, &[]);
    let token = c.join_token(&["--uses", "2"]);
    c.join(2, &token);
    c.wait_ready(2);
    let all_live = |c: &Cluster, n: usize| {
        (1..=n).all(|i| {
            c.status(i)["nodes"]
                .as_array()
                .is_some_and(|nodes| nodes.len() == n && nodes.iter().all(|m| m["live"] == true))
        })
    };
    wait_until(Duration::from_secs(10), "both nodes live in gossip", || {
        all_live(&c, 2)
    });
    let rejected = |c: &Cluster, i: usize| -> f64 {
        let text = c.call(i, "GET", "/metrics", None).unwrap().1;
        text.lines()
            .find_map(|l| l.strip_prefix("keel_gossip_datagrams_rejected_total "))
            .and_then(|v| v.trim().parse().ok())
            .expect("the rejected-datagram counter")
    };
    let before: Vec<f64> = (1..=2).map(|i| rejected(&c, i)).collect();
    let (member, cookie) = sticky_get(&c, 1, None);
    let cookie = cookie.expect("a sticky cookie");
    for i in [1, 2] {
        assert_eq!(sticky_get(&c, i, Some(&cookie)).0, member, "n{i} before");
    }
    let (code, out, err) = keel_cli(
        &c.ns(2),
        &[("KEEL_TOKEN", &c.bearer)],
        &["secrets", "rotate", "--server", "http://127.0.0.1:9090"],
        None,
    );
    assert_eq!(code, 0, "{out}{err}");
    std::thread::sleep(Duration::from_millis(500));

    // In a row on each node: without the old key, the balancer would
    // take turns between the two members.
    let mut renewed = Vec::new();
    for i in [1, 2] {
        for _ in 0..4 {
            let (body, fresh) = sticky_get(&c, i, Some(&cookie));
            assert_eq!(
                body, member,
                "n{i} moved a client with a cookie from before the rotation"
            );
            renewed.push(fresh.expect("a renewed cookie"));
        }
    }
    for (n, fresh) in renewed.iter().enumerate() {
        assert_ne!(
            *fresh, cookie,
            "the renewed cookie is signed with the new key"
        );
        let other = if n < 4 { 2 } else { 1 };
        assert_eq!(sticky_get(&c, other, Some(fresh)).0, member);
    }
    let rotated = Instant::now();
    let mut samples = 0;
    while rotated.elapsed() < Duration::from_secs(12) {
        assert!(
            all_live(&c, 2),
            "a node dropped out of gossip {:?} after the rotation",
            rotated.elapsed()
        );
        samples += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    let after: Vec<f64> = (1..=2).map(|i| rejected(&c, i)).collect();
    eprintln!("{samples} samples, all live; rejected datagrams before {before:?}, after {after:?}");
    for i in 0..2 {
        assert!(
            after[i] - before[i] <= 3.0,
            "n{} dropped {} gossip datagrams after the rotation",
            i + 1,
            after[i] - before[i]
        );
    }
    // A newcomer knows only the new secret: it gossips with both.
    c.join(3, &token);
    c.wait_ready(3);
    wait_until(
        Duration::from_secs(10),
        "the newcomer live in gossip",
        || all_live(&c, 3),
    );
    // The history names the rotation, not the secret.
    let events = c.call(1, "GET", "/api/v1/events", None).unwrap().1;
    assert!(events.contains("set the cluster secret"), "{events}");
}
