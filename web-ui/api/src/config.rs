//! The whole config: read it, replace it or apply to it declaratively (with
//! field managers, pruning and `--diff`), who manages what, and the
//! replicated state.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::rejection::{BytesRejection, JsonRejection};
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use bytes::Bytes;
use http::{header, HeaderMap, StatusCode};
use keel_model::{ClusterState, Document, Object, Path as FieldPath};
use keel_web_core::access::Caller;
use keel_web_core::{commit, ApiError, ControlPlane};
use serde::{Deserialize, Serialize};

use super::objects::{check_certificate, expectation, if_match, keep_stored_key, quoted, Kind};
use super::{App, AppState, Manager};

#[derive(Deserialize)]
pub(super) struct FormatQuery {
    pub(super) format: Option<String>,
    /// `?stale=true`: [`ReadQuery`].
    #[serde(default)]
    pub(super) stale: bool,
}

/// How fresh a read must be. By default a read is linearizable
/// ([`ControlPlane::read`]); `?stale=true` answers from this node's own
/// copy at once, which works in a minority partition but may be out of
/// date (as Consul's `?stale` and etcd's serializable reads).
#[derive(Deserialize)]
pub(super) struct ReadQuery {
    #[serde(default)]
    pub(super) stale: bool,
}

/// The state a read answers from (see [`ReadQuery`]).
pub(super) async fn read_state<C: ControlPlane>(
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
pub(super) struct ApplyQuery {
    /// Only report what would change.
    #[serde(default)]
    pub(super) dry_run: bool,
    /// Also remove the load balancers, pools and certificates this
    /// manager applied before that the document no longer has.
    #[serde(default)]
    pub(super) prune: bool,
    /// Take over objects other managers set instead of refusing.
    #[serde(default)]
    pub(super) force: bool,
}

pub(super) async fn get_config<C: ControlPlane>(
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
pub(super) struct Applied {
    pub(super) version: u64,
    pub(super) changes: Vec<String>,
    /// The same, object by object: `create`, `change` or `remove`.
    pub(super) objects: Vec<String>,
    /// Objects other managers set that the apply would change (a dry run
    /// lists them; a real apply is refused with 409 unless forced).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(super) conflicts: Vec<String>,
    /// True when nothing was committed (`?dry_run=true`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub(super) dry_run: bool,
}

/// `GET /api/v1/managers`: who manages each load balancer, pool, member,
/// certificate and rule, by object key (`pool/app`,
/// `member/app/10.0.0.1:80`, `rule/web/80/10`), and who set a field of one
/// where that is another manager (`pool/app#drain_timeout`); objects no
/// manager has set since version 8 are absent.
pub(super) async fn managers<C: ControlPlane>(
    State(app): AppState<C>,
    Query(q): Query<ReadQuery>,
) -> Result<Json<BTreeMap<String, String>>, ApiError> {
    let (_, state) = read_state(&*app.control, q.stale).await?;
    let objects = state.managers.iter().map(|(o, m)| (o.key(), m.clone()));
    let fields = state.field_managers.iter().flat_map(|(o, fields)| {
        fields
            .iter()
            .map(move |(field, m)| (format!("{}#{field}", o.key()), m.clone()))
    });
    Ok(Json(objects.chain(fields).collect()))
}

/// `PUT /api/v1/config`: the body (JSON, or YAML when sent as
/// `application/yaml`) is the whole config: what it lacks is removed,
/// whoever set it (the dashboard's editor, `keel apply --replace`). Only
/// the differences are committed, so the same document twice changes
/// nothing.
pub(super) async fn put_config<C: ControlPlane>(
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
pub(super) async fn patch_config<C: ControlPlane>(
    State(app): AppState<C>,
    Extension(caller): Extension<Caller>,
    Extension(manager): Extension<Manager>,
    Query(query): Query<ApplyQuery>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Applied>, ApiError> {
    write_config(app, caller, manager, query, false, headers, body).await
}

pub(super) async fn write_config<C: ControlPlane>(
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
