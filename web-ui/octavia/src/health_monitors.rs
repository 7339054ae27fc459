//! Octavia health monitors (a pool's health check): create, update, delete,
//! and how one is shown.

use http::StatusCode;
use keel_model::{CheckKind, Document, Pool};
use keel_web_core::ControlPlane;
use serde_json::{json, Value};

use super::view::{monitor_key, secs, tags, uuid, View};
use super::write::{
    admin_up, as_settings, created, describe, doc_value, int, known, need_int, need_text, note_of,
    pool_mut, pool_owner, remove, text, Body,
};
use super::{Call, Fault, Reply};

pub(super) const MONITOR_FIELDS: &[&str] = &[
    "name",
    "delay",
    "timeout",
    "max_retries",
    "max_retries_down",
    "http_method",
    "url_path",
    "expected_codes",
    "admin_state_up",
    "domain_name",
    "http_version",
    "tags",
];

pub(super) fn monitor_settings(b: &Body, hc: &mut Value, tls: bool) -> Result<(), Fault> {
    if let Some(kind) = text(b, "type")? {
        hc["type"] = json!(match kind.as_str() {
            "HTTP" => "http",
            "HTTPS" if tls => "http",
            "HTTPS" => {
                return Err(Fault::bad(
                    "Validation failure: an HTTPS monitor needs a pool with tls_enabled (Keel checks over the pool's TLS); use HTTP or TCP.",
                ))
            }
            "TCP" => "tcp",
            other =>
                return Err(Fault::bad(format!(
                    "Validation failure: health monitor type {other} is not supported by Keel (HTTP, HTTPS, TCP)."
                ))),
        });
    }
    if let Some(d) = int(b, "delay", 1, 86_400)? {
        hc["interval"] = json!(format!("{d}s"));
    }
    if let Some(t) = int(b, "timeout", 1, 86_400)? {
        hc["timeout"] = json!(format!("{t}s"));
    }
    if let Some(n) = int(b, "max_retries", 1, 10)? {
        hc["healthy_threshold"] = json!(n);
    }
    if let Some(n) = int(b, "max_retries_down", 1, 10)? {
        hc["unhealthy_threshold"] = json!(n);
    }
    if let Some(v) = b.get("http_version").filter(|v| !v.is_null()) {
        if v.as_f64().is_none_or(|x| x != 1.0 && x != 1.1) {
            return Err(Fault::bad(format!(
                "Invalid input for field/attribute http_version. Value: {v}. Must be 1.0 or 1.1."
            )));
        }
    }
    let http = hc["type"] == "http";
    for (field, key) in [
        ("http_method", "method"),
        ("url_path", "path"),
        ("expected_codes", "expected_codes"),
        ("domain_name", "host"),
    ] {
        if let Some(x) = text(b, field)? {
            if !http {
                return Err(Fault::bad(format!(
                    "Validation failure: {field} is only for HTTP and HTTPS monitors."
                )));
            }
            if field == "url_path" && !x.starts_with('/') {
                return Err(Fault::bad(format!(
                    "Invalid input for field/attribute url_path. Value: '{x}'. Must start with /."
                )));
            }
            hc[key] = json!(x);
        }
    }
    if http {
        for (key, default) in [("method", "GET"), ("path", "/"), ("expected_codes", "200")] {
            if hc.get(key).is_none_or(Value::is_null) {
                hc[key] = json!(default);
            }
        }
    } else if let Value::Object(m) = hc {
        for key in ["method", "path", "expected_codes", "host"] {
            m.remove(key);
        }
    }
    Ok(())
}

pub(super) async fn create_monitor<C: ControlPlane>(call: &Call<'_, C>, b: Body) -> Reply {
    let mut allowed = MONITOR_FIELDS.to_vec();
    allowed.extend(["pool_id", "type", "project_id", "tenant_id"]);
    known(&b, &allowed)?;
    admin_up(&b)?;
    let v = call.view().await;
    let pool_id = need_text(&b, "pool_id")?;
    let pool = v.pool_named(&pool_id)?;
    let p = &v.state.spec.pools[&pool];
    if p.health_check.is_some() {
        return Err(Fault::conflict(format!(
            "Pool {pool_id} already has a health monitor."
        )));
    }
    need_text(&b, "type")?;
    need_int(&b, "delay", 1, 86_400)?;
    need_int(&b, "timeout", 1, 86_400)?;
    need_int(&b, "max_retries", 1, 10)?;
    let mut hc = json!({ "unhealthy_threshold": 3 });
    monitor_settings(&b, &mut hc, p.tls.is_some())?;
    created("healthmonitor", save(call, &v, &pool, hc, &b).await?)
}

/// Sets `pool`'s health check to `hc` and its note from body `b`; what
/// then shows.
async fn save<C: ControlPlane>(
    call: &Call<'_, C>,
    v: &View,
    pool: &str,
    hc: Value,
    b: &Body,
) -> Result<Value, Fault> {
    let key = monitor_key(pool);
    let mut note = note_of(v, &key);
    describe(b, &mut note)?;
    call.commit(
        Some(&pool_owner(v, pool)),
        |doc| {
            pool_mut(doc, pool)?.health_check = Some(doc_value(hc.clone())?);
            Ok(())
        },
        vec![(key.clone(), note.clone())],
    )
    .await?;
    Ok(call.view().await.monitor_of(pool))
}

pub(super) async fn update_monitor<C: ControlPlane>(
    call: &Call<'_, C>,
    id: &str,
    b: Body,
) -> Reply {
    known(&b, MONITOR_FIELDS)?;
    admin_up(&b)?;
    let v = call.view().await;
    let pool = v.monitor_named(id)?;
    let p = &v.state.spec.pools[&pool];
    let mut hc = Document::from_spec(&v.state.spec)
        .pools
        .into_iter()
        .find(|x| x.name == pool)
        .and_then(|x| x.health_check)
        .map(as_settings)
        .ok_or_else(|| Fault::not_found("Health Monitor", id))?;
    monitor_settings(&b, &mut hc, p.tls.is_some())?;
    let hm = save(call, &v, &pool, hc, &b).await?;
    Ok((StatusCode::OK, json!({ "healthmonitor": hm })))
}

pub(super) async fn delete_monitor<C: ControlPlane>(call: &Call<'_, C>, id: &str) -> Reply {
    let v = call.view().await;
    let pool = v.monitor_named(id)?;
    remove(call, &pool_owner(&v, &pool), |doc| {
        pool_mut(doc, &pool)?.health_check = None;
        Ok(())
    })
    .await
}

impl View {
    /// The health monitor of `pool` (null if it is gone meanwhile).
    pub fn monitor_of(&self, pool: &str) -> Value {
        self.state
            .spec
            .pools
            .get(pool)
            .map_or(Value::Null, |p| self.monitor_json(p))
    }

    pub fn monitor_json(&self, pool: &Pool) -> Value {
        let note = self.note(&monitor_key(&pool.name));
        let (created, updated) = self.times(&note);
        let Some(hc) = &pool.health_check else {
            return json!(null);
        };
        let project = self.project(self.pool_lb(&pool.name).as_deref());
        let (kind, method, path, host, codes) = match &hc.kind {
            CheckKind::Tcp => ("TCP", None, None, None, None),
            CheckKind::Http {
                method,
                path,
                host,
                expected_codes,
            } => (
                if pool.tls.is_some() { "HTTPS" } else { "HTTP" },
                Some(method.clone()),
                Some(path.clone()),
                host.clone(),
                Some(expected_codes.to_string()),
            ),
        };
        json!({
            "id": uuid("healthmonitor", &pool.name),
            "name": note.get("name").cloned().unwrap_or_default(),
            "type": kind,
            "delay": secs(hc.interval),
            "timeout": secs(hc.timeout),
            "max_retries": hc.healthy_threshold,
            "max_retries_down": hc.unhealthy_threshold,
            "http_method": method,
            "url_path": path,
            "expected_codes": codes,
            "domain_name": host,
            "http_version": if kind == "TCP" { json!(null) } else { json!(1.1) },
            "admin_state_up": true,
            "pools": [ { "id": uuid("pool", &pool.name) } ],
            "project_id": project,
            "tenant_id": project,
            "provisioning_status": self.provisioning(),
            "operating_status": "ONLINE",
            "created_at": created,
            "updated_at": updated,
            "tags": tags(&note),
        })
    }
}
