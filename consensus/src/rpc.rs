//! Node-to-node RPC: HTTP/1.1 with JSON bodies over mutually authenticated
//! TLS.
//!
//! Every node certificate is signed by the cluster CA and names the node
//! (`n<ID>.node.keel`, see [`node_server_name`]), so a client checks it talks
//! to the node it meant, and the server learns which node is calling. A
//! certificate is only as good as its node's standing: each route asks
//! [`require`] for a [`Standing`] (Raft's RPCs: a voter; forwarded writes and
//! status: a member), checked against the membership and the replicated
//! list of retired nodes on every request, so `keel node remove` takes
//! effect on the next RPC. Refusals are 403 before the body is read. Joining
//! happens before the joiner has a certificate, so that route is anonymous.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{RaftNetwork, RaftNetworkFactory};
use rustls::pki_types::ServerName;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tower::ServiceExt;

use crate::{Consensus, NodeId, NodeInfo, TypeConfig};

/// The DNS name every node certificate carries, used when the caller does not
/// know (or care) which node it reaches (joining).
pub const ANY_NODE: &str = "node.keel";

/// Largest RPC body accepted from an authenticated peer (snapshot chunks).
const PEER_BODY_LIMIT: usize = 64 << 20;

/// Largest response body a client reads.
const RESPONSE_LIMIT: usize = 64 << 20;

/// The DNS name in node `id`'s certificate.
pub fn node_server_name(id: NodeId) -> String {
    format!("n{id:x}.{ANY_NODE}")
}

/// Who is on the other end of a server connection.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    /// The peer's address.
    pub addr: SocketAddr,
    /// The node its certificate names, when it presented one the cluster CA
    /// signed (rustls checked that); `None` for an anonymous peer.
    pub node: Option<NodeId>,
}

/// The node id a node certificate names (`n<ID>.node.keel`).
pub fn node_of(cert: &rustls::pki_types::CertificateDer<'_>) -> Option<NodeId> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let (_, x509) = X509Certificate::from_der(cert.as_ref()).ok()?;
    let names = x509.subject_alternative_name().ok()??;
    names
        .value
        .general_names
        .iter()
        .find_map(|name| match name {
            GeneralName::DNSName(dns) => {
                let hex = dns
                    .strip_prefix('n')?
                    .strip_suffix(&format!(".{ANY_NODE}"))?;
                NodeId::from_str_radix(hex, 16).ok()
            }
            _ => None,
        })
}

/// Why `peer` may not make a call that needs `what` of it (`None`: it may).
/// A node certificate is only as good as its node's standing: a node that
/// is not (or no longer) a member, or is retired, is refused even though
/// the CA signed its certificate.
pub fn refusal(consensus: &Consensus, peer: Option<&Peer>, what: Standing) -> Option<String> {
    let Some(id) = peer.and_then(|p| p.node) else {
        return Some("a cluster certificate is required".into());
    };
    if consensus
        .applied()
        .borrow()
        .state
        .retired_nodes
        .contains(&id)
    {
        return Some(format!("node {id:x} was removed from the cluster"));
    }
    let members = consensus.members();
    if members.is_empty() {
        // A joiner before its first entry knows no membership yet: the
        // leader replicating it is the first to call, certified by the CA
        // the joiner pinned.
        return None;
    }
    let standing = members.into_iter().find(|m| m.id == id);
    match (what, standing) {
        (Standing::Any, _) => None,
        (_, None) => Some(format!("node {id:x} is not a member of this cluster")),
        (Standing::Voter, Some(m)) if !m.voter => Some(format!("node {id:x} is not a voter")),
        _ => None,
    }
}

/// What a caller must be for a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// Any node the CA certified and the cluster has not retired (a joiner
    /// asking to be admitted).
    Any,
    /// A current member (voter or learner).
    Member,
    /// A current voter (Raft's own RPCs come from the leader or a candidate).
    Voter,
}

/// Refuse, before reading the body, callers that are not of `standing`.
pub async fn require(
    State((consensus, standing)): State<(Consensus, Standing)>,
    request: Request,
    next: Next,
) -> Response {
    let peer = request.extensions().get::<Peer>();
    match refusal(&consensus, peer, standing) {
        None => next.run(request).await,
        Some(why) => {
            tracing::warn!(peer = ?peer.map(|p| p.addr), path = %request.uri().path(), %why, "refused a cluster RPC");
            (StatusCode::FORBIDDEN, format!("{why}\n")).into_response()
        }
    }
}

/// The Raft routes, for voters only (see [`require`]).
pub fn raft_routes(consensus: Consensus) -> Router {
    Router::new()
        .route("/raft/append", post(append))
        .route("/raft/vote", post(vote))
        .route("/raft/snapshot", post(snapshot))
        .route("/raft/elect", post(elect))
        .route("/raft/pre-vote", post(pre_vote))
        .layer(DefaultBodyLimit::max(PEER_BODY_LIMIT))
        .layer(axum::middleware::from_fn_with_state(
            (consensus.clone(), Standing::Voter),
            require,
        ))
        .with_state(consensus)
}

async fn append(
    State(c): State<Consensus>,
    Json(rpc): Json<AppendEntriesRequest<TypeConfig>>,
) -> Json<Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>> {
    Json(c.append_entries(rpc).await)
}

async fn vote(
    State(c): State<Consensus>,
    Json(rpc): Json<VoteRequest<NodeId>>,
) -> Json<Result<VoteResponse<NodeId>, RaftError<NodeId>>> {
    Json(c.vote(rpc).await)
}

/// "Would you vote for me now?" (see `prevote.rs`).
async fn pre_vote(State(c): State<Consensus>, Json(ask): Json<crate::PreVote>) -> Json<bool> {
    Json(c.pre_vote(ask))
}

/// A leader handing over asks this node to stand for election now (the
/// body is the term it led); see [`Consensus::elect_now`].
async fn elect(State(c): State<Consensus>, Json(term): Json<u64>) -> Json<bool> {
    Json(c.elect_now(term).await)
}

/// A snapshot chunk on the wire: openraft's request with the bytes as
/// base64 (see `b64`; the array form older nodes send still reads).
#[derive(Serialize, serde::Deserialize)]
struct SnapshotChunk {
    vote: openraft::Vote<NodeId>,
    meta: openraft::SnapshotMeta<NodeId, NodeInfo>,
    offset: u64,
    #[serde(with = "crate::b64")]
    data: Vec<u8>,
    done: bool,
}

impl From<InstallSnapshotRequest<TypeConfig>> for SnapshotChunk {
    fn from(r: InstallSnapshotRequest<TypeConfig>) -> Self {
        SnapshotChunk {
            vote: r.vote,
            meta: r.meta,
            offset: r.offset,
            data: r.data,
            done: r.done,
        }
    }
}

impl From<SnapshotChunk> for InstallSnapshotRequest<TypeConfig> {
    fn from(c: SnapshotChunk) -> Self {
        InstallSnapshotRequest {
            vote: c.vote,
            meta: c.meta,
            offset: c.offset,
            data: c.data,
            done: c.done,
        }
    }
}

async fn snapshot(
    State(c): State<Consensus>,
    Json(chunk): Json<SnapshotChunk>,
) -> Json<Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>> {
    Json(c.install_snapshot(chunk.into()).await)
}

/// Serve `app` on `listener` over TLS until `shutdown` completes. Each
/// request carries a [`Peer`] extension and axum's `ConnectInfo` (so the
/// admin API can use this server too when it is not on loopback).
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let acceptor = TlsAcceptor::from(tls);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (tcp, addr) = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "cluster listener accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let handshake = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp));
            let tls = match handshake.await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::info!(peer = %addr, error = %e, "cluster TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            // rustls has already checked any certificate the peer sent
            // against the cluster CA; an anonymous peer has none.
            let peer = Peer {
                addr,
                node: tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(node_of),
            };
            let service =
                hyper::service::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(peer);
                    req.extensions_mut()
                        .insert(axum::extract::ConnectInfo(peer.addr));
                    app.clone().oneshot(req.map(axum::body::Body::new))
                });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(tls), service);
            if let Err(e) = conn.await {
                tracing::debug!(peer = %addr, error = %e, "cluster connection ended");
            }
        });
    }
}

/// Why an RPC failed.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    /// Could not connect or complete the TLS handshake (certificate refused,
    /// fingerprint mismatch, nobody listening).
    #[error("cannot reach {addr}: {reason}")]
    Unreachable {
        /// Where.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The connection failed mid-request.
    #[error("connection to {addr} failed: {reason}")]
    Network {
        /// Where.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The peer answered with an error status; `body` is its message.
    #[error("{addr} answered {status}: {body}")]
    Status {
        /// Where.
        addr: String,
        /// The HTTP status.
        status: StatusCode,
        /// The response body, as text.
        body: String,
    },
    /// The answer was not the JSON expected.
    #[error("bad answer from {addr}: {reason}")]
    Decode {
        /// Where.
        addr: String,
        /// Why.
        reason: String,
    },
    /// No answer in time.
    #[error("{addr} did not answer within {0:?}", .timeout)]
    Timeout {
        /// Where.
        addr: String,
        /// How long we waited.
        timeout: Duration,
    },
}

/// A client connection to one peer, reconnecting as needed.
pub struct RpcClient {
    tls: TlsConnector,
    addr: String,
    server_name: ServerName<'static>,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl RpcClient {
    /// A client for `addr`, expecting a certificate for `server_name`.
    pub fn new(
        tls: Arc<rustls::ClientConfig>,
        addr: impl Into<String>,
        server_name: &str,
    ) -> Result<Self, RpcError> {
        let addr = addr.into();
        let server_name =
            ServerName::try_from(server_name.to_owned()).map_err(|e| RpcError::Unreachable {
                addr: addr.clone(),
                reason: e.to_string(),
            })?;
        Ok(RpcClient {
            tls: TlsConnector::from(tls),
            addr,
            server_name,
            sender: None,
        })
    }

    async fn connect(&mut self) -> Result<(), RpcError> {
        if self.sender.as_ref().is_some_and(|s| !s.is_closed()) {
            return Ok(());
        }
        let unreachable = |reason: String| RpcError::Unreachable {
            addr: self.addr.clone(),
            reason,
        };
        let tcp = TcpStream::connect(&self.addr)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let tls = self
            .tls
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        self.sender = Some(sender);
        Ok(())
    }

    /// POST `body` as JSON to `path` and decode the JSON answer, within
    /// `timeout` (connecting included).
    pub async fn post<Req: Serialize, Resp: DeserializeOwned>(
        &mut self,
        path: &str,
        body: &Req,
        timeout: Duration,
    ) -> Result<Resp, RpcError> {
        let addr = self.addr.clone();
        match tokio::time::timeout(timeout, self.post_inner(path, body)).await {
            Ok(result) => result,
            Err(_) => {
                self.sender = None;
                Err(RpcError::Timeout { addr, timeout })
            }
        }
    }

    async fn post_inner<Req: Serialize, Resp: DeserializeOwned>(
        &mut self,
        path: &str,
        body: &Req,
    ) -> Result<Resp, RpcError> {
        let addr = self.addr.clone();
        let decode = |reason: String| RpcError::Decode {
            addr: addr.clone(),
            reason,
        };
        let bytes = serde_json::to_vec(body).map_err(|e| decode(e.to_string()))?;
        let request = http::Request::post(path)
            .header(http::header::HOST, ANY_NODE)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(bytes)))
            .map_err(|e| decode(e.to_string()))?;
        self.connect().await?;
        let sent = match self.sender.as_mut() {
            Some(sender) => sender.send_request(request).await,
            None => {
                return Err(RpcError::Network {
                    addr,
                    reason: "not connected".into(),
                })
            }
        };
        let response = match sent {
            Ok(r) => r,
            Err(e) => {
                self.sender = None;
                return Err(RpcError::Network {
                    addr,
                    reason: e.to_string(),
                });
            }
        };
        let status = response.status();
        let body = Limited::new(response.into_body(), RESPONSE_LIMIT)
            .collect()
            .await
            .map_err(|e| RpcError::Network {
                addr: addr.clone(),
                reason: e.to_string(),
            })?
            .to_bytes();
        if !status.is_success() {
            return Err(RpcError::Status {
                addr,
                status,
                body: String::from_utf8_lossy(&body).trim().to_owned(),
            });
        }
        serde_json::from_slice(&body).map_err(|e| decode(e.to_string()))
    }
}

/// The mutual-TLS network factory for openraft.
#[derive(Clone)]
pub struct TlsNetwork {
    tls: Arc<rustls::ClientConfig>,
}

impl TlsNetwork {
    /// Connect to peers with `tls`, which presents this node's certificate
    /// and trusts the cluster CA.
    pub fn new(tls: Arc<rustls::ClientConfig>) -> Self {
        TlsNetwork { tls }
    }
}

impl RaftNetworkFactory<TypeConfig> for TlsNetwork {
    type Network = TlsPeer;

    async fn new_client(&mut self, target: NodeId, node: &NodeInfo) -> TlsPeer {
        TlsPeer {
            target,
            node: node.clone(),
            client: RpcClient::new(
                self.tls.clone(),
                node.cluster_addr.clone(),
                &node_server_name(target),
            ),
        }
    }
}

/// openraft's link to one peer.
pub struct TlsPeer {
    target: NodeId,
    node: NodeInfo,
    client: Result<RpcClient, RpcError>,
}

impl TlsPeer {
    async fn call<Req, Resp, E>(
        &mut self,
        path: &str,
        rpc: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, NodeInfo, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let client = match &mut self.client {
            Ok(c) => c,
            Err(e) => return Err(RPCError::Unreachable(Unreachable::new(e))),
        };
        let answer: Result<Resp, RaftError<NodeId, E>> = client
            .post(path, rpc, option.hard_ttl())
            .await
            .map_err(|e| match e {
                RpcError::Unreachable { .. } => RPCError::Unreachable(Unreachable::new(&e)),
                _ => RPCError::Network(NetworkError::new(&e)),
            })?;
        answer.map_err(|e| {
            RPCError::RemoteError(RemoteError::new_with_node(
                self.target,
                self.node.clone(),
                e,
            ))
        })
    }
}

impl crate::PreVotePeer for TlsPeer {
    async fn pre_vote(&mut self, ask: crate::PreVote) -> Result<bool, String> {
        let client = self.client.as_mut().map_err(|e| e.to_string())?;
        match client
            .post::<_, bool>("/raft/pre-vote", &ask, Duration::from_secs(1))
            .await
        {
            Ok(answer) => Ok(answer),
            // A node from before pre-vote: its real vote decides.
            Err(RpcError::Status { status, .. }) if status == StatusCode::NOT_FOUND => Ok(true),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// How long openraft waits before calling an unreachable peer again.
/// openraft's default is 500 ms, longer than the election timeouts, so a
/// restarted node could time out and stand for election (disrupting the
/// leader) before the leader's next attempt reached it. A refused
/// connection costs little; retrying every 50 ms lets the leader's first
/// heartbeat arrive within a few milliseconds of the node listening.
const UNREACHABLE_BACKOFF: Duration = Duration::from_millis(50);

impl RaftNetwork<TypeConfig> for TlsPeer {
    fn backoff(&self) -> openraft::network::Backoff {
        openraft::network::Backoff::new(std::iter::repeat(UNREACHABLE_BACKOFF))
    }

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, NodeInfo, RaftError<NodeId>>> {
        self.call("/raft/append", &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, NodeInfo, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call("/raft/snapshot", &SnapshotChunk::from(rpc), &option)
            .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, NodeInfo, RaftError<NodeId>>> {
        self.call("/raft/vote", &rpc, &option).await
    }
}
