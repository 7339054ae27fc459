//! The `openstack loadbalancer` CLI (python-openstackclient and
//! python-octaviaclient from PyPI) against Keel's Octavia-compatible API,
//! as the Octavia seed's walkthrough uses it: a load balancer on a VIP,
//! TCP listeners on 80 and 443, pools, members and an HTTP health monitor
//! on `/health`, each created with `--wait`; then L7 path routing, status,
//! stats, refusals, and a cascade delete. The node runs in a namespace with
//! the backends on other hosts (DESIGN.md's address plan).

#![allow(clippy::unwrap_used)] // a failed unwrap is how a test fails

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use keel_tests::aws::python;
use keel_tests::cluster::{json, Cluster, A, B};
use keel_tests::netns::{get_from, keel_cli, wait_until};
use serde_json::Value;

const OCTAVIA: &str = "127.0.0.1:9876";
const VIP: &str = "10.77.0.100";

struct Setup {
    c: Cluster,
    token: String,
}

fn setup() -> Setup {
    let c = Cluster::bootstrap_with(
        1,
        "load_balancers: []\npools: []\n",
        &["--octavia-api-addr", OCTAVIA, "--compat-tls", "always"],
    );
    let (code, out, err) = keel_cli(
        &c.ns(1),
        &[("KEEL_TOKEN", &c.bearer)],
        &[
            "api-token",
            "create",
            "octavia",
            "-o",
            "json",
            "--server",
            "http://127.0.0.1:9090",
        ],
        None,
    );
    assert_eq!(code, 0, "{err}");
    let token = json(&out)["token"].as_str().unwrap().to_owned();
    Setup { c, token }
}

impl Setup {
    /// `openstack ARGS` in the node's namespace with `auth` (environment);
    /// exit code, stdout, stderr.
    fn openstack(&self, auth: &[(&str, &str)], args: &[&str]) -> (i32, String, String) {
        let bin = python().with_file_name("openstack");
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.c.ns(1)])
            .arg(&bin)
            .args(args)
            .env("OS_ENDPOINT", format!("https://{OCTAVIA}"))
            .env("OS_CACERT", self.ca())
            .env_remove("OS_CLOUD");
        for (k, v) in auth {
            command.env(k, v);
        }
        let out = command.output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `openstack loadbalancer ARGS -f json` with the API token; its output.
    fn lb(&self, args: &[&str]) -> Value {
        let mut all = vec!["loadbalancer"];
        all.extend(args);
        // Deletes print nothing; `status show` prints JSON by itself;
        // everything else prints JSON when asked.
        if !args.contains(&"delete") && !args.contains(&"status") {
            all.extend(["-f", "json"]);
        }
        let (code, out, err) = self.openstack(
            &[("OS_AUTH_TYPE", "admin_token"), ("OS_TOKEN", &self.token)],
            &all,
        );
        assert_eq!(
            code,
            0,
            "openstack {all:?}: {out}\n{err}\nkeel log:\n{}",
            self.c.logs()
        );
        if out.trim().is_empty() {
            Value::Null
        } else {
            json(&out)
        }
    }

    /// `member create` of `ip:port` in `pool`, waiting; the member.
    fn member(&self, pool: &str, ip: &str, port: &str) -> Value {
        self.lb(&[
            "member",
            "create",
            "--address",
            ip,
            "--protocol-port",
            port,
            "--wait",
            pool,
        ])
    }

    /// A raw call to the Octavia API with `headers`: status and body.
    fn raw(&self, method: &str, path: &str, headers: &[&str], body: Option<&str>) -> (u16, Value) {
        let mut command = Command::new("ip");
        command
            .args([
                "netns",
                "exec",
                &self.c.ns(1),
                "curl",
                "-sS",
                "--max-time",
                "10",
            ])
            .args(["-X", method, "-w", "\n%{http_code}", "--cacert"])
            .arg(self.ca());
        for h in headers {
            command.args(["-H", h]);
        }
        if let Some(b) = body {
            command.args(["-H", "Content-Type: application/json", "--data-binary", b]);
        }
        let out = command
            .arg(format!("https://{OCTAVIA}{path}"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, status) = text.rsplit_once('\n').unwrap();
        let value = serde_json::from_str(body).unwrap_or(Value::Null);
        (status.trim().parse().unwrap(), value)
    }

    /// The cluster CA, which signs the API's certificate.
    fn ca(&self) -> PathBuf {
        self.c.dir.path().join("n1/tls/ca.pem")
    }

    fn token_header(&self) -> String {
        format!("X-Auth-Token: {}", self.token)
    }

    /// Keel's own view of the config, through its admin API.
    fn keel_config(&self) -> Value {
        let (status, body) = self.c.call(1, "GET", "/api/v1/config", None).unwrap();
        assert_eq!(status, 200, "{body}");
        json(&body)
    }

    /// The bodies of `n` GETs of `path` at `addr` (from the node's namespace).
    fn bodies(&self, addr: &str, path: &str, n: usize) -> BTreeSet<String> {
        wait_until(Duration::from_secs(10), "the listener answers", || {
            get_from(&self.c.ns(1), addr, path).is_some_and(|(s, _)| s == 200)
        });
        (0..n)
            .map(|_| get_from(&self.c.ns(1), addr, path).unwrap().1)
            .collect()
    }
}

#[test]
fn the_openstack_cli_walkthrough_builds_a_balancer_that_serves() {
    let s = setup();
    let (a_ip, a_port) = A.split_once(':').unwrap();
    let (b_ip, b_port) = B.split_once(':').unwrap();

    // The load balancer claims a VIP on the node's subnet (found by name
    // through the Neutron shim).
    let lb = s.lb(&[
        "create",
        "--name",
        "lb1",
        "--vip-subnet-id",
        "10.77.0.0/16",
        "--vip-address",
        VIP,
        "--wait",
    ]);
    assert_eq!(lb["provisioning_status"], "ACTIVE", "{lb}");
    assert_eq!(lb["vip_address"], VIP, "{lb}");
    assert_eq!(lb["provider"], "keel", "{lb}");

    for port in ["80", "443"] {
        let l = s.lb(&[
            "listener",
            "create",
            "--name",
            &format!("listener{port}"),
            "--protocol",
            "TCP",
            "--protocol-port",
            port,
            "--wait",
            "lb1",
        ]);
        assert_eq!(l["protocol"], "TCP", "{l}");
        let p = s.lb(&[
            "pool",
            "create",
            "--name",
            &format!("pool{port}"),
            "--lb-algorithm",
            "ROUND_ROBIN",
            "--listener",
            &format!("listener{port}"),
            "--protocol",
            "TCP",
            "--wait",
        ]);
        assert_eq!(p["provisioning_status"], "ACTIVE", "{p}");
    }
    for (ip, port) in [(a_ip, a_port), (b_ip, b_port)] {
        let m = s.member("pool80", ip, port);
        assert_eq!(m["address"], ip, "{m}");
    }
    s.member("pool443", a_ip, a_port);
    let hm = s.lb(&[
        "healthmonitor",
        "create",
        "--name",
        "health",
        "--delay",
        "1",
        "--timeout",
        "1",
        "--max-retries",
        "1",
        "--type",
        "HTTP",
        "--url-path",
        "/health",
        "--wait",
        "pool80",
    ]);
    assert_eq!(hm["type"], "HTTP", "{hm}");

    // Real traffic through the VIP reaches the registered backends.
    assert_eq!(
        s.bodies(&format!("{VIP}:80"), "/", 6),
        BTreeSet::from(["a".to_owned(), "b".to_owned()])
    );
    assert_eq!(
        s.bodies(&format!("{VIP}:443"), "/", 3),
        BTreeSet::from(["a".to_owned()])
    );

    // Keel's own API shows the same objects.
    let config = s.keel_config();
    let text = config.to_string();
    let keel_lb = &config["load_balancers"][0];
    assert_eq!(keel_lb["name"], "lb1", "{config}");
    assert_eq!(keel_lb["vip"], format!("{VIP}/16"), "{config}");
    assert!(
        text.contains("\"path\":\"/health\"") && text.contains("pool443"),
        "{config}"
    );

    // A member whose port is closed fails its checks: real health shows.
    s.lb(&[
        "member",
        "create",
        "--name",
        "dead",
        "--address",
        a_ip,
        "--protocol-port",
        "9",
        "--wait",
        "pool80",
    ]);
    wait_until(
        Duration::from_secs(15),
        "the dead member shows ERROR",
        || s.lb(&["member", "show", "pool80", "dead"])["operating_status"] == "ERROR",
    );
    let pool = s.lb(&["pool", "show", "pool80"]);
    assert_eq!(pool["operating_status"], "DEGRADED", "{pool}");
    let status = s.lb(&["status", "show", "lb1"]);
    let members = &status["loadbalancer"]["listeners"][0]["pools"][0]["members"];
    assert_eq!(members.as_array().map(Vec::len), Some(3), "{status}");
    let stats = s.lb(&["stats", "show", "lb1"]);
    assert!(stats["total_connections"].as_u64().unwrap() >= 9, "{stats}");

    // L7: an HTTP listener with `/api` routed to a second pool.
    s.lb(&[
        "listener",
        "create",
        "--name",
        "web",
        "--protocol",
        "HTTP",
        "--protocol-port",
        "8088",
        "--wait",
        "lb1",
    ]);
    s.lb(&[
        "pool",
        "create",
        "--name",
        "site",
        "--lb-algorithm",
        "ROUND_ROBIN",
        "--listener",
        "web",
        "--protocol",
        "HTTP",
        "--wait",
    ]);
    s.lb(&[
        "pool",
        "create",
        "--name",
        "api",
        "--lb-algorithm",
        "LEAST_CONNECTIONS",
        "--loadbalancer",
        "lb1",
        "--protocol",
        "HTTP",
        "--wait",
    ]);
    s.member("site", a_ip, a_port);
    s.member("api", b_ip, b_port);
    s.lb(&[
        "l7policy",
        "create",
        "--name",
        "to-api",
        "--action",
        "REDIRECT_TO_POOL",
        "--redirect-pool",
        "api",
        "--wait",
        "web",
    ]);
    let rule = s.lb(&[
        "l7rule",
        "create",
        "--type",
        "PATH",
        "--compare-type",
        "STARTS_WITH",
        "--value",
        "/api",
        "--wait",
        "to-api",
    ]);
    assert_eq!(rule["compare_type"], "STARTS_WITH", "{rule}");
    let web = format!("{VIP}:8088");
    assert_eq!(s.bodies(&web, "/", 3), BTreeSet::from(["a".to_owned()]));
    assert_eq!(
        s.bodies(&web, "/api/v1", 3),
        BTreeSet::from(["b".to_owned()])
    );

    // Everything goes with the load balancer.
    s.lb(&["delete", "--cascade", "--wait", "lb1"]);
    let config = s.keel_config();
    assert!(
        config
            .get("load_balancers")
            .is_none_or(|l| l == &serde_json::json!([]))
            && config
                .get("pools")
                .is_none_or(|p| p == &serde_json::json!([])),
        "{config}"
    );
}

#[test]
fn the_octavia_api_refuses_bad_calls_and_changes_nothing() {
    let s = setup();
    // HTTP Basic with a Keel user works; no credentials, a made-up token or
    // a wrong password do not.
    let basic = [
        ("OS_AUTH_TYPE", "http_basic"),
        ("OS_USERNAME", "admin"),
        ("OS_PASSWORD", keel_tests::cluster::PASSWORD),
    ];
    let (code, out, err) = s.openstack(&basic, &["loadbalancer", "list", "-f", "json"]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, _, err) = s.openstack(&[("OS_AUTH_TYPE", "none")], &["loadbalancer", "list"]);
    assert_ne!(code, 0);
    assert!(err.contains("authentication"), "{err}");
    let wrong = [
        ("OS_AUTH_TYPE", "http_basic"),
        ("OS_USERNAME", "admin"),
        ("OS_PASSWORD", "not-the-password"),
    ];
    assert_ne!(s.openstack(&wrong, &["loadbalancer", "list"]).0, 0);
    assert_eq!(s.raw("GET", "/v2.0/lbaas/loadbalancers", &[], None).0, 401);
    assert_eq!(
        s.raw(
            "GET",
            "/v2.0/lbaas/loadbalancers",
            &["X-Auth-Token: keel_x_y"],
            None
        )
        .0,
        401
    );

    let auth = s.token_header();
    let h = [auth.as_str()];
    // Lists page with `limit` and `marker`, linking to the next page.
    let all = s.raw("GET", "/v2.0/subnets", &h, None).1["subnets"].clone();
    let mut paged = Vec::new();
    let mut path = "/v2.0/subnets?limit=1".to_owned();
    loop {
        let page = s.raw("GET", &path, &h, None).1;
        assert!(page["subnets"].as_array().unwrap().len() <= 1, "{page}");
        paged.extend(page["subnets"].as_array().unwrap().iter().cloned());
        let Some(next) = page["subnets_links"][0]["href"].as_str() else {
            break;
        };
        assert!(next.starts_with("https://"), "a link off TLS: {next}");
        path = next.split_once(OCTAVIA).unwrap().1.to_owned();
    }
    assert!(all.as_array().unwrap().len() >= 2, "{all}");
    assert_eq!(serde_json::Value::Array(paged), all);
    let subnets = s.raw("GET", "/v2.0/subnets?name=10.77.0.0/16", &h, None).1;
    let subnet = subnets["subnets"][0]["id"].as_str().unwrap().to_owned();
    let (status, lb) = s.raw(
        "POST",
        "/v2.0/lbaas/loadbalancers",
        &h,
        Some(&format!(
            r#"{{"loadbalancer": {{"name": "x", "vip_subnet_id": "{subnet}"}}}}"#
        )),
    );
    assert_eq!(status, 201, "{lb}");
    let lb_id = lb["loadbalancer"]["id"].as_str().unwrap().to_owned();
    let before = s.keel_config();

    let cases: Vec<(&str, String, String, u16, &str)> = vec![
        ("POST", "/v2.0/lbaas/loadbalancers".into(), "{not json".into(), 400, "not JSON"),
        ("POST", "/v2.0/lbaas/loadbalancers".into(), r#"{"loadbalancer": {"name": "y"}}"#.into(), 400, "vip_subnet_id"),
        ("POST", "/v2.0/lbaas/loadbalancers".into(), format!(r#"{{"loadbalancer": {{"vip_subnet_id": "{subnet}", "colour": "red"}}}}"#), 400, "colour"),
        ("POST", "/v2.0/lbaas/loadbalancers".into(), format!(r#"{{"loadbalancer": {{"vip_subnet_id": "{subnet}", "vip_address": "192.168.9.9"}}}}"#), 400, "not in subnet"),
        ("POST", "/v2.0/lbaas/loadbalancers".into(), r#"{"loadbalancer": {"vip_subnet_id": "no-such-subnet"}}"#.into(), 400, "not found"),
        ("POST", "/v2.0/lbaas/listeners".into(), format!(r#"{{"listener": {{"loadbalancer_id": "{lb_id}", "protocol": "UDP", "protocol_port": 53}}}}"#), 400, "UDP"),
        ("POST", "/v2.0/lbaas/listeners".into(), format!(r#"{{"listener": {{"loadbalancer_id": "{lb_id}", "protocol": "TCP", "protocol_port": 70000}}}}"#), 400, "protocol_port"),
        ("POST", "/v2.0/lbaas/listeners".into(), r#"{"listener": {"loadbalancer_id": "5d1c1a66-0000-4000-8000-000000000000", "protocol": "TCP", "protocol_port": 80}}"#.into(), 404, "not found"),
        ("POST", "/v2.0/lbaas/pools".into(), format!(r#"{{"pool": {{"loadbalancer_id": "{lb_id}", "protocol": "TCP", "lb_algorithm": "SOURCE_IP_PORT"}}}}"#), 400, "SOURCE_IP_PORT"),
        ("POST", "/v2.0/lbaas/pools".into(), r#"{"pool": {"protocol": "TCP", "lb_algorithm": "ROUND_ROBIN"}}"#.into(), 400, "listener_id or a loadbalancer_id"),
        ("DELETE", "/v2.0/lbaas/pools/5d1c1a66-0000-4000-8000-000000000000".into(), String::new(), 404, "not found"),
        ("PUT", format!("/v2.0/lbaas/loadbalancers/{lb_id}"), r#"{"loadbalancer": {"admin_state_up": false}}"#.into(), 400, "admin_state_up"),
        ("POST", "/v2.0/subnets".into(), "{}".into(), 405, "read-only"),
    ];
    for (method, path, body, want, says) in &cases {
        let body = (!body.is_empty()).then_some(body.as_str());
        let (status, answer) = s.raw(method, path, &h, body);
        assert_eq!(status, *want, "{method} {path} {body:?}: {answer}");
        let fault = answer["faultstring"].as_str().unwrap_or_default();
        assert!(fault.contains(says), "{method} {path}: {answer}");
    }
    assert_eq!(s.keel_config(), before, "refused calls changed nothing");

    // A listener, a duplicate port (409), a pool, a second default pool
    // (409), a member twice (409), and the load balancer with children
    // cannot go without cascade.
    let listener = format!(
        r#"{{"listener": {{"loadbalancer_id": "{lb_id}", "protocol": "TCP", "protocol_port": 7000}}}}"#
    );
    let (status, l) = s.raw("POST", "/v2.0/lbaas/listeners", &h, Some(&listener));
    assert_eq!(status, 201, "{l}");
    assert_eq!(
        s.raw("POST", "/v2.0/lbaas/listeners", &h, Some(&listener))
            .0,
        409
    );
    let l_id = l["listener"]["id"].as_str().unwrap();
    let pool = format!(
        r#"{{"pool": {{"listener_id": "{l_id}", "protocol": "TCP", "lb_algorithm": "ROUND_ROBIN"}}}}"#
    );
    let (status, p) = s.raw("POST", "/v2.0/lbaas/pools", &h, Some(&pool));
    assert_eq!(status, 201, "{p}");
    assert_eq!(s.raw("POST", "/v2.0/lbaas/pools", &h, Some(&pool)).0, 409);
    let p_id = p["pool"]["id"].as_str().unwrap();
    let member = r#"{"member": {"address": "10.77.1.1", "protocol_port": 8080}}"#;
    let members = format!("/v2.0/lbaas/pools/{p_id}/members");
    assert_eq!(s.raw("POST", &members, &h, Some(member)).0, 201);
    assert_eq!(s.raw("POST", &members, &h, Some(member)).0, 409);
    let bad_member = r#"{"member": {"address": "not-an-ip", "protocol_port": 8080}}"#;
    assert_eq!(s.raw("POST", &members, &h, Some(bad_member)).0, 400);
    let (status, answer) = s.raw(
        "DELETE",
        &format!("/v2.0/lbaas/loadbalancers/{lb_id}"),
        &h,
        None,
    );
    assert_eq!(status, 400, "{answer}");
    assert!(answer["faultstring"].as_str().unwrap().contains("children"));
    let (status, _) = s.raw(
        "DELETE",
        &format!("/v2.0/lbaas/loadbalancers/{lb_id}?cascade=true"),
        &h,
        None,
    );
    assert_eq!(status, 204);
    assert_eq!(
        s.raw(
            "GET",
            &format!("/v2.0/lbaas/loadbalancers/{lb_id}"),
            &h,
            None
        )
        .0,
        404
    );
}

#[test]
fn objects_belong_to_their_load_balancers_project_and_lists_filter_on_it() {
    let s = setup();
    let auth = s.token_header();
    let h = [auth.as_str()];
    let subnets = s.raw("GET", "/v2.0/subnets?name=10.77.0.0/16", &h, None).1;
    let subnet = subnets["subnets"][0]["id"].as_str().unwrap().to_owned();
    let create = |body: String| {
        let (status, answer) = s.raw("POST", "/v2.0/lbaas/loadbalancers", &h, Some(&body));
        assert_eq!(status, 201, "{answer}");
        answer["loadbalancer"].clone()
    };
    let blue = create(format!(
        r#"{{"loadbalancer": {{"name": "blue", "vip_subnet_id": "{subnet}", "project_id": "p-blue"}}}}"#
    ));
    assert_eq!(blue["project_id"], "p-blue");
    assert_eq!(blue["tenant_id"], "p-blue");
    let plain = create(format!(
        r#"{{"loadbalancer": {{"name": "plain", "vip_subnet_id": "{subnet}"}}}}"#
    ));
    assert_eq!(plain["project_id"], "keel");
    // Children belong to their load balancer's project.
    let blue_id = blue["id"].as_str().unwrap();
    let (status, l) = s.raw(
        "POST",
        "/v2.0/lbaas/listeners",
        &h,
        Some(&format!(
            r#"{{"listener": {{"loadbalancer_id": "{blue_id}", "protocol": "TCP", "protocol_port": 7100}}}}"#
        )),
    );
    assert_eq!(status, 201, "{l}");
    assert_eq!(l["listener"]["project_id"], "p-blue");
    let l_id = l["listener"]["id"].as_str().unwrap();
    let (status, p) = s.raw(
        "POST",
        "/v2.0/lbaas/pools",
        &h,
        Some(&format!(
            r#"{{"pool": {{"listener_id": "{l_id}", "protocol": "TCP", "lb_algorithm": "ROUND_ROBIN"}}}}"#
        )),
    );
    assert_eq!(status, 201, "{p}");
    assert_eq!(p["pool"]["project_id"], "p-blue");
    let p_id = p["pool"]["id"].as_str().unwrap();
    let members = format!("/v2.0/lbaas/pools/{p_id}/members");
    let (status, m) = s.raw(
        "POST",
        &members,
        &h,
        Some(r#"{"member": {"address": "10.77.1.1", "protocol_port": 8080}}"#),
    );
    assert_eq!(status, 201, "{m}");
    assert_eq!(m["member"]["project_id"], "p-blue");

    // A client filtering on its project sees its objects, all of them, and
    // another project's filter sees none of them.
    let names = |path: &str, collection: &str| -> Vec<String> {
        let (status, answer) = s.raw("GET", path, &h, None);
        assert_eq!(status, 200, "{path}: {answer}");
        answer[collection]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let lbs = "/v2.0/lbaas/loadbalancers";
    assert_eq!(
        names(&format!("{lbs}?project_id=p-blue"), "loadbalancers"),
        [blue_id]
    );
    assert_eq!(
        names(&format!("{lbs}?project_id=keel"), "loadbalancers"),
        [plain["id"].as_str().unwrap()]
    );
    assert!(names(&format!("{lbs}?project_id=p-red"), "loadbalancers").is_empty());
    for (path, collection, id) in [
        ("/v2.0/lbaas/listeners", "listeners", l_id),
        ("/v2.0/lbaas/pools", "pools", p_id),
        (
            members.as_str(),
            "members",
            m["member"]["id"].as_str().unwrap(),
        ),
    ] {
        assert_eq!(
            names(&format!("{path}?project_id=p-blue"), collection),
            [id],
            "{path}"
        );
        assert!(
            names(&format!("{path}?project_id=p-red"), collection).is_empty(),
            "{path}"
        );
    }
}
