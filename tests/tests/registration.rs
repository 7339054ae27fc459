//! Backend self-registration: a pool-scoped token lets a backend add and
//! remove itself with `keel member register|deregister`, and nothing else.

#![allow(clippy::unwrap_used)] // a failed unwrap is how a test fails

use std::process::Command;
use std::time::{Duration, Instant};

use keel_tests::backend::HttpBackend;
use keel_tests::node::{keel_bin, raw_call, raw_get, KeelProcess};
use keel_tests::{free_port, http_lb, members};

fn keel(server: &str, args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let out = Command::new(keel_bin())
        .args(args)
        .args(["--server", server])
        .envs(env.iter().copied())
        .env("HOME", "/nonexistent")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn wait_for(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(30));
    }
    panic!("timed out after {timeout:?} waiting for: {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_registers_and_deregisters_itself_with_a_pool_token() {
    let first = HttpBackend::start("first").await;
    let newcomer = HttpBackend::start("newcomer").await;
    let port = free_port();
    let yaml = format!(
        "{}  - {{ name: other, members: [] }}\n",
        http_lb(
            port,
            &format!("drain_timeout: 1s, members: {}", members(&[first.addr]))
        )
    );
    let node = KeelProcess::start(&yaml);
    let server = format!("http://{}", node.admin);
    let admin = node.admin.to_string();
    let admin_token = node.login();

    // The operator makes a token for pool `app` (its backends are on
    // loopback here, which a token must name); it is shown once.
    let (ok, out, err) = keel(
        &server,
        &[
            "registration-token",
            "create",
            "web servers",
            "--pool",
            "app",
            "--member-range",
            "127.0.0.1/32",
        ],
        &[("KEEL_TOKEN", &admin_token)],
    );
    assert!(ok, "{err}");
    let token = out.trim().to_owned();
    assert!(token.starts_with("keelreg_"), "{out}");
    let (ok, out, _) = keel(
        &server,
        &["registration-token", "list"],
        &[("KEEL_TOKEN", &admin_token)],
    );
    assert!(
        ok && out.contains("pool=app") && !out.contains(&token),
        "{out}"
    );

    // The backend registers itself: traffic reaches it.
    let newcomer_addr = newcomer.addr.to_string();
    let reg = |cmd: &str, pool: &str, tok: &str| {
        keel(
            &server,
            &["member", cmd, "--pool", pool, "--address", &newcomer_addr],
            &[("KEEL_REGISTRATION_TOKEN", tok)],
        )
    };
    let (ok, out, err) = reg("register", "app", &token);
    assert!(ok, "{err}");
    assert!(out.contains("registered"), "{out}");
    let lb = format!("127.0.0.1:{port}").parse().unwrap();
    wait_for(Duration::from_secs(10), "the newcomer serves", || {
        newcomer.hits() > 0 || raw_get(lb, "/").is_some_and(|(_, b)| b == "newcomer")
    });
    // Again: idempotent.
    assert!(reg("register", "app", &token).0);
    // Keel's own API shows the member, added by the token.
    let (_, pool) = raw_call(&admin, "GET", "/api/v1/pools/app", Some(&admin_token), None).unwrap();
    assert!(pool.contains(&newcomer_addr), "{pool}");

    // The token does nothing else: another pool, the admin API, a bad token.
    let (ok, _, err) = reg("register", "other", &token);
    assert!(!ok && err.contains("may only change pool \"app\""), "{err}");
    let (status, body) = raw_call(&admin, "GET", "/api/v1/pools", Some(&token), None).unwrap();
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("may only register and deregister"), "{body}");
    let (ok, _, err) = reg("register", "app", "keelreg_nope_nope");
    assert!(!ok && err.contains("unknown, revoked or expired"), "{err}");
    let (ok, _, err) = keel(
        &server,
        &[
            "member",
            "register",
            "--pool",
            "app",
            "--address",
            "not-an-address",
        ],
        &[("KEEL_REGISTRATION_TOKEN", &token)],
    );
    assert!(!ok && err.contains("address"), "{err}");
    // Nor may it register the cluster's own addresses (the admin API), or
    // a member outside its range.
    let at = |address: &str| {
        keel(
            &server,
            &["member", "register", "--pool", "app", "--address", address],
            &[("KEEL_REGISTRATION_TOKEN", &token)],
        )
    };
    let (ok, _, err) = at(&admin);
    assert!(!ok && err.contains("cluster's own addresses"), "{err}");
    let (ok, _, err) = at("10.1.2.3:80");
    assert!(
        !ok && err.contains("only register members in 127.0.0.1/32"),
        "{err}"
    );

    // Deregistration drains: the member leaves and gets no new requests.
    let (ok, out, err) = reg("deregister", "app", &token);
    assert!(ok, "{err}");
    assert!(out.contains("drains"), "{out}");
    wait_for(Duration::from_secs(10), "the newcomer is gone", || {
        raw_call(&admin, "GET", "/api/v1/pools/app", Some(&admin_token), None)
            .is_some_and(|(_, b)| !b.contains(&newcomer_addr))
    });
    std::thread::sleep(Duration::from_millis(300));
    let before = newcomer.hits();
    for _ in 0..10 {
        assert_eq!(raw_get(lb, "/").unwrap().1, "first");
    }
    assert_eq!(newcomer.hits(), before);

    // A revoked token is refused.
    let id = token.split('_').nth(1).unwrap();
    let (ok, _, err) = keel(
        &server,
        &["registration-token", "revoke", id],
        &[("KEEL_TOKEN", &admin_token)],
    );
    assert!(ok, "{err}");
    let (ok, _, err) = reg("register", "app", &token);
    assert!(!ok && err.contains("revoked"), "{err}");
    // A token for a pool that does not exist cannot be made.
    let (ok, _, err) = keel(
        &server,
        &["registration-token", "create", "x", "--pool", "nope"],
        &[("KEEL_TOKEN", &admin_token)],
    );
    assert!(!ok && err.contains("does not exist"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_token_is_bound_to_its_sources_and_refuses_loopback_by_default() {
    let port = free_port();
    let node = KeelProcess::start(&http_lb(port, "members: []"));
    let server = format!("http://{}", node.admin);
    let admin = node.admin.to_string();
    let admin_token = node.login();
    let create = |extra: &[&str]| {
        let mut args = vec!["registration-token", "create", "t", "--pool", "app"];
        args.extend(extra);
        let (ok, out, err) = keel(&server, &args, &[("KEEL_TOKEN", &admin_token)]);
        assert!(ok, "{err}");
        out.trim().to_owned()
    };
    let register = |token: &str, address: &str| {
        keel(
            &server,
            &["member", "register", "--pool", "app", "--address", address],
            &[("KEEL_REGISTRATION_TOKEN", token)],
        )
    };

    // Without member ranges: loopback and link-local are refused, an
    // ordinary address is let in.
    let plain = create(&[]);
    for address in [
        "127.0.0.1:8080",
        "169.254.169.254:80",
        "[::1]:80",
        "0.0.0.0:80",
    ] {
        let (ok, _, err) = register(&plain, address);
        assert!(
            !ok && err.contains("loopback, link-local"),
            "{address}: {err}"
        );
    }
    assert!(register(&plain, "10.1.2.3:80").0);

    // Bound to sources: used from elsewhere (this test calls from
    // 127.0.0.1), refused; from a listed range, accepted.
    let elsewhere = create(&["--source", "10.0.0.0/8", "--member-range", "10.0.0.0/8"]);
    let (ok, _, err) = register(&elsewhere, "10.1.2.4:80");
    assert!(
        !ok && err.contains("may only be used from 10.0.0.0/8"),
        "{err}"
    );
    let here = create(&["--source", "127.0.0.0/8", "--member-range", "10.0.0.0/8"]);
    assert!(register(&here, "10.1.2.4:80").0);

    // Malformed ranges are refused when the token is made, naming the field.
    let (ok, _, err) = keel(
        &server,
        &[
            "registration-token",
            "create",
            "t",
            "--pool",
            "app",
            "--source",
            "10.0.0.0/33",
        ],
        &[("KEEL_TOKEN", &admin_token)],
    );
    assert!(!ok && err.contains("sources[0]"), "{err}");

    let (_, pool) = raw_call(&admin, "GET", "/api/v1/pools/app", Some(&admin_token), None).unwrap();
    assert!(
        pool.contains("10.1.2.3:80") && pool.contains("10.1.2.4:80"),
        "{pool}"
    );
    assert!(
        !pool.contains("127.0.0.1") && !pool.contains("169.254"),
        "{pool}"
    );
}
