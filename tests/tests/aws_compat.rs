//! The AWS-compatible API driven by boto3 (installed by `tests/run` into
//! `target/pyenv`): the ALB seed's path routing built through ELBv2 calls
//! serves real traffic and shows in Keel's own API; bad signatures, wrong
//! scopes and bad input are refused with the codes boto3 parses.

#![allow(clippy::unwrap_used)] // a failed unwrap is how a test fails

use std::time::{Duration, Instant};

use keel_tests::aws::{python, script, AwsNode, Moto};
use keel_tests::backend::HttpBackend;
use keel_tests::free_port;
use keel_tests::node::{raw_call, raw_get};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boto3_builds_the_alb_seed_case_and_it_serves() {
    let site = HttpBackend::start("site").await;
    let blog = HttpBackend::start("blog").await;
    let n = AwsNode::start();
    let (admin, token, id) = (n.admin.clone(), n.token.clone(), n.id.clone());
    // The secret is never stored or shown again.
    let (_, keys) = raw_call(&admin, "GET", "/api/v1/aws-keys", Some(&token), None).unwrap();
    assert!(keys.contains(&id) && !keys.contains(&n.secret), "{keys}");

    // The site is an EC2-style instance; the blog a plain IP target.
    n.keel(&["instance", "add", "i-site", "127.0.0.1"]);
    let lb_port = free_port();
    let run = |phase: &str| {
        n.run(
            python(),
            &[script("elbv2_cycle.py"), phase.into()],
            &[
                ("SITE_INSTANCE", "i-site".into()),
                ("LB_PORT", lb_port.to_string()),
                ("SITE", site.addr.to_string()),
                ("BLOG", blog.addr.to_string()),
            ],
        )
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
    // Target group attributes are the pool's own settings.
    let (_, pool) = raw_call(&admin, "GET", "/api/v1/pools/site", Some(&token), None).unwrap();
    let pool: serde_json::Value = serde_json::from_str(&pool).unwrap();
    assert_eq!(pool["stickiness"]["type"], "lb_cookie", "{pool}");
    assert_eq!(pool["stickiness"]["duration"], "2m", "{pool}");
    assert_eq!(pool["drain_timeout"], "10s", "{pool}");
    let (_, events) = raw_call(&admin, "GET", "/api/v1/events", Some(&token), None).unwrap();
    assert!(events.contains(&format!("aws key {id}")), "{events}");

    // ModifyRule, SetRulePriorities, ModifyTargetGroup, ModifyListener and
    // paging; the changes serve.
    assert!(run("modify").contains("modified"));
    assert_eq!(raw_get(lb, "/news/today").unwrap(), (503, "soon".into()));
    assert_eq!(raw_get(lb, "/blog/post-1").unwrap(), (200, "blog".into()));
    assert_eq!(raw_get(lb, "/").unwrap(), (200, "site".into()));
    let (_, pool) = raw_call(&admin, "GET", "/api/v1/pools/site", Some(&token), None).unwrap();
    let pool: serde_json::Value = serde_json::from_str(&pool).unwrap();
    assert_eq!(pool["health_check"]["healthy_threshold"], 3, "{pool}");
    assert_eq!(pool["health_check"]["interval"], "6s", "{pool}");

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
    let n = AwsNode::start();
    let lb_port = free_port();
    let aws = python().with_file_name("aws");
    let run = |phase: &str| {
        n.run(
            "bash".as_ref(),
            &[script("elbv2_cli.sh").as_os_str(), phase.as_ref()],
            &[
                ("AWS", aws.display().to_string()),
                ("LB_PORT", lb_port.to_string()),
                ("TARGET", app.addr.to_string()),
            ],
        )
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boto3_gets_the_same_answers_from_keel_as_from_moto() {
    let app = HttpBackend::start("app").await;
    let moto = Moto::start();
    let n = AwsNode::start();
    let text = n.run(
        python(),
        &[script("elbv2_compare.py")],
        &[
            ("MOTO", moto.url.clone()),
            ("LB_PORT", free_port().to_string()),
            ("TARGET", app.addr.to_string()),
        ],
    );
    drop(moto);
    assert!(text.contains("0 undocumented differences"), "{text}");
    eprintln!("{text}");
}

#[test]
fn a_captured_boto3_request_cannot_be_replayed_or_given_another_body() {
    let n = AwsNode::start();
    let text = n.run(python(), &[script("replay.py")], &[]);
    assert!(text.contains("replays refused"), "{text}");
    let log = n.node.log_text();
    assert!(log.contains("aws api request replayed"), "{log}");

    // Guessing signatures is limited per client address: 20 bad ones a
    // minute (the script's forgeries count), then Throttling at once.
    let codes: Vec<String> = (0..25).map(|_| bad_signature_code(&n)).collect();
    let throttled = codes.iter().filter(|c| *c == "Throttling").count();
    assert!((5..=8).contains(&throttled), "{codes:?}");
    assert_eq!(codes.last().unwrap(), "Throttling");
}

/// A request signed with a made-up key from this address (over the API's
/// TLS); the error code.
fn bad_signature_code(n: &AwsNode) -> String {
    let date = String::from_utf8(
        std::process::Command::new("date")
            .args(["-u", "+%Y%m%dT%H%M%SZ"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let date = date.trim();
    let body = "Action=DescribeLoadBalancers&Version=2015-12-01";
    let authorization = format!(
        "Authorization: AWS4-HMAC-SHA256 Credential=AKIAGUESS/{}/us-east-1/elasticloadbalancing/aws4_request, \
         SignedHeaders=host;x-amz-date, Signature={}",
        &date[..8],
        "0".repeat(64),
    );
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(&n.ca)
        .args(["-H", &format!("X-Amz-Date: {date}"), "-H", &authorization])
        .args(["-H", "Content-Type: application/x-www-form-urlencoded"])
        .args(["--data-binary", body])
        .arg(format!("https://{}/", n.aws_addr))
        .output()
        .unwrap();
    let answer = String::from_utf8_lossy(&out.stdout).into_owned();
    let code = answer
        .split("<Code>")
        .nth(1)
        .and_then(|c| c.split('<').next());
    code.unwrap_or_else(|| {
        panic!(
            "no error code in {answer}{}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
    .to_owned()
}
