//! The Keel node: configuration, the config source, the admin endpoints and
//! the wiring between them and the data plane.
//!
//! `main` parses arguments and calls [`run`]; everything here can also be
//! started in-process by tests.

pub mod admin;
pub mod appliance;
mod ca;
pub mod cli;
pub mod client;
pub mod cluster;
pub mod demo;
mod drain;
pub mod events;
mod gossip;
pub mod guard;
mod metrics;
mod notify;
pub mod pki;
mod reconcile;
pub mod recover;
mod secrets;
mod source;
mod timing;
pub mod traffic;
mod upgrade;
pub mod vip;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use keel_dataplane::Dataplane;
use keel_model::{Document, ParseError, Spec, CLUSTER_VERSION};
use tokio::sync::watch;

use cli::{LogFormat, RunArgs};

/// A node's validated settings.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub config_file: Option<PathBuf>,
    pub cluster: cluster::ClusterOptions,
    pub shutdown_grace: Duration,
    pub watch_interval: Duration,
    pub leave: bool,
    pub vip_interface: Option<String>,
    pub log_format: LogFormat,
    /// Data plane worker threads (default: one per CPU this process may use).
    pub workers: Option<usize>,
    /// Pin each worker to a CPU of its own (default: when there is one
    /// worker per CPU).
    pub cpu_affinity: Option<bool>,
    /// The AWS-compatible API's address and region, when it is on.
    pub aws_api: Option<(SocketAddr, String)>,
    /// The Octavia-compatible API's address, when it is on.
    pub octavia_api: Option<SocketAddr>,
    /// When those two serve TLS.
    pub compat_tls: cli::CompatTls,
    /// The certificate and key files they present, instead of the admin
    /// API's.
    pub compat_cert: Option<(PathBuf, PathBuf)>,
    /// May those APIs see and change what other managers set?
    pub compat_adopt: bool,
}

impl TryFrom<RunArgs> for NodeConfig {
    type Error = String;

    fn try_from(a: RunArgs) -> Result<Self, String> {
        let settings = a.settings()?;
        let gossip_addr = match a.gossip_addr {
            Some(g) => g,
            None if a.cluster_addr.port() == 0 => free_udp(a.cluster_addr.ip())?,
            None => {
                let port = a.cluster_addr.port().checked_add(1).ok_or(
                    "--gossip-addr: the cluster port is the last one; name a gossip address",
                )?;
                SocketAddr::new(a.cluster_addr.ip(), port)
            }
        };
        let advertise_addr = match a.advertise_addr {
            None if a.cluster_addr.ip().is_unspecified() => Some(SocketAddr::new(
                outbound_ip(a.cluster_addr.ip())?,
                a.cluster_addr.port(),
            )),
            given => given,
        };
        Ok(NodeConfig {
            config_file: a.config,
            cluster: cluster::ClusterOptions {
                data_dir: a.data_dir,
                cluster_addr: a.cluster_addr,
                advertise_addr,
                admin_addr: a.admin_addr,
                node_name: a.node_name,
                join: a.join.zip(a.token),
                settings,
                gossip_addr,
                password_checks: a.max_password_checks.into(),
                cert_validity: a.node_cert_validity,
                max_voters: a.max_voters.into(),
                restore: match &a.restore {
                    Some(file) => Some(Box::new(read_backup(
                        file,
                        a.backup_passphrase_file.as_deref(),
                    )?)),
                    None => None,
                },
            },
            shutdown_grace: a.shutdown_grace,
            watch_interval: a.watch_interval,
            leave: a.leave,
            vip_interface: a.vip_interface,
            log_format: a.log_format,
            workers: a.workers,
            cpu_affinity: a.cpu_affinity,
            aws_api: a.aws_api_addr.map(|addr| (addr, a.aws_region)),
            octavia_api: a.octavia_api_addr,
            compat_tls: a.compat_tls,
            compat_cert: a.compat_tls_cert.zip(a.compat_tls_key),
            compat_adopt: a.compat_adopt,
        })
    }
}

/// Opens the backup `--restore` names, with the passphrase from `file` or
/// KEEL_BACKUP_PASSPHRASE, before anything is written: a wrong passphrase
/// or a damaged file changes nothing.
fn read_backup(
    path: &std::path::Path,
    passphrase_file: Option<&std::path::Path>,
) -> Result<keel_api::backup::Backup, String> {
    let passphrase = backup_passphrase(passphrase_file)?;
    let bytes = std::fs::read(path).map_err(|e| format!("--restore {}: {e}", path.display()))?;
    keel_api::backup::open(&bytes, &passphrase)
        .map_err(|e| format!("--restore {}: {e}", path.display()))
}

/// A backup passphrase: from `file` (trailing newline dropped), else from
/// KEEL_BACKUP_PASSPHRASE.
pub fn backup_passphrase(file: Option<&std::path::Path>) -> Result<String, String> {
    match file {
        Some(f) => std::fs::read_to_string(f)
            .map(|t| t.trim_end_matches(['\n', '\r']).to_owned())
            .map_err(|e| format!("--passphrase-file {}: {e}", f.display())),
        None => std::env::var("KEEL_BACKUP_PASSPHRASE").map_err(|_| {
            "no backup passphrase: set KEEL_BACKUP_PASSPHRASE or pass a passphrase file".to_owned()
        }),
    }
}

/// Serves a compatibility API (`what`: aws, octavia) on `addr` until `stop`.
async fn serve_compat(
    what: &'static str,
    addr: SocketAddr,
    app: axum::Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), NodeError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| NodeError::Io {
            what: format!("{what} api address {addr}"),
            source,
        })?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    if tls.is_none() && !addr.ip().is_loopback() {
        tracing::warn!(%addr, api = what, "compatibility api without TLS off loopback (--compat-tls never): signed requests and passwords cross the network in the clear");
    }
    tracing::info!(url = %format!("{scheme}://{addr}"), api = what, "compatibility api running");
    let shutdown = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    if let Some(tls) = tls {
        tokio::spawn(keel_consensus::rpc::serve(listener, tls, app, shutdown));
        return Ok(());
    }
    tokio::spawn(async move {
        let app = app.into_make_service_with_connect_info::<SocketAddr>();
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(error = %e, api = what, "compatibility api server failed");
        }
    });
    Ok(())
}

/// The TLS the AWS and Octavia endpoints present: the configured
/// certificate, or the admin API's (which then names their addresses too).
async fn compat_tls(
    config: &NodeConfig,
    node: &cluster::ClusterNode,
    control: &cluster::Control,
) -> Result<Arc<rustls::ServerConfig>, NodeError> {
    if let Some((cert, key)) = &config.compat_cert {
        let read = |path: &PathBuf| {
            std::fs::read_to_string(path).map_err(|source| NodeError::Io {
                what: format!("--compat-tls-cert/--compat-tls-key {}", path.display()),
                source,
            })
        };
        return pki::server_config_from(&read(cert)?, &read(key)?).map_err(|e| {
            NodeError::Setting {
                what: format!("--compat-tls-cert {}", cert.display()),
                message: e.to_string(),
            }
        });
    }
    Ok(node
        .admin_tls(control, &config.cluster, &compat_addrs(config))
        .await?)
}

/// The addresses the AWS and Octavia endpoints listen on.
fn compat_addrs(config: &NodeConfig) -> Vec<SocketAddr> {
    config
        .aws_api
        .iter()
        .map(|(addr, _)| *addr)
        .chain(config.octavia_api)
        .collect()
}

/// How long a node shutting down lets connections on its VIPs finish before
/// it releases them (short: the VIP is unreachable meanwhile).
pub(crate) const VIP_QUIESCE: Duration = Duration::from_millis(300);

/// The address this host sends from on its default route: what a node
/// listening on a wildcard address advertises. (Connecting a UDP socket
/// only picks the route; nothing is sent to the documentation address.)
fn outbound_ip(wildcard: std::net::IpAddr) -> Result<std::net::IpAddr, String> {
    let probe: SocketAddr = if wildcard.is_ipv4() {
        ([192, 0, 2, 1], 9).into()
    } else {
        (std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1), 9).into()
    };
    std::net::UdpSocket::bind(SocketAddr::new(wildcard, 0))
        .and_then(|s| s.connect(probe).and_then(|()| s.local_addr()))
        .map(|a| a.ip())
        .map_err(|e| {
            format!(
                "--advertise-addr: the cluster address {wildcard} is a wildcard and there is no \
                 default route to pick this node's address from ({e}); set --advertise-addr"
            )
        })
}

/// A UDP port free on `ip` now, for a gossip address left to the system.
fn free_udp(ip: std::net::IpAddr) -> Result<SocketAddr, String> {
    std::net::UdpSocket::bind(SocketAddr::new(ip, 0))
        .and_then(|s| s.local_addr())
        .map_err(|e| format!("--gossip-addr: no free UDP port on {ip}: {e}"))
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The config file is missing, unreadable or invalid.
    #[error("{path}: {source}")]
    Config { path: PathBuf, source: ConfigError },
    /// The data plane refused the config (a port in use, say).
    #[error(transparent)]
    Apply(#[from] keel_dataplane::ApplyError),
    /// The cluster side could not start (data dir, certificates, joining).
    #[error(transparent)]
    Cluster(#[from] cluster::ClusterError),
    /// A local resource (data dir, admin port) is not usable.
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    /// The cluster runs a newer version than this Keel understands (a
    /// downgrade after every node was upgraded).
    #[error(
        "this node's cluster is at cluster version {cluster}, and this Keel understands up to \
         {CLUSTER_VERSION}: run the newer Keel (a downgrade is possible only before every node \
         was upgraded)"
    )]
    TooOld { cluster: u32 },
    /// A setting names something that cannot be used (a certificate that
    /// does not parse).
    #[error("{what}: {message}")]
    Setting { what: String, message: String },
}

/// Why a config file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read: {0}")]
    Read(#[from] std::io::Error),
    /// The file's contents are malformed or invalid.
    #[error(transparent)]
    Parse(#[from] ParseError),
}

/// Reads and validates a config file.
pub fn load_config(path: &Path) -> Result<Spec, ConfigError> {
    let text = std::fs::read_to_string(path)?;
    Ok(Document::parse_spec(&text)?)
}

/// `keel check FILE`: prints every problem; exit 1 if there are any.
pub fn check_file(path: &Path) -> ExitCode {
    let text = std::fs::read_to_string(path);
    match load_config(path) {
        // Every problem, each with its line in the file where it has one.
        Err(ConfigError::Parse(ParseError::Invalid(errors))) => {
            let n = errors.0.len();
            eprintln!(
                "{}: {n} problem{}",
                path.display(),
                if n == 1 { "" } else { "s" }
            );
            for e in &errors.0 {
                match text
                    .as_deref()
                    .ok()
                    .and_then(|t| keel_model::line_of(t, &e.path))
                {
                    Some(line) => eprintln!("  line {line}: {e}"),
                    None => eprintln!("  {e}"),
                }
            }
            ExitCode::FAILURE
        }
        Ok(spec) => {
            println!(
                "{}: ok ({} load balancers, {} pools)",
                path.display(),
                spec.load_balancers.len(),
                spec.pools.len()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{}: {e}", path.display());
            ExitCode::FAILURE
        }
    }
}

/// Starts `tracing` output to stderr; `RUST_LOG` filters (default `info`,
/// with openraft's own chatter at `warn`). rustls speaks only of errors
/// unless `RUST_LOG` names it: its warnings are about what one client
/// sent (an IP address as a server name, say), once per handshake, and a
/// client could fill the log with them. Keel logs a failed handshake
/// itself, at `debug`.
pub fn init_logging(format: LogFormat) {
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn"));
    let names_rustls = std::env::var("RUST_LOG").is_ok_and(|v| v.contains("rustls"));
    if let (false, Ok(quiet)) = (names_rustls, "rustls=error".parse()) {
        filter = filter.add_directive(quiet);
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Runs a node until SIGTERM or SIGINT.
pub async fn run(config: NodeConfig) -> anyhow::Result<()> {
    let initial = match &config.config_file {
        // The backup's config is the new cluster's first; the file is
        // applied over it only when it changes or on SIGHUP.
        Some(path) if config.cluster.restore.is_some() => {
            tracing::warn!(file = %path.display(), "restoring a backup: the config file is not applied at the start");
            None
        }
        Some(path) => Some(load_config(path).map_err(|source| NodeError::Config {
            path: path.clone(),
            source,
        })?),
        None => None,
    };
    raise_fd_limit();
    let opts = &config.cluster;
    let mut node = cluster::start(opts).await?;
    let cluster_version = node.consensus.applied().borrow().state.version();
    if cluster_version > CLUSTER_VERSION {
        return Err(anyhow::Error::from(NodeError::TooOld {
            cluster: cluster_version,
        }));
    }
    // The data plane's workers, apart from the runtime this runs on: the
    // control plane (Raft, gossip, health checks, the APIs) stays here.
    let count = config
        .workers
        .unwrap_or_else(keel_dataplane::default_workers);
    let pin = config
        .cpu_affinity
        .unwrap_or_else(|| keel_dataplane::pinned_by_default(count));
    let workers = keel_dataplane::Workers::start(count, pin).map_err(|source| NodeError::Io {
        what: format!("starting {count} data plane workers"),
        source,
    })?;
    tracing::info!(workers = count, pinned = pin, "data plane workers started");
    let dataplane = Arc::new(Dataplane::with_workers(workers));
    let control = cluster::Control::new(&node, opts, dataplane.clone())?;
    if let (true, Some(spec)) = (node.bootstrapped, &initial) {
        // A new cluster's first config must be servable here, or the node
        // would start with a config it cannot serve: fail before committing.
        dataplane.apply(spec).await.map_err(NodeError::Apply)?;
    }
    let (stop_tx, stop_rx) = watch::channel(false);

    let cluster_listener = node.bound;
    let listener = node
        .listener
        .take()
        .ok_or_else(|| anyhow::anyhow!("cluster listener already taken"))?;
    let rpc_routes =
        keel_consensus::rpc::raft_routes(node.consensus.clone()).merge(control.routes());
    let mut rpc_stop = stop_rx.clone();
    let rpc_server = tokio::spawn(keel_consensus::rpc::serve(
        listener,
        node.identity.server_config()?,
        rpc_routes,
        async move {
            let _ = rpc_stop.wait_for(|s| *s).await;
        },
    ));
    let healthy_rx = control.healthy.subscribe();
    let reconciler = tokio::spawn(reconcile::run(
        node.consensus.applied(),
        dataplane.clone(),
        control.serving.clone(),
        control.healthy.clone(),
        stop_rx.clone(),
    ));
    let (vip_stop_tx, vip_stop_rx) = watch::channel(false);
    let (drained_tx, drained_rx) = watch::channel(false);
    let drainer = tokio::spawn(drain::run(
        control.clone(),
        dataplane.clone(),
        control.held_vips.subscribe(),
        drained_tx.clone(),
        stop_rx.clone(),
    ));
    let mut guard = None;
    let vips = match keel_vip::Netlink::open() {
        Ok(netlink) => Some(tokio::spawn(vip::run(
            netlink,
            node.consensus.clone(),
            vip::Inputs {
                lease: node.consensus.lease(),
                applied: node.consensus.applied(),
                healthy: healthy_rx,
                drained: drained_rx,
                interface: config.vip_interface.clone(),
            },
            vip::Timing::default(),
            control.vip_metrics.clone(),
            control.held_vips.clone(),
            vip_stop_rx,
        ))),
        Err(e) => {
            tracing::error!(error = %e, "cannot manage VIPs on this host; this node will not hold any");
            None
        }
    };
    if vips.is_some() {
        guard = match guard::Guard::spawn() {
            Ok(g) => Some(tokio::spawn(guard::feed(
                g,
                node.consensus.lease(),
                control.held_vips.subscribe(),
                stop_rx.clone(),
            ))),
            Err(e) => {
                tracing::warn!(error = %e, "no VIP guard: a paused node keeps its VIPs until their kernel lifetime ends");
                None
            }
        };
    }
    let admin_password = admin_password()?;
    let generated = node
        .settle(opts, &control, initial.as_ref(), admin_password)
        .await?;
    let admin_tls = if opts.admin_addr.ip().is_loopback() {
        None
    } else {
        Some(
            node.admin_tls(&control, opts, &compat_addrs(&config))
                .await?,
        )
    };
    let scheme = if admin_tls.is_some() { "https" } else { "http" };
    let admin = admin::serve(
        opts.admin_addr,
        dataplane.clone(),
        Some(
            keel_api::router(
                control.clone(),
                keel_api::Options {
                    tls: admin_tls.is_some(),
                    passwords: control.passwords.clone(),
                },
            )
            .merge(keel_dashboard::router(control.clone())),
        ),
        Some(control.clone()),
        admin_tls,
        stop_rx.clone(),
    )
    .await
    .map_err(|source| NodeError::Io {
        what: format!("admin address {}", opts.admin_addr),
        source,
    })?;
    tracing::info!(
        node = %node.file.name,
        cluster = %node.file.cluster_id,
        cluster_addr = %cluster_listener,
        admin = %format!("{scheme}://{}", opts.admin_addr),
        "keel node running"
    );
    let forget = tokio::spawn(forget_initial_password(
        node.consensus.applied(),
        opts.data_dir.join(cluster::INITIAL_PASSWORD_FILE),
        stop_rx.clone(),
    ));
    if let Some(password) = generated {
        // Kept in a private file until the operator changes it (the
        // appliance's console shows it from there). Shown once on a
        // terminal; never where output is kept (systemd's journal, a log
        // collector), nor in the log.
        use std::io::IsTerminal;
        let file = opts.data_dir.join(cluster::INITIAL_PASSWORD_FILE);
        let shown = if std::io::stdout().is_terminal() {
            password
        } else {
            format!(
                "(not shown: this output is not a terminal; read {})",
                file.display()
            )
        };
        println!(
            "Dashboard: {scheme}://{addr}/ui/  user: admin  password: {shown}\n\
             Admin API: {scheme}://{addr}/api/v1 (keel login --server {scheme}://{addr})\n\
             The password is in {file} (mode 0600) until you change it; the dashboard asks you to.",
            addr = opts.admin_addr,
            file = file.display(),
        );
    }

    let tls_for = |addr: SocketAddr| config.compat_tls.on(addr);
    let compat = if compat_addrs(&config).into_iter().any(tls_for) {
        Some(compat_tls(&config, &node, &control).await?)
    } else {
        None
    };
    if let Some((addr, region)) = &config.aws_api {
        let app = keel_aws::router(control.clone(), region.clone(), config.compat_adopt);
        let tls = compat.clone().filter(|_| tls_for(*addr));
        serve_compat("aws", *addr, app, tls, stop_rx.clone()).await?;
    }
    if let Some(addr) = config.octavia_api {
        let tls = compat.clone().filter(|_| tls_for(addr));
        let app = keel_octavia::router(
            control.clone(),
            control.passwords.clone(),
            tls.is_some(),
            config.compat_adopt,
        );
        serve_compat("octavia", addr, app, tls, stop_rx.clone()).await?;
    }

    let renewal = tokio::spawn(cluster::keep_certificate_fresh(
        control.clone(),
        stop_rx.clone(),
    ));
    let ca_key = tokio::spawn(ca::keep_placed(control.clone(), stop_rx.clone()));
    let upgrades = tokio::spawn(upgrade::run(control.clone(), stop_rx.clone()));
    let retirements = tokio::spawn(cluster::retire_members(control.clone(), stop_rx.clone()));
    let timing = tokio::spawn(timing::run(
        control.clone(),
        opts.data_dir.clone(),
        stop_rx.clone(),
    ));
    let gossip = tokio::spawn(gossip::run(
        control.clone(),
        dataplane.clone(),
        opts.gossip_addr,
        stop_rx.clone(),
    ));
    let traffic = tokio::spawn(traffic::run(
        control.traffic.clone(),
        control.me.name.clone(),
        dataplane.clone(),
        control.gossip.subscribe(),
        stop_rx.clone(),
    ));
    let events = tokio::spawn(events::run(
        control.events.clone(),
        control.consensus().clone(),
        control.gossip.subscribe(),
        stop_rx.clone(),
    ));

    let reloader = config.config_file.clone().map(|path| {
        tokio::spawn(source::watch(
            path,
            control.clone(),
            config.watch_interval,
            stop_rx.clone(),
        ))
    });

    notify::notify("READY=1");
    shutdown_signal().await;
    notify::notify("STOPPING=1");
    // Hand the VIPs over: first let the connections on them finish while
    // new attempts are dropped unanswered (clients retransmit and reach the
    // next owner), then release them, so no request is cut mid-way.
    let held = drain::ips(&control.held_vips.borrow());
    if !held.is_empty() {
        let open = dataplane.quiesce(&held, VIP_QUIESCE).await;
        tracing::info!(open, "VIP listeners quiet; releasing the VIPs");
    }
    let _ = vip_stop_tx.send(true);
    if let Some(v) = vips {
        let _ = v.await;
    }
    if config.leave {
        tracing::info!("leaving the cluster");
        let by = format!("node {} leaving", node.file.name);
        if let Err(e) =
            keel_web_core::ControlPlane::remove_node(&*control, &node.file.name, &by).await
        {
            tracing::warn!(error = %e, "could not leave the cluster cleanly");
        }
    } else {
        drain::hand_over(&control, Duration::from_secs(3)).await;
    }
    tracing::info!(grace = ?config.shutdown_grace, "shutting down: draining connections");
    let _ = stop_tx.send(true);
    dataplane.shutdown(config.shutdown_grace).await;
    for task in [
        rpc_server,
        reconciler,
        gossip,
        traffic,
        events,
        forget,
        renewal,
        ca_key,
        drainer,
        upgrades,
        timing,
        retirements,
    ] {
        let _ = task.await;
    }
    if let Some(g) = guard {
        let _ = g.await;
    }
    if let Some(r) = reloader {
        let _ = r.await;
    }
    let _ = admin.await;
    drop(drained_tx);
    node.consensus.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

/// The first admin password for a node that bootstraps a cluster:
/// `KEEL_ADMIN_PASSWORD`, or the file `KEEL_ADMIN_PASSWORD_FILE` names
/// (holding the password or its argon2 hash). `None`: generate one.
fn admin_password() -> Result<Option<cluster::AdminPassword>, NodeError> {
    use cluster::AdminPassword;
    if let Some(p) = std::env::var("KEEL_ADMIN_PASSWORD")
        .ok()
        .filter(|p| !p.is_empty())
    {
        return Ok(Some(AdminPassword::Plain(p)));
    }
    let Some(path) = std::env::var_os("KEEL_ADMIN_PASSWORD_FILE") else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(&path).map_err(|source| NodeError::Io {
        what: format!("KEEL_ADMIN_PASSWORD_FILE {}", Path::new(&path).display()),
        source,
    })?;
    let text = text.trim_end_matches(['\n', '\r']);
    Ok(if text.is_empty() {
        None
    } else if keel_web_core::is_password_hash(text) {
        Some(AdminPassword::Hash(text.to_string()))
    } else {
        Some(AdminPassword::Plain(text.to_string()))
    })
}

/// Removes the generated first password's file once the admin user has
/// changed the password: it no longer opens anything, and a secret should
/// not lie around.
async fn forget_initial_password(
    mut applied: watch::Receiver<keel_consensus::Applied>,
    file: PathBuf,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let changed = applied
            .borrow_and_update()
            .state
            .users
            .get("admin")
            .is_some_and(|u| !u.must_change_password);
        if changed && file.exists() {
            match std::fs::remove_file(&file) {
                Ok(()) => {
                    tracing::info!(file = %file.display(), "the admin password was changed; removed the generated one")
                }
                Err(e) => {
                    tracing::warn!(file = %file.display(), error = %e, "cannot remove the generated password's file")
                }
            }
        }
        tokio::select! {
            _ = stop.changed() => return,
            r = applied.changed() => if r.is_err() { return },
        }
    }
}

/// A proxy holds two descriptors per connection: lift the soft limit to the
/// hard one so a busy node is not capped at the usual 1024.
pub fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!(error = %e, soft, "cannot raise the open-file limit");
            }
        }
        _ => {}
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
