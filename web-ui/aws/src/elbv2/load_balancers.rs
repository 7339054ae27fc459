//! ELBv2 load balancers: create, describe, delete.

use std::collections::BTreeMap;

use keel_compat::Provisioning;
use keel_web_core::ControlPlane;

use super::{page, Elbv2, VPC};
use crate::{dns_name, el, AwsError, Params};

impl<C: ControlPlane> Elbv2<'_, C> {
    pub(super) async fn create_load_balancer(&self, p: &Params) -> Result<String, AwsError> {
        let name = p.need("Name")?.to_owned();
        if let Some(t) = p
            .get("Type")
            .filter(|t| *t != "application" && *t != "network")
        {
            return Err(AwsError::bad(
                "ValidationError",
                format!("load balancer type {t:?} is not served (application or network)"),
            ));
        }
        let exists = self.call.state().spec.load_balancers.contains_key(&name);
        if !exists {
            // What ELBv2 reports beyond the spec (its type, when it was
            // made) is noted in the entry that creates it.
            let record = BTreeMap::from([
                ("created".to_owned(), keel_web_core::now().to_string()),
                (
                    "type".to_owned(),
                    p.get("Type").unwrap_or("application").to_owned(),
                ),
            ]);
            self.call
                .change_noting(
                    |doc| {
                        doc.load_balancers.push(keel_model::LoadBalancerDoc {
                            name: name.clone(),
                            vip: None,
                            listeners: Vec::new(),
                        });
                        Ok(())
                    },
                    vec![(format!("loadbalancer/{name}"), record)],
                )
                .await?;
        }
        self.call
            .add_tags(&format!("loadbalancer/{name}"), p)
            .await?;
        Ok(format!(
            "<LoadBalancers>{}</LoadBalancers>",
            self.lb_xml(&name)
        ))
    }

    pub(super) fn lb_xml(&self, name: &str) -> String {
        let record = self.call.annotations(&format!("loadbalancer/{name}"));
        let kind = record.get("type").map_or("application", String::as_str);
        // Made some other way (keel apply, the dashboard): when the
        // replicated history first names it, if it still does.
        let created = record
            .get("created")
            .and_then(|t| t.parse::<u64>().ok())
            .or_else(|| first_mention(&self.call.state(), name))
            .unwrap_or(0);
        let created = humantime::format_rfc3339_millis(
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(created),
        )
        .to_string();
        let state = match self.call.provisioning() {
            Provisioning::Active => "active",
            Provisioning::Pending => "provisioning",
            Provisioning::Failed => "failed",
        };
        format!(
            "<member>{}{}{}{}{}{}<State><Code>{state}</Code></State>{}{}{}<AvailabilityZones/><SecurityGroups/></member>",
            el("LoadBalancerArn", &self.lb_arn(name)),
            el("DNSName", &dns_name(name)),
            el("CanonicalHostedZoneId", "ZKEEL"),
            el("CreatedTime", &created),
            el("LoadBalancerName", name),
            el("Scheme", "internet-facing"),
            el("VpcId", VPC),
            el("Type", kind),
            el("IpAddressType", "ipv4"),
        )
    }

    pub(super) fn describe_load_balancers(&self, p: &Params) -> Result<String, AwsError> {
        let state = self.call.state();
        let mut names: Vec<String> = p.list("Names");
        for arn in p.list("LoadBalancerArns") {
            names.push(self.lb_of(&arn)?);
        }
        for n in &names {
            if !state.spec.load_balancers.contains_key(n) {
                return Err(AwsError::bad(
                    "LoadBalancerNotFound",
                    format!("Load balancers '[{n}]' not found"),
                ));
            }
        }
        let all: Vec<&String> = if names.is_empty() {
            state.spec.load_balancers.keys().collect()
        } else {
            names.iter().collect()
        };
        let items = all.iter().map(|n| ((*n).clone(), self.lb_xml(n))).collect();
        let (members, next) = page(items, p)?;
        Ok(format!("<LoadBalancers>{members}</LoadBalancers>{next}"))
    }

    pub(super) async fn delete_load_balancer(&self, p: &Params) -> Result<String, AwsError> {
        let arn = p.need("LoadBalancerArn")?;
        // Deleting one that is gone succeeds, as on AWS.
        let Ok(name) = self.lb_of(arn) else {
            return Ok(String::new());
        };
        self.call
            .change(|doc| {
                doc.load_balancers.retain(|l| l.name != name);
                Ok(())
            })
            .await?;
        Ok(String::new())
    }
}

/// When the replicated history (the last changes people and tools made)
/// first upserted load balancer `name`.
pub(super) fn first_mention(state: &keel_model::ClusterState, name: &str) -> Option<u64> {
    let line = format!("upsert load balancer {name}");
    state
        .history
        .iter()
        .find(|h| h.what.contains(&line))
        .map(|h| h.at)
}
