//! ELBv2 target groups (Keel pools): create, describe, modify, delete, their
//! health checks and attributes.

use std::collections::BTreeMap;

use keel_model::{Algorithm, PoolDoc, Spec, Stickiness};
use keel_web_core::ControlPlane;
use serde_json::{json, Value};

use super::{esc_arn, page, tg_key, Elbv2, VPC};
use crate::{el, AwsError, Params};

impl<C: ControlPlane> Elbv2<'_, C> {
    pub(super) async fn create_target_group(&self, p: &Params) -> Result<String, AwsError> {
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
        let mut notes = self.call.tag_notes(&format!("targetgroup/{name}"), p)?;
        notes.push((tg_key(&name), values));
        self.call
            .change_noting(
                |doc| {
                    doc.pools.push(pool.clone());
                    Ok(())
                },
                notes,
            )
            .await?;
        Ok(format!(
            "<TargetGroups>{}</TargetGroups>",
            self.tg_xml(&self.call.state().spec, &name)
        ))
    }

    pub(super) fn tg_xml(&self, spec: &Spec, name: &str) -> String {
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

    pub(super) fn describe_target_groups(&self, p: &Params) -> Result<String, AwsError> {
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

    pub(super) async fn delete_target_group(&self, p: &Params) -> Result<String, AwsError> {
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

    /// `ModifyTargetGroup`: the health check settings.
    pub(super) async fn modify_target_group(&self, p: &Params) -> Result<String, AwsError> {
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

    /// `ip` or `instance` (target groups made elsewhere are `ip`).
    pub(super) fn target_type(&self, tg: &str) -> String {
        self.call
            .state()
            .annotations
            .get(&tg_key(tg))
            .and_then(|m| m.get("target_type"))
            .cloned()
            .unwrap_or_else(|| "ip".into())
    }

    pub(super) fn tg_attributes_xml(&self, tg: &str) -> String {
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

    pub(super) fn describe_tg_attributes(&self, p: &Params) -> Result<String, AwsError> {
        let tg = self.tg_of(p.need("TargetGroupArn")?)?;
        Ok(self.tg_attributes_xml(&tg))
    }

    pub(super) async fn modify_tg_attributes(&self, p: &Params) -> Result<String, AwsError> {
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
}

/// Whether any listener of `lb` sends traffic to `pool`.
pub(super) fn uses(lb: &keel_model::LoadBalancer, pool: &str) -> bool {
    lb.listeners.iter().any(|l| {
        l.default_pool.as_deref() == Some(pool) || l.rules.iter().any(|r| r.pools().contains(&pool))
    })
}

/// ELBv2's default health check (interval 30 s, timeout 5 s, 5 up, 2 down;
/// HTTP ones `GET /` expecting 200).
pub(super) fn default_check(http: bool) -> Value {
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
pub(super) fn apply_health(p: &Params, hc: &mut Value) -> Result<(), AwsError> {
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
