//! Classic load balancer attributes (connection draining, idle timeout,
//! cross-zone, access log).

use keel_model::DurationDoc;
use keel_web_core::ControlPlane;

use super::listeners::listeners;
use super::{invalid_request, lb_mut, pool_mut, seconds, validation, Elb, Record};
use crate::{el, AwsError, Params};

impl<C: ControlPlane> Elb<'_, C> {
    pub(super) fn attributes_xml(&self, name: &str, record: &Record) -> String {
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

    pub(super) fn describe_attributes(&self, p: &Params) -> Result<String, AwsError> {
        let name = p.need("LoadBalancerName")?;
        let record = self.existing(name)?;
        Ok(self.attributes_xml(name, &record))
    }

    pub(super) async fn modify_attributes(&self, p: &Params) -> Result<String, AwsError> {
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
}
