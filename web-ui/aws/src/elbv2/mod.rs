//! ELBv2 (2015-12-01) calls on Keel objects. The mapping:
//!
//! - a load balancer is a Keel load balancer of the same name (no VIP: its
//!   listeners bind every address);
//! - a target group is a Keel pool of the same name (its port, protocol
//!   and tags are kept as annotations `targetgroup/NAME`); `HTTPS` target
//!   groups reach members over TLS without verification, as ELB does;
//! - a listener is the Keel listener on that port; its default `forward`
//!   action is the default pool; rules are Keel rules (same priorities);
//! - targets are members `Id:Port` (`Id` an IP address).
//!
//! ARNs are derived from names, so they are stable and need no storage.
//! Every change is a batch of ordinary commands through Raft, validated
//! like any other: what an AWS client creates shows in Keel's own API.
//!
//! One file per resource (its parameters, mapping and XML): load
//! balancers, target groups, targets, listeners, rules, tags; this one
//! holds the dispatch and the ARNs.

use keel_compat::hex_id as id16;
use keel_web_core::ControlPlane;

use crate::{el, AwsError, Call, Params};

mod listeners;
mod load_balancers;
mod rules;
mod tags;
mod target_groups;
mod targets;

use rules::rules_key;

const VPC: &str = "vpc-keel";

/// Serves `action` for `call`'s caller.
pub(crate) async fn serve<C: ControlPlane>(
    call: Call<'_, C>,
    action: &str,
    p: &Params,
) -> Result<String, AwsError> {
    let e = Elbv2 { call };
    match action {
        "CreateLoadBalancer" => e.create_load_balancer(p).await,
        "DescribeLoadBalancers" => e.describe_load_balancers(p),
        "DeleteLoadBalancer" => e.delete_load_balancer(p).await,
        "CreateTargetGroup" => e.create_target_group(p).await,
        "DescribeTargetGroups" => e.describe_target_groups(p),
        "DeleteTargetGroup" => e.delete_target_group(p).await,
        "RegisterTargets" => e.targets(p, true).await,
        "DeregisterTargets" => e.targets(p, false).await,
        "DescribeTargetHealth" => e.describe_target_health(p).await,
        "CreateListener" => e.create_listener(p).await,
        "DescribeListeners" => e.describe_listeners(p),
        "DeleteListener" => e.delete_listener(p).await,
        "CreateRule" => e.create_rule(p).await,
        "DescribeRules" => e.describe_rules(p),
        "DeleteRule" => e.delete_rule(p).await,
        "DescribeTags" => e.describe_tags(p),
        "DescribeTargetGroupAttributes" => e.describe_tg_attributes(p),
        "ModifyTargetGroupAttributes" => e.modify_tg_attributes(p).await,
        "AddTags" => e.add_tags(p).await,
        "RemoveTags" => e.remove_tags(p).await,
        "ModifyListener" => e.modify_listener(p).await,
        "ModifyRule" => e.modify_rule(p).await,
        "SetRulePriorities" => e.set_rule_priorities(p).await,
        "ModifyTargetGroup" => e.modify_target_group(p).await,
        other => Err(AwsError::bad(
            "InvalidAction",
            format!("{other} is not an ELBv2 action Keel serves"),
        )),
    }
}

struct Elbv2<'a, C> {
    call: Call<'a, C>,
}

fn tg_key(name: &str) -> String {
    format!("targetgroup/{name}")
}

impl<C: ControlPlane> Elbv2<'_, C> {
    pub(super) fn arn(&self, rest: &str) -> String {
        self.call.arn(rest)
    }

    pub(super) fn lb_arn(&self, lb: &str) -> String {
        self.arn(&format!("loadbalancer/app/{lb}/{}", id16(lb)))
    }

    pub(super) fn tg_arn(&self, tg: &str) -> String {
        self.arn(&format!("targetgroup/{tg}/{}", id16(tg)))
    }

    pub(super) fn listener_arn(&self, lb: &str, port: i64) -> String {
        self.arn(&format!(
            "listener/app/{lb}/{}/{}",
            id16(lb),
            id16(&format!("{lb}:{port}"))
        ))
    }

    pub(super) fn rule_arn(&self, lb: &str, port: i64, priority: i64) -> String {
        self.arn(&format!(
            "listener-rule/app/{lb}/{}/{}/{}",
            id16(lb),
            id16(&format!("{lb}:{port}")),
            self.rule_id(lb, port, priority)
        ))
    }

    /// A rule's ID: derived from the priority it was created at, and kept
    /// (in the annotation `rules/LB/PORT`) when SetRulePriorities moves it.
    pub(super) fn rule_id(&self, lb: &str, port: i64, priority: i64) -> String {
        self.call
            .annotations(&rules_key(lb, port))
            .get(&priority.to_string())
            .cloned()
            .unwrap_or_else(|| id16(&format!("{lb}:{port}:{priority}")))
    }

    /// The listener and priority of the rule an ARN names.
    pub(super) fn rule_of(&self, arn: &str) -> Result<(String, i64, i64), AwsError> {
        let not_found = || AwsError::bad("RuleNotFound", format!("Rule '{arn}' not found"));
        let (lb, port) = self.listener_of(arn).map_err(|_| not_found())?;
        let id = arn.rsplit('/').next().unwrap_or("");
        let state = self.call.state();
        state.spec.load_balancers[&lb]
            .listeners
            .iter()
            .find(|l| i64::from(l.port) == port)
            .and_then(|l| {
                l.rules
                    .iter()
                    .map(|r| i64::from(r.priority))
                    .find(|n| self.rule_id(&lb, port, *n) == id)
            })
            .map(|n| (lb, port, n))
            .ok_or_else(not_found)
    }

    /// The load balancer an ARN names, if it exists.
    pub(super) fn lb_of(&self, arn: &str) -> Result<String, AwsError> {
        let name = arn
            .split(":loadbalancer/")
            .nth(1)
            .and_then(|rest| rest.split('/').nth(1))
            .unwrap_or("");
        if self.call.state().spec.load_balancers.contains_key(name) {
            Ok(name.to_owned())
        } else {
            Err(AwsError::bad(
                "LoadBalancerNotFound",
                format!("Load balancer '{arn}' not found"),
            ))
        }
    }

    pub(super) fn tg_of(&self, arn: &str) -> Result<String, AwsError> {
        let name = arn
            .split(":targetgroup/")
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .unwrap_or("");
        if self.call.state().spec.pools.contains_key(name) {
            Ok(name.to_owned())
        } else {
            Err(AwsError::bad(
                "TargetGroupNotFound",
                format!("Target groups '{arn}' not found"),
            ))
        }
    }

    /// The load balancer and port a listener ARN names.
    pub(super) fn listener_of(&self, arn: &str) -> Result<(String, i64), AwsError> {
        let parts: Vec<&str> = arn
            .split(":listener/")
            .nth(1)
            .or_else(|| arn.split(":listener-rule/").nth(1))
            .unwrap_or("")
            .split('/')
            .collect();
        let not_found = || AwsError::bad("ListenerNotFound", format!("Listener '{arn}' not found"));
        let (Some(lb), Some(id)) = (parts.get(1), parts.get(3)) else {
            return Err(not_found());
        };
        let state = self.call.state();
        let l = state.spec.load_balancers.get(*lb).ok_or_else(not_found)?;
        l.listeners
            .iter()
            .map(|l| i64::from(l.port))
            .find(|port| id16(&format!("{lb}:{port}")) == *id)
            .map(|port| ((*lb).to_owned(), port))
            .ok_or_else(not_found)
    }
}

/// One page of `items` (key, XML; sorted by key) from `Marker` on, at most
/// `PageSize` (1-400) long, and the `NextMarker` element when more follow.
fn page(items: Vec<(String, String)>, p: &Params) -> Result<(String, String), AwsError> {
    let size = match p.get("PageSize") {
        None => 400,
        Some(t) => t
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=400).contains(n))
            .ok_or_else(|| AwsError::bad("ValidationError", "PageSize must be 1-400"))?,
    };
    let rest: Vec<(String, String)> = items
        .into_iter()
        .filter(|(k, _)| p.get("Marker").is_none_or(|m| k.as_str() >= m))
        .collect();
    let body: String = rest.iter().take(size).map(|(_, x)| x.as_str()).collect();
    let next = rest
        .get(size)
        .map(|(k, _)| el("NextMarker", k))
        .unwrap_or_default();
    Ok((body, next))
}

fn esc_arn(arn: &str) -> String {
    crate::esc(arn)
}

/// `<member>` elements of a list of values.
fn members(values: impl IntoIterator<Item = String>) -> String {
    values.into_iter().map(|v| el("member", &v)).collect()
}
