//! The AWS-compatible API's real clients: the Python environment
//! `tests/run` makes (boto3, the AWS CLI, moto, libcloud, boto), a node
//! serving the API with an access key, and the scripts in `tests/aws/`.

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::free_port;
use crate::node::{keel_bin, raw_get, KeelProcess};

/// The virtual environment's Python (`KEEL_PYTHON` overrides).
pub fn python() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    std::env::var_os("KEEL_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/pyenv/bin/python"))
}

/// A script in `tests/aws/`.
pub fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("aws")
        .join(name)
}

/// A node serving the AWS-compatible API over TLS (`--compat-tls
/// always`: on loopback too), an admin session and an access key made with
/// `keel aws-key create`.
pub struct AwsNode {
    pub node: KeelProcess,
    pub admin: String,
    pub token: String,
    pub aws_addr: String,
    pub id: String,
    pub secret: String,
    /// The cluster CA, which signs the API's certificate.
    pub ca: PathBuf,
}

/// The environment that makes the Python clients trust `ca` (boto3 and the
/// AWS CLI, requests-based libcloud, Python's own `ssl`, the `openstack`
/// CLI).
pub fn trust_env(ca: &std::path::Path) -> Vec<(&'static str, String)> {
    let ca = ca.display().to_string();
    [
        "AWS_CA_BUNDLE",
        "REQUESTS_CA_BUNDLE",
        "SSL_CERT_FILE",
        "OS_CACERT",
    ]
    .into_iter()
    .map(|k| (k, ca.clone()))
    .collect()
}

impl AwsNode {
    pub fn start() -> Self {
        let aws_addr = format!("127.0.0.1:{}", free_port());
        let node = KeelProcess::start_with(
            "load_balancers: []\npools: []\n",
            &["--aws-api-addr", &aws_addr, "--compat-tls", "always"],
        );
        let admin = node.admin.to_string();
        let ca = node.config.with_file_name("data").join("tls/ca.pem");
        let token = node.login();
        let mut n = AwsNode {
            node,
            admin,
            token,
            aws_addr,
            id: String::new(),
            secret: String::new(),
            ca,
        };
        let key: serde_json::Value =
            serde_json::from_str(&n.keel(&["aws-key", "create", "ci", "-o", "json"])).unwrap();
        n.id = key["access_key_id"].as_str().unwrap().to_owned();
        n.secret = key["secret_access_key"].as_str().unwrap().to_owned();
        n
    }

    /// Runs a `keel` client command against the node; its output.
    pub fn keel(&self, args: &[&str]) -> String {
        let out = Command::new(keel_bin())
            .args(args)
            .arg("--server")
            .arg(format!("http://{}", self.admin))
            .env("KEEL_TOKEN", &self.token)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "keel {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `program args…` with the endpoint (`ENDPOINT`), the key and
    /// `env` in its environment; its output, or a panic with its errors and
    /// the node's log.
    pub fn run<S: AsRef<OsStr>>(&self, program: S, args: &[S], env: &[(&str, String)]) -> String {
        let mut command = Command::new(&program);
        command
            .args(args)
            .env("ENDPOINT", format!("https://{}", self.aws_addr))
            .envs(trust_env(&self.ca))
            .env("AWS_ACCESS_KEY_ID", &self.id)
            .env("AWS_SECRET_ACCESS_KEY", &self.secret)
            .env("AWS_CONFIG_FILE", "/dev/null")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null");
        for (k, v) in env {
            command.env(k, v);
        }
        let out = command
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.as_ref().to_string_lossy()));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{:?}: {text}\n{}\nkeel log:\n{}",
            args.iter()
                .map(|a| a.as_ref().to_string_lossy())
                .collect::<Vec<_>>(),
            String::from_utf8_lossy(&out.stderr),
            self.node.log_text()
        );
        text
    }
}

/// moto's server on a loopback port, stopped when dropped.
pub struct Moto {
    child: std::process::Child,
    pub url: String,
}

impl Moto {
    pub fn start() -> Self {
        let port = free_port();
        let child = Command::new(python().with_file_name("moto_server"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("moto_server (tests/run installs moto[server])");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while raw_get(addr, "/").is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        Moto {
            child,
            url: format!("http://{addr}"),
        }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
