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
    Run(Box<RunArgs>),
    /// Run a three-node cluster on this machine with built-in backends and
    /// demo traffic; `keel demo kill n1` stops a node to watch failover.
    Demo(DemoArgs),
    /// Internal: the helper `keel run` starts to remove VIPs it stops
    /// renewing (when the node is paused, wedged or killed).
    #[command(hide = true, name = "vip-guard")]
    VipGuard,
    /// Validate a config file and list every problem.
    Check {
        /// The YAML or JSON config file.
        file: PathBuf,
    },
    /// Log in to a node's admin API and store a session token for it.
    Login(LoginArgs),
    /// Apply a declarative config file (idempotent: only differences change).
    Apply(ApplyArgs),
    /// Show objects: load-balancers, pools, nodes, tokens, api-tokens, config.
    Get(GetArgs),
    /// Delete a load balancer or pool by name.
    Delete(DeleteArgs),
    /// Show the cluster: nodes, roles, leader, what each node serves.
    Status(ClientArgs),
    /// After a quorum is lost for good: make this stopped node a one-node
    /// cluster with its last committed state (the others rejoin with
    /// tokens). Refused while a quorum of the cluster still answers.
    Recover(RecoverArgs),
    /// Save the whole cluster state (config, users, tokens, keys, CA)
    /// sealed with a passphrase; `keel run --restore FILE` seeds a new
    /// cluster from it.
    Backup(BackupArgs),
    /// Join tokens: create, list, revoke.
    Token {
        #[command(subcommand)]
        command: CredentialCommand<JoinTokenArgs>,
    },
    /// Users and their roles (admin, operator, viewer): list, add, role,
    /// delete, passwd.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// API tokens for automation: create, list, revoke.
    ApiToken {
        #[command(subcommand)]
        command: CredentialCommand<ApiTokenArgs>,
    },
    /// Access keys for the AWS-compatible (ELB/ELBv2) API: create, list, revoke.
    AwsKey {
        #[command(subcommand)]
        command: CredentialCommand<AwsKeyArgs>,
    },
    /// The instance registry: what instance IDs in the classic ELB API
    /// stand for (add, list, remove).
    Instance {
        #[command(subcommand)]
        command: InstanceCommand,
    },
    /// Pool-scoped registration tokens for backends: create, list, revoke.
    RegistrationToken {
        #[command(subcommand)]
        command: CredentialCommand<RegistrationTokenArgs>,
    },
    /// A backend adds itself to a pool or removes itself (it drains).
    Member {
        #[command(subcommand)]
        command: MemberCommand,
    },
    /// Cluster nodes: list, remove.
    Node {
        #[command(subcommand)]
        command: NodeCommand,
    },
    /// The cluster secret the gossip key derives from: `keel secrets
    /// rotate` makes a new one (gossip runs through the change).
    Secrets {
        #[command(subcommand)]
        command: SecretsCommand,
    },
    /// The cluster CA: `keel ca` shows it (and a rotation's progress);
    /// `keel ca rotate` replaces it without a restart (trust a new CA,
    /// sign with it, drop the old one).
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
    /// The cluster's Raft timing: `keel timing set --timing fast` (or
    /// --heartbeat, --election-timeout, --lease). Every node runs it from
    /// its next start; `keel status` names those still to restart.
    Timing {
        #[command(subcommand)]
        command: TimingCommand,
    },
    /// Print the argon2 hash of a password read from standard input (for
    /// keel.yaml's admin.password_hash or KEEL_ADMIN_PASSWORD_FILE).
    HashPassword,
    /// The appliance image's boot steps: check keel.yaml, set up, banner.
    Appliance {
        #[command(subcommand)]
        command: ApplianceCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum ApplianceCommand {
    /// Validate an appliance keel.yaml and list every problem.
    Check {
        /// The keel.yaml file.
        file: PathBuf,
    },
    /// At boot, as root: apply keel.yaml (KEEL-CONFIG partition or a
    /// cloud-init seed) to the network, host name and keel.service.
    Setup,
    /// As root: write the console banner (/etc/issue).
    Banner,
}

/// How a client subcommand reaches the admin API, and how it prints.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    #[command(flatten)]
    pub connect: Connect,
    /// Output: text for people, or json / yaml for scripts.
    #[arg(
        short = 'o',
        long = "output",
        value_enum,
        default_value_t,
        global = true
    )]
    pub output: Output,
}

/// How a client reaches the admin API.
#[derive(Debug, Clone, Args)]
pub struct Connect {
    /// The admin API of any node.
    #[arg(
        long,
        env = "KEEL_SERVER",
        default_value = "http://127.0.0.1:9090",
        global = true
    )]
    pub server: String,
    /// The cluster CA (PEM; `DATA_DIR/tls/ca.pem` on any node) to trust an
    /// https:// admin API with.
    #[arg(long, env = "KEEL_CA_FILE", global = true)]
    pub ca_file: Option<PathBuf>,
    /// Or trust an https:// admin API whose chain holds the cluster CA with
    /// this fingerprint (`SHA256:…`, as the console and `keel status`
    /// show it): a fresh node needs no copied file. `keel login` remembers
    /// it for that server.
    #[arg(long, env = "KEEL_CA_FINGERPRINT", global = true)]
    pub ca_fingerprint: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum Output {
    #[default]
    Text,
    Json,
    Yaml,
}

#[derive(Debug, Args)]
pub struct LoginArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[arg(long, default_value = "admin")]
    pub user: String,
    /// Read the password from standard input (otherwise it is asked for).
    #[arg(long)]
    pub password_stdin: bool,
}

#[derive(Debug, Args)]
pub struct RecoverArgs {
    /// Required: this starts a new cluster from this node's state.
    #[arg(long, required = true)]
    pub force_new_cluster: bool,
    /// The stopped node's data directory.
    #[arg(long, env = "KEEL_DATA_DIR", default_value = "./keel-data")]
    pub data_dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct BackupArgs {
    #[command(flatten)]
    pub connect: Connect,
    /// Where to write the backup (created 0600; an existing file is not
    /// overwritten).
    #[arg(short = 'o', long = "output-file")]
    pub file: PathBuf,
    /// A file holding the passphrase (at least 12 characters); otherwise
    /// KEEL_BACKUP_PASSPHRASE, or it is asked for.
    #[arg(long)]
    pub passphrase_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// The YAML or JSON config file.
    #[arg(short = 'f', long = "file")]
    pub file: PathBuf,
    /// The manager the file's objects are recorded under: an apply changes
    /// and removes only what its manager set (objects others set are
    /// conflicts).
    #[arg(long, default_value = "cli")]
    pub manager: String,
    /// Also remove the load balancers, pools and certificates this manager
    /// applied before that the file no longer has.
    #[arg(long)]
    pub prune: bool,
    /// Take over objects other managers set instead of refusing.
    #[arg(long)]
    pub force: bool,
    /// The file is the whole config: remove whatever it lacks, whoever set
    /// it (as the dashboard's config editor does).
    #[arg(long, conflicts_with_all = ["prune", "force"])]
    pub replace: bool,
    /// Show what the apply would change, object by object, and change
    /// nothing.
    #[arg(long)]
    pub diff: bool,
}

#[derive(Debug, Args)]
pub struct GetArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// load-balancers (lb), pools, nodes, tokens, api-tokens or config.
    pub kind: String,
    /// One object by name.
    pub name: Option<String>,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// load-balancer (lb) or pool.
    pub kind: String,
    pub name: String,
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// List users with their roles.
    List(ClientArgs),
    /// Add a user; the first password (read like `keel login` reads one)
    /// must be changed at their first login.
    Add {
        #[command(flatten)]
        client: ClientArgs,
        name: String,
        /// admin, operator (changes load balancers, pools, certificates) or
        /// viewer (reads).
        #[arg(long, default_value = "viewer")]
        role: String,
        /// Read the password from standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Change a user's role (at once, for every token they hold).
    Role {
        #[command(flatten)]
        client: ClientArgs,
        name: String,
        role: String,
    },
    /// Delete a user with their API tokens and AWS keys.
    Delete {
        #[command(flatten)]
        client: ClientArgs,
        name: String,
    },
    /// Change your own password (asks for the current one and the new
    /// one), or as an admin reset another user's (`--user`; they must
    /// change it at their next login). Ends that user's other sessions.
    Passwd {
        #[command(flatten)]
        client: ClientArgs,
        /// Another user's, as an admin.
        #[arg(long)]
        user: Option<String>,
        /// Read the passwords from standard input, one per line: the
        /// current one (for your own), then the new one.
        #[arg(long)]
        password_stdin: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum InstanceCommand {
    /// Add an instance ID, or move it to a new address.
    Add {
        #[command(flatten)]
        client: ClientArgs,
        /// The ID ELB clients use (such as i-0123abcd).
        id: String,
        /// The instance's IP address; listeners' instance ports are added.
        address: String,
    },
    /// List instance IDs and their addresses.
    List(ClientArgs),
    /// Remove an instance ID (its members stay until deregistered).
    Remove {
        #[command(flatten)]
        client: ClientArgs,
        id: String,
    },
}

/// What the cluster issues to let something in (a join token, an API
/// token, a registration token, an AWS access key): one family, made,
/// listed and revoked the same way. Its secret is printed once.
#[derive(Debug, Subcommand)]
pub enum CredentialCommand<T: Args> {
    /// Create one and print its secret, once.
    Create(T),
    /// List them (never their secrets).
    List(ClientArgs),
    /// Revoke one by its id.
    Revoke {
        #[command(flatten)]
        client: ClientArgs,
        id: String,
    },
}

/// A join token.
#[derive(Debug, Args)]
pub struct JoinTokenArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// How long it is valid.
    #[arg(long, default_value = "1h")]
    pub ttl: String,
    /// How many nodes may join with it.
    #[arg(long, default_value_t = 1)]
    pub uses: u32,
}

/// An API token for automation.
#[derive(Debug, Args)]
pub struct ApiTokenArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    pub name: String,
    /// Optional lifetime (default: until revoked).
    #[arg(long)]
    pub ttl: Option<String>,
    /// The user it acts as (default: you; another user's, as an admin).
    #[arg(long)]
    pub user: Option<String>,
    /// At most this role (default: the user's).
    #[arg(long)]
    pub role: Option<String>,
    /// Only these load balancers may it change (repeat the flag).
    #[arg(long = "load-balancer")]
    pub load_balancers: Vec<String>,
    /// Only these pools may it change (repeat the flag).
    #[arg(long = "pool")]
    pub pools: Vec<String>,
}

/// An access key for the AWS-compatible API.
#[derive(Debug, Args)]
pub struct AwsKeyArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    pub name: String,
}

/// A token that may only register and deregister members of one pool.
#[derive(Debug, Args)]
pub struct RegistrationTokenArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    pub name: String,
    #[arg(long)]
    pub pool: String,
    /// Optional lifetime (default: until revoked).
    #[arg(long)]
    pub ttl: Option<String>,
    /// Only registrations from this range (CIDR; repeat for more).
    #[arg(long = "source")]
    pub sources: Vec<String>,
    /// Only members in this range (CIDR; repeat for more). Without one,
    /// loopback and link-local addresses are refused; with one, exactly
    /// its ranges are allowed. The cluster's own addresses are refused
    /// either way.
    #[arg(long = "member-range")]
    pub members: Vec<String>,
}

/// Where a backend registers, and with what.
#[derive(Debug, Clone, Args)]
pub struct Registration {
    #[command(flatten)]
    pub client: ClientArgs,
    /// The pool to join or leave.
    #[arg(long)]
    pub pool: String,
    /// This backend's address as the load balancer reaches it (IP:PORT).
    #[arg(long)]
    pub address: String,
    /// A registration token for the pool (or an admin API token).
    #[arg(long, env = "KEEL_REGISTRATION_TOKEN", hide_env_values = true)]
    pub token: String,
}

#[derive(Debug, Subcommand)]
pub enum MemberCommand {
    /// Add this backend to the pool (again: updates its weight). Idempotent.
    Register {
        #[command(flatten)]
        registration: Registration,
        /// Share of new traffic, 0-1000.
        #[arg(long)]
        weight: Option<u32>,
    },
    /// Remove this backend from the pool; requests under way finish within
    /// the pool's drain timeout.
    Deregister {
        #[command(flatten)]
        registration: Registration,
    },
    /// Add a member to a pool, or replace it (the pool's other members are
    /// untouched).
    Add {
        #[command(flatten)]
        member: MemberArgs,
        /// Share of new traffic, 0-1000.
        #[arg(long, default_value_t = 1)]
        weight: u32,
    },
    /// Remove a member; requests under way finish within the pool's drain
    /// timeout.
    Remove {
        #[command(flatten)]
        member: MemberArgs,
    },
    /// Send a member no new requests; those under way finish.
    Drain {
        #[command(flatten)]
        member: MemberArgs,
    },
    /// Put a drained member back.
    Enable {
        #[command(flatten)]
        member: MemberArgs,
    },
}

/// One member, changed with an admin API token.
#[derive(Debug, Args)]
pub struct MemberArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// The pool.
    #[arg(long)]
    pub pool: String,
    /// The member's address (IP:PORT).
    #[arg(long)]
    pub address: String,
}

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// List nodes.
    List(ClientArgs),
    /// Remove a node from the cluster by name.
    Remove {
        #[command(flatten)]
        client: ClientArgs,
        name: String,
    },
    /// Move VIPs and leadership away from a node that keeps running (for
    /// maintenance): it keeps serving on its own addresses and voting, but
    /// holds no VIP and does not lead until undrained. Connections on its
    /// VIPs get to finish; new ones reach the next holder.
    Drain {
        #[command(flatten)]
        client: ClientArgs,
        name: String,
    },
    /// Let a drained node hold VIPs and lead again.
    Undrain {
        #[command(flatten)]
        client: ClientArgs,
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum SecretsCommand {
    /// Make a new cluster secret: every node seals gossip with the new key
    /// once it applies the change and opens the old one for 10 s after.
    Rotate(ClientArgs),
}

#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// The CA that signs, those trusted, and how far a rotation has come on
    /// every member.
    Show {
        #[command(flatten)]
        client: ClientArgs,
        /// Print every trusted CA certificate (PEM) instead: a --ca-file.
        #[arg(long)]
        pem: bool,
    },
    /// Rotate the cluster CA: trust a new one beside the old, sign with it
    /// and make every certificate again, then drop the old one. Each step
    /// waits until every member is ready; a rotation left half done goes
    /// on from where it stopped. This CLI's pinned fingerprint follows.
    Rotate {
        #[command(flatten)]
        client: ClientArgs,
        /// Take one step only.
        #[arg(long)]
        step: bool,
        /// Drop the new CA of a rotation that has not begun to sign.
        #[arg(long, conflicts_with = "step")]
        abandon: bool,
        /// Give up waiting for the members after this long.
        #[arg(long, default_value = "5m", value_parser = humantime_arg)]
        timeout: std::time::Duration,
    },
}

#[derive(Debug, Subcommand)]
pub enum TimingCommand {
    /// Set the cluster's timing (checked; applied by each node at its next
    /// start).
    Set {
        #[command(flatten)]
        client: ClientArgs,
        #[command(flatten)]
        timing: TimingArgs,
    },
}

/// When the AWS and Octavia endpoints serve TLS.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum CompatTls {
    /// On an address off loopback.
    #[default]
    Auto,
    Always,
    Never,
}

impl CompatTls {
    /// Does an endpoint on `addr` serve TLS?
    pub fn on(self, addr: SocketAddr) -> bool {
        match self {
            CompatTls::Auto => !addr.ip().is_loopback(),
            CompatTls::Always => true,
            CompatTls::Never => false,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, ValueEnum)]
pub enum LogFormat {
    /// Lines for people.
    #[default]
    Human,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Raft and VIP timing presets; individual flags override them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum TimingProfile {
    /// Heartbeat 100ms, election timeout 200ms-400ms, lease 300ms: failover
    /// in about 0.8 s, tolerant of 100 ms round trips.
    #[default]
    Default,
    /// Heartbeat 30ms, election timeout 80ms-160ms, lease 110ms: failover
    /// in about 0.3 s on a quiet LAN (round trips well under 30 ms).
    Fast,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Declarative config (YAML or JSON): applied when the node bootstraps a
    /// new cluster, and again (like `keel apply -f`) on SIGHUP or when it changes.
    #[arg(long, env = "KEEL_CONFIG")]
    pub config: Option<PathBuf>,
    /// Where the node keeps its state.
    #[arg(long, env = "KEEL_DATA_DIR", default_value = "./keel-data")]
    pub data_dir: PathBuf,
    /// Address of the admin API and endpoints (/api/v1, /healthz, /readyz, /metrics).
    #[arg(long, env = "KEEL_ADMIN_ADDR", default_value = "127.0.0.1:9090")]
    pub admin_addr: SocketAddr,
    /// Address of the cluster listener (Raft RPC and joins, mutual TLS).
    #[arg(long, env = "KEEL_CLUSTER_ADDR", default_value = "127.0.0.1:9091")]
    pub cluster_addr: SocketAddr,
    /// Address of the gossip socket (UDP, sealed with the cluster key;
    /// default: the --cluster-addr host, port one above it, 9092).
    #[arg(long, env = "KEEL_GOSSIP_ADDR")]
    pub gossip_addr: Option<SocketAddr>,
    /// The cluster address other nodes dial (default: --cluster-addr).
    #[arg(long, env = "KEEL_ADVERTISE_ADDR")]
    pub advertise_addr: Option<SocketAddr>,
    /// This node's name in the cluster (default: the host name).
    #[arg(long, env = "KEEL_NODE_NAME")]
    pub node_name: Option<String>,
    /// Join the cluster of the node at HOST:PORT (its cluster address); needs --token.
    #[arg(long, env = "KEEL_JOIN", requires = "token")]
    pub join: Option<String>,
    /// A join token from `keel token create`.
    #[arg(
        long,
        env = "KEEL_JOIN_TOKEN",
        requires = "join",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// Seed a new cluster from a backup (`keel backup`): its config, users,
    /// tokens, keys and CA. Needs an empty data directory; the other nodes
    /// then join it with tokens.
    #[arg(long, env = "KEEL_RESTORE", conflicts_with = "join")]
    pub restore: Option<PathBuf>,
    /// A file holding the backup's passphrase; otherwise
    /// KEEL_BACKUP_PASSPHRASE.
    #[arg(long, env = "KEEL_BACKUP_PASSPHRASE_FILE", requires = "restore")]
    pub backup_passphrase_file: Option<PathBuf>,
    /// On SIGTERM, leave the cluster (remove this node from the membership).
    #[arg(long, env = "KEEL_LEAVE")]
    pub leave: bool,
    #[arg(long, env = "KEEL_LOG_FORMAT", value_enum, default_value_t)]
    pub log_format: LogFormat,
    /// Proxy worker threads (default: one per CPU this process may use),
    /// each a single-threaded scheduler with listening sockets of its own.
    /// The control plane runs on threads of its own beside them.
    #[arg(long, env = "KEEL_WORKERS", value_parser = parse_workers)]
    pub workers: Option<usize>,
    /// Pin each proxy worker to a CPU of its own (round robin over the CPUs
    /// this process may use): `--cpu-affinity` or `--cpu-affinity=true`
    /// pins, `--cpu-affinity=false` leaves them to the kernel. Default:
    /// pinned when there is one worker per CPU (the default count).
    #[arg(
        long,
        env = "KEEL_CPU_AFFINITY",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true"
    )]
    pub cpu_affinity: Option<bool>,
    /// Serve the AWS-compatible ELBv2 Query API (SigV4, keys from
    /// `keel aws-key create`) on this address; off when unset.
    #[arg(long, env = "KEEL_AWS_API_ADDR")]
    pub aws_api_addr: Option<SocketAddr>,
    /// Serve the OpenStack Octavia v2 compatible API (and the read-only
    /// Neutron subnets, networks and ports it looks up) on this address;
    /// off when unset. Authenticated by Keel API token (`X-Auth-Token`) or
    /// HTTP Basic.
    #[arg(long, env = "KEEL_OCTAVIA_API_ADDR")]
    pub octavia_api_addr: Option<SocketAddr>,
    /// TLS on the AWS and Octavia endpoints: `auto` off loopback (as the
    /// admin API), `always`, or `never` (plain HTTP, for a proxy in front
    /// that terminates TLS).
    #[arg(long, env = "KEEL_COMPAT_TLS", value_enum, default_value_t)]
    pub compat_tls: CompatTls,
    /// The certificate chain (PEM) the AWS and Octavia endpoints present,
    /// with --compat-tls-key; default: the admin API's, which the cluster
    /// CA signs for every address the node serves them on.
    #[arg(long, env = "KEEL_COMPAT_TLS_CERT", requires = "compat_tls_key")]
    pub compat_tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --compat-tls-cert.
    #[arg(long, env = "KEEL_COMPAT_TLS_KEY", requires = "compat_tls_cert")]
    pub compat_tls_key: Option<PathBuf>,
    /// Let the AWS and Octavia APIs see and change every load balancer,
    /// pool and certificate; by default each sees only what it made (and
    /// what no manager has set), so a file's or another API's objects are
    /// not theirs to change.
    #[arg(long, env = "KEEL_COMPAT_ADOPT")]
    pub compat_adopt: bool,
    /// The region the AWS-compatible API serves: signatures must be
    /// scoped to it.
    #[arg(long, env = "KEEL_AWS_REGION", default_value = "us-east-1")]
    pub aws_region: String,
    /// How long the node certificates this node issues (at bootstrap, to
    /// joiners, on renewal) are valid; every node renews its own with a
    /// third of its life left. Give every node the same value.
    #[arg(long, env = "KEEL_NODE_CERT_VALIDITY", default_value = "30d", value_parser = humantime_arg)]
    pub node_cert_validity: Duration,
    /// How many voters the leader promotes joiners to (the rest stay
    /// learners: they serve traffic, replicate the config and hold no CA
    /// key). 3 or 5 is usual.
    #[arg(long, env = "KEEL_MAX_VOTERS", default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..=9))]
    pub max_voters: u16,
    /// Password hashes (logins, Octavia HTTP Basic) checked at once; more
    /// attempts at the same time get 429. Each takes about 19 MiB.
    #[arg(long, env = "KEEL_MAX_PASSWORD_CHECKS", default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub max_password_checks: u16,
    /// On SIGTERM, how long connections may take to finish before they are cut.
    #[arg(long, env = "KEEL_SHUTDOWN_GRACE", default_value = "10s", value_parser = humantime_arg)]
    pub shutdown_grace: Duration,
    /// How often the config file is checked for changes.
    #[arg(long, env = "KEEL_WATCH_INTERVAL", default_value = "1s", value_parser = humantime_arg)]
    pub watch_interval: Duration,
    /// The interface VIPs are added to (default: the one with an address in
    /// the VIP's subnet).
    #[arg(long, env = "KEEL_VIP_INTERFACE")]
    pub vip_interface: Option<String>,
    /// Raft timing: seeds a new cluster (a joiner and a restarted node run
    /// the cluster's; `keel timing set` changes it).
    #[command(flatten)]
    pub timing: TimingArgs,
}

impl RunArgs {
    /// The Raft timing these flags ask for, checked.
    pub fn settings(&self) -> Result<keel_consensus::Settings, String> {
        self.timing.settings()
    }
}

/// The Raft timing flags.
#[derive(Debug, Clone, Args)]
pub struct TimingArgs {
    /// Failure-detection timing preset.
    #[arg(long, env = "KEEL_TIMING", value_enum, default_value_t)]
    pub timing: TimingProfile,
    /// How often the Raft leader sends heartbeats (overrides --timing); also
    /// the timeout of one, so above the round trip between nodes.
    #[arg(long, env = "KEEL_HEARTBEAT", value_parser = humantime_arg)]
    pub heartbeat: Option<Duration>,
    /// Election timeout range MIN-MAX, e.g. 200ms-400ms (overrides --timing).
    #[arg(long, env = "KEEL_ELECTION_TIMEOUT", value_parser = range_arg)]
    pub election_timeout: Option<(Duration, Duration)>,
    /// How long a quorum acknowledgement lets the leader hold VIPs; at most
    /// 3/4 of the longest election timeout (overrides --timing).
    #[arg(long, env = "KEEL_LEASE", value_parser = humantime_arg)]
    pub lease: Option<Duration>,
}

impl TimingArgs {
    /// The timing these flags ask for, checked.
    pub fn settings(&self) -> Result<keel_consensus::Settings, String> {
        let mut s = match self.timing {
            TimingProfile::Default => keel_consensus::Settings::default(),
            TimingProfile::Fast => keel_consensus::Settings::fast(),
        };
        if let Some(h) = self.heartbeat {
            s.heartbeat = h;
        }
        if let Some(e) = self.election_timeout {
            s.election_timeout = e;
        }
        if let Some(l) = self.lease {
            s.lease = l;
        }
        s.check()?;
        Ok(s)
    }
}

fn range_arg(s: &str) -> Result<(Duration, Duration), String> {
    let (min, max) = s
        .split_once('-')
        .ok_or_else(|| format!("{s:?} is not a range (example: 200ms-400ms)"))?;
    Ok((humantime_arg(min.trim())?, humantime_arg(max.trim())?))
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct DemoArgs {
    #[command(subcommand)]
    pub action: Option<DemoAction>,
    /// The demo load balancer's HTTP port, on 127.0.0.1 (every node serves it).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// The first node's admin port (dashboard, API, metrics) on 127.0.0.1;
    /// the others take the next ones. 0: any free ports.
    #[arg(long, default_value_t = 9090)]
    pub admin_port: u16,
    /// The first node's cluster port (its gossip port is the next one); the
    /// other nodes take ports 10 and 20 above it. 0: any free ports.
    #[arg(long, default_value_t = 9110)]
    pub cluster_port: u16,
    /// Where the demo keeps its nodes' data directories and logs while it
    /// runs (removed when it stops). Default: keel-demo in the temporary
    /// directory.
    #[arg(long, global = true, env = "KEEL_DEMO_DIR")]
    pub dir: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t)]
    pub log_format: LogFormat,
    /// Give the load balancer a VIP that the leader holds and that moves
    /// when it dies: each node runs in a network namespace of its own
    /// (needs root). The dashboards and the load balancer stay on
    /// 127.0.0.1, relayed into the demo's network.
    #[arg(long)]
    pub vip: bool,
}

#[derive(Debug, Subcommand)]
pub enum DemoAction {
    /// Kill one node of a running demo (SIGKILL, as if it lost power): the
    /// others elect a leader and keep serving.
    Kill {
        /// The node: n1, n2 or n3.
        node: String,
    },
}

fn humantime_arg(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|_| format!("{s:?} is not a duration (examples: 500ms, 2s, 1m)"))
}

/// A worker count: 1 to 1024.
fn parse_workers(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if (1..=1024).contains(&n) => Ok(n),
        _ => Err(format!(
            "{text:?} is not a number of workers from 1 to 1024"
        )),
    }
}
