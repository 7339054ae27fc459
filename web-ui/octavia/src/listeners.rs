//! Octavia listeners: create, update, delete, and how one is shown.

use std::collections::BTreeMap;

use http::StatusCode;
use keel_model::{Document, Listener, ListenerDoc, Protocol};
use keel_web_core::ControlPlane;
use serde_json::{json, Value};

use super::view::{listener_id, listener_key, millis, octavia_protocol, tags, uuid, View};
use super::write::{
    admin_up, as_settings, created, describe, doc_value, from_settings, int, known, listener_mut,
    need_int, need_text, note_of, remove, text, unset, Body,
};
use super::{Call, Fault, Reply};

pub(super) const LISTENER_FIELDS: &[&str] = &[
    "name",
    "description",
    "admin_state_up",
    "default_pool_id",
    "connection_limit",
    "default_tls_container_ref",
    "sni_container_refs",
    "insert_headers",
    "timeout_client_data",
    "timeout_member_connect",
    "timeout_member_data",
    "timeout_tcp_inspect",
    "tags",
    "allowed_cidrs",
    "client_ca_tls_container_ref",
    "client_authentication",
    "client_crl_container_ref",
    "tls_ciphers",
    "tls_versions",
    "alpn_protocols",
    "hsts_max_age",
    "hsts_include_subdomains",
    "hsts_preload",
];

pub(super) const LISTENER_UNSUPPORTED: &[&str] = &[
    "timeout_member_connect",
    "timeout_member_data",
    "timeout_tcp_inspect",
    "allowed_cidrs",
    "client_ca_tls_container_ref",
    "client_crl_container_ref",
    "tls_ciphers",
    "hsts_max_age",
    "hsts_include_subdomains",
    "hsts_preload",
    "default_pool",
    "l7policies",
];

/// Applies a listener body's settings (create or update) to `l`.
pub(super) fn listener_settings(b: &Body, l: &mut Value, v: &View) -> Result<(), Fault> {
    unset(b, LISTENER_UNSUPPORTED)?;
    if let Some(c) = text(b, "client_authentication")?.filter(|c| c != "NONE") {
        return Err(Fault::bad(format!(
            "Validation failure: client_authentication {c} is not supported by Keel."
        )));
    }
    if b.contains_key("default_pool_id") {
        l["default_pool"] = match text(b, "default_pool_id")? {
            Some(id) => json!(v.pool_named(&id)?),
            None => Value::Null,
        };
    }
    if b.contains_key("connection_limit") {
        l["max_connections"] = match int(b, "connection_limit", -1, 1_000_000)? {
            None | Some(-1) => Value::Null,
            Some(n) => json!(n),
        };
    }
    if let Some(ms) = int(b, "timeout_client_data", 1, 7 * 24 * 3_600_000)? {
        l["idle_timeout"] = json!(format!("{ms}ms"));
    }
    if let Some(Value::Object(headers)) = b.get("insert_headers") {
        for (k, on) in headers {
            let known = ["X-Forwarded-For", "X-Forwarded-Port", "X-Forwarded-Proto"]
                .iter()
                .any(|h| h.eq_ignore_ascii_case(k));
            let on = on.as_bool().unwrap_or(false)
                || on.as_str().is_some_and(|s| s.eq_ignore_ascii_case("true"));
            if !known || !on {
                return Err(Fault::bad(format!(
                    "Validation failure: insert_headers {k}: Keel always inserts X-Forwarded-For, X-Forwarded-Port and X-Forwarded-Proto, and no other header."
                )));
            }
        }
    }
    let tls = l["protocol"] == "https";
    let mut certificates: Vec<Value> = Vec::new();
    if let Some(c) = text(b, "default_tls_container_ref")? {
        certificates.push(json!(c));
    }
    if let Some(Value::Array(refs)) = b.get("sni_container_refs") {
        certificates.extend(refs.iter().cloned());
    }
    if !certificates.is_empty() {
        if !tls {
            return Err(Fault::bad(
                "Validation failure: certificates are only for TERMINATED_HTTPS listeners.",
            ));
        }
        l["certificates"] = json!(certificates);
    }
    if let Some(Value::Array(versions)) = b.get("tls_versions") {
        let has = |x: &str| versions.iter().any(|v| v == x);
        l["tls_policy"] = if has("TLSv1.2") {
            json!("compatible")
        } else if has("TLSv1.3") {
            json!("modern")
        } else {
            return Err(Fault::bad(
                "Validation failure: tls_versions must include TLSv1.2 or TLSv1.3 (Keel offers TLSv1.3 alone, or TLSv1.2 and TLSv1.3).",
            ));
        };
    }
    if let Some(Value::Array(alpn)) = b.get("alpn_protocols") {
        l["http2"] = json!(alpn.iter().any(|p| p == "h2"));
    }
    Ok(())
}

pub(super) async fn create_listener<C: ControlPlane>(call: &Call<'_, C>, b: Body) -> Reply {
    let mut allowed = LISTENER_FIELDS.to_vec();
    allowed.extend([
        "protocol",
        "protocol_port",
        "loadbalancer_id",
        "project_id",
        "tenant_id",
        "default_pool",
        "l7policies",
    ]);
    known(&b, &allowed)?;
    admin_up(&b)?;
    let v = call.view().await;
    let lb_id = need_text(&b, "loadbalancer_id")?;
    let lb = v.lb_named(&lb_id)?;
    let protocol = match need_text(&b, "protocol")?.as_str() {
        "HTTP" => "http",
        "TCP" => "tcp",
        "HTTPS" => "tls_passthrough",
        "TERMINATED_HTTPS" => "https",
        other => {
            return Err(Fault::bad(format!(
                "Validation failure: listener protocol {other} is not supported by Keel (HTTP, HTTPS, TCP, TERMINATED_HTTPS)."
            )))
        }
    };
    if protocol == "https" && text(&b, "default_tls_container_ref")?.is_none() {
        return Err(Fault::bad(
            "Validation failure: a TERMINATED_HTTPS listener needs default_tls_container_ref: the name of a Keel certificate (keel certificate add, or the dashboard).",
        ));
    }
    let port = u16::try_from(need_int(&b, "protocol_port", 1, 65535)?).unwrap_or(0);
    if v.state.spec.load_balancers[&lb]
        .listeners
        .iter()
        .any(|l| l.port == port)
    {
        return Err(Fault::conflict(format!(
            "Another Listener on this Load Balancer is already using protocol_port {port}"
        )));
    }
    let mut l = json!({ "port": port, "protocol": protocol });
    listener_settings(&b, &mut l, &v)?;
    let listener: ListenerDoc = doc_value(l)?;
    let mut note = BTreeMap::new();
    describe(&b, &mut note)?;
    call.commit(
        Some(&lb_id),
        |doc| {
            if let Some(x) = doc.load_balancers.iter_mut().find(|x| x.name == lb) {
                x.listeners.push(listener.clone());
            }
            Ok(())
        },
        vec![(listener_key(&lb, port), note)],
    )
    .await?;
    created("listener", call.view().await.listener_at(&lb, port))
}

pub(super) async fn update_listener<C: ControlPlane>(
    call: &Call<'_, C>,
    id: &str,
    b: Body,
) -> Reply {
    known(&b, LISTENER_FIELDS)?;
    admin_up(&b)?;
    let v = call.view().await;
    let (lb, port) = v.listener_named(id)?;
    let doc = Document::from_spec(&v.state.spec);
    let mut current = doc
        .load_balancers
        .iter()
        .find(|x| x.name == lb)
        .and_then(|x| x.listeners.iter().find(|l| l.port == i64::from(port)))
        .map(as_settings)
        .ok_or_else(|| Fault::not_found("Listener", id))?;
    listener_settings(&b, &mut current, &v)?;
    let listener: ListenerDoc = from_settings(current)?;
    let key = listener_key(&lb, port);
    let mut note = note_of(&v, &key);
    describe(&b, &mut note)?;
    call.commit(
        Some(&uuid("loadbalancer", &lb)),
        |doc| {
            *listener_mut(doc, &lb, port)? = listener.clone();
            Ok(())
        },
        vec![(key, note)],
    )
    .await?;
    let l = call.view().await.listener_at(&lb, port);
    Ok((StatusCode::OK, json!({ "listener": l })))
}

pub(super) async fn delete_listener<C: ControlPlane>(call: &Call<'_, C>, id: &str) -> Reply {
    let v = call.view().await;
    let (lb, port) = v.listener_named(id)?;
    remove(call, &uuid("loadbalancer", &lb), |doc| {
        if let Some(x) = doc.load_balancers.iter_mut().find(|x| x.name == lb) {
            x.listeners.retain(|l| l.port != i64::from(port));
        }
        Ok(())
    })
    .await
}

impl View {
    pub fn listener_json(&self, lb: &str, l: &Listener) -> Value {
        let project = self.project(Some(lb));
        let note = self.note(&listener_key(lb, l.port));
        let (created, updated) = self.times(&note);
        let policies: Vec<Value> = self
            .listener_policies(lb, l.port)
            .iter()
            .map(|p| json!({ "id": p.id }))
            .collect();
        let tls = l.protocol == Protocol::Https;
        json!({
            "id": listener_id(lb, l.port),
            "name": note.get("name").cloned().unwrap_or_default(),
            "description": note.get("description").cloned().unwrap_or_default(),
            "admin_state_up": true,
            "provisioning_status": self.provisioning(),
            "operating_status": self.listener_status(l),
            "protocol": octavia_protocol(l.protocol),
            "protocol_port": l.port,
            "connection_limit": l.max_connections.map_or(-1, i64::from),
            "default_pool_id": l.default_pool.as_ref().map(|p| uuid("pool", p)),
            "default_tls_container_ref": if tls { json!(l.certificates.first()) } else { json!(null) },
            "sni_container_refs": if tls { json!(l.certificates.iter().skip(1).collect::<Vec<_>>()) } else { json!([]) },
            "project_id": project,
            "tenant_id": project,
            "loadbalancers": [ { "id": uuid("loadbalancer", lb) } ],
            "l7policies": policies,
            "insert_headers": if l.protocol.is_http() {
                json!({ "X-Forwarded-For": "true", "X-Forwarded-Port": "true", "X-Forwarded-Proto": "true" })
            } else { json!({}) },
            "created_at": created,
            "updated_at": updated,
            "timeout_client_data": millis(l.idle_timeout),
            "timeout_member_connect": null,
            "timeout_member_data": null,
            "timeout_tcp_inspect": 0,
            "tags": tags(&note),
            "client_ca_tls_container_ref": null,
            "client_authentication": "NONE",
            "client_crl_container_ref": null,
            "allowed_cidrs": null,
            "tls_ciphers": null,
            "tls_versions": if tls { json!([if l.tls_policy == keel_model::TlsPolicy::Modern { "TLSv1.3" } else { "TLSv1.2" }]) } else { json!(null) },
            "alpn_protocols": if tls && l.http2 { json!(["h2", "http/1.1"]) } else { json!(null) },
            "hsts_max_age": null,
            "hsts_include_subdomains": false,
            "hsts_preload": false,
        })
    }

    /// The listener on `lb`'s `port` (null if it is gone meanwhile).
    pub fn listener_at(&self, lb: &str, port: u16) -> Value {
        self.state
            .spec
            .load_balancers
            .get(lb)
            .and_then(|x| x.listeners.iter().find(|l| l.port == port))
            .map_or(Value::Null, |l| self.listener_json(lb, l))
    }
}
