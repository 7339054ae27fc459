//! A cluster of real `keel` processes in namespaces, for end-to-end tests:
//! node 1 bootstraps with a config, the others join with one token.

use std::time::{Duration, Instant};

use crate::backend::HttpBackend;
use crate::netns::{call_from, get_from, keel_cli, wait_until, NsKeel, Topology};
use serde_json::Value;

pub const PASSWORD: &str = "e2e-admin-password-1";
pub const ADMIN: &str = "127.0.0.1:9090";

pub fn config(member: &str) -> String {
    format!(
        "load_balancers:\n  - name: web\n    listeners: [ {{ port: 8000, protocol: http, default_pool: app }} ]\n\
         pools:\n  - name: app\n    members: [ {{ address: \"{member}\" }} ]\n"
    )
}

pub const A: &str = "10.77.1.1:8080";
pub const B: &str = "10.77.1.2:8080";

pub struct Cluster {
    // Field order is drop order: processes first, then namespaces.
    pub nodes: Vec<NsKeel>,
    /// Flags every node gets on top of [`node_args`].
    pub extra_args: Vec<String>,
    pub backends: Vec<HttpBackend>,
    _rt: tokio::runtime::Runtime,
    pub topo: Topology,
    pub dir: tempfile::TempDir,
    pub bearer: String,
}

pub fn node_args(i: usize) -> Vec<String> {
    [
        "--node-name".to_owned(),
        format!("n{i}"),
        "--cluster-addr".to_owned(),
        format!("10.77.0.{i}:9091"),
        "--admin-addr".to_owned(),
        ADMIN.to_owned(),
        "--shutdown-grace".to_owned(),
        "1s".to_owned(),
    ]
    .to_vec()
}

pub fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

impl Cluster {
    /// Node 1 bootstrapped with `config(A)`, logged in; backends a and b up.
    pub fn bootstrap(size: usize) -> Self {
        Self::bootstrap_with(size, &config(A), &[])
    }

    /// Node 1 bootstrapped with `initial`, every node started with `extra`
    /// flags too, logged in; backends a and b up.
    pub fn bootstrap_with(size: usize, initial: &str, extra: &[&str]) -> Self {
        let extra_args: Vec<String> = extra.iter().map(|a| (*a).to_owned()).collect();
        let topo = Topology::new(size);
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let backends = {
            let la = topo.listen("b", A);
            let lb = topo.listen("b", B);
            let _guard = rt.enter();
            vec![
                HttpBackend::from_std("a", la),
                HttpBackend::from_std("b", lb),
            ]
        };
        let cfg = dir.path().join("initial.yaml");
        std::fs::write(&cfg, initial).unwrap();
        let mut args = node_args(1);
        args.extend(["--config".to_owned(), cfg.display().to_string()]);
        args.extend(extra_args.iter().cloned());
        let n1 = NsKeel::start(
            &topo.ns("n1"),
            dir.path(),
            "n1",
            &args,
            &[("KEEL_ADMIN_PASSWORD", PASSWORD)],
        );
        let mut c = Cluster {
            nodes: vec![n1],
            extra_args,
            backends,
            _rt: rt,
            topo,
            dir,
            bearer: String::new(),
        };
        c.wait_ready(1);
        let (status, body) = c
            .call(
                1,
                "POST",
                "/api/v1/login",
                Some(&format!("{{\"password\": \"{PASSWORD}\"}}")),
            )
            .unwrap();
        assert_eq!(status, 200, "{body}");
        c.bearer = json(&body)["token"].as_str().unwrap().to_owned();
        c
    }

    /// Bootstrap and join the other nodes with one token.
    pub fn start(size: usize) -> Self {
        Self::start_with(size, &config(A), &[])
    }

    /// [`Cluster::bootstrap_with`], then join the other nodes with one token.
    pub fn start_with(size: usize, initial: &str, extra: &[&str]) -> Self {
        let mut c = Self::bootstrap_with(size, initial, extra);
        let token = c.join_token(&["--uses", &(size - 1).to_string()]);
        for i in 2..=size {
            c.join(i, &token);
        }
        for i in 2..=size {
            c.wait_ready(i);
        }
        wait_until(Duration::from_secs(15), "every node a ready member", || {
            let s = c.status(1);
            s["nodes"]
                .as_array()
                .is_some_and(|n| n.len() == size && n.iter().all(|n| n["ready"] == true))
        });
        c
    }

    pub fn ns(&self, i: usize) -> String {
        self.topo.ns(&format!("n{i}"))
    }

    pub fn join_token(&self, extra: &[&str]) -> String {
        let mut args = vec!["token", "create", "--server", "http://127.0.0.1:9090"];
        args.extend(extra);
        let (code, out, err) = keel_cli(&self.ns(1), &[("KEEL_TOKEN", &self.bearer)], &args, None);
        assert_eq!(code, 0, "token create: {err}");
        out.trim().to_owned()
    }

    pub fn join(&mut self, i: usize, token: &str) {
        let mut args = node_args(i);
        args.extend([
            "--join".to_owned(),
            "10.77.0.1:9091".to_owned(),
            "--token".to_owned(),
            token.to_owned(),
        ]);
        args.extend(self.extra_args.iter().cloned());
        let node = NsKeel::start(&self.ns(i), self.dir.path(), &format!("n{i}"), &args, &[]);
        if self.nodes.len() >= i {
            self.nodes[i - 1] = node;
        } else {
            self.nodes.push(node);
        }
    }

    pub fn call(
        &self,
        i: usize,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> Option<(u16, String)> {
        let token = (!self.bearer.is_empty()).then_some(self.bearer.as_str());
        call_from(&self.ns(i), ADMIN, method, path, token, body)
    }

    pub fn status(&self, i: usize) -> Value {
        match self.call(i, "GET", "/api/v1/status", None) {
            Some((200, body)) => json(&body),
            _ => Value::Null,
        }
    }

    pub fn wait_ready(&self, i: usize) {
        let ns = self.ns(i);
        let log = &self.nodes[i - 1].log;
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if get_from(&ns, ADMIN, "/readyz").is_some_and(|(s, _)| s == 200) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "n{i} not ready; log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
    }

    pub fn leader(&self, ask: usize) -> usize {
        let mut leader = 0;
        wait_until(Duration::from_secs(10), "a leader", || {
            let name = self.status(ask)["leader"].as_str().map(str::to_owned);
            leader = name
                .and_then(|n| n.trim_start_matches('n').parse().ok())
                .unwrap_or(0);
            leader != 0
        });
        leader
    }

    /// The body node `i`'s listener answers with, asked from the client namespace.
    pub fn served_by(&self, i: usize) -> Option<String> {
        get_from(&self.topo.ns("c"), &format!("10.77.0.{i}:8000"), "/")
            .filter(|(s, _)| *s == 200)
            .map(|(_, b)| b)
    }

    pub fn pools(&self, i: usize) -> Vec<String> {
        match self.call(i, "GET", "/api/v1/pools", None) {
            Some((200, body)) => json(&body)
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["name"].as_str().unwrap().to_owned())
                .collect(),
            _ => Vec::new(),
        }
    }

    /// [`wait_until`], showing node `i`'s log when the wait runs out.
    pub fn wait_on(
        &self,
        i: usize,
        timeout: Duration,
        what: &str,
        mut check: impl FnMut() -> bool,
    ) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if check() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "timed out after {timeout:?} waiting for: {what}; n{i}'s log:\n{}",
            self.nodes[i - 1].log_text()
        );
    }

    pub fn logs(&self) -> String {
        self.nodes.iter().map(NsKeel::log_text).collect()
    }
}

pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}
