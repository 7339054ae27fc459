//! Classic policies: stickiness and PROXY protocol, made, set on listeners
//! and backends, described.

use std::collections::BTreeMap;

use keel_model::{DurationDoc, StickinessDoc};
use keel_web_core::ControlPlane;

use super::listeners::{listeners, port_param};
use super::{
    invalid_request, pool_mut, validation, Elb, Policy, Record, APP_COOKIE, LB_COOKIE,
    PROXY_PROTOCOL,
};
use crate::{el, AwsError, Params};

impl<C: ControlPlane> Elb<'_, C> {
    pub(super) async fn create_policy(
        &self,
        p: &Params,
        kind: &str,
        attributes: Vec<(String, String)>,
    ) -> Result<String, AwsError> {
        let name = p.need("LoadBalancerName")?.to_owned();
        let mut record = self.existing(&name)?;
        let policy_name = p.need("PolicyName")?.to_owned();
        if record.policies.contains_key(&policy_name) {
            return Err(AwsError::bad(
                "DuplicatePolicyName",
                format!("Policy {policy_name} already exists for {name}"),
            ));
        }
        let policy = Policy {
            kind: kind.to_owned(),
            attributes,
        };
        check_policy(&policy)?;
        record.policies.insert(policy_name, policy);
        self.save(&name, &record).await?;
        Ok(String::new())
    }

    pub(super) async fn delete_policy(&self, p: &Params) -> Result<String, AwsError> {
        let name = p.need("LoadBalancerName")?.to_owned();
        let mut record = self.existing(&name)?;
        let policy = p.need("PolicyName")?;
        let in_use = record
            .listener_policies
            .values()
            .chain(record.backend_policies.values())
            .flatten()
            .any(|n| n == policy);
        if in_use {
            return Err(invalid_request(format!(
                "policy {policy} is in use by a listener or backend server"
            )));
        }
        if record.policies.remove(policy).is_some() {
            self.save(&name, &record).await?;
        }
        Ok(String::new())
    }

    /// The policies `PolicyNames` names, all of which must exist.
    pub(super) fn named_policies(
        &self,
        p: &Params,
        record: &Record,
    ) -> Result<Vec<(String, Policy)>, AwsError> {
        p.list("PolicyNames")
            .into_iter()
            .map(|n| match record.policies.get(&n) {
                Some(policy) => Ok((n, policy.clone())),
                None => Err(AwsError::bad(
                    "PolicyNotFound",
                    format!("There is no policy with name {n} for load balancer"),
                )),
            })
            .collect()
    }

    pub(super) async fn set_listener_policies(&self, p: &Params) -> Result<String, AwsError> {
        let name = p.need("LoadBalancerName")?.to_owned();
        let mut record = self.existing(&name)?;
        let port = port_param(p.need("LoadBalancerPort")?, "LoadBalancerPort")?;
        let policies = self.named_policies(p, &record)?;
        let views = listeners(&self.call.state(), &name, &record);
        let Some(listener) = views.iter().find(|l| l.port == port) else {
            return Err(AwsError::bad(
                "ListenerNotFound",
                format!("There is no listener on port {port} of {name}"),
            ));
        };
        let sticky: Vec<&Policy> = policies
            .iter()
            .map(|(_, policy)| policy)
            .filter(|policy| policy.kind == LB_COOKIE || policy.kind == APP_COOKIE)
            .collect();
        if let Some((n, _)) = policies
            .iter()
            .find(|(_, policy)| policy.kind != LB_COOKIE && policy.kind != APP_COOKIE)
        {
            return Err(invalid_request(format!(
                "{n} is not a stickiness policy; listeners take LB-cookie or app-cookie stickiness policies"
            )));
        }
        if sticky.len() > 1 {
            return Err(invalid_request(
                "a listener takes at most one stickiness policy",
            ));
        }
        if !sticky.is_empty() && !listener.protocol.starts_with("HTTP") {
            return Err(invalid_request(format!(
                "stickiness policies need an HTTP or HTTPS listener; port {port} is {}",
                listener.protocol
            )));
        }
        let stickiness = sticky.first().map(|policy| stickiness_doc(policy));
        let pool = listener.pool.clone();
        self.call
            .change(|doc| {
                if let Some(pool) = pool_mut(doc, &pool) {
                    pool.stickiness = stickiness.clone();
                }
                Ok(())
            })
            .await?;
        set_names(&mut record.listener_policies, port, policies);
        self.save(&name, &record).await?;
        Ok(String::new())
    }

    pub(super) async fn set_backend_policies(&self, p: &Params) -> Result<String, AwsError> {
        let name = p.need("LoadBalancerName")?.to_owned();
        let mut record = self.existing(&name)?;
        let port = port_param(p.need("InstancePort")?, "InstancePort")?;
        let policies = self.named_policies(p, &record)?;
        if let Some((n, _)) = policies
            .iter()
            .find(|(_, policy)| policy.kind != PROXY_PROTOCOL)
        {
            return Err(invalid_request(format!(
                "{n} is not a ProxyProtocolPolicyType policy, the kind backend servers take"
            )));
        }
        let proxy = policies
            .iter()
            .any(|(_, policy)| policy.sends_proxy_protocol());
        let pools: Vec<String> = listeners(&self.call.state(), &name, &record)
            .into_iter()
            .filter(|l| l.instance_port == port)
            .map(|l| l.pool)
            .collect();
        self.call
            .change(|doc| {
                for n in &pools {
                    if let Some(pool) = pool_mut(doc, n) {
                        pool.proxy_protocol = proxy.then(|| "v1".to_owned());
                    }
                }
                Ok(())
            })
            .await?;
        set_names(&mut record.backend_policies, port, policies);
        self.save(&name, &record).await?;
        Ok(String::new())
    }

    pub(super) fn describe_policies(&self, p: &Params) -> Result<String, AwsError> {
        let asked = p.list("PolicyNames");
        let policies = match p.get("LoadBalancerName") {
            Some(name) => self.existing(name)?.policies,
            None => BTreeMap::new(),
        };
        for n in &asked {
            if !policies.contains_key(n) {
                return Err(AwsError::bad(
                    "PolicyNotFound",
                    format!("There is no policy with name {n}"),
                ));
            }
        }
        let out: String = policies
            .iter()
            .filter(|(n, _)| asked.is_empty() || asked.contains(n))
            .map(|(n, policy)| {
                let attrs: String = policy
                    .attributes
                    .iter()
                    .map(|(k, v)| {
                        format!(
                            "<member>{}{}</member>",
                            el("AttributeName", k),
                            el("AttributeValue", v)
                        )
                    })
                    .collect();
                format!(
                    "<member>{}{}<PolicyAttributeDescriptions>{attrs}</PolicyAttributeDescriptions></member>",
                    el("PolicyName", n),
                    el("PolicyTypeName", &policy.kind)
                )
            })
            .collect();
        Ok(format!("<PolicyDescriptions>{out}</PolicyDescriptions>"))
    }
}

/// Records which policies apply at `port` (none: forgets the port).
pub(super) fn set_names(
    at: &mut BTreeMap<u16, Vec<String>>,
    port: u16,
    policies: Vec<(String, Policy)>,
) {
    let names: Vec<String> = policies.into_iter().map(|(n, _)| n).collect();
    if names.is_empty() {
        at.remove(&port);
    } else {
        at.insert(port, names);
    }
}

pub(super) fn check_policy(policy: &Policy) -> Result<(), AwsError> {
    match policy.kind.as_str() {
        LB_COOKIE => {
            if let Some(period) = policy.attribute("CookieExpirationPeriod") {
                let ok = period
                    .parse::<u64>()
                    .is_ok_and(|s| (1..=7 * 24 * 3600).contains(&s));
                if !ok {
                    return Err(validation(format!(
                        "CookieExpirationPeriod {period:?} must be 1-604800 seconds"
                    )));
                }
            }
        }
        APP_COOKIE => {
            let cookie = policy.attribute("CookieName").unwrap_or("");
            let ok = !cookie.is_empty()
                && cookie
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b));
            if !ok {
                return Err(validation(format!("CookieName {cookie:?} is not a cookie name")));
            }
        }
        PROXY_PROTOCOL => {
            let value = policy.attribute("ProxyProtocol").unwrap_or("");
            if !value.eq_ignore_ascii_case("true") && !value.eq_ignore_ascii_case("false") {
                return Err(validation(
                    "ProxyProtocolPolicyType needs the attribute ProxyProtocol = true or false",
                ));
            }
        }
        other => {
            return Err(AwsError::bad(
                "PolicyTypeNotFound",
                format!("policy type {other:?} is not served (LBCookieStickinessPolicyType, AppCookieStickinessPolicyType, ProxyProtocolPolicyType)"),
            ))
        }
    }
    Ok(())
}

pub(super) fn stickiness_doc(policy: &Policy) -> StickinessDoc {
    let duration = policy
        .attribute("CookieExpirationPeriod")
        .and_then(|p| p.parse::<f64>().ok())
        .map(DurationDoc::Seconds);
    match policy.kind.as_str() {
        APP_COOKIE => StickinessDoc {
            kind: "app_cookie".into(),
            duration: None,
            cookie: policy.attribute("CookieName").map(str::to_owned),
        },
        _ => StickinessDoc {
            kind: "lb_cookie".into(),
            duration,
            cookie: None,
        },
    }
}

/// The policy types Keel serves, as `DescribeLoadBalancerPolicyTypes` lists them.
pub(super) fn describe_policy_types(p: &Params) -> Result<String, AwsError> {
    let types = [
        (
            PROXY_PROTOCOL,
            "Policy that controls whether to include the IP address and port of the originating request for TCP messages. This policy operates on TCP listeners only.",
            ("ProxyProtocol", "Boolean", "ONE"),
        ),
        (
            LB_COOKIE,
            "Stickiness policy with session lifetimes controlled by the lifetime of the browser (user-agent) or a specified expiration period. This policy can be associated only with HTTP/HTTPS listeners.",
            ("CookieExpirationPeriod", "Long", "ZERO_OR_ONE"),
        ),
        (
            APP_COOKIE,
            "Stickiness policy with session lifetimes controlled by the lifetime of the application-generated cookie. This policy can be associated only with HTTP/HTTPS listeners.",
            ("CookieName", "String", "ONE"),
        ),
    ];
    let asked = p.list("PolicyTypeNames");
    for n in &asked {
        if !types.iter().any(|(t, ..)| t == n) {
            return Err(AwsError::bad(
                "PolicyTypeNotFound",
                format!("One or more of the specified policy types do not exist: {n}"),
            ));
        }
    }
    let out: String = types
        .iter()
        .filter(|(t, ..)| asked.is_empty() || asked.iter().any(|a| a == t))
        .map(|(t, description, (attr, kind, cardinality))| {
            format!(
                "<member>{}{}<PolicyAttributeTypeDescriptions><member>{}{}{}</member></PolicyAttributeTypeDescriptions></member>",
                el("PolicyTypeName", t),
                el("Description", description),
                el("AttributeName", attr),
                el("AttributeType", kind),
                el("Cardinality", cardinality),
            )
        })
        .collect();
    Ok(format!(
        "<PolicyTypeDescriptions>{out}</PolicyTypeDescriptions>"
    ))
}
