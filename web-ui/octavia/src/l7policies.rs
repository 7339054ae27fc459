//! Octavia L7 policies (Keel listener rules once they have a rule): create,
//! update, delete, and how one is shown.

use std::collections::BTreeMap;

use http::StatusCode;
use keel_model::RuleDoc;
use keel_web_core::ControlPlane;
use serde_json::{json, Value};

use super::l7rules::keel_rule;
use super::view::{listener_id, policy_key, random_uuid, uuid, Policy, View, POLICY_PRIORITY};
use super::write::{
    admin_up, created, deleted, describe, doc_value, int, known, listener_mut, need_text, now_text,
    text, unset, Body,
};
use super::{Call, Fault, Reply};

pub(super) const POLICY_FIELDS: &[&str] = &[
    "name",
    "description",
    "admin_state_up",
    "action",
    "position",
    "redirect_pool_id",
    "redirect_url",
    "redirect_prefix",
    "redirect_http_code",
    "tags",
];

pub(super) fn policy_settings(b: &Body, p: &mut Policy, v: &View) -> Result<(), Fault> {
    if let Some(a) = text(b, "action")? {
        if ![
            "REDIRECT_TO_POOL",
            "REDIRECT_TO_URL",
            "REDIRECT_PREFIX",
            "REJECT",
        ]
        .contains(&a.as_str())
        {
            return Err(Fault::bad(format!(
                "Invalid input for field/attribute action. Value: '{a}'. Must be REDIRECT_TO_POOL, REDIRECT_TO_URL, REDIRECT_PREFIX or REJECT."
            )));
        }
        p.action = a;
    }
    if b.contains_key("redirect_pool_id") {
        p.redirect_pool = text(b, "redirect_pool_id")?
            .map(|id| v.pool_named(&id))
            .transpose()?;
    }
    for (field, slot) in [
        ("redirect_url", &mut p.redirect_url),
        ("redirect_prefix", &mut p.redirect_prefix),
    ] {
        if b.contains_key(field) {
            let url = text(b, field)?;
            if let Some(u) = &url {
                let ok = (u.starts_with("http://") || u.starts_with("https://"))
                    && u.len() > 8
                    && !u.contains(char::is_whitespace);
                if !ok {
                    return Err(Fault::bad(format!(
                        "Invalid input for field/attribute {field}. Value: '{u}'. Not a valid URL."
                    )));
                }
            }
            *slot = url;
        }
    }
    if let Some(code) = int(b, "redirect_http_code", 301, 308)? {
        if ![301, 302, 303, 307, 308].contains(&code) {
            return Err(Fault::bad(format!(
                "Invalid input for field/attribute redirect_http_code. Value: {code}. Must be 301, 302, 303, 307 or 308."
            )));
        }
        p.redirect_http_code = u16::try_from(code).ok();
    }
    let missing = match p.action.as_str() {
        "REDIRECT_TO_POOL" if p.redirect_pool.is_none() => Some("redirect_pool_id"),
        "REDIRECT_TO_URL" if p.redirect_url.is_none() => Some("redirect_url"),
        "REDIRECT_PREFIX" if p.redirect_prefix.is_none() => Some("redirect_prefix"),
        _ => None,
    };
    if let Some(field) = missing {
        return Err(Fault::bad(format!(
            "Validation failure: action {} needs {field}.",
            p.action
        )));
    }
    // Only the action's own target is kept.
    if p.action != "REDIRECT_TO_POOL" {
        p.redirect_pool = None;
    }
    if p.action != "REDIRECT_TO_URL" {
        p.redirect_url = None;
    }
    if p.action != "REDIRECT_PREFIX" {
        p.redirect_prefix = None;
    }
    if !p.action.starts_with("REDIRECT_TO_URL") && p.action != "REDIRECT_PREFIX" {
        p.redirect_http_code = None;
    } else if p.redirect_http_code.is_none() {
        p.redirect_http_code = Some(302);
    }
    let mut note = BTreeMap::new();
    describe(b, &mut note)?;
    if let Some(n) = note.get("name") {
        p.name = n.clone();
    }
    if let Some(d) = note.get("description") {
        p.description = d.clone();
    }
    if b.contains_key("tags") {
        p.tags = note
            .get("tags")
            .map(|t| {
                t.split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
    }
    if p.created_at.is_empty() {
        p.created_at = now_text();
    }
    p.updated_at = now_text();
    Ok(())
}

/// Commits the listener's policies as `policies` (in this order): their
/// annotations, and the Keel rules of those with rules. `gone` are the
/// annotation keys of removed policies.
pub(super) async fn save_policies<C: ControlPlane>(
    call: &Call<'_, C>,
    lb: &str,
    port: u16,
    mut policies: Vec<Policy>,
    gone: Vec<String>,
) -> Result<(), Fault> {
    let mut notes: Vec<(String, BTreeMap<String, String>)> =
        gone.into_iter().map(|k| (k, BTreeMap::new())).collect();
    let mut rules: Vec<RuleDoc> = Vec::new();
    for (i, p) in policies.iter_mut().enumerate() {
        p.position = u32::try_from(i + 1).unwrap_or(u32::MAX);
        if let Some(rule) = keel_rule(p, i) {
            rules.push(doc_value(rule)?);
        }
        notes.push((policy_key(lb, port, &p.id), p.note()));
    }
    call.commit(
        Some(&uuid("loadbalancer", lb)),
        |doc| {
            let l = listener_mut(doc, lb, port)?;
            l.rules.retain(|r| r.priority <= i64::from(POLICY_PRIORITY));
            l.rules.extend(rules.clone());
            Ok(())
        },
        notes,
    )
    .await
}

/// Puts `p` at its Octavia position (1-based; past the end: last).
pub(super) fn place(mut all: Vec<Policy>, p: Policy, position: Option<i64>) -> Vec<Policy> {
    all.retain(|x| x.id != p.id);
    let at = position
        .and_then(|n| usize::try_from(n - 1).ok())
        .unwrap_or(all.len())
        .min(all.len());
    all.insert(at, p);
    all
}

pub(super) async fn create_policy<C: ControlPlane>(call: &Call<'_, C>, b: Body) -> Reply {
    let mut allowed = POLICY_FIELDS.to_vec();
    allowed.extend(["listener_id", "project_id", "tenant_id", "rules"]);
    known(&b, &allowed)?;
    admin_up(&b)?;
    unset(&b, &["rules"])?;
    let v = call.view().await;
    let (lb, port) = v.listener_named(&need_text(&b, "listener_id")?)?;
    let l = v.state.spec.load_balancers[&lb]
        .listeners
        .iter()
        .find(|l| l.port == port);
    if !l.is_some_and(|l| l.protocol.is_http()) {
        return Err(Fault::bad(
            "Validation failure: L7 policies need an HTTP or TERMINATED_HTTPS listener.",
        ));
    }
    need_text(&b, "action")?;
    let mut p = Policy {
        id: random_uuid(),
        lb: lb.clone(),
        port,
        ..Policy::default()
    };
    policy_settings(&b, &mut p, &v)?;
    let id = p.id.clone();
    let position = int(&b, "position", 1, 10_000)?;
    let all = place(v.listener_policies(&lb, port), p, position);
    save_policies(call, &lb, port, all, Vec::new()).await?;
    let v = call.view().await;
    let (_, p) = v.policy(&id)?;
    created("l7policy", v.policy_json(&p))
}

pub(super) async fn update_policy<C: ControlPlane>(call: &Call<'_, C>, id: &str, b: Body) -> Reply {
    known(&b, POLICY_FIELDS)?;
    admin_up(&b)?;
    let v = call.view().await;
    let (_, mut p) = v.policy(id)?;
    policy_settings(&b, &mut p, &v)?;
    let (lb, port) = (p.lb.clone(), p.port);
    let position = int(&b, "position", 1, 10_000)?.or(Some(i64::from(p.position)));
    let all = place(v.listener_policies(&lb, port), p, position);
    save_policies(call, &lb, port, all, Vec::new()).await?;
    let v = call.view().await;
    let (_, p) = v.policy(id)?;
    Ok((StatusCode::OK, json!({ "l7policy": v.policy_json(&p) })))
}

pub(super) async fn delete_policy<C: ControlPlane>(call: &Call<'_, C>, id: &str) -> Reply {
    let v = call.view().await;
    let (key, p) = v.policy(id)?;
    let mut all = v.listener_policies(&p.lb, p.port);
    all.retain(|x| x.id != id);
    save_policies(call, &p.lb, p.port, all, vec![key]).await?;
    deleted()
}

/// The listener's policies with `changed` ones replacing theirs.
pub(super) fn merge(changed: Vec<Policy>, all: Vec<Policy>) -> Vec<Policy> {
    all.into_iter()
        .map(|p| changed.iter().find(|c| c.id == p.id).cloned().unwrap_or(p))
        .collect()
}

impl View {
    /// The L7 policy `id` and its annotation key.
    pub fn policy(&self, id: &str) -> Result<(String, Policy), Fault> {
        self.policies()
            .into_iter()
            .find(|p| p.id == id)
            .map(|p| (policy_key(&p.lb, p.port, &p.id), p))
            .ok_or_else(|| Fault::not_found("L7 Policy", id))
    }

    /// Every L7 policy, by listener and position.
    pub fn policies(&self) -> Vec<Policy> {
        let mut all: Vec<Policy> = self
            .state
            .annotations
            .iter()
            .filter(|(k, _)| k.starts_with("octavia/l7policy/"))
            .filter_map(|(_, v)| Policy::from_note(v))
            .collect();
        all.sort_by(|a, b| (&a.lb, a.port, a.position).cmp(&(&b.lb, b.port, b.position)));
        all
    }

    /// The policies of one listener, by position.
    pub fn listener_policies(&self, lb: &str, port: u16) -> Vec<Policy> {
        self.policies()
            .into_iter()
            .filter(|p| p.lb == lb && p.port == port)
            .collect()
    }

    pub fn policy_json(&self, p: &Policy) -> Value {
        let project = self.project(Some(&p.lb));
        json!({
            "id": p.id,
            "name": p.name,
            "description": p.description,
            "admin_state_up": true,
            "provisioning_status": self.provisioning(),
            "operating_status": "ONLINE",
            "listener_id": listener_id(&p.lb, p.port),
            "action": p.action,
            "position": p.position,
            "redirect_pool_id": p.redirect_pool.as_ref().map(|pool| uuid("pool", pool)),
            "redirect_url": p.redirect_url,
            "redirect_prefix": p.redirect_prefix,
            "redirect_http_code": p.redirect_http_code,
            "rules": p.rules.iter().map(|r| json!({ "id": r.id })).collect::<Vec<_>>(),
            "project_id": project,
            "tenant_id": project,
            "created_at": p.created_at,
            "updated_at": p.updated_at,
            "tags": p.tags,
        })
    }
}
