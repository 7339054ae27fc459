//! What Octavia's creates, updates and deletes share: reading a request
//! body, and the steps every change takes.
//!
//! Each change checks its body (unknown attributes and settings Keel cannot
//! honour are refused, naming the field), waits for the data plane to
//! serve the newest config (else 409, as Octavia answers while an object is
//! `PENDING_*`), and commits one atomic entry.

use std::collections::BTreeMap;

use http::StatusCode;
use keel_model::{Document, ListenerDoc, PoolDoc};
use keel_web_core::ControlPlane;
use serde_json::{json, Map, Value};

use super::view::{listener_id, uuid, View};
use super::{Call, Fault, Reply};

pub(super) type Body = Map<String, Value>;

/// Refuses attributes not in `allowed`.
pub(super) fn known(b: &Body, allowed: &[&str]) -> Result<(), Fault> {
    let unknown: Vec<&String> = b
        .keys()
        .filter(|k| !allowed.contains(&k.as_str()))
        .collect();
    if unknown.is_empty() {
        Ok(())
    } else {
        Err(Fault::bad(format!(
            "Invalid input for field/attribute {}. Unknown attribute.",
            unknown
                .iter()
                .map(|k| k.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )))
    }
}

/// Refuses `keys` set to anything but null, empty, zero or false: settings
/// Keel has no way to honour.
pub(super) fn unset(b: &Body, keys: &[&str]) -> Result<(), Fault> {
    for k in keys {
        let set = match b.get(*k) {
            None | Some(Value::Null) | Some(Value::Bool(false)) => false,
            Some(Value::String(s)) => !s.is_empty(),
            Some(Value::Array(a)) => !a.is_empty(),
            Some(Value::Object(o)) => !o.is_empty(),
            Some(Value::Number(n)) => n.as_i64() != Some(0),
            Some(Value::Bool(true)) => true,
        };
        if set {
            return Err(Fault::bad(format!(
                "Validation failure: {k} is not supported by Keel."
            )));
        }
    }
    Ok(())
}

pub(super) fn text(b: &Body, key: &str) -> Result<Option<String>, Fault> {
    match b.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(Fault::bad(format!(
            "Invalid input for field/attribute {key}. Value: {other}. Must be a string."
        ))),
    }
}

pub(super) fn need_text(b: &Body, key: &str) -> Result<String, Fault> {
    text(b, key)?.filter(|s| !s.is_empty()).ok_or_else(|| {
        Fault::bad(format!(
            "Invalid input for field/attribute {key}. Mandatory field missing."
        ))
    })
}

pub(super) fn int(b: &Body, key: &str, lo: i64, hi: i64) -> Result<Option<i64>, Fault> {
    match b.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_i64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            .filter(|n| (lo..=hi).contains(n))
            .map(Some)
            .ok_or_else(|| {
                Fault::bad(format!(
                    "Invalid input for field/attribute {key}. Value: {v}. Must be an integer from {lo} to {hi}."
                ))
            }),
    }
}

pub(super) fn need_int(b: &Body, key: &str, lo: i64, hi: i64) -> Result<i64, Fault> {
    int(b, key, lo, hi)?.ok_or_else(|| {
        Fault::bad(format!(
            "Invalid input for field/attribute {key}. Mandatory field missing."
        ))
    })
}

pub(super) fn boolean(b: &Body, key: &str) -> Result<Option<bool>, Fault> {
    match b.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(x)) => Ok(Some(*x)),
        Some(other) => Err(Fault::bad(format!(
            "Invalid input for field/attribute {key}. Value: {other}. Must be a boolean."
        ))),
    }
}

/// Keel has no administratively-down load balancers, listeners, pools or
/// monitors (members have `enabled`): delete instead.
pub(super) fn admin_up(b: &Body) -> Result<(), Fault> {
    if boolean(b, "admin_state_up")? == Some(false) {
        return Err(Fault::bad(
            "Validation failure: admin_state_up false is only supported on members; delete the object to stop it serving.",
        ));
    }
    Ok(())
}

pub(super) fn now_text() -> String {
    let t = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    t.trim_end_matches('Z').to_owned()
}

/// Copies the descriptive attributes present in `b` into `note`.
pub(super) fn describe(b: &Body, note: &mut BTreeMap<String, String>) -> Result<(), Fault> {
    for key in ["name", "description"] {
        if b.contains_key(key) {
            note.insert(key.to_owned(), text(b, key)?.unwrap_or_default());
        }
    }
    match b.get("tags") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            let mut all = Vec::new();
            for t in items {
                match t.as_str() {
                    Some(s) if !s.is_empty() && !s.contains(',') => all.push(s.to_owned()),
                    _ => {
                        return Err(Fault::bad(format!(
                            "Invalid input for field/attribute tags. Value: {t}. Tags are non-empty strings without commas."
                        )))
                    }
                }
            }
            note.insert("tags".into(), all.join(","));
        }
        Some(other) => {
            return Err(Fault::bad(format!(
                "Invalid input for field/attribute tags. Value: {other}. Must be a list."
            )))
        }
    }
    note.entry("created_at".into()).or_insert_with(now_text);
    note.insert("updated_at".into(), now_text());
    Ok(())
}

/// The Keel name for a new object: the Octavia name when it is a valid,
/// free Keel name, else `PREFIX-` and eight hex digits.
pub(super) fn keel_name(
    wanted: Option<&str>,
    taken: impl Fn(&str) -> bool,
    prefix: &str,
) -> String {
    let valid = |n: &str| {
        !n.is_empty()
            && n.len() <= 64
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    if let Some(n) = wanted.filter(|n| valid(n) && !taken(n)) {
        return n.to_owned();
    }
    loop {
        let candidate = format!("{prefix}-{}", &keel_web_core::random_hex(4));
        if !taken(&candidate) {
            return candidate;
        }
    }
}

pub(super) fn doc_value<T: serde::de::DeserializeOwned>(v: Value) -> Result<T, Fault> {
    serde_json::from_value(v).map_err(|e| Fault::bad(format!("Validation failure: {e}")))
}

/// A Keel document object as the JSON the settings functions edit.
pub(super) fn as_settings<T: serde::Serialize>(object: T) -> Value {
    serde_json::to_value(object).unwrap_or_default()
}

/// A Keel document object from the JSON the settings functions edited: a
/// setting left null takes its default.
pub(super) fn from_settings<T: serde::de::DeserializeOwned>(mut v: Value) -> Result<T, Fault> {
    if let Value::Object(m) = &mut v {
        m.retain(|_, v| !v.is_null());
    }
    doc_value(v)
}

pub(super) fn listener_mut<'a>(
    doc: &'a mut Document,
    lb: &str,
    port: u16,
) -> Result<&'a mut ListenerDoc, Fault> {
    doc.load_balancers
        .iter_mut()
        .find(|l| l.name == lb)
        .and_then(|l| l.listeners.iter_mut().find(|x| x.port == i64::from(port)))
        .ok_or_else(|| Fault::not_found("Listener", &listener_id(lb, port)))
}

pub(super) fn pool_mut<'a>(doc: &'a mut Document, pool: &str) -> Result<&'a mut PoolDoc, Fault> {
    doc.pools
        .iter_mut()
        .find(|p| p.name == pool)
        .ok_or_else(|| Fault::not_found("Pool", &uuid("pool", pool)))
}

pub(super) fn created(kind: &str, value: Value) -> Reply {
    Ok((StatusCode::CREATED, json!({ kind: value })))
}

pub(super) fn deleted() -> Reply {
    Ok((StatusCode::NO_CONTENT, Value::Null))
}

/// Once the data plane has caught up, commits `edit` (which removes
/// objects; their annotations go with them) and answers 204.
pub(super) async fn remove<C: ControlPlane>(
    call: &Call<'_, C>,
    owner: &str,
    edit: impl FnMut(&mut Document) -> Result<(), Fault>,
) -> Reply {
    call.commit(Some(owner), edit, Vec::new()).await?;
    deleted()
}

pub(super) fn note_of(v: &View, key: &str) -> BTreeMap<String, String> {
    v.state.annotations.get(key).cloned().unwrap_or_default()
}

// ---- Load balancers.

// ---- Listeners.

// ---- Pools.

// ---- Members.

// ---- Health monitors.

// ---- L7 policies and rules.

/// The settle-check ID for a pool's changes: its load balancer's.
pub(super) fn pool_owner(v: &View, pool: &str) -> String {
    v.pool_lb(pool)
        .map_or_else(|| uuid("pool", pool), |lb| uuid("loadbalancer", &lb))
}
