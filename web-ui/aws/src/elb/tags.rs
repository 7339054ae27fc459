//! Classic load balancer tags (kept as ELBv2 keeps them, `crate::tags`).

use keel_web_core::ControlPlane;

use super::{validation, Elb};
use crate::{AwsError, Params};

impl<C: ControlPlane> Elb<'_, C> {
    /// What a load balancer's tags are kept under.
    pub(super) fn tag_object(name: &str) -> String {
        format!("loadbalancer/{name}")
    }

    /// The load balancers `LoadBalancerNames.member.N`, each of which must
    /// exist.
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

    pub(super) async fn add_tags(&self, p: &Params) -> Result<String, AwsError> {
        for name in self.tagged(p)? {
            self.call.add_tags(&Self::tag_object(&name), p).await?;
        }
        Ok(String::new())
    }

    /// Classic ELB names the tags to remove as `Tags.member.N.Key`.
    pub(super) async fn remove_tags(&self, p: &Params) -> Result<String, AwsError> {
        let keys: Vec<String> = p
            .structs("Tags")
            .into_iter()
            .filter_map(|t| t.get("Key").cloned())
            .collect();
        for name in self.tagged(p)? {
            self.call
                .remove_tags(&Self::tag_object(&name), &keys)
                .await?;
        }
        Ok(String::new())
    }

    pub(super) fn describe_tags(&self, p: &Params) -> Result<String, AwsError> {
        let tagged: Vec<_> = self
            .tagged(p)?
            .into_iter()
            .map(|name| ("LoadBalancerName", name.clone(), Self::tag_object(&name)))
            .collect();
        Ok(self.call.describe_tags(&tagged))
    }
}
