//! Classic load balancers: create, describe, delete, availability zones.

use std::time::Duration;

use keel_model::{ClusterState, LoadBalancerDoc};
use keel_web_core::ControlPlane;

use super::health_check::DEFAULT_CHECK;
use super::instances::registered;
use super::listeners::{
    add_listener, certificate_name, listeners, new_listeners, remove_unused_pools, NewListener,
};
use super::{lb_not_found, record_of, validation, Elb, Record, APP_COOKIE, LB_COOKIE};
use crate::{dns_name, el, AwsError, Params};

impl<C: ControlPlane> Elb<'_, C> {
    pub(super) fn lb_xml(&self, state: &ClusterState, name: &str) -> String {
        let record = record_of(state, name);
        let views = listeners(state, name, &record);
        let listener_xml: String = views
            .iter()
            .map(|l| {
                let cert = l
                    .certificate
                    .as_deref()
                    .map(|c| el("SSLCertificateId", c))
                    .unwrap_or_default();
                let policies: String = record
                    .listener_policies
                    .get(&l.port)
                    .into_iter()
                    .flatten()
                    .map(|n| el("member", n))
                    .collect();
                format!(
                    "<member><Listener>{}{}{}{}{cert}</Listener><PolicyNames>{policies}</PolicyNames></member>",
                    el("Protocol", l.protocol),
                    el("LoadBalancerPort", &l.port.to_string()),
                    el("InstanceProtocol", &l.instance_protocol),
                    el("InstancePort", &l.instance_port.to_string()),
                )
            })
            .collect();
        let (mut app, mut lbc, mut other) = (String::new(), String::new(), String::new());
        for (n, policy) in &record.policies {
            match policy.kind.as_str() {
                APP_COOKIE => app.push_str(&format!(
                    "<member>{}{}</member>",
                    el("PolicyName", n),
                    el("CookieName", policy.attribute("CookieName").unwrap_or(""))
                )),
                LB_COOKIE => lbc.push_str(&format!(
                    "<member>{}{}</member>",
                    el("PolicyName", n),
                    policy
                        .attribute("CookieExpirationPeriod")
                        .map(|p| el("CookieExpirationPeriod", p))
                        .unwrap_or_default()
                )),
                _ => other.push_str(&el("member", n)),
            }
        }
        let backends: String = record
            .backend_policies
            .iter()
            .filter(|(_, names)| !names.is_empty())
            .map(|(port, names)| {
                format!(
                    "<member>{}<PolicyNames>{}</PolicyNames></member>",
                    el("InstancePort", &port.to_string()),
                    names.iter().map(|n| el("member", n)).collect::<String>()
                )
            })
            .collect();
        let zones: String = record.zones.iter().map(|z| el("member", z)).collect();
        let created = humantime::format_rfc3339_millis(
            std::time::UNIX_EPOCH + Duration::from_secs(record.created),
        )
        .to_string();
        format!(
            "<member>{}{}{}{}<ListenerDescriptions>{listener_xml}</ListenerDescriptions>\
             <Policies><AppCookieStickinessPolicies>{app}</AppCookieStickinessPolicies>\
             <LBCookieStickinessPolicies>{lbc}</LBCookieStickinessPolicies><OtherPolicies>{other}</OtherPolicies></Policies>\
             <BackendServerDescriptions>{backends}</BackendServerDescriptions>\
             <AvailabilityZones>{zones}</AvailabilityZones><Subnets/>{}{}{}\
             <SourceSecurityGroup>{}{}</SourceSecurityGroup><SecurityGroups/>{}{}</member>",
            el("LoadBalancerName", name),
            el("DNSName", &dns_name(name)),
            el("CanonicalHostedZoneName", &dns_name(name)),
            el("CanonicalHostedZoneNameID", "ZKEEL"),
            el("VPCId", "vpc-keel"),
            self.instances_xml(&registered(state, name, &record)),
            self.health_xml(state, name, &record),
            el("OwnerAlias", crate::ACCOUNT),
            el("GroupName", "default"),
            el("CreatedTime", &created),
            el("Scheme", "internet-facing"),
        )
    }

    pub(super) async fn create_load_balancer(&self, p: &Params) -> Result<String, AwsError> {
        let name = p.need("LoadBalancerName")?.to_owned();
        check_lb_name(&name)?;
        let listeners = new_listeners(p)?;
        if self.call.state().spec.load_balancers.contains_key(&name) {
            return Err(AwsError::bad(
                "DuplicateLoadBalancerName",
                format!("The specified load balancer name already exists for this account: {name}"),
            ));
        }
        self.check_certificates(&listeners)?;
        let mut record = Record {
            zones: p.list("AvailabilityZones"),
            created: keel_web_core::now(),
            ..Record::default()
        };
        let before = record.clone();
        for l in &listeners {
            record.backends.insert(l.port, l.backend.clone());
        }
        // Its tags too: one entry, so it is never seen untagged.
        let tags = self.call.tag_notes(&Self::tag_object(&name), p)?;
        self.change_saving_noting(&name, &record, tags, |doc| {
            doc.load_balancers.push(LoadBalancerDoc {
                name: name.clone(),
                vip: None,
                listeners: Vec::new(),
            });
            for l in &listeners {
                add_listener(doc, &name, l, &before, DEFAULT_CHECK, &[]);
            }
            Ok(())
        })
        .await?;
        Ok(el("DNSName", &dns_name(&name)))
    }

    pub(super) fn check_certificates(&self, listeners: &[NewListener]) -> Result<(), AwsError> {
        let state = self.call.state();
        for l in listeners {
            if let Some(id) = &l.backend.certificate {
                if !state.spec.certificates.contains_key(certificate_name(id)) {
                    return Err(AwsError::bad(
                        "CertificateNotFound",
                        format!("listener {}: no Keel certificate named {:?} (from SSLCertificateId {id:?})", l.port, certificate_name(id)),
                    ));
                }
            }
        }
        Ok(())
    }

    pub(super) fn describe_load_balancers(&self, p: &Params) -> Result<String, AwsError> {
        let state = self.call.state();
        let asked = p.list("LoadBalancerNames");
        for n in &asked {
            if !state.spec.load_balancers.contains_key(n) {
                return Err(lb_not_found(n));
            }
        }
        let page_size = match p.get("PageSize") {
            None => 400,
            Some(t) => t
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=400).contains(n))
                .ok_or_else(|| validation("PageSize must be 1-400"))?,
        };
        let names: Vec<&String> = state
            .spec
            .load_balancers
            .keys()
            .filter(|n| asked.is_empty() || asked.contains(n))
            .filter(|n| p.get("Marker").is_none_or(|m| n.as_str() >= m))
            .collect();
        let page = &names[..names.len().min(page_size)];
        let members: String = page.iter().map(|n| self.lb_xml(&state, n)).collect();
        let next = names
            .get(page_size)
            .map(|n| el("NextMarker", n))
            .unwrap_or_default();
        Ok(format!(
            "<LoadBalancerDescriptions>{members}</LoadBalancerDescriptions>{next}"
        ))
    }

    pub(super) async fn delete_load_balancer(&self, p: &Params) -> Result<String, AwsError> {
        let name = p.need("LoadBalancerName")?.to_owned();
        // Deleting one that is gone succeeds, as on AWS.
        let Ok(record) = self.existing(&name) else {
            return Ok(String::new());
        };
        let pools: Vec<String> = listeners(&self.call.state(), &name, &record)
            .into_iter()
            .map(|l| l.pool)
            .collect();
        self.call
            .change(|doc| {
                doc.load_balancers.retain(|l| l.name != name);
                remove_unused_pools(doc, &name, &pools);
                Ok(())
            })
            .await?;
        Ok(String::new())
    }

    pub(super) async fn zones(&self, p: &Params, enable: bool) -> Result<String, AwsError> {
        let name = p.need("LoadBalancerName")?.to_owned();
        let mut record = self.existing(&name)?;
        let zones = p.list("AvailabilityZones");
        if zones.is_empty() {
            return Err(validation("AvailabilityZones must not be empty"));
        }
        for z in zones {
            let present = record.zones.contains(&z);
            if enable && !present {
                record.zones.push(z);
            } else if !enable {
                record.zones.retain(|x| *x != z);
            }
        }
        self.save(&name, &record).await?;
        let list: String = record.zones.iter().map(|z| el("member", z)).collect();
        Ok(format!("<AvailabilityZones>{list}</AvailabilityZones>"))
    }
}

/// Classic load balancer names: 1-32 letters, digits and hyphens, not
/// starting or ending with a hyphen.
pub(super) fn check_lb_name(name: &str) -> Result<(), AwsError> {
    let ok = !name.is_empty()
        && name.len() <= 32
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(validation(format!(
            "LoadBalancerName {name:?}: 1-32 letters, digits and hyphens, not starting or ending with a hyphen"
        )))
    }
}
