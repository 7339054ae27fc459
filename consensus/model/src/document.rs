//! The config document as users write it (YAML or JSON), and its conversion
//! into a [`Spec`] that reports every problem at once.
//!
//! Fields that users commonly get wrong are read loosely (numbers as `i64`,
//! durations and enums as text) so one mistake does not hide the next: the
//! conversion, not the parser, names them all.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{FieldError, Path, Segment, ValidationErrors};
use crate::rules::{
    Action, Cidr, Conditions, FixedResponse, HeaderMatch, PathMatch, QueryMatch, Redirect, Rule,
    WeightedPool,
};
use crate::spec::{
    Algorithm, Certificate, CheckKind, HashOn, HealthCheck, HttpVersion, Listener, LoadBalancer,
    Member, MemberTls, Pool, Protocol, ProxyProtocol, RateLimit, Spec, StatusRanges, Stickiness,
    TlsPolicy, Vip,
};

/// Defaults applied to fields a document leaves out.
pub mod defaults {
    use std::time::Duration;
    pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
    pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
    /// HTTP: how long a request body may pause, or a response go unread.
    pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);
    pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
    pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
    pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
    pub const CHECK_INTERVAL: Duration = Duration::from_secs(2);
    pub const CHECK_TIMEOUT: Duration = Duration::from_secs(1);
    pub const HEALTHY_THRESHOLD: u32 = 2;
    pub const UNHEALTHY_THRESHOLD: u32 = 3;
    pub const WEIGHT: u32 = 1;
    /// How long a sticky session lasts (default: one day).
    pub const STICKINESS: Duration = Duration::from_secs(24 * 3600);
}

/// Why a document could not be turned into a [`Spec`].
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// The text is not well-formed YAML/JSON of the expected shape.
    #[error("{0}")]
    Syntax(String),
    /// The document is well-formed but breaks the rules listed.
    #[error(transparent)]
    Invalid(#[from] ValidationErrors),
}

/// A whole config document.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Document {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub load_balancers: Vec<LoadBalancerDoc>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pools: Vec<PoolDoc>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certificates: Vec<CertificateDoc>,
}

/// A certificate as written. `key_pem` may be left out when replacing a
/// certificate through the API, which then keeps the stored key (the API
/// never returns keys, so an exported document round-trips).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateDoc {
    pub name: String,
    pub cert_pem: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_pem: Option<String>,
}

impl std::fmt::Debug for CertificateDoc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateDoc")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadBalancerDoc {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vip: Option<String>,
    #[serde(default)]
    pub listeners: Vec<ListenerDoc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerDoc {
    pub port: i64,
    pub protocol: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_pool: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<DurationDoc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header_timeout: Option<DurationDoc>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certificates: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_policy: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http2: Option<bool>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<RuleDoc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accept_proxy_protocol: Option<bool>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_proxies: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_timeout: Option<DurationDoc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_timeout: Option<DurationDoc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keepalive_timeout: Option<DurationDoc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitDoc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitDoc {
    pub per_second: i64,
    /// Defaults to `per_second`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<i64>,
}

/// A listener rule as written: conditions side by side with one action
/// (`pool`, `forward`, `redirect` or `fixed_response`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleDoc {
    pub priority: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<OneOrMany>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<OneOrMany>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<OneOrMany>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_glob: Option<OneOrMany>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<BTreeMap<String, OneOrMany>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<OneOrMany>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<BTreeMap<String, OneOrMany>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<OneOrMany>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forward: Option<Vec<WeightedDoc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect: Option<RedirectDoc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fixed_response: Option<FixedResponseDoc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightedDoc {
    pub pool: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedirectDoc {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<Scalar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FixedResponseDoc {
    pub status: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
}

/// One value or a list of them (`method: GET` or `method: [GET, HEAD]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn to_vec(&self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }

    fn from_vec(mut v: Vec<String>) -> Option<Self> {
        match v.len() {
            0 => None,
            1 => v.pop().map(OneOrMany::One),
            _ => Some(OneOrMany::Many(v)),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolDoc {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheckDoc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_timeout: Option<DurationDoc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<DurationDoc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_timeout: Option<DurationDoc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_protocol: Option<String>,
    /// `source`, `header:NAME` or `cookie:NAME`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_on: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stickiness: Option<StickinessDoc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<MemberTlsDoc>,
    /// `http1` or `http2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_version: Option<String>,
    #[serde(default)]
    pub members: Vec<MemberDoc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberTlsDoc {
    /// Defaults to true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<bool>,
    /// CA certificates, PEM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StickinessDoc {
    /// `lb_cookie` or `app_cookie`.
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<DurationDoc>,
    /// `app_cookie`: the application's cookie.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberDoc {
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckDoc {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_codes: Option<Scalar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<DurationDoc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<DurationDoc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy_threshold: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unhealthy_threshold: Option<i64>,
    /// Check this port instead of the member's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i64>,
}

/// A duration written as text (`2s`, `1h 30m`, `500ms`) or a number of seconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum DurationDoc {
    Seconds(f64),
    Text(String),
}

/// Unknown fields set aside in one document before giving up on it.
const MAX_UNKNOWN_FIELDS: usize = 100;

/// The field an "unknown field" message names: serde writes it in backticks.
fn unknown_field(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("unknown field `")?;
    rest.split_once('`').map(|(name, _)| name)
}

/// Removes key `name` from the mapping at `at` in `value`; whether it was there.
fn remove_key(
    value: &mut serde_yaml_ng::Value,
    at: &[serde_path_to_error::Segment],
    name: &str,
) -> bool {
    use serde_path_to_error::Segment as S;
    let mut here = value;
    for seg in at {
        let next = match (seg, here) {
            (S::Seq { index }, serde_yaml_ng::Value::Sequence(items)) => items.get_mut(*index),
            (S::Map { key }, serde_yaml_ng::Value::Mapping(map)) => map.get_mut(key.as_str()),
            _ => None,
        };
        match next {
            Some(v) => here = v,
            None => return false,
        }
    }
    match here {
        serde_yaml_ng::Value::Mapping(map) => map.remove(name).is_some(),
        _ => false,
    }
}

/// The line (1-based) where the value at `path` starts in YAML `text`, if
/// it is there: for pointing at a problem in the file.
pub fn line_of(text: &str, path: &Path) -> Option<usize> {
    use serde::de::DeserializeSeed;
    let found = Probe(&path.0).deserialize(serde_yaml_ng::Deserializer::from_str(text));
    found.err()?.location().map(|l| l.line())
}

/// Walks a document along a path; at its end it fails on purpose, and the
/// parser's error carries the position of the value it stopped at.
struct Probe<'a>(&'a [Segment]);

/// A visitor that takes nothing: every value is an error, raised where the
/// value starts.
struct Here;

impl serde::de::Visitor<'_> for Here {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("nothing")
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for Probe<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        if self.0.is_empty() {
            d.deserialize_any(Here)
        } else {
            d.deserialize_any(self)
        }
    }
}

impl<'de> serde::de::Visitor<'de> for Probe<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a document")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let want = match self.0.first() {
            Some(Segment::Field(name)) => *name,
            Some(Segment::Key(name)) => name.as_str(),
            _ => "",
        };
        while let Some(key) = map.next_key::<serde_yaml_ng::Value>()? {
            if !want.is_empty() && key.as_str() == Some(want) {
                return map.next_value_seed(Probe(&self.0[1..]));
            }
            map.next_value::<serde::de::IgnoredAny>()?;
        }
        Ok(())
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let want = match self.0.first() {
            Some(Segment::Index(i)) => Some(*i),
            _ => None,
        };
        let mut i = 0;
        loop {
            if Some(i) == want {
                return seq.next_element_seed(Probe(&self.0[1..])).map(|_| ());
            }
            if seq.next_element::<serde::de::IgnoredAny>()?.is_none() {
                return Ok(());
            }
            i += 1;
        }
    }

    // Scalars hold nothing the path could lead into.
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
}

/// A value YAML may read as a number or as text (`expected_codes: 200`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Scalar {
    Number(i64),
    Text(String),
}

impl Document {
    /// Parses YAML (and so JSON, which is YAML) text.
    pub fn from_yaml(text: &str) -> Result<Self, ParseError> {
        if text.trim().is_empty() {
            return Ok(Document::default());
        }
        serde_yaml_ng::from_str(text).map_err(|e| ParseError::Syntax(e.to_string()))
    }

    /// Parses JSON text.
    pub fn from_json(text: &str) -> Result<Self, ParseError> {
        serde_json::from_str(text).map_err(|e| ParseError::Syntax(e.to_string()))
    }

    /// Parses YAML or JSON and validates it into a [`Spec`]. Every problem
    /// is reported at once: fields the model does not know (each set aside
    /// so the rest is still read) as well as invalid values.
    pub fn parse_spec(text: &str) -> Result<Spec, ParseError> {
        let (doc, mut problems) = Self::from_yaml_lenient(text)?;
        match doc.into_spec() {
            Ok(spec) if problems.is_empty() => Ok(spec),
            Ok(_) => Err(ParseError::Invalid(ValidationErrors(problems))),
            Err(ValidationErrors(rest)) => {
                problems.extend(rest);
                Err(ParseError::Invalid(ValidationErrors(problems)))
            }
        }
    }

    /// Parses YAML text as [`Document::from_yaml`] does, except that a field
    /// the model does not know is taken out and reported rather than
    /// ending the parse, so one misspelt name hides no other mistake.
    fn from_yaml_lenient(text: &str) -> Result<(Self, Vec<FieldError>), ParseError> {
        let syntax = |e: serde_yaml_ng::Error| ParseError::Syntax(e.to_string());
        // Most documents have no unknown field: one strict pass reads them.
        let first = match Self::from_yaml(text) {
            Ok(doc) => return Ok((doc, Vec::new())),
            Err(ParseError::Syntax(message)) if message.contains("unknown field") => message,
            Err(e) => return Err(e),
        };
        let mut value: serde_yaml_ng::Value = serde_yaml_ng::from_str(text).map_err(syntax)?;
        let mut unknown = Vec::new();
        loop {
            let e = match serde_path_to_error::deserialize::<_, Document>(value.clone()) {
                Ok(doc) => return Ok((doc, unknown)),
                Err(e) => e,
            };
            let message = e.inner().to_string();
            let mut at: Vec<serde_path_to_error::Segment> = e.path().iter().cloned().collect();
            let name = unknown_field(&message);
            // The path may end at the map or at the unknown key itself.
            if let (Some(serde_path_to_error::Segment::Map { key }), Some(name)) = (at.last(), name)
            {
                if key == name {
                    at.pop();
                }
            }
            let removed = name.is_some_and(|n| remove_key(&mut value, &at, n));
            if !removed || unknown.len() >= MAX_UNKNOWN_FIELDS {
                // Not a field that can be set aside: the strict pass's
                // message, with its line, says what is wrong.
                return Err(ParseError::Syntax(first));
            }
            let path = at.iter().fold(Path::root(), |p, seg| match seg {
                serde_path_to_error::Segment::Seq { index } => p.index(*index),
                serde_path_to_error::Segment::Map { key } => p.key(key),
                _ => p,
            });
            let name = name.unwrap_or_default();
            unknown.push(FieldError::new(path.key(name), message));
        }
    }

    pub fn to_yaml(&self) -> String {
        serde_yaml_ng::to_string(self).unwrap_or_default()
    }

    /// Converts to a [`Spec`], or lists every problem with its field path.
    pub fn into_spec(&self) -> Result<Spec, ValidationErrors> {
        let mut errors = Vec::new();
        let mut spec = Spec::default();
        let mut lb_index = BTreeMap::new();
        let mut pool_index = BTreeMap::new();
        for (i, doc) in self.load_balancers.iter().enumerate() {
            let at = Path::root().field("load_balancers").index(i);
            if let Some(lb) = doc.convert(&at, &mut errors) {
                if let Some(first) = lb_index.insert(lb.name.clone(), i) {
                    lb_index.insert(lb.name.clone(), first);
                    errors.push(dup_name(&at, "load_balancers", first));
                } else {
                    spec.load_balancers.insert(lb.name.clone(), lb);
                }
            }
        }
        for (i, doc) in self.pools.iter().enumerate() {
            let at = Path::root().field("pools").index(i);
            let pool = doc.convert(&at, &mut errors);
            if let Some(first) = pool_index.insert(pool.name.clone(), i) {
                pool_index.insert(pool.name.clone(), first);
                errors.push(dup_name(&at, "pools", first));
            } else {
                spec.pools.insert(pool.name.clone(), pool);
            }
        }
        let mut cert_index = BTreeMap::new();
        for (i, doc) in self.certificates.iter().enumerate() {
            let at = Path::root().field("certificates").index(i);
            let key_pem = doc.key_pem.clone().unwrap_or_else(|| {
                errors.push(FieldError::new(at.field("key_pem"), "is required"));
                String::new()
            });
            let cert = Certificate {
                name: doc.name.clone(),
                cert_pem: doc.cert_pem.clone(),
                key_pem,
            };
            if let Some(first) = cert_index.insert(cert.name.clone(), i) {
                cert_index.insert(cert.name.clone(), first);
                errors.push(dup_name(&at, "certificates", first));
            } else {
                spec.certificates.insert(cert.name.clone(), cert);
            }
        }
        let parse_errors = errors.len();
        for mut e in spec.check() {
            // Point at list positions, as the user wrote the document.
            if let [Segment::Field(kind), Segment::Name(name), ..] = e.path.0.as_slice() {
                let index = match *kind {
                    "pools" => &pool_index,
                    "certificates" => &cert_index,
                    _ => &lb_index,
                };
                if let Some(&i) = index.get(name) {
                    e.path.0[1] = Segment::Index(i);
                }
            }
            // A field that did not parse holds a placeholder; what the
            // checks say of the placeholder is noise.
            if !errors[..parse_errors].iter().any(|p| p.path == e.path) {
                errors.push(e);
            }
        }
        if errors.is_empty() {
            Ok(spec)
        } else {
            Err(ValidationErrors(errors))
        }
    }

    /// The document that describes `spec`, every field written out.
    pub fn from_spec(spec: &Spec) -> Self {
        Document {
            load_balancers: spec
                .load_balancers
                .values()
                .map(LoadBalancerDoc::from)
                .collect(),
            pools: spec.pools.values().map(PoolDoc::from).collect(),
            certificates: spec
                .certificates
                .values()
                .map(|c| CertificateDoc {
                    name: c.name.clone(),
                    cert_pem: c.cert_pem.clone(),
                    key_pem: Some(c.key_pem.clone()),
                })
                .collect(),
        }
    }
}

fn dup_name(at: &Path, kind: &str, first: usize) -> FieldError {
    FieldError::new(
        at.field("name"),
        format!("duplicate name (also {kind}[{first}])"),
    )
}

impl LoadBalancerDoc {
    fn convert(&self, at: &Path, errors: &mut Vec<FieldError>) -> Option<LoadBalancer> {
        let vip = self.vip.as_deref().and_then(|v| {
            parse_vip(v)
                .map_err(|m| errors.push(FieldError::new(at.field("vip"), m)))
                .ok()
        });
        let listeners = self
            .listeners
            .iter()
            .enumerate()
            .map(|(i, l)| l.convert(&at.field("listeners").index(i), errors))
            .collect();
        // Keep the load balancer with its good listeners so the cross-object
        // checks still run on them; the listeners' own errors are recorded.
        // Without its VIP its bind addresses are unknown, so it is left out.
        let vip_ok = self.vip.is_none() || vip.is_some();
        vip_ok.then(|| LoadBalancer {
            name: self.name.clone(),
            vip,
            listeners,
        })
    }
}

impl ListenerDoc {
    /// Fields that do not parse are recorded and replaced by placeholders,
    /// so the rest of the document is still checked.
    fn convert(&self, at: &Path, errors: &mut Vec<FieldError>) -> Listener {
        let port = match u16::try_from(self.port) {
            Ok(p) if p > 0 => p,
            _ => {
                errors.push(FieldError::new(at.field("port"), "must be 1-65535"));
                0
            }
        };
        let protocol = match self.protocol.as_str() {
            "tcp" => Protocol::Tcp,
            "http" => Protocol::Http,
            "https" => Protocol::Https,
            "tls" => Protocol::Tls,
            "tls_passthrough" => Protocol::TlsPassthrough,
            other => {
                errors.push(FieldError::new(
                    at.field("protocol"),
                    format!("unknown protocol {other:?} (expected tcp, http, https, tls or tls_passthrough)"),
                ));
                Protocol::Tcp
            }
        };
        let bind = self.bind.as_deref().and_then(|b| {
            b.parse::<IpAddr>()
                .map_err(|_| errors.push(FieldError::new(at.field("bind"), "not an IP address")))
                .ok()
        });
        let idle_timeout = duration(
            &self.idle_timeout,
            defaults::IDLE_TIMEOUT,
            &at.field("idle_timeout"),
            errors,
        );
        let header_timeout = duration(
            &self.header_timeout,
            defaults::HEADER_TIMEOUT,
            &at.field("header_timeout"),
            errors,
        );
        let tls_policy = match self.tls_policy.as_deref() {
            None | Some("compatible") => TlsPolicy::Compatible,
            Some("modern") => TlsPolicy::Modern,
            Some(other) => {
                errors.push(FieldError::new(
                    at.field("tls_policy"),
                    format!("unknown TLS policy {other:?} (expected modern or compatible)"),
                ));
                TlsPolicy::Compatible
            }
        };
        if self.http2.is_some() && !protocol.is_http() {
            errors.push(FieldError::new(
                at.field("http2"),
                "only applies to http and https listeners",
            ));
        }
        let count = |n: i64, field: &Path, errors: &mut Vec<FieldError>| {
            u32::try_from(n).unwrap_or_else(|_| {
                errors.push(FieldError::new(
                    field.clone(),
                    format!("must be 1-{}", crate::spec::MAX_LIMIT),
                ));
                1
            })
        };
        let request_timeout = self.request_timeout.as_ref().map(|_| {
            duration(
                &self.request_timeout,
                Duration::ZERO,
                &at.field("request_timeout"),
                errors,
            )
        });
        let client_timeout = self.client_timeout.as_ref().map(|_| {
            duration(
                &self.client_timeout,
                Duration::ZERO,
                &at.field("client_timeout"),
                errors,
            )
        });
        let keepalive_timeout = self.keepalive_timeout.as_ref().map(|_| {
            duration(
                &self.keepalive_timeout,
                Duration::ZERO,
                &at.field("keepalive_timeout"),
                errors,
            )
        });
        let max_connections = self
            .max_connections
            .map(|n| count(n, &at.field("max_connections"), errors));
        let rate_limit = self.rate_limit.as_ref().map(|r| {
            let rat = at.field("rate_limit");
            let per_second = count(r.per_second, &rat.field("per_second"), errors);
            RateLimit {
                per_second,
                burst: r
                    .burst
                    .map_or(per_second, |b| count(b, &rat.field("burst"), errors)),
            }
        });
        // Without peers to trust, a PROXY header would let any client say
        // it is anyone: such a listener could take no connection.
        if self.accept_proxy_protocol == Some(true) && self.trusted_proxies.is_empty() {
            errors.push(FieldError::new(
                at.field("trusted_proxies"),
                "accept_proxy_protocol needs the peers allowed to send a PROXY header",
            ));
        }
        Listener {
            request_timeout,
            client_timeout,
            keepalive_timeout,
            max_connections,
            rate_limit,
            port,
            protocol,
            bind,
            default_pool: self.default_pool.clone(),
            idle_timeout,
            header_timeout,
            certificates: self.certificates.clone(),
            tls_policy,
            http2: self.http2.unwrap_or(true),
            rules: self
                .rules
                .iter()
                .enumerate()
                .map(|(i, r)| r.convert(&at.field("rules").index(i), errors))
                .collect(),
            accept_proxy_protocol: self.accept_proxy_protocol.unwrap_or(false),
            trusted_proxies: self
                .trusted_proxies
                .iter()
                .enumerate()
                .filter_map(|(i, c)| {
                    c.parse::<Cidr>()
                        .map_err(|m| {
                            errors.push(FieldError::new(at.field("trusted_proxies").index(i), m))
                        })
                        .ok()
                })
                .collect(),
        }
    }
}

impl RuleDoc {
    fn convert(&self, at: &Path, errors: &mut Vec<FieldError>) -> Rule {
        let priority = u32::try_from(self.priority)
            .ok()
            .filter(|p| (1..=50_000).contains(p))
            .unwrap_or_else(|| {
                errors.push(FieldError::new(at.field("priority"), "must be 1-50000"));
                0
            });
        let list = |v: &Option<OneOrMany>| v.as_ref().map(OneOrMany::to_vec).unwrap_or_default();
        let mut paths: Vec<PathMatch> = Vec::new();
        paths.extend(list(&self.path).into_iter().map(PathMatch::Exact));
        paths.extend(list(&self.path_prefix).into_iter().map(PathMatch::Prefix));
        paths.extend(list(&self.path_glob).into_iter().map(PathMatch::Glob));
        let pairs = |m: &Option<BTreeMap<String, OneOrMany>>| -> Vec<(String, Vec<String>)> {
            m.iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.to_vec()))
                .collect()
        };
        let sources = list(&self.source)
            .iter()
            .filter_map(|s| {
                s.parse::<Cidr>()
                    .map_err(|m| errors.push(FieldError::new(at.field("source"), m)))
                    .ok()
            })
            .collect();
        let conditions = Conditions {
            hosts: list(&self.host),
            paths,
            headers: pairs(&self.header)
                .into_iter()
                .map(|(name, values)| HeaderMatch {
                    name: name.to_ascii_lowercase(),
                    values,
                })
                .collect(),
            methods: list(&self.method),
            query: pairs(&self.query)
                .into_iter()
                .map(|(key, values)| QueryMatch { key, values })
                .collect(),
            sources,
        };
        let mut actions = Vec::new();
        if let Some(pool) = &self.pool {
            actions.push(Action::Forward(pool.clone()));
        }
        if let Some(pools) = &self.forward {
            let weighted = pools
                .iter()
                .enumerate()
                .map(|(i, w)| WeightedPool {
                    pool: w.pool.clone(),
                    weight: match w.weight {
                        None => 1,
                        Some(n) => u32::try_from(n).unwrap_or_else(|_| {
                            errors.push(FieldError::new(
                                at.field("forward").index(i).field("weight"),
                                "must be 0-1000",
                            ));
                            1
                        }),
                    },
                })
                .collect();
            actions.push(Action::Weighted(weighted));
        }
        if let Some(r) = &self.redirect {
            let rat = at.field("redirect");
            let status = match r.status {
                None => 301,
                Some(n) => u16::try_from(n).unwrap_or_else(|_| {
                    errors.push(FieldError::new(
                        rat.field("status"),
                        "must be 301, 302, 303, 307 or 308",
                    ));
                    301
                }),
            };
            let port = r.port.as_ref().map(|p| match p {
                Scalar::Number(n) => n.to_string(),
                Scalar::Text(t) => t.clone(),
            });
            actions.push(Action::Redirect(Redirect {
                status,
                scheme: r.scheme.clone(),
                host: r.host.clone(),
                port,
                path: r.path.clone(),
                query: r.query.clone(),
            }));
        }
        if let Some(f) = &self.fixed_response {
            let status = u16::try_from(f.status).unwrap_or_else(|_| {
                errors.push(FieldError::new(
                    at.field("fixed_response").field("status"),
                    "must be 200-599",
                ));
                200
            });
            actions.push(Action::Fixed(FixedResponse {
                status,
                content_type: f
                    .content_type
                    .clone()
                    .unwrap_or_else(|| "text/plain; charset=utf-8".into()),
                body: f.body.clone().unwrap_or_default(),
            }));
        }
        if actions.len() != 1 {
            errors.push(FieldError::new(
                at.clone(),
                "needs exactly one action: pool, forward, redirect or fixed_response",
            ));
        }
        let action = actions.into_iter().next().unwrap_or_else(|| {
            Action::Fixed(FixedResponse {
                status: 503,
                content_type: "text/plain".into(),
                body: String::new(),
            })
        });
        Rule {
            priority,
            conditions,
            action,
        }
    }
}

impl From<&Rule> for RuleDoc {
    fn from(r: &Rule) -> Self {
        let c = &r.conditions;
        let paths = |want: fn(&PathMatch) -> bool| {
            OneOrMany::from_vec(
                c.paths
                    .iter()
                    .filter(|p| want(p))
                    .map(|p| p.text().to_owned())
                    .collect(),
            )
        };
        let mut doc = RuleDoc {
            priority: r.priority.into(),
            host: OneOrMany::from_vec(c.hosts.clone()),
            path: paths(|p| matches!(p, PathMatch::Exact(_))),
            path_prefix: paths(|p| matches!(p, PathMatch::Prefix(_))),
            path_glob: paths(|p| matches!(p, PathMatch::Glob(_))),
            header: (!c.headers.is_empty()).then(|| {
                c.headers
                    .iter()
                    .filter_map(|h| Some((h.name.clone(), OneOrMany::from_vec(h.values.clone())?)))
                    .collect()
            }),
            method: OneOrMany::from_vec(c.methods.clone()),
            query: (!c.query.is_empty()).then(|| {
                c.query
                    .iter()
                    .filter_map(|q| Some((q.key.clone(), OneOrMany::from_vec(q.values.clone())?)))
                    .collect()
            }),
            source: OneOrMany::from_vec(c.sources.iter().map(|s| s.to_string()).collect()),
            pool: None,
            forward: None,
            redirect: None,
            fixed_response: None,
        };
        match &r.action {
            Action::Forward(p) => doc.pool = Some(p.clone()),
            Action::Weighted(ws) => {
                doc.forward = Some(
                    ws.iter()
                        .map(|w| WeightedDoc {
                            pool: w.pool.clone(),
                            weight: Some(w.weight.into()),
                        })
                        .collect(),
                )
            }
            Action::Redirect(x) => {
                doc.redirect = Some(RedirectDoc {
                    status: Some(x.status.into()),
                    scheme: x.scheme.clone(),
                    host: x.host.clone(),
                    port: x.port.clone().map(Scalar::Text),
                    path: x.path.clone(),
                    query: x.query.clone(),
                })
            }
            Action::Fixed(f) => {
                doc.fixed_response = Some(FixedResponseDoc {
                    status: f.status.into(),
                    content_type: Some(f.content_type.clone()),
                    body: Some(f.body.clone()),
                })
            }
        }
        doc
    }
}

impl PoolDoc {
    fn convert(&self, at: &Path, errors: &mut Vec<FieldError>) -> Pool {
        let algorithm = match self.algorithm.as_deref().unwrap_or("round_robin") {
            "round_robin" | "weighted_round_robin" => Algorithm::RoundRobin,
            "least_outstanding" => Algorithm::LeastOutstanding,
            "random_two" => Algorithm::RandomTwo,
            "source_hash" => Algorithm::SourceHash,
            "consistent_hash" => Algorithm::ConsistentHash,
            other => {
                errors.push(FieldError::new(
                    at.field("algorithm"),
                    format!(
                        "unknown algorithm {other:?} (expected round_robin, least_outstanding, random_two, source_hash or consistent_hash)"
                    ),
                ));
                Algorithm::RoundRobin
            }
        };
        let health_check = self
            .health_check
            .as_ref()
            .map(|hc| hc.convert(&at.field("health_check"), errors));
        let drain_timeout = duration(
            &self.drain_timeout,
            defaults::DRAIN_TIMEOUT,
            &at.field("drain_timeout"),
            errors,
        );
        let connect_timeout = duration(
            &self.connect_timeout,
            defaults::CONNECT_TIMEOUT,
            &at.field("connect_timeout"),
            errors,
        );
        let response_timeout = duration(
            &self.response_timeout,
            defaults::RESPONSE_TIMEOUT,
            &at.field("response_timeout"),
            errors,
        );
        let members = self
            .members
            .iter()
            .enumerate()
            .map(|(i, m)| m.convert(&at.field("members").index(i), errors))
            .collect();
        let proxy_protocol = match self.proxy_protocol.as_deref() {
            None | Some("none") => None,
            Some("v1") => Some(ProxyProtocol::V1),
            Some("v2") => Some(ProxyProtocol::V2),
            Some(other) => {
                errors.push(FieldError::new(
                    at.field("proxy_protocol"),
                    format!("unknown PROXY protocol version {other:?} (expected v1, v2 or none)"),
                ));
                None
            }
        };
        let hash_on = self.hash_on.as_deref().map(|text| {
            match text.split_once(':').map(|(k, v)| (k.trim(), v.trim())) {
                None if text.trim() == "source" => HashOn::Source,
                Some(("header", name)) => HashOn::Header(name.to_ascii_lowercase()),
                Some(("cookie", name)) => HashOn::Cookie(name.to_owned()),
                _ => {
                    errors.push(FieldError::new(
                        at.field("hash_on"),
                        format!("{text:?} is not source, header:NAME or cookie:NAME"),
                    ));
                    HashOn::Source
                }
            }
        });
        let stickiness = self
            .stickiness
            .as_ref()
            .and_then(|s| s.convert(&at.field("stickiness"), errors));
        let http_version = match self.http_version.as_deref() {
            None | Some("http1") => HttpVersion::Http1,
            Some("http2") => HttpVersion::Http2,
            Some(other) => {
                errors.push(FieldError::new(
                    at.field("http_version"),
                    format!("unknown HTTP version {other:?} (expected http1 or http2)"),
                ));
                HttpVersion::Http1
            }
        };
        let tls = self.tls.as_ref().map(|t| MemberTls {
            verify: t.verify.unwrap_or(true),
            ca_pem: t.ca.clone(),
            server_name: t.server_name.clone(),
        });
        Pool {
            proxy_protocol,
            hash_on,
            stickiness,
            tls,
            http_version,
            name: self.name.clone(),
            algorithm,
            health_check,
            drain_timeout,
            connect_timeout,
            response_timeout,
            members,
        }
    }
}

impl StickinessDoc {
    fn convert(&self, at: &Path, errors: &mut Vec<FieldError>) -> Option<Stickiness> {
        let duration = duration(
            &self.duration,
            defaults::STICKINESS,
            &at.field("duration"),
            errors,
        );
        match (self.kind.as_str(), &self.cookie) {
            ("lb_cookie", None) => Some(Stickiness::LbCookie { duration }),
            ("lb_cookie", Some(_)) => {
                errors.push(FieldError::new(
                    at.field("cookie"),
                    "only applies to type app_cookie (lb_cookie names its own)",
                ));
                None
            }
            ("app_cookie", Some(cookie)) => Some(Stickiness::AppCookie {
                cookie: cookie.clone(),
                duration,
            }),
            ("app_cookie", None) => {
                errors.push(FieldError::new(
                    at.field("cookie"),
                    "is required: the application's cookie to follow",
                ));
                None
            }
            (other, _) => {
                errors.push(FieldError::new(
                    at.field("type"),
                    format!("unknown stickiness {other:?} (expected lb_cookie or app_cookie)"),
                ));
                None
            }
        }
    }
}

impl From<&Stickiness> for StickinessDoc {
    fn from(s: &Stickiness) -> Self {
        match s {
            Stickiness::LbCookie { duration } => StickinessDoc {
                kind: "lb_cookie".into(),
                duration: duration_doc(*duration),
                cookie: None,
            },
            Stickiness::AppCookie { cookie, duration } => StickinessDoc {
                kind: "app_cookie".into(),
                duration: duration_doc(*duration),
                cookie: Some(cookie.clone()),
            },
        }
    }
}

impl MemberDoc {
    fn convert(&self, at: &Path, errors: &mut Vec<FieldError>) -> Member {
        let address = self.address.parse::<SocketAddr>().unwrap_or_else(|_| {
            errors.push(FieldError::new(
                at.field("address"),
                "not a socket address (expected IP:PORT, [IPv6]:PORT for IPv6)",
            ));
            SocketAddr::from(([0, 0, 0, 0], 0))
        });
        let weight = match self.weight {
            None => defaults::WEIGHT,
            Some(w) => u32::try_from(w).unwrap_or_else(|_| {
                errors.push(FieldError::new(at.field("weight"), "must be 0-1000"));
                0
            }),
        };
        Member {
            address,
            weight,
            enabled: self.enabled.unwrap_or(true),
        }
    }
}

impl HealthCheckDoc {
    fn convert(&self, at: &Path, errors: &mut Vec<FieldError>) -> HealthCheck {
        let kind = match self.kind.as_str() {
            "tcp" => {
                for (name, set) in [
                    ("method", self.method.is_some()),
                    ("path", self.path.is_some()),
                    ("host", self.host.is_some()),
                    ("expected_codes", self.expected_codes.is_some()),
                ] {
                    if set {
                        errors.push(FieldError::new(at.field(name), "only applies to type http"));
                    }
                }
                CheckKind::Tcp
            }
            "http" => {
                let codes = match &self.expected_codes {
                    None => Ok(StatusRanges(vec![(200, 399)])),
                    Some(Scalar::Number(n)) => StatusRanges::parse(&n.to_string()),
                    Some(Scalar::Text(t)) => StatusRanges::parse(t),
                };
                let expected_codes = codes.unwrap_or_else(|m| {
                    errors.push(FieldError::new(at.field("expected_codes"), m));
                    StatusRanges(Vec::new())
                });
                CheckKind::Http {
                    method: self.method.clone().unwrap_or_else(|| "GET".into()),
                    path: self.path.clone().unwrap_or_else(|| "/".into()),
                    host: self.host.clone(),
                    expected_codes,
                }
            }
            other => {
                errors.push(FieldError::new(
                    at.field("type"),
                    format!("unknown health check type {other:?} (expected tcp or http)"),
                ));
                CheckKind::Tcp
            }
        };
        let interval = duration(
            &self.interval,
            defaults::CHECK_INTERVAL,
            &at.field("interval"),
            errors,
        );
        let timeout = duration(
            &self.timeout,
            defaults::CHECK_TIMEOUT,
            &at.field("timeout"),
            errors,
        );
        let threshold = |v: Option<i64>,
                         default: u32,
                         name: &'static str,
                         errors: &mut Vec<FieldError>| match v {
            None => default,
            Some(n) => u32::try_from(n).unwrap_or_else(|_| {
                errors.push(FieldError::new(at.field(name), "must be 1-100"));
                0
            }),
        };
        let healthy_threshold = threshold(
            self.healthy_threshold,
            defaults::HEALTHY_THRESHOLD,
            "healthy_threshold",
            errors,
        );
        let unhealthy_threshold = threshold(
            self.unhealthy_threshold,
            defaults::UNHEALTHY_THRESHOLD,
            "unhealthy_threshold",
            errors,
        );
        let port = self.port.and_then(|n| {
            let port = u16::try_from(n).ok().filter(|p| *p > 0);
            if port.is_none() {
                errors.push(FieldError::new(at.field("port"), "must be 1-65535"));
            }
            port
        });
        HealthCheck {
            kind,
            interval,
            timeout,
            healthy_threshold,
            unhealthy_threshold,
            port,
        }
    }
}

fn duration(
    v: &Option<DurationDoc>,
    default: Duration,
    at: &Path,
    errors: &mut Vec<FieldError>,
) -> Duration {
    let parsed = match v {
        None => return default,
        Some(DurationDoc::Seconds(s)) if s.is_finite() && *s >= 0.0 && *s < 1e9 => {
            Ok(Duration::from_secs_f64(*s))
        }
        Some(DurationDoc::Seconds(_)) => Err("must be a positive duration".to_string()),
        Some(DurationDoc::Text(t)) => humantime::parse_duration(t.trim())
            .map_err(|_| format!("{t:?} is not a duration (examples: 500ms, 2s, 1m)")),
    };
    parsed.unwrap_or_else(|m| {
        errors.push(FieldError::new(at.clone(), m));
        default
    })
}

fn parse_vip(text: &str) -> Result<Vip, String> {
    let (ip, prefix) = match text.split_once('/') {
        Some((ip, p)) => (ip, Some(p)),
        None => (text, None),
    };
    let addr: IpAddr = ip
        .parse()
        .map_err(|_| "not an IP address with an optional /prefix".to_string())?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix_len = match prefix {
        None => max,
        Some(p) => match p.parse::<u8>() {
            Ok(n) if n <= max => n,
            _ => return Err(format!("prefix length must be 0-{max}")),
        },
    };
    if addr.is_unspecified() || addr.is_multicast() || addr.is_loopback() {
        return Err("must be a unicast, non-loopback address".into());
    }
    Ok(Vip { addr, prefix_len })
}

fn duration_doc(d: Duration) -> Option<DurationDoc> {
    Some(DurationDoc::Text(humantime::format_duration(d).to_string()))
}

impl From<&LoadBalancer> for LoadBalancerDoc {
    fn from(lb: &LoadBalancer) -> Self {
        LoadBalancerDoc {
            name: lb.name.clone(),
            vip: lb.vip.map(|v| v.to_string()),
            listeners: lb
                .listeners
                .iter()
                .map(|l| ListenerDoc {
                    port: l.port.into(),
                    protocol: l.protocol.as_str().into(),
                    bind: l.bind.map(|b| b.to_string()),
                    default_pool: l.default_pool.clone(),
                    idle_timeout: duration_doc(l.idle_timeout),
                    header_timeout: duration_doc(l.header_timeout),
                    certificates: l.certificates.clone(),
                    tls_policy: l
                        .protocol
                        .terminates_tls()
                        .then(|| l.tls_policy.as_str().into()),
                    http2: l.protocol.is_http().then_some(l.http2),
                    rules: l.rules.iter().map(RuleDoc::from).collect(),
                    accept_proxy_protocol: l.accept_proxy_protocol.then_some(true),
                    trusted_proxies: l.trusted_proxies.iter().map(|c| c.to_string()).collect(),
                    request_timeout: l.request_timeout.and_then(duration_doc),
                    client_timeout: l.client_timeout.and_then(duration_doc),
                    keepalive_timeout: l.keepalive_timeout.and_then(duration_doc),
                    max_connections: l.max_connections.map(i64::from),
                    rate_limit: l.rate_limit.map(|r| RateLimitDoc {
                        per_second: r.per_second.into(),
                        burst: Some(r.burst.into()),
                    }),
                })
                .collect(),
        }
    }
}

impl From<&Member> for MemberDoc {
    fn from(m: &Member) -> Self {
        MemberDoc {
            address: m.address.to_string(),
            weight: Some(m.weight.into()),
            enabled: Some(m.enabled),
        }
    }
}

impl From<&Pool> for PoolDoc {
    fn from(p: &Pool) -> Self {
        PoolDoc {
            name: p.name.clone(),
            algorithm: Some(p.algorithm.as_str().into()),
            health_check: p.health_check.as_ref().map(HealthCheckDoc::from),
            drain_timeout: duration_doc(p.drain_timeout),
            connect_timeout: duration_doc(p.connect_timeout),
            response_timeout: duration_doc(p.response_timeout),
            proxy_protocol: p.proxy_protocol.map(|v| v.as_str().into()),
            hash_on: p.hash_on.as_ref().map(ToString::to_string),
            stickiness: p.stickiness.as_ref().map(StickinessDoc::from),
            tls: p.tls.as_ref().map(|t| MemberTlsDoc {
                verify: Some(t.verify),
                ca: t.ca_pem.clone(),
                server_name: t.server_name.clone(),
            }),
            http_version: (p.http_version != HttpVersion::Http1)
                .then(|| p.http_version.as_str().into()),
            members: p.members.iter().map(MemberDoc::from).collect(),
        }
    }
}

impl From<&HealthCheck> for HealthCheckDoc {
    fn from(hc: &HealthCheck) -> Self {
        let mut doc = HealthCheckDoc {
            kind: "tcp".into(),
            method: None,
            path: None,
            host: None,
            expected_codes: None,
            interval: duration_doc(hc.interval),
            timeout: duration_doc(hc.timeout),
            healthy_threshold: Some(hc.healthy_threshold.into()),
            unhealthy_threshold: Some(hc.unhealthy_threshold.into()),
            port: hc.port.map(i64::from),
        };
        if let CheckKind::Http {
            method,
            path,
            host,
            expected_codes,
        } = &hc.kind
        {
            doc.kind = "http".into();
            doc.method = Some(method.clone());
            doc.path = Some(path.clone());
            doc.host = host.clone();
            doc.expected_codes = Some(Scalar::Text(expected_codes.to_string()));
        }
        doc
    }
}
