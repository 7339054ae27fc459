//! ELBv2 tags on load balancers and target groups.

use keel_web_core::ControlPlane;

use super::Elbv2;
use crate::{AwsError, Params};

impl<C: ControlPlane> Elbv2<'_, C> {
    /// What the object an ARN names keeps its tags under.
    pub(super) fn object_of(&self, arn: &str) -> Result<String, AwsError> {
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

    pub(super) async fn add_tags(&self, p: &Params) -> Result<String, AwsError> {
        for arn in p.list("ResourceArns") {
            self.call.add_tags(&self.object_of(&arn)?, p).await?;
        }
        Ok(String::new())
    }

    /// ELBv2 names the tags to remove as `TagKeys.member.N`.
    pub(super) async fn remove_tags(&self, p: &Params) -> Result<String, AwsError> {
        let keys = p.list("TagKeys");
        for arn in p.list("ResourceArns") {
            self.call.remove_tags(&self.object_of(&arn)?, &keys).await?;
        }
        Ok(String::new())
    }

    pub(super) fn describe_tags(&self, p: &Params) -> Result<String, AwsError> {
        let tagged = p
            .list("ResourceArns")
            .into_iter()
            .map(|arn| Ok(("ResourceArn", arn.clone(), self.object_of(&arn)?)))
            .collect::<Result<Vec<_>, AwsError>>()?;
        Ok(self.call.describe_tags(&tagged))
    }
}
