//! Tags, which both ELB APIs keep the same way: as the annotation
//! `tags/KIND/NAME` of the object tagged (`loadbalancer/NAME`,
//! `targetgroup/NAME`), which goes with it.

use keel_compat::Notes;
use keel_web_core::ControlPlane;

use crate::{el, AwsError, Call, Params};

fn key(object: &str) -> String {
    format!("tags/{object}")
}

impl<C: ControlPlane> Call<'_, C> {
    /// Adds the tags `Tags.member.N.{Key,Value}` to `object`'s; a tag
    /// without a `Key` is refused and none is added.
    pub async fn add_tags(&self, object: &str, p: &Params) -> Result<(), AwsError> {
        for (key, values) in self.tag_notes(object, p)? {
            self.annotate(&key, values).await?;
        }
        Ok(())
    }

    /// The note that adds the tags `Tags.member.N.{Key,Value}` to
    /// `object`'s (none without tags), to commit with the change that
    /// makes it; a tag without a `Key` is refused.
    pub fn tag_notes(&self, object: &str, p: &Params) -> Result<Notes, AwsError> {
        let tags = p.structs("Tags");
        if tags
            .iter()
            .any(|t| t.get("Key").is_none_or(|k| k.is_empty()))
        {
            return Err(AwsError::bad("ValidationError", "every tag needs a Key"));
        }
        if tags.is_empty() {
            return Ok(Notes::new());
        }
        let mut values = self.annotations(&key(object));
        for t in tags {
            if let Some(k) = t.get("Key") {
                values.insert(k.clone(), t.get("Value").cloned().unwrap_or_default());
            }
        }
        Ok(vec![(key(object), values)])
    }

    /// Removes the tags named `keys` from `object`'s.
    pub async fn remove_tags(&self, object: &str, keys: &[String]) -> Result<(), AwsError> {
        let mut values = self.annotations(&key(object));
        for k in keys {
            values.remove(k);
        }
        self.annotate(&key(object), values).await
    }

    /// `<TagDescriptions>` of `tagged`: (the element naming an object,
    /// `LoadBalancerName` or `ResourceArn`; its value; the object).
    pub fn describe_tags(&self, tagged: &[(&str, String, String)]) -> String {
        let state = self.state();
        let mut out = String::new();
        for (field, id, object) in tagged {
            let tags: String = state
                .annotations
                .get(&key(object))
                .into_iter()
                .flatten()
                .map(|(k, v)| format!("<member>{}{}</member>", el("Key", k), el("Value", v)))
                .collect();
            out.push_str(&format!(
                "<member>{}<Tags>{tags}</Tags></member>",
                el(field, id)
            ));
        }
        format!("<TagDescriptions>{out}</TagDescriptions>")
    }
}
