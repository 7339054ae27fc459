//! The cluster: status, nodes and VIPs, traffic and events, removing,
//! draining and undraining nodes, the Raft timing, and rotating the cluster
//! secret and CA.

use axum::extract::{Path, Query, State};
use axum::{Extension, Json};
use http::StatusCode;
use keel_model::ClusterCommand;
use keel_web_core::access::Caller;
use keel_web_core::{commit, ApiError, ControlPlane, NodeStatus};
use serde::{Deserialize, Serialize};

use super::AppState;

pub(super) async fn traffic<C: ControlPlane>(
    State(app): AppState<C>,
) -> Json<keel_web_core::Traffic> {
    Json(app.control.traffic())
}

/// `GET /api/v1/events`: the cluster's change history (who changed what)
/// merged with what this node saw happen, oldest first.
pub(super) async fn events<C: ControlPlane>(
    State(app): AppState<C>,
) -> Json<Vec<keel_web_core::Event>> {
    let (_, state) = app.control.state();
    let mut events: Vec<keel_web_core::Event> = state
        .history
        .iter()
        .map(|h| keel_web_core::Event {
            at: h.at,
            kind: h.kind.clone().unwrap_or_else(|| "config".into()),
            message: h.what.join("; "),
            by: Some(h.by.clone()),
        })
        .chain(app.control.events())
        .collect();
    events.sort_by_key(|e| e.at);
    Json(events)
}

pub(super) async fn status<C: ControlPlane>(
    State(app): AppState<C>,
) -> Json<keel_web_core::ClusterStatus> {
    Json(app.control.status().await)
}

pub(super) async fn nodes<C: ControlPlane>(State(app): AppState<C>) -> Json<Vec<NodeStatus>> {
    Json(app.control.status().await.nodes)
}

/// A load balancer's VIP and the node holding it now.
#[derive(Debug, Serialize)]
pub(super) struct VipStatus {
    pub(super) load_balancer: String,
    pub(super) vip: String,
    /// Nodes holding it (one after convergence; none while it moves).
    pub(super) holders: Vec<String>,
}

pub(super) async fn vips<C: ControlPlane>(State(app): AppState<C>) -> Json<Vec<VipStatus>> {
    let (_, state) = app.control.state();
    let status = app.control.status().await;
    let list = state
        .spec
        .load_balancers
        .values()
        .filter_map(|lb| {
            let vip = lb.vip.as_ref()?.to_string();
            let holders = status
                .nodes
                .iter()
                .filter(|n| n.vips.contains(&vip))
                .map(|n| n.name.clone())
                .collect();
            Some(VipStatus {
                load_balancer: lb.name.clone(),
                vip,
                holders,
            })
        })
        .collect();
    Json(list)
}

pub(super) async fn remove_node<C: ControlPlane>(
    State(app): AppState<C>,
    Extension(Caller { user: caller, .. }): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    app.control.remove_node(&name, &caller).await?;
    tracing::info!(node = %name, by = %caller, "node removed");
    Ok(StatusCode::NO_CONTENT)
}

/// `keel node drain NAME` (`drained`): the node hands its VIPs and
/// leadership to another and keeps serving on its own addresses; refused
/// when no other voter would be left to lead. `keel node undrain NAME`: it
/// may hold VIPs and lead again.
pub(super) async fn drain_node<C: ControlPlane>(
    State(app): AppState<C>,
    Extension(Caller { user: caller, .. }): Extension<Caller>,
    Path(name): Path<String>,
    drained: bool,
) -> Result<StatusCode, ApiError> {
    set_drained(&*app.control, &caller, &name, drained).await?;
    tracing::info!(node = %name, by = %caller, drained, "node drain set");
    Ok(StatusCode::NO_CONTENT)
}

/// `PUT /api/v1/cluster/timing` (`keel timing set`): the Raft timing every
/// node runs from its next start. Checked before it is proposed; every node
/// keeps it and `keel status` names the nodes still to restart.
pub(super) async fn set_timing<C: ControlPlane>(
    State(app): AppState<C>,
    Extension(Caller { user: caller, .. }): Extension<Caller>,
    body: axum::body::Bytes,
) -> Result<StatusCode, ApiError> {
    let timing: keel_model::Timing = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("not a timing: {e}")))?;
    if let Err((field, why)) = timing.check() {
        return Err(ApiError::field(field, why));
    }
    commit(&*app.control, &caller, ClusterCommand::SetTiming(timing)).await?;
    tracing::info!(%timing, by = %caller, "cluster timing set");
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/v1/cluster/secret/rotate` (`keel secrets rotate`): a new
/// cluster secret. Every node seals gossip with the key derived from it as
/// soon as it applies the change, and opens the old one for a while after,
/// so gossip runs through it.
pub(super) async fn rotate_secret<C: ControlPlane>(
    State(app): AppState<C>,
    Extension(Caller { user: caller, .. }): Extension<Caller>,
) -> Result<StatusCode, ApiError> {
    let secret = keel_model::ClusterSecret::new(keel_web_core::random_hex(32));
    let (_, state) = app.control.state();
    // The AWS secrets go under the new secret in the same entry.
    let reseal = keel_web_core::awskeys::reseal(&state, &secret);
    commit(
        &*app.control,
        &caller,
        ClusterCommand::Atomic(vec![ClusterCommand::SetSecret(secret), reseal]),
    )
    .await?;
    tracing::info!(by = %caller, "cluster secret rotated");
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/v1/cluster/ca` (`keel ca`): the CA that signs, those
/// trusted, and how far a rotation has come on every member.
pub(super) async fn cluster_ca<C: ControlPlane>(
    State(app): AppState<C>,
) -> Result<Json<keel_web_core::CaStatus>, ApiError> {
    Ok(Json(app.control.ca().await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RotateCaQuery {
    /// Drop the new CA before it signs.
    #[serde(default)]
    pub(super) abandon: bool,
}

/// `POST /api/v1/cluster/ca/rotate` (`keel ca rotate`): the next step of a
/// CA rotation (begin: trust a new CA; then sign with it; then drop the
/// old one), or `?abandon=true`. 409 naming the members it waits for.
pub(super) async fn rotate_ca<C: ControlPlane>(
    State(app): AppState<C>,
    Extension(Caller { user: caller, .. }): Extension<Caller>,
    Query(query): Query<RotateCaQuery>,
) -> Result<Json<keel_web_core::CaStatus>, ApiError> {
    let status = app.control.rotate_ca(&caller, query.abandon).await?;
    tracing::info!(by = %caller, stage = %status.stage, "cluster CA rotation: took a step");
    Ok(Json(status))
}

pub(super) async fn set_drained<C: ControlPlane>(
    control: &C,
    caller: &str,
    name: &str,
    drained: bool,
) -> Result<(), ApiError> {
    let nodes = control.status().await.nodes;
    let node = nodes.iter().find(|n| n.name == name).ok_or_else(|| {
        keel_web_core::ControlError::NotFound(format!("node {name:?} is not a member"))
    })?;
    let id = u64::from_str_radix(&node.id, 16).map_err(|_| {
        keel_web_core::ControlError::NotFound(format!("node {name:?} has no valid id"))
    })?;
    if drained {
        let leaders = nodes
            .iter()
            .filter(|n| n.name != name && n.role != "learner" && !n.drained)
            .count();
        if leaders == 0 {
            return Err(keel_web_core::ControlError::Conflict(format!(
                "cannot drain {name}: no other voter is left undrained to lead the cluster \
                 (undrain one first)"
            ))
            .into());
        }
    }
    commit(control, caller, ClusterCommand::DrainNode { id, drained }).await?;
    Ok(())
}
