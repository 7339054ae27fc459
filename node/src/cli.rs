//! Command-line arguments. Every flag of `keel run` can also be set from
//! the environment as `KEEL_<FLAG>`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(name = "keel", version, about = "A clustered load-balancer appliance")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a node serving the config file.
    Run(RunArgs),
    /// Run a node with two built-in demo backends behind one HTTP listener.
    Demo(DemoArgs),
    /// Validate a config file and list every problem.
    Check {
        /// The YAML or JSON config file.
        file: PathBuf,
    },
}

#[derive(Debug, Clone, Copy, Default, ValueEnum)]
pub enum LogFormat {
    /// Lines for people.
    #[default]
    Human,
    /// One JSON object per line, for log collectors.
    Json,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Declarative config (YAML or JSON) to serve; re-read on SIGHUP or when it changes.
    #[arg(long, env = "KEEL_CONFIG")]
    pub config: Option<PathBuf>,
    /// Where the node keeps its state.
    #[arg(long, env = "KEEL_DATA_DIR", default_value = "./keel-data")]
    pub data_dir: PathBuf,
    /// Address of the admin endpoints (/healthz, /readyz, /metrics).
    #[arg(long, env = "KEEL_ADMIN_ADDR", default_value = "127.0.0.1:9090")]
    pub admin_addr: SocketAddr,
    #[arg(long, env = "KEEL_LOG_FORMAT", value_enum, default_value_t)]
    pub log_format: LogFormat,
    /// Proxy worker threads (default: one per CPU). With 1, the node runs
    /// on a single-threaded scheduler, which costs less per request.
    #[arg(long, env = "KEEL_WORKERS")]
    pub workers: Option<usize>,
    /// On SIGTERM, how long connections may take to finish before they are cut.
    #[arg(long, env = "KEEL_SHUTDOWN_GRACE", default_value = "10s", value_parser = humantime_arg)]
    pub shutdown_grace: Duration,
    /// How often the config file is checked for changes.
    #[arg(long, env = "KEEL_WATCH_INTERVAL", default_value = "1s", value_parser = humantime_arg)]
    pub watch_interval: Duration,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// The demo load balancer's HTTP port, on 127.0.0.1.
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Address of the admin endpoints.
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub admin_addr: SocketAddr,
    #[arg(long, value_enum, default_value_t)]
    pub log_format: LogFormat,
}

fn humantime_arg(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|_| format!("{s:?} is not a duration (examples: 500ms, 2s, 1m)"))
}
