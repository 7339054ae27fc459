//! Octavia members: create, update, delete, batch replace, and how they
//! are shown.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use http::StatusCode;
use keel_model::{Document, MemberDoc};
use keel_web_core::ControlPlane;
use serde_json::{json, Value};

use super::view::{member_id, member_key, tags, View};
use super::write::{
    boolean, created, describe, int, known, need_int, need_text, note_of, pool_mut, pool_owner,
    remove, text, unset, Body,
};
use super::{Call, Fault, Reply};

pub(super) const MEMBER_FIELDS: &[&str] = &[
    "name",
    "weight",
    "admin_state_up",
    "backup",
    "monitor_address",
    "monitor_port",
    "tags",
];

pub(super) fn member_settings(
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

pub(super) fn parse_member(b: &Body, v: &View) -> Result<(SocketAddr, Option<String>), Fault> {
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

/// What a new member's body may hold beyond [`MEMBER_FIELDS`].
const NEW_MEMBER_FIELDS: &[&str] = &[
    "address",
    "protocol_port",
    "subnet_id",
    "project_id",
    "tenant_id",
    "vnic_type",
    "request_sriov",
];

/// A new member of `pool` from its body (a create, or one of a batch):
/// its address, its Keel document and its note.
fn new_member(
    b: &Body,
    v: &View,
    pool: &str,
) -> Result<(SocketAddr, MemberDoc, BTreeMap<String, String>), Fault> {
    let allowed: Vec<&str> = MEMBER_FIELDS
        .iter()
        .chain(NEW_MEMBER_FIELDS)
        .copied()
        .collect();
    known(b, &allowed)?;
    let (address, subnet) = parse_member(b, v)?;
    let mut member = MemberDoc {
        address: address.to_string(),
        weight: None,
        enabled: None,
    };
    let mut note = note_of(v, &member_key(pool, address));
    if let Some(s) = subnet {
        note.insert("subnet_id".into(), s);
    }
    member_settings(b, &mut member, &mut note)?;
    Ok((address, member, note))
}

pub(super) async fn create_member<C: ControlPlane>(
    call: &Call<'_, C>,
    pool_id: &str,
    b: Body,
) -> Reply {
    let v = call.view().await;
    let pool = v.pool_named(pool_id)?;
    let (address, member, note) = new_member(&b, &v, &pool)?;
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
    call.commit(
        Some(&pool_owner(&v, &pool)),
        |doc| {
            pool_mut(doc, &pool)?.members.push(member.clone());
            Ok(())
        },
        vec![(member_key(&pool, address), note)],
    )
    .await?;
    created("member", call.view().await.member(&pool, address))
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
    call.commit(
        Some(&pool_owner(&v, &pool)),
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
    let m = call.view().await.member(&pool, address);
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
        let (address, member, note) = new_member(b, &v, &pool)?;
        members.push(member);
        notes.push((member_key(&pool, address), note));
    }
    call.commit(
        Some(&pool_owner(&v, &pool)),
        |doc| {
            pool_mut(doc, &pool)?.members = members.clone();
            Ok(())
        },
        notes,
    )
    .await?;
    Ok((StatusCode::ACCEPTED, Value::Null))
}

impl View {
    /// The member of `pool` at `address`, as Octavia shows it.
    pub(super) fn member(&self, pool: &str, address: SocketAddr) -> Value {
        let id = member_id(pool, address);
        self.members(pool)
            .into_iter()
            .find(|m| m["id"] == id.as_str())
            .unwrap_or(Value::Null)
    }

    pub fn members(&self, pool: &str) -> Vec<Value> {
        let Some(p) = self.state.spec.pools.get(pool) else {
            return Vec::new();
        };
        let project = self.project(self.pool_lb(pool).as_deref());
        p.members
            .iter()
            .map(|m| {
                let note = self.note(&member_key(pool, m.address));
                let (created, updated) = self.times(&note);
                let subnet = note.get("subnet_id").cloned().or_else(|| {
                    self.subnets()
                        .into_iter()
                        .find(|s| s.contains(m.address.ip()))
                        .map(|s| s.id)
                });
                json!({
                    "id": member_id(pool, m.address),
                    "name": note.get("name").cloned().unwrap_or_default(),
                    "operating_status": self.member_status(p, m),
                    "provisioning_status": self.provisioning(),
                    "admin_state_up": m.enabled,
                    "address": m.address.ip().to_string(),
                    "protocol_port": m.address.port(),
                    "weight": m.weight,
                    "backup": false,
                    "subnet_id": subnet,
                    "project_id": project,
                    "tenant_id": project,
                    "created_at": created,
                    "updated_at": updated,
                    "monitor_address": null,
                    "monitor_port": p.health_check.as_ref().and_then(|h| h.port),
                    "vnic_type": "normal",
                    "tags": tags(&note),
                })
            })
            .collect()
    }
}
