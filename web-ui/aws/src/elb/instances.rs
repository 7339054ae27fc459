//! Classic instances: register, deregister, and their health.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use keel_model::{CheckKind, ClusterState, MemberDoc};
use keel_web_core::instances::{address_of, id_of};
use keel_web_core::ControlPlane;

use super::health_check::current_check;
use super::listeners::listeners;
use super::{pool_mut, validation, Elb, Record};
use crate::{el, AwsError, Params};

impl<C: ControlPlane> Elb<'_, C> {
    /// The health check `lb`'s pools share (the first pool's), as the
    /// classic API describes it.
    pub(super) fn health_xml(&self, state: &ClusterState, lb: &str, record: &Record) -> String {
        let views = listeners(state, lb, record);
        let first = views.first();
        let hc = first
            .and_then(|l| state.spec.pools.get(&l.pool))
            .and_then(|p| p.health_check.as_ref());
        let instance_port = first.map_or(80, |l| l.instance_port);
        let target = record.health_target.clone().unwrap_or_else(|| match hc {
            Some(h) => {
                let port = h.port.unwrap_or(instance_port);
                match &h.kind {
                    CheckKind::Http { path, .. } => format!("HTTP:{port}{path}"),
                    CheckKind::Tcp => format!("TCP:{port}"),
                }
            }
            None => format!("TCP:{instance_port}"),
        });
        let n = current_check(state, lb, record);
        format!(
            "<HealthCheck>{}{}{}{}{}</HealthCheck>",
            el("Target", &target),
            el("Interval", &n.interval.to_string()),
            el("Timeout", &n.timeout.to_string()),
            el("UnhealthyThreshold", &n.unhealthy.to_string()),
            el("HealthyThreshold", &n.healthy.to_string()),
        )
    }

    pub(super) fn instances_xml(&self, ids: &[String]) -> String {
        let members: String = ids
            .iter()
            .map(|id| format!("<member>{}</member>", el("InstanceId", id)))
            .collect();
        format!("<Instances>{members}</Instances>")
    }

    pub(super) async fn instances(&self, p: &Params, register: bool) -> Result<String, AwsError> {
        let name = p.need("LoadBalancerName")?.to_owned();
        let mut record = self.existing(&name)?;
        let state = self.call.state();
        let ids = p
            .structs("Instances")
            .into_iter()
            .map(|m| m.get("InstanceId").cloned().unwrap_or_default())
            .collect::<Vec<_>>();
        if ids.is_empty() {
            return Err(validation("Instances must not be empty"));
        }
        let mut addrs = Vec::new();
        let bad: Vec<&str> = ids
            .iter()
            .filter(|id| match address_of(&state, id) {
                Some(a) => {
                    addrs.push(a);
                    false
                }
                None => true,
            })
            .map(String::as_str)
            .collect();
        if !bad.is_empty() {
            return Err(AwsError::bad(
                "InvalidInstance",
                format!(
                    "The requested instance IDs are neither registered (keel instance add ID ADDRESS) nor IP addresses: {}",
                    bad.join(", ")
                ),
            ));
        }
        let views = listeners(&state, &name, &record);
        self.call
            .change(|doc| {
                for l in &views {
                    let Some(pool) = pool_mut(doc, &l.pool) else {
                        continue;
                    };
                    for ip in &addrs {
                        let address = SocketAddr::new(*ip, l.instance_port).to_string();
                        let present = pool.members.iter().any(|m| m.address == address);
                        if register && !present {
                            pool.members.push(MemberDoc {
                                address,
                                weight: None,
                                enabled: None,
                            });
                        } else if !register {
                            pool.members.retain(|m| {
                                m.address
                                    .parse::<SocketAddr>()
                                    .map_or(true, |a| a.ip() != *ip)
                            });
                        }
                    }
                }
                Ok(())
            })
            .await?;
        let now = registered(&self.call.state(), &name, &record);
        record.instances = now;
        for (id, ip) in ids.iter().zip(&addrs) {
            let same = |i: &String| i == id || address_of(&state, i) == Some(*ip);
            if register {
                if !record.instances.iter().any(same) {
                    record.instances.push(id.clone());
                }
            } else {
                record.instances.retain(|i| !same(i));
            }
        }
        self.save(&name, &record).await?;
        Ok(self.instances_xml(&record.instances))
    }

    pub(super) async fn describe_instance_health(&self, p: &Params) -> Result<String, AwsError> {
        let name = p.need("LoadBalancerName")?.to_owned();
        let record = self.existing(&name)?;
        let state = self.call.state();
        let registered = registered(&state, &name, &record);
        let asked: Vec<String> = p
            .structs("Instances")
            .into_iter()
            .filter_map(|m| m.get("InstanceId").cloned())
            .collect();
        for id in &asked {
            if address_of(&state, id).is_none() {
                return Err(AwsError::bad(
                    "InvalidInstance",
                    format!("Could not find EC2 instance {id}."),
                ));
            }
        }
        let ids = if asked.is_empty() {
            registered.clone()
        } else {
            asked
        };
        let views = listeners(&state, &name, &record);
        let status = self.call.aws.control.status().await;
        let mut out = String::new();
        for id in ids {
            let ip = address_of(&state, &id);
            let members: Vec<(&str, &keel_model::Member)> = views
                .iter()
                .filter_map(|l| state.spec.pools.get(&l.pool))
                .flat_map(|pool| pool.members.iter().map(move |m| (pool.name.as_str(), m)))
                .filter(|(_, m)| Some(m.address.ip()) == ip)
                .collect();
            let seen: Vec<&String> = members
                .iter()
                .flat_map(|(pool, m)| {
                    let address = m.address.to_string();
                    status
                        .members
                        .iter()
                        .filter(move |h| h.pool == *pool && h.address == address)
                        .flat_map(|h| h.views.values())
                })
                .collect();
            let (state_text, reason, description) = if !registered.contains(&id)
                || members.is_empty()
            {
                (
                    "OutOfService",
                    "ELB",
                    "Instance is not currently registered with the LoadBalancer.",
                )
            } else if members.iter().any(|(_, m)| !m.enabled) {
                (
                    "OutOfService",
                    "ELB",
                    "Instance deregistration currently in progress.",
                )
            } else if seen.is_empty() {
                (
                    "OutOfService",
                    "ELB",
                    "Instance registration is still in progress.",
                )
            } else if seen.iter().all(|v| *v == "up") {
                ("InService", "N/A", "N/A")
            } else {
                (
                    "OutOfService",
                    "Instance",
                    "Instance has failed at least the UnhealthyThreshold number of health checks consecutively.",
                )
            };
            out.push_str(&format!(
                "<member>{}{}{}{}</member>",
                el("InstanceId", &id),
                el("State", state_text),
                el("ReasonCode", reason),
                el("Description", description)
            ));
        }
        Ok(format!("<InstanceStates>{out}</InstanceStates>"))
    }
}

/// The IDs of the instances registered with `lb`: the recorded ones, and
/// one for each other member address of its pools (added through Keel).
pub(super) fn registered(state: &ClusterState, lb: &str, record: &Record) -> Vec<String> {
    let mut ids = record.instances.clone();
    let known: BTreeSet<IpAddr> = ids.iter().filter_map(|i| address_of(state, i)).collect();
    let mut extra = BTreeSet::new();
    for l in listeners(state, lb, record) {
        for m in state
            .spec
            .pools
            .get(&l.pool)
            .into_iter()
            .flat_map(|p| &p.members)
        {
            if !known.contains(&m.address.ip()) {
                extra.insert(m.address.ip());
            }
        }
    }
    ids.extend(extra.into_iter().map(|ip| id_of(state, ip)));
    ids
}
