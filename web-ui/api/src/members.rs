//! Pool members, one command each: add, drain or enable, remove (never a
//! rewrite of the member list).

use std::net::SocketAddr;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::{Extension, Json};
use http::StatusCode;
use keel_model::{ClusterCommand, Command};
use keel_web_core::access::Caller;
use keel_web_core::{commit, managed, ApiError, ControlPlane};
use serde::Deserialize;

use super::{AppState, Manager};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct MemberChange {
    pub(super) enabled: bool,
}

/// `PATCH /api/v1/pools/{name}/members/{address}` with `{"enabled": false}`
/// drains a member (no new requests; open ones finish within the pool's
/// drain timeout); `true` puts it back.
pub(super) async fn set_member<C: ControlPlane>(
    State(app): AppState<C>,
    Extension(Caller { user: caller, .. }): Extension<Caller>,
    Extension(Manager(manager)): Extension<Manager>,
    Path((pool, address)): Path<(String, String)>,
    body: Result<Json<MemberChange>, JsonRejection>,
) -> Result<StatusCode, ApiError> {
    let Json(change) = body?;
    let (_, state) = app.control.state();
    let Some(spec) = state.spec.pools.get(&pool) else {
        return Err(ApiError::not_found(format!("pool {pool:?} does not exist")));
    };
    let Some(member) = spec
        .members
        .iter()
        .find(|m| m.address.to_string() == address)
    else {
        return Err(ApiError::not_found(format!(
            "pool {pool:?} has no member {address:?}"
        )));
    };
    let command = ClusterCommand::Spec(Command::SetMemberEnabled {
        pool,
        address: member.address,
        enabled: change.enabled,
    });
    commit(
        &*app.control,
        &caller,
        managed(&*app.control, &manager, command),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct MemberBody {
    /// Share of new traffic, 0-1000 (default 1).
    #[serde(default)]
    pub(super) weight: Option<u32>,
    /// False: added drained (default true).
    #[serde(default)]
    pub(super) enabled: Option<bool>,
}

/// The member address in a URL, or a 422 naming it.
pub(super) fn member_address(address: &str) -> Result<SocketAddr, ApiError> {
    address.parse().map_err(|_| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            format!("address: {address:?} is not IP:PORT"),
        )
    })
}

/// `PUT /api/v1/pools/{name}/members/{address}` with `{"weight": 3}`:
/// adds the member, or replaces it (one member: the rest of the pool is
/// untouched, so a registration or another writer loses nothing).
pub(super) async fn put_member<C: ControlPlane>(
    State(app): AppState<C>,
    Extension(Caller { user: caller, .. }): Extension<Caller>,
    Extension(Manager(manager)): Extension<Manager>,
    Path((pool, address)): Path<(String, String)>,
    body: Result<Json<MemberBody>, JsonRejection>,
) -> Result<StatusCode, ApiError> {
    let Json(body) = body?;
    let address = member_address(&address)?;
    let (_, state) = app.control.read().await?;
    let Some(spec) = state.spec.pools.get(&pool) else {
        return Err(ApiError::not_found(format!("pool {pool:?} does not exist")));
    };
    let existed = spec.members.iter().any(|m| m.address == address);
    let command = ClusterCommand::Spec(Command::UpsertMember {
        pool,
        member: keel_model::Member {
            address,
            weight: body.weight.unwrap_or(1),
            enabled: body.enabled.unwrap_or(true),
        },
    });
    commit(
        &*app.control,
        &caller,
        managed(&*app.control, &manager, command),
    )
    .await?;
    Ok(if existed {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::CREATED
    })
}

/// `DELETE /api/v1/pools/{name}/members/{address}`: removes one member; it
/// drains (requests under way finish within the pool's drain timeout).
pub(super) async fn delete_member<C: ControlPlane>(
    State(app): AppState<C>,
    Extension(Caller { user: caller, .. }): Extension<Caller>,
    Extension(Manager(manager)): Extension<Manager>,
    Path((pool, address)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let address = member_address(&address)?;
    let command = ClusterCommand::Spec(Command::RemoveMember { pool, address });
    commit(
        &*app.control,
        &caller,
        managed(&*app.control, &manager, command),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}
