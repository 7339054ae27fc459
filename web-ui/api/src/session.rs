//! Logging in and out: `POST /api/v1/login` (a bearer token, or the
//! dashboard's session cookie), `/logout`, `GET /api/v1/session`.

use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use http::{header, StatusCode};
use keel_model::{ApiToken, ClusterCommand, SESSION_PREFIX};
use keel_web_core::access::Caller;
use keel_web_core::auth::{csrf_token, new_bearer, SESSION_COOKIE};
use keel_web_core::{now, ApiError, ControlPlane};
use serde::{Deserialize, Serialize};

use super::{AppState, ClientIp, Credential};

/// How long a login session token lasts.
pub(super) const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);

pub(super) fn set_cookie(value: &str, max_age: u64, tls: bool) -> String {
    let secure = if tls { "; Secure" } else { "" };
    format!(
        "{SESSION_COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}"
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LoginRequest {
    #[serde(default = "admin")]
    pub(super) user: String,
    pub(super) password: String,
    /// Answer with a session cookie (HttpOnly) and a CSRF token instead of
    /// a bearer token in the body: the dashboard's way in.
    #[serde(default)]
    pub(super) cookie: bool,
}

pub(super) fn admin() -> String {
    "admin".into()
}

#[derive(Serialize)]
pub(super) struct LoginAnswer {
    /// The bearer token (absent when it went into the cookie).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) token: Option<String>,
    /// With the cookie: the header value for state-changing requests.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) csrf: Option<String>,
    pub(super) expires_at: u64,
    pub(super) must_change_password: bool,
}

pub(super) async fn login<C: ControlPlane>(
    State(app): AppState<C>,
    Extension(ClientIp(ip)): Extension<ClientIp>,
    body: Result<Json<LoginRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(req) = body?;
    let (_, state) = app.control.state();
    let user = state.users.get(&req.user).cloned();
    let hash = user.as_ref().map(|u| u.password_hash.as_str());
    let matched = app
        .options
        .passwords
        .check(ip, &req.user, &req.password, hash)
        .await?;
    let user = match user {
        Some(u) if matched => u,
        _ => {
            tracing::warn!(client = %ip, user = %req.user, "failed admin login");
            return Err(ApiError::unauthorized("wrong user name or password"));
        }
    };
    // Sessions expire; forget the expired ones as new ones are made.
    if state
        .api_tokens
        .values()
        .any(|t| t.expires_at.is_some_and(|at| at <= now()))
    {
        app.control
            .propose(ClusterCommand::PurgeExpiredApiTokens { now: now() })
            .await?;
    }
    let (id, token, secret_sha256) = new_bearer();
    let expires_at = now() + SESSION_TTL.as_secs();
    app.control
        .propose(ClusterCommand::CreateApiToken {
            id,
            token: ApiToken {
                name: format!("{SESSION_PREFIX}{}", req.user),
                user: req.user.clone(),
                secret_sha256,
                created_at: now(),
                expires_at: Some(expires_at),
                role: None,
                load_balancers: Vec::new(),
                pools: Vec::new(),
            },
        })
        .await?;
    tracing::info!(client = %ip, user = %req.user, cookie = req.cookie, "admin login");
    let must_change_password = user.must_change_password;
    if req.cookie {
        let cookie = set_cookie(&token, SESSION_TTL.as_secs(), app.options.tls);
        let answer = LoginAnswer {
            token: None,
            csrf: Some(csrf_token(&token)),
            expires_at,
            must_change_password,
        };
        return Ok(([(header::SET_COOKIE, cookie)], Json(answer)).into_response());
    }
    Ok(Json(LoginAnswer {
        token: Some(token),
        csrf: None,
        expires_at,
        must_change_password,
    })
    .into_response())
}

/// `POST /api/v1/logout`: revoke the token the request came with (the
/// session, for the dashboard) and clear the cookie.
pub(super) async fn logout<C: ControlPlane>(
    State(app): AppState<C>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, ApiError> {
    app.control
        .propose(ClusterCommand::RevokeApiToken {
            id: caller.token.clone(),
        })
        .await?;
    tracing::info!(user = %caller.user, "logout");
    let cookie = set_cookie("", 0, app.options.tls);
    Ok(([(header::SET_COOKIE, cookie)], StatusCode::NO_CONTENT).into_response())
}

#[derive(Serialize)]
pub(super) struct SessionView {
    pub(super) user: String,
    /// What the caller may do (the lesser of the user's role and the
    /// token's).
    pub(super) role: keel_model::Role,
    /// For cookie sessions: the `X-CSRF-Token` value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) csrf: Option<String>,
    pub(super) expires_at: Option<u64>,
    pub(super) must_change_password: bool,
}

/// `GET /api/v1/session`: who the caller is, and (for the dashboard, after
/// a reload) the CSRF token of its cookie session.
pub(super) async fn session<C: ControlPlane>(
    State(app): AppState<C>,
    Extension(caller): Extension<Caller>,
    Extension(credential): Extension<Credential>,
) -> Json<SessionView> {
    let (_, state) = app.control.state();
    let expires_at = state
        .api_tokens
        .get(&caller.token)
        .and_then(|t| t.expires_at);
    Json(SessionView {
        must_change_password: caller.must_change_password,
        csrf: credential.cookie.then(|| csrf_token(&credential.token)),
        role: caller.role,
        user: caller.user,
        expires_at,
    })
}
