//! Backends that register and deregister themselves with a pool's
//! registration token.

use std::net::{IpAddr, SocketAddr};

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::{Extension, Json};
use http::{header, HeaderMap, StatusCode};
use keel_model::{ClusterCommand, Command};
use keel_web_core::access::authorize;
use keel_web_core::auth::check_bearer;
use keel_web_core::{commit, managed, now, ApiError, ControlPlane};
use serde::Deserialize;

use super::{App, AppState, ClientIp};

/// What a backend sends to register or deregister itself.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Registration {
    pub(super) pool: String,
    pub(super) address: String,
    /// Register only; default 1.
    pub(super) weight: Option<u32>,
}

/// Why a registration token may not register `member` from `client`, if it
/// may not. The cluster's own addresses are never members by registration
/// (a backend must not expose the admin API through the load balancer);
/// loopback, link-local, unspecified and multicast ones only when the
/// token's member ranges name them.
pub(super) fn registration_refusal(
    token: &keel_model::RegistrationToken,
    client: IpAddr,
    member: SocketAddr,
    cluster: &[SocketAddr],
) -> Option<String> {
    let within = |ranges: &[String], ip: IpAddr| {
        ranges
            .iter()
            .filter_map(|r| r.parse::<keel_model::Cidr>().ok())
            .any(|c| c.contains(ip))
    };
    if !token.sources.is_empty() && !within(&token.sources, client) {
        return Some(format!(
            "this token may only be used from {}",
            token.sources.join(", ")
        ));
    }
    let ip = member.ip().to_canonical();
    if cluster
        .iter()
        .any(|a| a.ip().to_canonical() == ip && a.port() == member.port())
    {
        return Some(format!("{member} is one of the cluster's own addresses"));
    }
    if !token.members.is_empty() {
        return (!within(&token.members, ip)).then(|| {
            format!(
                "this token may only register members in {}",
                token.members.join(", ")
            )
        });
    }
    let special = match ip {
        IpAddr::V4(v4) => {
            v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast()
        }
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || v6.is_unicast_link_local()
        }
    };
    special.then(|| {
        format!(
            "{ip} is a loopback, link-local, unspecified or multicast address; \
             a token may register it only if its member ranges include it"
        )
    })
}

/// The pool and address a (de)registration may change: the bearer must be
/// a registration token for that pool (used from where it allows, for a
/// member it allows), or an admin API token.
pub(super) fn registration_scope<C: ControlPlane>(
    app: &App<C>,
    client: IpAddr,
    headers: &HeaderMap,
    body: Result<Json<Registration>, JsonRejection>,
) -> Result<(String, Registration, SocketAddr), ApiError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(|| ApiError::unauthorized("send Authorization: Bearer <registration token>"))?;
    let (_, state) = app.control.state();
    let registration = keel_web_core::auth::check_registration(&state, token, now());
    let mut bearer = None;
    let by = match registration.as_ref().map(|(_, pool)| pool.clone()) {
        Some(pool) => (format!("registration token for {pool}"), Some(pool)),
        None => match check_bearer(&state, token, now()) {
            Some(caller) => {
                bearer = Some(caller.clone());
                (caller.user, None)
            }
            None => {
                return Err(ApiError::unauthorized(
                    "the token is unknown, revoked or expired",
                ))
            }
        },
    };
    let Json(reg) = body?;
    if let Some(caller) = &bearer {
        // An API token registers as it would change the pool.
        authorize(
            caller,
            &http::Method::PUT,
            &format!("/api/v1/pools/{}", reg.pool),
        )?;
    }
    if by.1.as_ref().is_some_and(|p| *p != reg.pool) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "this token may only change pool {:?}",
                by.1.unwrap_or_default()
            ),
        ));
    }
    if !state.spec.pools.contains_key(&reg.pool) {
        return Err(ApiError::not_found(format!(
            "pool {:?} does not exist",
            reg.pool
        )));
    }
    let address = reg.address.parse::<SocketAddr>().map_err(|_| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            "address: not a socket address (expected IP:PORT, [IPv6]:PORT for IPv6)",
        )
    })?;
    let token = registration.and_then(|(id, _)| state.registration_tokens.get(&id));
    if let Some(token) = token {
        let cluster = app.control.cluster_addresses();
        if let Some(why) = registration_refusal(token, client, address, &cluster) {
            return Err(ApiError::new(StatusCode::FORBIDDEN, "forbidden", why));
        }
    }
    Ok((by.0, reg, address))
}

/// `POST /api/v1/register`: adds (or updates) the caller as a member of a
/// pool. Idempotent.
pub(super) async fn register<C: ControlPlane>(
    State(app): AppState<C>,
    Extension(ClientIp(client)): Extension<ClientIp>,
    headers: HeaderMap,
    body: Result<Json<Registration>, JsonRejection>,
) -> Result<StatusCode, ApiError> {
    let (by, reg, address) = registration_scope(&app, client, &headers, body)?;
    let weight = reg.weight.unwrap_or(1);
    let command = ClusterCommand::Spec(Command::UpsertMember {
        pool: reg.pool.clone(),
        member: keel_model::Member {
            address,
            weight,
            enabled: true,
        },
    });
    commit(
        &*app.control,
        &by,
        managed(&*app.control, "registration", command),
    )
    .await?;
    tracing::info!(pool = %reg.pool, member = %address, by = %by, "member registered");
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/v1/deregister`: removes the caller from a pool; it drains
/// (requests under way finish within the pool's drain timeout).
pub(super) async fn deregister<C: ControlPlane>(
    State(app): AppState<C>,
    Extension(ClientIp(client)): Extension<ClientIp>,
    headers: HeaderMap,
    body: Result<Json<Registration>, JsonRejection>,
) -> Result<StatusCode, ApiError> {
    let (by, reg, address) = registration_scope(&app, client, &headers, body)?;
    let (_, state) = app.control.state();
    let present = state
        .spec
        .pools
        .get(&reg.pool)
        .is_some_and(|p| p.members.iter().any(|m| m.address == address));
    if present {
        commit(
            &*app.control,
            &by,
            ClusterCommand::Spec(Command::RemoveMember {
                pool: reg.pool.clone(),
                address,
            }),
        )
        .await?;
        tracing::info!(pool = %reg.pool, member = %address, by = %by, "member deregistered");
    }
    Ok(StatusCode::NO_CONTENT)
}
