#![allow(clippy::unwrap_used)]
//! The web dashboard in real headless Chromium against real `keel` nodes:
//! a lone node on loopback for the forms, traffic charts, drain and config
//! pages; a 3-node namespace cluster for joining and losing nodes.
//! Screenshots land in `target/screenshots/` (`KEEL_SCREENSHOTS=docs/screenshots`
//! updates the README's).

use std::time::Duration;

use keel_tests::backend::HttpBackend;
use keel_tests::browser::{Browser, Relay};
use keel_tests::client::{client, get};
use keel_tests::cluster::{json, node_args, Cluster, ADMIN, PASSWORD};
use keel_tests::netns::{require_root, wait_until, NsKeel};
use keel_tests::node::{raw_call, KeelProcess};
use keel_tests::{eventually, free_port};

const NEW_PASSWORD: &str = "dashboard-password-2";
const SECOND: Duration = Duration::from_secs(1);

/// Every page's time to first data, printed for the notes and bounded.
async fn time_pages(b: &Browser, base: &str, pages: &[&str]) {
    for page in pages {
        let took = b.open(&format!("{base}{page}")).await;
        println!("first data on {page}: {} ms", took.as_millis());
        // The target is 1 s on an idle machine; CI machines are shared.
        assert!(took < 3 * SECOND, "{page} took {took:?} to show its data");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_drives_a_node_through_its_forms() {
    let a = HttpBackend::start("a").await;
    let b = HttpBackend::start("b").await;
    let node = KeelProcess::start_generated("{}\n");
    let base = format!("http://{}", node.admin);
    let browser = Browser::start().await;
    let c = &browser.client;

    // Pages are for signed-in users only.
    c.goto(&format!("{base}/ui/pools")).await.unwrap();
    assert!(c.current_url().await.unwrap().path().ends_with("/ui/login"));
    browser.screenshot("login").await;
    browser.fill("#login-password", "wrong password").await;
    browser.click("#login-submit").await;
    browser
        .wait_text(
            "#login-error",
            5 * SECOND,
            "a wrong password is refused",
            |t| t.contains("wrong"),
        )
        .await;

    // First login with the generated password: change it.
    browser
        .fill("#login-password", &node.initial_password())
        .await;
    browser.click("#login-submit").await;
    browser.find("#password-form", 5 * SECOND).await;
    browser
        .wait_text("#banner", 5 * SECOND, "the first-login prompt", |t| {
            t.contains("change it to go on")
        })
        .await;
    browser
        .fill("[data-field=current_password]", &node.initial_password())
        .await;
    browser.fill("[data-field=password]", NEW_PASSWORD).await;
    browser.fill("[data-field=repeat]", NEW_PASSWORD).await;
    browser.click("#password-form button[type=submit]").await;
    browser.find("#member-counts", 5 * SECOND).await;
    assert!(!browser
        .find("#banner", SECOND)
        .await
        .is_displayed()
        .await
        .unwrap());

    // The overview says which cluster version it runs, and the last backup
    // once one is taken.
    let version = format!("cluster version {}", keel_model::CLUSTER_VERSION);
    browser
        .wait_text("#cluster-version", 5 * SECOND, "the cluster version", |t| {
            t.starts_with(&version)
        })
        .await;
    browser
        .wait_text("#last-backup", 5 * SECOND, "no backup yet", |t| {
            t.starts_with("No backup")
        })
        .await;
    let admin = node.admin.to_string();
    let login = format!("{{\"password\": \"{NEW_PASSWORD}\"}}");
    let (status, body) =
        keel_tests::node::raw_call(&admin, "POST", "/api/v1/login", None, Some(&login)).unwrap();
    assert_eq!(status, 200, "{body}");
    let bearer: serde_json::Value = serde_json::from_str(&body).unwrap();
    let bearer = bearer["token"].as_str().unwrap().to_owned();
    let scratch = tempfile::tempdir().unwrap();
    let file = scratch.path().join("cluster.keel");
    let server = format!("http://{admin}");
    let out = keel_tests::node::keel_command(
        &["backup", "-o", file.to_str().unwrap()],
        &[
            ("KEEL_SERVER", &server),
            ("KEEL_TOKEN", &bearer),
            ("KEEL_BACKUP_PASSPHRASE", "a long enough passphrase"),
        ],
        "",
    );
    assert!(out.status.success(), "{out:?}");
    browser.open(&format!("{base}/ui/")).await;
    browser
        .wait_text("#last-backup", 5 * SECOND, "the backup", |t| {
            t.starts_with("last backup") && t.contains("by admin")
        })
        .await;

    // A pool with two members, through the form; a bad address is named.
    browser.open(&format!("{base}/ui/pools")).await;
    browser.click("#new-pool").await;
    browser.fill("[data-field=name]", "app").await;
    browser
        .fill("[data-field='members[0].address']", &a.addr.to_string())
        .await;
    browser
        .fill("[data-field='members[1].address']", "10.0.0.1")
        .await;
    browser.click("#pool-form button[type=submit]").await;
    let error = browser
        .wait_text(
            "[data-error-for='members[1].address']",
            5 * SECOND,
            "the bad address is flagged next to its field",
            |t| !t.is_empty(),
        )
        .await;
    println!("validation error shown: {error}");
    browser.screenshot("pool-validation-error").await;
    browser
        .fill("[data-field='members[1].address']", &b.addr.to_string())
        .await;
    browser.click("#pool-form button[type=submit]").await;
    browser.find("[data-pool=app]", 5 * SECOND).await;

    // A load balancer in front of it.
    let port = free_port();
    browser.open(&format!("{base}/ui/load-balancers")).await;
    browser.click("#new-lb").await;
    browser.fill("[data-field=name]", "web").await;
    browser
        .fill("[data-field='listeners[0].port']", &port.to_string())
        .await;
    browser.click("#lb-form button[type=submit]").await;
    browser.find("[data-lb=web]", 5 * SECOND).await;
    // What the dashboard made is the dashboard's, and it says so.
    browser
        .wait_text(
            "[data-lb=web] .manager",
            5 * SECOND,
            "the load balancer's manager",
            |t| t == "dashboard",
        )
        .await;
    browser.screenshot("load-balancers").await;
    let http = client();
    let url = format!("http://127.0.0.1:{port}/");
    eventually(10 * SECOND, "the new load balancer serves", || async {
        get(&http, &url).await.is_ok_and(|(s, _)| s == 200)
    })
    .await;

    // Traffic charts move while a load generator runs.
    let load = {
        let url = url.clone();
        tokio::spawn(async move {
            let http = client();
            loop {
                let _ = get(&http, &url).await;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    browser.open(&format!("{base}/ui/traffic")).await;
    let rate = browser
        .wait_text(
            "[data-series='load_balancer/web'] .now",
            20 * SECOND,
            "requests per second rise on the chart",
            |t| {
                t.split_whitespace()
                    .next()
                    .and_then(|n| n.parse::<f64>().ok())
                    .is_some_and(|n| n > 10.0)
            },
        )
        .await;
    println!("traffic chart reads {rate}");
    // A few intervals, so the chart (and its screenshot) shows a line.
    eventually(
        20 * SECOND,
        "the chart draws a line over several samples",
        || async {
            c.execute(
            "const l = document.querySelector(\"[data-series='load_balancer/web'] polyline\"); \
             return l ? l.getAttribute('points').split(' ').length : 0;",
            vec![],
        )
        .await
        .ok()
        .and_then(|v| v.as_u64())
        .is_some_and(|n| n >= 4)
        },
    )
    .await;
    browser
        .find("[data-series='pool/app'] svg polyline", 5 * SECOND)
        .await;
    browser.screenshot("traffic").await;

    // Drain member b with one click and watch its state change; traffic
    // then goes to a only.
    browser.open(&format!("{base}/ui/pools")).await;
    let member_b = format!("[data-pool=app] tr[data-member='{}']", b.addr);
    browser
        .wait_text(
            &format!("{member_b} .manager"),
            5 * SECOND,
            "the member's manager",
            |t| t == "dashboard",
        )
        .await;
    browser.click(&format!("{member_b} button.drain")).await;
    let state = browser
        .wait_text(
            &format!("{member_b} .member-state"),
            10 * SECOND,
            "the drained member's state",
            |t| t == "draining" || t == "disabled",
        )
        .await;
    println!("drained member shows {state}");
    tokio::time::sleep(SECOND).await;
    let b_hits = b.hits();
    let a_hits = a.hits();
    tokio::time::sleep(SECOND).await;
    assert_eq!(b.hits(), b_hits, "a drained member gets no new requests");
    assert!(a.hits() > a_hits);
    browser.screenshot("pools").await;
    load.abort();

    // A certificate: a key that does not match is named, then one that does.
    let make = || {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["shop.example.test".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (cert_pem, _) = make();
    let (_, other_key) = make();
    browser.open(&format!("{base}/ui/certificates")).await;
    browser.click("#new-cert").await;
    browser.fill("#cert-form [data-field=name]", "shop").await;
    let set = |field: &'static str, value: String| {
        c.execute(
            "document.querySelector(`#cert-form [data-field=${arguments[0]}]`).value = arguments[1];",
            vec![field.into(), value.into()],
        )
    };
    set("cert_pem", cert_pem.clone()).await.unwrap();
    set("key_pem", other_key).await.unwrap();
    browser.click("#cert-form button[type=submit]").await;
    browser
        .wait_text(
            "[data-error-for=key_pem]",
            5 * SECOND,
            "a mismatched key is named",
            |t| t.contains("does not match"),
        )
        .await;
    let (cert_pem, key_pem) = make();
    set("cert_pem", cert_pem).await.unwrap();
    set("key_pem", key_pem).await.unwrap();
    browser.click("#cert-form button[type=submit]").await;
    browser
        .find("#cert-table tr[data-cert=shop]", 5 * SECOND)
        .await;

    // Config: see it as YAML, preview a change, apply it.
    browser.open(&format!("{base}/ui/config")).await;
    let yaml = browser
        .find("#config-current", SECOND)
        .await
        .text()
        .await
        .unwrap();
    assert!(
        yaml.contains("name: web") && yaml.contains("enabled: false"),
        "{yaml}"
    );
    let editor = browser.find("#config-editor", SECOND).await;
    c.execute(
        "const e = document.getElementById('config-editor'); e.value = e.value.replace(/\\n *enabled: false/, ''); e.dispatchEvent(new Event('input'));",
        vec![],
    )
    .await
    .unwrap();
    drop(editor);
    browser.click("#config-preview-button").await;
    browser
        .wait_text(
            "#config-changes",
            5 * SECOND,
            "the preview lists the change, object by object",
            |t| t.contains(&format!("change member {} of pool \"app\"", b.addr)),
        )
        .await;
    browser.find("#config-preview pre.diff .del", SECOND).await;
    browser.screenshot("config-preview").await;
    browser.click("#config-apply").await;
    eventually(5 * SECOND, "the applied config enables b again", || async {
        node.admin_get("/metrics").is_some_and(|(_, m)| {
            m.lines()
                .filter(|l| l.starts_with("keel_pool_members_healthy{pool=\"app\"}"))
                .any(|l| l.ends_with(" 2"))
        })
    })
    .await;

    // The overview shows who changed what.
    browser.open(&format!("{base}/ui/")).await;
    browser
        .wait_text(
            "#events",
            5 * SECOND,
            "config changes with their author",
            |t| t.contains("upsert pool app") && t.contains("by admin"),
        )
        .await;
    browser.screenshot("overview").await;

    // Users: add an operator, make them a viewer, delete them.
    browser.open(&format!("{base}/ui/users")).await;
    browser.fill("#user-form [data-field=name]", "ops").await;
    browser
        .find("#user-form [data-field=role]", SECOND)
        .await
        .select_by_value("operator")
        .await
        .unwrap();
    browser
        .fill(
            "#user-form [data-field=password]",
            "a first password for ops",
        )
        .await;
    browser.click("#user-form button[type=submit]").await;
    browser
        .wait_text("#users-table", 5 * SECOND, "the new user", |t| {
            t.contains("ops") && t.contains("must change password")
        })
        .await;
    let token = {
        let body = format!("{{\"password\": \"{NEW_PASSWORD}\"}}");
        let (_, answer) = raw_call(
            &node.admin.to_string(),
            "POST",
            "/api/v1/login",
            None,
            Some(&body),
        )
        .unwrap();
        serde_json::from_str::<serde_json::Value>(&answer).unwrap()["token"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let role_of_ops = || {
        let (_, list) = raw_call(
            &node.admin.to_string(),
            "GET",
            "/api/v1/users",
            Some(&token),
            None,
        )
        .unwrap();
        let list: serde_json::Value = serde_json::from_str(&list).unwrap();
        list.as_array()
            .unwrap()
            .iter()
            .find(|u| u["name"] == "ops")
            .map(|u| u["role"].as_str().unwrap().to_owned())
    };
    assert_eq!(role_of_ops().as_deref(), Some("operator"));
    browser
        .find("[data-role-of=ops]", SECOND)
        .await
        .select_by_value("viewer")
        .await
        .unwrap();
    eventually(5 * SECOND, "ops becomes a viewer", || async {
        role_of_ops().as_deref() == Some("viewer")
    })
    .await;
    browser.screenshot("users").await;
    browser.click("tr[data-user=ops] button.danger").await;
    c.accept_alert().await.unwrap();
    eventually(5 * SECOND, "ops is deleted", || async {
        role_of_ops().is_none()
    })
    .await;

    time_pages(
        &browser,
        &base,
        &[
            "/ui/",
            "/ui/load-balancers",
            "/ui/pools",
            "/ui/certificates",
            "/ui/traffic",
            "/ui/cluster",
            "/ui/config",
            "/ui/users",
        ],
    )
    .await;

    // A phone-width screen: nothing wider than the viewport.
    c.set_window_size(390, 844).await.unwrap();
    browser.open(&format!("{base}/ui/pools")).await;
    let overflow = c
        .execute(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth;",
            vec![],
        )
        .await
        .unwrap();
    assert!(
        overflow.as_i64().unwrap_or(99) <= 1,
        "the page scrolls sideways by {overflow}"
    );
    browser.screenshot("pools-phone").await;
    c.set_window_size(1280, 800).await.unwrap();

    // Logging out ends the session.
    browser.click("#logout").await;
    browser.find("#login-form", 5 * SECOND).await;
    c.goto(&format!("{base}/ui/")).await.unwrap();
    assert!(c.current_url().await.unwrap().path().ends_with("/ui/login"));
    browser.close().await;
}

#[test]
fn dashboard_shows_a_node_joining_and_a_node_lost() {
    require_root();
    // The cluster owns a runtime, so it lives outside the browser's.
    let config = keel_tests::cluster::config(keel_tests::cluster::A).replace(
        "  - name: web\n",
        "  - name: web\n    vip: 10.77.0.100/24\n",
    );
    assert!(config.contains("vip:"), "{config}");
    let mut cluster = Cluster::bootstrap_with(4, &config, &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(join_and_lose(&mut cluster));
}

async fn join_and_lose(cluster: &mut Cluster) {
    let token = cluster.join_token(&["--uses", "2"]);
    for i in 2..=3 {
        cluster.join(i, &token);
    }
    for i in 2..=3 {
        cluster.wait_ready(i);
    }
    let relay = Relay::start(&cluster.ns(1), ADMIN);
    let base = format!("http://{}", relay.addr);
    let browser = Browser::start().await;
    browser
        .client
        .goto(&format!("{base}/ui/login"))
        .await
        .unwrap();
    browser.fill("#login-password", PASSWORD).await;
    browser.click("#login-submit").await;
    browser.find("#nodes tr[data-node=n3]", 10 * SECOND).await;
    browser
        .wait_text(
            "[data-vip-holder='10.77.0.100/24']",
            10 * SECOND,
            "the leader holds the VIP",
            |t| t == "n1",
        )
        .await;

    // A join token made in the dashboard, and the command it shows.
    browser.open(&format!("{base}/ui/cluster")).await;
    browser.fill("[data-field=ttl]", "10m").await;
    browser.click("#create-token").await;
    let command = browser
        .wait_text("#join-command", 5 * SECOND, "the join command", |t| {
            t.starts_with("keel run --join ")
        })
        .await;
    browser.screenshot("cluster").await;
    let words: Vec<&str> = command.split_whitespace().collect();
    assert_eq!(words[..3], ["keel", "run", "--join"], "{command}");
    assert_eq!(words[3], "10.77.0.1:9091", "the node's cluster address");
    assert_eq!(words[4], "--token");
    // The shown command's flags, plus the new node's own addresses.
    let mut args = node_args(4);
    args.extend(words[2..].iter().map(|w| (*w).to_owned()));
    let n4 = NsKeel::start(&cluster.ns(4), cluster.dir.path(), "n4", &args, &[]);
    cluster.nodes.push(n4);
    cluster.wait_ready(4);

    browser.open(&format!("{base}/ui/")).await;
    browser
        .wait_text(
            "#nodes tr[data-node=n4] .reach",
            20 * SECOND,
            "the joined node on the overview",
            |t| t.contains("reachable") && !t.contains("unreachable"),
        )
        .await;

    // Kill a node: the overview marks it unreachable.
    cluster.nodes[2].kill();
    let took = std::time::Instant::now();
    browser
        .wait_text(
            "#nodes tr[data-node=n3] .reach",
            15 * SECOND,
            "the killed node marked unreachable",
            |t| t.contains("unreachable"),
        )
        .await;
    println!(
        "killed node shown unreachable after {} ms",
        took.elapsed().as_millis()
    );
    browser
        .wait_text("#events", 10 * SECOND, "the loss is in the events", |t| {
            t.contains("n3 stopped answering gossip")
        })
        .await;
    browser.screenshot("overview-cluster").await;
    let status = cluster.status(1);
    assert_eq!(
        json(&status.to_string())["nodes"].as_array().unwrap().len(),
        4
    );
    wait_until(5 * SECOND, "the status agrees", || {
        cluster.status(1)["nodes"].as_array().is_some_and(|n| {
            n.iter()
                .any(|n| n["name"] == "n3" && n["reachable"] == false)
        })
    });
    browser.close().await;
    drop(relay);
}

/// A browser logged in to the dashboard at `base` (a node started with
/// `KeelProcess::start`, whose password needs no change).
async fn session(base: &str) -> Browser {
    let browser = Browser::start().await;
    browser.client.goto(&format!("{base}/ui/")).await.unwrap();
    browser.fill("#login-password", "test-admin-password").await;
    browser.click("#login-submit").await;
    browser.find("#member-counts", 5 * SECOND).await;
    browser
}

/// Opens pool `app`'s edit form (a fresh copy, with its entity tag).
async fn edit_pool(browser: &Browser, base: &str) {
    browser.open(&format!("{base}/ui/pools")).await;
    browser
        .click("[data-pool=app] .actions button.secondary")
        .await;
    browser.find("#pool-form", 5 * SECOND).await;
}

/// Sets the first member's weight in the open pool form and saves.
async fn save_weight(browser: &Browser, weight: &str) {
    browser
        .fill("[data-field='members[0].weight']", weight)
        .await;
    browser.click("#pool-form button[type=submit]").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sessions_editing_one_pool_never_overwrite_each_other() {
    let a = HttpBackend::start("a").await;
    let node = KeelProcess::start(&keel_tests::http_lb(
        free_port(),
        &format!("members: {}", keel_tests::members(&[a.addr])),
    ));
    let base = format!("http://{}", node.admin);
    let admin = node.admin.to_string();
    let token = node.login();
    let pool = || {
        let (status, body) =
            keel_tests::node::raw_call(&admin, "GET", "/api/v1/pools/app", Some(&token), None)
                .unwrap();
        assert_eq!(status, 200, "{body}");
        json(&body)
    };
    let weight = || pool()["members"][0]["weight"].as_u64();
    let conflict = |t: &str| t.contains("was changed since it was read");

    // Two operators open the same pool.
    let first = session(&base).await;
    let second = session(&base).await;
    edit_pool(&first, &base).await;
    edit_pool(&second, &base).await;
    // The first saves ...
    save_weight(&first, "5").await;
    eventually(5 * SECOND, "the first save", || async {
        weight() == Some(5)
    })
    .await;
    // ... and the second, opened before that, is told and changes nothing.
    save_weight(&second, "7").await;
    second
        .wait_text(
            "#pool-form .form-error",
            5 * SECOND,
            "the conflict",
            conflict,
        )
        .await;
    second.screenshot("pool-conflict").await;
    assert_eq!(weight(), Some(5));

    // A backend registers itself while the second has the form open: the
    // save is refused, and the registered member survives it.
    edit_pool(&second, &base).await;
    let server = format!("http://{admin}");
    let out = keel_tests::node::keel_command(
        &[
            "registration-token",
            "create",
            "web",
            "--pool",
            "app",
            "--member-range",
            "127.0.0.1/32",
        ],
        &[("KEEL_SERVER", &server), ("KEEL_TOKEN", &token)],
        "",
    );
    assert!(out.status.success(), "{out:?}");
    let registration = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let newcomer = format!("127.0.0.1:{}", free_port());
    let out = keel_tests::node::keel_command(
        &[
            "member",
            "register",
            "--pool",
            "app",
            "--address",
            &newcomer,
        ],
        &[
            ("KEEL_SERVER", &server),
            ("KEEL_REGISTRATION_TOKEN", &registration),
        ],
        "",
    );
    assert!(out.status.success(), "{out:?}");
    save_weight(&second, "7").await;
    second
        .wait_text(
            "#pool-form .form-error",
            5 * SECOND,
            "the conflict",
            conflict,
        )
        .await;
    let members = || {
        pool()["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["address"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    assert!(members().contains(&newcomer), "{:?}", members());

    // Opened again, the save goes through and keeps the newcomer.
    edit_pool(&second, &base).await;
    save_weight(&second, "7").await;
    eventually(5 * SECOND, "the second save", || async {
        weight() == Some(7)
    })
    .await;
    assert!(members().contains(&newcomer), "{:?}", members());
    first.close().await;
    second.close().await;
}
