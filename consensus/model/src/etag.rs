//! Entity tags for optimistic concurrency: a short fingerprint of an
//! object's stored form that changes whenever the object does. The admin
//! API sends it as `ETag`; a write with `If-Match` commits only while it
//! still matches ([`crate::ClusterCommand::Expect`], checked by the state
//! machine, so no concurrent change slips between the check and the write).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::spec::Spec;

/// What an entity tag is of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "name")]
pub enum Object {
    /// The whole config.
    Config,
    /// A load balancer, by name.
    LoadBalancer(String),
    /// A pool, by name.
    Pool(String),
    /// A certificate, by name.
    Certificate(String),
}

impl fmt::Display for Object {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Object::Config => f.write_str("the config"),
            Object::LoadBalancer(name) => write!(f, "load balancer {name:?}"),
            Object::Pool(name) => write!(f, "pool {name:?}"),
            Object::Certificate(name) => write!(f, "certificate {name:?}"),
        }
    }
}

impl Spec {
    /// The entity tag of `object` as it is now; `None` when it does not
    /// exist.
    pub fn etag(&self, object: &Object) -> Option<String> {
        match object {
            Object::Config => Some(fingerprint(self)),
            Object::LoadBalancer(name) => self.load_balancers.get(name).map(fingerprint),
            Object::Pool(name) => self.pools.get(name).map(fingerprint),
            Object::Certificate(name) => self.certificates.get(name).map(fingerprint),
        }
    }
}

/// FNV-1a (64 bits) of the value's JSON form, as 16 hex digits. Not a
/// cryptographic hash: it only has to change when the value does (the
/// maps are ordered, so the same value always gives the same bytes).
fn fingerprint(value: &impl Serialize) -> String {
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{hash:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Document;

    fn spec(weight: u32) -> Spec {
        Document::parse_spec(&format!(
            "load_balancers: []\npools:\n  - name: app\n    members: [ {{ address: \"10.0.0.1:80\", weight: {weight} }} ]\n"
        ))
        .unwrap()
    }

    #[test]
    fn a_tag_changes_with_its_object_only() {
        let (a, b) = (spec(1), spec(2));
        let pool = Object::Pool("app".into());
        assert_eq!(a.etag(&pool), spec(1).etag(&pool));
        assert_ne!(a.etag(&pool), b.etag(&pool));
        assert_ne!(a.etag(&Object::Config), b.etag(&Object::Config));
        assert_eq!(a.etag(&Object::Pool("nope".into())), None);
        assert_eq!(a.etag(&pool).map(|t| t.len()), Some(16));
        assert_eq!(pool.to_string(), "pool \"app\"");
    }
}
