//! Load balancers, pools and certificates, one object at a time: list,
//! read, create, replace, delete, each with its resource version (`ETag`,
//! `If-Match`).

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use http::{header, HeaderMap, StatusCode};
use keel_model::{
    CertificateDoc, ClusterCommand, ClusterState, Command, Document, FieldError, LoadBalancerDoc,
    Object, Path as FieldPath, PoolDoc, Segment, ValidationErrors,
};
use keel_web_core::access::Caller;
use keel_web_core::{commit, managed, ApiError, ControlPlane};
use serde::{Deserialize, Serialize};

use super::config::{read_state, ReadQuery};
use super::{AppState, Manager};

/// A kind of object edited through the document: load balancers or pools.
pub(super) trait Kind:
    Serialize + for<'de> Deserialize<'de> + Clone + Send + 'static
{
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
pub(super) fn keep_stored_key(cert: &mut CertificateDoc, state: &ClusterState) {
    if cert.key_pem.is_none() {
        cert.key_pem = state
            .spec
            .certificates
            .get(&cert.name)
            .map(|c| c.key_pem.clone());
    }
}

pub(super) fn check_certificate(cert: &CertificateDoc, at: &FieldPath) -> Result<(), ApiError> {
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
pub(super) async fn edit<C: ControlPlane, K: Kind>(
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
pub(super) fn if_match(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::IF_MATCH)?.to_str().ok()?.trim();
    Some(value.trim_start_matches("W/").trim_matches('"').to_owned())
}

pub(super) fn quoted(tag: &str) -> String {
    format!("\"{tag}\"")
}

/// The condition of an `If-Match` write on `object`: refused at once (412)
/// when the tag is already stale; otherwise an `Expect` to commit with the
/// write, so the state machine checks again (a change that lands in between
/// is caught), when every node can read one. `*` asks only that it exists.
pub(super) fn expectation(
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
pub(super) fn guarded(expect: Option<ClusterCommand>, command: ClusterCommand) -> ClusterCommand {
    match expect {
        Some(expect) => ClusterCommand::Atomic(vec![expect, command]),
        None => command,
    }
}

pub(super) async fn list<C: ControlPlane, K: Kind>(
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
pub(super) async fn fetch<C: ControlPlane, K: Kind>(
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

pub(super) async fn create<C: ControlPlane, K: Kind>(
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

pub(super) async fn replace<C: ControlPlane, K: Kind>(
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

pub(super) async fn remove<C: ControlPlane, K: Kind>(
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
