//! Many writers, one config: a file applied with `keel apply -f`, a load
//! balancer boto3 made through the ELBv2 API, one the `openstack` CLI made
//! through the Octavia API, and a backend that registered itself into the
//! file's pool. Applying the file again leaves the others alone (and
//! `--diff` says so first); a change to what another manager set is a
//! conflict until forced; `--prune` removes only what the file applied
//! before and dropped since. ELBv2 and Octavia see only what they made,
//! and ELBv2 cannot change the file's pool by its ARN. One node in a
//! namespace (DESIGN.md's plan). Then members changed one at a time with
//! `keel member add/drain/enable/remove`.

#![allow(clippy::unwrap_used)] // a failed unwrap is how a test fails

use std::process::Command;

use keel_tests::aws::{python, trust_env};
use keel_tests::cluster::{json, Cluster, A, B};
use keel_tests::netns::keel_cli;
use serde_json::Value;

const OCTAVIA: &str = "127.0.0.1:9876";
const AWS: &str = "127.0.0.1:9877";
const VIP: &str = "10.77.0.100";
const SERVER: &str = "http://127.0.0.1:9090";

fn file(extra: bool) -> String {
    let extra_lb = if extra {
        "
  - name: extra
    listeners:
      - { port: 8081, protocol: http, default_pool: app }"
    } else {
        ""
    };
    format!(
        "load_balancers:
  - name: web
    listeners:
      - {{ port: 8080, protocol: http, default_pool: app }}{extra_lb}
pools:
  - name: app
    members:
      - address: {A}
"
    )
}

struct Setup {
    c: Cluster,
    dir: tempfile::TempDir,
}

impl Setup {
    /// `keel ARGS` in the node's namespace as the admin: exit code, output
    /// and errors together.
    fn keel(&self, args: &[&str]) -> (i32, String) {
        let mut all = args.to_vec();
        all.extend(["--server", SERVER]);
        let (code, out, err) =
            keel_cli(&self.c.ns(1), &[("KEEL_TOKEN", &self.c.bearer)], &all, None);
        (code, format!("{out}{err}"))
    }

    fn ok(&self, args: &[&str]) -> String {
        let (code, out) = self.keel(args);
        assert_eq!(code, 0, "keel {args:?}: {out}\n{}", self.c.logs());
        out
    }

    /// Writes the config file (with the extra load balancer or without);
    /// its path.
    fn write(&self, extra: bool) -> String {
        let path = self.dir.path().join("keel.yaml");
        std::fs::write(&path, file(extra)).unwrap();
        path.display().to_string()
    }

    /// The API (manager `api`) sets pool `app`'s algorithm.
    fn api_sets_algorithm(&self, algorithm: &str) {
        let (_, pool) = self.c.call(1, "GET", "/api/v1/pools/app", None).unwrap();
        let mut pool = json(&pool);
        pool["algorithm"] = algorithm.into();
        let (status, body) = self
            .c
            .call(1, "PUT", "/api/v1/pools/app", Some(&pool.to_string()))
            .unwrap();
        assert_eq!(status, 200, "{body}");
    }

    fn managers(&self) -> Value {
        let (status, body) = self.c.call(1, "GET", "/api/v1/managers", None).unwrap();
        assert_eq!(status, 200, "{body}");
        json(&body)
    }

    fn config(&self) -> Value {
        json(
            &self
                .c
                .call(1, "GET", "/api/v1/config?format=json", None)
                .unwrap()
                .1,
        )
    }

    fn ca(&self) -> std::path::PathBuf {
        self.c.dir.path().join("n1/tls/ca.pem")
    }

    /// A program in the node's namespace with `env`; its output.
    fn run(&self, program: &std::path::Path, args: &[&str], env: &[(&str, String)]) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.c.ns(1)])
            .arg(program)
            .args(args)
            .envs(trust_env(&self.ca()))
            .envs(env.iter().map(|(k, v)| (*k, v.clone())))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{program:?} {args:?}: {text}\n{}\nkeel log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.c.logs()
        );
        text
    }
}

const BOTO3: &str = r#"
import os, boto3
from botocore.config import Config
elb = boto3.client("elbv2", endpoint_url=os.environ["ENDPOINT"], region_name="us-east-1",
                   config=Config(retries={"max_attempts": 1}))
elb.create_load_balancer(Name="boto", Subnets=["subnet-1"])
ip, port = os.environ["TARGET"].rsplit(":", 1)
tg = elb.create_target_group(Name="boto-tg", Protocol="HTTP", Port=80, VpcId="vpc-1",
                             TargetType="ip")["TargetGroups"][0]
elb.register_targets(TargetGroupArn=tg["TargetGroupArn"], Targets=[{"Id": ip, "Port": int(port)}])
# ELBv2 sees what it made, not the file's load balancers or pool.
seen = [lb["LoadBalancerName"] for lb in elb.describe_load_balancers()["LoadBalancers"]]
assert seen == ["boto"], seen
seen = [tg["TargetGroupName"] for tg in elb.describe_target_groups()["TargetGroups"]]
assert seen == ["boto-tg"], seen
try:
    elb.describe_load_balancers(Names=["web"])
    raise SystemExit("the file's load balancer is visible through ELBv2")
except elb.exceptions.LoadBalancerNotFoundException:
    pass
# The file's pool by its ARN: not found, and its members stay as they are.
import hashlib
app = "arn:aws:elasticloadbalancing:us-east-1:000000000000:targetgroup/app/" + \
    hashlib.sha256(b"app").hexdigest()[:16]
try:
    elb.register_targets(TargetGroupArn=app, Targets=[{"Id": "10.77.1.9", "Port": 80}])
    raise SystemExit("ELBv2 changed the file's pool")
except elb.exceptions.TargetGroupNotFoundException:
    pass
print("made")
"#;

fn names(v: &Value, key: &str) -> Vec<String> {
    v[key]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["name"].as_str().unwrap().to_owned())
        .collect()
}

fn members(v: &Value, pool: &str) -> Vec<String> {
    v["pools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == pool)
        .map(|p| {
            p["members"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["address"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn an_apply_changes_only_what_its_manager_set_and_prunes_only_that() {
    let c = Cluster::bootstrap_with(
        1,
        "load_balancers: []\npools: []\n",
        &[
            "--octavia-api-addr",
            OCTAVIA,
            "--aws-api-addr",
            AWS,
            "--compat-tls",
            "always",
        ],
    );
    let s = Setup {
        c,
        dir: tempfile::tempdir().unwrap(),
    };
    let path = s.write(true);
    let out = s.ok(&["apply", "-f", &path]);
    assert!(out.contains("create load balancer \"web\""), "{out}");

    // A backend registers itself into the file's pool.
    let registration = s.ok(&[
        "registration-token",
        "create",
        "web",
        "--pool",
        "app",
        "--member-range",
        "10.77.0.0/16",
    ]);
    let (code, out, err) = keel_cli(
        &s.c.ns(1),
        &[("KEEL_REGISTRATION_TOKEN", registration.trim())],
        &[
            "member",
            "register",
            "--pool",
            "app",
            "--address",
            B,
            "--server",
            SERVER,
        ],
        None,
    );
    assert_eq!(code, 0, "{out}{err}");

    // boto3 makes an application load balancer and a target group.
    let key = json(&s.ok(&["aws-key", "create", "ci", "-o", "json"]));
    s.run(
        &python(),
        &["-c", BOTO3],
        &[
            ("ENDPOINT", format!("https://{AWS}")),
            (
                "AWS_ACCESS_KEY_ID",
                key["access_key_id"].as_str().unwrap().into(),
            ),
            (
                "AWS_SECRET_ACCESS_KEY",
                key["secret_access_key"].as_str().unwrap().into(),
            ),
            ("AWS_CONFIG_FILE", "/dev/null".into()),
            ("AWS_SHARED_CREDENTIALS_FILE", "/dev/null".into()),
            ("TARGET", A.into()),
        ],
    );

    // The openstack CLI makes a load balancer on a VIP.
    let token = json(&s.ok(&["api-token", "create", "octavia", "-o", "json"]))["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let made = s.run(
        &python().with_file_name("openstack"),
        &[
            "loadbalancer",
            "create",
            "--name",
            "lb1",
            "--vip-subnet-id",
            "10.77.0.0/16",
            "--vip-address",
            VIP,
            "--wait",
            "-f",
            "json",
        ],
        &[
            ("OS_ENDPOINT", format!("https://{OCTAVIA}")),
            ("OS_AUTH_TYPE", "admin_token".into()),
            ("OS_TOKEN", token.clone()),
        ],
    );
    assert_eq!(json(&made)["provisioning_status"], "ACTIVE", "{made}");
    // Octavia sees what it made, not the file's or ELBv2's.
    let listed = s.run(
        &python().with_file_name("openstack"),
        &["loadbalancer", "list", "-f", "json"],
        &[
            ("OS_ENDPOINT", format!("https://{OCTAVIA}")),
            ("OS_AUTH_TYPE", "admin_token".into()),
            ("OS_TOKEN", token.clone()),
        ],
    );
    let listed: Vec<Value> = serde_json::from_str(&listed).unwrap();
    assert_eq!(
        listed
            .iter()
            .map(|l| l["name"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["lb1"],
        "{listed:?}"
    );

    let before = s.config();
    let lbs = names(&before, "load_balancers");
    assert_eq!(lbs.len(), 4, "{lbs:?}");
    let managers = s.managers();
    let by = |m: &str| -> Vec<String> {
        managers
            .as_object()
            .unwrap()
            .iter()
            .filter(|(_, v)| *v == m)
            .map(|(k, _)| k.clone())
            .collect()
    };
    assert!(
        by("cli").contains(&"load-balancer/web".to_owned()),
        "{managers}"
    );
    assert_eq!(
        by("registration"),
        vec![format!("member/app/{B}")],
        "{managers}"
    );
    assert!(
        by("elbv2").contains(&"load-balancer/boto".to_owned()),
        "{managers}"
    );
    assert!(
        by("octavia")
            .iter()
            .any(|k| k.starts_with("load-balancer/")),
        "{managers}"
    );
    // `keel get` shows who manages what.
    let pools = s.ok(&["get", "pools"]);
    assert!(
        pools.contains("manager=cli") && pools.contains(&format!("{B}(registration)")),
        "{pools}"
    );

    // The original file again: --diff says nothing changes, and nothing does.
    let diff = s.ok(&["apply", "--diff", "-f", &path]);
    assert_eq!(diff.trim(), "no changes");
    let out = s.ok(&["apply", "-f", &path]);
    assert!(out.starts_with("unchanged"), "{out}");
    assert_eq!(s.config(), before);

    // Someone else changes the file's pool: the file's apply is refused,
    // naming it, and forced takes it over.
    s.api_sets_algorithm("least_outstanding");
    // The field is the API's; the pool stays the file's.
    assert_eq!(s.managers()["pool/app"], "cli");
    assert_eq!(s.managers()["pool/app#algorithm"], "api");
    let diff = s.ok(&["apply", "--diff", "-f", &path]);
    assert!(
        diff.contains("change pool \"app\"")
            && diff.contains("conflict: pool \"app\" (managed by api): algorithm "),
        "{diff}"
    );
    let (code, out) = s.keel(&["apply", "-f", &path]);
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("pool \"app\" (managed by api): algorithm."),
        "{out}"
    );
    assert_eq!(s.managers()["pool/app#algorithm"], "api");
    s.ok(&["apply", "--force", "-f", &path]);
    assert_eq!(s.managers()["pool/app"], "cli");
    assert!(s.managers().get("pool/app#algorithm").is_none());
    assert_eq!(s.config(), before);

    // The file drops its second load balancer: without --prune it stays;
    // --diff --prune names exactly it; --prune removes it and nothing else.
    let path = s.write(false);
    let out = s.ok(&["apply", "-f", &path]);
    assert!(out.starts_with("unchanged"), "{out}");
    assert!(names(&s.config(), "load_balancers").contains(&"extra".to_owned()));
    let diff = s.ok(&["apply", "--diff", "--prune", "-f", &path]);
    assert_eq!(diff.trim(), "remove load balancer \"extra\"");
    s.ok(&["apply", "--prune", "-f", &path]);
    let after = s.config();
    let mut left = names(&after, "load_balancers");
    left.sort();
    let mut expected: Vec<String> = lbs.into_iter().filter(|n| n != "extra").collect();
    expected.sort();
    assert_eq!(left, expected);
    assert_eq!(members(&after, "app"), vec![A.to_owned(), B.to_owned()]);
    assert_eq!(
        names(&after, "pools").len(),
        names(&before, "pools").len(),
        "{after}"
    );

    // A rule someone else puts on the file's listener is theirs: the load
    // balancer stays the file's, and the file applied again leaves the
    // rule, which it says nothing of (--diff first says nothing changes).
    let rules = |v: &Value| -> Vec<i64> {
        v["load_balancers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|lb| lb["name"] == "web")
            .unwrap()["listeners"][0]["rules"]
            .as_array()
            .map(|r| r.iter().map(|r| r["priority"].as_i64().unwrap()).collect())
            .unwrap_or_default()
    };
    let (_, lb) =
        s.c.call(1, "GET", "/api/v1/load-balancers/web", None)
            .unwrap();
    let mut lb = json(&lb);
    lb["listeners"][0]["rules"] =
        serde_json::json!([{ "priority": 20, "path_prefix": "/admin", "pool": "app" }]);
    let (status, body) =
        s.c.call(
            1,
            "PUT",
            "/api/v1/load-balancers/web",
            Some(&lb.to_string()),
        )
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let managers = s.managers();
    assert_eq!(managers["rule/web/8080/20"], "api", "{managers}");
    assert_eq!(managers["load-balancer/web"], "cli", "{managers}");
    let diff = s.ok(&["apply", "--diff", "-f", &path]);
    assert_eq!(diff.trim(), "no changes");
    s.ok(&["apply", "-f", &path]);
    assert_eq!(rules(&s.config()), [20]);
    // The file adds a rule of its own beside it; one at the other's
    // priority is a conflict that names that rule.
    let with_rule = |priority: u32| {
        let rule = format!("rules: [{{ priority: {priority}, path_prefix: /api, pool: app }}]");
        let text = file(false).replace(
            "default_pool: app }",
            &format!("default_pool: app, {rule} }}"),
        );
        let path = s.dir.path().join("rules.yaml");
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let ours = with_rule(10);
    let diff = s.ok(&["apply", "--diff", "-f", &ours]);
    assert_eq!(
        diff.trim(),
        "create rule 10 of listener 8080 of load balancer \"web\""
    );
    s.ok(&["apply", "-f", &ours]);
    assert_eq!(rules(&s.config()), [10, 20]);
    let managers = s.managers();
    assert_eq!(managers["rule/web/8080/10"], "cli", "{managers}");
    assert_eq!(managers["rule/web/8080/20"], "api", "{managers}");
    let (code, out) = s.keel(&["apply", "-f", &with_rule(20)]);
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains(
            "rule 20 of listener 8080 of load balancer \"web\" (managed by api): path_prefix"
        ),
        "{out}"
    );
    // The file without its rule drops it, and only it.
    s.ok(&["apply", "-f", &path]);
    assert_eq!(rules(&s.config()), [20]);

    // Fields apart: the API sets the pool's algorithm; a file that keeps
    // it and changes a field of its own applies without a conflict, and
    // each field stays whose it was.
    s.api_sets_algorithm("least_outstanding");
    let keeps = file(false).replace(
        "  - name: app\n",
        "  - name: app\n    algorithm: least_outstanding\n    drain_timeout: 7s\n",
    );
    let keeps_path = s.dir.path().join("keeps.yaml");
    std::fs::write(&keeps_path, keeps).unwrap();
    let keeps_path = keeps_path.display().to_string();
    let diff = s.ok(&["apply", "--diff", "-f", &keeps_path]);
    assert_eq!(diff.trim(), "change pool \"app\"");
    s.ok(&["apply", "-f", &keeps_path]);
    let managers = s.managers();
    assert_eq!(managers["pool/app"], "cli", "{managers}");
    assert_eq!(managers["pool/app#algorithm"], "api", "{managers}");
    assert!(
        managers.get("pool/app#drain_timeout").is_none(),
        "{managers}"
    );
    // `keel get` says whose each part is.
    let pools = s.ok(&["get", "pools", "app"]);
    assert!(pools.contains("manager=cli algorithm:api"), "{pools}");
    let lbs = s.ok(&["get", "load-balancers", "web"]);
    assert!(lbs.contains("manager=cli rule/8080/20:api"), "{lbs}");
}

#[test]
fn members_are_added_drained_and_removed_one_at_a_time() {
    let first: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    let node = keel_tests::node::KeelProcess::start(&keel_tests::http_lb(
        keel_tests::free_port(),
        &format!("members: {}", keel_tests::members(&[first])),
    ));
    let token = node.login();
    let server = format!("http://{}", node.admin);
    let keel = |args: &[&str]| {
        let out = keel_tests::node::keel_command(
            args,
            &[("KEEL_SERVER", &server), ("KEEL_TOKEN", &token)],
            "",
        );
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let pool = || {
        let (status, body) = keel_tests::node::raw_call(
            &node.admin.to_string(),
            "GET",
            "/api/v1/pools/app",
            Some(&token),
            None,
        )
        .unwrap();
        assert_eq!(status, 200, "{body}");
        json(&body)["members"].clone()
    };
    let at = |address: &str| {
        pool()
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["address"] == address)
            .cloned()
    };
    let one = ["--pool", "app", "--address", "[::1]:8080"];

    let (ok, out) = keel(&[&["member", "add"][..], &one, &["--weight", "3"]].concat());
    assert!(ok, "{out}");
    let added = at("[::1]:8080").unwrap();
    assert_eq!(
        (added["weight"].as_u64(), added["enabled"].as_bool()),
        (Some(3), Some(true))
    );
    assert!(at("127.0.0.1:9").is_some(), "the others are untouched");
    let (status, managers) = keel_tests::node::raw_call(
        &node.admin.to_string(),
        "GET",
        "/api/v1/managers",
        Some(&token),
        None,
    )
    .unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        json(&managers)["member/app/[::1]:8080"],
        "cli",
        "{managers}"
    );

    let (ok, out) = keel(&[&["member", "drain"][..], &one].concat());
    assert!(ok, "{out}");
    assert_eq!(at("[::1]:8080").unwrap()["enabled"], false);
    let (ok, out) = keel(&[&["member", "enable"][..], &one].concat());
    assert!(ok, "{out}");
    assert_eq!(at("[::1]:8080").unwrap()["enabled"], true);
    let (ok, out) = keel(&[&["member", "remove"][..], &one].concat());
    assert!(ok, "{out}");
    assert!(at("[::1]:8080").is_none());
    assert_eq!(pool().as_array().unwrap().len(), 1);

    // Refusals name what is wrong and change nothing.
    let (ok, out) = keel(&[
        "member",
        "remove",
        "--pool",
        "app",
        "--address",
        "[::1]:8080",
    ]);
    assert!(!ok && out.contains("does not exist"), "{out}");
    let (ok, out) = keel(&["member", "add", "--pool", "app", "--address", "nope"]);
    assert!(!ok && out.contains("is not IP:PORT"), "{out}");
    let (ok, out) = keel(&[
        "member",
        "add",
        "--pool",
        "gone",
        "--address",
        "10.0.0.1:80",
    ]);
    assert!(!ok && out.contains("pool \"gone\" does not exist"), "{out}");
    let (ok, out) = keel(&[
        "member",
        "add",
        "--pool",
        "app",
        "--address",
        "10.0.0.1:80",
        "--weight",
        "5000",
    ]);
    assert!(!ok && out.contains("weight"), "{out}");
    assert_eq!(pool().as_array().unwrap().len(), 1);
}
