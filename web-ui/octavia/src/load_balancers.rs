//! Octavia load balancers: create, update, delete, and how one is shown.

use std::collections::BTreeMap;
use std::net::IpAddr;

use http::StatusCode;
use keel_model::LoadBalancerDoc;
use keel_web_core::ControlPlane;
use serde_json::{json, Value};

use super::view::{lb_key, listener_id, tags, uuid, View};
use super::write::{
    admin_up, created, describe, keel_name, known, note_of, remove, text, unset, Body,
};
use super::{Call, Fault, Reply};

pub(super) const LB_FIELDS: &[&str] = &[
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
        None,
        |doc| {
            doc.load_balancers.push(LoadBalancerDoc {
                name: lb.clone(),
                vip: keel_vip.clone(),
                listeners: Vec::new(),
            });
            Ok(())
        },
        vec![(lb_key(&lb), note)],
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
    let key = lb_key(&lb);
    let mut note = note_of(&v, &key);
    describe(&b, &mut note)?;
    call.commit(Some(id), |_| Ok(()), vec![(key, note)]).await?;
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

impl View {
    pub fn lb_json(&self, lb: &str) -> Value {
        let project = self.project(Some(lb));
        let note = self.note(&lb_key(lb));
        let (created, updated) = self.times(&note);
        let vip = self.vip_address(lb);
        let subnet = vip.and_then(|ip| self.subnets().into_iter().find(|s| s.contains(ip)));
        let listeners: Vec<Value> = self
            .state
            .spec
            .load_balancers
            .get(lb)
            .map(|x| {
                x.listeners
                    .iter()
                    .map(|l| json!({ "id": listener_id(lb, l.port) }))
                    .collect()
            })
            .unwrap_or_default();
        let pools: Vec<Value> = self
            .lb_pools(lb)
            .iter()
            .map(|p| json!({ "id": uuid("pool", p) }))
            .collect();
        json!({
            "id": uuid("loadbalancer", lb),
            "name": note.get("name").map_or(lb, String::as_str),
            "description": note.get("description").cloned().unwrap_or_default(),
            "admin_state_up": true,
            "provisioning_status": self.provisioning(),
            "operating_status": self.lb_status(lb),
            "project_id": project,
            "tenant_id": project,
            "provider": "keel",
            "flavor_id": null,
            "availability_zone": null,
            "created_at": created,
            "updated_at": updated,
            "vip_address": vip.map(|ip| ip.to_string()),
            "vip_port_id": uuid("port", &format!("vip/{lb}")),
            "vip_subnet_id": subnet.as_ref().map(|s| s.id.clone()),
            "vip_network_id": subnet.as_ref().map(|s| uuid("network", &s.interface)),
            "vip_qos_policy_id": null,
            "vip_vnic_type": "normal",
            "vip_sg_ids": [],
            "additional_vips": [],
            "listeners": listeners,
            "pools": pools,
            "tags": tags(&note),
        })
    }
}
