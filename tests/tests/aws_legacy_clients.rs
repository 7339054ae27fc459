//! Older AWS clients against the ELB-compatible API: Apache libcloud's ELB
//! and ALB drivers (the calls of its load balancer tutorial) and boto
//! 2.49's ELB interface. The node runs in a namespace of its own and the
//! instances on other addresses (DESIGN.md's plan), as on AWS: libcloud
//! gives the load balancer and the instances the same port.

#![allow(clippy::unwrap_used)] // a failed unwrap is how a test fails

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use keel_tests::aws::{python, script, trust_env};
use keel_tests::cluster::{json, Cluster, A, B};
use keel_tests::netns::{get_from, keel_cli, wait_until};
use keel_tests::tls::Ca;

const AWS_ADDR: &str = "127.0.0.1:9443";

/// A one-node cluster serving the AWS API over TLS with a certificate of
/// its own (`--compat-tls-cert`, from a CA of this test, for the host name
/// boto 2 is given and the address), with an access key and the two
/// backends registered as instances `PREFIX1` (10.77.1.1) and `PREFIX2`.
struct Setup {
    c: Cluster,
    id: String,
    secret: String,
    endpoint: String,
    /// The CA the clients trust.
    ca: PathBuf,
    _dir: tempfile::TempDir,
}

const HOST: &str = "elasticloadbalancing.us-east-1.keel.test";

fn setup(prefix: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let authority = Ca::new();
    let issued = authority.issue(&[HOST, "127.0.0.1"]);
    let (ca, cert, key) = (
        dir.path().join("ca.pem"),
        dir.path().join("aws.pem"),
        dir.path().join("aws.key"),
    );
    std::fs::write(&ca, authority.pem()).unwrap();
    std::fs::write(&cert, &issued.cert_pem).unwrap();
    std::fs::write(&key, &issued.key_pem).unwrap();
    let c = Cluster::bootstrap_with(
        1,
        "load_balancers: []\npools: []\n",
        &[
            "--aws-api-addr",
            AWS_ADDR,
            "--compat-tls",
            "always",
            "--compat-tls-cert",
            cert.to_str().unwrap(),
            "--compat-tls-key",
            key.to_str().unwrap(),
        ],
    );
    let keel = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--server", "http://127.0.0.1:9090"]);
        let (code, out, err) = keel_cli(&c.ns(1), &[("KEEL_TOKEN", &c.bearer)], &all, None);
        assert_eq!(code, 0, "keel {args:?}: {err}");
        out
    };
    let key = json(&keel(&["aws-key", "create", "ci", "-o", "json"]));
    keel(&["instance", "add", &format!("{prefix}1"), "10.77.1.1"]);
    keel(&["instance", "add", &format!("{prefix}2"), "10.77.1.2"]);
    Setup {
        id: key["access_key_id"].as_str().unwrap().to_owned(),
        secret: key["secret_access_key"].as_str().unwrap().to_owned(),
        endpoint: format!("https://{AWS_ADDR}"),
        c,
        ca,
        _dir: dir,
    }
}

impl Setup {
    /// Runs `python SCRIPT PHASE` in the node's namespace with the key,
    /// `ENDPOINT` and `env`; its output.
    fn run(&self, script: &PathBuf, phase: &str, env: &[(&str, &str)]) -> String {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.c.ns(1)])
            .arg(python())
            .arg(script)
            .arg(phase)
            .env("ENDPOINT", &self.endpoint)
            .envs(trust_env(&self.ca))
            .env("AWS_ACCESS_KEY_ID", &self.id)
            .env("AWS_SECRET_ACCESS_KEY", &self.secret);
        for (k, v) in env {
            command.env(k, v);
        }
        let out = command.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{phase}: {text}\n{}\nkeel log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.c.logs()
        );
        text
    }

    fn pool(&self, name: &str) -> serde_json::Value {
        let (status, body) = self
            .c
            .call(1, "GET", &format!("/api/v1/pools/{name}"), None)
            .unwrap();
        assert_eq!(status, 200, "{body}");
        json(&body)
    }

    /// The bodies of `n` GETs of `path` through the load balancer on `port`.
    fn bodies(&self, port: u16, path: &str, n: usize) -> BTreeSet<String> {
        let addr = format!("127.0.0.1:{port}");
        wait_until(Duration::from_secs(10), "the listener answers", || {
            get_from(&self.c.ns(1), &addr, path).is_some_and(|(s, _)| s == 200)
        });
        (0..n)
            .map(|_| get_from(&self.c.ns(1), &addr, path).unwrap().1)
            .collect()
    }
}

#[test]
fn libcloud_elb_and_alb_drivers_build_balancers_that_serve() {
    let s = setup("i-lib");
    let port = A.rsplit_once(':').unwrap().1;
    let env = [
        ("PORT", port),
        ("ALB_PORT", "8081"),
        ("SITE", A),
        ("BLOG", B),
    ];
    let script = script("libcloud_cycle.py");
    assert!(s.run(&script, "elb", &env).contains("elb created"));
    let pool = s.pool(&format!("tutorial.{port}"));
    assert_eq!(pool["proxy_protocol"], "v1", "{pool}");
    assert!(s.run(&script, "plain", &env).contains("elb plain"));
    let pool = s.pool(&format!("tutorial.{port}"));
    assert!(pool.get("proxy_protocol").is_none(), "{pool}");
    assert_eq!(pool["stickiness"]["type"], "lb_cookie", "{pool}");
    assert_eq!(
        s.bodies(port.parse().unwrap(), "/", 6),
        BTreeSet::from(["a".to_owned(), "b".to_owned()])
    );
    assert!(s.run(&script, "elb-delete", &env).contains("elb deleted"));

    assert!(s.run(&script, "alb", &env).contains("alb created"));
    assert_eq!(s.bodies(8081, "/", 3), BTreeSet::from(["a".to_owned()]));
    assert_eq!(
        s.bodies(8081, "/blog/post", 3),
        BTreeSet::from(["b".to_owned()])
    );
    let (_, lb) =
        s.c.call(1, "GET", "/api/v1/load-balancers/seed", None)
            .unwrap();
    assert!(
        lb.contains("\"default_pool\":\"seed-tg\"") && lb.contains("/blog*"),
        "{lb}"
    );
}

/// `/etc/netns/NS/hosts`, which `ip netns exec NS` shows programs as
/// `/etc/hosts`; removed when dropped.
struct Hosts(PathBuf);

impl Hosts {
    fn write(ns: &str, text: &str) -> Self {
        let dir = PathBuf::from("/etc/netns").join(ns);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("hosts"), text).unwrap();
        Hosts(dir)
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn boto2_builds_a_classic_balancer_by_host_name_or_ip_address_that_serves() {
    let mut s = setup("i-boto");
    // boto 2 takes the SigV4 region and service from the endpoint's name.
    let _hosts = Hosts::write(&s.c.ns(1), &format!("127.0.0.1 localhost {HOST}\n"));
    let port = A.rsplit_once(':').unwrap().1;
    let script = script("boto2_cycle.py");
    s.endpoint = format!("https://{HOST}:9443");
    let env = [("INSTANCES", "i-boto1,i-boto2"), ("INSTANCE_PORT", port)];
    assert!(s.run(&script, "create", &env).contains("created"));
    assert_eq!(
        s.bodies(80, "/", 6),
        BTreeSet::from(["a".to_owned(), "b".to_owned()])
    );
    let pool = s.pool("my-lb.443");
    assert_eq!(pool["health_check"]["port"], 8080, "{pool}");
    assert!(s.run(&script, "delete", &env).contains("deleted"));
    let (_, pools) = s.c.call(1, "GET", "/api/v1/pools", None).unwrap();
    assert_eq!(pools.trim(), "[]");

    // Pointed at an IP address, boto 2 signs for region "0", service "127"
    // (the address's first labels); that scope matches the Host it signed.
    // (boto 2 matches only DNS names in a certificate, so against an
    // address it runs over TLS unchecked: see boto2_cycle.py.)
    s.endpoint = "https://127.0.0.1:9443".into();
    assert!(s.run(&script, "create", &env).contains("created"));
    assert!(s.run(&script, "delete", &env).contains("deleted"));
}
