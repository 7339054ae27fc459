//! Classic ELB (2012-06-01) calls on Keel objects. The mapping:
//!
//! - a load balancer is the Keel load balancer of the same name (no VIP:
//!   its listeners bind every address), so both ELB APIs see every Keel
//!   load balancer;
//! - each listener `LoadBalancerPort → InstancePort` is the Keel listener on
//!   that port; its default pool is `NAME.PORT` (a name neither ELB API can
//!   give a load balancer or target group);
//! - a registered instance is a member `ADDRESS:InstancePort` of each of
//!   those pools; instance IDs resolve through the instance registry
//!   (annotations `instance/ID`, `keel instance add`) or are IP addresses;
//! - the health check, connection draining and idle timeout are the pools'
//!   and listeners' own settings; LB-cookie and app-cookie stickiness
//!   policies set on a listener are its pool's stickiness, and a
//!   `ProxyProtocolPolicyType` policy set for an instance port makes those
//!   pools send PROXY v1, as ELB does;
//! - what Keel's model has no place for (zones, instance protocols as
//!   written, policy definitions, the registered IDs) is kept in the
//!   annotation `elb/NAME`, which goes with the load balancer.
//!
//! Every change is ordinary commands through Raft, validated like any other.
//!
//! One file per resource (its parameters, mapping and XML): load
//! balancers, listeners, instances, the health check, attributes,
//! policies, tags; this one holds the dispatch and the record.

use std::collections::BTreeMap;
use std::time::Duration;

use keel_compat::Notes;
use keel_model::{ClusterState, Document, LoadBalancerDoc, PoolDoc};
use keel_web_core::ControlPlane;
use serde::{Deserialize, Serialize};

use crate::{AwsError, Call, Params};

mod attributes;
mod health_check;
mod instances;
mod listeners;
mod load_balancers;
mod policies;
mod tags;

use policies::describe_policy_types;

/// The annotation key that holds an ELB's [`Record`].
const RECORD_KEY: &str = "record";
const LB_COOKIE: &str = "LBCookieStickinessPolicyType";
const APP_COOKIE: &str = "AppCookieStickinessPolicyType";
const PROXY_PROTOCOL: &str = "ProxyProtocolPolicyType";

/// Serves `action` for `call`'s caller.
pub(crate) async fn serve<C: ControlPlane>(
    call: Call<'_, C>,
    action: &str,
    p: &Params,
) -> Result<String, AwsError> {
    let e = Elb { call };
    match action {
        "CreateLoadBalancer" => e.create_load_balancer(p).await,
        "DescribeLoadBalancers" => e.describe_load_balancers(p),
        "DeleteLoadBalancer" => e.delete_load_balancer(p).await,
        "CreateLoadBalancerListeners" => e.create_listeners(p).await,
        "DeleteLoadBalancerListeners" => e.delete_listeners(p).await,
        "RegisterInstancesWithLoadBalancer" => e.instances(p, true).await,
        "DeregisterInstancesFromLoadBalancer" => e.instances(p, false).await,
        "DescribeInstanceHealth" => e.describe_instance_health(p).await,
        "ConfigureHealthCheck" => e.configure_health_check(p).await,
        "DescribeLoadBalancerAttributes" => e.describe_attributes(p),
        "ModifyLoadBalancerAttributes" => e.modify_attributes(p).await,
        "EnableAvailabilityZonesForLoadBalancer" => e.zones(p, true).await,
        "DisableAvailabilityZonesForLoadBalancer" => e.zones(p, false).await,
        "AddTags" => e.add_tags(p).await,
        "RemoveTags" => e.remove_tags(p).await,
        "DescribeTags" => e.describe_tags(p),
        "CreateLBCookieStickinessPolicy" => {
            let mut attrs = Vec::new();
            if let Some(period) = p.get("CookieExpirationPeriod") {
                attrs.push(("CookieExpirationPeriod".to_owned(), period.to_owned()));
            }
            e.create_policy(p, LB_COOKIE, attrs).await
        }
        "CreateAppCookieStickinessPolicy" => {
            let cookie = p.need("CookieName")?.to_owned();
            e.create_policy(p, APP_COOKIE, vec![("CookieName".to_owned(), cookie)])
                .await
        }
        "CreateLoadBalancerPolicy" => {
            let attrs = p
                .structs("PolicyAttributes")
                .into_iter()
                .map(|a| {
                    (
                        a.get("AttributeName").cloned().unwrap_or_default(),
                        a.get("AttributeValue").cloned().unwrap_or_default(),
                    )
                })
                .collect();
            e.create_policy(p, p.need("PolicyTypeName")?, attrs).await
        }
        "DeleteLoadBalancerPolicy" => e.delete_policy(p).await,
        "SetLoadBalancerPoliciesOfListener" => e.set_listener_policies(p).await,
        "SetLoadBalancerPoliciesForBackendServer" => e.set_backend_policies(p).await,
        "DescribeLoadBalancerPolicies" => e.describe_policies(p),
        "DescribeLoadBalancerPolicyTypes" => describe_policy_types(p),
        other => Err(AwsError::bad(
            "InvalidAction",
            format!("{other} is not a classic ELB action Keel serves"),
        )),
    }
}

// ---- What Keel's model has no place for.

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
struct Record {
    zones: Vec<String>,
    created: u64,
    /// Load balancer port → instance port and protocol, as written.
    backends: BTreeMap<u16, Backend>,
    /// Registered instance IDs, in order of registration.
    instances: Vec<String>,
    /// The health check target as written (`HTTP:8080/health`).
    health_target: Option<String>,
    policies: BTreeMap<String, Policy>,
    listener_policies: BTreeMap<u16, Vec<String>>,
    backend_policies: BTreeMap<u16, Vec<String>>,
    cross_zone: bool,
    /// `ConnectionDraining.Enabled` (Keel always lets requests under way
    /// finish; disabled means within a second).
    draining: Option<bool>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Backend {
    port: u16,
    protocol: String,
    /// `SSLCertificateId` as the client gave it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    certificate: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Policy {
    kind: String,
    attributes: Vec<(String, String)>,
}

impl Policy {
    /// A `ProxyProtocolPolicyType` policy with `ProxyProtocol = true`.
    fn sends_proxy_protocol(&self) -> bool {
        self.kind == PROXY_PROTOCOL
            && self
                .attribute("ProxyProtocol")
                .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    }

    fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

fn record_object(lb: &str) -> String {
    format!("elb/{lb}")
}

fn record_of(state: &ClusterState, lb: &str) -> Record {
    state
        .annotations
        .get(&record_object(lb))
        .and_then(|m| m.get(RECORD_KEY))
        .and_then(|text| serde_json::from_str(text).ok())
        .unwrap_or_default()
}

fn lb_not_found(name: &str) -> AwsError {
    AwsError::bad(
        "LoadBalancerNotFound",
        format!("There is no ACTIVE Load Balancer named '{name}'"),
    )
}

fn invalid_request(message: impl Into<String>) -> AwsError {
    AwsError::new(409, "InvalidConfigurationRequest", message)
}

fn validation(message: impl Into<String>) -> AwsError {
    AwsError::bad("ValidationError", message)
}

fn pool_name(lb: &str, port: u16) -> String {
    format!("{lb}.{port}")
}

fn lb_mut<'a>(doc: &'a mut Document, name: &str) -> Option<&'a mut LoadBalancerDoc> {
    doc.load_balancers.iter_mut().find(|l| l.name == name)
}

fn pool_mut<'a>(doc: &'a mut Document, name: &str) -> Option<&'a mut PoolDoc> {
    doc.pools.iter_mut().find(|p| p.name == name)
}

fn seconds(d: Duration) -> String {
    d.as_secs().to_string()
}

struct Elb<'a, C> {
    call: Call<'a, C>,
}

/// The annotation that holds `lb`'s record.
fn record_note(lb: &str, record: &Record) -> Result<(String, BTreeMap<String, String>), AwsError> {
    let text = serde_json::to_string(record)
        .map_err(|e| AwsError::new(500, "InternalFailure", e.to_string()))?;
    Ok((
        record_object(lb),
        BTreeMap::from([(RECORD_KEY.to_owned(), text)]),
    ))
}

impl<C: ControlPlane> Elb<'_, C> {
    /// The named load balancer's record, if the load balancer exists.
    pub(super) fn existing(&self, name: &str) -> Result<Record, AwsError> {
        let state = self.call.state();
        if state.spec.load_balancers.contains_key(name) {
            Ok(record_of(&state, name))
        } else {
            Err(lb_not_found(name))
        }
    }

    pub(super) async fn save(&self, lb: &str, record: &Record) -> Result<(), AwsError> {
        let (object, values) = record_note(lb, record)?;
        self.call.annotate(&object, values).await
    }

    /// Commits `edit` and `lb`'s record as one entry.
    pub(super) async fn change_saving(
        &self,
        lb: &str,
        record: &Record,
        edit: impl FnMut(&mut Document) -> Result<(), AwsError>,
    ) -> Result<(), AwsError> {
        self.change_saving_noting(lb, record, Notes::new(), edit)
            .await
    }

    /// Like [`Elb::change_saving`], with `notes` set in the same entry.
    pub(super) async fn change_saving_noting(
        &self,
        lb: &str,
        record: &Record,
        mut notes: Notes,
        edit: impl FnMut(&mut Document) -> Result<(), AwsError>,
    ) -> Result<(), AwsError> {
        notes.push(record_note(lb, record)?);
        self.call.change_noting(edit, notes).await.map(|_| ())
    }
}
