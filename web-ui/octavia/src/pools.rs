//! Octavia pools: create, update, delete, and how one is shown.

use std::collections::BTreeMap;

use http::StatusCode;
use keel_model::{Document, Pool, PoolDoc, Protocol, ProxyProtocol, Stickiness};
use keel_web_core::ControlPlane;
use serde_json::{json, Value};

use super::view::{listener_id, member_id, pool_key, tags, uuid, View};
use super::write::{
    admin_up, as_settings, boolean, created, deleted, describe, from_settings, int, keel_name,
    known, listener_mut, need_text, note_of, pool_mut, pool_owner, text, unset, Body,
};
use super::{Call, Fault, Reply};

pub(super) const POOL_FIELDS: &[&str] = &[
    "name",
    "description",
    "admin_state_up",
    "lb_algorithm",
    "session_persistence",
    "tls_enabled",
    "tls_container_ref",
    "ca_tls_container_ref",
    "crl_container_ref",
    "tls_ciphers",
    "tls_versions",
    "alpn_protocols",
    "tags",
];

/// Applies a pool body's settings to `p` and the annotation `note`.
pub(super) fn pool_settings(
    b: &Body,
    p: &mut Value,
    note: &mut BTreeMap<String, String>,
) -> Result<(), Fault> {
    unset(
        b,
        &[
            "tls_container_ref",
            "ca_tls_container_ref",
            "crl_container_ref",
            "tls_ciphers",
            "tls_versions",
            "alpn_protocols",
            "healthmonitor",
            "members",
        ],
    )?;
    if let Some(a) = text(b, "lb_algorithm")? {
        p["algorithm"] = json!(match a.as_str() {
            "ROUND_ROBIN" => "round_robin",
            "LEAST_CONNECTIONS" => "least_outstanding",
            "SOURCE_IP" => "source_hash",
            other =>
                return Err(Fault::bad(format!(
                    "Validation failure: lb_algorithm {other} is not supported by Keel (ROUND_ROBIN, LEAST_CONNECTIONS, SOURCE_IP)."
                ))),
        });
        note.insert("lb_algorithm".into(), a);
    }
    match b.get("session_persistence") {
        None => {}
        Some(Value::Null) => {
            p["stickiness"] = Value::Null;
            if note.remove("source_ip_persistence").is_some() {
                p["hash_on"] = Value::Null;
                p["algorithm"] = json!("round_robin");
            }
        }
        Some(Value::Object(s)) => {
            let timeout = int(s, "persistence_timeout", 1, 7 * 24 * 3600)?;
            let duration = timeout.map(|t| format!("{t}s"));
            match text(s, "type")?.as_deref() {
                Some("HTTP_COOKIE") => {
                    p["stickiness"] = json!({ "type": "lb_cookie", "duration": duration });
                }
                Some("APP_COOKIE") => {
                    let cookie = need_text(s, "cookie_name")?;
                    p["stickiness"] =
                        json!({ "type": "app_cookie", "cookie": cookie, "duration": duration });
                }
                Some("SOURCE_IP") => {
                    p["algorithm"] = json!("consistent_hash");
                    p["hash_on"] = json!("source");
                    note.insert("source_ip_persistence".into(), "true".into());
                }
                other => {
                    return Err(Fault::bad(format!(
                        "Validation failure: session_persistence type {} is not supported (HTTP_COOKIE, APP_COOKIE, SOURCE_IP).",
                        other.unwrap_or("(none)")
                    )))
                }
            }
            if let Some(Value::Object(st)) = p.get_mut("stickiness") {
                st.retain(|_, v| !v.is_null());
            }
        }
        Some(other) => {
            return Err(Fault::bad(format!(
                "Invalid input for field/attribute session_persistence. Value: {other}."
            )))
        }
    }
    if let Some(tls) = boolean(b, "tls_enabled")? {
        p["tls"] = if tls {
            json!({ "verify": false })
        } else {
            Value::Null
        };
    }
    describe(b, note)
}

pub(super) async fn create_pool<C: ControlPlane>(call: &Call<'_, C>, b: Body) -> Reply {
    let mut allowed = POOL_FIELDS.to_vec();
    allowed.extend([
        "protocol",
        "listener_id",
        "loadbalancer_id",
        "project_id",
        "tenant_id",
        "healthmonitor",
        "members",
    ]);
    known(&b, &allowed)?;
    admin_up(&b)?;
    let v = call.view().await;
    let listener = text(&b, "listener_id")?
        .map(|id| v.listener_named(&id).map(|l| (id, l)))
        .transpose()?;
    let lb = match (&listener, text(&b, "loadbalancer_id")?) {
        (Some((_, (lb, _))), None) => lb.clone(),
        (None, Some(id)) => v.lb_named(&id)?,
        (Some((_, (lb, _))), Some(id)) if *lb == v.lb_named(&id)? => lb.clone(),
        (Some(_), Some(_)) => return Err(Fault::bad(
            "Validation failure: the listener is on another load balancer than loadbalancer_id.",
        )),
        (None, None) => return Err(Fault::bad(
            "Validation failure: A pool must be created with a listener_id or a loadbalancer_id.",
        )),
    };
    if let Some((id, (lb, port))) = &listener {
        let l = v.state.spec.load_balancers[lb]
            .listeners
            .iter()
            .find(|l| l.port == *port);
        if let Some(p) = l.and_then(|l| l.default_pool.as_ref()) {
            return Err(Fault::conflict(format!(
                "Listener {id} already has default pool {}.",
                uuid("pool", p)
            )));
        }
    }
    let protocol = need_text(&b, "protocol")?;
    let mut p = json!({ "members": [] });
    match protocol.as_str() {
        "HTTP" | "TCP" => {}
        "HTTPS" => {}
        "PROXY" => p["proxy_protocol"] = json!("v1"),
        "PROXYV2" => p["proxy_protocol"] = json!("v2"),
        other => {
            return Err(Fault::bad(format!(
                "Validation failure: pool protocol {other} is not supported by Keel (HTTP, HTTPS, TCP, PROXY, PROXYV2)."
            )))
        }
    }
    need_text(&b, "lb_algorithm")?;
    let name = text(&b, "name")?;
    let pool = keel_name(
        name.as_deref(),
        |n| v.state.spec.pools.contains_key(n),
        "pool",
    );
    p["name"] = json!(pool);
    let mut note = BTreeMap::from([
        ("name".to_owned(), name.unwrap_or_default()),
        ("loadbalancer".to_owned(), lb.clone()),
        ("protocol".to_owned(), protocol),
    ]);
    pool_settings(&b, &mut p, &mut note)?;
    let doc_pool: PoolDoc = from_settings(p)?;
    call.commit(
        Some(&uuid("loadbalancer", &lb)),
        |doc| {
            doc.pools.push(doc_pool.clone());
            if let Some((_, (lb, port))) = &listener {
                listener_mut(doc, lb, *port)?.default_pool = Some(pool.clone());
            }
            Ok(())
        },
        vec![(pool_key(&pool), note)],
    )
    .await?;
    let v = call.view().await;
    created(
        "pool",
        v.state
            .spec
            .pools
            .get(&pool)
            .map_or(Value::Null, |p| v.pool_json(p)),
    )
}

pub(super) async fn update_pool<C: ControlPlane>(call: &Call<'_, C>, id: &str, b: Body) -> Reply {
    known(&b, POOL_FIELDS)?;
    admin_up(&b)?;
    let v = call.view().await;
    let pool = v.pool_named(id)?;
    let doc = Document::from_spec(&v.state.spec);
    let mut current = doc
        .pools
        .iter()
        .find(|p| p.name == pool)
        .map(as_settings)
        .ok_or_else(|| Fault::not_found("Pool", id))?;
    let key = pool_key(&pool);
    let mut note = note_of(&v, &key);
    pool_settings(&b, &mut current, &mut note)?;
    let updated: PoolDoc = from_settings(current)?;
    call.commit(
        Some(&pool_owner(&v, &pool)),
        |doc| {
            *pool_mut(doc, &pool)? = updated.clone();
            Ok(())
        },
        vec![(key, note)],
    )
    .await?;
    let v = call.view().await;
    let p = v
        .state
        .spec
        .pools
        .get(&pool)
        .map_or(Value::Null, |p| v.pool_json(p));
    Ok((StatusCode::OK, json!({ "pool": p })))
}

pub(super) async fn delete_pool<C: ControlPlane>(call: &Call<'_, C>, id: &str) -> Reply {
    let v = call.view().await;
    let pool = v.pool_named(id)?;
    if let Some(p) = v
        .policies()
        .iter()
        .find(|p| p.redirect_pool.as_deref() == Some(pool.as_str()))
    {
        return Err(Fault::conflict(format!(
            "Pool {id} is in use by L7 policy {}.",
            p.id
        )));
    }
    call.commit(
        Some(&pool_owner(&v, &pool)),
        |doc| {
            for l in doc
                .load_balancers
                .iter_mut()
                .flat_map(|x| x.listeners.iter_mut())
            {
                if l.default_pool.as_deref() == Some(pool.as_str()) {
                    l.default_pool = None;
                }
            }
            doc.pools.retain(|p| p.name != pool);
            Ok(())
        },
        Vec::new(),
    )
    .await?;
    deleted()
}

impl View {
    pub(super) fn pool_protocol(&self, pool: &Pool, note: &BTreeMap<String, String>) -> String {
        if let Some(p) = note.get("protocol") {
            return p.clone();
        }
        match pool.proxy_protocol {
            Some(ProxyProtocol::V1) => return "PROXY".into(),
            Some(ProxyProtocol::V2) => return "PROXYV2".into(),
            None => {}
        }
        let user = self
            .state
            .spec
            .load_balancers
            .values()
            .flat_map(|lb| &lb.listeners)
            .find(|l| l.default_pool.as_deref() == Some(pool.name.as_str()));
        match user.map(|l| l.protocol) {
            Some(Protocol::Http | Protocol::Https) => "HTTP".into(),
            Some(Protocol::TlsPassthrough) => "HTTPS".into(),
            Some(Protocol::Tcp | Protocol::Tls) => "TCP".into(),
            None if pool.tls.is_some() => "HTTPS".into(),
            None => "HTTP".into(),
        }
    }

    pub fn pool_json(&self, pool: &Pool) -> Value {
        let note = self.note(&pool_key(&pool.name));
        let (created, updated) = self.times(&note);
        let lb = self.pool_lb(&pool.name);
        let project = self.project(lb.as_deref());
        let listeners: Vec<Value> = self
            .state
            .spec
            .load_balancers
            .values()
            .flat_map(|x| {
                x.listeners
                    .iter()
                    .filter(|l| l.default_pool.as_deref() == Some(pool.name.as_str()))
                    .map(|l| json!({ "id": listener_id(&x.name, l.port) }))
            })
            .collect();
        let algorithm = note.get("lb_algorithm").cloned().unwrap_or_else(|| {
            match pool.algorithm {
                keel_model::Algorithm::LeastOutstanding => "LEAST_CONNECTIONS",
                keel_model::Algorithm::SourceHash => "SOURCE_IP",
                _ => "ROUND_ROBIN",
            }
            .to_owned()
        });
        let persistence = match (&pool.stickiness, pool.algorithm) {
            (Some(Stickiness::LbCookie { .. }), _) => {
                json!({ "type": "HTTP_COOKIE", "cookie_name": null, "persistence_timeout": null, "persistence_granularity": null })
            }
            (Some(Stickiness::AppCookie { cookie, .. }), _) => {
                json!({ "type": "APP_COOKIE", "cookie_name": cookie, "persistence_timeout": null, "persistence_granularity": null })
            }
            (None, keel_model::Algorithm::ConsistentHash)
                if note.contains_key("source_ip_persistence") =>
            {
                json!({ "type": "SOURCE_IP", "cookie_name": null, "persistence_timeout": null, "persistence_granularity": null })
            }
            _ => json!(null),
        };
        json!({
            "id": uuid("pool", &pool.name),
            "name": note.get("name").map_or(pool.name.as_str(), String::as_str),
            "description": note.get("description").cloned().unwrap_or_default(),
            "admin_state_up": true,
            "provisioning_status": self.provisioning(),
            "operating_status": self.pool_status(pool),
            "protocol": self.pool_protocol(pool, &note),
            "lb_algorithm": algorithm,
            "session_persistence": persistence,
            "loadbalancers": lb.map(|lb| vec![json!({ "id": uuid("loadbalancer", &lb) })]).unwrap_or_default(),
            "listeners": listeners,
            "members": pool.members.iter().map(|m| json!({ "id": member_id(&pool.name, m.address) })).collect::<Vec<_>>(),
            "healthmonitor_id": pool.health_check.as_ref().map(|_| uuid("healthmonitor", &pool.name)),
            "project_id": project,
            "tenant_id": project,
            "created_at": created,
            "updated_at": updated,
            "tls_enabled": pool.tls.is_some(),
            "tls_container_ref": null,
            "ca_tls_container_ref": null,
            "crl_container_ref": null,
            "tls_ciphers": null,
            "tls_versions": null,
            "alpn_protocols": null,
            "tags": tags(&note),
        })
    }
}
