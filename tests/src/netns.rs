//! Private network namespaces for multi-node tests (address plan of
//! DESIGN.md): one bridge namespace, one per node (10.77.0.N), one for
//! clients (10.77.2.1, fd77::2:1) and one for backends (10.77.1.1, .2 and
//! fd77::1:1); nodes also get fd77::N. Nothing links to
//! the root namespace and nothing has a default route. Dropping the
//! [`Topology`] deletes every namespace it made, test failure or not.
//!
//! The test process never dials a 10.77 address from the root namespace:
//! [`in_ns`] runs a closure on a thread that has entered a namespace first,
//! and sockets it opens stay in that namespace.

use std::fs::File;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nix::sched::{setns, CloneFlags};

/// Where the e2e tests are allowed to run: as root, with `ip` available.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "\n\n*** namespace tests need root (CI runs as root); run tests/run as root ***\n\n"
    );
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Moves the calling thread into network namespace `ns`; sockets it opens
/// afterwards belong there.
pub fn enter(ns: &str) -> std::io::Result<()> {
    let file = File::open(format!("/var/run/netns/{ns}"))?;
    setns(file, CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)
}

/// Run `f` on a thread inside namespace `ns` and return its result.
pub fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let ns = ns.to_owned();
    std::thread::spawn(move || {
        enter(&ns).unwrap_or_else(|e| panic!("enter namespace {ns}: {e}"));
        f()
    })
    .join()
    .expect("namespace thread panicked")
}

/// A bridge, N node namespaces, a client and a backend namespace.
pub struct Topology {
    pub prefix: String,
    pub nodes: usize,
    namespaces: Vec<String>,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

impl Topology {
    pub fn new(nodes: usize) -> Self {
        require_root();
        let prefix = format!(
            "k{}{}",
            std::process::id() % 100_000,
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let mut t = Topology {
            prefix,
            nodes,
            namespaces: Vec::new(),
        };
        let br = t.add_ns("br");
        ip(&["-n", &br, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &br, "link", "set", "br0", "up"]);
        for i in 1..=nodes {
            t.attach(
                &format!("n{i}"),
                &[&format!("10.77.0.{i}/16"), &format!("fd77::{i}/64")],
            );
        }
        t.attach("c", &["10.77.2.1/16", "fd77::2:1/64"]);
        t.attach("b", &["10.77.1.1/16", "10.77.1.2/16", "fd77::1:1/64"]);
        t
    }

    fn add_ns(&mut self, name: &str) -> String {
        let ns = format!("{}-{name}", self.prefix);
        ip(&["netns", "add", &ns]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        self.namespaces.push(ns.clone());
        ns
    }

    /// A namespace with one veth port on the bridge.
    fn attach(&mut self, name: &str, addrs: &[&str]) {
        let ns = self.add_ns(name);
        let br = self.ns("br");
        let port = self.port(name);
        ip(&[
            "-n", &br, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ]);
        ip(&["-n", &br, "link", "set", &port, "master", "br0", "up"]);
        for a in addrs {
            // No duplicate address detection: the address is usable at once.
            let mut args = vec!["-n", &ns, "addr", "add", a, "dev", "eth0"];
            if a.contains(':') {
                args.push("nodad");
            }
            ip(&args);
        }
        ip(&["-n", &ns, "link", "set", "eth0", "up"]);
    }

    /// The namespace name for `name` (`n1`, `c`, `b`, `br`).
    pub fn ns(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    fn port(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// Cut a namespace off the bridge (or reconnect it).
    pub fn set_link(&self, name: &str, up: bool) {
        ip(&[
            "-n",
            &self.ns("br"),
            "link",
            "set",
            &self.port(name),
            if up { "up" } else { "down" },
        ]);
    }

    /// Give namespace `name` another address.
    pub fn add_addr(&self, name: &str, cidr: &str) {
        ip(&["-n", &self.ns(name), "addr", "add", cidr, "dev", "eth0"]);
    }

    /// A listener bound inside namespace `name`.
    pub fn listen(&self, name: &str, addr: &str) -> TcpListener {
        let addr = addr.to_owned();
        in_ns(&self.ns(name), move || {
            TcpListener::bind(&addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"))
        })
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// One `GET` over a fresh connection from namespace `ns`: (status, body).
pub fn get_from(ns: &str, addr: &str, path: &str) -> Option<(u16, String)> {
    call_from(ns, addr, "GET", path, None, None)
}

/// An HTTP call with a JSON body and optional bearer token, from `ns`.
pub fn call_from(
    ns: &str,
    addr: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> Option<(u16, String)> {
    let (addr, method, path) = (addr.to_owned(), method.to_owned(), path.to_owned());
    let token = token.map(str::to_owned);
    let body = body.map(str::to_owned);
    in_ns(ns, move || {
        crate::node::raw_call(&addr, &method, &path, token.as_deref(), body.as_deref())
    })
}

/// A `keel` process inside a namespace, killed on drop.
pub struct NsKeel {
    pub ns: String,
    pub child: Option<Child>,
    pub log: std::path::PathBuf,
    pub data_dir: std::path::PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
}

impl NsKeel {
    /// Start `keel run ARGS` in `ns`, logging to `dir/NAME.log`.
    pub fn start(ns: &str, dir: &Path, name: &str, args: &[String], env: &[(&str, &str)]) -> Self {
        let mut k = NsKeel {
            ns: ns.to_owned(),
            child: None,
            log: dir.join(format!("{name}.log")),
            data_dir: dir.join(name),
            args: args.to_vec(),
            env: env
                .iter()
                .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
                .collect(),
        };
        k.spawn();
        k
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns])
            .arg(crate::node::keel_bin())
            .arg("run")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(&self.args)
            .env("RUST_LOG", "info")
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().unwrap());
    }

    /// `kill -9`.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM (a graceful stop).
    pub fn terminate(&self) {
        if let Some(c) = &self.child {
            let pid = nix::unistd::Pid::from_raw(c.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        }
    }

    /// Start again with the same data dir and flags.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Wait for the process to exit by itself; its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut()?;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for NsKeel {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Run `keel ARGS` (a client command) inside `ns`: (exit code, stdout, stderr).
pub fn keel_cli(
    ns: &str,
    env: &[(&str, &str)],
    args: &[&str],
    stdin: Option<&str>,
) -> (i32, String, String) {
    use std::io::Write;
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns])
        .arg(crate::node::keel_bin())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    if let Some(mut input) = child.stdin.take() {
        if let Some(text) = stdin {
            input.write_all(text.as_bytes()).unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Poll `check` every 20 ms until it holds or `timeout` passes (then panic
/// naming `what`).
pub fn wait_until(timeout: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("timed out after {timeout:?} waiting for: {what}");
}
