//! The client subcommands (`login`, `apply`, `get`, `delete`, `status`,
//! `token`, `api-token`, `node`): thin callers of the admin API.
//!
//! Credentials: `KEEL_TOKEN` (an API token), else the session token that
//! `keel login` stored for that server in `~/.config/keel/credentials.json`.
//! Exit codes: 0 ok, 1 error (one line on stderr), 2 usage (from clap).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

use crate::cli::{
    ApiTokenArgs, ApplyArgs, AwsKeyArgs, BackupArgs, CaCommand, ClientArgs, Command, Connect,
    CredentialCommand, DeleteArgs, GetArgs, InstanceCommand, JoinTokenArgs, LoginArgs, MemberArgs,
    MemberCommand, NodeCommand, Output, RegistrationTokenArgs, SecretsCommand, TimingCommand,
    UserCommand,
};

type Result<T> = std::result::Result<T, String>;

/// Run a client subcommand; prints the result or a one-line error.
pub async fn run(command: Command) -> ExitCode {
    let result = match command {
        Command::Login(a) => login(a).await,
        Command::Apply(a) => apply(a).await,
        Command::Get(a) => get(a).await,
        Command::Delete(a) => delete(a).await,
        Command::Status(c) => status(c).await,
        Command::Backup(b) => backup(b).await,
        Command::Token { command } => credential(command).await,
        Command::User { command } => user(command).await,
        Command::ApiToken { command } => credential(command).await,
        Command::Node { command } => node(command).await,
        Command::Timing { command } => timing(command).await,
        Command::Secrets { command } => secrets(command).await,
        Command::Ca { command } => ca(command).await,
        Command::RegistrationToken { command } => credential(command).await,
        Command::AwsKey { command } => credential(command).await,
        Command::Instance { command } => instance(command).await,
        Command::Member { command } => member(command).await,
        Command::Run(_)
        | Command::Recover(_)
        | Command::Demo(_)
        | Command::Check { .. }
        | Command::VipGuard
        | Command::HashPassword
        | Command::Appliance { .. } => Err("not a client command".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keel: {e}");
            ExitCode::FAILURE
        }
    }
}

fn credentials_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("keel").join("credentials.json"))
}

fn stored_tokens() -> BTreeMap<String, String> {
    credentials_path()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

/// Where `keel login --ca-fingerprint` remembers the fingerprint each
/// https:// server is trusted by.
fn trust_path() -> Option<PathBuf> {
    credentials_path().map(|p| p.with_file_name("trust.json"))
}

fn stored_trust() -> BTreeMap<String, String> {
    trust_path()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

/// CA fingerprints, comma-separated (two while a CA rotation trusts both).
fn parse_fingerprints(text: &str) -> Result<Vec<String>> {
    text.split(',').map(crate::pki::parse_fingerprint).collect()
}

/// Keep `fingerprints` as the CAs this CLI trusts for `server`.
fn pin(server: &str, fingerprints: &[String]) -> Result<()> {
    let path = trust_path().ok_or("no home directory to store the fingerprint in")?;
    let mut trust = stored_trust();
    trust.insert(server.to_owned(), fingerprints.join(","));
    write_credentials(&path, &trust)
}

fn token_for(server: &str) -> Option<String> {
    std::env::var("KEEL_TOKEN")
        .ok()
        .filter(|t| !t.is_empty())
        .or_else(|| stored_tokens().remove(server.trim_end_matches('/')))
}

/// A client of one node's admin API.
pub(crate) struct Api {
    server: String,
    authority: String,
    token: Option<String>,
    /// Set for https:// servers: TLS trusting the cluster CA, and the name
    /// to check the certificate against.
    tls: Option<(std::sync::Arc<rustls::ClientConfig>, String)>,
    /// Sent as `Keel-Manager`: what this client creates or changes is
    /// recorded as this manager's.
    manager: String,
}

impl Api {
    /// A client of a plain-HTTP admin API on this host, with a session
    /// token or none (`keel demo` drives its nodes with it).
    pub(crate) fn local(addr: std::net::SocketAddr, token: Option<String>) -> Api {
        Api {
            server: format!("http://{addr}"),
            authority: addr.to_string(),
            token,
            tls: None,
            manager: "cli".to_owned(),
        }
    }

    fn new(args: &Connect) -> Result<Self> {
        let server = args.server.trim_end_matches('/').to_owned();
        let (authority, https) = match (
            server.strip_prefix("http://"),
            server.strip_prefix("https://"),
        ) {
            (Some(a), _) => (a.to_owned(), false),
            (_, Some(a)) => (a.to_owned(), true),
            _ => {
                return Err(format!(
                    "--server {server:?}: expected http://HOST:PORT or https://HOST:PORT"
                ))
            }
        };
        if authority.is_empty() || authority.contains('/') {
            return Err(format!("--server {server:?}: expected http(s)://HOST:PORT"));
        }
        let tls = if https {
            let pinned = args
                .ca_fingerprint
                .clone()
                .or_else(|| stored_trust().remove(&server));
            let config = match (&args.ca_file, pinned) {
                (Some(file), _) => {
                    let pem = std::fs::read_to_string(file)
                        .map_err(|e| format!("{}: {e}", file.display()))?;
                    crate::pki::client_trusting(&pem)
                        .map_err(|e| format!("{}: {e}", file.display()))?
                }
                (None, Some(fingerprints)) => {
                    let hex = parse_fingerprints(&fingerprints)
                        .map_err(|e| format!("--ca-fingerprint: {e}"))?;
                    crate::pki::pinned_client_config(&hex).map_err(|e| e.to_string())?
                }
                (None, None) => {
                    return Err(format!(
                        "--server {server}: an https admin API needs --ca-file (the cluster CA, \
                     DATA_DIR/tls/ca.pem) or --ca-fingerprint (SHA256:…, on the node's console \
                     and in keel status)"
                    ))
                }
            };
            let host = match authority.rsplit_once(':') {
                Some((h, _)) => h.trim_start_matches('[').trim_end_matches(']').to_owned(),
                None => authority.clone(),
            };
            Some((config, host))
        } else {
            None
        };
        Ok(Api {
            token: token_for(&server),
            server,
            authority,
            tls,
            manager: "cli".to_owned(),
        })
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<(&str, Vec<u8>)>,
    ) -> Result<Value> {
        Ok(json_or_text(&self.call_raw(method, path, body).await?))
    }

    /// The body of a successful answer, as it came.
    async fn call_raw(
        &self,
        method: Method,
        path: &str,
        body: Option<(&str, Vec<u8>)>,
    ) -> Result<Bytes> {
        let fut = self.call_inner(method, path, body);
        tokio::time::timeout(Duration::from_secs(30), fut)
            .await
            .map_err(|_| format!("{} did not answer within 30 s", self.server))?
    }

    async fn call_inner(
        &self,
        method: Method,
        path: &str,
        body: Option<(&str, Vec<u8>)>,
    ) -> Result<Bytes> {
        let tcp = tokio::net::TcpStream::connect(&self.authority)
            .await
            .map_err(|e| format!("cannot reach {}: {e}", self.server))?;
        let mut request = http::Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, &self.authority);
        if let Some(token) = &self.token {
            request = request.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        request = request.header("keel-manager", &self.manager);
        let (content_type, bytes) = body.unwrap_or(("application/json", Vec::new()));
        let request = request
            .header(http::header::CONTENT_TYPE, content_type)
            .body(Full::new(Bytes::from(bytes)))
            .map_err(|e| e.to_string())?;
        let (status, body) = match &self.tls {
            Some((config, host)) => {
                let name = rustls::pki_types::ServerName::try_from(host.clone())
                    .map_err(|e| format!("--server {}: {e}", self.server))?;
                let stream = tokio_rustls::TlsConnector::from(config.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(|e| format!("TLS with {} failed: {e}", self.server))?;
                self.exchange(stream, request).await?
            }
            None => self.exchange(tcp, request).await?,
        };
        if status.is_success() {
            return Ok(body);
        }
        let value = json_or_text(&body);
        let message = value["error"]["message"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| format!("{status}"));
        if status == StatusCode::UNAUTHORIZED && self.token.is_none() {
            return Err(format!(
                "{message} (log in first: keel login --server {})",
                self.server
            ));
        }
        Err(message)
    }

    async fn exchange<S>(
        &self,
        stream: S,
        request: http::Request<Full<Bytes>>,
    ) -> Result<(StatusCode, Bytes)>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("cannot talk to {}: {e}", self.server))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("request to {} failed: {e}", self.server))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("reading the answer from {} failed: {e}", self.server))?
            .to_bytes();
        Ok((status, body))
    }

    pub(crate) async fn get(&self, path: &str) -> Result<Value> {
        self.call(Method::GET, path, None).await
    }

    pub(crate) async fn send(&self, method: Method, path: &str, body: &Value) -> Result<Value> {
        let bytes = serde_json::to_vec(body).map_err(|e| e.to_string())?;
        self.call(method, path, Some(("application/json", bytes)))
            .await
    }
}

/// An answer's body as JSON, or as a string when it is not JSON.
fn json_or_text(body: &[u8]) -> Value {
    if body.is_empty() {
        return Value::Null;
    }
    serde_json::from_slice(body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()))
}

fn print(output: Output, value: &Value, text: impl FnOnce(&Value) -> String) {
    match output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_default()
        ),
        Output::Yaml => print!("{}", serde_yaml_ng::to_string(value).unwrap_or_default()),
        Output::Text => print!("{}", text(value)),
    }
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

async fn login(a: LoginArgs) -> Result<()> {
    let mut api = Api::new(&a.client.connect)?;
    api.token = None;
    let mut password = String::new();
    if a.password_stdin {
        std::io::stdin()
            .read_to_string(&mut password)
            .map_err(|e| format!("cannot read the password from stdin: {e}"))?;
    } else {
        eprint!("password for {}: ", a.user);
        password = read_password()?;
    }
    let password = password.trim_end_matches(['\n', '\r']);
    let answer = api
        .send(
            Method::POST,
            "/api/v1/login",
            &json!({"user": a.user, "password": password}),
        )
        .await?;
    let token = answer["token"]
        .as_str()
        .ok_or("the server did not return a token")?;
    let path = credentials_path().ok_or("no home directory to store the token in")?;
    let mut tokens = stored_tokens();
    tokens.insert(api.server.clone(), token.to_owned());
    write_credentials(&path, &tokens)?;
    if let (Some(fingerprints), None) =
        (&a.client.connect.ca_fingerprint, &a.client.connect.ca_file)
    {
        pin(&api.server, &parse_fingerprints(fingerprints)?)?;
    }
    println!("logged in to {} as {}", api.server, a.user);
    if answer["must_change_password"].as_bool() == Some(true) {
        println!(
            "the password is the generated one: change it (POST /api/v1/users/{}/password)",
            a.user
        );
    }
    Ok(())
}

/// One line from the terminal with echo off (restored afterwards), or a
/// plain line when stdin is not a terminal.
fn read_password() -> Result<String> {
    use nix::sys::termios::{tcgetattr, tcsetattr, LocalFlags, SetArg};
    let stdin = std::io::stdin();
    let saved = tcgetattr(&stdin).ok();
    if let Some(saved) = &saved {
        let mut quiet = saved.clone();
        quiet.local_flags.remove(LocalFlags::ECHO);
        quiet.local_flags.insert(LocalFlags::ECHONL);
        let _ = tcsetattr(&stdin, SetArg::TCSANOW, &quiet);
    }
    let mut line = String::new();
    let read = stdin.read_line(&mut line);
    if let Some(saved) = &saved {
        let _ = tcsetattr(&stdin, SetArg::TCSANOW, saved);
    }
    read.map_err(|e| format!("cannot read the password: {e}"))?;
    Ok(line)
}

fn write_credentials(path: &PathBuf, tokens: &BTreeMap<String, String>) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let text = serde_json::to_string_pretty(tokens).map_err(|e| e.to_string())?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    f.write_all(text.as_bytes())
        .map_err(|e| format!("{}: {e}", path.display()))
}

async fn apply(a: ApplyArgs) -> Result<()> {
    let mut api = Api::new(&a.client.connect)?;
    keel_model::check_manager(&a.manager).map_err(|e| format!("--manager: {e}"))?;
    api.manager.clone_from(&a.manager);
    let text =
        std::fs::read_to_string(&a.file).map_err(|e| format!("{}: {e}", a.file.display()))?;
    // Check locally first, so problems are listed without a round trip.
    if let Err(e) = keel_model::Document::parse_spec(&text) {
        return Err(format!("{}: {e}", a.file.display()));
    }
    // A PATCH applies the file as its manager; a PUT replaces everything.
    let (method, path) = if a.replace {
        (Method::PUT, format!("/api/v1/config?dry_run={}", a.diff))
    } else {
        let query = format!("prune={}&force={}&dry_run={}", a.prune, a.force, a.diff);
        (Method::PATCH, format!("/api/v1/config?{query}"))
    };
    let answer = api
        .call(method, &path, Some(("application/yaml", text.into_bytes())))
        .await?;
    print(a.client.output, &answer, |v| {
        let list = |k: &str| v[k].as_array().cloned().unwrap_or_default();
        let mut out = String::new();
        for o in list("objects") {
            out.push_str(&format!("{}\n", s(&o)));
        }
        for c in list("conflicts") {
            out.push_str(&format!("conflict: {} (--force takes it over)\n", s(&c)));
        }
        if a.diff {
            if list("objects").is_empty() {
                out.push_str("no changes\n");
            }
        } else if list("changes").is_empty() {
            out.push_str(&format!("unchanged (version {})\n", s(&v["version"])));
        } else {
            out.push_str(&format!("applied as version {}\n", s(&v["version"])));
        }
        out
    });
    Ok(())
}

/// One member's own URL, changed by `method` with `body`.
async fn change_member(
    m: &MemberArgs,
    method: Method,
    body: Option<&Value>,
    done: &str,
) -> Result<()> {
    let api = Api::new(&m.client.connect)?;
    let path = format!(
        "/api/v1/pools/{}/members/{}",
        path_segment(&m.pool),
        path_segment(&m.address)
    );
    match body {
        Some(body) => api.send(method, &path, body).await?,
        None => api.call(method, &path, None).await?,
    };
    println!("{done}");
    Ok(())
}

/// `text` as one URL path segment (an IPv6 member's brackets encoded).
fn path_segment(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b':' => {
                char::from(b).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

fn kind_path(kind: &str) -> Result<&'static str> {
    Ok(match kind {
        "load-balancers" | "load-balancer" | "lb" | "lbs" => "/api/v1/load-balancers",
        "pools" | "pool" => "/api/v1/pools",
        "nodes" | "node" => "/api/v1/nodes",
        "tokens" | "token" => "/api/v1/tokens",
        "api-tokens" | "api-token" => "/api/v1/api-tokens",
        "users" | "user" => "/api/v1/users",
        "registration-tokens" | "registration-token" => "/api/v1/registration-tokens",
        "aws-keys" | "aws-key" => "/api/v1/aws-keys",
        "instances" | "instance" => "/api/v1/instances",
        "config" => "/api/v1/config",
        other => {
            return Err(format!(
                "unknown kind {other:?}: use load-balancers, pools, nodes, tokens, api-tokens, users, registration-tokens, aws-keys, instances or config"
            ))
        }
    })
}

/// `  load_balancers=a,b  pools=c` for a scoped token; empty otherwise.
fn scope_text(item: &Value) -> String {
    ["load_balancers", "pools"]
        .iter()
        .filter_map(|k| {
            let names: Vec<String> = item[*k].as_array()?.iter().map(s).collect();
            Some(format!("  {k}={}", names.join(",")))
        })
        .collect()
}

async fn get(a: GetArgs) -> Result<()> {
    let api = Api::new(&a.client.connect)?;
    let base = kind_path(&a.kind)?;
    let path = match &a.name {
        Some(n) if base.ends_with("load-balancers") || base.ends_with("pools") => {
            format!("{base}/{n}")
        }
        Some(_) => return Err(format!("{} cannot be fetched by name", a.kind)),
        None => base.to_owned(),
    };
    let value = api.get(&path).await?;
    // Who manages what (an older server has no such page: none shown).
    let managers = match base {
        "/api/v1/load-balancers" | "/api/v1/pools" => {
            api.get("/api/v1/managers").await.unwrap_or_default()
        }
        _ => Value::Null,
    };
    let manager = |key: String| s(&managers[key]);
    // What other managers set in an object (its fields, a load balancer's
    // rules): ` algorithm:api rule/8080/20:elbv2`.
    let others = |key: &str, own: &str| -> String {
        let rules = key
            .strip_prefix("load-balancer/")
            .map(|lb| format!("rule/{lb}/"));
        managers
            .as_object()
            .into_iter()
            .flatten()
            .filter_map(|(k, m)| {
                let field = k.strip_prefix(key).and_then(|f| f.strip_prefix('#'));
                let rule = rules
                    .as_deref()
                    .and_then(|r| k.strip_prefix(r))
                    .map(|r| format!("rule/{r}"))
                    .filter(|_| s(m) != own);
                Some(format!(" {}:{}", field.map(str::to_owned).or(rule)?, s(m)))
            })
            .collect()
    };
    let output = match (a.client.output, base) {
        (Output::Text, "/api/v1/config") => Output::Yaml,
        (o, _) => o,
    };
    print(output, &value, |v| {
        let items = match v {
            Value::Array(items) => items.clone(),
            one => vec![one.clone()],
        };
        let mut out = String::new();
        for item in items {
            let line = match base {
                "/api/v1/load-balancers" => {
                    let listeners: Vec<String> = item["listeners"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|l| {
                            format!(
                                "{}/{}→{}",
                                s(&l["port"]),
                                s(&l["protocol"]),
                                s(&l["default_pool"])
                            )
                        })
                        .collect();
                    let key = format!("load-balancer/{}", s(&item["name"]));
                    let own = manager(key.clone());
                    format!(
                        "{}  vip={}  {}  manager={own}{}",
                        s(&item["name"]),
                        s(&item["vip"]),
                        listeners.join(" "),
                        others(&key, &own)
                    )
                }
                "/api/v1/pools" => {
                    let name = s(&item["name"]);
                    let own = manager(format!("pool/{name}"));
                    // A member another manager set says whose it is.
                    let members: Vec<String> = item["members"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|m| {
                            let address = s(&m["address"]);
                            match manager(format!("member/{name}/{address}")) {
                                by if by == own => address,
                                by => format!("{address}({by})"),
                            }
                        })
                        .collect();
                    format!(
                        "{name}  {}  {}  manager={own}{}",
                        s(&item["algorithm"]),
                        members.join(" "),
                        others(&format!("pool/{name}"), &own)
                    )
                }
                "/api/v1/nodes" => format!(
                    "{}  {}  {}  applied={} serving={} ready={}",
                    s(&item["name"]),
                    s(&item["role"]),
                    s(&item["cluster_addr"]),
                    s(&item["applied_version"]),
                    s(&item["serving_version"]),
                    s(&item["ready"])
                ),
                "/api/v1/tokens" => format!(
                    "{}  uses_left={}  expires_at={}{}{}",
                    s(&item["id"]),
                    s(&item["uses_left"]),
                    s(&item["expires_at"]),
                    if item["revoked"] == true {
                        "  revoked"
                    } else {
                        ""
                    },
                    if item["expired"] == true {
                        "  expired"
                    } else {
                        ""
                    },
                ),
                "/api/v1/instances" => format!("{}  {}", s(&item["id"]), s(&item["address"])),
                "/api/v1/aws-keys" => format!(
                    "{}  {}  user={}",
                    s(&item["access_key_id"]),
                    s(&item["name"]),
                    s(&item["user"])
                ),
                "/api/v1/registration-tokens" => format!(
                    "{}  {}  pool={}  expires_at={}  sources={}  members={}",
                    s(&item["id"]),
                    s(&item["name"]),
                    s(&item["pool"]),
                    s(&item["expires_at"]),
                    item["sources"],
                    item["members"]
                ),
                "/api/v1/api-tokens" => format!(
                    "{}  {}  user={}  expires_at={}{}{}",
                    s(&item["id"]),
                    s(&item["name"]),
                    s(&item["user"]),
                    s(&item["expires_at"]),
                    item["role"]
                        .as_str()
                        .map(|r| format!("  role={r}"))
                        .unwrap_or_default(),
                    scope_text(&item),
                ),
                "/api/v1/users" => format!(
                    "{}  {}{}",
                    s(&item["name"]),
                    s(&item["role"]),
                    if item["must_change_password"] == true {
                        "  must-change-password"
                    } else {
                        ""
                    }
                ),
                _ => item.to_string(),
            };
            out.push_str(&line);
            out.push('\n');
        }
        out
    });
    Ok(())
}

async fn delete(a: DeleteArgs) -> Result<()> {
    let base = kind_path(&a.kind)?;
    if !(base.ends_with("load-balancers") || base.ends_with("pools")) {
        return Err(format!("{} cannot be deleted this way", a.kind));
    }
    let path = format!("{base}/{}", a.name);
    remove(&a.client, &path, &format!("deleted {} {}", a.kind, a.name)).await
}

async fn status(c: ClientArgs) -> Result<()> {
    let api = Api::new(&c.connect)?;
    let value = api.get("/api/v1/status").await?;
    // The last backup and the last restore or recovery, from the history.
    let events = api.get("/api/v1/events").await.unwrap_or_default();
    let last = |kinds: &[&str]| {
        events
            .as_array()
            .into_iter()
            .flatten()
            .rfind(|e| kinds.iter().any(|k| e["kind"] == *k))
            .map(|e| {
                let message = s(&e["message"]);
                let kind = format!("{}: ", s(&e["kind"]));
                let at = std::time::UNIX_EPOCH
                    + std::time::Duration::from_secs(e["at"].as_u64().unwrap_or(0));
                format!(
                    "{} ({}, by {})",
                    message.strip_prefix(&kind).unwrap_or(&message),
                    humantime::format_rfc3339_seconds(at),
                    s(&e["by"])
                )
            })
    };
    let operations = format!(
        "last backup: {}\nlast restore or recovery: {}\n",
        last(&["backup"]).unwrap_or_else(|| "none".into()),
        last(&["restore", "recovery"]).unwrap_or_else(|| "none".into()),
    );
    print(c.output, &value, |v| {
        let mut out = format!(
            "leader: {}  term: {}  version: {}  cluster version: {}  CA fingerprint: {}\n",
            s(&v["leader"]),
            s(&v["term"]),
            s(&v["applied_version"]),
            s(&v["cluster_version"]),
            s(&v["ca_fingerprint"])
        );
        let timing = |t: &Value| serde_json::from_value::<keel_model::Timing>(t.clone()).ok();
        let cluster_timing = timing(&v["timing"]);
        if let Some(t) = cluster_timing {
            out.push_str(&format!("timing: {t}\n"));
        }
        for n in v["nodes"].as_array().into_iter().flatten() {
            // A node still running another timing runs the cluster's from
            // its next start.
            let restart = match (timing(&n["timing"]), cluster_timing) {
                (Some(runs), Some(cluster)) if runs != cluster => {
                    format!("  RESTART TO APPLY TIMING (runs {runs})")
                }
                _ => String::new(),
            };
            out.push_str(&format!(
                "  {:<16} {:<9} {:<22} {:<9} applied={} serving={} ready={} keel={} runs={}{}{}{}\n",
                s(&n["name"]),
                s(&n["role"]),
                s(&n["cluster_addr"]),
                if n["reachable"] == true {
                    "reachable"
                } else {
                    "UNREACHABLE"
                },
                s(&n["applied_version"]),
                s(&n["serving_version"]),
                s(&n["ready"]),
                s(&n["keel_version"]),
                s(&n["cluster_version"]),
                match n["vips"].as_array() {
                    Some(v) if !v.is_empty() =>
                        format!("  vips={}", v.iter().map(s).collect::<Vec<_>>().join(",")),
                    _ => String::new(),
                },
                if n["drained"] == true {
                    "  DRAINED"
                } else {
                    ""
                },
                restart,
            ));
        }
        out.push_str(&operations);
        out
    });
    Ok(())
}

/// `keel backup -o FILE`: the sealed state, written 0600 to a new file.
async fn backup(b: BackupArgs) -> Result<()> {
    let passphrase = match (&b.passphrase_file, std::env::var("KEEL_BACKUP_PASSPHRASE")) {
        (None, Err(_)) => {
            eprint!("backup passphrase (at least 12 characters): ");
            read_password()?
        }
        (file, _) => crate::backup_passphrase(file.as_deref())?,
    };
    let api = Api::new(&b.connect)?;
    let body =
        serde_json::to_vec(&json!({ "passphrase": passphrase })).map_err(|e| e.to_string())?;
    let sealed = api
        .call_raw(
            Method::POST,
            "/api/v1/backup",
            Some(("application/json", body)),
        )
        .await?;
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&b.file)
        .map_err(|e| format!("{}: {e}", b.file.display()))?;
    file.write_all(&sealed)
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("{}: {e}", b.file.display()))?;
    println!(
        "backup written to {} ({} bytes); restore with: keel run --restore {} (passphrase in KEEL_BACKUP_PASSPHRASE)",
        b.file.display(),
        sealed.len(),
        b.file.display()
    );
    Ok(())
}

/// `keel <kind> list`: the same as `keel get <kind>`.
async fn list(client: ClientArgs, kind: &str) -> Result<()> {
    get(GetArgs {
        client,
        kind: kind.into(),
        name: None,
    })
    .await
}

/// DELETE `path` and say `done` on success.
async fn remove(client: &ClientArgs, path: &str, done: &str) -> Result<()> {
    Api::new(&client.connect)?
        .call(Method::DELETE, path, None)
        .await?;
    println!("{done}");
    Ok(())
}

/// What one kind of credential takes and how its new secret shows.
trait Credential: clap::Args {
    /// Its API collection under `/api/v1`.
    const PATH: &'static str;
    /// What it is called in messages.
    const NAME: &'static str;
    fn client(&self) -> &ClientArgs;
    /// The create request's body.
    fn body(&self) -> Value;
    /// The create answer as a person reads it.
    fn shown(answer: &Value) -> String {
        format!("{}\n", s(&answer["token"]))
    }
}

impl Credential for JoinTokenArgs {
    const PATH: &'static str = "tokens";
    const NAME: &'static str = "join token";
    fn client(&self) -> &ClientArgs {
        &self.client
    }
    fn body(&self) -> Value {
        json!({"ttl": self.ttl, "uses": self.uses})
    }
}

impl Credential for ApiTokenArgs {
    const PATH: &'static str = "api-tokens";
    const NAME: &'static str = "api token";
    fn client(&self) -> &ClientArgs {
        &self.client
    }
    fn body(&self) -> Value {
        json!({"name": self.name, "ttl": self.ttl, "user": self.user, "role": self.role,
               "load_balancers": self.load_balancers, "pools": self.pools})
    }
}

impl Credential for RegistrationTokenArgs {
    const PATH: &'static str = "registration-tokens";
    const NAME: &'static str = "registration token";
    fn client(&self) -> &ClientArgs {
        &self.client
    }
    fn body(&self) -> Value {
        json!({"name": self.name, "pool": self.pool, "ttl": self.ttl,
               "sources": self.sources, "members": self.members})
    }
}

impl Credential for AwsKeyArgs {
    const PATH: &'static str = "aws-keys";
    const NAME: &'static str = "aws access key";
    fn client(&self) -> &ClientArgs {
        &self.client
    }
    fn body(&self) -> Value {
        json!({"name": self.name})
    }
    fn shown(answer: &Value) -> String {
        format!(
            "access_key_id     {}\nsecret_access_key {}\n",
            s(&answer["access_key_id"]),
            s(&answer["secret_access_key"])
        )
    }
}

async fn credential<K: Credential>(command: CredentialCommand<K>) -> Result<()> {
    match command {
        CredentialCommand::Create(args) => {
            let api = Api::new(&args.client().connect)?;
            let path = format!("/api/v1/{}", K::PATH);
            let v = api.send(Method::POST, &path, &args.body()).await?;
            print(args.client().output, &v, K::shown);
            Ok(())
        }
        CredentialCommand::List(client) => list(client, K::PATH).await,
        CredentialCommand::Revoke { client, id } => {
            remove(
                &client,
                &format!("/api/v1/{}/{id}", K::PATH),
                &format!("revoked {} {id}", K::NAME),
            )
            .await
        }
    }
}

async fn user(command: UserCommand) -> Result<()> {
    match command {
        UserCommand::List(client) => list(client, "users").await,
        UserCommand::Add {
            client,
            name,
            role,
            password_stdin,
        } => {
            let api = Api::new(&client.connect)?;
            let password = ask(password_stdin, &format!("first password for {name}: "))?;
            api.send(
                Method::POST,
                "/api/v1/users",
                &json!({"name": name, "role": role, "password": password}),
            )
            .await?;
            println!(
                "added user {name} ({role}); they must change the password at their first login"
            );
            Ok(())
        }
        UserCommand::Role { client, name, role } => {
            let api = Api::new(&client.connect)?;
            api.send(
                Method::PATCH,
                &format!("/api/v1/users/{name}"),
                &json!({"role": role}),
            )
            .await?;
            println!("user {name} is now {role}");
            Ok(())
        }
        UserCommand::Delete { client, name } => {
            remove(
                &client,
                &format!("/api/v1/users/{name}"),
                &format!("deleted user {name}"),
            )
            .await
        }
        UserCommand::Passwd {
            client,
            user,
            password_stdin,
        } => {
            let api = Api::new(&client.connect)?;
            let (name, body) = match user {
                Some(name) => {
                    let password = ask(password_stdin, &format!("new password for {name}: "))?;
                    (name, json!({"password": password}))
                }
                None => {
                    let me = api.get("/api/v1/session").await?;
                    let name = s(&me["user"]);
                    let (current, password) = if password_stdin {
                        let mut text = String::new();
                        std::io::stdin()
                            .read_to_string(&mut text)
                            .map_err(|e| format!("cannot read standard input: {e}"))?;
                        let mut lines = text.lines();
                        let current = lines.next().unwrap_or_default().to_owned();
                        (current, lines.next().unwrap_or_default().to_owned())
                    } else {
                        (
                            ask(false, &format!("current password for {name}: "))?,
                            ask(false, &format!("new password for {name}: "))?,
                        )
                    };
                    (
                        name,
                        json!({"password": password, "current_password": current}),
                    )
                }
            };
            api.send(
                Method::POST,
                &format!("/api/v1/users/{name}/password"),
                &body,
            )
            .await?;
            println!("changed the password of {name}; their other sessions are logged out");
            Ok(())
        }
    }
}

/// A password from standard input (`stdin`) or asked for on the terminal.
fn ask(stdin: bool, prompt: &str) -> Result<String> {
    let mut password = String::new();
    if stdin {
        std::io::stdin()
            .read_to_string(&mut password)
            .map_err(|e| format!("cannot read the password from stdin: {e}"))?;
    } else {
        eprint!("{prompt}");
        password = read_password()?;
    }
    Ok(password.trim_end_matches(['\n', '\r']).to_owned())
}

async fn instance(command: InstanceCommand) -> Result<()> {
    match command {
        InstanceCommand::Add {
            client,
            id,
            address,
        } => {
            let api = Api::new(&client.connect)?;
            let v = api
                .send(
                    Method::PUT,
                    &format!("/api/v1/instances/{id}"),
                    &json!({ "address": address }),
                )
                .await?;
            print(client.output, &v, |v| {
                format!("instance {} is {}\n", s(&v["id"]), s(&v["address"]))
            });
            Ok(())
        }
        InstanceCommand::List(client) => list(client, "instances").await,
        InstanceCommand::Remove { client, id } => {
            remove(
                &client,
                &format!("/api/v1/instances/{id}"),
                &format!("removed instance {id}"),
            )
            .await
        }
    }
}

async fn member(command: MemberCommand) -> Result<()> {
    let (reg, path, body, done) = match command {
        MemberCommand::Add { member, weight } => {
            let body = json!({ "weight": weight });
            let done = format!("added {} to pool {}", member.address, member.pool);
            return change_member(&member, Method::PUT, Some(&body), &done).await;
        }
        MemberCommand::Remove { member } => {
            let done = format!(
                "removed {} from pool {} (it drains)",
                member.address, member.pool
            );
            return change_member(&member, Method::DELETE, None, &done).await;
        }
        MemberCommand::Drain { member } => {
            let body = json!({ "enabled": false });
            let done = format!("draining {} in pool {}", member.address, member.pool);
            return change_member(&member, Method::PATCH, Some(&body), &done).await;
        }
        MemberCommand::Enable { member } => {
            let body = json!({ "enabled": true });
            let done = format!("enabled {} in pool {}", member.address, member.pool);
            return change_member(&member, Method::PATCH, Some(&body), &done).await;
        }
        MemberCommand::Register {
            registration,
            weight,
        } => {
            let body = json!({"pool": registration.pool, "address": registration.address, "weight": weight});
            let done = format!(
                "registered {} in pool {}",
                registration.address, registration.pool
            );
            (registration, "/api/v1/register", body, done)
        }
        MemberCommand::Deregister { registration } => {
            let body = json!({"pool": registration.pool, "address": registration.address});
            let done = format!(
                "deregistered {} from pool {} (it drains)",
                registration.address, registration.pool
            );
            (registration, "/api/v1/deregister", body, done)
        }
    };
    let mut api = Api::new(&reg.client.connect)?;
    api.token = Some(reg.token.clone());
    api.send(Method::POST, path, &body).await?;
    println!("{done}");
    Ok(())
}

async fn secrets(command: SecretsCommand) -> Result<()> {
    match command {
        SecretsCommand::Rotate(client) => {
            Api::new(&client.connect)?
                .call(Method::POST, "/api/v1/cluster/secret/rotate", None)
                .await?;
            println!(
                "rotated the cluster secret: gossip is sealed with the new key on every node \
                 that applied the change, and the old key is still opened for 10 s"
            );
            Ok(())
        }
    }
}

async fn ca(command: CaCommand) -> Result<()> {
    match command {
        CaCommand::Show { client, pem } => {
            let status = Api::new(&client.connect)?.get("/api/v1/cluster/ca").await?;
            if pem {
                print!("{}", status["bundle_pem"].as_str().unwrap_or_default());
            } else {
                print(client.output, &status, ca_text);
            }
            Ok(())
        }
        CaCommand::Rotate {
            client,
            step,
            abandon,
            timeout,
        } => rotate_ca(&client.connect, step, abandon, timeout).await,
    }
}

fn ca_text(status: &Value) -> String {
    let list = |v: &Value, width: usize| {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(|f| f.chars().take(width).collect::<String>())
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default()
    };
    let short = |v: &Value| match v {
        Value::Null => "-".to_owned(),
        v => list(&Value::Array(vec![v.clone()]), 19),
    };
    let mut out = format!(
        "signing:  {}\ntrusted:  {}\nrotation: {}\nnext:     {}\n",
        s(&status["signing"]),
        list(&status["trusted"], 80),
        s(&status["stage"]),
        s(&status["next"])
    );
    for why in status["waiting_for"].as_array().into_iter().flatten() {
        out += &format!("waiting:  {}\n", why.as_str().unwrap_or_default());
    }
    for m in status["members"].as_array().into_iter().flatten() {
        let role = if m["voter"].as_bool() == Some(true) {
            "voter"
        } else {
            "learner"
        };
        out += &format!("{:<12} {role:<8}", s(&m["name"]));
        if let Some(why) = m["error"].as_str() {
            out += &format!("does not answer: {why}\n");
            continue;
        }
        out += &format!(
            "trusts {}; node certificate from {}; admin certificate from {}; keys {}\n",
            list(&m["trusts"], 19),
            short(&m["node_certificate_ca"]),
            short(&m["admin_certificate_ca"]),
            list(&m["keys"], 19)
        );
    }
    out
}

/// `keel ca rotate`: each step through the API, waiting for the members
/// between steps. The CAs this CLI trusts follow the rotation: the bundle
/// is read over TLS this CLI already trusts, and pinned by fingerprint for
/// the next call; where the trust was pinned by `keel login`, the new pin
/// is kept.
async fn rotate_ca(connect: &Connect, step: bool, abandon: bool, timeout: Duration) -> Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    let https = connect.server.starts_with("https://");
    let stored_pin = connect.ca_file.is_none() && connect.ca_fingerprint.is_none();
    let mut connect = connect.clone();
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect()
    };
    // Trust what the cluster trusts, as read over TLS this CLI trusts.
    let follow = |status: &Value, connect: &mut Connect| -> Result<()> {
        if !https {
            return Ok(());
        }
        let pins: Vec<String> = strings(&status["trusted"])
            .iter()
            .map(|f| f.trim_start_matches("SHA256:").to_owned())
            .collect();
        connect.ca_file = None;
        connect.ca_fingerprint = Some(pins.join(","));
        if stored_pin {
            pin(connect.server.trim_end_matches('/'), &pins)?;
        }
        Ok(())
    };
    let mut status = Api::new(&connect)?.get("/api/v1/cluster/ca").await?;
    follow(&status, &mut connect)?;
    if abandon {
        status = Api::new(&connect)?
            .call(Method::POST, "/api/v1/cluster/ca/rotate?abandon=true", None)
            .await?;
        follow(&status, &mut connect)?;
        println!(
            "abandoned the rotation: trusted: {}",
            strings(&status["trusted"]).join(", ")
        );
        return Ok(());
    }
    let mut steps = 0;
    let mut said = String::new();
    loop {
        let stage = status["stage"].as_str().unwrap_or_default().to_owned();
        if steps > 0 && (step || stage == "none") {
            break;
        }
        let waiting = strings(&status["waiting_for"]).join("; ");
        if stage != "none" && !waiting.is_empty() {
            if waiting != said {
                println!("waiting: {waiting}");
                said = waiting;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(format!(
                    "gave up after {}: the rotation stays at {stage} (run keel ca rotate again \
                     to go on, or keel ca rotate --abandon before it signs)",
                    humantime::format_duration(timeout)
                ));
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            status = Api::new(&connect)?.get("/api/v1/cluster/ca").await?;
            continue;
        }
        let next = status["next"].as_str().unwrap_or_default().to_owned();
        status = Api::new(&connect)?
            .call(Method::POST, "/api/v1/cluster/ca/rotate", None)
            .await?;
        steps += 1;
        println!(
            "{next}: now {} (trusted: {})",
            status["stage"].as_str().unwrap_or_default(),
            strings(&status["trusted"]).join(", ")
        );
        follow(&status, &mut connect)?;
    }
    if https && !stored_pin {
        println!(
            "this CLI was given its trust (--ca-file or --ca-fingerprint): trust {} from now \
             on (keel ca show --pem writes the CA file)",
            strings(&status["trusted"]).join(" and ")
        );
    }
    if status["stage"] != "trusting" {
        println!(
            "join tokens made before the new CA signed pin the old one: make new ones \
             (keel token create)"
        );
    }
    Ok(())
}

async fn timing(command: TimingCommand) -> Result<()> {
    match command {
        TimingCommand::Set { client, timing } => {
            let timing = timing.settings()?.timing();
            Api::new(&client.connect)?
                .send(Method::PUT, "/api/v1/cluster/timing", &json!(timing))
                .await?;
            println!(
                "cluster timing set to {timing}: each node runs it from its next start \
                 (keel status names the nodes still to restart)"
            );
            Ok(())
        }
    }
}

async fn node(command: NodeCommand) -> Result<()> {
    match command {
        NodeCommand::List(client) => list(client, "nodes").await,
        NodeCommand::Remove { client, name } => {
            remove(
                &client,
                &format!("/api/v1/nodes/{name}"),
                &format!("removed node {name}"),
            )
            .await
        }
        NodeCommand::Drain { client, name } => {
            Api::new(&client.connect)?
                .call(Method::POST, &format!("/api/v1/nodes/{name}/drain"), None)
                .await?;
            println!("drained node {name}: it holds no VIP and does not lead until undrained");
            Ok(())
        }
        NodeCommand::Undrain { client, name } => {
            Api::new(&client.connect)?
                .call(Method::POST, &format!("/api/v1/nodes/{name}/undrain"), None)
                .await?;
            println!("undrained node {name}");
            Ok(())
        }
    }
}
