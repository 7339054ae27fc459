//! A classic load balancer's health check (every listener pool's).

use keel_model::{ClusterState, DurationDoc, HealthCheckDoc, Scalar};
use keel_web_core::ControlPlane;

use super::listeners::listeners;
use super::{pool_mut, validation, Elb, Record};
use crate::{AwsError, Params};

impl<C: ControlPlane> Elb<'_, C> {
    pub(super) async fn configure_health_check(&self, p: &Params) -> Result<String, AwsError> {
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
}

/// ELB's defaults for a new load balancer's health check.
pub(super) const DEFAULT_CHECK: Check = Check {
    interval: 30,
    timeout: 5,
    unhealthy: 2,
    healthy: 10,
};

/// A health check's numbers, in seconds and counts.
#[derive(Clone, Copy)]
pub(super) struct Check {
    pub(super) interval: u64,
    pub(super) timeout: u64,
    pub(super) unhealthy: u32,
    pub(super) healthy: u32,
}

/// The numbers of the health check `lb`'s pools share (the first pool's).
pub(super) fn current_check(state: &ClusterState, lb: &str, record: &Record) -> Check {
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

/// A parsed health check target: `HTTP:80/path`, `TCP:5000`.
pub(super) struct Target {
    pub(super) protocol: String,
    pub(super) port: u16,
    pub(super) path: Option<String>,
}

pub(super) fn parse_target(text: &str) -> Result<Target, AwsError> {
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
pub(super) fn check_doc(target: &Target, check: Check, instance_port: u16) -> HealthCheckDoc {
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
