//! Users: `/api/v1/users` (API tokens are in `credentials.rs`).
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
use keel_model::{check_user_name, ClusterCommand, Role, User};
use keel_web_core::access::Caller;
use keel_web_core::commit;
use keel_web_core::ApiError;
use keel_web_core::ControlPlane;
use serde::{Deserialize, Serialize};

use crate::{AppState, ClientIp};

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
            .await?;
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
    tokio::task::spawn_blocking(move || keel_web_core::hash_password(&password))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)
}
