//! Keel's admin REST API under `/api/v1`: the config (declarative apply
//! with field managers, pruning and resource versions), load balancers,
//! pools and members, the instance registry, users and roles, credentials,
//! certificates, the cluster (nodes, drain, timing, secret and CA
//! rotation), backups, and the OpenAPI document of it all.
//!
//! Every request is authenticated (a bearer token, or the dashboard's
//! session cookie with its CSRF token: see [`authenticate`]) and
//! authorised by role (`keel_web_core::access`) before its handler runs.

pub mod backup;
mod certs;
mod credentials;
mod openapi;
mod users;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::{BytesRejection, JsonRejection};
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Query, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use bytes::Bytes;
use http::{header, HeaderMap, StatusCode};
use keel_model::{
    ApiToken, CertificateDoc, ClusterCommand, ClusterState, Command, Document, FieldError,
    LoadBalancerDoc, Object, Path as FieldPath, PoolDoc, Segment, ValidationErrors, SESSION_PREFIX,
};
use serde::{Deserialize, Serialize};

use keel_web_core::access::{authorize, Caller};
use keel_web_core::auth::{
    check_bearer, check_registration, csrf_token, new_bearer, session_cookie, SESSION_COOKIE,
};
use keel_web_core::{commit, managed, now, ApiError, ControlPlane, NodeStatus, PasswordGate};

/// Largest request body the API reads.
const BODY_LIMIT: usize = 1 << 20;

/// How long a login session token lasts.
const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);

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

fn set_cookie(value: &str, max_age: u64, tls: bool) -> String {
    let secure = if tls { "; Secure" } else { "" };
    format!(
        "{SESSION_COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}"
    )
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
            axum::routing::post(drain_node::<C>),
        )
        .route(
            "/api/v1/nodes/{name}/undrain",
            axum::routing::post(undrain_node::<C>),
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginRequest {
    #[serde(default = "admin")]
    user: String,
    password: String,
    /// Answer with a session cookie (HttpOnly) and a CSRF token instead of
    /// a bearer token in the body: the dashboard's way in.
    #[serde(default)]
    cookie: bool,
}

fn admin() -> String {
    "admin".into()
}

#[derive(Serialize)]
struct LoginAnswer {
    /// The bearer token (absent when it went into the cookie).
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<String>,
    /// With the cookie: the header value for state-changing requests.
    #[serde(skip_serializing_if = "Option::is_none")]
    csrf: Option<String>,
    expires_at: u64,
    must_change_password: bool,
}

async fn login<C: ControlPlane>(
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
        .await
        .map_err(|refused| {
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                refused.message(),
            )
        })?;
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
async fn logout<C: ControlPlane>(
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
struct SessionView {
    user: String,
    /// What the caller may do (the lesser of the user's role and the
    /// token's).
    role: keel_model::Role,
    /// For cookie sessions: the `X-CSRF-Token` value.
    #[serde(skip_serializing_if = "Option::is_none")]
    csrf: Option<String>,
    expires_at: Option<u64>,
    must_change_password: bool,
}

/// `GET /api/v1/session`: who the caller is, and (for the dashboard, after
/// a reload) the CSRF token of its cookie session.
async fn session<C: ControlPlane>(
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

async fn traffic<C: ControlPlane>(State(app): AppState<C>) -> Json<keel_web_core::Traffic> {
    Json(app.control.traffic())
}

/// `GET /api/v1/events`: the cluster's change history (who changed what)
/// merged with what this node saw happen, oldest first.
async fn events<C: ControlPlane>(State(app): AppState<C>) -> Json<Vec<keel_web_core::Event>> {
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MemberChange {
    enabled: bool,
}

/// `PATCH /api/v1/pools/{name}/members/{address}` with `{"enabled": false}`
/// drains a member (no new requests; open ones finish within the pool's
/// drain timeout); `true` puts it back.
async fn set_member<C: ControlPlane>(
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
struct MemberBody {
    /// Share of new traffic, 0-1000 (default 1).
    #[serde(default)]
    weight: Option<u32>,
    /// False: added drained (default true).
    #[serde(default)]
    enabled: Option<bool>,
}

/// The member address in a URL, or a 422 naming it.
fn member_address(address: &str) -> Result<SocketAddr, ApiError> {
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
async fn put_member<C: ControlPlane>(
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
async fn delete_member<C: ControlPlane>(
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

async fn status<C: ControlPlane>(State(app): AppState<C>) -> Json<keel_web_core::ClusterStatus> {
    Json(app.control.status().await)
}

async fn nodes<C: ControlPlane>(State(app): AppState<C>) -> Json<Vec<NodeStatus>> {
    Json(app.control.status().await.nodes)
}

/// A load balancer's VIP and the node holding it now.
#[derive(Debug, Serialize)]
struct VipStatus {
    load_balancer: String,
    vip: String,
    /// Nodes holding it (one after convergence; none while it moves).
    holders: Vec<String>,
}

async fn vips<C: ControlPlane>(State(app): AppState<C>) -> Json<Vec<VipStatus>> {
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

async fn remove_node<C: ControlPlane>(
    State(app): AppState<C>,
    Extension(Caller { user: caller, .. }): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    app.control.remove_node(&name, &caller).await?;
    tracing::info!(node = %name, by = %caller, "node removed");
    Ok(StatusCode::NO_CONTENT)
}

/// `keel node drain NAME`: the node hands its VIPs and leadership to
/// another and keeps serving on its own addresses. Refused when no other
/// voter would be left to lead.
async fn drain_node<C: ControlPlane>(
    State(app): AppState<C>,
    Extension(Caller { user: caller, .. }): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    set_drained(&*app.control, &caller, &name, true).await?;
    tracing::info!(node = %name, by = %caller, "node drained");
    Ok(StatusCode::NO_CONTENT)
}

/// `keel node undrain NAME`: the node may hold VIPs and lead again.
async fn undrain_node<C: ControlPlane>(
    State(app): AppState<C>,
    Extension(Caller { user: caller, .. }): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    set_drained(&*app.control, &caller, &name, false).await?;
    tracing::info!(node = %name, by = %caller, "node undrained");
    Ok(StatusCode::NO_CONTENT)
}

/// `PUT /api/v1/cluster/timing` (`keel timing set`): the Raft timing every
/// node runs from its next start. Checked before it is proposed; every node
/// keeps it and `keel status` names the nodes still to restart.
async fn set_timing<C: ControlPlane>(
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
async fn rotate_secret<C: ControlPlane>(
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
async fn cluster_ca<C: ControlPlane>(
    State(app): AppState<C>,
) -> Result<Json<keel_web_core::CaStatus>, ApiError> {
    Ok(Json(app.control.ca().await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RotateCaQuery {
    /// Drop the new CA before it signs.
    #[serde(default)]
    abandon: bool,
}

/// `POST /api/v1/cluster/ca/rotate` (`keel ca rotate`): the next step of a
/// CA rotation (begin: trust a new CA; then sign with it; then drop the
/// old one), or `?abandon=true`. 409 naming the members it waits for.
async fn rotate_ca<C: ControlPlane>(
    State(app): AppState<C>,
    Extension(Caller { user: caller, .. }): Extension<Caller>,
    Query(query): Query<RotateCaQuery>,
) -> Result<Json<keel_web_core::CaStatus>, ApiError> {
    let status = app.control.rotate_ca(&caller, query.abandon).await?;
    tracing::info!(by = %caller, stage = %status.stage, "cluster CA rotation: took a step");
    Ok(Json(status))
}

async fn set_drained<C: ControlPlane>(
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

#[derive(Deserialize)]
struct FormatQuery {
    format: Option<String>,
    /// `?stale=true`: [`ReadQuery`].
    #[serde(default)]
    stale: bool,
}

/// How fresh a read must be. By default a read is linearizable
/// ([`ControlPlane::read`]); `?stale=true` answers from this node's own
/// copy at once, which works in a minority partition but may be out of
/// date (as Consul's `?stale` and etcd's serializable reads).
#[derive(Deserialize)]
struct ReadQuery {
    #[serde(default)]
    stale: bool,
}

/// The state a read answers from (see [`ReadQuery`]).
async fn read_state<C: ControlPlane>(
    control: &C,
    stale: bool,
) -> Result<(u64, Arc<ClusterState>), ApiError> {
    if stale {
        Ok(control.state())
    } else {
        Ok(control.read().await?)
    }
}

#[derive(Deserialize)]
struct ApplyQuery {
    /// Only report what would change.
    #[serde(default)]
    dry_run: bool,
    /// Also remove the load balancers, pools and certificates this
    /// manager applied before that the document no longer has.
    #[serde(default)]
    prune: bool,
    /// Take over objects other managers set instead of refusing.
    #[serde(default)]
    force: bool,
}

async fn get_config<C: ControlPlane>(
    State(app): AppState<C>,
    Query(q): Query<FormatQuery>,
) -> Result<Response, ApiError> {
    let (version, state) = read_state(&*app.control, q.stale).await?;
    let mut doc = Document::from_spec(&state.spec);
    doc.certificates.iter_mut().for_each(Kind::redact);
    let version_header = [
        ("x-keel-version", version.to_string()),
        (
            header::ETAG.as_str(),
            quoted(&state.spec.etag(&Object::Config).unwrap_or_default()),
        ),
    ];
    Ok(if q.format.as_deref() == Some("yaml") {
        (
            version_header,
            [(header::CONTENT_TYPE, "application/yaml")],
            doc.to_yaml(),
        )
            .into_response()
    } else {
        (version_header, Json(doc)).into_response()
    })
}

#[derive(Serialize)]
struct Applied {
    version: u64,
    changes: Vec<String>,
    /// The same, object by object: `create`, `change` or `remove`.
    objects: Vec<String>,
    /// Objects other managers set that the apply would change (a dry run
    /// lists them; a real apply is refused with 409 unless forced).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    conflicts: Vec<String>,
    /// True when nothing was committed (`?dry_run=true`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    dry_run: bool,
}

/// `GET /api/v1/managers`: who manages each load balancer, pool, member
/// and certificate, by object key (`pool/app`, `member/app/10.0.0.1:80`);
/// objects no manager has set since version 8 are absent.
async fn managers<C: ControlPlane>(
    State(app): AppState<C>,
    Query(q): Query<ReadQuery>,
) -> Result<Json<BTreeMap<String, String>>, ApiError> {
    let (_, state) = read_state(&*app.control, q.stale).await?;
    Ok(Json(
        state
            .managers
            .iter()
            .map(|(o, m)| (o.key(), m.clone()))
            .collect(),
    ))
}

/// `PUT /api/v1/config`: the body (JSON, or YAML when sent as
/// `application/yaml`) is the whole config: what it lacks is removed,
/// whoever set it (the dashboard's editor, `keel apply --replace`). Only
/// the differences are committed, so the same document twice changes
/// nothing.
async fn put_config<C: ControlPlane>(
    State(app): AppState<C>,
    Extension(caller): Extension<Caller>,
    Extension(manager): Extension<Manager>,
    Query(query): Query<ApplyQuery>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Applied>, ApiError> {
    if query.prune || query.force {
        return Err(ApiError::bad_request(
            "prune and force are for an apply (PATCH /api/v1/config); a PUT replaces the whole config",
        ));
    }
    write_config(app, caller, manager, query, true, headers, body).await
}

/// `PATCH /api/v1/config`: the declarative apply (`keel apply -f`, a
/// node's config file). The body is applied as the caller's manager
/// (`keel_model::Spec::apply_as`): what it names is created or replaced,
/// members of its pools that this manager set and it no longer lists are
/// removed, everything else stays (with `prune`, also the load balancers,
/// pools and certificates this manager applied before). A change to what
/// another manager set is refused with 409 naming them, unless `force`.
async fn patch_config<C: ControlPlane>(
    State(app): AppState<C>,
    Extension(caller): Extension<Caller>,
    Extension(manager): Extension<Manager>,
    Query(query): Query<ApplyQuery>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Applied>, ApiError> {
    write_config(app, caller, manager, query, false, headers, body).await
}

async fn write_config<C: ControlPlane>(
    app: Arc<App<C>>,
    Caller { user: caller, .. }: Caller,
    Manager(manager): Manager,
    query: ApplyQuery,
    replace: bool,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Applied>, ApiError> {
    let body = body.map_err(JsonRejection::from)?;
    let text = std::str::from_utf8(&body)
        .map_err(|_| ApiError::bad_request("the body is not UTF-8 text"))?;
    let yaml = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("yaml"));
    let sent = if yaml {
        Document::from_yaml(text)?
    } else {
        Document::from_json(text)?
    };
    let explicit = if_match(&headers);
    let mode = keel_web_core::apply::Mode {
        replace,
        prune: query.prune,
        force: query.force,
    };
    // Planned against the config it read and committed only while that is
    // still the config (without If-Match too): a write that came between,
    // a registration say, makes it read and plan again, so that write is
    // not undone by a plan made before it.
    let mut attempt = 0;
    loop {
        attempt += 1;
        let (version, state) = app.control.read().await?;
        let mut doc = sent.clone();
        for (i, cert) in doc.certificates.iter_mut().enumerate() {
            keep_stored_key(cert, &state);
            let stored = state.spec.certificates.get(&cert.name);
            let unchanged = stored.is_some_and(|s| {
                s.cert_pem == cert.cert_pem && Some(&s.key_pem) == cert.key_pem.as_ref()
            });
            if !unchanged {
                check_certificate(cert, &FieldPath::root().field("certificates").index(i))?;
            }
        }
        let spec = doc.into_spec().map_err(|e| ApiError::invalid(&e))?;
        let tag = explicit.clone().unwrap_or_else(|| "*".to_owned());
        let expect = expectation(&state, Object::Config, Some(tag))?;
        let plan = keel_web_core::apply::Plan::new(&state, &manager, &spec, mode)
            .map_err(|e| ApiError::invalid(&e))?;
        let mut applied = Applied {
            version,
            changes: plan.changes.iter().map(ToString::to_string).collect(),
            objects: plan.objects.clone(),
            conflicts: plan.conflicts.clone(),
            dry_run: query.dry_run,
        };
        if query.dry_run {
            return Ok(Json(applied));
        }
        if let Some(refusal) = plan.refusal() {
            return Err(ApiError::new(StatusCode::CONFLICT, "conflict", refusal));
        }
        let Some(command) = plan.command(expect) else {
            return Ok(Json(applied));
        };
        match commit(&*app.control, &caller, command).await {
            Ok(version) => {
                applied.version = version;
                return Ok(Json(applied));
            }
            Err(e) if e.is_stale() && explicit.is_none() && attempt < 5 => {}
            Err(e) => return Err(e),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BackupRequest {
    passphrase: String,
}

/// `POST /api/v1/backup`: the whole replicated state sealed with the
/// passphrase (`crate::backup`), as a file `keel run --restore` reads.
/// A read barrier first, so it holds every write committed before it.
async fn backup<C: ControlPlane>(
    State(app): AppState<C>,
    Extension(Caller { user: caller, .. }): Extension<Caller>,
    body: Result<Json<BackupRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(req) = body?;
    if req.passphrase.chars().count() < crate::backup::MIN_PASSPHRASE {
        return Err(ApiError::invalid(&ValidationErrors(vec![FieldError::new(
            FieldPath::root().field("passphrase"),
            format!(
                "must have at least {} characters",
                crate::backup::MIN_PASSPHRASE
            ),
        )])));
    }
    app.control.propose(ClusterCommand::Noop).await?;
    let (version, state) = app.control.state();
    let node = app.control.status().await.this_node;
    let mut backup = crate::backup::backup_of(&state, version, &node, now());
    // A backup restores the CA too: its key comes from this node's disk.
    if let Some(identity) = &mut backup.state.identity {
        if identity.ca_key_pem.is_empty() {
            identity.ca_key_pem = app.control.ca_key().ok_or_else(|| {
                ApiError::new(
                    StatusCode::CONFLICT,
                    "conflict",
                    format!(
                        "{node} holds no CA key (only voters do): take the backup through a voter"
                    ),
                )
            })?;
        }
    }
    let sealed = tokio::task::spawn_blocking(move || crate::backup::seal(&backup, &req.passphrase))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
    tracing::info!(user = %caller, version, bytes = sealed.len(), "backup taken");
    // In the history, for the dashboard; a cluster mid-upgrade (below
    // version 3) cannot record it, and the backup is no worse for that.
    let record = ClusterCommand::Record {
        kind: "backup".into(),
        what: format!(
            "taken on {node} at config version {version}, {} bytes",
            sealed.len()
        ),
    };
    if state.version() >= record.needs() {
        if let Err(e) = commit(&*app.control, &caller, record).await {
            tracing::warn!(error = %e.message(), "could not record the backup in the history");
        }
    }
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"keel-backup-{version}.keel\""),
            ),
        ],
        sealed,
    )
        .into_response())
}

/// A kind of object edited through the document: load balancers or pools.
trait Kind: Serialize + for<'de> Deserialize<'de> + Clone + Send + 'static {
    const FIELD: &'static str;
    const NAME: &'static str;
    fn items(doc: &mut Document) -> &mut Vec<Self>;
    /// What its entity tag is of.
    fn object(name: &str) -> Object;
    fn name(&self) -> &str;
    fn set_name(&mut self, name: String);
    /// Complete and check a submitted object against the current state.
    fn prepare(&mut self, _state: &ClusterState) -> Result<(), ApiError> {
        Ok(())
    }
    /// Remove secrets before the object is shown.
    fn redact(&mut self) {}
}

impl Kind for CertificateDoc {
    const FIELD: &'static str = "certificates";
    const NAME: &'static str = "certificate";
    fn items(doc: &mut Document) -> &mut Vec<Self> {
        &mut doc.certificates
    }
    fn object(name: &str) -> Object {
        Object::Certificate(name.to_owned())
    }
    fn name(&self) -> &str {
        &self.name
    }
    fn set_name(&mut self, name: String) {
        self.name = name;
    }
    fn prepare(&mut self, state: &ClusterState) -> Result<(), ApiError> {
        keep_stored_key(self, state);
        check_certificate(self, &FieldPath::root())
    }
    fn redact(&mut self) {
        self.key_pem = None;
    }
}

/// A certificate sent without its key keeps the stored one (keys are never
/// shown, so an exported object or document round-trips).
fn keep_stored_key(cert: &mut CertificateDoc, state: &ClusterState) {
    if cert.key_pem.is_none() {
        cert.key_pem = state
            .spec
            .certificates
            .get(&cert.name)
            .map(|c| c.key_pem.clone());
    }
}

fn check_certificate(cert: &CertificateDoc, at: &FieldPath) -> Result<(), ApiError> {
    if cert.key_pem.is_none() {
        return Err(ApiError::invalid(&ValidationErrors(vec![FieldError::new(
            at.field("key_pem"),
            "is required for a new certificate",
        )])));
    }
    let problems = crate::certs::problems(cert);
    if problems.is_empty() {
        return Ok(());
    }
    Err(ApiError::invalid(&ValidationErrors(
        problems
            .into_iter()
            .map(|(field, message)| FieldError::new(at.field(field), message))
            .collect(),
    )))
}

impl Kind for LoadBalancerDoc {
    const FIELD: &'static str = "load_balancers";
    const NAME: &'static str = "load balancer";
    fn items(doc: &mut Document) -> &mut Vec<Self> {
        &mut doc.load_balancers
    }
    fn object(name: &str) -> Object {
        Object::LoadBalancer(name.to_owned())
    }
    fn name(&self) -> &str {
        &self.name
    }
    fn set_name(&mut self, name: String) {
        self.name = name;
    }
}

impl Kind for PoolDoc {
    const FIELD: &'static str = "pools";
    const NAME: &'static str = "pool";
    fn items(doc: &mut Document) -> &mut Vec<Self> {
        &mut doc.pools
    }
    fn object(name: &str) -> Object {
        Object::Pool(name.to_owned())
    }
    fn name(&self) -> &str {
        &self.name
    }
    fn set_name(&mut self, name: String) {
        self.name = name;
    }
}

/// Apply `edit` to the current document, validate the whole result (paths
/// relative to the edited object when it is the one at fault), and commit
/// the difference.
async fn edit<C: ControlPlane, K: Kind>(
    control: &C,
    by: &str,
    manager: &str,
    condition: Option<(Object, String)>,
    edit: impl FnOnce(&mut Document) -> Result<usize, ApiError>,
) -> Result<u64, ApiError> {
    // The latest state, not this node's (possibly lagging) copy: the
    // changes are computed against it, and an `If-Match` is checked
    // against it at once.
    let (version, state) = control.read().await?;
    let expect = match condition {
        Some((object, tag)) => expectation(&state, object, Some(tag))?,
        None => None,
    };
    let mut doc = Document::from_spec(&state.spec);
    let index = edit(&mut doc)?;
    let spec = doc.into_spec().map_err(|mut errors| {
        // Name fields relative to the object the caller sent, when it is
        // the one at fault.
        let own = [Segment::Field(K::FIELD), Segment::Index(index)];
        for e in &mut errors.0 {
            if e.path.0.starts_with(&own) {
                e.path.0.drain(..2);
            }
        }
        ApiError::invalid(&errors)
    })?;
    let changes = state.spec.diff(&spec);
    if changes.is_empty() {
        return Ok(version);
    }
    let command = guarded(expect, ClusterCommand::Spec(Command::Batch(changes)));
    commit(control, by, managed(control, manager, command)).await
}

/// The tag an `If-Match` header names (quotes and a weak prefix dropped).
fn if_match(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::IF_MATCH)?.to_str().ok()?.trim();
    Some(value.trim_start_matches("W/").trim_matches('"').to_owned())
}

fn quoted(tag: &str) -> String {
    format!("\"{tag}\"")
}

/// The condition of an `If-Match` write on `object`: refused at once (412)
/// when the tag is already stale; otherwise an `Expect` to commit with the
/// write, so the state machine checks again (a change that lands in between
/// is caught), when every node can read one. `*` asks only that it exists.
fn expectation(
    state: &ClusterState,
    object: Object,
    tag: Option<String>,
) -> Result<Option<ClusterCommand>, ApiError> {
    let Some(tag) = tag else {
        return Ok(None);
    };
    let now = state.spec.etag(&object);
    if now.is_none() || (tag != "*" && now.as_deref() != Some(tag.as_str())) {
        return Err(ApiError::stale(format!(
            "{object} was changed since it was read (by someone else, a registration or an \
             API): read it again and make the change again"
        )));
    }
    let expect = ClusterCommand::Expect {
        object,
        etag: now.unwrap_or(tag),
    };
    Ok((state.version() >= expect.needs()).then_some(expect))
}

/// `command`, committed only while `expect` holds.
fn guarded(expect: Option<ClusterCommand>, command: ClusterCommand) -> ClusterCommand {
    match expect {
        Some(expect) => ClusterCommand::Atomic(vec![expect, command]),
        None => command,
    }
}

async fn list<C: ControlPlane, K: Kind>(
    State(app): AppState<C>,
    Query(q): Query<ReadQuery>,
) -> Result<Json<Vec<K>>, ApiError> {
    let (_, state) = read_state(&*app.control, q.stale).await?;
    let mut doc = Document::from_spec(&state.spec);
    let mut items = std::mem::take(K::items(&mut doc));
    items.iter_mut().for_each(K::redact);
    Ok(Json(items))
}

/// One object, with its entity tag (`ETag`) for an `If-Match` write.
async fn fetch<C: ControlPlane, K: Kind>(
    State(app): AppState<C>,
    Path(name): Path<String>,
    Query(q): Query<ReadQuery>,
) -> Result<Response, ApiError> {
    let (_, state) = read_state(&*app.control, q.stale).await?;
    let mut doc = Document::from_spec(&state.spec);
    let mut item = K::items(&mut doc)
        .iter()
        .find(|k| k.name() == name)
        .cloned()
        .ok_or_else(|| ApiError::not_found(format!("{} {name:?} does not exist", K::NAME)))?;
    item.redact();
    let tag = state.spec.etag(&K::object(&name)).unwrap_or_default();
    Ok(([(header::ETAG, quoted(&tag))], Json(item)).into_response())
}

async fn create<C: ControlPlane, K: Kind>(
    State(app): AppState<C>,
    Extension(Caller { user: caller, .. }): Extension<Caller>,
    Extension(Manager(manager)): Extension<Manager>,
    body: Result<Json<K>, JsonRejection>,
) -> Result<(StatusCode, Json<K>), ApiError> {
    let Json(mut item) = body?;
    item.prepare(&app.control.state().1)?;
    let mut created = item.clone();
    created.redact();
    edit::<C, K>(&*app.control, &caller, &manager, None, |doc| {
        let items = K::items(doc);
        if items.iter().any(|k| k.name() == item.name()) {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "exists",
                format!("{} {:?} already exists", K::NAME, item.name()),
            ));
        }
        items.push(item);
        Ok(items.len() - 1)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(created)))
}

async fn replace<C: ControlPlane, K: Kind>(
    State(app): AppState<C>,
    Extension(Caller { user: caller, .. }): Extension<Caller>,
    Extension(Manager(manager)): Extension<Manager>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<Json<K>, JsonRejection>,
) -> Result<Json<K>, ApiError> {
    let Json(mut item) = body?;
    if item.name() != name && !item.name().is_empty() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            format!("name: {:?} does not match the URL's {name:?}", item.name()),
        ));
    }
    item.set_name(name.clone());
    item.prepare(&app.control.state().1)?;
    let mut stored = item.clone();
    stored.redact();
    let condition = if_match(&headers).map(|tag| (K::object(&name), tag));
    edit::<C, K>(&*app.control, &caller, &manager, condition, |doc| {
        let items = K::items(doc);
        match items.iter().position(|k| k.name() == name) {
            Some(i) => {
                items[i] = item;
                Ok(i)
            }
            None => {
                items.push(item);
                Ok(items.len() - 1)
            }
        }
    })
    .await?;
    Ok(Json(stored))
}

async fn remove<C: ControlPlane, K: Kind>(
    State(app): AppState<C>,
    Extension(Caller { user: caller, .. }): Extension<Caller>,
    Extension(Manager(manager)): Extension<Manager>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let condition = if_match(&headers).map(|tag| (K::object(&name), tag));
    edit::<C, K>(&*app.control, &caller, &manager, condition, |doc| {
        let items = K::items(doc);
        let before = items.len();
        items.retain(|k| k.name() != name);
        if items.len() == before {
            return Err(ApiError::not_found(format!(
                "{} {name:?} does not exist",
                K::NAME
            )));
        }
        Ok(usize::MAX)
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// What a backend sends to register or deregister itself.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Registration {
    pool: String,
    address: String,
    /// Register only; default 1.
    weight: Option<u32>,
}

/// Why a registration token may not register `member` from `client`, if it
/// may not. The cluster's own addresses are never members by registration
/// (a backend must not expose the admin API through the load balancer);
/// loopback, link-local, unspecified and multicast ones only when the
/// token's member ranges name them.
fn registration_refusal(
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
fn registration_scope<C: ControlPlane>(
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
async fn register<C: ControlPlane>(
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
async fn deregister<C: ControlPlane>(
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

/// An entry of the instance registry: the address an instance ID stands
/// for in the classic ELB API.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Instance {
    #[serde(default, skip_deserializing)]
    id: String,
    address: IpAddr,
}

async fn list_instances<C: ControlPlane>(State(app): AppState<C>) -> Json<Vec<Instance>> {
    let (_, state) = app.control.state();
    Json(
        keel_web_core::instances::all(&state)
            .map(|(id, address)| Instance { id, address })
            .collect(),
    )
}

async fn fetch_instance<C: ControlPlane>(
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
async fn put_instance<C: ControlPlane>(
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

async fn remove_instance<C: ControlPlane>(
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
