//! ELBv2 listeners: create, describe, modify, delete, and their actions.

use std::collections::BTreeMap;

use keel_model::{Action, ListenerDoc};
use keel_web_core::ControlPlane;
use serde_json::{json, Value};

use super::{page, Elbv2};
use crate::{el, AwsError, Params};

impl<C: ControlPlane> Elbv2<'_, C> {
    /// A forward / weighted forward / redirect / fixed-response action as
    /// Keel rule fields (`pool`, `forward`, `redirect`, `fixed_response`).
    pub(super) fn action(&self, a: &BTreeMap<String, String>) -> Result<Value, AwsError> {
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

    pub(super) async fn create_listener(&self, p: &Params) -> Result<String, AwsError> {
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

    pub(super) fn listener_xml(&self, lb: &str, port: i64) -> String {
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
    pub(super) async fn modify_listener(&self, p: &Params) -> Result<String, AwsError> {
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

    pub(super) fn describe_listeners(&self, p: &Params) -> Result<String, AwsError> {
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

    pub(super) async fn delete_listener(&self, p: &Params) -> Result<String, AwsError> {
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

    /// A Keel rule action in ELBv2's terms (one action, order 1).
    pub(super) fn action_xml(&self, action: &Action) -> String {
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
}

/// A listener's default action: forward to its default pool, or (a Keel
/// listener without one) the 503 it answers.
pub(super) fn default_action(pool: Option<&str>) -> Action {
    match pool {
        Some(p) => Action::Forward(p.to_owned()),
        None => Action::Fixed(keel_model::FixedResponse {
            status: 503,
            content_type: "text/plain".into(),
            body: String::new(),
        }),
    }
}

/// Keel certificate names from `Certificates.member.N.CertificateArn`
/// (the part after the last `/` of an ARN).
pub(super) fn certificate_names(p: &Params) -> Vec<String> {
    p.structs("Certificates")
        .iter()
        .filter_map(|c| c.get("CertificateArn"))
        .map(|arn| arn.rsplit('/').next().unwrap_or(arn).to_owned())
        .collect()
}

/// The listener on `lb`'s `port` in a document being edited.
pub(super) fn listener_doc<'a>(
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
