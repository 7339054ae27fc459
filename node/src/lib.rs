//! The Keel node: configuration, the config source, the admin endpoints and
//! the wiring between them and the data plane.
//!
//! `main` parses arguments and calls [`run`]; everything here can also be
//! started in-process by tests.

pub mod admin;
pub mod cli;
pub mod demo;
mod source;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use keel_dataplane::Dataplane;
use keel_model::{Document, ParseError, Spec};
use tokio::sync::watch;

use cli::{LogFormat, RunArgs};

/// A node's validated settings.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub config_file: Option<PathBuf>,
    pub data_dir: PathBuf,
    pub admin_addr: std::net::SocketAddr,
    pub shutdown_grace: Duration,
    pub watch_interval: Duration,
}

impl From<RunArgs> for NodeConfig {
    fn from(a: RunArgs) -> Self {
        NodeConfig {
            config_file: a.config,
            data_dir: a.data_dir,
            admin_addr: a.admin_addr,
            shutdown_grace: a.shutdown_grace,
            watch_interval: a.watch_interval,
        }
    }
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
    /// A local resource (data dir, admin port) is not usable.
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
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
    match load_config(path) {
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

/// Starts `tracing` output to stderr; `RUST_LOG` filters (default `info`).
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
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
    let spec = match &config.config_file {
        Some(path) => load_config(path).map_err(|source| NodeError::Config {
            path: path.clone(),
            source,
        })?,
        None => {
            tracing::warn!("no --config given: serving an empty configuration");
            Spec::default()
        }
    };
    raise_fd_limit();
    std::fs::create_dir_all(&config.data_dir).map_err(|source| NodeError::Io {
        what: format!("data dir {}", config.data_dir.display()),
        source,
    })?;
    let dataplane = Arc::new(Dataplane::new());
    dataplane.apply(&spec).await.map_err(NodeError::Apply)?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let admin = admin::serve(config.admin_addr, dataplane.clone(), stop_rx.clone())
        .await
        .map_err(|source| NodeError::Io {
            what: format!("admin address {}", config.admin_addr),
            source,
        })?;
    tracing::info!(admin = %format!("http://{}", config.admin_addr), "keel node running");

    let reloader = config.config_file.clone().map(|path| {
        tokio::spawn(source::watch(
            path,
            spec,
            dataplane.clone(),
            config.watch_interval,
            stop_rx.clone(),
        ))
    });

    shutdown_signal().await;
    tracing::info!(grace = ?config.shutdown_grace, "shutting down: draining connections");
    let _ = stop_tx.send(true);
    dataplane.shutdown(config.shutdown_grace).await;
    if let Some(r) = reloader {
        let _ = r.await;
    }
    let _ = admin.await;
    tracing::info!("stopped");
    Ok(())
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
