//! Keel's gossip: who is alive, and what each node sees.
//!
//! Every node runs chitchat and publishes one [`Report`] (data plane ready,
//! applied config version, load, the VIPs it holds, and its view of every
//! pool member's health). [`GossipHandle::view`] is a `watch` of the whole
//! cluster's reports with chitchat's liveness verdict for each node.
//!
//! chitchat's own UDP transport is plain; [`SealedTransport`] seals every
//! datagram with ChaCha20-Poly1305 under the cluster's gossip key, so a host
//! without the key can neither read gossip nor inject state: a datagram that
//! does not open is dropped before chitchat sees it.

mod transport;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chitchat::{spawn_chitchat, ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

pub use transport::{Keys, SealedTransport};

/// The key a node's report is published under.
const REPORT_KEY: &str = "report";

/// How a node gossips.
#[derive(Debug, Clone)]
pub struct GossipConfig {
    /// This node's name (unique in the cluster).
    pub node_name: String,
    /// Nodes of other clusters are ignored.
    pub cluster_id: String,
    /// UDP address to bind.
    pub listen: SocketAddr,
    /// The address peers send to (the bound one when `listen` is a wildcard
    /// or port 0 is not usable by peers).
    pub advertise: SocketAddr,
    /// Peers to start from (other members' gossip addresses).
    pub seeds: Vec<SocketAddr>,
    /// The cluster's 32-byte gossip key: it seals, and opens.
    pub key: [u8; 32],
    /// Keys that also open (one being replaced), until
    /// [`GossipHandle::set_keys`] says otherwise.
    pub also_accept: Vec<[u8; 32]>,
    /// Time between gossip rounds.
    pub interval: Duration,
}

/// Why gossip could not start.
#[derive(Debug, thiserror::Error)]
pub enum GossipError {
    /// The UDP socket could not be bound.
    #[error("gossip on {addr}: {reason}")]
    Bind { addr: SocketAddr, reason: String },
}

/// A pool member as one node's data plane sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberView {
    /// Passing its health checks.
    pub up: bool,
    /// Duration of the latest check, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check_ms: Option<u64>,
    /// The node checks it itself (rather than following other nodes).
    #[serde(default)]
    pub checked: bool,
    /// Disabled (by an operator), so getting no new traffic.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disabled: bool,
    /// In-flight requests or open connections on this node.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub outstanding: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// One load balancer's or pool's traffic on one node, over its latest
/// sampling interval. Integers, so reports compare exactly.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrafficRate {
    /// Requests (or TCP connections) per second, times 1000.
    pub requests_milli: u64,
    /// Failed ones per second, times 1000.
    pub errors_milli: u64,
    /// Open connections or in-flight requests now.
    pub active: u64,
    /// Median latency in microseconds, when there were responses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p50_us: Option<u64>,
    /// 99th percentile latency in microseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99_us: Option<u64>,
}

/// What a node says about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// The data plane serves the applied config.
    pub ready: bool,
    /// The Raft index of the applied config.
    pub applied_version: u64,
    /// Open client connections.
    pub connections: u64,
    /// VIPs held (`addr/len`).
    #[serde(default)]
    pub vips: Vec<String>,
    /// Health of every pool member, keyed `pool/address`.
    #[serde(default)]
    pub members: BTreeMap<String, MemberView>,
    /// Traffic per load balancer and pool, keyed `load_balancer/NAME` and
    /// `pool/NAME`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub traffic: BTreeMap<String, TrafficRate>,
    /// The newest cluster version this node's Keel runs (0: a Keel from
    /// before versions, which runs 1).
    #[serde(default)]
    pub cluster_version: u32,
    /// The Raft timing this node runs (absent from a Keel before timing
    /// was replicated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timing: Option<keel_model::Timing>,
}

/// One node as gossip knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    /// chitchat's failure detector thinks it is alive (always true for this
    /// node).
    pub live: bool,
    /// Its latest report, if one arrived.
    pub report: Option<Report>,
}

/// Every node gossip knows, by name.
pub type ClusterView = BTreeMap<String, Peer>;

/// A running gossip instance.
pub struct GossipHandle {
    chitchat: ChitchatHandle,
    view: watch::Receiver<ClusterView>,
    rejected: Arc<AtomicU64>,
    keys: transport::Keys,
    refresher: tokio::task::JoinHandle<()>,
}

/// Binds the sealed UDP socket and starts gossiping.
pub async fn spawn_gossip(config: GossipConfig) -> Result<GossipHandle, GossipError> {
    let generation = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let me = ChitchatId::new(config.node_name.clone(), generation, config.advertise);
    let interval = config.interval;
    let chitchat_config = ChitchatConfig {
        chitchat_id: me,
        cluster_id: config.cluster_id.clone(),
        gossip_interval: interval,
        listen_addr: config.listen,
        seed_nodes: config.seeds.iter().map(|s| s.to_string()).collect(),
        // Phi-accrual over the gossip interval: a silent node is judged dead
        // after roughly ten missed rounds.
        failure_detector_config: FailureDetectorConfig {
            phi_threshold: 8.0,
            sampling_window_size: 100,
            max_interval: interval * 10,
            initial_interval: interval,
            dead_node_grace_period: Duration::from_secs(3600),
        },
        marked_for_deletion_grace_period: Duration::from_secs(3600),
        catchup_callback: None,
        extra_liveness_predicate: None,
        protocol_version: chitchat::ProtocolVersion::V0,
    };
    let keys = transport::Keys::new(&config.key, &config.also_accept);
    let transport = SealedTransport::new(keys.clone());
    let rejected = transport.rejected();
    let chitchat = spawn_chitchat(chitchat_config, Vec::new(), &transport)
        .await
        .map_err(|e| GossipError::Bind {
            addr: config.listen,
            reason: format!("{e:#}"),
        })?;
    let (tx, view) = watch::channel(ClusterView::new());
    let shared = chitchat.chitchat();
    let refresher = tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        loop {
            tick.tick().await;
            let next = {
                let chitchat = shared.lock().await;
                let me = chitchat.self_chitchat_id().node_id.to_string();
                let live: Vec<String> = chitchat
                    .live_nodes()
                    .map(|id| id.node_id.to_string())
                    .collect();
                let mut view = ClusterView::new();
                for (id, state) in chitchat.node_states() {
                    let name = id.node_id.to_string();
                    let report = state
                        .get(REPORT_KEY)
                        .and_then(|r| serde_json::from_str::<Report>(r).ok());
                    let is_live = name == me || live.contains(&name);
                    // A restarted node appears under a new generation; the
                    // live one wins.
                    let entry = view.entry(name).or_insert(Peer {
                        live: false,
                        report: None,
                    });
                    if is_live || entry.report.is_none() {
                        entry.live |= is_live;
                        if report.is_some() {
                            entry.report = report;
                        }
                    }
                }
                view
            };
            tx.send_if_modified(|v| {
                let changed = *v != next;
                *v = next;
                changed
            });
            if tx.is_closed() {
                return;
            }
        }
    });
    Ok(GossipHandle {
        chitchat,
        view,
        rejected,
        keys,
        refresher,
    })
}

impl GossipHandle {
    /// Seal with `key` from now on; open with it and `also_accept`.
    pub fn set_keys(&self, key: &[u8; 32], also_accept: &[[u8; 32]]) {
        self.keys.set(key, also_accept);
    }

    /// Replaces this node's report.
    pub async fn publish(&self, report: &Report) {
        let Ok(text) = serde_json::to_string(report) else {
            return;
        };
        self.chitchat
            .with_chitchat(|c| c.self_node_state().set(REPORT_KEY, &text))
            .await;
    }

    /// The cluster as gossip knows it, as it changes.
    pub fn view(&self) -> watch::Receiver<ClusterView> {
        self.view.clone()
    }

    /// Gossip with `addr` now (a member that just joined, say).
    pub fn contact(&self, addr: SocketAddr) {
        let _ = self.chitchat.gossip(addr);
    }

    /// Datagrams dropped because they did not open with the cluster key.
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    /// Stops gossiping.
    pub async fn shutdown(self) {
        self.refresher.abort();
        if let Err(e) = self.chitchat.shutdown().await {
            tracing::debug!(error = %e, "gossip stopped with an error");
        }
    }
}
