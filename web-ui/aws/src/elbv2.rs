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

use std::collections::BTreeMap;

use keel_model::{Action, Algorithm, Conditions, ListenerDoc, PoolDoc, RuleDoc, Spec, Stickiness};
use serde_json::{json, Value};

use crate::{dns_name, el, Aws, AwsError, Call, Params};
use keel_compat::{hex_id as id16, Provisioning};
use keel_web_core::ControlPlane;

const VPC: &str = "vpc-keel";

pub(crate) async fn call<C: ControlPlane>(
    aws: &Aws<C>,
    action: &str,
    p: &Params,
    by: &str,
) -> Result<String, AwsError> {
    let e = Elbv2 {
        call: Call {
            aws,
            by,
            manager: "elbv2",
        },
    };
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
    fn arn(&self, rest: &str) -> String {
        self.call.arn(rest)
    }

    fn lb_arn(&self, lb: &str) -> String {
        self.arn(&format!("loadbalancer/app/{lb}/{}", id16(lb)))
    }

    fn tg_arn(&self, tg: &str) -> String {
        self.arn(&format!("targetgroup/{tg}/{}", id16(tg)))
    }

    fn listener_arn(&self, lb: &str, port: i64) -> String {
        self.arn(&format!(
            "listener/app/{lb}/{}/{}",
            id16(lb),
            id16(&format!("{lb}:{port}"))
        ))
    }

    fn rule_arn(&self, lb: &str, port: i64, priority: i64) -> String {
        self.arn(&format!(
            "listener-rule/app/{lb}/{}/{}/{}",
            id16(lb),
            id16(&format!("{lb}:{port}")),
            self.rule_id(lb, port, priority)
        ))
    }

    /// A rule's ID: derived from the priority it was created at, and kept
    /// (in the annotation `rules/LB/PORT`) when SetRulePriorities moves it.
    fn rule_id(&self, lb: &str, port: i64, priority: i64) -> String {
        self.call
            .annotations(&rules_key(lb, port))
            .get(&priority.to_string())
            .cloned()
            .unwrap_or_else(|| id16(&format!("{lb}:{port}:{priority}")))
    }

    /// The listener and priority of the rule an ARN names.
    fn rule_of(&self, arn: &str) -> Result<(String, i64, i64), AwsError> {
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
    fn lb_of(&self, arn: &str) -> Result<String, AwsError> {
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

    fn tg_of(&self, arn: &str) -> Result<String, AwsError> {
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
    fn listener_of(&self, arn: &str) -> Result<(String, i64), AwsError> {
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

    // ---- Load balancers.

    async fn create_load_balancer(&self, p: &Params) -> Result<String, AwsError> {
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
        self.put_tags(&format!("loadbalancer/{name}"), p).await?;
        Ok(format!(
            "<LoadBalancers>{}</LoadBalancers>",
            self.lb_xml(&name)
        ))
    }

    fn lb_xml(&self, name: &str) -> String {
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

    fn describe_load_balancers(&self, p: &Params) -> Result<String, AwsError> {
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

    async fn delete_load_balancer(&self, p: &Params) -> Result<String, AwsError> {
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
        self.call
            .annotate(&format!("tags/loadbalancer/{name}"), BTreeMap::new())
            .await?;
        Ok(String::new())
    }

    // ---- Target groups.

    async fn create_target_group(&self, p: &Params) -> Result<String, AwsError> {
        let name = p.need("Name")?.to_owned();
        let protocol = p.get("Protocol").unwrap_or("HTTP").to_ascii_uppercase();
        if !["HTTP", "HTTPS", "TCP", "TLS"].contains(&protocol.as_str()) {
            return Err(AwsError::bad(
                "ValidationError",
                format!("target group protocol {protocol:?} is not served (HTTP, HTTPS, TCP, TLS)"),
            ));
        }
        let port = p.get("Port").unwrap_or("80");
        let port_n: u16 = port
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| AwsError::bad("ValidationError", "Port must be 1-65535"))?;
        let target_type = match p.get("TargetType").unwrap_or("instance") {
            t @ ("ip" | "instance") => t,
            other => {
                return Err(AwsError::bad(
                    "ValidationError",
                    format!("target type {other:?} is not served (ip or instance)"),
                ))
            }
        };
        if self.call.state().spec.pools.contains_key(&name) {
            return Err(AwsError::bad(
                "DuplicateTargetGroupName",
                format!("A target group with the same name '{name}' exists"),
            ));
        }
        let mut pool = json!({ "name": name, "members": [] });
        let check_protocol = p
            .get("HealthCheckProtocol")
            .map(str::to_ascii_uppercase)
            .unwrap_or_else(|| match protocol.as_str() {
                "HTTP" | "HTTPS" => protocol.clone(),
                _ => "TCP".into(),
            });
        if p.get("HealthCheckEnabled") != Some("false") {
            let mut hc = default_check(check_protocol != "TCP");
            apply_health(p, &mut hc)?;
            pool["health_check"] = hc;
        }
        if protocol == "HTTPS" || protocol == "TLS" {
            pool["tls"] = json!({ "verify": false });
        }
        if matches!(p.get("ProtocolVersion"), Some("HTTP2" | "GRPC")) {
            pool["http_version"] = json!("http2");
        }
        let pool: PoolDoc = serde_json::from_value(pool)
            .map_err(|e| AwsError::bad("ValidationError", e.to_string()))?;
        let values = BTreeMap::from([
            ("port".to_owned(), port_n.to_string()),
            ("protocol".to_owned(), protocol.clone()),
            ("target_type".to_owned(), target_type.to_owned()),
        ]);
        self.call
            .change_noting(
                |doc| {
                    doc.pools.push(pool.clone());
                    Ok(())
                },
                vec![(tg_key(&name), values)],
            )
            .await?;
        self.put_tags(&format!("targetgroup/{name}"), p).await?;
        Ok(format!(
            "<TargetGroups>{}</TargetGroups>",
            self.tg_xml(&self.call.state().spec, &name)
        ))
    }

    fn tg_xml(&self, spec: &Spec, name: &str) -> String {
        let state = self.call.state();
        let meta = state.annotations.get(&tg_key(name));
        let get = |k: &str, d: &str| {
            meta.and_then(|m| m.get(k))
                .cloned()
                .unwrap_or_else(|| d.to_owned())
        };
        let pool = spec.pools.get(name);
        let hc = pool.and_then(|p| p.health_check.as_ref());
        let (hc_protocol, path, codes) = match hc.map(|h| &h.kind) {
            Some(keel_model::CheckKind::Http {
                path,
                expected_codes,
                ..
            }) => (
                get("protocol", "HTTP"),
                path.clone(),
                expected_codes.to_string(),
            ),
            _ => ("TCP".to_owned(), String::new(), String::new()),
        };
        let lbs: String = spec
            .load_balancers
            .values()
            .filter(|lb| uses(lb, name))
            .map(|lb| format!("<member>{}</member>", esc_arn(&self.lb_arn(&lb.name))))
            .collect();
        format!(
            "<member>{}{}{}{}{}{}{}{}{}{}{}{}<Matcher>{}</Matcher><LoadBalancerArns>{lbs}</LoadBalancerArns>{}{}</member>",
            el("TargetGroupArn", &self.tg_arn(name)),
            el("TargetGroupName", name),
            el("Protocol", &get("protocol", "HTTP")),
            el("Port", &get("port", "80")),
            el("VpcId", VPC),
            el("HealthCheckProtocol", &hc_protocol),
            el(
                "HealthCheckPort",
                &hc.and_then(|h| h.port)
                    .map_or("traffic-port".into(), |p| p.to_string())
            ),
            el("HealthCheckEnabled", if hc.is_some() { "true" } else { "false" }),
            el("HealthCheckIntervalSeconds", &hc.map_or(30, |h| h.interval.as_secs()).to_string()),
            el("HealthCheckTimeoutSeconds", &hc.map_or(5, |h| h.timeout.as_secs()).to_string()),
            el("HealthyThresholdCount", &hc.map_or(5, |h| h.healthy_threshold).to_string()),
            el("UnhealthyThresholdCount", &hc.map_or(2, |h| h.unhealthy_threshold).to_string()),
            el("HttpCode", &codes),
            el("HealthCheckPath", &path),
            el("TargetType", &get("target_type", "ip")),
        )
    }

    fn describe_target_groups(&self, p: &Params) -> Result<String, AwsError> {
        let state = self.call.state();
        let mut names: Vec<String> = p.list("Names");
        for arn in p.list("TargetGroupArns") {
            names.push(self.tg_of(&arn)?);
        }
        for n in &names {
            if !state.spec.pools.contains_key(n) {
                return Err(AwsError::bad(
                    "TargetGroupNotFound",
                    format!("One or more target groups not found: '{n}'"),
                ));
            }
        }
        let lb = match p.get("LoadBalancerArn") {
            Some(arn) => Some(self.lb_of(arn)?),
            None => None,
        };
        let members: Vec<(String, String)> = state
            .spec
            .pools
            .keys()
            .filter(|n| names.is_empty() || names.contains(n))
            .filter(|n| {
                lb.as_ref()
                    .is_none_or(|lb| uses(&state.spec.load_balancers[lb], n))
            })
            .map(|n| (n.clone(), self.tg_xml(&state.spec, n)))
            .collect();
        let (members, next) = page(members, p)?;
        Ok(format!("<TargetGroups>{members}</TargetGroups>{next}"))
    }

    async fn delete_target_group(&self, p: &Params) -> Result<String, AwsError> {
        let name = self.tg_of(p.need("TargetGroupArn")?)?;
        let used = self
            .call
            .state()
            .spec
            .load_balancers
            .values()
            .any(|lb| uses(lb, &name));
        if used {
            return Err(AwsError::bad(
                "ResourceInUse",
                format!(
                    "Target group '{}' is currently in use by a listener or a rule",
                    self.tg_arn(&name)
                ),
            ));
        }
        self.call
            .change(|doc| {
                doc.pools.retain(|p| p.name != name);
                Ok(())
            })
            .await?;
        self.call.annotate(&tg_key(&name), BTreeMap::new()).await?;
        self.call
            .annotate(&format!("tags/targetgroup/{name}"), BTreeMap::new())
            .await?;
        Ok(String::new())
    }

    /// The member addresses `Targets.member.N.{Id,Port}` name.
    fn target_addrs(&self, p: &Params, tg: &str) -> Result<Vec<String>, AwsError> {
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

    async fn targets(&self, p: &Params, register: bool) -> Result<String, AwsError> {
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

    async fn describe_target_health(&self, p: &Params) -> Result<String, AwsError> {
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

    // ---- Listeners and rules.

    /// A forward / weighted forward / redirect / fixed-response action as
    /// Keel rule fields (`pool`, `forward`, `redirect`, `fixed_response`).
    fn action(&self, a: &BTreeMap<String, String>) -> Result<Value, AwsError> {
        let kind = a.get("Type").map(String::as_str).unwrap_or("");
        match kind {
            "forward" => {
                let weighted: Vec<(String, String)> = (1..=5)
                    .filter_map(|n| {
                        let arn = a.get(&format!(
                            "ForwardConfig.TargetGroups.member.{n}.TargetGroupArn"
                        ))?;
                        let w = a
                            .get(&format!("ForwardConfig.TargetGroups.member.{n}.Weight"))
                            .cloned()
                            .unwrap_or_else(|| "1".into());
                        Some((arn.clone(), w))
                    })
                    .collect();
                if let Some(arn) = a.get("TargetGroupArn") {
                    return Ok(json!({ "pool": self.tg_of(arn)? }));
                }
                match weighted.len() {
                    0 => Err(AwsError::bad(
                        "ValidationError",
                        "a forward action needs TargetGroupArn or ForwardConfig",
                    )),
                    1 => Ok(json!({ "pool": self.tg_of(&weighted[0].0)? })),
                    _ => {
                        let mut list = Vec::new();
                        for (arn, w) in weighted {
                            list.push(json!({ "pool": self.tg_of(&arn)?, "weight": w.parse::<i64>().unwrap_or(-1) }));
                        }
                        Ok(json!({ "forward": list }))
                    }
                }
            }
            "redirect" => {
                let mut r = json!({});
                for (field, key) in [
                    ("scheme", "Protocol"),
                    ("host", "Host"),
                    ("port", "Port"),
                    ("path", "Path"),
                    ("query", "Query"),
                ] {
                    if let Some(v) = a.get(&format!("RedirectConfig.{key}")) {
                        // ELB spells protocol in capitals and templates as #{…}.
                        let v = if field == "scheme" && !v.contains("#{") {
                            v.to_ascii_lowercase()
                        } else {
                            v.clone()
                        };
                        r[field] = json!(v);
                    }
                }
                let status = a
                    .get("RedirectConfig.StatusCode")
                    .map(String::as_str)
                    .unwrap_or("HTTP_301");
                r["status"] = json!(status
                    .trim_start_matches("HTTP_")
                    .parse::<i64>()
                    .unwrap_or(0));
                Ok(json!({ "redirect": r }))
            }
            "fixed-response" => {
                let mut f = json!({
                    "status": a.get("FixedResponseConfig.StatusCode").and_then(|s| s.parse::<i64>().ok()).unwrap_or(0),
                });
                if let Some(t) = a.get("FixedResponseConfig.ContentType") {
                    f["content_type"] = json!(t);
                }
                if let Some(b) = a.get("FixedResponseConfig.MessageBody") {
                    f["body"] = json!(b);
                }
                Ok(json!({ "fixed_response": f }))
            }
            other => Err(AwsError::bad(
                "ValidationError",
                format!("action type {other:?} is not served (forward, redirect, fixed-response)"),
            )),
        }
    }

    async fn create_listener(&self, p: &Params) -> Result<String, AwsError> {
        let lb = self.lb_of(p.need("LoadBalancerArn")?)?;
        let port: i64 = p
            .need("Port")?
            .parse()
            .map_err(|_| AwsError::bad("ValidationError", "Port must be a number"))?;
        let protocol = p.get("Protocol").unwrap_or("HTTP").to_ascii_lowercase();
        let protocol = match protocol.as_str() {
            "http" | "https" | "tcp" | "tls" => protocol,
            other => {
                return Err(AwsError::bad(
                    "UnsupportedProtocol",
                    format!("listener protocol {other:?} is not served"),
                ))
            }
        };
        let actions = p.structs("DefaultActions");
        let Some(first) = actions.first() else {
            return Err(AwsError::bad(
                "ValidationError",
                "DefaultActions must not be empty",
            ));
        };
        let action = self.action(first)?;
        let Some(pool) = action
            .get("pool")
            .and_then(Value::as_str)
            .map(str::to_owned)
        else {
            return Err(AwsError::bad(
                "ValidationError",
                "the default action must forward to one target group",
            ));
        };
        let exists = self.call.state().spec.load_balancers[&lb]
            .listeners
            .iter()
            .any(|l| i64::from(l.port) == port);
        if exists {
            return Err(AwsError::bad(
                "DuplicateListener",
                format!("A listener already exists on port {port}"),
            ));
        }
        let mut listener = json!({
            "port": port,
            "protocol": protocol,
            "default_pool": pool,
        });
        let certificates = certificate_names(p);
        if !certificates.is_empty() {
            listener["certificates"] = json!(certificates);
        }
        let listener: ListenerDoc = serde_json::from_value(listener)
            .map_err(|e| AwsError::bad("ValidationError", e.to_string()))?;
        self.call
            .change(|doc| {
                if let Some(l) = doc.load_balancers.iter_mut().find(|l| l.name == lb) {
                    l.listeners.push(listener.clone());
                }
                Ok(())
            })
            .await?;
        Ok(format!(
            "<Listeners>{}</Listeners>",
            self.listener_xml(&lb, port)
        ))
    }

    fn listener_xml(&self, lb: &str, port: i64) -> String {
        let state = self.call.state();
        let l = state
            .spec
            .load_balancers
            .get(lb)
            .and_then(|l| l.listeners.iter().find(|x| i64::from(x.port) == port));
        let (protocol, action) = l.map_or(("HTTP".into(), default_action(None)), |l| {
            (
                l.protocol.as_str().to_ascii_uppercase(),
                default_action(l.default_pool.as_deref()),
            )
        });
        format!(
            "<member>{}{}{}{}<DefaultActions>{}</DefaultActions></member>",
            el("ListenerArn", &self.listener_arn(lb, port)),
            el("LoadBalancerArn", &self.lb_arn(lb)),
            el("Port", &port.to_string()),
            el("Protocol", &protocol),
            self.action_xml(&action),
        )
    }

    /// `ModifyListener`: protocol, default action, certificates and TLS
    /// policy. The port cannot change: the listener's ARN derives from it.
    async fn modify_listener(&self, p: &Params) -> Result<String, AwsError> {
        let (lb, port) = self.listener_of(p.need("ListenerArn")?)?;
        if p.get("Port")
            .is_some_and(|n| n.parse::<i64>().ok() != Some(port))
        {
            return Err(AwsError::bad(
                "ValidationError",
                "Port cannot change on Keel (a listener's ARN derives from its port): create a listener on the new port and delete this one",
            ));
        }
        let protocol = match p.get("Protocol").map(str::to_ascii_lowercase) {
            None => None,
            Some(x) if ["http", "https", "tcp", "tls"].contains(&x.as_str()) => Some(x),
            Some(other) => {
                return Err(AwsError::bad(
                    "UnsupportedProtocol",
                    format!("listener protocol {other:?} is not served"),
                ))
            }
        };
        let pool = match p.structs("DefaultActions").first() {
            None => None,
            Some(a) => Some(
                self.action(a)?
                    .get("pool")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .ok_or_else(|| {
                        AwsError::bad(
                            "ValidationError",
                            "the default action must forward to one target group",
                        )
                    })?,
            ),
        };
        let certificates = certificate_names(p);
        let policy = p.get("SslPolicy").map(|s| {
            if s.contains("TLS13-1-3") {
                "modern"
            } else {
                "compatible"
            }
        });
        self.call
            .change(|doc| {
                let l = listener_doc(doc, &lb, port)?;
                if let Some(x) = protocol.clone() {
                    l.protocol = x;
                }
                if pool.is_some() {
                    l.default_pool = pool.clone();
                }
                if !certificates.is_empty() {
                    l.certificates = certificates.clone();
                }
                if let Some(x) = policy {
                    l.tls_policy = Some(x.to_owned());
                }
                Ok(())
            })
            .await?;
        Ok(format!(
            "<Listeners>{}</Listeners>",
            self.listener_xml(&lb, port)
        ))
    }

    /// `ModifyTargetGroup`: the health check settings.
    async fn modify_target_group(&self, p: &Params) -> Result<String, AwsError> {
        let name = self.tg_of(p.need("TargetGroupArn")?)?;
        let state = self.call.state();
        let current = keel_model::Document::from_spec(&state.spec)
            .pools
            .into_iter()
            .find(|x| x.name == name)
            .and_then(|x| x.health_check)
            .map(|h| serde_json::to_value(h).unwrap_or_default());
        let asked = p.get("HealthCheckProtocol").is_some()
            || p.get("HealthCheckEnabled") == Some("true")
            || [
                "HealthCheckPort",
                "HealthCheckPath",
                "HealthCheckIntervalSeconds",
                "HealthCheckTimeoutSeconds",
                "HealthyThresholdCount",
                "UnhealthyThresholdCount",
                "Matcher.HttpCode",
            ]
            .iter()
            .any(|k| p.get(k).is_some());
        let check = match (p.get("HealthCheckEnabled"), current) {
            (Some("false"), _) => None,
            (_, None) if !asked => None,
            (_, current) => {
                let protocol = self
                    .call
                    .annotations(&tg_key(&name))
                    .get("protocol")
                    .cloned();
                let http = matches!(protocol.as_deref(), None | Some("HTTP" | "HTTPS"));
                let mut hc = current.unwrap_or_else(|| default_check(http));
                apply_health(p, &mut hc)?;
                Some(
                    serde_json::from_value(hc)
                        .map_err(|e| AwsError::bad("ValidationError", e.to_string()))?,
                )
            }
        };
        self.call
            .change(|doc| {
                if let Some(pool) = doc.pools.iter_mut().find(|x| x.name == name) {
                    pool.health_check = check.clone();
                }
                Ok(())
            })
            .await?;
        Ok(format!(
            "<TargetGroups>{}</TargetGroups>",
            self.tg_xml(&self.call.state().spec, &name)
        ))
    }

    fn describe_listeners(&self, p: &Params) -> Result<String, AwsError> {
        let mut found: Vec<(String, i64)> = Vec::new();
        if let Some(arn) = p.get("LoadBalancerArn") {
            let lb = self.lb_of(arn)?;
            for l in &self.call.state().spec.load_balancers[&lb].listeners {
                found.push((lb.clone(), i64::from(l.port)));
            }
        }
        for arn in p.list("ListenerArns") {
            found.push(self.listener_of(&arn)?);
        }
        let items = found
            .iter()
            .map(|(lb, port)| (format!("{lb}:{port:05}"), self.listener_xml(lb, *port)))
            .collect();
        let (out, next) = page(items, p)?;
        Ok(format!("<Listeners>{out}</Listeners>{next}"))
    }

    async fn delete_listener(&self, p: &Params) -> Result<String, AwsError> {
        let (lb, port) = self.listener_of(p.need("ListenerArn")?)?;
        self.call
            .change(|doc| {
                if let Some(l) = doc.load_balancers.iter_mut().find(|l| l.name == lb) {
                    l.listeners.retain(|x| x.port != port);
                }
                Ok(())
            })
            .await?;
        Ok(String::new())
    }

    /// ELB conditions (both encodings) as Keel rule condition fields.
    fn conditions(&self, conditions: &[BTreeMap<String, String>]) -> Result<Value, AwsError> {
        let mut out = json!({});
        let values = |c: &BTreeMap<String, String>, config: &str| -> Vec<String> {
            let mut v: Vec<(u32, String)> = c
                .iter()
                .filter_map(|(k, val)| {
                    let n = k
                        .strip_prefix(&format!("{config}.Values.member."))
                        .or_else(|| k.strip_prefix("Values.member."))?;
                    Some((n.parse().ok()?, val.clone()))
                })
                .collect();
            v.sort();
            v.into_iter().map(|(_, s)| s).collect()
        };
        for c in conditions {
            let field = c.get("Field").map(String::as_str).unwrap_or("");
            match field {
                "path-pattern" => out["path_glob"] = json!(values(c, "PathPatternConfig")),
                "host-header" => out["host"] = json!(values(c, "HostHeaderConfig")),
                "http-request-method" => {
                    out["method"] = json!(values(c, "HttpRequestMethodConfig"))
                }
                "source-ip" => out["source"] = json!(values(c, "SourceIpConfig")),
                "http-header" => {
                    let name = c
                        .get("HttpHeaderConfig.HttpHeaderName")
                        .cloned()
                        .unwrap_or_default();
                    out["header"] = json!({ name: values(c, "HttpHeaderConfig") });
                }
                "query-string" => {
                    let mut q = serde_json::Map::new();
                    for n in 1..=10 {
                        let Some(v) = c.get(&format!("QueryStringConfig.Values.member.{n}.Value"))
                        else {
                            continue;
                        };
                        let k = c
                            .get(&format!("QueryStringConfig.Values.member.{n}.Key"))
                            .cloned()
                            .unwrap_or_default();
                        q.insert(k, json!(v));
                    }
                    out["query"] = Value::Object(q);
                }
                other => {
                    return Err(AwsError::bad(
                        "ValidationError",
                        format!("condition field {other:?} is not served"),
                    ))
                }
            }
        }
        Ok(out)
    }

    async fn create_rule(&self, p: &Params) -> Result<String, AwsError> {
        let (lb, port) = self.listener_of(p.need("ListenerArn")?)?;
        let priority: i64 = p
            .need("Priority")?
            .parse()
            .map_err(|_| AwsError::bad("ValidationError", "Priority must be a number"))?;
        let listener = self.call.state().spec.load_balancers[&lb]
            .listeners
            .iter()
            .find(|l| i64::from(l.port) == port)
            .cloned();
        if listener
            .as_ref()
            .is_some_and(|l| l.rules.iter().any(|r| i64::from(r.priority) == priority))
        {
            return Err(AwsError::bad(
                "PriorityInUse",
                format!("Priority '{priority}' is currently in use"),
            ));
        }
        let mut rule = self.conditions(&p.structs("Conditions"))?;
        let Some(action) = p.structs("Actions").into_iter().next() else {
            return Err(AwsError::bad(
                "ValidationError",
                "Actions must not be empty",
            ));
        };
        let action = self.action(&action)?;
        rule["priority"] = json!(priority);
        if let (Some(r), Some(a)) = (rule.as_object_mut(), action.as_object()) {
            r.extend(a.clone());
        }
        let rule: RuleDoc = serde_json::from_value(rule)
            .map_err(|e| AwsError::bad("ValidationError", e.to_string()))?;
        self.call
            .change(|doc| {
                let l = doc
                    .load_balancers
                    .iter_mut()
                    .find(|l| l.name == lb)
                    .and_then(|l| l.listeners.iter_mut().find(|x| x.port == port));
                if let Some(l) = l {
                    l.rules.push(rule.clone());
                }
                Ok(())
            })
            .await?;
        Ok(format!(
            "<Rules>{}</Rules>",
            self.rule_xml(&lb, port, Some(priority))
        ))
    }

    /// A rule as ELBv2 describes it: the rule at `priority` on the
    /// listener, or (None) the listener's default rule.
    fn rule_xml(&self, lb: &str, port: i64, priority: Option<i64>) -> String {
        let state = self.call.state();
        let listener = state
            .spec
            .load_balancers
            .get(lb)
            .and_then(|l| l.listeners.iter().find(|x| i64::from(x.port) == port));
        let (arn, prio, default) = match priority {
            Some(n) => (self.rule_arn(lb, port, n), n.to_string(), "false"),
            None => (self.rule_arn(lb, port, 0), "default".to_owned(), "true"),
        };
        let (conditions, actions) = match (priority, listener) {
            (None, Some(l)) => (
                String::new(),
                self.action_xml(&default_action(l.default_pool.as_deref())),
            ),
            (Some(n), Some(l)) => l
                .rules
                .iter()
                .find(|r| i64::from(r.priority) == n)
                .map(|r| (conditions_xml(&r.conditions), self.action_xml(&r.action)))
                .unwrap_or_default(),
            (_, None) => Default::default(),
        };
        format!(
            "<member>{}{}{}<Conditions>{conditions}</Conditions><Actions>{actions}</Actions></member>",
            el("RuleArn", &arn),
            el("Priority", &prio),
            el("IsDefault", default),
        )
    }

    /// A Keel rule action in ELBv2's terms (one action, order 1).
    fn action_xml(&self, action: &Action) -> String {
        let body = match action {
            Action::Forward(pool) => format!(
                "{}{}<ForwardConfig><TargetGroups><member>{}{}</member></TargetGroups></ForwardConfig>",
                el("Type", "forward"),
                el("TargetGroupArn", &self.tg_arn(pool)),
                el("TargetGroupArn", &self.tg_arn(pool)),
                el("Weight", "1"),
            ),
            Action::Weighted(pools) => {
                let groups: String = pools
                    .iter()
                    .map(|w| {
                        format!(
                            "<member>{}{}</member>",
                            el("TargetGroupArn", &self.tg_arn(&w.pool)),
                            el("Weight", &w.weight.to_string())
                        )
                    })
                    .collect();
                format!(
                    "{}<ForwardConfig><TargetGroups>{groups}</TargetGroups></ForwardConfig>",
                    el("Type", "forward")
                )
            }
            Action::Redirect(r) => format!(
                "{}<RedirectConfig>{}{}{}{}{}{}</RedirectConfig>",
                el("Type", "redirect"),
                el(
                    "Protocol",
                    &r.scheme
                        .as_deref()
                        .map_or("#{protocol}".into(), str::to_ascii_uppercase)
                ),
                el("Port", r.port.as_deref().unwrap_or("#{port}")),
                el("Host", r.host.as_deref().unwrap_or("#{host}")),
                el("Path", r.path.as_deref().unwrap_or("/#{path}")),
                el("Query", r.query.as_deref().unwrap_or("#{query}")),
                el("StatusCode", &format!("HTTP_{}", r.status)),
            ),
            Action::Fixed(f) => format!(
                "{}<FixedResponseConfig>{}{}{}</FixedResponseConfig>",
                el("Type", "fixed-response"),
                el("StatusCode", &f.status.to_string()),
                el("ContentType", &f.content_type),
                el("MessageBody", &f.body),
            ),
        };
        format!("<member>{}{body}</member>", el("Order", "1"))
    }

    fn describe_rules(&self, p: &Params) -> Result<String, AwsError> {
        let mut items: Vec<(String, String)> = Vec::new();
        if let Some(arn) = p.get("ListenerArn") {
            let (lb, port) = self.listener_of(arn)?;
            let state = self.call.state();
            if let Some(l) = state.spec.load_balancers[&lb]
                .listeners
                .iter()
                .find(|l| i64::from(l.port) == port)
            {
                for r in &l.rules {
                    let n = i64::from(r.priority);
                    items.push((format!("{n:05}"), self.rule_xml(&lb, port, Some(n))));
                }
            }
            items.push(("99999".into(), self.rule_xml(&lb, port, None)));
            items.sort();
        }
        for (i, arn) in p.list("RuleArns").iter().enumerate() {
            let (lb, port, n) = self.rule_of(arn)?;
            items.push((format!("{i:05}"), self.rule_xml(&lb, port, Some(n))));
        }
        if items.is_empty() {
            return Err(AwsError::bad(
                "ValidationError",
                "ListenerArn or RuleArns is required",
            ));
        }
        let (out, next) = page(items, p)?;
        Ok(format!("<Rules>{out}</Rules>{next}"))
    }

    async fn delete_rule(&self, p: &Params) -> Result<String, AwsError> {
        let (lb, port, priority) = self.rule_of(p.need("RuleArn")?)?;
        let mut ids = self.call.annotations(&rules_key(&lb, port));
        ids.remove(&priority.to_string());
        self.call
            .change_noting(
                |doc| {
                    listener_doc(doc, &lb, port)?
                        .rules
                        .retain(|r| r.priority != priority);
                    Ok(())
                },
                vec![(rules_key(&lb, port), ids)],
            )
            .await?;
        Ok(String::new())
    }

    /// `ModifyRule`: new conditions and/or actions; the priority (and so
    /// the ARN) stays.
    async fn modify_rule(&self, p: &Params) -> Result<String, AwsError> {
        let (lb, port, priority) = self.rule_of(p.need("RuleArn")?)?;
        let conditions = p.structs("Conditions");
        let actions = p.structs("Actions");
        let mut rule = {
            let state = self.call.state();
            let doc = keel_model::Document::from_spec(&state.spec);
            let current = doc
                .load_balancers
                .iter()
                .find(|l| l.name == lb)
                .and_then(|l| l.listeners.iter().find(|x| x.port == port))
                .and_then(|l| l.rules.iter().find(|r| r.priority == priority))
                .cloned()
                .ok_or_else(|| AwsError::bad("RuleNotFound", "Rule not found"))?;
            serde_json::to_value(current).unwrap_or_default()
        };
        if let Value::Object(r) = &mut rule {
            let kind = |k: &str| {
                matches!(
                    k,
                    "host"
                        | "path"
                        | "path_prefix"
                        | "path_glob"
                        | "header"
                        | "method"
                        | "query"
                        | "source"
                )
            };
            if !conditions.is_empty() {
                r.retain(|k, _| !kind(k));
                if let Value::Object(c) = self.conditions(&conditions)? {
                    r.extend(c);
                }
            }
            if let Some(a) = actions.first() {
                r.retain(|k, _| kind(k) || k == "priority");
                if let Value::Object(a) = self.action(a)? {
                    r.extend(a);
                }
            }
        }
        let rule: RuleDoc = serde_json::from_value(rule)
            .map_err(|e| AwsError::bad("ValidationError", e.to_string()))?;
        self.call
            .change(|doc| {
                let l = listener_doc(doc, &lb, port)?;
                if let Some(r) = l.rules.iter_mut().find(|r| r.priority == priority) {
                    *r = rule.clone();
                }
                Ok(())
            })
            .await?;
        Ok(format!(
            "<Rules>{}</Rules>",
            self.rule_xml(&lb, port, Some(priority))
        ))
    }

    /// `SetRulePriorities`: rules move to new priorities and keep their
    /// ARNs; all on one listener, no two on one priority.
    async fn set_rule_priorities(&self, p: &Params) -> Result<String, AwsError> {
        let asked = p.structs("RulePriorities");
        if asked.is_empty() {
            return Err(AwsError::bad(
                "ValidationError",
                "RulePriorities must not be empty",
            ));
        }
        let mut moves: Vec<(i64, i64)> = Vec::new();
        let mut listener: Option<(String, i64)> = None;
        for m in &asked {
            let arn = m.get("RuleArn").map(String::as_str).unwrap_or_default();
            let (lb, port, from) = self.rule_of(arn)?;
            let to: i64 = m
                .get("Priority")
                .and_then(|t| t.parse().ok())
                .filter(|n| (1..=50_000).contains(n))
                .ok_or_else(|| AwsError::bad("ValidationError", "Priority must be 1-50000"))?;
            if listener.as_ref().is_some_and(|l| *l != (lb.clone(), port)) {
                return Err(AwsError::bad(
                    "ValidationError",
                    "all rules must be on one listener",
                ));
            }
            listener = Some((lb, port));
            moves.push((from, to));
        }
        let Some((lb, port)) = listener else {
            return Err(AwsError::bad(
                "ValidationError",
                "RulePriorities must not be empty",
            ));
        };
        let state = self.call.state();
        let current: Vec<i64> = state.spec.load_balancers[&lb]
            .listeners
            .iter()
            .find(|l| i64::from(l.port) == port)
            .map(|l| l.rules.iter().map(|r| i64::from(r.priority)).collect())
            .unwrap_or_default();
        let after = |n: i64| moves.iter().find(|(f, _)| *f == n).map_or(n, |(_, t)| *t);
        let mut taken = std::collections::BTreeSet::new();
        for n in &current {
            if !taken.insert(after(*n)) {
                return Err(AwsError::bad(
                    "PriorityInUse",
                    format!("Priority '{}' is currently in use", after(*n)),
                ));
            }
        }
        let ids: BTreeMap<String, String> = current
            .iter()
            .map(|n| (after(*n).to_string(), self.rule_id(&lb, port, *n)))
            .collect();
        self.call
            .change_noting(
                |doc| {
                    for r in &mut listener_doc(doc, &lb, port)?.rules {
                        r.priority = after(r.priority);
                    }
                    Ok(())
                },
                vec![(rules_key(&lb, port), ids)],
            )
            .await?;
        let rules: String = moves
            .iter()
            .map(|(_, to)| self.rule_xml(&lb, port, Some(*to)))
            .collect();
        Ok(format!("<Rules>{rules}</Rules>"))
    }

    /// `ip` or `instance` (target groups made elsewhere are `ip`).
    fn target_type(&self, tg: &str) -> String {
        self.call
            .state()
            .annotations
            .get(&tg_key(tg))
            .and_then(|m| m.get("target_type"))
            .cloned()
            .unwrap_or_else(|| "ip".into())
    }

    // ---- Target group attributes: the pool's own settings.

    fn tg_attributes_xml(&self, tg: &str) -> String {
        let state = self.call.state();
        let Some(pool) = state.spec.pools.get(tg) else {
            return "<Attributes/>".into();
        };
        let (enabled, kind, lb_secs, cookie, app_secs) = match &pool.stickiness {
            Some(Stickiness::LbCookie { duration }) => {
                (true, "lb_cookie", duration.as_secs(), String::new(), 86400)
            }
            Some(Stickiness::AppCookie { cookie, duration }) => (
                true,
                "app_cookie",
                86400,
                cookie.clone(),
                duration.as_secs(),
            ),
            None => (false, "lb_cookie", 86400, String::new(), 86400),
        };
        let algorithm = match pool.algorithm {
            Algorithm::LeastOutstanding => "least_outstanding_requests",
            _ => "round_robin",
        };
        let pairs = [
            (
                "deregistration_delay.timeout_seconds",
                pool.drain_timeout.as_secs().to_string(),
            ),
            ("stickiness.enabled", enabled.to_string()),
            ("stickiness.type", kind.to_owned()),
            ("stickiness.lb_cookie.duration_seconds", lb_secs.to_string()),
            ("stickiness.app_cookie.cookie_name", cookie),
            (
                "stickiness.app_cookie.duration_seconds",
                app_secs.to_string(),
            ),
            ("load_balancing.algorithm.type", algorithm.to_owned()),
        ];
        let members: String = pairs
            .iter()
            .map(|(k, v)| format!("<member>{}{}</member>", el("Key", k), el("Value", v)))
            .collect();
        format!("<Attributes>{members}</Attributes>")
    }

    fn describe_tg_attributes(&self, p: &Params) -> Result<String, AwsError> {
        let tg = self.tg_of(p.need("TargetGroupArn")?)?;
        Ok(self.tg_attributes_xml(&tg))
    }

    async fn modify_tg_attributes(&self, p: &Params) -> Result<String, AwsError> {
        let tg = self.tg_of(p.need("TargetGroupArn")?)?;
        let asked: BTreeMap<String, String> = p
            .structs("Attributes")
            .into_iter()
            .map(|a| {
                (
                    a.get("Key").cloned().unwrap_or_default(),
                    a.get("Value").cloned().unwrap_or_default(),
                )
            })
            .collect();
        if asked.is_empty() {
            return Err(AwsError::bad(
                "ValidationError",
                "Attributes must not be empty",
            ));
        }
        let invalid = |key: &str, why: &str| {
            AwsError::bad("InvalidConfigurationRequest", format!("{key}: {why}"))
        };
        let seconds =
            |key: &str, range: std::ops::RangeInclusive<u64>| -> Result<Option<u64>, AwsError> {
                asked
                    .get(key)
                    .map(|v| {
                        v.parse::<u64>()
                            .ok()
                            .filter(|n| range.contains(n))
                            .ok_or_else(|| {
                                invalid(
                                    key,
                                    &format!("{v:?} is not {}-{}", range.start(), range.end()),
                                )
                            })
                    })
                    .transpose()
            };
        for key in asked.keys() {
            let served = key == "deregistration_delay.timeout_seconds"
                || key == "load_balancing.algorithm.type"
                || key.starts_with("stickiness.");
            if !served {
                return Err(invalid(key, "is not an attribute Keel serves"));
            }
        }
        let delay = seconds("deregistration_delay.timeout_seconds", 0..=3600)?;
        let lb_secs = seconds("stickiness.lb_cookie.duration_seconds", 1..=604_800)?;
        let app_secs = seconds("stickiness.app_cookie.duration_seconds", 1..=604_800)?;
        let enabled = match asked.get("stickiness.enabled").map(String::as_str) {
            None => None,
            Some("true") => Some(true),
            Some("false") => Some(false),
            Some(other) => {
                return Err(invalid(
                    "stickiness.enabled",
                    &format!("{other:?} is not true or false"),
                ))
            }
        };
        let algorithm = match asked
            .get("load_balancing.algorithm.type")
            .map(String::as_str)
        {
            None => None,
            Some("round_robin") => Some("round_robin"),
            Some("least_outstanding_requests") => Some("least_outstanding"),
            Some(other) => {
                return Err(invalid(
                    "load_balancing.algorithm.type",
                    &format!("{other:?} is not round_robin or least_outstanding_requests"),
                ))
            }
        };
        let current = self.call.state().spec.pools[&tg].stickiness.clone();
        let kind = asked
            .get("stickiness.type")
            .map(String::as_str)
            .unwrap_or(match current {
                Some(Stickiness::AppCookie { .. }) => "app_cookie",
                _ => "lb_cookie",
            });
        let cookie = asked
            .get("stickiness.app_cookie.cookie_name")
            .cloned()
            .or(match &current {
                Some(Stickiness::AppCookie { cookie, .. }) => Some(cookie.clone()),
                _ => None,
            });
        let on = enabled.unwrap_or(current.is_some());
        let stickiness = match (on, kind) {
            (false, _) => None,
            (true, "lb_cookie") => Some(keel_model::StickinessDoc {
                kind: "lb_cookie".into(),
                duration: lb_secs.map(|s| keel_model::DurationDoc::Seconds(s as f64)),
                cookie: None,
            }),
            (true, "app_cookie") => Some(keel_model::StickinessDoc {
                kind: "app_cookie".into(),
                duration: app_secs.map(|s| keel_model::DurationDoc::Seconds(s as f64)),
                cookie: Some(cookie.ok_or_else(|| {
                    invalid(
                        "stickiness.app_cookie.cookie_name",
                        "is required for app_cookie stickiness",
                    )
                })?),
            }),
            (true, other) => {
                return Err(invalid(
                    "stickiness.type",
                    &format!("{other:?} is not lb_cookie or app_cookie"),
                ))
            }
        };
        let touches_stickiness = asked.keys().any(|k| k.starts_with("stickiness."));
        self.call
            .change(|doc| {
                if let Some(pool) = doc.pools.iter_mut().find(|x| x.name == tg) {
                    if let Some(d) = delay {
                        // Keel always lets requests under way finish; 0 is a second.
                        pool.drain_timeout =
                            Some(keel_model::DurationDoc::Seconds(d.max(1) as f64));
                    }
                    if touches_stickiness {
                        pool.stickiness = stickiness.clone();
                    }
                    if let Some(a) = algorithm {
                        pool.algorithm = Some(a.to_owned());
                    }
                }
                Ok(())
            })
            .await?;
        Ok(self.tg_attributes_xml(&tg))
    }

    // ---- Tags (kept as annotations `tags/KIND/NAME`).

    fn object_of(&self, arn: &str) -> Result<String, AwsError> {
        if arn.contains(":loadbalancer/") {
            Ok(format!("loadbalancer/{}", self.lb_of(arn)?))
        } else if arn.contains(":targetgroup/") {
            Ok(format!("targetgroup/{}", self.tg_of(arn)?))
        } else {
            Err(AwsError::bad(
                "ValidationError",
                format!("cannot tag {arn:?}"),
            ))
        }
    }

    async fn put_tags(&self, object: &str, p: &Params) -> Result<(), AwsError> {
        self.call.add_tags(&format!("tags/{object}"), p).await
    }

    async fn add_tags(&self, p: &Params) -> Result<String, AwsError> {
        for arn in p.list("ResourceArns") {
            let object = self.object_of(&arn)?;
            self.put_tags(&object, p).await?;
        }
        Ok(String::new())
    }

    fn describe_tags(&self, p: &Params) -> Result<String, AwsError> {
        let state = self.call.state();
        let mut out = String::new();
        for arn in p.list("ResourceArns") {
            let object = self.object_of(&arn)?;
            let tags: String = state
                .annotations
                .get(&format!("tags/{object}"))
                .into_iter()
                .flatten()
                .map(|(k, v)| format!("<member>{}{}</member>", el("Key", k), el("Value", v)))
                .collect();
            out.push_str(&format!(
                "<member>{}<Tags>{tags}</Tags></member>",
                el("ResourceArn", &arn)
            ));
        }
        Ok(format!("<TagDescriptions>{out}</TagDescriptions>"))
    }
}

/// Whether any listener of `lb` sends traffic to `pool`.
/// When the replicated history (the last changes people and tools made)
/// first upserted load balancer `name`.
fn first_mention(state: &keel_model::ClusterState, name: &str) -> Option<u64> {
    let line = format!("upsert load balancer {name}");
    state
        .history
        .iter()
        .find(|h| h.what.contains(&line))
        .map(|h| h.at)
}

fn uses(lb: &keel_model::LoadBalancer, pool: &str) -> bool {
    lb.listeners.iter().any(|l| {
        l.default_pool.as_deref() == Some(pool) || l.rules.iter().any(|r| r.pools().contains(&pool))
    })
}

/// A listener's default action: forward to its default pool, or (a Keel
/// listener without one) the 503 it answers.
fn default_action(pool: Option<&str>) -> Action {
    match pool {
        Some(p) => Action::Forward(p.to_owned()),
        None => Action::Fixed(keel_model::FixedResponse {
            status: 503,
            content_type: "text/plain".into(),
            body: String::new(),
        }),
    }
}

/// ELBv2's default health check (interval 30 s, timeout 5 s, 5 up, 2 down;
/// HTTP ones `GET /` expecting 200).
fn default_check(http: bool) -> Value {
    let mut hc = json!({
        "type": if http { "http" } else { "tcp" },
        "interval": "30s",
        "timeout": "5s",
        "healthy_threshold": 5,
        "unhealthy_threshold": 2,
    });
    if http {
        hc["path"] = json!("/");
        hc["expected_codes"] = json!("200");
    }
    hc
}

/// Applies the `HealthCheck*` parameters present in `p` to `hc` (a Keel
/// health-check document); `HealthCheckProtocol` switches its kind.
fn apply_health(p: &Params, hc: &mut Value) -> Result<(), AwsError> {
    if let Some(protocol) = p.get("HealthCheckProtocol") {
        let http = !protocol.eq_ignore_ascii_case("TCP");
        let defaults = default_check(http);
        hc["type"] = defaults["type"].clone();
        if let Value::Object(m) = hc {
            for key in ["path", "expected_codes"] {
                match defaults.get(key) {
                    Some(d) => {
                        m.entry(key).or_insert_with(|| d.clone());
                    }
                    None => {
                        m.remove(key);
                    }
                }
            }
            if !http {
                m.remove("method");
                m.remove("host");
            }
        }
    }
    let number = |key: &str| -> Result<Option<i64>, AwsError> {
        p.get(key)
            .map(|t| {
                t.parse::<i64>().map_err(|_| {
                    AwsError::bad("ValidationError", format!("{key} must be a number"))
                })
            })
            .transpose()
    };
    for (param, key, seconds) in [
        ("HealthCheckIntervalSeconds", "interval", true),
        ("HealthCheckTimeoutSeconds", "timeout", true),
        ("HealthyThresholdCount", "healthy_threshold", false),
        ("UnhealthyThresholdCount", "unhealthy_threshold", false),
    ] {
        if let Some(n) = number(param)? {
            hc[key] = if seconds {
                json!(format!("{n}s"))
            } else {
                json!(n)
            };
        }
    }
    match p.get("HealthCheckPort") {
        None => {}
        Some("traffic-port") => {
            if let Value::Object(m) = hc {
                m.remove("port");
            }
        }
        Some(_) => {
            hc["port"] = json!(number("HealthCheckPort").map_err(|_| {
                AwsError::bad(
                    "ValidationError",
                    "HealthCheckPort must be traffic-port or 1-65535",
                )
            })?);
        }
    }
    if hc["type"] == "http" {
        for (param, key) in [
            ("HealthCheckPath", "path"),
            ("Matcher.HttpCode", "expected_codes"),
        ] {
            if let Some(v) = p.get(param) {
                hc[key] = json!(v);
            }
        }
    }
    Ok(())
}

/// Keel certificate names from `Certificates.member.N.CertificateArn`
/// (the part after the last `/` of an ARN).
fn certificate_names(p: &Params) -> Vec<String> {
    p.structs("Certificates")
        .iter()
        .filter_map(|c| c.get("CertificateArn"))
        .map(|arn| arn.rsplit('/').next().unwrap_or(arn).to_owned())
        .collect()
}

/// The annotation that keeps the IDs of a listener's moved rules.
fn rules_key(lb: &str, port: i64) -> String {
    format!("rules/{lb}/{port}")
}

/// The listener on `lb`'s `port` in a document being edited.
fn listener_doc<'a>(
    doc: &'a mut keel_model::Document,
    lb: &str,
    port: i64,
) -> Result<&'a mut ListenerDoc, AwsError> {
    doc.load_balancers
        .iter_mut()
        .find(|l| l.name == lb)
        .and_then(|l| l.listeners.iter_mut().find(|x| x.port == port))
        .ok_or_else(|| AwsError::bad("ListenerNotFound", "Listener not found"))
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

/// Keel rule conditions as ELBv2 conditions, in both encodings (the legacy
/// `Values` and the `*Config` one) where ELBv2 has both.
fn conditions_xml(c: &Conditions) -> String {
    let mut out = String::new();
    let mut both = |field: &str, config: &str, values: Vec<String>| {
        if values.is_empty() {
            return;
        }
        let list = members(values);
        out.push_str(&format!(
            "<member>{}<Values>{list}</Values><{config}><Values>{list}</Values></{config}></member>",
            el("Field", field)
        ));
    };
    both(
        "path-pattern",
        "PathPatternConfig",
        c.paths.iter().map(|p| p.text().to_owned()).collect(),
    );
    both("host-header", "HostHeaderConfig", c.hosts.clone());
    let mut only_config = |field: &str, config: &str, inner: String| {
        out.push_str(&format!(
            "<member>{}<{config}>{inner}</{config}></member>",
            el("Field", field)
        ));
    };
    for h in &c.headers {
        only_config(
            "http-header",
            "HttpHeaderConfig",
            format!(
                "{}<Values>{}</Values>",
                el("HttpHeaderName", &h.name),
                members(h.values.clone())
            ),
        );
    }
    if !c.methods.is_empty() {
        only_config(
            "http-request-method",
            "HttpRequestMethodConfig",
            format!("<Values>{}</Values>", members(c.methods.clone())),
        );
    }
    if !c.query.is_empty() {
        let pairs: String = c
            .query
            .iter()
            .flat_map(|q| {
                q.values.iter().map(move |v| {
                    format!("<member>{}{}</member>", el("Key", &q.key), el("Value", v))
                })
            })
            .collect();
        only_config(
            "query-string",
            "QueryStringConfig",
            format!("<Values>{pairs}</Values>"),
        );
    }
    if !c.sources.is_empty() {
        only_config(
            "source-ip",
            "SourceIpConfig",
            format!(
                "<Values>{}</Values>",
                members(c.sources.iter().map(|s| s.to_string()))
            ),
        );
    }
    out
}
