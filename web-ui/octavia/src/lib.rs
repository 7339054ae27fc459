//! The OpenStack Octavia v2 compatible endpoint (`--octavia-api-addr`): the
//! JSON API the `openstack loadbalancer` CLI and openstacksdk speak, and the
//! small read-only Neutron API (`subnets`, `networks`, `ports`, from this
//! node's interfaces) they look VIP subnets up in.
//!
//! Authentication: `X-Auth-Token` with a Keel API token (`keel api-token
//! create`, the CLI's `--os-auth-type admin_token`) or HTTP Basic with a
//! Keel user (`--os-auth-type http_basic`). Only the version document is
//! open, as keystoneauth reads it before it authenticates.
//!
//! How Octavia objects map onto Keel's is in `view.rs`; every change is one
//! atomic Raft entry (the spec change and the annotations that carry what
//! Keel's model has no field for), validated like any other.
//!
//! One file per resource holds its body's fields, its create, update and
//! delete, and how it is shown: `load_balancers`, `listeners`, `pools`,
//! `members`, `health_monitors`, `l7policies`, `l7rules`. `view.rs` is the
//! config as Octavia sees it (lookups, keys and IDs, statuses, the status
//! tree, statistics, Neutron); `write.rs` what every change shares.

mod health_monitors;
mod l7policies;
mod l7rules;
mod listeners;
mod load_balancers;
mod members;
mod pools;
mod view;
mod write;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, DefaultBodyLimit, Request, State};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use base64::Engine;
use http::{header, HeaderMap, Method, StatusCode, Uri};
use keel_compat::{Notes, Refused, Writer};
use keel_model::Document;
use keel_web_core::access::{authorize_compat, Caller};
use keel_web_core::auth::{check_bearer, PasswordGate};
use keel_web_core::ControlPlane;
use serde_json::{json, Map, Value};

pub(crate) struct Octavia<C> {
    control: Arc<C>,
    /// HTTP Basic passwords are checked through the node's gate.
    passwords: PasswordGate,
    /// `https` when served over TLS: the links it answers with name it.
    scheme: &'static str,
    /// May it see and change what other managers set
    /// (`keel_compat::visible`)?
    adopt: bool,
}

/// The Octavia-compatible API's router. Serve it with connect info
/// (`into_make_service_with_connect_info::<SocketAddr>`) so failed
/// passwords are limited per client; `tls` when it is served over TLS;
/// with `adopt`, it sees and changes everything, not only what it made
/// (and what no manager has).
pub fn router<C: ControlPlane>(
    control: Arc<C>,
    passwords: PasswordGate,
    tls: bool,
    adopt: bool,
) -> Router {
    let scheme = if tls { "https" } else { "http" };
    Router::new()
        .fallback(handle::<C>)
        .layer(DefaultBodyLimit::max(1024 * 1024))
        .with_state(Arc::new(Octavia {
            control,
            passwords,
            scheme,
            adopt,
        }))
}

/// An error as Octavia sends it: the CLI shows `faultstring`.
#[derive(Debug)]
pub(crate) struct Fault {
    status: StatusCode,
    message: String,
}

impl Fault {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Fault {
            status,
            message: message.into(),
        }
    }

    pub fn bad(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, message)
    }

    pub fn not_found(kind: &str, id: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, format!("{kind} {id} not found."))
    }
}

impl IntoResponse for Fault {
    fn into_response(self) -> Response {
        let code = if self.status.is_server_error() {
            "Server"
        } else {
            "Client"
        };
        (
            self.status,
            Json(json!({ "faultcode": code, "faultstring": self.message, "debuginfo": null })),
        )
            .into_response()
    }
}

type Reply = Result<(StatusCode, Value), Fault>;

/// One authenticated request: the endpoint, who asks, the query.
pub(crate) struct Call<'a, C> {
    octavia: &'a Octavia<C>,
    by: String,
    query: Vec<(String, String)>,
    /// `SCHEME://HOST/PATH` of the request, for pagination links.
    base: String,
}

impl<C: ControlPlane> Call<'_, C> {
    /// The query parameter `key`, if given.
    fn param(&self, key: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The compatibility kernel for this caller.
    fn writer(&self) -> Writer<'_, C> {
        Writer {
            control: &*self.octavia.control,
            by: &self.by,
            manager: "octavia",
            adopt: self.octavia.adopt,
        }
    }

    /// A snapshot of everything the views need: the config as this API
    /// sees it (`keel_compat::visible`).
    async fn view(&self) -> view::View {
        let control = &*self.octavia.control;
        let version = control.state().0;
        view::View {
            version,
            state: Arc::new(self.writer().state()),
            serving: control.serving(),
            health: control.status().await.members,
            networks: control.host_networks(),
        }
    }

    /// Waits (up to two seconds) until this node's data plane serves the
    /// newest config, or refuses it; false if it still has not.
    async fn caught_up(&self) -> bool {
        self.writer().caught_up().await
    }

    /// Commits `edit` of the config together with `notes` (annotations to
    /// set, or with no values to remove), as one entry, and waits until
    /// this node serves it. A change to what load balancer `settled` names
    /// (the ID in the message) is refused while the data plane has not
    /// caught up: Octavia answers 409 while an object is `PENDING_*`.
    async fn commit(
        &self,
        settled: Option<&str>,
        edit: impl FnMut(&mut Document) -> Result<(), Fault>,
        notes: Notes,
    ) -> Result<(), Fault> {
        if let Some(lb_id) = settled {
            if !self.caught_up().await {
                return Err(Fault::conflict(format!(
                    "Load Balancer {lb_id} is immutable and cannot be updated."
                )));
            }
        }
        self.writer()
            .change(edit, notes)
            .await
            .map(|_| ())
            .map_err(|refused| match refused {
                Refused::Edit(fault) => fault,
                Refused::Invalid(e) => Fault::bad(format!("Validation failure: {e}")),
                Refused::NotOurs(e) => Fault::new(StatusCode::NOT_FOUND, e),
                Refused::Commit(e) => Fault::new(e.status(), e.message()),
            })
    }
}

/// The version document keystoneauth discovers the API with.
fn versions(scheme: &str, host: &str) -> Value {
    json!({ "versions": [ {
        "id": "v2.0",
        "status": "CURRENT",
        "updated": "2026-01-01T00:00:00Z",
        "links": [ { "rel": "self", "href": format!("{scheme}://{host}/v2.0") } ],
    } ] })
}

async fn handle<C: ControlPlane>(
    State(octavia): State<Arc<Octavia<C>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    request: Request,
) -> Response {
    let client = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let body = match axum::body::to_bytes(request.into_body(), 1024 * 1024).await {
        Ok(b) => b,
        Err(_) => return Fault::bad("The request body is too large or broken.").into_response(),
    };
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost")
        .to_owned();
    let path = uri.path().trim_end_matches('/');
    if method == Method::GET && path.is_empty() {
        return Json(versions(octavia.scheme, &host)).into_response();
    }
    let ip = client.map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.ip());
    let caller = match authenticate(&octavia, &headers, ip).await {
        Ok(caller) => caller,
        Err(f) => return f.into_response(),
    };
    if let Err(refused) = authorize_compat(&caller, method != Method::GET) {
        return Fault::new(StatusCode::FORBIDDEN, refused.message()).into_response();
    }
    let by = format!("{} (octavia api)", caller.user);
    let query: Vec<(String, String)> = form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
        .into_owned()
        .collect();
    let call = Call {
        octavia: &octavia,
        by,
        query,
        base: format!("{}://{host}{path}", octavia.scheme),
    };
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let segments = match segments.split_first() {
        Some((&("v2.0" | "v2"), rest)) => rest,
        _ => return Fault::new(StatusCode::NOT_FOUND, "Not Found").into_response(),
    };
    let reply = if segments.is_empty() && method == Method::GET {
        Ok((
            StatusCode::OK,
            json!({ "version": versions(octavia.scheme, &host)["versions"][0] }),
        ))
    } else {
        route(&call, &method, segments, &body).await
    };
    match reply {
        Ok((StatusCode::NO_CONTENT, _)) => StatusCode::NO_CONTENT.into_response(),
        Ok((status, value)) => (status, Json(value)).into_response(),
        Err(f) => {
            tracing::debug!(%method, path, status = %f.status, message = %f.message, "octavia api call refused");
            f.into_response()
        }
    }
}

/// Checks `X-Auth-Token` (a Keel API token) or HTTP Basic (a Keel user):
/// who is calling.
async fn authenticate<C: ControlPlane>(
    octavia: &Octavia<C>,
    headers: &HeaderMap,
    ip: IpAddr,
) -> Result<Caller, Fault> {
    let unauthorized = |m: &str| Fault::new(StatusCode::UNAUTHORIZED, m);
    let (_, state) = octavia.control.state();
    if let Some(token) = headers.get("x-auth-token").and_then(|v| v.to_str().ok()) {
        return check_bearer(&state, token.trim(), keel_web_core::now())
            .ok_or_else(|| unauthorized("The request you have made requires authentication: the X-Auth-Token is not a valid Keel API token."));
    }
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| {
            base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .ok()
        })
        .and_then(|b| String::from_utf8(b).ok());
    let Some(pair) = basic else {
        return Err(unauthorized(
            "The request you have made requires authentication: send X-Auth-Token (a Keel API token) or HTTP Basic credentials.",
        ));
    };
    let (user, password) = pair.split_once(':').unwrap_or((&pair, ""));
    let hash = state.users.get(user).map(|u| u.password_hash.as_str());
    let matched = octavia
        .passwords
        .check(ip, user, password, hash)
        .await
        .map_err(|refused| Fault::new(StatusCode::TOO_MANY_REQUESTS, refused.message()))?;
    match Caller::of_user(&state, user) {
        Some(caller) if matched => Ok(caller),
        _ => {
            tracing::warn!(client = %ip, user, "octavia api: wrong user name or password");
            Err(unauthorized("wrong user name or password"))
        }
    }
}

async fn route<C: ControlPlane>(
    call: &Call<'_, C>,
    method: &Method,
    segments: &[&str],
    body: &[u8],
) -> Reply {
    let get = *method == Method::GET;
    let (post, put, delete) = (
        *method == Method::POST,
        *method == Method::PUT,
        *method == Method::DELETE,
    );
    match segments {
        ["subnets" | "networks" | "ports", ..] if !get => Err(Fault::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "The network API here is read-only: it shows this node's interfaces.",
        )),
        [kind @ ("subnets" | "networks" | "ports")] => {
            let v = call.view().await;
            Ok(list(call, kind, v.neutron(kind)))
        }
        [kind @ ("subnets" | "networks" | "ports"), id] => {
            let v = call.view().await;
            one(kind, id, v.neutron(kind))
        }
        ["lbaas", rest @ ..] => lbaas(call, method, rest, body, (get, post, put, delete)).await,
        _ => Err(Fault::new(StatusCode::NOT_FOUND, "Not Found")),
    }
}

async fn lbaas<C: ControlPlane>(
    call: &Call<'_, C>,
    method: &Method,
    segments: &[&str],
    body: &[u8],
    (get, post, put, delete): (bool, bool, bool, bool),
) -> Reply {
    match segments {
        // Collections.
        [kind @ ("loadbalancers" | "listeners" | "pools" | "healthmonitors" | "l7policies")]
            if get =>
        {
            let v = call.view().await;
            Ok(list(call, kind, v.all(kind)))
        }
        ["loadbalancers"] if post => {
            load_balancers::create_lb(call, envelope(body, "loadbalancer")?).await
        }
        ["listeners"] if post => {
            listeners::create_listener(call, envelope(body, "listener")?).await
        }
        ["pools"] if post => pools::create_pool(call, envelope(body, "pool")?).await,
        ["healthmonitors"] if post => {
            health_monitors::create_monitor(call, envelope(body, "healthmonitor")?).await
        }
        ["l7policies"] if post => {
            l7policies::create_policy(call, envelope(body, "l7policy")?).await
        }
        // Objects.
        [kind @ ("loadbalancers" | "listeners" | "pools" | "healthmonitors" | "l7policies"), id]
            if get =>
        {
            let v = call.view().await;
            one(singular(kind), id, v.all(kind))
        }
        ["loadbalancers", id] if put => {
            load_balancers::update_lb(call, id, envelope(body, "loadbalancer")?).await
        }
        ["loadbalancers", id] if delete => load_balancers::delete_lb(call, id).await,
        ["listeners", id] if put => {
            listeners::update_listener(call, id, envelope(body, "listener")?).await
        }
        ["listeners", id] if delete => listeners::delete_listener(call, id).await,
        ["pools", id] if put => pools::update_pool(call, id, envelope(body, "pool")?).await,
        ["pools", id] if delete => pools::delete_pool(call, id).await,
        ["healthmonitors", id] if put => {
            health_monitors::update_monitor(call, id, envelope(body, "healthmonitor")?).await
        }
        ["healthmonitors", id] if delete => health_monitors::delete_monitor(call, id).await,
        ["l7policies", id] if put => {
            l7policies::update_policy(call, id, envelope(body, "l7policy")?).await
        }
        ["l7policies", id] if delete => l7policies::delete_policy(call, id).await,
        // Load balancer and listener extras.
        ["loadbalancers", id, "status"] if get => {
            let v = call.view().await;
            v.status_tree(id)
                .map(|s| (StatusCode::OK, json!({ "statuses": { "loadbalancer": s } })))
        }
        ["loadbalancers" | "listeners", id, "stats"] if get => {
            let v = call.view().await;
            let counters = call.octavia.control.listener_counters();
            v.stats(segments[0], id, &counters)
                .map(|s| (StatusCode::OK, json!({ "stats": s })))
        }
        // Members.
        ["pools", pool, "members"] if get => {
            let v = call.view().await;
            let pool = v.pool_named(pool)?;
            Ok(list(call, "members", v.members(&pool)))
        }
        ["pools", pool, "members"] if post => {
            members::create_member(call, pool, envelope(body, "member")?).await
        }
        ["pools", pool, "members"] if put => members::replace_members(call, pool, body).await,
        ["pools", pool, "members", id] if get => {
            let v = call.view().await;
            let pool = v.pool_named(pool)?;
            one("member", id, v.members(&pool))
        }
        ["pools", pool, "members", id] if put => {
            members::update_member(call, pool, id, envelope(body, "member")?).await
        }
        ["pools", pool, "members", id] if delete => members::delete_member(call, pool, id).await,
        // L7 rules.
        ["l7policies", policy, "rules"] if get => {
            let v = call.view().await;
            let (_, policy) = v.policy(policy)?;
            Ok(list(call, "rules", l7rules::rules_json(&v, &policy)))
        }
        ["l7policies", policy, "rules"] if post => {
            l7rules::create_rule(call, policy, envelope(body, "rule")?).await
        }
        ["l7policies", policy, "rules", id] if get => {
            let v = call.view().await;
            let (_, policy) = v.policy(policy)?;
            one("rule", id, l7rules::rules_json(&v, &policy))
        }
        ["l7policies", policy, "rules", id] if put => {
            l7rules::update_rule(call, policy, id, envelope(body, "rule")?).await
        }
        ["l7policies", policy, "rules", id] if delete => {
            l7rules::delete_rule(call, policy, id).await
        }
        _ if matches!(
            segments.first(),
            Some(&("loadbalancers" | "listeners" | "pools" | "healthmonitors" | "l7policies"))
        ) =>
        {
            Err(Fault::new(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{method} is not allowed here"),
            ))
        }
        _ => Err(Fault::new(
            StatusCode::NOT_FOUND,
            format!(
                "{} is not offered by Keel's Octavia API",
                segments.join("/")
            ),
        )),
    }
}

fn singular(collection: &str) -> &str {
    match collection {
        "loadbalancers" => "loadbalancer",
        "listeners" => "listener",
        "pools" => "pool",
        "healthmonitors" => "healthmonitor",
        "l7policies" => "l7policy",
        "subnets" => "subnet",
        "networks" => "network",
        "ports" => "port",
        other => other,
    }
}

/// Query parameters that shape a list rather than filter it.
const NOT_FILTERS: &[&str] = &[
    "fields",
    "limit",
    "marker",
    "page_reverse",
    "sort",
    "sort_key",
    "sort_dir",
];

/// `{"COLLECTION": [...], "COLLECTION_links": [...]}` of the objects
/// whose attributes equal every filter in the query (`tags` holds them
/// all): after the one with ID `marker`, at most `limit`, with a `next`
/// link when more follow.
fn list<C: ControlPlane>(
    call: &Call<'_, C>,
    collection: &str,
    objects: Vec<Value>,
) -> (StatusCode, Value) {
    let mut chosen: Vec<Value> = objects
        .into_iter()
        .filter(|o| {
            call.query
                .iter()
                .filter(|(k, _)| !NOT_FILTERS.contains(&k.as_str()))
                .all(|(k, want)| matches(o.get(k), want))
        })
        .collect();
    if let Some(marker) = call.param("marker") {
        if let Some(at) = chosen.iter().position(|o| o["id"] == marker) {
            chosen.drain(..=at);
        }
    }
    let mut links = Vec::new();
    let limit = call
        .param("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|l| *l > 0);
    if let Some(limit) = limit.filter(|l| chosen.len() > *l) {
        chosen.truncate(limit);
        let last = chosen
            .last()
            .and_then(|o| o["id"].as_str())
            .unwrap_or_default();
        let mut query: Vec<String> = call
            .query
            .iter()
            .filter(|(k, _)| k != "marker")
            .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
            .collect();
        query.push(format!("marker={}", encode(last)));
        links.push(json!({ "rel": "next", "href": format!("{}?{}", call.base, query.join("&")) }));
    }
    (
        StatusCode::OK,
        json!({ collection: chosen, format!("{collection}_links"): links }),
    )
}

/// Percent-encodes a query component.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn matches(have: Option<&Value>, want: &str) -> bool {
    match have {
        Some(Value::String(s)) => s == want,
        Some(Value::Bool(b)) => b.to_string().eq_ignore_ascii_case(want),
        Some(Value::Number(n)) => n.to_string() == want,
        Some(Value::Null) => want.is_empty() || want.eq_ignore_ascii_case("none"),
        Some(Value::Array(items)) => want.split(',').all(|w| {
            items
                .iter()
                .any(|i| i.as_str() == Some(w) || i.get("id").and_then(Value::as_str) == Some(w))
        }),
        _ => false,
    }
}

/// `{"KIND": object}` for the object with `id`.
fn one(kind: &str, id: &str, objects: Vec<Value>) -> Reply {
    objects
        .into_iter()
        .find(|o| o["id"] == id)
        .map(|o| (StatusCode::OK, json!({ singular(kind): o })))
        .ok_or_else(|| Fault::not_found(&view::title(singular(kind)), id))
}

/// The object inside a request's single-key envelope.
fn envelope(body: &[u8], key: &str) -> Result<Map<String, Value>, Fault> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| Fault::bad(format!("The request body is not JSON: {e}")))?;
    match value {
        Value::Object(mut outer) => match outer.remove(key) {
            Some(Value::Object(inner)) if outer.is_empty() => Ok(inner),
            _ => Err(Fault::bad(format!(
                "The request body must be {{\"{key}\": {{...}}}}"
            ))),
        },
        _ => Err(Fault::bad(format!(
            "The request body must be {{\"{key}\": {{...}}}}"
        ))),
    }
}
