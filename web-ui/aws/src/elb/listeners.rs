//! Classic listeners: create and delete; each gets a Keel pool of its own
//! (`NAME.PORT`).

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use keel_model::{ClusterState, Document, MemberDoc, PoolDoc, Protocol};
use keel_web_core::instances::address_of;
use keel_web_core::ControlPlane;

use super::health_check::{check_doc, current_check, parse_target, Check, Target};
use super::instances::registered;
use super::{lb_mut, pool_name, validation, Backend, Elb, Policy, Record};
use crate::{AwsError, Params};

impl<C: ControlPlane> Elb<'_, C> {
    pub(super) async fn create_listeners(&self, p: &Params) -> Result<String, AwsError> {
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

    pub(super) async fn delete_listeners(&self, p: &Params) -> Result<String, AwsError> {
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
}

/// One listener as the classic API describes it.
pub(super) struct ListenerView {
    pub(super) port: u16,
    pub(super) protocol: &'static str,
    pub(super) instance_port: u16,
    pub(super) instance_protocol: String,
    pub(super) certificate: Option<String>,
    pub(super) pool: String,
}

pub(super) fn classic_protocol(p: Protocol) -> &'static str {
    match p {
        Protocol::Http => "HTTP",
        Protocol::Https => "HTTPS",
        Protocol::Tls => "SSL",
        Protocol::Tcp | Protocol::TlsPassthrough => "TCP",
    }
}

/// The listeners of Keel load balancer `lb`, as classic listeners.
pub(super) fn listeners(state: &ClusterState, lb: &str, record: &Record) -> Vec<ListenerView> {
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

pub(super) fn port_param(text: &str, what: &str) -> Result<u16, AwsError> {
    text.parse()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| validation(format!("{what} {text:?} is not a port (1-65535)")))
}

/// A listener as a client asked for it.
pub(super) struct NewListener {
    pub(super) port: u16,
    pub(super) protocol: String,
    pub(super) backend: Backend,
}

pub(super) fn new_listeners(p: &Params) -> Result<Vec<NewListener>, AwsError> {
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
pub(super) fn certificate_name(id: &str) -> &str {
    id.rsplit('/').next().unwrap_or(id)
}

/// Adds listener `l` to `lb` with a pool of its own holding `instances`,
/// checked, sticky and PROXY-speaking as the load balancer's other pools.
pub(super) fn add_listener(
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
pub(super) fn remove_unused_pools(doc: &mut Document, gone: &str, pools: &[String]) {
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
