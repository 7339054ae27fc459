//! Keel's admin REST API under `/api/v1`: the config (declarative apply
//! with field managers, pruning and resource versions), load balancers,
//! pools and members, the instance registry, users and roles, credentials,
//! certificates, the cluster (nodes, drain, timing, secret and CA
//! rotation), backups, and the OpenAPI document of it all.
//!
//! Every request is authenticated (a bearer token, or the dashboard's
//! session cookie with its CSRF token: see [`authenticate`]) and
//! authorised by role (`keel_web_core::access`) before its handler runs.
//!
//! One file per resource, each with its handlers, bodies and answers:
//! `session`, `config`, `objects` (load balancers, pools, certificates),
//! `members`, `registration`, `instances`, `users`, `credentials`,
//! `cluster`, `backup`; `openapi` documents them all.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, DefaultBodyLimit, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use http::{header, HeaderMap, StatusCode};
use keel_model::{CertificateDoc, LoadBalancerDoc, PoolDoc};
use keel_web_core::access::authorize;
use keel_web_core::auth::{check_bearer, check_registration, csrf_token, session_cookie};
use keel_web_core::{now, ApiError, ControlPlane, PasswordGate};

pub mod backup;
mod certs;
mod cluster;
mod config;
mod credentials;
mod instances;
mod members;
mod objects;
mod openapi;
mod registration;
mod session;
mod users;

use backup::backup;
use cluster::{
    cluster_ca, drain_node, events, nodes, remove_node, rotate_ca, rotate_secret, set_timing,
    status, traffic, vips,
};
use config::{get_config, managers, patch_config, put_config};
use instances::{fetch_instance, list_instances, put_instance, remove_instance};
use members::{delete_member, put_member, set_member};
use objects::{create, fetch, list, remove, replace};
use registration::{deregister, register};
use session::{login, logout, session};

/// Largest request body the API reads.
const BODY_LIMIT: usize = 1 << 20;

pub(crate) struct App<C> {
    pub(crate) control: Arc<C>,
    pub(crate) options: Options,
}

/// The header that must carry [`csrf_token`] on state-changing requests
/// made with the session cookie.
const CSRF_HEADER: &str = "x-csrf-token";

pub(crate) type AppState<C> = State<Arc<App<C>>>;

/// The token the caller authenticated with, and whether it came as the
/// session cookie.
#[derive(Clone)]
struct Credential {
    token: String,
    cookie: bool,
}

/// The client's address (unspecified when unknown, e.g. in-process tests).
#[derive(Clone, Copy)]
pub(crate) struct ClientIp(pub(crate) IpAddr);

/// How the admin API is served.
#[derive(Clone, Default)]
pub struct Options {
    /// The admin address serves TLS, so session cookies are marked `Secure`.
    pub tls: bool,
    /// The node's password gate (shared with the Octavia API).
    pub passwords: PasswordGate,
}

/// The `/api/v1` router over a control plane.
pub fn router<C: ControlPlane>(control: Arc<C>, options: Options) -> Router {
    let app = Arc::new(App { control, options });
    Router::new()
        .route("/api/v1/openapi.json", get(crate::openapi::document))
        .route("/api/v1/login", post(login::<C>))
        .route("/api/v1/logout", post(logout::<C>))
        .route("/api/v1/session", get(session::<C>))
        .route("/api/v1/status", get(status::<C>))
        .route("/api/v1/traffic", get(traffic::<C>))
        .route("/api/v1/events", get(events::<C>))
        .route(
            "/api/v1/config",
            get(get_config::<C>)
                .put(put_config::<C>)
                .patch(patch_config::<C>),
        )
        .route("/api/v1/managers", get(managers::<C>))
        .route("/api/v1/backup", post(backup::<C>))
        .route(
            "/api/v1/load-balancers",
            get(list::<C, LoadBalancerDoc>).post(create::<C, LoadBalancerDoc>),
        )
        .route(
            "/api/v1/load-balancers/{name}",
            get(fetch::<C, LoadBalancerDoc>)
                .put(replace::<C, LoadBalancerDoc>)
                .delete(remove::<C, LoadBalancerDoc>),
        )
        .route(
            "/api/v1/pools",
            get(list::<C, PoolDoc>).post(create::<C, PoolDoc>),
        )
        .route(
            "/api/v1/pools/{name}",
            get(fetch::<C, PoolDoc>)
                .put(replace::<C, PoolDoc>)
                .delete(remove::<C, PoolDoc>),
        )
        .route(
            "/api/v1/pools/{name}/members/{address}",
            axum::routing::patch(set_member::<C>)
                .put(put_member::<C>)
                .delete(delete_member::<C>),
        )
        .route(
            "/api/v1/certificates",
            get(list::<C, CertificateDoc>).post(create::<C, CertificateDoc>),
        )
        .route(
            "/api/v1/certificates/{name}",
            get(fetch::<C, CertificateDoc>)
                .put(replace::<C, CertificateDoc>)
                .delete(remove::<C, CertificateDoc>),
        )
        .route("/api/v1/nodes", get(nodes::<C>))
        .route("/api/v1/vips", get(vips::<C>))
        .route(
            "/api/v1/nodes/{name}",
            axum::routing::delete(remove_node::<C>),
        )
        .route(
            "/api/v1/nodes/{name}/drain",
            post(|app, caller, name| drain_node::<C>(app, caller, name, true)),
        )
        .route(
            "/api/v1/nodes/{name}/undrain",
            post(|app, caller, name| drain_node::<C>(app, caller, name, false)),
        )
        .route(
            "/api/v1/cluster/timing",
            axum::routing::put(set_timing::<C>),
        )
        .route(
            "/api/v1/cluster/secret/rotate",
            axum::routing::post(rotate_secret::<C>),
        )
        .route("/api/v1/cluster/ca", get(cluster_ca::<C>))
        .route(
            "/api/v1/cluster/ca/rotate",
            axum::routing::post(rotate_ca::<C>),
        )
        .route(
            "/api/v1/users",
            get(users::list::<C>).post(users::create::<C>),
        )
        .route(
            "/api/v1/users/{name}",
            axum::routing::patch(users::change::<C>).delete(users::delete::<C>),
        )
        .route(
            "/api/v1/users/{name}/password",
            post(users::set_password::<C>),
        )
        .merge(credentials::routes::<C, credentials::Join>(
            "/api/v1/tokens",
        ))
        .merge(credentials::routes::<C, credentials::Api>(
            "/api/v1/api-tokens",
        ))
        .merge(credentials::routes::<C, credentials::Registration>(
            "/api/v1/registration-tokens",
        ))
        .merge(credentials::routes::<C, credentials::AwsKey>(
            "/api/v1/aws-keys",
        ))
        .route("/api/v1/instances", get(list_instances::<C>))
        .route(
            "/api/v1/instances/{id}",
            get(fetch_instance::<C>)
                .put(put_instance::<C>)
                .delete(remove_instance::<C>),
        )
        .route("/api/v1/register", post(register::<C>))
        .route("/api/v1/deregister", post(deregister::<C>))
        .fallback(|| async { ApiError::not_found("no such API endpoint") })
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            authenticate::<C>,
        ))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(app)
}

/// Everything but login and the OpenAPI document needs a bearer token, or
/// the dashboard's session cookie. A request that changes something with the
/// cookie must also carry the session's CSRF token in `X-CSRF-Token`: the
/// browser sends cookies on its own, the header only the dashboard's script
/// can set (SameSite=Strict is the first line, this the second).
async fn authenticate<C: ControlPlane>(
    State(app): AppState<C>,
    mut request: Request,
    next: Next,
) -> Response {
    let ip = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip());
    request.extensions_mut().insert(ClientIp(ip));
    let manager = match request_manager(request.headers()) {
        Ok(m) => m,
        Err(e) => return e.into_response(),
    };
    request.extensions_mut().insert(manager);
    let path = request.uri().path();
    // Login proves itself; (de)registration checks its own pool-scoped token.
    if matches!(
        path,
        "/api/v1/login" | "/api/v1/openapi.json" | "/api/v1/register" | "/api/v1/deregister"
    ) {
        return next.run(request).await;
    }
    let bearer = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_owned());
    let credential =
        match (bearer, session_cookie(request.headers())) {
            (Some(token), _) => Credential {
                token,
                cookie: false,
            },
            (None, Some(token)) => Credential {
                token,
                cookie: true,
            },
            (None, None) => return ApiError::unauthorized(
                "authentication required: send Authorization: Bearer <token> (see `keel login`)",
            )
            .into_response(),
        };
    let (_, state) = app.control.state();
    let Some(caller) = check_bearer(&state, &credential.token, now()) else {
        if let Some((_, pool)) = check_registration(&state, &credential.token, now()) {
            return ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!(
                    "a registration token may only register and deregister members of pool \
                     {pool:?} (POST /api/v1/register, /api/v1/deregister)"
                ),
            )
            .into_response();
        }
        return ApiError::unauthorized("the token is unknown, revoked or expired").into_response();
    };
    let user = caller.user.clone();
    let safe = matches!(
        *request.method(),
        http::Method::GET | http::Method::HEAD | http::Method::OPTIONS
    );
    if credential.cookie && !safe {
        let sent = request
            .headers()
            .get(CSRF_HEADER)
            .map(|v| v.as_bytes().to_vec())
            .unwrap_or_default();
        if !keel_model::constant_time_eq(&sent, csrf_token(&credential.token).as_bytes()) {
            tracing::warn!(client = %ip, user = %user, path = %path, "request refused: missing or wrong CSRF token");
            return ApiError::new(
                StatusCode::FORBIDDEN,
                "csrf",
                "a change made with the session cookie needs the session's X-CSRF-Token header (GET /api/v1/session gives it)",
            )
            .into_response();
        }
    }
    if let Err(refused) = authorize(&caller, request.method(), path) {
        tracing::info!(client = %ip, user = %user, method = %request.method(), path = %path, "request refused: {}", refused.message());
        return refused.into_response();
    }
    if credential.cookie && request.headers().get(MANAGER_HEADER).is_none() {
        request
            .extensions_mut()
            .insert(Manager("dashboard".to_owned()));
    }
    request.extensions_mut().insert(caller);
    request.extensions_mut().insert(credential);
    next.run(request).await
}

/// The header a client names its manager in (`keel` sends `cli`).
pub(crate) const MANAGER_HEADER: &str = "keel-manager";

/// Who a request writes as (see [`keel_model::ObjectRef`]'s managers): the
/// `Keel-Manager` header, else `dashboard` for the session cookie, else
/// `api`.
#[derive(Debug, Clone)]
pub(crate) struct Manager(pub String);

fn request_manager(headers: &HeaderMap) -> Result<Manager, ApiError> {
    let Some(value) = headers.get(MANAGER_HEADER) else {
        return Ok(Manager("api".to_owned()));
    };
    let name = value.to_str().unwrap_or("\u{fffd}").trim();
    keel_model::check_manager(name).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("{MANAGER_HEADER}: {e}"),
        )
    })?;
    Ok(Manager(name.to_owned()))
}
