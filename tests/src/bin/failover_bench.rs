//! Failover figures for `BENCHMARKS.md`: Keel (default and fast timing)
//! against keepalived (VRRPv3, `advert_int 1` and `0.1`), same run, same
//! topology (three nodes, a client and a backend on one bridge), same client
//! (a fresh-connection GET to the VIP every 20 ms).
//!
//! Faults: the owner's bridge port goes down (node loss, both), and `kill
//! -9` of the owner (Keel only, see `main`). The gap is from the first
//! failed request to the first successful one after it.
//!
//! Run with `tests/bench/failover.sh` (root; RUNS=5 by default).
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use keel_tests::cluster::{Cluster, A};
use keel_tests::netns::{wait_until, Topology};
use keel_tests::vip::{gap, holds, median_max, Poller};

const VIP: &str = "10.77.0.100";

#[derive(Clone, Copy, PartialEq)]
enum Fault {
    LinkDown,
    Crash,
}

impl Fault {
    fn label(self) -> &'static str {
        match self {
            Fault::LinkDown => "bridge port down",
            Fault::Crash => "kill -9",
        }
    }
}

/// A cluster under test: who holds the VIP, and how to break and mend it.
trait Subject {
    fn client_ns(&self) -> String;
    fn node_ns(&self, i: usize) -> String;
    fn topology(&self) -> &Topology;
    fn crash(&mut self, i: usize);
    fn recover(&mut self, i: usize);
}

fn holder(s: &dyn Subject) -> Vec<usize> {
    (1..=3).filter(|i| holds(&s.node_ns(*i), VIP)).collect()
}

fn measure(s: &mut dyn Subject, fault: Fault, runs: usize) -> Vec<Duration> {
    let target: SocketAddr = format!("{VIP}:8000").parse().unwrap();
    let mut gaps = Vec::new();
    for run in 0..runs {
        let mut owner = 0;
        wait_until(Duration::from_secs(30), "one VIP holder", || {
            let h = holder(s);
            owner = h.first().copied().unwrap_or(0);
            h.len() == 1
        });
        let poller = Poller::start(
            &s.client_ns(),
            target,
            Duration::from_millis(20),
            Duration::from_millis(500),
        );
        if !poller.wait_success_after(Instant::now(), Duration::from_secs(10)) {
            eprintln!("run {run}: the VIP does not answer; skipping");
            continue;
        }
        let at = Instant::now();
        match fault {
            Fault::LinkDown => s.topology().set_link(&format!("n{owner}"), false),
            Fault::Crash => s.crash(owner),
        }
        let recovered =
            poller.wait_success_after(at + Duration::from_millis(50), Duration::from_secs(30));
        std::thread::sleep(Duration::from_millis(300));
        let attempts = poller.stop();
        match (recovered, gap(&attempts, at)) {
            (true, Some(g)) => {
                eprintln!("  run {run}: n{owner} lost, gap {g:?}");
                gaps.push(g);
            }
            _ => eprintln!("  run {run}: never recovered"),
        }
        match fault {
            Fault::LinkDown => s.topology().set_link(&format!("n{owner}"), true),
            Fault::Crash => s.recover(owner),
        }
        // Let the returning node settle before the next run.
        std::thread::sleep(Duration::from_secs(3));
    }
    gaps
}

struct Keel {
    c: Cluster,
}

impl Subject for Keel {
    fn client_ns(&self) -> String {
        self.c.topo.ns("c")
    }
    fn node_ns(&self, i: usize) -> String {
        self.c.ns(i)
    }
    fn topology(&self) -> &Topology {
        &self.c.topo
    }
    fn crash(&mut self, i: usize) {
        // keel and its VIP guard, frozen then killed together.
        kill_namespace(&self.node_ns(i));
        self.c.nodes[i - 1].kill();
    }
    fn recover(&mut self, i: usize) {
        self.c.nodes[i - 1].restart();
        self.c.wait_ready(i);
    }
}

/// keepalived plus a plain HTTP server on each node.
struct Keepalived {
    topo: Topology,
    dir: tempfile::TempDir,
    advert: &'static str,
    procs: Vec<Vec<Child>>,
}

impl Keepalived {
    fn start(advert: &'static str) -> Self {
        let mut k = Keepalived {
            topo: Topology::new(3),
            dir: tempfile::tempdir().unwrap(),
            advert,
            procs: Vec::new(),
        };
        for i in 1..=3 {
            let p = k.spawn(i);
            k.procs.push(p);
        }
        k
    }

    fn spawn(&self, i: usize) -> Vec<Child> {
        let ns = self.topo.ns(&format!("n{i}"));
        let dir = self.dir.path();
        let conf = dir.join(format!("n{i}.conf"));
        // Equal priorities and nopreempt: like Keel, no fail-back.
        std::fs::write(
            &conf,
            format!(
                "global_defs {{\n  router_id n{i}\n  vrrp_version 3\n}}\n\
                 vrrp_instance keel {{\n  state BACKUP\n  interface eth0\n  virtual_router_id 77\n\
                 \x20 priority 100\n  advert_int {}\n  nopreempt\n\
                 \x20 virtual_ipaddress {{\n    {VIP}/24\n  }}\n}}\n",
                self.advert
            ),
        )
        .unwrap();
        let pid = |what: &str| dir.join(format!("n{i}-{what}.pid")).display().to_string();
        let keepalived = Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns,
                "keepalived",
                "--dont-fork",
                "--log-console",
            ])
            .args(["--vrrp", "-f", &conf.display().to_string()])
            .args([
                "-p",
                &pid("main"),
                "-r",
                &pid("vrrp"),
                "-c",
                &pid("checkers"),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let server = Command::new("ip")
            .args(["netns", "exec", &ns, "python3", "-m", "http.server", "8000"])
            .current_dir(dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        vec![keepalived, server]
    }
}

/// A crash of everything in a node: every process in its namespace is
/// stopped first, then killed, so none runs an exit path (keepalived's
/// children, for one, turn their parent's death into a graceful shutdown
/// that hands the VIP over at once; Keel's VIP guard removes the VIP when
/// keel dies).
fn kill_namespace(ns: &str) {
    let out = Command::new("ip")
        .args(["netns", "pids", ns])
        .output()
        .unwrap();
    let pids: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    for signal in ["-STOP", "-9"] {
        for pid in &pids {
            let _ = Command::new("kill").args([signal, pid]).status();
        }
    }
}

impl Subject for Keepalived {
    fn client_ns(&self) -> String {
        self.topo.ns("c")
    }
    fn node_ns(&self, i: usize) -> String {
        self.topo.ns(&format!("n{i}"))
    }
    fn topology(&self) -> &Topology {
        &self.topo
    }
    fn crash(&mut self, i: usize) {
        kill_namespace(&self.node_ns(i));
        for p in &mut self.procs[i - 1] {
            let _ = p.wait();
        }
    }
    fn recover(&mut self, i: usize) {
        // A crashed keepalived leaves its address behind; a rebooted node
        // would not have it.
        let _ = Command::new("ip")
            .args([
                "-n",
                &self.node_ns(i),
                "addr",
                "del",
                &format!("{VIP}/24"),
                "dev",
                "eth0",
            ])
            .status();
        self.procs[i - 1] = self.spawn(i);
    }
}

impl Drop for Keepalived {
    fn drop(&mut self) {
        for i in 1..=3 {
            kill_namespace(&self.node_ns(i));
        }
        for p in self.procs.iter_mut().flatten() {
            let _ = p.wait();
        }
    }
}

fn main() {
    keel_tests::netns::require_root();
    let runs: usize = std::env::var("RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(5);
    let config = format!(
        "load_balancers:\n  - name: web\n    vip: {VIP}/24\n    listeners: [ {{ port: 8000, protocol: http, default_pool: app }} ]\n\
         pools:\n  - name: app\n    members: [ {{ address: \"{A}\" }} ]\n"
    );
    let mut rows = Vec::new();
    let mut record = |name: &str, fault: Fault, gaps: Vec<Duration>| {
        let (median, max) = median_max(&gaps);
        rows.push(format!(
            "| {name} | {} | {} | {:.2} s | {:.2} s |",
            fault.label(),
            gaps.len(),
            median.as_secs_f64(),
            max.as_secs_f64()
        ));
    };
    for (name, extra) in [
        ("Keel, default timing", Vec::<&str>::new()),
        ("Keel, --timing fast", vec!["--timing", "fast"]),
    ] {
        eprintln!("{name}");
        let mut k = Keel {
            c: Cluster::start_with(3, &config, &extra),
        };
        for fault in [Fault::LinkDown, Fault::Crash] {
            let gaps = measure(&mut k, fault, runs);
            record(name, fault, gaps);
        }
    }
    for advert in ["1", "0.1"] {
        let name = format!("keepalived VRRPv3, advert_int {advert}");
        eprintln!("{name}");
        let mut k = Keepalived::start(if advert == "1" { "1" } else { "0.1" });
        for fault in [Fault::LinkDown, Fault::Crash] {
            let gaps = measure(&mut k, fault, runs);
            record(&name, fault, gaps);
        }
    }
    println!("| system | fault | runs | median gap | max gap |");
    println!("|---|---|---|---|---|");
    for r in rows {
        println!("{r}");
    }
}
