//! Listener rules (ALB style): conditions on a request and what to do with
//! the requests that meet them. Rules are evaluated by ascending priority;
//! the first whose conditions all match decides, else the listener's
//! default pool takes the request.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{FieldError, Path};

/// The longest fixed-response body accepted.
pub const MAX_FIXED_BODY: usize = 1024;
/// Most rules on one listener.
pub const MAX_RULES: usize = 100;

/// One rule of a listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    /// Lower runs first; unique within a listener.
    pub priority: u32,
    #[serde(default, skip_serializing_if = "Conditions::is_empty")]
    pub conditions: Conditions,
    pub action: Action,
}

/// What a request must show for a rule to apply. Every condition that is
/// set must match; within one condition any listed value may match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conditions {
    /// Host patterns (`*` and `?` wildcards), compared without case or port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<PathMatch>,
    /// Headers that must be present with a value matching one of the
    /// patterns (`*`, `?`; without case).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatch>,
    /// Methods, in capitals.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Query parameters that must be present, each with value patterns.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query: Vec<QueryMatch>,
    /// Client address ranges.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<Cidr>,
}

impl Conditions {
    pub fn is_empty(&self) -> bool {
        self == &Conditions::default()
    }
}

/// A way to match the request path (case-sensitive, before decoding).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PathMatch {
    /// The path starts with this, at a segment boundary or not.
    Prefix(String),
    /// The path is exactly this.
    Exact(String),
    /// The path matches this pattern: `*` any run of characters, `?` one.
    Glob(String),
}

impl PathMatch {
    pub fn text(&self) -> &str {
        match self {
            PathMatch::Prefix(p) | PathMatch::Exact(p) | PathMatch::Glob(p) => p,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeaderMatch {
    pub name: String,
    pub values: Vec<String>,
}

/// A query parameter that must be present with a value matching one of
/// the patterns (`*`, `?`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueryMatch {
    pub key: String,
    pub values: Vec<String>,
}

/// An IP address range, `10.0.0.0/8` or `fd00::/8`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix_len: u8,
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match (self.addr, ip) {
            (IpAddr::V4(_), IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => return false,
            },
            _ => ip,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix_len))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix_len))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (ip, prefix) = match text.split_once('/') {
            Some((ip, p)) => (ip, Some(p)),
            None => (text, None),
        };
        let addr: IpAddr = ip
            .trim()
            .parse()
            .map_err(|_| format!("{text:?} is not an IP address or CIDR range"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix_len = match prefix {
            None => max,
            Some(p) => match p.trim().parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => return Err(format!("{text:?}: prefix length must be 0-{max}")),
            },
        };
        Ok(Cidr { addr, prefix_len })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// What a matching rule does with the request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Send it to this pool.
    Forward(String),
    /// Send it to one of these pools, chosen at random by weight (canary).
    Weighted(Vec<WeightedPool>),
    /// Answer with a redirect.
    Redirect(Redirect),
    /// Answer with this response.
    Fixed(FixedResponse),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WeightedPool {
    pub pool: String,
    pub weight: u32,
}

/// A redirect. Each part is a template where `#{protocol}`, `#{host}`,
/// `#{port}`, `#{path}` and `#{query}` stand for the request's own; an
/// unset part keeps the request's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Redirect {
    /// 301, 302, 303, 307 or 308.
    pub status: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FixedResponse {
    pub status: u16,
    pub content_type: String,
    #[serde(default)]
    pub body: String,
}

/// Matches `text` against a pattern where `*` is any run of characters and
/// `?` exactly one. Linear in practice (greedy with one backtrack point).
pub fn glob_match(pattern: &str, text: &str, ignore_case: bool) -> bool {
    let eq = |a: char, b: char| {
        if ignore_case {
            a.eq_ignore_ascii_case(&b)
        } else {
            a == b
        }
    };
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || (p[pi] != '*' && eq(p[pi], t[ti]))) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

const TEMPLATE_VARS: [&str; 5] = ["protocol", "host", "port", "path", "query"];

impl Rule {
    /// The rule's own problems; references to pools are checked by the spec.
    pub(crate) fn check(&self, at: &Path, errors: &mut Vec<FieldError>) {
        let c = &self.conditions;
        if c.is_empty() {
            errors.push(FieldError::new(
                at.clone(),
                "needs at least one condition (host, path, path_prefix, path_glob, header, method, query or source)",
            ));
        }
        let printable = |s: &str| !s.is_empty() && s.bytes().all(|b| b > b' ' && b != 0x7f);
        for h in &c.hosts {
            if !printable(h) {
                errors.push(FieldError::new(
                    at.field("host"),
                    format!("{h:?} is not a host pattern"),
                ));
            }
        }
        for p in &c.paths {
            let (field, text) = match p {
                PathMatch::Prefix(t) => ("path_prefix", t),
                PathMatch::Exact(t) => ("path", t),
                PathMatch::Glob(t) => ("path_glob", t),
            };
            let anchored = text.starts_with('/') || (field == "path_glob" && text.starts_with('*'));
            if !anchored {
                errors.push(FieldError::new(
                    at.field(field),
                    format!("{text:?} must start with /"),
                ));
            } else if !printable(text) {
                errors.push(FieldError::new(
                    at.field(field),
                    format!("{text:?} contains spaces or control characters"),
                ));
            }
        }
        for h in &c.headers {
            let token = !h.name.is_empty()
                && h.name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
            if !token {
                errors.push(FieldError::new(
                    at.field("header"),
                    format!("{:?} is not a header name", h.name),
                ));
            }
            if h.values.is_empty() {
                errors.push(FieldError::new(
                    at.field("header").name(&h.name),
                    "lists no values",
                ));
            }
        }
        for m in &c.methods {
            if m.is_empty()
                || !m
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b == b'-' || b == b'_')
            {
                errors.push(FieldError::new(
                    at.field("method"),
                    format!("{m:?} is not an HTTP method in capitals"),
                ));
            }
        }
        for q in &c.query {
            if q.key.is_empty() {
                errors.push(FieldError::new(at.field("query"), "a key is empty"));
            }
            if q.values.is_empty() {
                errors.push(FieldError::new(
                    at.field("query").name(&q.key),
                    "lists no values",
                ));
            }
        }
        match &self.action {
            Action::Forward(_) => {}
            Action::Weighted(pools) => {
                if pools.is_empty() {
                    errors.push(FieldError::new(at.field("forward"), "lists no pools"));
                }
                for (i, w) in pools.iter().enumerate() {
                    if w.weight > 1000 {
                        errors.push(FieldError::new(
                            at.field("forward").index(i).field("weight"),
                            "must be 0-1000",
                        ));
                    }
                }
                if !pools.is_empty() && pools.iter().all(|w| w.weight == 0) {
                    errors.push(FieldError::new(at.field("forward"), "every weight is 0"));
                }
            }
            Action::Redirect(r) => r.check(&at.field("redirect"), errors),
            Action::Fixed(f) => {
                let at = at.field("fixed_response");
                if !(200..=599).contains(&f.status) {
                    errors.push(FieldError::new(at.field("status"), "must be 200-599"));
                }
                if f.content_type.is_empty()
                    || f.content_type.bytes().any(|b| b < b' ' || b == 0x7f)
                {
                    errors.push(FieldError::new(
                        at.field("content_type"),
                        "is not a media type",
                    ));
                }
                if f.body.len() > MAX_FIXED_BODY {
                    errors.push(FieldError::new(
                        at.field("body"),
                        format!("is longer than {MAX_FIXED_BODY} bytes"),
                    ));
                }
            }
        }
    }

    /// The pools this rule may send requests to.
    pub fn pools(&self) -> Vec<&str> {
        match &self.action {
            Action::Forward(p) => vec![p.as_str()],
            Action::Weighted(ws) => ws.iter().map(|w| w.pool.as_str()).collect(),
            _ => Vec::new(),
        }
    }
}

impl Redirect {
    fn check(&self, at: &Path, errors: &mut Vec<FieldError>) {
        if ![301, 302, 303, 307, 308].contains(&self.status) {
            errors.push(FieldError::new(
                at.field("status"),
                "must be 301, 302, 303, 307 or 308",
            ));
        }
        let parts = [
            ("scheme", &self.scheme),
            ("host", &self.host),
            ("port", &self.port),
            ("path", &self.path),
            ("query", &self.query),
        ];
        for (name, value) in parts {
            let Some(v) = value else { continue };
            if let Err(m) = check_template(v) {
                errors.push(FieldError::new(at.field(name), m));
                continue;
            }
            let literal = !v.contains("#{");
            let bad = match name {
                "scheme" => literal && v != "http" && v != "https",
                "port" => literal && !matches!(v.parse::<u16>(), Ok(p) if p > 0),
                "path" => !v.starts_with('/') && !v.starts_with("#{path}"),
                "host" => v.is_empty(),
                _ => false,
            };
            if bad {
                let why = match name {
                    "scheme" => "must be http or https",
                    "port" => "must be 1-65535",
                    "path" => "must start with /",
                    _ => "must not be empty",
                };
                errors.push(FieldError::new(at.field(name), why));
            }
        }
        if parts.iter().all(|(_, v)| v.is_none()) {
            errors.push(FieldError::new(
                at.clone(),
                "changes nothing (set scheme, host, port, path or query)",
            ));
        }
    }
}

/// A template may only name the known variables and holds no spaces or
/// control characters (it becomes a header).
fn check_template(t: &str) -> Result<(), String> {
    if t.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(format!("{t:?} contains spaces or control characters"));
    }
    let mut rest = t;
    while let Some(start) = rest.find("#{") {
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            return Err(format!("{t:?} has an unclosed #{{"));
        };
        let var = &after[..end];
        if !TEMPLATE_VARS.contains(&var) {
            return Err(format!(
                "unknown variable #{{{var}}} (expected #{{protocol}}, #{{host}}, #{{port}}, #{{path}} or #{{query}})"
            ));
        }
        rest = &after[end + 1..];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("/img/*.png", "/img/a/b.png", false));
        assert!(!glob_match("/img/*.png", "/img/a.jpg", false));
        assert!(glob_match("*.example.com", "A.EXAMPLE.com", true));
        assert!(!glob_match("*.example.com", "example.com", true));
        assert!(glob_match("a?c", "abc", false));
        assert!(!glob_match("a?c", "ac", false));
        assert!(glob_match("*", "", false));
        assert!(glob_match("*a*b*", "xxaxxbxx", false));
        assert!(!glob_match("/API", "/api", false));
    }

    #[test]
    fn cidrs() {
        let c: Cidr = "10.1.0.0/16".parse().unwrap_or_else(|e| panic!("{e}"));
        assert!(c.contains("10.1.2.3".parse().unwrap_or_else(|e| panic!("{e}"))));
        assert!(!c.contains("10.2.0.1".parse().unwrap_or_else(|e| panic!("{e}"))));
        assert!(c.contains("::ffff:10.1.0.9".parse().unwrap_or_else(|e| panic!("{e}"))));
        let all: Cidr = "0.0.0.0/0".parse().unwrap_or_else(|e| panic!("{e}"));
        assert!(all.contains("192.0.2.1".parse().unwrap_or_else(|e| panic!("{e}"))));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        let v6: Cidr = "fd77::/64".parse().unwrap_or_else(|e| panic!("{e}"));
        assert!(v6.contains("fd77::5".parse().unwrap_or_else(|e| panic!("{e}"))));
        assert!(!v6.contains("fd78::5".parse().unwrap_or_else(|e| panic!("{e}"))));
    }
}
