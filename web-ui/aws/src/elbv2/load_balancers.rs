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
        let object = format!("loadbalancer/{name}");
        let exists = self.call.state().spec.load_balancers.contains_key(&name);
        if exists {
            self.call.add_tags(&object, p).await?;
        } else {
            // What ELBv2 reports beyond the spec (its type, when it was
            // made) is noted in the entry that creates it.
            let record = BTreeMap::from([
                ("created".to_owned(), keel_web_core::now().to_string()),
                (
                    "type".to_owned(),
                    p.get("Type").unwrap_or("application").to_owned(),
                ),
            ]);
            // Its tags too: one entry, so it is never seen untagged.
            let mut notes = self.call.tag_notes(&object, p)?;
            notes.push((object.clone(), record));
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
                    notes,
                )
                .await?;
        }
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use keel_web_core::ControlPlane;

    use crate::{Aws, Call, Params};

    async fn create(query: &str) -> (Result<String, crate::AwsError>, u64, u64) {
        let control = keel_web_core::fake::fake();
        // Its data plane serves each version a poll late, as a busy one does.
        control.slow_dataplane.store(true, Ordering::Relaxed);
        let aws = Aws::testing(control.clone());
        let call = Call {
            aws: &aws,
            by: "ci",
            manager: "elbv2",
        };
        let before = control.state().0;
        let answer =
            super::super::serve(call, "CreateLoadBalancer", &Params::parse(query, None)).await;
        (answer, before, control.state().0)
    }

    #[tokio::test]
    async fn a_load_balancer_made_with_tags_is_one_entry_and_answered_active() {
        let (answer, before, after) =
            create("Name=web&Tags.member.1.Key=team&Tags.member.1.Value=blue").await;
        let xml = answer.expect("created");
        assert_eq!(
            after,
            before + 1,
            "the load balancer and its tags are one entry"
        );
        assert!(xml.contains("<Code>active</Code>"), "{xml}");
    }

    #[tokio::test]
    async fn a_change_is_answered_once_this_node_serves_it() {
        let control = keel_web_core::fake::fake();
        control.slow_dataplane.store(true, Ordering::Relaxed);
        let aws = Aws::testing(control);
        let serve = |action: &'static str, query: String| {
            let aws = &aws;
            async move {
                let call = Call {
                    aws,
                    by: "ci",
                    manager: "elbv2",
                };
                super::super::serve(call, action, &Params::parse(&query, None))
                    .await
                    .expect("served")
            }
        };
        let lb = serve("CreateLoadBalancer", "Name=web".into()).await;
        let arn = lb
            .split("<LoadBalancerArn>")
            .nth(1)
            .and_then(|rest| rest.split('<').next())
            .expect("an ARN");
        // Tags on their own are a change of their own.
        let tag = "Tags.member.1.Key=team&Tags.member.1.Value=blue";
        serve("AddTags", format!("ResourceArns.member.1={arn}&{tag}")).await;
        let lb = serve("DescribeLoadBalancers", "Names.member.1=web".into()).await;
        assert!(lb.contains("<Code>active</Code>"), "{lb}");
    }

    #[tokio::test]
    async fn a_tag_without_a_key_makes_no_load_balancer() {
        let (answer, before, after) = create("Name=web&Tags.member.1.Value=blue").await;
        assert!(answer.is_err());
        assert_eq!(after, before, "nothing committed");
    }
}
