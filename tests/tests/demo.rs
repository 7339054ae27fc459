#![allow(clippy::unwrap_used)]
//! `keel demo` as a newcomer meets it: started as the README says (here
//! with free ports and a directory of the test's own), then driven through
//! what it prints: the dashboard URL and admin password in real
//! Chromium, and `keel demo kill` on the leader.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use keel_tests::browser::Browser;
use keel_tests::node::keel_bin;
use keel_tests::{eventually, free_port};

const SECOND: Duration = Duration::from_secs(1);

/// A running `keel demo`; interrupted (then killed) on drop, with any node
/// it left behind.
struct Demo {
    child: Child,
    dir: PathBuf,
    stdout: PathBuf,
    _scratch: tempfile::TempDir,
}

impl Demo {
    fn start(port: u16, extra: &[&str]) -> Demo {
        let scratch = tempfile::tempdir().unwrap();
        let dir = scratch.path().join("demo");
        let stdout = scratch.path().join("stdout");
        let child = Command::new(keel_bin())
            .args(["demo", "--port", &port.to_string()])
            .args(["--admin-port", "0", "--cluster-port", "0"])
            .args(extra)
            .arg("--dir")
            .arg(&dir)
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(std::fs::File::create(scratch.path().join("stderr")).unwrap())
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        Demo {
            child,
            dir,
            stdout,
            _scratch: scratch,
        }
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    /// Waits for a line of the demo's output that starts with `prefix`.
    fn line(&mut self, prefix: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let out = self.output();
            if let Some(line) = out.lines().map(str::trim).find(|l| l.starts_with(prefix)) {
                return line.to_owned();
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("the demo exited ({status}):\n{out}\n{}", self.stderr());
            }
            assert!(
                Instant::now() < deadline,
                "no {prefix:?} line within {timeout:?}:\n{out}\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The printed dashboards: (node, base URL).
    fn dashboards(&mut self) -> Vec<(String, String)> {
        self.line("Dashboards", SECOND)
            .split_whitespace()
            .skip(1)
            .collect::<Vec<_>>()
            .chunks(2)
            .filter_map(|pair| match pair {
                [url, name] if url.starts_with("http://") => Some((
                    name.trim_matches(|c| c == '(' || c == ')').to_owned(),
                    url.trim_end_matches("/ui/").to_owned(),
                )),
                _ => None,
            })
            .collect()
    }

    /// The printed admin password.
    fn password(&mut self) -> String {
        let login = self.line("Log in", SECOND);
        login
            .split("password ")
            .nth(1)
            .and_then(|t| t.split_whitespace().next())
            .unwrap()
            .to_owned()
    }

    /// The first leader the demo reports.
    fn leader(&mut self) -> String {
        self.line("Leader:", 10 * SECOND)
            .trim_start_matches("Leader: ")
            .trim_end_matches('.')
            .to_owned()
    }

    /// Sends SIGINT and waits for the demo to end; its exit status.
    fn interrupt(&mut self) -> std::process::ExitStatus {
        signal(self.child.id() as i32, nix::sys::signal::Signal::SIGINT).unwrap();
        let deadline = Instant::now() + 15 * SECOND;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "the demo did not stop on SIGINT");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self._scratch.path().join("stderr")).unwrap_or_default()
    }

    /// `keel demo kill NODE` against this demo: its exit and its output.
    fn kill(&self, node: &str) -> (bool, String) {
        let out = Command::new(keel_bin())
            .args(["demo", "kill", node])
            .arg("--dir")
            .arg(&self.dir)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    /// The node pids the demo recorded.
    fn node_pids(&self) -> Vec<i32> {
        let text = std::fs::read_to_string(self.dir.join("demo.json")).unwrap_or_default();
        let state: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        state["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|n| n["pid"].as_i64())
            .filter_map(|p| i32::try_from(p).ok())
            .collect()
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let pids = self.node_pids();
        let _ = signal(self.child.id() as i32, nix::sys::signal::Signal::SIGINT);
        let deadline = Instant::now() + 10 * SECOND;
        while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        for pid in pids {
            let _ = signal(pid, nix::sys::signal::Signal::SIGKILL);
        }
    }
}

fn signal(pid: i32, signal: nix::sys::signal::Signal) -> nix::Result<()> {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal)
}

fn alive(pid: i32) -> bool {
    // A zombie is gone for every purpose here; /proc still lists it.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !s.rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}

/// `count` requests to the demo's port, each on a new connection (so the
/// kernel spreads them over the nodes); the bodies of those answered 200.
fn requests(port: u16, count: usize) -> Vec<String> {
    (0..count)
        .filter_map(|_| keel_tests::node::raw_get(([127, 0, 0, 1], port).into(), "/"))
        .filter(|(status, _)| *status == 200)
        .map(|(_, body)| body)
        .collect()
}

/// A browser logged in to the dashboard at `base` with the demo's
/// password.
async fn log_in(base: &str, password: &str) -> Browser {
    let browser = Browser::start().await;
    browser.client.goto(&format!("{base}/ui/")).await.unwrap();
    browser.fill("#login-password", password).await;
    browser.click("#login-submit").await;
    browser.find("#member-counts", 5 * SECOND).await;
    browser
}

/// The number on a traffic chart ("12.3 req/s").
fn rate(text: &str) -> f64 {
    text.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_is_a_cluster_that_keeps_serving_when_its_leader_is_killed() {
    let port = free_port();
    let mut demo = Demo::start(port, &[]);

    // What it prints: how long it took, the dashboards, the password.
    let up = demo.line("Keel demo:", 60 * SECOND);
    let took: f64 = up
        .split("up in ")
        .nth(1)
        .and_then(|t| t.split(' ').next())
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("no start time in {up:?}"));
    println!("the demo was up in {took} s");
    // The target is under 10 s; CI machines are shared.
    assert!(took < 20.0, "{up}");
    let dashboards = demo.dashboards();
    let names: Vec<&str> = dashboards.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["n1", "n2", "n3"], "{}", demo.output());
    let password = demo.password();
    let leader = demo.leader();
    assert!(names.contains(&leader.as_str()), "leader {leader:?}");

    // The load balancer answers from every backend.
    let bodies = requests(port, 30);
    assert_eq!(bodies.len(), 30, "{bodies:?}");
    let mut backends: Vec<&str> = bodies.iter().filter_map(|b| b.split(" (").next()).collect();
    backends.sort_unstable();
    backends.dedup();
    assert_eq!(backends.len(), 3, "{backends:?}");

    // Another node's dashboard: log in with the printed password, which
    // must be changed first.
    let (viewer, base) = dashboards.iter().find(|(n, _)| *n != leader).unwrap();
    println!("watching on {viewer}'s dashboard, {base}; the leader is {leader}");
    let browser = log_in(base, &password).await;
    let c = &browser.client;

    // Three nodes, the leader, every member healthy.
    let node_rows = "return document.querySelectorAll('#nodes tr[data-node]').length;";
    eventually(10 * SECOND, "three nodes on the overview", || async {
        c.execute(node_rows, vec![])
            .await
            .ok()
            .and_then(|v| v.as_u64())
            == Some(3)
    })
    .await;
    browser
        .wait_text("#leader", 10 * SECOND, "the leader", |t| {
            t == format!("leader: {leader}")
        })
        .await;
    browser
        .wait_text("#member-counts", 15 * SECOND, "healthy members", |t| {
            t.starts_with("3 healthy")
        })
        .await;
    browser.screenshot("demo-overview").await;

    // The demo's own traffic moves the charts.
    browser.open(&format!("{base}/ui/traffic")).await;
    let chart = "[data-series='load_balancer/demo'] .now";
    let before = browser
        .wait_text(chart, 30 * SECOND, "demo traffic on the chart", |t| {
            rate(t) > 5.0
        })
        .await;
    println!("before the kill the chart reads {before}");

    // Kill the leader the way the demo says; a wrong name is refused.
    let (ok, text) = demo.kill("n9");
    assert!(!ok && text.contains("no node \"n9\""), "{text}");
    let killed_at = Instant::now();
    let (ok, text) = demo.kill(&leader);
    assert!(ok, "{text}");
    println!("{}", text.trim());
    let (ok, text) = demo.kill(&leader);
    assert!(!ok && text.contains("not running"), "{text}");

    // The dashboard shows a new leader and the dead node unreachable ...
    browser.open(&format!("{base}/ui/")).await;
    let now = browser
        .wait_text("#leader", 15 * SECOND, "a new leader", |t| {
            t.starts_with("leader: n") && t != format!("leader: {leader}")
        })
        .await;
    println!(
        "the dashboard shows {now} {:?} after the kill",
        killed_at.elapsed()
    );
    browser
        .wait_text(
            &format!("#nodes tr[data-node={leader}] .reach"),
            15 * SECOND,
            "the killed node unreachable",
            |t| t.contains("unreachable"),
        )
        .await;
    browser.screenshot("demo-after-kill").await;
    assert!(
        demo.line(&format!("{leader} stopped"), 5 * SECOND)
            .contains("keep serving"),
        "{}",
        demo.output()
    );

    // ... and the traffic keeps flowing: every request answered, and the
    // chart still moving.
    let bodies = requests(port, 30);
    assert_eq!(bodies.len(), 30, "after the kill: {bodies:?}");
    browser.open(&format!("{base}/ui/traffic")).await;
    let after = browser
        .wait_text(chart, 30 * SECOND, "demo traffic after the kill", |t| {
            rate(t) > 5.0
        })
        .await;
    println!("after the kill the chart reads {after}");
    let traffic = demo.line("Traffic:", 15 * SECOND);
    println!("the demo reports: {traffic}");
    browser.close().await;

    // Ctrl-C stops every node and removes what the demo made.
    let pids = demo.node_pids();
    assert_eq!(pids.len(), 3);
    let status = demo.interrupt();
    assert!(status.success(), "{status}: {}", demo.stderr());
    for pid in pids {
        assert!(!alive(pid), "node process {pid} outlived the demo");
    }
    assert!(
        !Path::new(&demo.dir).exists(),
        "the demo left its directory"
    );
    assert!(demo.output().contains("Demo stopped"));
}

/// The node namespaces holding `ip` (`ip -n NS addr`: the test only looks,
/// it never dials into the demo's network).
fn holders(namespaces: &[(String, String)], ip: &str) -> Vec<String> {
    namespaces
        .iter()
        .filter(|(_, ns)| {
            let out = Command::new("ip")
                .args(["-n", ns, "-o", "-4", "addr", "show", "dev", "eth0"])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).contains(&format!(" {ip}/"))
        })
        .map(|(name, _)| name.clone())
        .collect()
}

fn namespaces_left(supervisor: u32) -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with(&format!("keel-demo-{supervisor}-")))
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_vip_the_leader_holds_the_demos_vip_and_it_moves_when_the_leader_is_killed() {
    keel_tests::netns::require_root();
    const VIP: &str = "10.77.0.100";
    let port = free_port();
    let mut demo = Demo::start(port, &["--vip"]);
    let up = demo.line("Keel demo:", 60 * SECOND);
    println!("{up}");
    let network = demo.line("Network", SECOND);
    assert!(network.contains("namespace"), "{network}");
    let dashboards = demo.dashboards();
    let password = demo.password();
    let leader = demo.leader();
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(demo.dir.join("demo.json")).unwrap())
            .unwrap();
    assert_eq!(state["vip"], VIP.to_owned() + "/24");
    let namespaces: Vec<(String, String)> = state["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["name"].as_str().unwrap().to_owned(),
                n["namespace"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(namespaces.len(), 3);

    // The leader holds the VIP, in its own namespace only, and says so.
    let on = demo.line(&format!("VIP {VIP} is on"), 10 * SECOND);
    assert_eq!(on, format!("VIP {VIP} is on {leader}."));
    assert_eq!(holders(&namespaces, VIP), std::slice::from_ref(&leader));

    // Through the relay on 127.0.0.1, the VIP answers from every backend.
    let bodies = requests(port, 30);
    assert_eq!(bodies.len(), 30, "{bodies:?}");
    let mut backends: Vec<&str> = bodies.iter().filter_map(|b| b.split(" (").next()).collect();
    backends.sort_unstable();
    backends.dedup();
    assert_eq!(backends.len(), 3, "{backends:?}");

    // A follower's dashboard shows who holds it.
    let (_, base) = dashboards.iter().find(|(n, _)| *n != leader).unwrap();
    let browser = log_in(base, &password).await;
    let held_by = format!("[data-vip-holder='{VIP}/24']");
    browser
        .wait_text(&held_by, 10 * SECOND, "the VIP's holder", |t| t == leader)
        .await;
    browser.screenshot("demo-vip").await;

    // Kill the leader: the dead node's guard removes the address from its
    // namespace, and exactly one other node holds it.
    let killed_at = Instant::now();
    let (ok, text) = demo.kill(&leader);
    assert!(ok, "{text}");
    let deadline = Instant::now() + 5 * SECOND;
    let new = loop {
        let now = holders(&namespaces, VIP);
        if let [one] = now.as_slice() {
            if *one != leader {
                break one.clone();
            }
        }
        assert!(
            Instant::now() < deadline,
            "the VIP did not move within 5 s: {now:?}\n{}",
            demo.output()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    println!(
        "the VIP moved from {leader} to {new} {:?} after the kill",
        killed_at.elapsed()
    );
    let moved = demo.line(&format!("VIP {VIP} moved to"), 5 * SECOND);
    assert_eq!(
        moved,
        format!("VIP {VIP} moved to {new} (was on {leader}).")
    );
    browser.open(&format!("{base}/ui/")).await;
    browser
        .wait_text(&held_by, 15 * SECOND, "the new holder", |t| t == new)
        .await;
    browser.screenshot("demo-vip-moved").await;
    browser.close().await;

    // The traffic goes on through the VIP.
    let bodies = requests(port, 30);
    assert_eq!(bodies.len(), 30, "after the kill: {bodies:?}");
    assert_eq!(holders(&namespaces, VIP), [new]);

    // Ctrl-C removes the namespaces too.
    let supervisor = demo.child.id();
    assert_eq!(namespaces_left(supervisor).len(), 5);
    let status = demo.interrupt();
    assert!(status.success(), "{status}: {}", demo.stderr());
    assert_eq!(namespaces_left(supervisor), Vec::<String>::new());
    assert!(!Path::new(&demo.dir).exists());
}
