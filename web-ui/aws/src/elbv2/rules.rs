//! ELBv2 listener rules: create, describe, modify, reorder, delete.

use std::collections::BTreeMap;

use keel_model::{Conditions, RuleDoc};
use keel_web_core::ControlPlane;
use serde_json::{json, Value};

use super::listeners::{default_action, listener_doc};
use super::{members, page, Elbv2};
use crate::{el, AwsError, Params};

impl<C: ControlPlane> Elbv2<'_, C> {
    /// ELB conditions (both encodings) as Keel rule condition fields.
    pub(super) fn conditions(
        &self,
        conditions: &[BTreeMap<String, String>],
    ) -> Result<Value, AwsError> {
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

    pub(super) async fn create_rule(&self, p: &Params) -> Result<String, AwsError> {
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
    pub(super) fn rule_xml(&self, lb: &str, port: i64, priority: Option<i64>) -> String {
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

    pub(super) fn describe_rules(&self, p: &Params) -> Result<String, AwsError> {
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

    pub(super) async fn delete_rule(&self, p: &Params) -> Result<String, AwsError> {
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
    pub(super) async fn modify_rule(&self, p: &Params) -> Result<String, AwsError> {
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
    pub(super) async fn set_rule_priorities(&self, p: &Params) -> Result<String, AwsError> {
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
}

/// The annotation that keeps the IDs of a listener's moved rules.
pub(super) fn rules_key(lb: &str, port: i64) -> String {
    format!("rules/{lb}/{port}")
}

/// Keel rule conditions as ELBv2 conditions, in both encodings (the legacy
/// `Values` and the `*Config` one) where ELBv2 has both.
pub(super) fn conditions_xml(c: &Conditions) -> String {
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
