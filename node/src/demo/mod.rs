//! `keel demo`: the product on one machine, without root. Three `keel run`
//! processes (n1 bootstraps, n2 and n3 join with a token) with their own
//! data directories and ports on 127.0.0.1, three built-in backends, and
//! light traffic so the dashboard's charts move. Every node serves the demo
//! load balancer's port (the kernel spreads connections over their
//! `SO_REUSEPORT` sockets), so killing one (`keel demo kill n1`) leaves the
//! port served while the others elect a leader. Ctrl-C stops the nodes and
//! removes the directory.
//!
//! With `--vip` (as root) each node runs in a network namespace of its own
//! (`net.rs`), the demo load balancer has a VIP that the leader holds, and
//! killing the leader shows the VIP move; the dashboards and the load
//! balancer are reached through relays on 127.0.0.1.

mod net;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use http::Method;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};

use crate::cli::{DemoAction, DemoArgs, LogFormat};
use crate::client::Api;

const NODES: usize = 3;
const BACKENDS: usize = 3;
/// Requests the traffic generator sends each second.
const RATE: u64 = 20;
/// How long a node may take to become ready.
const READY_WITHIN: Duration = Duration::from_secs(30);
/// What a running demo leaves for `keel demo kill`: who is who.
const STATE_FILE: &str = "demo.json";

/// Runs the demo until SIGTERM or SIGINT, or acts on a running one.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join("keel-demo"));
    match &args.action {
        Some(DemoAction::Kill { node }) => kill(&dir, node),
        None => serve(&args, dir).await,
    }
}

/// Who is who in a running demo, in `DIR/demo.json`.
#[derive(Debug, Serialize, Deserialize)]
pub struct DemoState {
    /// The `keel demo` process.
    pub supervisor: u32,
    /// The load balancer's port on 127.0.0.1.
    pub port: u16,
    pub nodes: Vec<DemoNode>,
    /// With `--vip`: the VIP's address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vip: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DemoNode {
    pub name: String,
    pub pid: u32,
    /// Its admin API and dashboard (with `--vip`, a relay to it).
    pub admin: SocketAddr,
    /// With `--vip`: its network namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// One node of the demo: a `keel run` child process.
struct Node {
    name: String,
    /// Where the supervisor and the dashboards reach its admin API.
    admin: SocketAddr,
    /// Where it listens for it: `admin`, or in its namespace with `--vip`.
    listen_admin: SocketAddr,
    /// With `--vip`: its network namespace.
    ns: Option<String>,
    cluster: SocketAddr,
    gossip: SocketAddr,
    data: PathBuf,
    log: PathBuf,
    /// `None` once it has stopped.
    child: Option<Child>,
}

impl Node {
    fn new(dir: &Path, i: usize, args: &DemoArgs, net: Option<&net::Net>) -> anyhow::Result<Node> {
        let name = format!("n{}", i + 1);
        let admin = nth_port(args.admin_port, i, false)?;
        if let Some(net) = net {
            let ip = net::Net::node_ip(i + 1);
            return Ok(Node {
                admin,
                listen_admin: net::NODE_ADMIN,
                ns: Some(net.ns(&name)),
                cluster: SocketAddr::from((ip, net::NODE_CLUSTER_PORT)),
                gossip: SocketAddr::from((ip, net::NODE_CLUSTER_PORT + 1)),
                data: dir.join(&name),
                log: dir.join(format!("{name}.log")),
                name,
                child: None,
            });
        }
        Ok(Node {
            admin,
            listen_admin: admin,
            ns: None,
            cluster: nth_port(args.cluster_port, 10 * i, false)?,
            gossip: nth_port(args.cluster_port, 10 * i + 1, true)?,
            data: dir.join(&name),
            log: dir.join(format!("{name}.log")),
            name,
            child: None,
        })
    }

    /// Starts `keel run` for this node: the first with `config` and the
    /// admin password, the others with `join` (the first node's cluster
    /// address and a join token).
    fn start(
        &mut self,
        first: Option<(&Path, &str)>,
        join: Option<(SocketAddr, &str)>,
        log_format: LogFormat,
    ) -> anyhow::Result<()> {
        let exe = std::env::current_exe().context("cannot find the keel binary")?;
        let log = std::fs::File::create(&self.log)
            .with_context(|| format!("cannot create {}", self.log.display()))?;
        let mut command = match &self.ns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(exe);
                c
            }
            None => Command::new(exe),
        };
        command
            .arg("run")
            .args(["--node-name", &self.name])
            .arg("--data-dir")
            .arg(&self.data)
            .args(["--admin-addr", &self.listen_admin.to_string()])
            .args(["--cluster-addr", &self.cluster.to_string()])
            .args(["--gossip-addr", &self.gossip.to_string()])
            // Two workers: their listening sockets share the port with
            // SO_REUSEPORT, and so do the other nodes'.
            .args(["--workers", "2"])
            .args(["--shutdown-grace", "1s"])
            .args([
                "--log-format",
                match log_format {
                    LogFormat::Human => "human",
                    LogFormat::Json => "json",
                },
            ])
            .env_remove("KEEL_CONFIG")
            .env_remove("KEEL_JOIN")
            .env_remove("KEEL_ADMIN_PASSWORD")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        if let Some((config, password)) = first {
            command
                .arg("--config")
                .arg(config)
                .env("KEEL_ADMIN_PASSWORD", password);
        }
        if let Some((leader, token)) = join {
            command
                .args(["--join", &leader.to_string()])
                .env("KEEL_JOIN_TOKEN", token);
        }
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {}", self.name))?;
        self.child = Some(child);
        Ok(())
    }

    /// Waits until the node answers `/readyz` with 200.
    async fn ready(&mut self) -> anyhow::Result<()> {
        let api = Api::local(self.admin, None);
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            if let Some(child) = &mut self.child {
                if let Some(status) = child.try_wait()? {
                    bail!(
                        "{} exited ({status}); its log:\n{}",
                        self.name,
                        tail(&self.log)
                    );
                }
            }
            if api.get("/readyz").await.is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{} was not ready within {READY_WITHIN:?}; its log:\n{}",
                    self.name,
                    tail(&self.log)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// Asks the node to stop (SIGTERM), then kills it after `grace`.
    async fn stop(&mut self, grace: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        if tokio::time::timeout(grace, child.wait()).await.is_err() {
            let _ = child.kill().await;
        }
    }
}

/// Starts everything, prints how to use it, reports what happens, and
/// cleans up on SIGINT or SIGTERM (or when starting fails).
async fn serve(args: &DemoArgs, dir: PathBuf) -> anyhow::Result<()> {
    prepare(&dir)?;
    let net = if args.vip {
        match net::Net::create(NODES, BACKENDS).await {
            Ok(net) => Some(net),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        }
    } else {
        None
    };
    let mut nodes = Vec::new();
    for i in 0..NODES {
        nodes.push(Node::new(&dir, i, args, net.as_ref())?);
    }
    let started = Instant::now();
    let result = tokio::select! {
        r = start(args, &dir, &mut nodes, net.as_ref()) => r,
        () = crate::shutdown_signal() => Err(anyhow!("interrupted while starting")),
    };
    let outcome = match result {
        Ok(session) => {
            println!(
                "{}",
                banner(args, &dir, &nodes, &session, started.elapsed())
            );
            watch(args.port, &mut nodes, &session, net.as_ref()).await;
            Ok(())
        }
        Err(e) => Err(e),
    };
    for node in &mut nodes {
        node.stop(Duration::from_secs(3)).await;
    }
    // The namespaces go once their processes have.
    drop(net);
    let _ = std::fs::remove_dir_all(&dir);
    if outcome.is_ok() {
        println!("Demo stopped; removed {}.", dir.display());
    }
    outcome
}

/// Makes the demo's directory; refuses while another demo uses it.
fn prepare(dir: &Path) -> anyhow::Result<()> {
    if let Ok(state) = read_state(dir) {
        if alive(state.supervisor) && state.supervisor != std::process::id() {
            bail!(
                "a demo is already running (pid {}) in {}: stop it with Ctrl-C, or give this one \
                 another --dir and other ports",
                state.supervisor,
                dir.display()
            );
        }
        // Nodes an earlier demo left behind when it was killed itself.
        for node in &state.nodes {
            if let Some(pid) = node_process(dir, node) {
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            }
        }
    }
    if dir.exists() {
        std::fs::remove_dir_all(dir)
            .with_context(|| format!("cannot clear {} from an earlier demo", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(())
}

/// What `start` leaves for the rest of the demo.
struct Session {
    password: String,
    token: String,
    traffic: Arc<Traffic>,
}

async fn start(
    args: &DemoArgs,
    dir: &Path,
    nodes: &mut [Node],
    net: Option<&net::Net>,
) -> anyhow::Result<Session> {
    let mut backends = Vec::new();
    for n in 1..=BACKENDS {
        let listener = match net {
            Some(net) => net::listen_in(&net.ns("out"), net::Net::backend_addr(n)).await,
            None => TcpListener::bind("127.0.0.1:0").await,
        }
        .with_context(|| format!("cannot start demo backend {n}"))?;
        backends.push(start_backend(n, listener)?);
    }
    if let Some(net) = net {
        // The dashboards and the load balancer, reached from this machine.
        for node in nodes.iter() {
            let ns = node.ns.clone().unwrap_or_default();
            tokio::spawn(net::relay(
                relay_listener(node.admin).await?,
                ns,
                node.listen_admin,
            ));
        }
        let local = SocketAddr::from(([127, 0, 0, 1], args.port));
        let vip = SocketAddr::from((net::VIP_ADDR, args.port));
        tokio::spawn(net::relay(relay_listener(local).await?, net.ns("out"), vip));
    }
    let config = dir.join("keel.yaml");
    let vip = net.map(|_| net::VIP);
    std::fs::write(&config, demo_config(args.port, &backends, vip))?;
    let (first, others) = nodes.split_first_mut().ok_or_else(|| anyhow!("no nodes"))?;
    // The demo chooses the admin password (to log in here and make the
    // join token) and prints it.
    let password = keel_web_core::random_hex(8);
    first.start(Some((&config, &password)), None, args.log_format)?;
    first.ready().await?;
    let answer = Api::local(first.admin, None)
        .send(
            Method::POST,
            "/api/v1/login",
            &json!({"user": "admin", "password": password}),
        )
        .await
        .map_err(|e| anyhow!("cannot log in to n1: {e}"))?;
    let token = answer["token"]
        .as_str()
        .ok_or_else(|| anyhow!("n1's login answer has no token"))?
        .to_owned();
    let api = Api::local(first.admin, Some(token.clone()));
    let join = api
        .send(
            Method::POST,
            "/api/v1/tokens",
            &json!({"ttl": "10m", "uses": others.len()}),
        )
        .await
        .map_err(|e| anyhow!("cannot create a join token: {e}"))?;
    let join_token = join["token"]
        .as_str()
        .ok_or_else(|| anyhow!("the join token answer has no token"))?
        .to_owned();
    for node in others.iter_mut() {
        node.start(None, Some((first.cluster, &join_token)), args.log_format)?;
    }
    for node in others.iter_mut() {
        node.ready().await?;
    }
    write_state(dir, args.port, nodes, vip)?;
    let traffic = Arc::new(Traffic::default());
    tokio::spawn(generate(args.port, traffic.clone()));
    Ok(Session {
        password,
        token,
        traffic,
    })
}

fn banner(
    args: &DemoArgs,
    dir: &Path,
    nodes: &[Node],
    session: &Session,
    took: Duration,
) -> String {
    let dashboards: Vec<String> = nodes
        .iter()
        .map(|n| format!("http://{}/ui/ ({})", n.admin, n.name))
        .collect();
    let mut me = command_name();
    if args.vip {
        // The nodes are root's processes.
        me = format!("sudo {me}");
    }
    if let Some(dir) = &args.dir {
        me = format!("{me} demo --dir {}", dir.display());
    } else {
        me.push_str(" demo");
    }
    let port = args.port;
    let (serving, network, failover) = match nodes.first().and_then(|n| n.ns.as_deref()) {
        Some(ns) => (
            format!(
                "on the VIP {vip}:{port}, which the leader holds; reached from here through a relay \
                 into the demo's network",
                vip = net::VIP_ADDR
            ),
            format!(
                "\n\x20 Network        each node in a network namespace of its own on one bridge \
                 ({}…): sudo ip -n {ns} addr show eth0",
                ns.trim_end_matches("n1")
            ),
            "the others elect a leader, the VIP moves to it, and the traffic goes on",
        ),
        None => (
            "served by every node".to_owned(),
            String::new(),
            "the others elect a leader and keep serving",
        ),
    };
    format!(
        "\nKeel demo: a cluster of {NODES} nodes on this machine, up in {:.1} s. Each node is a \
         `keel run` process with its own data directory and log in {dir}.\n\n\
         \x20 Load balancer  http://127.0.0.1:{port}/  {serving}; {BACKENDS} built-in \
         backends behind it and {RATE} requests/s of demo traffic{network}\n\
         \x20 Dashboards     {dashboards}\n\
         \x20 Log in         user admin, password {password}\n\
         \x20 Try            for i in 1 2 3 4 5 6; do curl -s http://127.0.0.1:{port}/; done\n\
         \x20 Failover       {me} kill n1   (kills n1; {failover}: \
         watch it on another node's dashboard)\n\
         \x20 Stop           Ctrl-C (stops the nodes and removes {dir})\n",
        took.as_secs_f64(),
        dir = dir.display(),
        dashboards = dashboards.join("  "),
        password = session.password,
    )
}

/// How to call this binary again from the current directory: `keel` when
/// that is what PATH finds, else the path to it.
fn command_name() -> String {
    let Ok(exe) = std::env::current_exe() else {
        return "keel".into();
    };
    let on_path = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join("keel") == exe));
    if on_path {
        return "keel".into();
    }
    match std::env::current_dir() {
        Ok(cwd) => match exe.strip_prefix(&cwd) {
            Ok(rel) => rel.display().to_string(),
            Err(_) => exe.display().to_string(),
        },
        Err(_) => exe.display().to_string(),
    }
}

/// Reports nodes that stop, leader changes and how the traffic fares,
/// until SIGINT or SIGTERM.
async fn watch(port: u16, nodes: &mut [Node], session: &Session, net: Option<&net::Net>) {
    let stop = crate::shutdown_signal();
    tokio::pin!(stop);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut leader: Option<String> = None;
    let mut holders: Vec<String> = Vec::new();
    // After a node stops, the traffic is reported every few seconds for a
    // while, so the terminal shows it kept flowing.
    let mut report_until = Instant::now();
    let mut last_report = Instant::now();
    let mut counted = session.traffic.snapshot();
    loop {
        tokio::select! {
            () = &mut stop => return,
            _ = tick.tick() => {}
        }
        for node in nodes.iter_mut() {
            let exited = match &mut node.child {
                Some(child) => child.try_wait().ok().flatten(),
                None => None,
            };
            if let Some(status) = exited {
                node.child = None;
                println!(
                    "{} stopped ({status}). The other nodes keep serving http://127.0.0.1:{port}/.",
                    node.name
                );
                report_until = Instant::now() + Duration::from_secs(20);
            }
        }
        if let Some(now) = current_leader(nodes, &session.token).await {
            if leader.as_deref() != Some(now.as_str()) {
                match &leader {
                    None => println!("Leader: {now}."),
                    Some(before) => println!("Leader: {now} (was {before})."),
                }
                leader = Some(now);
            }
        }
        if let Some(net) = net {
            // Between holders (a failover takes well under a second) no
            // node holds it: that is not worth a line.
            let now = net.holders(NODES).await;
            if !now.is_empty() && now != holders {
                let vip = net::VIP_ADDR;
                match holders.as_slice() {
                    [] => println!("VIP {vip} is on {}.", now.join(" and ")),
                    before => println!(
                        "VIP {vip} moved to {} (was on {}).",
                        now.join(" and "),
                        before.join(" and ")
                    ),
                }
                holders = now;
            }
        }
        if Instant::now() < report_until && last_report.elapsed() >= Duration::from_secs(5) {
            let now = session.traffic.snapshot();
            println!(
                "Traffic: {} requests in the last {:.0} s, {} answered by a backend.",
                now.0 - counted.0,
                last_report.elapsed().as_secs_f64(),
                now.1 - counted.1
            );
            counted = now;
            last_report = Instant::now();
        }
    }
}

/// The leader as the first running node that answers sees it.
async fn current_leader(nodes: &[Node], token: &str) -> Option<String> {
    for node in nodes.iter().filter(|n| n.child.is_some()) {
        let api = Api::local(node.admin, Some(token.to_owned()));
        let status = tokio::time::timeout(Duration::from_millis(500), api.get("/api/v1/status"))
            .await
            .ok()
            .and_then(Result::ok);
        if let Some(leader) = status.as_ref().and_then(|s| s["leader"].as_str()) {
            return Some(leader.to_owned());
        }
    }
    None
}

/// A listener on this machine for a relay into the demo's network.
async fn relay_listener(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} (give other ports)"))
}

/// `keel demo kill NODE`: SIGKILL to one node of the demo in `dir`.
fn kill(dir: &Path, name: &str) -> anyhow::Result<()> {
    let state = read_state(dir).map_err(|e| {
        anyhow!(
            "no demo is running in {} ({e}): start one with `keel demo`",
            dir.display()
        )
    })?;
    if !alive(state.supervisor) {
        bail!("the demo in {} is no longer running", dir.display());
    }
    let names: Vec<&str> = state.nodes.iter().map(|n| n.name.as_str()).collect();
    let node = state
        .nodes
        .iter()
        .find(|n| n.name == name)
        .ok_or_else(|| anyhow!("no node {name:?} in the demo (it has {})", names.join(", ")))?;
    let Some(pid) = node_process(dir, node) else {
        bail!("{name} is not running (already killed?)");
    };
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL)
        .with_context(|| format!("cannot kill {name} (pid {pid})"))?;
    let others: Vec<String> = state
        .nodes
        .iter()
        .filter(|n| n.name != name)
        .map(|n| format!("http://{}/ui/ ({})", n.admin, n.name))
        .collect();
    println!(
        "Killed {name} (pid {pid}). The others elect a leader if it led; watch on {}.",
        others.join(" or ")
    );
    Ok(())
}

/// The process of a demo node, if that pid still is it (pids are reused):
/// its command line names the node's data directory.
fn node_process(dir: &Path, node: &DemoNode) -> Option<nix::unistd::Pid> {
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", node.pid)).ok()?;
    let data = dir.join(&node.name);
    let ours = cmdline
        .split(|b| *b == 0)
        .any(|arg| Path::new(&*String::from_utf8_lossy(arg)) == data);
    let pid = i32::try_from(node.pid).ok()?;
    ours.then(|| nix::unistd::Pid::from_raw(pid))
}

fn read_state(dir: &Path) -> anyhow::Result<DemoState> {
    let text = std::fs::read_to_string(dir.join(STATE_FILE))?;
    Ok(serde_json::from_str(&text)?)
}

fn write_state(dir: &Path, port: u16, nodes: &[Node], vip: Option<&str>) -> anyhow::Result<()> {
    let state = DemoState {
        supervisor: std::process::id(),
        port,
        vip: vip.map(str::to_owned),
        nodes: nodes
            .iter()
            .map(|n| DemoNode {
                name: n.name.clone(),
                pid: n.pid().unwrap_or(0),
                admin: n.admin,
                namespace: n.ns.clone(),
            })
            .collect(),
    };
    std::fs::write(dir.join(STATE_FILE), serde_json::to_string_pretty(&state)?)?;
    Ok(())
}

fn alive(pid: u32) -> bool {
    i32::try_from(pid).is_ok_and(|pid| {
        pid > 0 && nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
    })
}

/// The last lines of a node's log, for an error.
fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Port `base + step` on 127.0.0.1, or a free one when `base` is 0.
fn nth_port(base: u16, step: usize, udp: bool) -> anyhow::Result<SocketAddr> {
    if base == 0 {
        return free_port(udp);
    }
    let port = usize::from(base) + step;
    let port = u16::try_from(port).map_err(|_| anyhow!("port {port} is out of range"))?;
    Ok(SocketAddr::from(([127, 0, 0, 1], port)))
}

/// A free loopback port (TCP or UDP), for `--admin-port 0`.
fn free_port(udp: bool) -> anyhow::Result<SocketAddr> {
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    Ok(if udp {
        std::net::UdpSocket::bind(any)?.local_addr()?
    } else {
        std::net::TcpListener::bind(any)?.local_addr()?
    })
}

/// The demo's config: one HTTP listener on 127.0.0.1 (or on `vip`), one
/// health-checked pool of the built-in backends.
pub fn demo_config(port: u16, backends: &[SocketAddr], vip: Option<&str>) -> String {
    let members: Vec<String> = backends
        .iter()
        .map(|b| format!("{{ address: \"{b}\" }}"))
        .collect();
    let (vip, bind) = match vip {
        Some(vip) => (format!("\n    vip: {vip}"), String::new()),
        None => (String::new(), " bind: 127.0.0.1,".to_owned()),
    };
    format!(
        r#"load_balancers:
  - name: demo{vip}
    listeners:
      - {{ port: {port}, protocol: http,{bind} default_pool: demo }}
pools:
  - name: demo
    algorithm: round_robin
    health_check: {{ type: http, path: /health, interval: 1s, timeout: 500ms }}
    members: [ {} ]
"#,
        members.join(", ")
    )
}

/// What the traffic generator has seen: requests sent, and answered 200.
#[derive(Default)]
struct Traffic {
    sent: AtomicU64,
    answered: AtomicU64,
}

impl Traffic {
    fn snapshot(&self) -> (u64, u64) {
        (
            self.sent.load(Ordering::Relaxed),
            self.answered.load(Ordering::Relaxed),
        )
    }
}

/// [`RATE`] requests a second to the load balancer, each on a connection
/// of its own so the kernel spreads them over every node.
async fn generate(port: u16, traffic: Arc<Traffic>) {
    let mut tick = tokio::time::interval(Duration::from_millis(1000 / RATE));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        let traffic = traffic.clone();
        tokio::spawn(async move {
            traffic.sent.fetch_add(1, Ordering::Relaxed);
            let answer = tokio::time::timeout(Duration::from_secs(2), request(port)).await;
            if let Ok(Ok(_)) = answer {
                traffic.answered.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
}

/// One `GET /` over a new connection; the body of a 200 answer.
async fn request(port: u16) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
    stream
        .write_all(
            b"GET / HTTP/1.1\r\nHost: demo\r\nUser-Agent: keel-demo\r\nConnection: close\r\n\r\n",
        )
        .await?;
    let mut answer = Vec::new();
    stream.take(64 * 1024).read_to_end(&mut answer).await?;
    let text = String::from_utf8_lossy(&answer);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    if !head.starts_with("HTTP/1.1 200") {
        return Err(std::io::Error::other(
            head.lines().next().unwrap_or_default().to_owned(),
        ));
    }
    Ok(body.to_owned())
}

/// A tiny HTTP backend on `listener` that names itself.
fn start_backend(n: usize, listener: TcpListener) -> std::io::Result<SocketAddr> {
    let addr = listener.local_addr()?;
    let body = Bytes::from(format!("Hello from demo backend {n} ({addr})\n"));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let body = body.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let text = if req.uri().path() == "/health" {
                        Bytes::from_static(b"ok\n")
                    } else {
                        body.clone()
                    };
                    async move { Ok::<_, Infallible>(hyper::Response::new(Full::new(text))) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}
