//! `keel` processes started by tests.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// What [`use_keel_bin`] set, in this test process.
static CHOSEN: std::sync::Mutex<Option<PathBuf>> = std::sync::Mutex::new(None);

/// From now on in this test process, [`keel_bin`] is `bin` (`None`: back to
/// the usual one): a rolling upgrade starts nodes on another build.
pub fn use_keel_bin(bin: Option<PathBuf>) {
    *CHOSEN.lock().unwrap_or_else(|e| e.into_inner()) = bin;
}

/// The `keel` binary: the one [`use_keel_bin`] chose, `KEEL_BIN`, or the
/// one built by the same cargo run (next to a binary, or one level up from
/// a test in `deps/`).
pub fn keel_bin() -> PathBuf {
    if let Some(bin) = CHOSEN.lock().unwrap_or_else(|e| e.into_inner()).clone() {
        return bin;
    }
    if let Some(bin) = std::env::var_os("KEEL_BIN") {
        return PathBuf::from(bin);
    }
    let exe = std::env::current_exe().unwrap();
    let here = exe.parent().unwrap();
    let bin = [here, here.parent().unwrap_or(here)]
        .iter()
        .map(|d| d.join("keel"))
        .find(|b| b.exists())
        .unwrap_or_else(|| here.join("keel"));
    assert!(
        bin.exists(),
        "{} not found: build it first (cargo build -p keel)",
        bin.display()
    );
    bin
}

/// `keel ARGS` run to completion with `env`, `stdin` written to it (and
/// closed): its output.
pub fn keel_command(args: &[&str], env: &[(&str, &str)], stdin: &str) -> std::process::Output {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = Command::new(keel_bin())
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(mut input) = child.stdin.take() {
        input.write_all(stdin.as_bytes()).unwrap();
    }
    child.wait_with_output().unwrap()
}

/// A running `keel run` process, killed on drop.
pub struct KeelProcess {
    pub child: Child,
    pub admin: SocketAddr,
    pub config: PathBuf,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl KeelProcess {
    /// Starts `keel run` with `config_yaml` and waits until it is ready.
    pub fn start(config_yaml: &str) -> Self {
        Self::spawn(config_yaml, Some("test-admin-password"), &[])
    }

    /// Like [`KeelProcess::start`], with more `keel run` arguments.
    pub fn start_with(config_yaml: &str, extra: &[&str]) -> Self {
        Self::spawn(config_yaml, Some("test-admin-password"), extra)
    }

    /// Like [`KeelProcess::start`], but the node generates its admin
    /// password (see [`KeelProcess::initial_password`]).
    pub fn start_generated(config_yaml: &str) -> Self {
        Self::spawn(config_yaml, None, &[])
    }

    /// The password a node generated at bootstrap.
    pub fn initial_password(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("data/initial-admin-password"))
            .unwrap()
            .trim()
            .to_owned()
    }

    fn spawn(config_yaml: &str, password: Option<&str>, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("keel.yaml");
        std::fs::write(&config, config_yaml).unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{}", crate::free_port()).parse().unwrap();
        let log = dir.path().join("keel.log");
        let mut command = Command::new(keel_bin());
        if let Some(password) = password {
            command.env("KEEL_ADMIN_PASSWORD", password);
        }
        let child = command
            .args(["run", "--watch-interval", "200ms", "--shutdown-grace", "2s"])
            .arg("--config")
            .arg(&config)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--admin-addr")
            .arg(admin.to_string())
            .arg("--cluster-addr")
            .arg(format!("127.0.0.1:{}", crate::free_port()))
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(std::fs::File::create(dir.path().join("stdout")).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let p = KeelProcess {
            child,
            admin,
            config,
            log,
            _dir: dir,
        };
        p.wait_ready(Duration::from_secs(10));
        p
    }

    fn wait_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.admin_get("/readyz").is_some_and(|(s, _)| s == 200) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("keel not ready in {timeout:?}; log:\n{}", self.log_text());
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// What the process wrote to its standard output (a file, as under
    /// systemd).
    pub fn stdout_text(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("stdout")).unwrap_or_default()
    }

    pub fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.child.id() as i32)
    }

    /// Logs in as admin with the password [`KeelProcess::start`] set; the
    /// session's bearer token.
    pub fn login(&self) -> String {
        let (status, body) = raw_call(
            &self.admin.to_string(),
            "POST",
            "/api/v1/login",
            None,
            Some("{\"password\": \"test-admin-password\"}"),
        )
        .expect("the admin API answers");
        assert_eq!(status, 200, "login: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["token"].as_str().unwrap().to_owned()
    }

    /// A blocking GET on the admin address: status and body.
    pub fn admin_get(&self, path: &str) -> Option<(u16, String)> {
        raw_get(self.admin, path)
    }

    /// Peak resident memory of the process, in KiB (VmHWM).
    pub fn rss_kib(&self) -> u64 {
        proc_status_kib(self.child.id(), "VmRSS:")
    }
}

/// The resident set size of process `pid`, in KiB.
pub fn rss_of(pid: u32) -> u64 {
    proc_status_kib(pid, "VmRSS:")
}

impl Drop for KeelProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// A minimal blocking HTTP/1.0 GET, for admin endpoints.
pub fn raw_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    raw_call(&addr.to_string(), "GET", path, None, None)
}

/// One HTTP/1.0 call with an optional bearer token and JSON body:
/// (status, body).
pub fn raw_call(
    addr: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let addr: SocketAddr = addr.parse().ok()?;
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(15))).ok()?;
    let mut head = format!("{method} {path} HTTP/1.0\r\nHost: keel\r\n");
    if let Some(t) = token {
        head.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    let body = body.unwrap_or("");
    head.push_str(&format!(
        "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    ));
    s.write_all(head.as_bytes()).ok()?;
    s.write_all(body.as_bytes()).ok()?;
    let mut bytes = Vec::new();
    s.read_to_end(&mut bytes).ok()?;
    // A binary body (a backup) reads as text with replacement characters.
    let out = String::from_utf8_lossy(&bytes);
    let status = out.split_whitespace().nth(1)?.parse().ok()?;
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((status, body))
}
