//! The instance registry (`keel instance`): instance IDs and their
//! addresses, which both ELB APIs resolve.

use std::net::IpAddr;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::{Extension, Json};
use http::StatusCode;
use keel_web_core::access::Caller;
use keel_web_core::{commit, ApiError, ControlPlane};
use serde::{Deserialize, Serialize};

use super::AppState;

/// An entry of the instance registry: the address an instance ID stands
/// for in the classic ELB API.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Instance {
    #[serde(default, skip_deserializing)]
    pub(super) id: String,
    pub(super) address: IpAddr,
}

pub(super) async fn list_instances<C: ControlPlane>(
    State(app): AppState<C>,
) -> Json<Vec<Instance>> {
    let (_, state) = app.control.state();
    Json(
        keel_web_core::instances::all(&state)
            .map(|(id, address)| Instance { id, address })
            .collect(),
    )
}

pub(super) async fn fetch_instance<C: ControlPlane>(
    State(app): AppState<C>,
    Path(id): Path<String>,
) -> Result<Json<Instance>, ApiError> {
    let (_, state) = app.control.state();
    let found = keel_web_core::instances::all(&state).find(|(i, _)| *i == id);
    found
        .map(|(id, address)| Json(Instance { id, address }))
        .ok_or_else(|| ApiError::not_found(format!("no instance {id:?}")))
}

/// `PUT /api/v1/instances/{id}` `{"address": IP}`: adds or moves an instance.
pub(super) async fn put_instance<C: ControlPlane>(
    State(app): AppState<C>,
    Extension(Caller { user: caller, .. }): Extension<Caller>,
    Path(id): Path<String>,
    body: Result<Json<Instance>, JsonRejection>,
) -> Result<Json<Instance>, ApiError> {
    let Json(req) = body?;
    keel_web_core::instances::check_id(&id).map_err(|m| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            format!("id: {m}"),
        )
    })?;
    commit(
        &*app.control,
        &caller,
        keel_web_core::instances::register(&id, Some(req.address)),
    )
    .await?;
    Ok(Json(Instance {
        id,
        address: req.address,
    }))
}

pub(super) async fn remove_instance<C: ControlPlane>(
    State(app): AppState<C>,
    Extension(Caller { user: caller, .. }): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let (_, state) = app.control.state();
    if !keel_web_core::instances::all(&state).any(|(i, _)| i == id) {
        return Err(ApiError::not_found(format!("no instance {id:?}")));
    }
    commit(
        &*app.control,
        &caller,
        keel_web_core::instances::register(&id, None),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}
