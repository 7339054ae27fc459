//! `keel demo --vip`: the demo's own network, so the VIP can move between
//! nodes as it would between hosts. A namespace per node on one bridge (the
//! address plan of DESIGN.md: nodes 10.77.0.N, the VIP 10.77.0.100,
//! backends 10.77.1.N, the client 10.77.2.1), and one namespace for the
//! backends and the demo's client. Nothing links them to this machine's
//! own network: the dashboards and the load balancer are reached through
//! relays on 127.0.0.1 whose outgoing connections are opened inside a
//! namespace (a socket stays in the namespace it was made in).

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::Command;

/// The load balancer's VIP, as the config writes it.
pub const VIP: &str = "10.77.0.100/24";
/// The VIP's address.
pub const VIP_ADDR: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 100);
/// Every node's admin address inside its own namespace: loopback, so the
/// dashboard is plain HTTP, as on the demo without `--vip`.
pub const NODE_ADMIN: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 9090);
/// Every node's cluster port (its gossip port is the next one).
pub const NODE_CLUSTER_PORT: u16 = 9110;
/// How long opening a connection inside a namespace may take.
const CONNECT_WITHIN: Duration = Duration::from_secs(2);
/// The start of every namespace the demo makes.
const PREFIX: &str = "keel-demo-";

/// The namespaces of one demo, named after its process
/// (`keel-demo-PID-n1`); deleted on drop.
pub struct Net {
    prefix: String,
    namespaces: Vec<String>,
}

impl Net {
    /// Builds the bridge, `nodes` node namespaces and the outside one
    /// (backends `10.77.1.1..=backends`, the client 10.77.2.1). Removes
    /// first what a demo that was killed itself left behind.
    pub async fn create(nodes: usize, backends: usize) -> anyhow::Result<Net> {
        if !nix::unistd::geteuid().is_root() {
            bail!(
                "--vip needs root to make network namespaces for the nodes: run it with sudo \
                 (or leave --vip out)"
            );
        }
        remove_orphans().await;
        let mut net = Net {
            prefix: format!("{PREFIX}{}-", std::process::id()),
            namespaces: Vec::new(),
        };
        let br = net.add_ns("br").await?;
        ip(&["-n", &br, "link", "add", "br0", "type", "bridge"]).await?;
        ip(&["-n", &br, "link", "set", "br0", "up"]).await?;
        for i in 1..=nodes {
            net.attach(&format!("n{i}"), &[format!("10.77.0.{i}/16")])
                .await?;
        }
        let mut outside = vec!["10.77.2.1/16".to_owned()];
        outside.extend((1..=backends).map(|i| format!("10.77.1.{i}/16")));
        net.attach("out", &outside).await?;
        Ok(net)
    }

    /// The namespace of node `n` (1-based), or `out`, `br`.
    pub fn ns(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// The node address of node `i` (1-based) on the bridge.
    pub fn node_ip(i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, 0, u8::try_from(i).unwrap_or(u8::MAX))
    }

    /// A backend's address (1-based).
    pub fn backend_addr(i: usize) -> SocketAddr {
        let ip = Ipv4Addr::new(10, 77, 1, u8::try_from(i).unwrap_or(u8::MAX));
        SocketAddr::from((ip, 8080))
    }

    async fn add_ns(&mut self, name: &str) -> anyhow::Result<String> {
        let ns = self.ns(name);
        ip(&["netns", "add", &ns]).await?;
        self.namespaces.push(ns.clone());
        ip(&["-n", &ns, "link", "set", "lo", "up"]).await?;
        Ok(ns)
    }

    /// A namespace with one veth port (`eth0`) on the bridge.
    async fn attach(&mut self, name: &str, addrs: &[String]) -> anyhow::Result<()> {
        let ns = self.add_ns(name).await?;
        let br = self.ns("br");
        // Interface names are at most 15 bytes: the port is named by the
        // namespace's short name only (each demo's bridge is its own).
        let port = format!("p-{name}");
        ip(&[
            "-n", &br, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ])
        .await?;
        ip(&["-n", &br, "link", "set", &port, "master", "br0", "up"]).await?;
        for a in addrs {
            ip(&["-n", &ns, "addr", "add", a, "dev", "eth0"]).await?;
        }
        ip(&["-n", &ns, "link", "set", "eth0", "up"]).await?;
        Ok(())
    }

    /// Which of `nodes` namespaces holds the VIP now (`n2`), if one does;
    /// all of them, in case of a split.
    pub async fn holders(&self, nodes: usize) -> Vec<String> {
        let mut held = Vec::new();
        for i in 1..=nodes {
            let name = format!("n{i}");
            let out = Command::new("ip")
                .args([
                    "-n",
                    &self.ns(&name),
                    "-o",
                    "-4",
                    "addr",
                    "show",
                    "dev",
                    "eth0",
                ])
                .stdin(Stdio::null())
                .output()
                .await;
            let needle = format!(" {VIP_ADDR}/");
            if out.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(&needle)) {
                held.push(name);
            }
        }
        held
    }

    /// Deletes the namespaces (their interfaces and addresses go with them).
    pub fn remove(&mut self) {
        for ns in self.namespaces.drain(..).rev() {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", &ns])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.remove();
    }
}

/// Deletes the namespaces of demos whose process is gone.
async fn remove_orphans() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output().await else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let owner = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
        if owner.is_some_and(|pid| !super::alive(pid)) {
            let _ = Command::new("ip")
                .args(["netns", "del", name])
                .status()
                .await;
        }
    }
}

async fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .context("cannot run ip (iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Runs `f` on a thread of its own that has entered namespace `ns` (the
/// thread ends with it, so no runtime thread ever changes namespace).
async fn in_ns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    let path = format!("/var/run/netns/{ns}");
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let result = std::fs::File::open(&path).and_then(|file| {
            nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(std::io::Error::from)?;
            f()
        });
        let _ = tx.send(result);
    });
    rx.await
        .unwrap_or_else(|_| Err(std::io::Error::other("namespace thread panicked")))
}

/// A connection to `addr` opened inside namespace `ns`.
pub async fn connect_in(ns: &str, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let stream = in_ns(ns, move || {
        let stream = std::net::TcpStream::connect_timeout(&addr, CONNECT_WITHIN)?;
        stream.set_nonblocking(true)?;
        Ok(stream)
    })
    .await?;
    TcpStream::from_std(stream)
}

/// A listener on `addr` inside namespace `ns`.
pub async fn listen_in(ns: &str, addr: SocketAddr) -> std::io::Result<TcpListener> {
    let listener = in_ns(ns, move || {
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        Ok(listener)
    })
    .await?;
    TcpListener::from_std(listener)
}

/// Relays every connection made to `listener` (on this machine) to
/// `target` inside namespace `ns`, until the task is dropped.
pub async fn relay(listener: TcpListener, ns: String, target: SocketAddr) {
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let ns = ns.clone();
        tokio::spawn(async move {
            if let Ok(mut outbound) = connect_in(&ns, target).await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
    }
}
