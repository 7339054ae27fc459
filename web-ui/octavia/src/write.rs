//! Octavia's creates, updates and deletes, as Keel config changes.
//!
//! Each call checks its body (unknown attributes and settings Keel cannot
//! honour are refused, naming the field), waits for the data plane to
//! serve the newest config (else 409, as Octavia answers while an object is
//! `PENDING_*`), and commits one atomic entry.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use http::StatusCode;
use keel_model::{Document, ListenerDoc, LoadBalancerDoc, MemberDoc, PoolDoc, RuleDoc};
use serde_json::{json, Map, Value};

use super::view::{
    keel_rule, listener_id, listener_key, member_id, member_key, monitor_key, policy_key, pool_key,
    random_uuid, uuid, L7Rule, Policy, View, POLICY_PRIORITY,
};
use super::{Call, Fault, Reply};
use keel_web_core::ControlPlane;

type Body = Map<String, Value>;

/// Refuses attributes not in `allowed`.
fn known(b: &Body, allowed: &[&str]) -> Result<(), Fault> {
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
fn unset(b: &Body, keys: &[&str]) -> Result<(), Fault> {
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

fn text(b: &Body, key: &str) -> Result<Option<String>, Fault> {
    match b.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(Fault::bad(format!(
            "Invalid input for field/attribute {key}. Value: {other}. Must be a string."
        ))),
    }
}

fn need_text(b: &Body, key: &str) -> Result<String, Fault> {
    text(b, key)?.filter(|s| !s.is_empty()).ok_or_else(|| {
        Fault::bad(format!(
            "Invalid input for field/attribute {key}. Mandatory field missing."
        ))
    })
}

fn int(b: &Body, key: &str, lo: i64, hi: i64) -> Result<Option<i64>, Fault> {
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

fn need_int(b: &Body, key: &str, lo: i64, hi: i64) -> Result<i64, Fault> {
    int(b, key, lo, hi)?.ok_or_else(|| {
        Fault::bad(format!(
            "Invalid input for field/attribute {key}. Mandatory field missing."
        ))
    })
}

fn boolean(b: &Body, key: &str) -> Result<Option<bool>, Fault> {
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
fn admin_up(b: &Body) -> Result<(), Fault> {
    if boolean(b, "admin_state_up")? == Some(false) {
        return Err(Fault::bad(
            "Validation failure: admin_state_up false is only supported on members; delete the object to stop it serving.",
        ));
    }
    Ok(())
}

fn now_text() -> String {
    let t = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    t.trim_end_matches('Z').to_owned()
}

/// Copies the descriptive attributes present in `b` into `note`.
fn describe(b: &Body, note: &mut BTreeMap<String, String>) -> Result<(), Fault> {
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
fn keel_name(wanted: Option<&str>, taken: impl Fn(&str) -> bool, prefix: &str) -> String {
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

fn doc_value<T: serde::de::DeserializeOwned>(v: Value) -> Result<T, Fault> {
    serde_json::from_value(v).map_err(|e| Fault::bad(format!("Validation failure: {e}")))
}

fn listener_mut<'a>(
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

fn pool_mut<'a>(doc: &'a mut Document, pool: &str) -> Result<&'a mut PoolDoc, Fault> {
    doc.pools
        .iter_mut()
        .find(|p| p.name == pool)
        .ok_or_else(|| Fault::not_found("Pool", &uuid("pool", pool)))
}

fn created(kind: &str, value: Value) -> Reply {
    Ok((StatusCode::CREATED, json!({ kind: value })))
}

fn deleted() -> Reply {
    Ok((StatusCode::NO_CONTENT, Value::Null))
}

/// Once the data plane has caught up, commits `edit` (which removes
/// objects; their annotations go with them) and answers 204.
async fn remove<C: ControlPlane>(
    call: &Call<'_, C>,
    owner: &str,
    edit: impl FnMut(&mut Document) -> Result<(), Fault>,
) -> Reply {
    call.settled(owner).await?;
    call.commit(edit, Vec::new()).await?;
    deleted()
}

fn note_of(v: &View, key: &str) -> BTreeMap<String, String> {
    v.state.annotations.get(key).cloned().unwrap_or_default()
}

// ---- Load balancers.

const LB_FIELDS: &[&str] = &[
    "name",
    "description",
    "admin_state_up",
    "tags",
    "vip_qos_policy_id",
    "vip_sg_ids",
];

pub(super) async fn create_lb<C: ControlPlane>(call: &Call<'_, C>, b: Body) -> Reply {
    let mut allowed = LB_FIELDS.to_vec();
    allowed.extend([
        "vip_subnet_id",
        "vip_network_id",
        "vip_port_id",
        "vip_address",
        "project_id",
        "tenant_id",
        "provider",
        "flavor_id",
        "availability_zone",
        "listeners",
        "pools",
        "additional_vips",
        "vip_vnic_type",
    ]);
    known(&b, &allowed)?;
    admin_up(&b)?;
    unset(
        &b,
        &[
            "vip_qos_policy_id",
            "flavor_id",
            "availability_zone",
            "listeners",
            "pools",
            "vip_sg_ids",
            "additional_vips",
        ],
    )?;
    if let Some(p) = text(&b, "provider")?.filter(|p| p != "keel") {
        return Err(Fault::bad(format!(
            "Provider '{p}' is not enabled (this is Keel: provider keel)."
        )));
    }
    let v = call.view().await;
    let subnets = v.subnets();
    let mut vip: Option<IpAddr> = text(&b, "vip_address")?
        .map(|a| {
            a.parse().map_err(|_| {
                Fault::bad(format!(
                    "Invalid input for field/attribute vip_address. Value: '{a}'. Not an IP address."
                ))
            })
        })
        .transpose()?;
    let subnet = if let Some(id) = text(&b, "vip_subnet_id")? {
        subnets
            .iter()
            .find(|s| s.id == id)
            .ok_or_else(|| Fault::bad(format!("Subnet {id} not found.")))?
    } else if let Some(id) = text(&b, "vip_network_id")? {
        let on: Vec<_> = subnets
            .iter()
            .filter(|s| uuid("network", &s.interface) == id)
            .collect();
        if on.is_empty() {
            return Err(Fault::bad(format!("Network {id} not found.")));
        }
        on.iter()
            .find(|s| vip.is_some_and(|ip| s.contains(ip)))
            .or_else(|| on.iter().find(|s| s.address.is_ipv4()))
            .or(on.first())
            .copied()
            .ok_or_else(|| Fault::bad(format!("Network {id} has no subnet.")))?
    } else if let Some(id) = text(&b, "vip_port_id")? {
        let port = v
            .neutron("ports")
            .into_iter()
            .find(|p| p["id"] == id.as_str())
            .ok_or_else(|| Fault::bad(format!("Port {id} not found.")))?;
        let ip = port["fixed_ips"][0]["ip_address"]
            .as_str()
            .and_then(|a| a.parse().ok());
        vip = vip.or(ip);
        let subnet = port["fixed_ips"][0]["subnet_id"]
            .as_str()
            .unwrap_or_default();
        subnets
            .iter()
            .find(|s| s.id == subnet)
            .ok_or_else(|| Fault::bad(format!("Port {id} has no subnet.")))?
    } else {
        return Err(Fault::bad(
            "Validation failure: VIP must contain one of: vip_port_id, vip_network_id, vip_subnet_id.",
        ));
    };
    if let Some(ip) = vip.filter(|ip| !subnet.contains(*ip)) {
        return Err(Fault::bad(format!(
            "Validation failure: vip_address {ip} is not in subnet {} ({}).",
            subnet.id, subnet.cidr
        )));
    }
    // A VIP Keel claims, unless it is this node's own address (then the
    // listeners simply bind every address, the node's included).
    let own = |ip: IpAddr| v.networks.iter().any(|n| n.address == ip);
    let keel_vip = vip
        .filter(|ip| !own(*ip))
        .map(|ip| format!("{ip}/{}", subnet.prefix_len));
    let name = text(&b, "name")?;
    let lb = keel_name(
        name.as_deref(),
        |n| v.state.spec.load_balancers.contains_key(n),
        "lb",
    );
    let mut note = BTreeMap::new();
    note.insert("name".into(), name.unwrap_or_default());
    describe(&b, &mut note)?;
    // The project it and everything under it belong to (lists filter on
    // it); an admin may create in another project than its own.
    if let Some(project) = text(&b, "project_id")?.or(text(&b, "tenant_id")?) {
        note.insert("project_id".into(), project);
    }
    if keel_vip.is_none() {
        note.insert(
            "vip_address".into(),
            vip.unwrap_or(subnet.address).to_string(),
        );
    }
    call.commit(
        |doc| {
            doc.load_balancers.push(LoadBalancerDoc {
                name: lb.clone(),
                vip: keel_vip.clone(),
                listeners: Vec::new(),
            });
            Ok(())
        },
        vec![(super::view::lb_key(&lb), note)],
    )
    .await?;
    created("loadbalancer", call.view().await.lb_json(&lb))
}

pub(super) async fn update_lb<C: ControlPlane>(call: &Call<'_, C>, id: &str, b: Body) -> Reply {
    known(&b, LB_FIELDS)?;
    admin_up(&b)?;
    unset(&b, &["vip_qos_policy_id", "vip_sg_ids"])?;
    let v = call.view().await;
    let lb = v.lb_named(id)?;
    call.settled(id).await?;
    let key = super::view::lb_key(&lb);
    let mut note = note_of(&v, &key);
    describe(&b, &mut note)?;
    call.commit(|_| Ok(()), vec![(key, note)]).await?;
    Ok((
        StatusCode::OK,
        json!({ "loadbalancer": call.view().await.lb_json(&lb) }),
    ))
}

pub(super) async fn delete_lb<C: ControlPlane>(call: &Call<'_, C>, id: &str) -> Reply {
    let v = call.view().await;
    let lb = v.lb_named(id)?;
    let cascade = call
        .param("cascade")
        .is_some_and(|c| c.eq_ignore_ascii_case("true") || c == "1");
    let pools = v.lb_pools(&lb);
    let has_listeners = !v.state.spec.load_balancers[&lb].listeners.is_empty();
    if !cascade && (has_listeners || !pools.is_empty()) {
        return Err(Fault::bad(format!(
            "Cannot delete Load Balancer {id} - it has children"
        )));
    }
    remove(call, id, |doc| {
        doc.load_balancers.retain(|l| l.name != lb);
        doc.pools.retain(|p| !pools.contains(&p.name));
        Ok(())
    })
    .await
}

// ---- Listeners.

const LISTENER_FIELDS: &[&str] = &[
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

const LISTENER_UNSUPPORTED: &[&str] = &[
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
fn listener_settings(b: &Body, l: &mut Value, v: &View) -> Result<(), Fault> {
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
    call.settled(&lb_id).await?;
    call.commit(
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
        .map(|l| serde_json::to_value(l).unwrap_or_default())
        .ok_or_else(|| Fault::not_found("Listener", id))?;
    listener_settings(&b, &mut current, &v)?;
    if let Value::Object(m) = &mut current {
        m.retain(|_, v| !v.is_null());
    }
    let listener: ListenerDoc = doc_value(current)?;
    let key = listener_key(&lb, port);
    let mut note = note_of(&v, &key);
    describe(&b, &mut note)?;
    call.settled(&uuid("loadbalancer", &lb)).await?;
    call.commit(
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

// ---- Pools.

const POOL_FIELDS: &[&str] = &[
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
fn pool_settings(
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
    if let Value::Object(m) = &mut p {
        m.retain(|_, v| !v.is_null());
    }
    let doc_pool: PoolDoc = doc_value(p)?;
    call.settled(&uuid("loadbalancer", &lb)).await?;
    call.commit(
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
        .map(|p| serde_json::to_value(p).unwrap_or_default())
        .ok_or_else(|| Fault::not_found("Pool", id))?;
    let key = pool_key(&pool);
    let mut note = note_of(&v, &key);
    pool_settings(&b, &mut current, &mut note)?;
    if let Value::Object(m) = &mut current {
        m.retain(|_, v| !v.is_null());
    }
    let updated: PoolDoc = doc_value(current)?;
    if let Some(lb) = v.pool_lb(&pool) {
        call.settled(&uuid("loadbalancer", &lb)).await?;
    }
    call.commit(
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
    if let Some(lb) = v.pool_lb(&pool) {
        call.settled(&uuid("loadbalancer", &lb)).await?;
    }
    call.commit(
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

// ---- Members.

const MEMBER_FIELDS: &[&str] = &[
    "name",
    "weight",
    "admin_state_up",
    "backup",
    "monitor_address",
    "monitor_port",
    "tags",
];

fn member_settings(
    b: &Body,
    m: &mut MemberDoc,
    note: &mut BTreeMap<String, String>,
) -> Result<(), Fault> {
    unset(
        b,
        &["backup", "monitor_address", "monitor_port", "request_sriov"],
    )?;
    if let Some(w) = int(b, "weight", 0, 256)? {
        m.weight = Some(w);
    }
    if let Some(up) = boolean(b, "admin_state_up")? {
        m.enabled = Some(up);
    }
    describe(b, note)
}

/// The settle-check ID for a pool's changes: its load balancer's.
fn pool_owner(v: &View, pool: &str) -> String {
    v.pool_lb(pool)
        .map_or_else(|| uuid("pool", pool), |lb| uuid("loadbalancer", &lb))
}

fn parse_member(b: &Body, v: &View) -> Result<(SocketAddr, Option<String>), Fault> {
    let address = need_text(b, "address")?;
    let ip: IpAddr = address.parse().map_err(|_| {
        Fault::bad(format!(
            "Invalid input for field/attribute address. Value: '{address}'. Not an IP address."
        ))
    })?;
    let port = u16::try_from(need_int(b, "protocol_port", 1, 65535)?).unwrap_or(0);
    let subnet = text(b, "subnet_id")?;
    if let Some(s) = &subnet {
        if !v.subnets().iter().any(|x| x.id == *s) {
            return Err(Fault::bad(format!("Subnet {s} not found.")));
        }
    }
    Ok((SocketAddr::new(ip, port), subnet))
}

pub(super) async fn create_member<C: ControlPlane>(
    call: &Call<'_, C>,
    pool_id: &str,
    b: Body,
) -> Reply {
    let mut allowed = MEMBER_FIELDS.to_vec();
    allowed.extend([
        "address",
        "protocol_port",
        "subnet_id",
        "project_id",
        "tenant_id",
        "vnic_type",
        "request_sriov",
    ]);
    known(&b, &allowed)?;
    let v = call.view().await;
    let pool = v.pool_named(pool_id)?;
    let (address, subnet) = parse_member(&b, &v)?;
    if v.state.spec.pools[&pool]
        .members
        .iter()
        .any(|m| m.address == address)
    {
        return Err(Fault::conflict(format!(
            "Another member on this pool is already using ip address {} on protocol_port {}.",
            address.ip(),
            address.port()
        )));
    }
    let mut member = MemberDoc {
        address: address.to_string(),
        weight: None,
        enabled: None,
    };
    let mut note = BTreeMap::new();
    if let Some(s) = subnet {
        note.insert("subnet_id".into(), s);
    }
    member_settings(&b, &mut member, &mut note)?;
    call.settled(&pool_owner(&v, &pool)).await?;
    call.commit(
        |doc| {
            pool_mut(doc, &pool)?.members.push(member.clone());
            Ok(())
        },
        vec![(member_key(&pool, address), note)],
    )
    .await?;
    let v = call.view().await;
    let id = member_id(&pool, address);
    let m = v
        .members(&pool)
        .into_iter()
        .find(|m| m["id"] == id.as_str());
    created("member", m.unwrap_or(Value::Null))
}

pub(super) async fn update_member<C: ControlPlane>(
    call: &Call<'_, C>,
    pool_id: &str,
    id: &str,
    b: Body,
) -> Reply {
    known(&b, MEMBER_FIELDS)?;
    let v = call.view().await;
    let pool = v.pool_named(pool_id)?;
    let address = v.member_named(&pool, id)?;
    let key = member_key(&pool, address);
    let mut note = note_of(&v, &key);
    let mut member = Document::from_spec(&v.state.spec)
        .pools
        .into_iter()
        .find(|p| p.name == pool)
        .and_then(|p| {
            p.members
                .into_iter()
                .find(|m| m.address == address.to_string())
        })
        .ok_or_else(|| Fault::not_found("Member", id))?;
    member_settings(&b, &mut member, &mut note)?;
    call.settled(&pool_owner(&v, &pool)).await?;
    call.commit(
        |doc| {
            if let Some(m) = pool_mut(doc, &pool)?
                .members
                .iter_mut()
                .find(|m| m.address == address.to_string())
            {
                *m = member.clone();
            }
            Ok(())
        },
        vec![(key, note)],
    )
    .await?;
    let v = call.view().await;
    let m = v.members(&pool).into_iter().find(|m| m["id"] == id);
    Ok((StatusCode::OK, json!({ "member": m })))
}

pub(super) async fn delete_member<C: ControlPlane>(
    call: &Call<'_, C>,
    pool_id: &str,
    id: &str,
) -> Reply {
    let v = call.view().await;
    let pool = v.pool_named(pool_id)?;
    let address = v.member_named(&pool, id)?;
    remove(call, &pool_owner(&v, &pool), |doc| {
        pool_mut(doc, &pool)?
            .members
            .retain(|m| m.address != address.to_string());
        Ok(())
    })
    .await
}

/// `PUT /pools/ID/members`: the pool's members become exactly these.
pub(super) async fn replace_members<C: ControlPlane>(
    call: &Call<'_, C>,
    pool_id: &str,
    body: &[u8],
) -> Reply {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| Fault::bad(format!("The request body is not JSON: {e}")))?;
    let Some(Value::Array(items)) = value.get("members") else {
        return Err(Fault::bad("The request body must be {\"members\": [...]}"));
    };
    let v = call.view().await;
    let pool = v.pool_named(pool_id)?;
    let mut members = Vec::new();
    let mut notes = Vec::new();
    for item in items {
        let Value::Object(b) = item else {
            return Err(Fault::bad("Each member must be an object."));
        };
        let mut allowed = MEMBER_FIELDS.to_vec();
        allowed.extend([
            "address",
            "protocol_port",
            "subnet_id",
            "project_id",
            "tenant_id",
        ]);
        known(b, &allowed)?;
        let (address, subnet) = parse_member(b, &v)?;
        let mut member = MemberDoc {
            address: address.to_string(),
            weight: None,
            enabled: None,
        };
        let mut note = note_of(&v, &member_key(&pool, address));
        if let Some(s) = subnet {
            note.insert("subnet_id".into(), s);
        }
        member_settings(b, &mut member, &mut note)?;
        members.push(member);
        notes.push((member_key(&pool, address), note));
    }
    call.settled(&pool_owner(&v, &pool)).await?;
    call.commit(
        |doc| {
            pool_mut(doc, &pool)?.members = members.clone();
            Ok(())
        },
        notes,
    )
    .await?;
    Ok((StatusCode::ACCEPTED, Value::Null))
}

// ---- Health monitors.

const MONITOR_FIELDS: &[&str] = &[
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

fn monitor_settings(b: &Body, hc: &mut Value, tls: bool) -> Result<(), Fault> {
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
    let mut note = BTreeMap::new();
    describe(&b, &mut note)?;
    call.settled(&pool_owner(&v, &pool)).await?;
    call.commit(
        |doc| {
            pool_mut(doc, &pool)?.health_check = Some(doc_value(hc.clone())?);
            Ok(())
        },
        vec![(monitor_key(&pool), note)],
    )
    .await?;
    created("healthmonitor", call.view().await.monitor_of(&pool))
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
        .map(|h| serde_json::to_value(h).unwrap_or_default())
        .ok_or_else(|| Fault::not_found("Health Monitor", id))?;
    monitor_settings(&b, &mut hc, p.tls.is_some())?;
    let key = monitor_key(&pool);
    let mut note = note_of(&v, &key);
    describe(&b, &mut note)?;
    call.settled(&pool_owner(&v, &pool)).await?;
    call.commit(
        |doc| {
            pool_mut(doc, &pool)?.health_check = Some(doc_value(hc.clone())?);
            Ok(())
        },
        vec![(key, note)],
    )
    .await?;
    let hm = call.view().await.monitor_of(&pool);
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

// ---- L7 policies and rules.

const POLICY_FIELDS: &[&str] = &[
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

fn policy_settings(b: &Body, p: &mut Policy, v: &View) -> Result<(), Fault> {
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
async fn save_policies<C: ControlPlane>(
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
    call.settled(&uuid("loadbalancer", lb)).await?;
    call.commit(
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
fn place(mut all: Vec<Policy>, p: Policy, position: Option<i64>) -> Vec<Policy> {
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

const RULE_FIELDS: &[&str] = &[
    "type",
    "compare_type",
    "key",
    "value",
    "invert",
    "admin_state_up",
    "tags",
];

fn rule_settings(b: &Body, r: &mut L7Rule) -> Result<(), Fault> {
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
fn one_per_kind(p: &Policy, r: &L7Rule) -> Result<(), Fault> {
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
    let rule = super::view::rules_json(&v, &p)
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
    let rule = super::view::rules_json(&v, &p)
        .into_iter()
        .find(|x| x["id"] == id);
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

/// The listener's policies with `changed` ones replacing theirs.
fn merge(changed: Vec<Policy>, all: Vec<Policy>) -> Vec<Policy> {
    all.into_iter()
        .map(|p| changed.iter().find(|c| c.id == p.id).cloned().unwrap_or(p))
        .collect()
}
