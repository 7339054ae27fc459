//! Users and API tokens: `/api/v1/users` and `/api/v1/api-tokens`.
//!
//! An admin creates users (with a password the user must change at their
//! first login), changes their role and deletes them; a password someone
//! else set is one the user must change; any password change ends the
//! user's other login sessions. Changing your own password needs the
//! current one, checked through the node's password gate like a login.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::{Extension, Json};
use http::StatusCode;
use keel_model::{check_user_name, ApiToken, ClusterCommand, ClusterState, Role, User};
use serde::{Deserialize, Serialize};

use crate::access::Caller;
use crate::api::{check_token_name, commit, expiry, now, AppState, ClientIp};
use crate::auth::new_bearer;
use crate::error::ApiError;
use crate::ControlPlane;

/// Fewest characters a password may have.
const MIN_PASSWORD: usize = 12;

#[derive(Serialize)]
pub(crate) struct UserView {
    name: String,
    role: Role,
    must_change_password: bool,
    /// Login sessions open now.
    sessions: usize,
    /// Other API tokens acting as the user.
    api_tokens: usize,
}

/// `GET /api/v1/users`.
pub(crate) async fn list<C: ControlPlane>(State(app): AppState<C>) -> Json<Vec<UserView>> {
    let (_, state) = app.control.state();
    let count = |name: &str, session: bool| {
        state
            .api_tokens
            .values()
            .filter(|t| t.user == name && t.name.starts_with(keel_model::SESSION_PREFIX) == session)
            .count()
    };
    Json(
        state
            .users
            .iter()
            .map(|(name, u)| UserView {
                name: name.clone(),
                role: u.role,
                must_change_password: u.must_change_password,
                sessions: count(name, true),
                api_tokens: count(name, false),
            })
            .collect(),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewUser {
    name: String,
    /// Default: viewer.
    #[serde(default = "viewer")]
    role: Role,
    /// A first password, which the user must change at their first login.
    password: String,
}

fn viewer() -> Role {
    Role::Viewer
}

/// `POST /api/v1/users`: a new user, who must change the password an
/// admin gave them before doing anything else.
pub(crate) async fn create<C: ControlPlane>(
    State(app): AppState<C>,
    Extension(caller): Extension<Caller>,
    body: Result<Json<NewUser>, JsonRejection>,
) -> Result<(StatusCode, Json<UserView>), ApiError> {
    let Json(req) = body?;
    check_user_name(&req.name).map_err(|e| ApiError::field("name", e))?;
    let password_hash = hash(req.password).await?;
    commit(
        &*app.control,
        &caller.user,
        ClusterCommand::CreateUser {
            name: req.name.clone(),
            user: User {
                password_hash,
                must_change_password: true,
                role: req.role,
            },
        },
    )
    .await?;
    tracing::info!(user = %req.name, role = %req.role, by = %caller.user, "user created");
    Ok((
        StatusCode::CREATED,
        Json(UserView {
            name: req.name,
            role: req.role,
            must_change_password: true,
            sessions: 0,
            api_tokens: 0,
        }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UserChange {
    role: Role,
}

/// `PATCH /api/v1/users/{name}` with `{"role": …}`: takes effect on the
/// user's next request, with every token they hold.
pub(crate) async fn change<C: ControlPlane>(
    State(app): AppState<C>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    body: Result<Json<UserChange>, JsonRejection>,
) -> Result<StatusCode, ApiError> {
    let Json(change) = body?;
    commit(
        &*app.control,
        &caller.user,
        ClusterCommand::SetRole {
            name: name.clone(),
            role: change.role,
        },
    )
    .await?;
    tracing::info!(user = %name, role = %change.role, by = %caller.user, "role changed");
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /api/v1/users/{name}`: with every token and AWS key acting as
/// them.
pub(crate) async fn delete<C: ControlPlane>(
    State(app): AppState<C>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    commit(
        &*app.control,
        &caller.user,
        ClusterCommand::DeleteUser { name: name.clone() },
    )
    .await?;
    tracing::info!(user = %name, by = %caller.user, "user deleted");
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PasswordRequest {
    password: String,
    /// Needed to change your own password.
    current_password: Option<String>,
}

/// `POST /api/v1/users/{name}/password`: your own (with the current
/// password; your other sessions end), or, for an admin, anyone's (they
/// must change it at their next login; their sessions end).
pub(crate) async fn set_password<C: ControlPlane>(
    State(app): AppState<C>,
    Extension(caller): Extension<Caller>,
    Extension(ClientIp(ip)): Extension<ClientIp>,
    Path(name): Path<String>,
    body: Result<Json<PasswordRequest>, JsonRejection>,
) -> Result<StatusCode, ApiError> {
    let Json(req) = body?;
    let own = name == caller.user;
    if own {
        let Some(current) = req.current_password.as_deref() else {
            return Err(ApiError::field(
                "current_password",
                "changing your own password needs the current one",
            ));
        };
        let (_, state) = app.control.state();
        let stored = state.users.get(&name).map(|u| u.password_hash.as_str());
        let matched = app
            .options
            .passwords
            .check(ip, &name, current, stored)
            .await
            .map_err(|refused| {
                ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    refused.message(),
                )
            })?;
        if !matched {
            tracing::warn!(client = %ip, user = %name, "password change refused: wrong current password");
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "current_password: wrong password",
            ));
        }
    }
    let password_hash = hash(req.password).await?;
    commit(
        &*app.control,
        &caller.user,
        ClusterCommand::SetPassword {
            name: name.clone(),
            password_hash,
            must_change_password: !own,
            keep_session: own.then(|| caller.token.clone()),
        },
    )
    .await?;
    tracing::info!(user = %name, by = %caller.user, "password changed");
    Ok(StatusCode::NO_CONTENT)
}

/// The argon2 hash of a new password (off the async threads), once it is
/// long enough.
async fn hash(password: String) -> Result<String, ApiError> {
    if password.chars().count() < MIN_PASSWORD {
        return Err(ApiError::field(
            "password",
            format!("at least {MIN_PASSWORD} characters"),
        ));
    }
    tokio::task::spawn_blocking(move || crate::hash_password(&password))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)
}

#[derive(Serialize)]
pub(crate) struct ApiTokenView {
    id: String,
    name: String,
    user: String,
    created_at: u64,
    expires_at: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<Role>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    load_balancers: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pools: Vec<String>,
}

/// `GET /api/v1/api-tokens`.
pub(crate) async fn list_api_tokens<C: ControlPlane>(
    State(app): AppState<C>,
) -> Json<Vec<ApiTokenView>> {
    let (_, state) = app.control.state();
    Json(
        state
            .api_tokens
            .iter()
            .map(|(id, t)| ApiTokenView {
                id: id.clone(),
                name: t.name.clone(),
                user: t.user.clone(),
                created_at: t.created_at,
                expires_at: t.expires_at,
                role: t.role,
                load_balancers: t.load_balancers.clone(),
                pools: t.pools.clone(),
            })
            .collect(),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewApiToken {
    name: String,
    /// Default: until revoked.
    ttl: Option<String>,
    /// The user it acts as; default: the caller.
    user: Option<String>,
    /// At most this role; default: the user's.
    role: Option<Role>,
    /// Only these load balancers and pools may it change (default: any).
    #[serde(default)]
    load_balancers: Vec<String>,
    #[serde(default)]
    pools: Vec<String>,
}

#[derive(Serialize)]
pub(crate) struct CreatedApiToken {
    id: String,
    name: String,
    token: String,
    expires_at: Option<u64>,
}

/// `POST /api/v1/api-tokens`.
pub(crate) async fn create_api_token<C: ControlPlane>(
    State(app): AppState<C>,
    Extension(caller): Extension<Caller>,
    body: Result<Json<NewApiToken>, JsonRejection>,
) -> Result<(StatusCode, Json<CreatedApiToken>), ApiError> {
    let Json(req) = body?;
    check_token_name(&req.name)?;
    let expires_at = expiry(req.ttl.as_deref())?;
    let (_, state) = app.control.state();
    let user = req.user.unwrap_or_else(|| caller.user.clone());
    if !state.users.contains_key(&user) {
        return Err(ApiError::field(
            "user",
            format!("user {user:?} does not exist"),
        ));
    }
    check_scope(&state, &req.load_balancers, &req.pools)?;
    let (id, token, secret_sha256) = new_bearer();
    commit(
        &*app.control,
        &caller.user,
        ClusterCommand::CreateApiToken {
            id: id.clone(),
            token: ApiToken {
                name: req.name.clone(),
                user: user.clone(),
                secret_sha256,
                created_at: now(),
                expires_at,
                role: req.role,
                load_balancers: req.load_balancers,
                pools: req.pools,
            },
        },
    )
    .await?;
    tracing::info!(token = %id, name = %req.name, user = %user, by = %caller.user, "api token created");
    Ok((
        StatusCode::CREATED,
        Json(CreatedApiToken {
            id,
            name: req.name,
            token,
            expires_at,
        }),
    ))
}

/// A scope names only load balancers and pools that exist.
fn check_scope(
    state: &ClusterState,
    load_balancers: &[String],
    pools: &[String],
) -> Result<(), ApiError> {
    if let Some(lb) = load_balancers
        .iter()
        .find(|n| !state.spec.load_balancers.contains_key(*n))
    {
        return Err(ApiError::field(
            "load_balancers",
            format!("load balancer {lb:?} does not exist"),
        ));
    }
    if let Some(pool) = pools.iter().find(|n| !state.spec.pools.contains_key(*n)) {
        return Err(ApiError::field(
            "pools",
            format!("pool {pool:?} does not exist"),
        ));
    }
    Ok(())
}

/// `DELETE /api/v1/api-tokens/{id}`.
pub(crate) async fn revoke_api_token<C: ControlPlane>(
    State(app): AppState<C>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    commit(
        &*app.control,
        &caller.user,
        ClusterCommand::RevokeApiToken { id },
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}
