//! ELBv2 targets (a target group's members): register, deregister, health.

use keel_web_core::ControlPlane;

use super::{tg_key, Elbv2};
use crate::{el, AwsError, Params};

impl<C: ControlPlane> Elbv2<'_, C> {
    /// The member addresses `Targets.member.N.{Id,Port}` name.
    pub(super) fn target_addrs(&self, p: &Params, tg: &str) -> Result<Vec<String>, AwsError> {
        let state = self.call.state();
        let default_port = state
            .annotations
            .get(&tg_key(tg))
            .and_then(|m| m.get("port"))
            .cloned()
            .unwrap_or_else(|| "80".into());
        let instances = self.target_type(tg) == "instance";
        let targets = p.structs("Targets");
        if targets.is_empty() {
            return Err(AwsError::bad(
                "ValidationError",
                "Targets must not be empty",
            ));
        }
        targets
            .iter()
            .map(|t| {
                let id = t.get("Id").map(String::as_str).unwrap_or("");
                let ip = if instances {
                    keel_web_core::instances::address_of(&state, id).ok_or_else(|| {
                        AwsError::bad(
                            "InvalidTarget",
                            format!("The following targets are not registered instances (keel instance add ID ADDRESS) or IP addresses: '{id}'"),
                        )
                    })?
                } else {
                    id.parse().map_err(|_| {
                        AwsError::bad(
                            "InvalidTarget",
                            format!("The following targets are not valid IP addresses: '{id}'"),
                        )
                    })?
                };
                let port = t
                    .get("Port")
                    .cloned()
                    .unwrap_or_else(|| default_port.clone());
                let port: u16 = port.parse().ok().filter(|p| *p > 0).ok_or_else(|| {
                    AwsError::bad(
                        "InvalidTarget",
                        format!("target port {port:?} is not 1-65535"),
                    )
                })?;
                Ok(std::net::SocketAddr::new(ip, port).to_string())
            })
            .collect()
    }

    pub(super) async fn targets(&self, p: &Params, register: bool) -> Result<String, AwsError> {
        let tg = self.tg_of(p.need("TargetGroupArn")?)?;
        let addrs = self.target_addrs(p, &tg)?;
        self.call
            .change(|doc| {
                let Some(pool) = doc.pools.iter_mut().find(|x| x.name == tg) else {
                    return Err(AwsError::bad("TargetGroupNotFound", tg.clone()));
                };
                for a in &addrs {
                    let present = pool.members.iter().any(|m| m.address == *a);
                    if register && !present {
                        pool.members.push(keel_model::MemberDoc {
                            address: a.clone(),
                            weight: None,
                            enabled: None,
                        });
                    } else if !register {
                        pool.members.retain(|m| m.address != *a);
                    }
                }
                Ok(())
            })
            .await?;
        Ok(String::new())
    }

    pub(super) async fn describe_target_health(&self, p: &Params) -> Result<String, AwsError> {
        let tg = self.tg_of(p.need("TargetGroupArn")?)?;
        let state = self.call.state();
        let pool = &state.spec.pools[&tg];
        let asked = if p.structs("Targets").is_empty() {
            None
        } else {
            Some(self.target_addrs(p, &tg)?)
        };
        let instances = self.target_type(&tg) == "instance";
        let target_id = |ip: &str| match ip.parse() {
            Ok(ip) if instances => keel_web_core::instances::id_of(&state, ip),
            _ => ip.to_owned(),
        };
        let status = self.call.aws.control.status().await;
        let mut out = String::new();
        let listed: Vec<String> = match &asked {
            Some(a) => a.clone(),
            None => pool.members.iter().map(|m| m.address.to_string()).collect(),
        };
        for addr in listed {
            let member = pool.members.iter().find(|m| m.address.to_string() == addr);
            let views: Vec<&String> = status
                .members
                .iter()
                .filter(|m| m.pool == tg && m.address == addr)
                .flat_map(|m| m.views.values())
                .collect();
            let (state, reason, description) = match member {
                None => (
                    "unused",
                    "Target.NotRegistered",
                    "Target is not registered to the target group",
                ),
                Some(m) if !m.enabled => (
                    "draining",
                    "Target.DeregistrationInProgress",
                    "Target deregistration is in progress",
                ),
                Some(_) if pool.health_check.is_none() => (
                    "unavailable",
                    "Target.HealthCheckDisabled",
                    "Health checks are disabled",
                ),
                Some(_) if views.is_empty() => (
                    "initial",
                    "Elb.InitialHealthChecking",
                    "Initial health checks in progress",
                ),
                Some(_) if views.iter().any(|v| *v == "up") => ("healthy", "", ""),
                Some(_) => (
                    "unhealthy",
                    "Target.FailedHealthChecks",
                    "Health checks failed",
                ),
            };
            let (ip, port) = addr.rsplit_once(':').unwrap_or((addr.as_str(), ""));
            let ip = ip.trim_start_matches('[').trim_end_matches(']');
            let mut health = el("State", state);
            if !reason.is_empty() {
                health.push_str(&el("Reason", reason));
                health.push_str(&el("Description", description));
            }
            out.push_str(&format!(
                "<member><Target>{}{}</Target>{}<TargetHealth>{health}</TargetHealth></member>",
                el("Id", &target_id(ip)),
                el("Port", port),
                el("HealthCheckPort", port),
            ));
        }
        Ok(format!(
            "<TargetHealthDescriptions>{out}</TargetHealthDescriptions>"
        ))
    }
}
