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

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use keel_model::{
    CheckKind, ClusterState, Document, DurationDoc, HealthCheckDoc, LoadBalancerDoc, MemberDoc,
    PoolDoc, Protocol, Scalar, StickinessDoc,
};
use serde::{Deserialize, Serialize};

use crate::{dns_name, el, Aws, AwsError, Call, Params};
use keel_web_core::instances::{address_of, id_of};
use keel_web_core::ControlPlane;

/// The annotation key that holds an ELB's [`Record`].
const RECORD_KEY: &str = "record";
/// ELB's defaults for a new load balancer's health check.
const DEFAULT_CHECK: Check = Check {
    interval: 30,
    timeout: 5,
    unhealthy: 2,
    healthy: 10,
};
const LB_COOKIE: &str = "LBCookieStickinessPolicyType";
const APP_COOKIE: &str = "AppCookieStickinessPolicyType";
const PROXY_PROTOCOL: &str = "ProxyProtocolPolicyType";

pub(crate) async fn call<C: ControlPlane>(
    aws: &Aws<C>,
    action: &str,
    p: &Params,
    by: &str,
) -> Result<String, AwsError> {
    let e = Elb {
        call: Call {
            aws,
            by,
            manager: "elb",
        },
    };
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

/// A health check's numbers, in seconds and counts.
#[derive(Clone, Copy)]
struct Check {
    interval: u64,
    timeout: u64,
    unhealthy: u32,
    healthy: u32,
}

/// One listener as the classic API describes it.
struct ListenerView {
    port: u16,
    protocol: &'static str,
    instance_port: u16,
    instance_protocol: String,
    certificate: Option<String>,
    pool: String,
}

fn classic_protocol(p: Protocol) -> &'static str {
    match p {
        Protocol::Http => "HTTP",
        Protocol::Https => "HTTPS",
        Protocol::Tls => "SSL",
        Protocol::Tcp | Protocol::TlsPassthrough => "TCP",
    }
}

/// The listeners of Keel load balancer `lb`, as classic listeners.
fn listeners(state: &ClusterState, lb: &str, record: &Record) -> Vec<ListenerView> {
    let Some(l) = state.spec.load_balancers.get(lb) else {
        return Vec::new();
    };
    l.listeners
        .iter()
        .map(|x| {
            let backend = record.backends.get(&x.port);
            let member_port = state
                .spec
                .pools
                .get(x.default_pool.as_deref().unwrap_or_default())
                .and_then(|p| p.members.first())
                .map(|m| m.address.port());
            let protocol = classic_protocol(x.protocol);
            ListenerView {
                port: x.port,
                protocol,
                instance_port: backend.map(|b| b.port).or(member_port).unwrap_or(x.port),
                instance_protocol: backend.map_or_else(
                    || {
                        match protocol {
                            "HTTP" | "HTTPS" => "HTTP",
                            _ => "TCP",
                        }
                        .to_owned()
                    },
                    |b| b.protocol.clone(),
                ),
                certificate: backend
                    .and_then(|b| b.certificate.clone())
                    .or_else(|| x.certificates.first().cloned()),
                pool: x.default_pool.clone().unwrap_or_default(),
            }
        })
        .collect()
}

/// The IDs of the instances registered with `lb`: the recorded ones, and
/// one for each other member address of its pools (added through Keel).
fn registered(state: &ClusterState, lb: &str, record: &Record) -> Vec<String> {
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

/// The numbers of the health check `lb`'s pools share (the first pool's).
fn current_check(state: &ClusterState, lb: &str, record: &Record) -> Check {
    listeners(state, lb, record)
        .first()
        .and_then(|l| state.spec.pools.get(&l.pool))
        .and_then(|p| p.health_check.as_ref())
        .map_or(DEFAULT_CHECK, |h| Check {
            interval: h.interval.as_secs(),
            timeout: h.timeout.as_secs(),
            unhealthy: h.unhealthy_threshold,
            healthy: h.healthy_threshold,
        })
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

/// Classic load balancer names: 1-32 letters, digits and hyphens, not
/// starting or ending with a hyphen.
fn check_lb_name(name: &str) -> Result<(), AwsError> {
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

fn port_param(text: &str, what: &str) -> Result<u16, AwsError> {
    text.parse()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| validation(format!("{what} {text:?} is not a port (1-65535)")))
}

/// A listener as a client asked for it.
struct NewListener {
    port: u16,
    protocol: String,
    backend: Backend,
}

fn new_listeners(p: &Params) -> Result<Vec<NewListener>, AwsError> {
    let listeners = p.structs("Listeners");
    if listeners.is_empty() {
        return Err(validation("Listeners must not be empty"));
    }
    let mut out: Vec<NewListener> = Vec::new();
    for l in listeners {
        let get = |k: &str| l.get(k).map(String::as_str).unwrap_or("");
        let protocol = get("Protocol").to_ascii_uppercase();
        if !["HTTP", "HTTPS", "TCP", "SSL"].contains(&protocol.as_str()) {
            return Err(AwsError::bad(
                "UnsupportedProtocol",
                format!(
                    "listener protocol {:?} is not HTTP, HTTPS, TCP or SSL",
                    get("Protocol")
                ),
            ));
        }
        let port = port_param(get("LoadBalancerPort"), "LoadBalancerPort")?;
        let instance_port = port_param(get("InstancePort"), "InstancePort")?;
        let instance_protocol = match get("InstanceProtocol").to_ascii_uppercase().as_str() {
            "" if protocol.starts_with("HTTP") => "HTTP".to_owned(),
            "" => "TCP".to_owned(),
            p @ ("HTTP" | "HTTPS" | "TCP" | "SSL") => p.to_owned(),
            _ => {
                return Err(AwsError::bad(
                    "UnsupportedProtocol",
                    format!(
                        "instance protocol {:?} is not HTTP, HTTPS, TCP or SSL",
                        get("InstanceProtocol")
                    ),
                ))
            }
        };
        if protocol.starts_with("HTTP") != instance_protocol.starts_with("HTTP") {
            return Err(validation(format!(
                "listener {port}: {protocol} cannot forward to {instance_protocol} (HTTP and HTTPS pair with each other, TCP and SSL likewise)"
            )));
        }
        let certificate = l.get("SSLCertificateId").filter(|c| !c.is_empty()).cloned();
        if (protocol == "HTTPS" || protocol == "SSL") && certificate.is_none() {
            return Err(validation(format!(
                "listener {port}: {protocol} needs an SSLCertificateId (the name of a Keel certificate, or an ARN ending in /NAME)"
            )));
        }
        if out.iter().any(|x| x.port == port) {
            return Err(AwsError::bad(
                "DuplicateListener",
                format!("LoadBalancerPort {port} is listed twice"),
            ));
        }
        out.push(NewListener {
            port,
            protocol,
            backend: Backend {
                port: instance_port,
                protocol: instance_protocol,
                certificate,
            },
        });
    }
    Ok(out)
}

/// The Keel certificate an `SSLCertificateId` names: the text after the
/// last `/` of an ARN, or the whole ID.
fn certificate_name(id: &str) -> &str {
    id.rsplit('/').next().unwrap_or(id)
}

/// A parsed health check target: `HTTP:80/path`, `TCP:5000`.
struct Target {
    protocol: String,
    port: u16,
    path: Option<String>,
}

fn parse_target(text: &str) -> Result<Target, AwsError> {
    let bad = || {
        validation(format!(
            "HealthCheck.Target {text:?} is not PROTOCOL:PORT (TCP, SSL) or PROTOCOL:PORT/PATH (HTTP, HTTPS)"
        ))
    };
    let (protocol, rest) = text.split_once(':').ok_or_else(bad)?;
    let protocol = protocol.to_ascii_uppercase();
    let (port, path) = match rest.find('/') {
        Some(i) => (&rest[..i], Some(rest[i..].to_owned())),
        None => (rest, None),
    };
    let port = port.parse().ok().filter(|p| *p > 0).ok_or_else(bad)?;
    match (protocol.as_str(), &path) {
        ("HTTP" | "HTTPS", Some(_)) | ("TCP" | "SSL", None) => Ok(Target {
            protocol,
            port,
            path,
        }),
        _ => Err(bad()),
    }
}

/// The pool health check for `target`, checking `check`'s numbers, on a
/// pool whose members listen on `instance_port`.
fn check_doc(target: &Target, check: Check, instance_port: u16) -> HealthCheckDoc {
    let http = target.path.is_some();
    HealthCheckDoc {
        kind: if http { "http" } else { "tcp" }.into(),
        method: None,
        path: target.path.clone(),
        host: None,
        expected_codes: http.then(|| Scalar::Text("200".into())),
        interval: Some(DurationDoc::Seconds(check.interval as f64)),
        timeout: Some(DurationDoc::Seconds(check.timeout as f64)),
        healthy_threshold: Some(check.healthy.into()),
        unhealthy_threshold: Some(check.unhealthy.into()),
        port: (target.port != instance_port).then_some(target.port.into()),
    }
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
    fn existing(&self, name: &str) -> Result<Record, AwsError> {
        let state = self.call.state();
        if state.spec.load_balancers.contains_key(name) {
            Ok(record_of(&state, name))
        } else {
            Err(lb_not_found(name))
        }
    }

    async fn save(&self, lb: &str, record: &Record) -> Result<(), AwsError> {
        let (object, values) = record_note(lb, record)?;
        self.call.annotate(&object, values).await
    }

    /// Commits `edit` and `lb`'s record as one entry.
    async fn change_saving(
        &self,
        lb: &str,
        record: &Record,
        edit: impl FnMut(&mut Document) -> Result<(), AwsError>,
    ) -> Result<(), AwsError> {
        let note = record_note(lb, record)?;
        self.call.change_noting(edit, vec![note]).await.map(|_| ())
    }

    /// The health check `lb`'s pools share (the first pool's), as the
    /// classic API describes it.
    fn health_xml(&self, state: &ClusterState, lb: &str, record: &Record) -> String {
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

    fn instances_xml(&self, ids: &[String]) -> String {
        let members: String = ids
            .iter()
            .map(|id| format!("<member>{}</member>", el("InstanceId", id)))
            .collect();
        format!("<Instances>{members}</Instances>")
    }

    fn lb_xml(&self, state: &ClusterState, name: &str) -> String {
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

    // ---- Load balancers.

    async fn create_load_balancer(&self, p: &Params) -> Result<String, AwsError> {
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
        self.change_saving(&name, &record, |doc| {
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
        self.put_tags(&name, p).await?;
        Ok(el("DNSName", &dns_name(&name)))
    }

    fn check_certificates(&self, listeners: &[NewListener]) -> Result<(), AwsError> {
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

    fn describe_load_balancers(&self, p: &Params) -> Result<String, AwsError> {
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

    async fn delete_load_balancer(&self, p: &Params) -> Result<String, AwsError> {
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
        self.call
            .annotate(&format!("tags/loadbalancer/{name}"), BTreeMap::new())
            .await?;
        Ok(String::new())
    }

    // ---- Listeners.

    async fn create_listeners(&self, p: &Params) -> Result<String, AwsError> {
        let name = p.need("LoadBalancerName")?.to_owned();
        let mut record = self.existing(&name)?;
        let listeners = new_listeners(p)?;
        let state = self.call.state();
        let current = self::listeners(&state, &name, &record);
        let mut fresh = Vec::new();
        for l in listeners {
            match current.iter().find(|c| c.port == l.port) {
                // The same listener again is no change, as on AWS.
                Some(c)
                    if c.protocol == l.protocol
                        && c.instance_port == l.backend.port
                        && c.instance_protocol == l.backend.protocol => {}
                Some(_) => {
                    return Err(AwsError::bad(
                        "DuplicateListener",
                        format!("A listener already exists for {name} with LoadBalancerPort {}, but with a different InstancePort, Protocol, or SSLCertificateId", l.port),
                    ))
                }
                None => fresh.push(l),
            }
        }
        self.check_certificates(&fresh)?;
        let numbers = current_check(&state, &name, &record);
        let instances: Vec<IpAddr> = registered(&state, &name, &record)
            .iter()
            .filter_map(|id| address_of(&state, id))
            .collect();
        let before = record.clone();
        for l in &fresh {
            record.backends.insert(l.port, l.backend.clone());
        }
        self.change_saving(&name, &record, |doc| {
            for l in &fresh {
                add_listener(doc, &name, l, &before, numbers, &instances);
            }
            Ok(())
        })
        .await?;
        Ok(String::new())
    }

    async fn delete_listeners(&self, p: &Params) -> Result<String, AwsError> {
        let name = p.need("LoadBalancerName")?.to_owned();
        let mut record = self.existing(&name)?;
        let ports = p
            .list("LoadBalancerPorts")
            .iter()
            .map(|t| port_param(t, "LoadBalancerPorts"))
            .collect::<Result<Vec<u16>, _>>()?;
        let pools: Vec<String> = listeners(&self.call.state(), &name, &record)
            .into_iter()
            .filter(|l| ports.contains(&l.port))
            .map(|l| l.pool)
            .collect();
        for port in &ports {
            record.backends.remove(port);
            record.listener_policies.remove(port);
        }
        self.change_saving(&name, &record, |doc| {
            if let Some(lb) = lb_mut(doc, &name) {
                lb.listeners
                    .retain(|l| !u16::try_from(l.port).is_ok_and(|p| ports.contains(&p)));
            }
            remove_unused_pools(doc, "", &pools);
            Ok(())
        })
        .await?;
        Ok(String::new())
    }

    // ---- Instances.

    async fn instances(&self, p: &Params, register: bool) -> Result<String, AwsError> {
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

    async fn describe_instance_health(&self, p: &Params) -> Result<String, AwsError> {
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

    // ---- Health check, attributes, zones.

    async fn configure_health_check(&self, p: &Params) -> Result<String, AwsError> {
        let name = p.need("LoadBalancerName")?.to_owned();
        let mut record = self.existing(&name)?;
        let target_text = p.need("HealthCheck.Target")?.to_owned();
        let target = parse_target(&target_text)?;
        let number = |key: &str, range: std::ops::RangeInclusive<u64>| -> Result<u64, AwsError> {
            let text = p.need(key)?;
            text.parse::<u64>()
                .ok()
                .filter(|n| range.contains(n))
                .ok_or_else(|| {
                    validation(format!(
                        "{key} {text:?} must be {}-{}",
                        range.start(),
                        range.end()
                    ))
                })
        };
        let check = Check {
            interval: number("HealthCheck.Interval", 5..=300)?,
            timeout: number("HealthCheck.Timeout", 2..=60)?,
            unhealthy: number("HealthCheck.UnhealthyThreshold", 2..=10)? as u32,
            healthy: number("HealthCheck.HealthyThreshold", 2..=10)? as u32,
        };
        if check.timeout >= check.interval {
            return Err(validation(
                "HealthCheck.Timeout must be less than HealthCheck.Interval",
            ));
        }
        let views = listeners(&self.call.state(), &name, &record);
        self.call
            .change(|doc| {
                for l in &views {
                    if let Some(pool) = pool_mut(doc, &l.pool) {
                        pool.health_check = Some(check_doc(&target, check, l.instance_port));
                    }
                }
                Ok(())
            })
            .await?;
        record.health_target = Some(format!(
            "{}:{}{}",
            target.protocol,
            target.port,
            target.path.as_deref().unwrap_or("")
        ));
        self.save(&name, &record).await?;
        Ok(self.health_xml(&self.call.state(), &name, &record))
    }

    fn attributes_xml(&self, name: &str, record: &Record) -> String {
        let state = self.call.state();
        let views = listeners(&state, name, record);
        let pool = views.first().and_then(|l| state.spec.pools.get(&l.pool));
        let drain = pool.map_or(keel_model::defaults::DRAIN_TIMEOUT, |p| p.drain_timeout);
        let idle = views
            .first()
            .and_then(|l| {
                state.spec.load_balancers[name]
                    .listeners
                    .iter()
                    .find(|x| x.port == l.port)
            })
            .map_or(keel_model::defaults::IDLE_TIMEOUT, |l| l.idle_timeout);
        let bool_text = |b: bool| if b { "true" } else { "false" };
        format!(
            "<LoadBalancerAttributes><CrossZoneLoadBalancing>{}</CrossZoneLoadBalancing>\
             <AccessLog>{}</AccessLog><ConnectionDraining>{}{}</ConnectionDraining>\
             <ConnectionSettings>{}</ConnectionSettings></LoadBalancerAttributes>",
            el("Enabled", bool_text(record.cross_zone)),
            el("Enabled", "false"),
            el("Enabled", bool_text(record.draining.unwrap_or(true))),
            el("Timeout", &seconds(drain)),
            el("IdleTimeout", &seconds(idle)),
        )
    }

    fn describe_attributes(&self, p: &Params) -> Result<String, AwsError> {
        let name = p.need("LoadBalancerName")?;
        let record = self.existing(name)?;
        Ok(self.attributes_xml(name, &record))
    }

    async fn modify_attributes(&self, p: &Params) -> Result<String, AwsError> {
        let name = p.need("LoadBalancerName")?.to_owned();
        let mut record = self.existing(&name)?;
        let flag = |key: &str| -> Result<Option<bool>, AwsError> {
            match p.get(key).map(str::to_ascii_lowercase).as_deref() {
                None => Ok(None),
                Some("true") => Ok(Some(true)),
                Some("false") => Ok(Some(false)),
                Some(other) => Err(validation(format!("{key} {other:?} is not true or false"))),
            }
        };
        let number =
            |key: &str, range: std::ops::RangeInclusive<u64>| -> Result<Option<u64>, AwsError> {
                p.get(key)
                    .map(|t| {
                        t.parse::<u64>()
                            .ok()
                            .filter(|n| range.contains(n))
                            .ok_or_else(|| {
                                validation(format!(
                                    "{key} {t:?} must be {}-{}",
                                    range.start(),
                                    range.end()
                                ))
                            })
                    })
                    .transpose()
            };
        if flag("LoadBalancerAttributes.AccessLog.Enabled")? == Some(true) {
            return Err(invalid_request(
                "access logs to S3 are not served by Keel (its logs go to the journal)",
            ));
        }
        let cross_zone = flag("LoadBalancerAttributes.CrossZoneLoadBalancing.Enabled")?;
        let draining = flag("LoadBalancerAttributes.ConnectionDraining.Enabled")?;
        let drain_for = number(
            "LoadBalancerAttributes.ConnectionDraining.Timeout",
            1..=3600,
        )?;
        let idle = number(
            "LoadBalancerAttributes.ConnectionSettings.IdleTimeout",
            1..=4000,
        )?;
        let state = self.call.state();
        let views = listeners(&state, &name, &record);
        let current_drain = views
            .first()
            .and_then(|l| state.spec.pools.get(&l.pool))
            .map_or(keel_model::defaults::DRAIN_TIMEOUT, |p| p.drain_timeout)
            .as_secs();
        let drain = match (draining.or(record.draining), drain_for) {
            (Some(false), _) => Some(1),
            (_, Some(t)) => Some(t),
            (Some(true), None) if record.draining == Some(false) => Some(300.max(current_drain)),
            _ => None,
        };
        self.call
            .change(|doc| {
                for l in &views {
                    if let (Some(pool), Some(t)) = (pool_mut(doc, &l.pool), drain) {
                        pool.drain_timeout = Some(DurationDoc::Seconds(t as f64));
                    }
                }
                if let (Some(lb), Some(t)) = (lb_mut(doc, &name), idle) {
                    for l in &mut lb.listeners {
                        l.idle_timeout = Some(DurationDoc::Seconds(t as f64));
                    }
                }
                Ok(())
            })
            .await?;
        if let Some(c) = cross_zone {
            record.cross_zone = c;
        }
        if let Some(d) = draining {
            record.draining = Some(d);
        }
        self.save(&name, &record).await?;
        Ok(format!(
            "{}{}",
            el("LoadBalancerName", &name),
            self.attributes_xml(&name, &record)
        ))
    }

    async fn zones(&self, p: &Params, enable: bool) -> Result<String, AwsError> {
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

    // ---- Tags (the annotation ELBv2 uses too: one load balancer, one set).

    fn tag_object(name: &str) -> String {
        format!("tags/loadbalancer/{name}")
    }

    async fn put_tags(&self, name: &str, p: &Params) -> Result<(), AwsError> {
        let keyless = p
            .structs("Tags")
            .iter()
            .any(|t| t.get("Key").is_none_or(|k| k.is_empty()));
        if keyless {
            return Err(validation("every tag needs a Key"));
        }
        self.call.add_tags(&Self::tag_object(name), p).await
    }

    fn tagged(&self, p: &Params) -> Result<Vec<String>, AwsError> {
        let names = p.list("LoadBalancerNames");
        if names.is_empty() {
            return Err(validation("LoadBalancerNames must not be empty"));
        }
        for n in &names {
            self.existing(n)?;
        }
        Ok(names)
    }

    async fn add_tags(&self, p: &Params) -> Result<String, AwsError> {
        for name in self.tagged(p)? {
            self.put_tags(&name, p).await?;
        }
        Ok(String::new())
    }

    async fn remove_tags(&self, p: &Params) -> Result<String, AwsError> {
        for name in self.tagged(p)? {
            let key = Self::tag_object(&name);
            let mut values = self.call.annotations(&key);
            for t in p.structs("Tags") {
                if let Some(k) = t.get("Key") {
                    values.remove(k);
                }
            }
            self.call.annotate(&key, values).await?;
        }
        Ok(String::new())
    }

    fn describe_tags(&self, p: &Params) -> Result<String, AwsError> {
        let state = self.call.state();
        let mut out = String::new();
        for name in self.tagged(p)? {
            let tags: String = state
                .annotations
                .get(&Self::tag_object(&name))
                .into_iter()
                .flatten()
                .map(|(k, v)| format!("<member>{}{}</member>", el("Key", k), el("Value", v)))
                .collect();
            out.push_str(&format!(
                "<member>{}<Tags>{tags}</Tags></member>",
                el("LoadBalancerName", &name)
            ));
        }
        Ok(format!("<TagDescriptions>{out}</TagDescriptions>"))
    }

    // ---- Policies.

    async fn create_policy(
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

    async fn delete_policy(&self, p: &Params) -> Result<String, AwsError> {
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
    fn named_policies(
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

    async fn set_listener_policies(&self, p: &Params) -> Result<String, AwsError> {
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

    async fn set_backend_policies(&self, p: &Params) -> Result<String, AwsError> {
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

    fn describe_policies(&self, p: &Params) -> Result<String, AwsError> {
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

/// Adds listener `l` to `lb` with a pool of its own holding `instances`,
/// checked, sticky and PROXY-speaking as the load balancer's other pools.
fn add_listener(
    doc: &mut Document,
    lb: &str,
    l: &NewListener,
    record: &Record,
    numbers: Check,
    instances: &[IpAddr],
) {
    let pool = pool_name(lb, l.port);
    // Settings the load balancer's other pools share.
    let sibling = lb_mut(doc, lb)
        .and_then(|x| x.listeners.first().and_then(|f| f.default_pool.clone()))
        .and_then(|first| doc.pools.iter().find(|p| p.name == first).cloned());
    let target = record
        .health_target
        .as_deref()
        .and_then(|t| parse_target(t).ok())
        .unwrap_or(Target {
            protocol: "TCP".into(),
            port: l.backend.port,
            path: None,
        });
    let proxy = record
        .backend_policies
        .get(&l.backend.port)
        .into_iter()
        .flatten()
        .filter_map(|n| record.policies.get(n))
        .any(Policy::sends_proxy_protocol);
    let secure_backend = matches!(l.backend.protocol.as_str(), "HTTPS" | "SSL");
    doc.pools.retain(|p| p.name != pool);
    doc.pools.push(PoolDoc {
        name: pool.clone(),
        algorithm: None,
        health_check: Some(check_doc(&target, numbers, l.backend.port)),
        drain_timeout: sibling.as_ref().and_then(|s| s.drain_timeout.clone()),
        connect_timeout: None,
        response_timeout: None,
        proxy_protocol: proxy.then(|| "v1".to_owned()),
        hash_on: None,
        stickiness: None,
        tls: secure_backend.then_some(keel_model::MemberTlsDoc {
            verify: Some(false),
            ca: None,
            server_name: None,
        }),
        http_version: None,
        members: instances
            .iter()
            .map(|ip| MemberDoc {
                address: SocketAddr::new(*ip, l.backend.port).to_string(),
                weight: None,
                enabled: None,
            })
            .collect(),
    });
    let protocol = match l.protocol.as_str() {
        "HTTP" => "http",
        "HTTPS" => "https",
        "SSL" => "tls",
        _ => "tcp",
    };
    let idle =
        lb_mut(doc, lb).and_then(|x| x.listeners.first().and_then(|f| f.idle_timeout.clone()));
    if let Some(x) = lb_mut(doc, lb) {
        x.listeners.push(keel_model::ListenerDoc {
            port: l.port.into(),
            protocol: protocol.into(),
            bind: None,
            default_pool: Some(pool),
            idle_timeout: idle,
            header_timeout: None,
            client_timeout: None,
            keepalive_timeout: None,
            certificates: l
                .backend
                .certificate
                .as_deref()
                .map(|c| vec![certificate_name(c).to_owned()])
                .unwrap_or_default(),
            tls_policy: None,
            http2: None,
            rules: Vec::new(),
            accept_proxy_protocol: None,
            trusted_proxies: Vec::new(),
            request_timeout: None,
            max_connections: None,
            rate_limit: None,
        });
    }
}

/// Removes `pools` that no listener uses any more (of any load balancer
/// other than `gone`).
fn remove_unused_pools(doc: &mut Document, gone: &str, pools: &[String]) {
    let used: BTreeSet<String> = doc
        .load_balancers
        .iter()
        .filter(|l| l.name != gone)
        .flat_map(|l| &l.listeners)
        .flat_map(|l| {
            l.default_pool
                .clone()
                .into_iter()
                .chain(l.rules.iter().flat_map(|r| {
                    r.pool
                        .iter()
                        .cloned()
                        .chain(r.forward.iter().flatten().map(|w| w.pool.clone()))
                }))
        })
        .collect();
    doc.pools
        .retain(|p| !pools.contains(&p.name) || used.contains(&p.name));
}

/// Records which policies apply at `port` (none: forgets the port).
fn set_names(at: &mut BTreeMap<u16, Vec<String>>, port: u16, policies: Vec<(String, Policy)>) {
    let names: Vec<String> = policies.into_iter().map(|(n, _)| n).collect();
    if names.is_empty() {
        at.remove(&port);
    } else {
        at.insert(port, names);
    }
}

fn check_policy(policy: &Policy) -> Result<(), AwsError> {
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

fn stickiness_doc(policy: &Policy) -> StickinessDoc {
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
fn describe_policy_types(p: &Params) -> Result<String, AwsError> {
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
