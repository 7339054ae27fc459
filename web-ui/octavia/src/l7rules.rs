//! Octavia L7 rules (the conditions of a policy): create, update, delete, and
//! how they are shown.

use http::StatusCode;
use keel_web_core::ControlPlane;
use serde_json::{json, Value};

use super::l7policies::{merge, save_policies};
use super::view::{random_uuid, L7Rule, Policy, View, POLICY_PRIORITY};
use super::write::{admin_up, boolean, created, deleted, known, need_text, now_text, text, Body};
use super::{Call, Fault, Reply};

pub(super) const RULE_FIELDS: &[&str] = &[
    "type",
    "compare_type",
    "key",
    "value",
    "invert",
    "admin_state_up",
    "tags",
];

pub(super) fn rule_settings(b: &Body, r: &mut L7Rule) -> Result<(), Fault> {
    if boolean(b, "invert")? == Some(true) {
        return Err(Fault::bad(
            "Validation failure: invert is not supported by Keel (its conditions cannot be negated).",
        ));
    }
    admin_up(b)?;
    if let Some(kind) = text(b, "type")? {
        if !["PATH", "HOST_NAME", "HEADER", "FILE_TYPE"].contains(&kind.as_str()) {
            return Err(Fault::bad(format!(
                "Validation failure: L7 rule type {kind} is not supported by Keel (PATH, HOST_NAME, HEADER, FILE_TYPE)."
            )));
        }
        r.kind = kind;
    }
    if let Some(c) = text(b, "compare_type")? {
        if !["EQUAL_TO", "STARTS_WITH", "ENDS_WITH", "CONTAINS"].contains(&c.as_str()) {
            return Err(Fault::bad(format!(
                "Validation failure: compare_type {c} is not supported by Keel (EQUAL_TO, STARTS_WITH, ENDS_WITH, CONTAINS; no REGEX)."
            )));
        }
        r.compare_type = c;
    }
    if b.contains_key("key") {
        r.key = text(b, "key")?;
    }
    if let Some(value) = text(b, "value")? {
        if value.is_empty() || value.contains(['*', '?']) || value.contains(char::is_whitespace) {
            return Err(Fault::bad(format!(
                "Invalid input for field/attribute value. Value: '{value}'. Must be non-empty, without spaces, * or ?."
            )));
        }
        r.value = value;
    }
    if r.kind == "HEADER" && r.key.as_deref().is_none_or(str::is_empty) {
        return Err(Fault::bad(
            "Validation failure: a HEADER rule needs a key (the header name).",
        ));
    }
    if r.kind != "HEADER" {
        r.key = None;
    }
    if r.kind == "FILE_TYPE" && r.compare_type != "EQUAL_TO" {
        return Err(Fault::bad(
            "Validation failure: FILE_TYPE rules compare with EQUAL_TO.",
        ));
    }
    if let Some(Value::Array(tags)) = b.get("tags") {
        r.tags = tags
            .iter()
            .filter_map(|t| t.as_str().map(str::to_owned))
            .collect();
    }
    if r.created_at.is_empty() {
        r.created_at = now_text();
    }
    r.updated_at = now_text();
    Ok(())
}

/// Refuses a second rule of one kind: Keel ANDs conditions of different
/// kinds (as Octavia ANDs rules) but ORs the values of one kind.
pub(super) fn one_per_kind(p: &Policy, r: &L7Rule) -> Result<(), Fault> {
    let same = |x: &L7Rule| {
        x.id != r.id
            && (x.kind == r.kind
                || (x.kind == "PATH" && r.kind == "FILE_TYPE")
                || (x.kind == "FILE_TYPE" && r.kind == "PATH"))
            && (r.kind != "HEADER" || x.key == r.key)
    };
    if p.rules.iter().any(same) {
        return Err(Fault::conflict(format!(
            "L7 policy {} already has a {} rule{}: Keel keeps one per type (per header name), all ANDed.",
            p.id,
            r.kind,
            r.key.as_ref().map(|k| format!(" for {k}")).unwrap_or_default()
        )));
    }
    Ok(())
}

pub(super) async fn create_rule<C: ControlPlane>(
    call: &Call<'_, C>,
    policy: &str,
    b: Body,
) -> Reply {
    let mut allowed = RULE_FIELDS.to_vec();
    allowed.extend(["project_id", "tenant_id"]);
    known(&b, &allowed)?;
    need_text(&b, "type")?;
    need_text(&b, "compare_type")?;
    need_text(&b, "value")?;
    let v = call.view().await;
    let (_, mut p) = v.policy(policy)?;
    let mut r = L7Rule {
        id: random_uuid(),
        ..L7Rule::default()
    };
    rule_settings(&b, &mut r)?;
    one_per_kind(&p, &r)?;
    let id = r.id.clone();
    p.rules.push(r);
    let (lb, port) = (p.lb.clone(), p.port);
    let all = merge(vec![p], v.listener_policies(&lb, port));
    save_policies(call, &lb, port, all, Vec::new()).await?;
    let v = call.view().await;
    let (_, p) = v.policy(policy)?;
    let rule = rules_json(&v, &p)
        .into_iter()
        .find(|x| x["id"] == id.as_str());
    created("rule", rule.unwrap_or(Value::Null))
}

pub(super) async fn update_rule<C: ControlPlane>(
    call: &Call<'_, C>,
    policy: &str,
    id: &str,
    b: Body,
) -> Reply {
    known(&b, RULE_FIELDS)?;
    let v = call.view().await;
    let (_, mut p) = v.policy(policy)?;
    let Some(mut r) = p.rules.iter().find(|r| r.id == id).cloned() else {
        return Err(Fault::not_found("L7 Rule", id));
    };
    rule_settings(&b, &mut r)?;
    one_per_kind(&p, &r)?;
    if let Some(slot) = p.rules.iter_mut().find(|x| x.id == id) {
        *slot = r;
    }
    let (lb, port) = (p.lb.clone(), p.port);
    let all = merge(vec![p], v.listener_policies(&lb, port));
    save_policies(call, &lb, port, all, Vec::new()).await?;
    let v = call.view().await;
    let (_, p) = v.policy(policy)?;
    let rule = rules_json(&v, &p).into_iter().find(|x| x["id"] == id);
    Ok((StatusCode::OK, json!({ "rule": rule })))
}

pub(super) async fn delete_rule<C: ControlPlane>(
    call: &Call<'_, C>,
    policy: &str,
    id: &str,
) -> Reply {
    let v = call.view().await;
    let (_, mut p) = v.policy(policy)?;
    if !p.rules.iter().any(|r| r.id == id) {
        return Err(Fault::not_found("L7 Rule", id));
    }
    p.rules.retain(|r| r.id != id);
    let (lb, port) = (p.lb.clone(), p.port);
    let all = merge(vec![p], v.listener_policies(&lb, port));
    save_policies(call, &lb, port, all, Vec::new()).await?;
    deleted()
}

/// The rules of a policy as Octavia objects.
pub(crate) fn rules_json(v: &View, p: &Policy) -> Vec<Value> {
    let project = v.project(Some(&p.lb));
    p.rules
        .iter()
        .map(|r| {
            json!({
                "id": r.id,
                "type": r.kind,
                "compare_type": r.compare_type,
                "key": r.key,
                "value": r.value,
                "invert": false,
                "admin_state_up": true,
                "provisioning_status": v.provisioning(),
                "operating_status": "ONLINE",
                "project_id": project,
                "tenant_id": project,
                "created_at": r.created_at,
                "updated_at": r.updated_at,
                "tags": r.tags,
            })
        })
        .collect()
}

/// The Keel rule an L7 policy becomes (`None` while it has no rules: an
/// Octavia policy without rules matches nothing).
pub(crate) fn keel_rule(p: &Policy, index: usize) -> Option<Value> {
    if p.rules.is_empty() {
        return None;
    }
    let mut rule = json!({
        "priority": POLICY_PRIORITY + u32::try_from(index).unwrap_or(0) + 1,
    });
    let glob = |compare: &str, value: &str| match compare {
        "STARTS_WITH" => format!("{value}*"),
        "ENDS_WITH" => format!("*{value}"),
        "CONTAINS" => format!("*{value}*"),
        _ => value.to_owned(),
    };
    for r in &p.rules {
        match (r.kind.as_str(), r.compare_type.as_str()) {
            ("PATH", "STARTS_WITH") => rule["path_prefix"] = json!(r.value),
            ("PATH", "EQUAL_TO") => rule["path"] = json!(r.value),
            ("PATH", compare) => rule["path_glob"] = json!(glob(compare, &r.value)),
            ("FILE_TYPE", _) => rule["path_glob"] = json!(format!("*.{}", r.value)),
            ("HOST_NAME", compare) => rule["host"] = json!(glob(compare, &r.value)),
            ("HEADER", compare) => {
                let key = r.key.clone().unwrap_or_default();
                if rule.get("header").is_none() {
                    rule["header"] = json!({});
                }
                rule["header"][key] = json!(glob(compare, &r.value));
            }
            _ => {}
        }
    }
    match p.action.as_str() {
        "REDIRECT_TO_POOL" => rule["pool"] = json!(p.redirect_pool),
        "REJECT" => {
            rule["fixed_response"] =
                json!({ "status": 403, "content_type": "text/plain", "body": "Forbidden\n" });
        }
        "REDIRECT_TO_URL" | "REDIRECT_PREFIX" => {
            let url = p
                .redirect_url
                .as_deref()
                .or(p.redirect_prefix.as_deref())
                .unwrap_or_default();
            let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
            let (authority, tail) = rest.find('/').map_or((rest, ""), |i| rest.split_at(i));
            let (host, port) = match authority.rsplit_once(':') {
                Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => (h, Some(p)),
                _ => (authority, None),
            };
            let (path, query) = tail.split_once('?').unwrap_or((tail, ""));
            let mut redirect = json!({
                "status": p.redirect_http_code.unwrap_or(302),
                "scheme": scheme,
                "host": host,
                "port": port.unwrap_or(if scheme == "https" { "443" } else { "80" }),
            });
            if p.action == "REDIRECT_TO_URL" {
                redirect["path"] = json!(if path.is_empty() { "/" } else { path });
                redirect["query"] = json!(query);
            } else {
                redirect["path"] = json!(format!("{}#{{path}}", path.trim_end_matches('/')));
            }
            rule["redirect"] = redirect;
        }
        _ => {}
    }
    Some(rule)
}
