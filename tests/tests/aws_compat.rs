//! The AWS-compatible API driven by boto3 (installed by `tests/run` into
//! `target/pyenv`): the ALB seed's path routing built through ELBv2 calls
//! serves real traffic and shows in Keel's own API; bad signatures, wrong
//! scopes and bad input are refused with the codes boto3 parses.

#![allow(clippy::unwrap_used)] // a failed unwrap is how a test fails

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use keel_tests::backend::HttpBackend;
use keel_tests::free_port;
use keel_tests::node::{keel_bin, raw_call, raw_get, KeelProcess};

fn python() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    std::env::var_os("KEEL_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/pyenv/bin/python"))
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("aws/elbv2_cycle.py")
}

/// A node serving the AWS-compatible API, an admin session and an access
/// key made with `keel aws-key create`.
struct AwsNode {
    node: KeelProcess,
    admin: String,
    token: String,
    aws_addr: String,
    id: String,
    secret: String,
}

fn aws_node() -> AwsNode {
    let aws_addr = format!("127.0.0.1:{}", free_port());
    let node = KeelProcess::start_with(
        "load_balancers: []\npools: []\n",
        &["--aws-api-addr", &aws_addr],
    );
    let admin = node.admin.to_string();
    let token = node.login();

    let out = Command::new(keel_bin())
        .args(["aws-key", "create", "ci", "-o", "json", "--server"])
        .arg(format!("http://{admin}"))
        .env("KEEL_TOKEN", &token)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let (id, secret) = (
        key["access_key_id"].as_str().unwrap().to_owned(),
        key["secret_access_key"].as_str().unwrap().to_owned(),
    );
    AwsNode {
        node,
        admin,
        token,
        aws_addr,
        id,
        secret,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boto3_builds_the_alb_seed_case_and_it_serves() {
    let site = HttpBackend::start("site").await;
    let blog = HttpBackend::start("blog").await;
    let AwsNode {
        node,
        admin,
        token,
        aws_addr,
        id,
        secret,
    } = aws_node();
    // The secret is never stored or shown again.
    let (_, keys) = raw_call(&admin, "GET", "/api/v1/aws-keys", Some(&token), None).unwrap();
    assert!(keys.contains(&id) && !keys.contains(&secret), "{keys}");

    let lb_port = free_port();
    let run = |phase: &str| {
        let out = Command::new(python())
            .arg(script())
            .arg(phase)
            .env("ENDPOINT", format!("http://{aws_addr}"))
            .env("AWS_ACCESS_KEY_ID", &id)
            .env("AWS_SECRET_ACCESS_KEY", &secret)
            .env("AWS_CONFIG_FILE", "/dev/null")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
            .env("LB_PORT", lb_port.to_string())
            .env("SITE", site.addr.to_string())
            .env("BLOG", blog.addr.to_string())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", python().display()));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{phase}: {text}\n{}\nkeel log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            node.log_text()
        );
        text
    };
    run("create");

    // Real traffic: / to the site, /blog… to the blog, /news… answered by Keel.
    let lb = format!("127.0.0.1:{lb_port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while raw_get(lb, "/").is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(raw_get(lb, "/").unwrap(), (200, "site".into()));
    assert_eq!(raw_get(lb, "/blog/post-1").unwrap(), (200, "blog".into()));
    assert_eq!(raw_get(lb, "/news/today").unwrap(), (503, "later".into()));
    // Keel's own API shows what boto3 made.
    let (_, lbs) = raw_call(
        &admin,
        "GET",
        "/api/v1/load-balancers/web",
        Some(&token),
        None,
    )
    .unwrap();
    assert!(
        lbs.contains("\"default_pool\":\"site\"") && lbs.contains("/blog*"),
        "{lbs}"
    );
    let (_, events) = raw_call(&admin, "GET", "/api/v1/events", Some(&token), None).unwrap();
    assert!(events.contains(&format!("aws key {id}")), "{events}");

    assert!(run("errors").contains("errors ok"));
    assert!(run("delete").contains("deleted"));
    let (status, _) = raw_call(
        &admin,
        "GET",
        "/api/v1/load-balancers/web",
        Some(&token),
        None,
    )
    .unwrap();
    assert_eq!(status, 404);
    let (_, pools) = raw_call(&admin, "GET", "/api/v1/pools", Some(&token), None).unwrap();
    assert_eq!(pools.trim(), "[]");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_aws_cli_builds_a_load_balancer_that_serves_and_deletes_it() {
    let app = HttpBackend::start("app").await;
    let n = aws_node();
    let lb_port = free_port();
    let aws = python().with_file_name("aws");
    let run = |phase: &str| {
        let out = Command::new("bash")
            .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("aws/elbv2_cli.sh"))
            .arg(phase)
            .env("AWS", &aws)
            .env("ENDPOINT", format!("http://{}", n.aws_addr))
            .env("AWS_ACCESS_KEY_ID", &n.id)
            .env("AWS_SECRET_ACCESS_KEY", &n.secret)
            .env("AWS_CONFIG_FILE", "/dev/null")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
            .env("LB_PORT", lb_port.to_string())
            .env("TARGET", app.addr.to_string())
            .output()
            .unwrap_or_else(|e| panic!("cannot run the AWS CLI script: {e}"));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{phase}: {text}\n{}\nkeel log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            n.node.log_text()
        );
        text
    };
    let created = run("create");
    assert!(created.starts_with("ready cli-web-"), "{created}");
    let lb = format!("127.0.0.1:{lb_port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while raw_get(lb, "/").is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(raw_get(lb, "/").unwrap(), (200, "app".into()));
    let (status, body) = raw_call(
        &n.admin,
        "GET",
        "/api/v1/load-balancers/cli-web",
        Some(&n.token),
        None,
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"default_pool\":\"cli-app\""), "{body}");

    assert!(run("delete").contains("deleted"));
    let (_, pools) = raw_call(&n.admin, "GET", "/api/v1/pools", Some(&n.token), None).unwrap();
    assert_eq!(pools.trim(), "[]");
}

/// moto's server on a loopback port, stopped when dropped.
struct Moto(std::process::Child);

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boto3_gets_the_same_answers_from_keel_as_from_moto() {
    let app = HttpBackend::start("app").await;
    let port = free_port();
    let moto = Moto(
        Command::new(python().with_file_name("moto_server"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("moto_server (tests/run installs moto[server])"),
    );
    let moto_addr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while raw_get(moto_addr, "/").is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let n = aws_node();
    let out = Command::new(python())
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("aws/elbv2_compare.py"))
        .env("MOTO", format!("http://{moto_addr}"))
        .env("ENDPOINT", format!("http://{}", n.aws_addr))
        .env("AWS_ACCESS_KEY_ID", &n.id)
        .env("AWS_SECRET_ACCESS_KEY", &n.secret)
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env("LB_PORT", free_port().to_string())
        .env("TARGET", app.addr.to_string())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    drop(moto);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("0 undocumented differences"), "{text}");
    eprintln!("{text}");
}
