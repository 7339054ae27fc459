//! Listener rules compiled for the request path: which pool takes a request,
//! or which answer Keel gives itself (redirect, fixed response).

use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, StatusCode, Version};
use keel_model::{glob_match, Action, Conditions, PathMatch, Redirect, Rule};

use crate::plan::PoolPlan;

/// A rule ready to evaluate.
pub(crate) struct RulePlan {
    conditions: Conditions,
    action: RouteAction,
}

enum RouteAction {
    Forward(Arc<PoolPlan>),
    Weighted {
        pools: Vec<(Arc<PoolPlan>, u32)>,
        total: u32,
    },
    Redirect(Redirect),
    Fixed {
        status: StatusCode,
        content_type: HeaderValue,
        body: Bytes,
    },
}

/// Where a request goes.
pub(crate) enum Route<'a> {
    Pool(&'a Arc<PoolPlan>),
    Redirect(&'a Redirect),
    Fixed {
        status: StatusCode,
        content_type: &'a HeaderValue,
        body: &'a Bytes,
    },
}

/// Compiles `rules` (validated: every pool exists) in priority order.
pub(crate) fn compile(
    rules: &[Rule],
    pool: impl Fn(&str) -> Option<Arc<PoolPlan>>,
) -> Vec<RulePlan> {
    let mut sorted: Vec<&Rule> = rules.iter().collect();
    sorted.sort_by_key(|r| r.priority);
    sorted
        .into_iter()
        .filter_map(|r| {
            let action = match &r.action {
                Action::Forward(name) => RouteAction::Forward(pool(name)?),
                Action::Weighted(ws) => {
                    let pools: Vec<(Arc<PoolPlan>, u32)> = ws
                        .iter()
                        .filter(|w| w.weight > 0)
                        .map(|w| Some((pool(&w.pool)?, w.weight)))
                        .collect::<Option<_>>()?;
                    let total = pools.iter().map(|(_, w)| w).sum();
                    RouteAction::Weighted { pools, total }
                }
                Action::Redirect(r) => RouteAction::Redirect(r.clone()),
                Action::Fixed(f) => RouteAction::Fixed {
                    status: StatusCode::from_u16(f.status).ok()?,
                    content_type: HeaderValue::from_str(&f.content_type).ok()?,
                    body: Bytes::from(f.body.clone()),
                },
            };
            Some(RulePlan {
                conditions: r.conditions.clone(),
                action,
            })
        })
        .collect()
}

/// The first rule that matches `req` from `client`, else the default pool.
pub(crate) fn route<'a, B>(
    rules: &'a [RulePlan],
    default: &'a Arc<PoolPlan>,
    req: &Request<B>,
    client: IpAddr,
) -> Route<'a> {
    for rule in rules {
        if matches(&rule.conditions, req, client) {
            if let Some(pool) = rule.forward_to() {
                return Route::Pool(pool);
            }
            return match &rule.action {
                RouteAction::Forward(_) | RouteAction::Weighted { .. } => Route::Pool(default),
                RouteAction::Redirect(r) => Route::Redirect(r),
                RouteAction::Fixed {
                    status,
                    content_type,
                    body,
                } => Route::Fixed {
                    status: *status,
                    content_type,
                    body,
                },
            };
        }
    }
    Route::Pool(default)
}

/// The pool for a TLS passthrough connection: the first rule whose host
/// patterns match the ClientHello's server name (and whose sources match
/// the client), else the default pool. Validation keeps other conditions
/// and Keel's own answers off these listeners.
pub(crate) fn route_name<'a>(
    rules: &'a [RulePlan],
    default: &'a Arc<PoolPlan>,
    name: Option<&str>,
    client: IpAddr,
) -> &'a Arc<PoolPlan> {
    for rule in rules {
        let c = &rule.conditions;
        let host_ok = c.hosts.is_empty()
            || name.is_some_and(|n| c.hosts.iter().any(|p| glob_match(p, n, true)));
        let source_ok = c.sources.is_empty() || c.sources.iter().any(|s| s.contains(client));
        if host_ok && source_ok {
            if let Some(pool) = rule.forward_to() {
                return pool;
            }
        }
    }
    default
}

impl RulePlan {
    /// The pool a forwarding rule sends to (weighted: drawn by weight).
    fn forward_to(&self) -> Option<&Arc<PoolPlan>> {
        match &self.action {
            RouteAction::Forward(p) => Some(p),
            RouteAction::Weighted { pools, total } => {
                let mut n = fastrand::u32(0..(*total).max(1));
                for (p, w) in pools {
                    if n < *w {
                        return Some(p);
                    }
                    n -= w;
                }
                pools.first().map(|(p, _)| p)
            }
            RouteAction::Redirect(_) | RouteAction::Fixed { .. } => None,
        }
    }
}

/// Settles the one authority a request is routed on and its member gets
/// (RFC 9112 §3.2): an absolute-form target's (or HTTP/2's `:authority`)
/// replaces `Host`; otherwise exactly one valid `Host` is required, except
/// from an HTTP/1.0 client, whose request without one gets an empty one
/// (what a client with no authority sends). `Err` names what is wrong; the
/// request is then answered 400 and goes nowhere.
pub(crate) fn settle_authority<B>(req: &mut Request<B>) -> Result<(), &'static str> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err("more than one Host field");
    }
    if let Some(h) = host {
        if !valid_host(h.as_bytes()) {
            return Err("malformed Host field");
        }
    }
    if let Some(authority) = req.uri().authority() {
        let a = authority.as_str();
        if !valid_host(a.as_bytes()) {
            return Err("malformed authority in the request target");
        }
        // HTTP/2 carries both only if a client wrote both: they must agree.
        if req.version() == Version::HTTP_2
            && host.is_some_and(|h| !h.as_bytes().eq_ignore_ascii_case(a.as_bytes()))
        {
            return Err(":authority and Host differ");
        }
        let value =
            HeaderValue::from_str(a).map_err(|_| "malformed authority in the request target")?;
        req.headers_mut().insert(header::HOST, value);
        return Ok(());
    }
    match host {
        Some(_) => Ok(()),
        None if matches!(req.version(), Version::HTTP_09 | Version::HTTP_10) => {
            req.headers_mut()
                .insert(header::HOST, HeaderValue::from_static(""));
            Ok(())
        }
        None => Err("no Host field"),
    }
}

/// Whether `v` is a `Host` value: `uri-host [":" port]` (RFC 9110 §7.2),
/// a registered name or IPv4 address, or a bracketed IPv6 address. Stricter
/// than RFC 3986 in one place: no comma, which members that read the field
/// as a list would take for two hosts.
fn valid_host(v: &[u8]) -> bool {
    let (host, port) = if let Some(rest) = v.strip_prefix(b"[") {
        let Some(end) = rest.iter().position(|b| *b == b']') else {
            return false;
        };
        let literal = &rest[..end];
        if literal.is_empty()
            || !literal
                .iter()
                .all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.'))
        {
            return false;
        }
        (&[][..], &rest[end + 1..])
    } else {
        let colon = v.iter().position(|b| *b == b':').unwrap_or(v.len());
        (&v[..colon], &v[colon..])
    };
    let port_ok = port.is_empty()
        || (port[0] == b':' && port.len() <= 6 && port[1..].iter().all(u8::is_ascii_digit));
    let name_ok = host.iter().enumerate().all(|(i, &b)| {
        NAME_BYTE[usize::from(b)]
            || (b == b'%'
                && host
                    .get(i + 1..i + 3)
                    .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)))
    });
    port_ok && name_ok
}

/// The bytes a registered name may hold as they are (RFC 3986 §3.2.2:
/// unreserved and sub-delims, less the comma): looked up, not matched,
/// since every request's host is checked.
static NAME_BYTE: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b';'
                    | b'='
            );
        b += 1;
    }
    table
};

/// The request's host: `Host` or the URI's authority, without port, lower-case.
pub(crate) fn host_of<B>(req: &Request<B>) -> Option<String> {
    let raw = req.uri().host().map(str::to_owned).or_else(|| {
        let h = req.headers().get(header::HOST)?.to_str().ok()?;
        Some(strip_port(h).to_owned())
    })?;
    Some(raw.to_ascii_lowercase())
}

fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

fn matches<B>(c: &Conditions, req: &Request<B>, client: IpAddr) -> bool {
    if !c.methods.is_empty() && !c.methods.iter().any(|m| m == req.method().as_str()) {
        return false;
    }
    if !c.sources.is_empty() && !c.sources.iter().any(|s| s.contains(client)) {
        return false;
    }
    if !c.hosts.is_empty() {
        let Some(host) = host_of(req) else {
            return false;
        };
        if !c.hosts.iter().any(|p| glob_match(p, &host, true)) {
            return false;
        }
    }
    if !c.paths.is_empty() {
        let path = req.uri().path();
        let hit = c.paths.iter().any(|p| match p {
            PathMatch::Prefix(prefix) => path.starts_with(prefix.as_str()),
            PathMatch::Exact(exact) => path == exact,
            PathMatch::Glob(pattern) => glob_match(pattern, path, false),
        });
        if !hit {
            return false;
        }
    }
    for h in &c.headers {
        let hit = req.headers().get_all(h.name.as_str()).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| h.values.iter().any(|p| glob_match(p, v, true)))
        });
        if !hit {
            return false;
        }
    }
    if !c.query.is_empty() {
        let query = req.uri().query().unwrap_or("");
        for q in &c.query {
            let hit = query.split('&').any(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                k == q.key && q.values.iter().any(|p| glob_match(p, v, false))
            });
            if !hit {
                return false;
            }
        }
    }
    true
}

/// The `Location` of a redirect for `req` received on a listener that
/// speaks `scheme` on `port`.
pub(crate) fn location<B>(r: &Redirect, req: &Request<B>, scheme: &str, port: u16) -> String {
    let host = host_of(req).unwrap_or_default();
    let path = req.uri().path();
    let query = req.uri().query().unwrap_or("");
    let port_text = port.to_string();
    let fill = |template: &Option<String>, own: &str| match template {
        None => own.to_owned(),
        Some(t) => t
            .replace("#{protocol}", scheme)
            .replace("#{host}", &host)
            .replace("#{port}", &port_text)
            .replace("#{path}", path)
            .replace("#{query}", query),
    };
    let scheme_out = fill(&r.scheme, scheme);
    let mut host_out = fill(&r.host, &host);
    if host_out.contains(':') && !host_out.starts_with('[') {
        host_out = format!("[{host_out}]");
    }
    // A new scheme without a new port takes that scheme's default port.
    let port_out = match (&r.port, &r.scheme) {
        (None, Some(_)) if scheme_out != scheme => String::new(),
        _ => fill(&r.port, &port_text),
    };
    let path_out = fill(&r.path, path);
    let query_out = fill(&r.query, query);
    let default_port = match scheme_out.as_str() {
        "https" => "443",
        _ => "80",
    };
    let mut out = format!("{scheme_out}://{host_out}");
    if !port_out.is_empty() && port_out != default_port {
        out.push(':');
        out.push_str(&port_out);
    }
    out.push_str(&path_out);
    if !query_out.is_empty() {
        out.push('?');
        out.push_str(&query_out);
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn host_values_are_names_addresses_and_ports_only() {
        for good in [
            "example.com",
            "a-b.c_d~e:8080",
            "127.0.0.1:80",
            "[::1]",
            "[2001:db8::1]:443",
            "%41b",
            "x!$&'()*+;=",
        ] {
            assert!(valid_host(good.as_bytes()), "{good}");
        }
        for bad in [
            "x y",
            "user@x",
            "a,b",
            "x:port",
            "x:1234567",
            "[zz]",
            "[]",
            "[::1",
            "%4",
            "%zz",
            "x/y",
            "é",
        ] {
            assert!(!valid_host(bad.as_bytes()), "{bad}");
        }
    }

    fn req(uri: &str, host: &str) -> Request<()> {
        Request::get(uri).header("host", host).body(()).unwrap()
    }

    #[test]
    fn redirect_locations() {
        let to_https = Redirect {
            status: 301,
            scheme: Some("https".into()),
            host: None,
            port: None,
            path: None,
            query: None,
        };
        let r = req("/a/b?x=1", "shop.example:8080");
        assert_eq!(
            location(&to_https, &r, "http", 8080),
            "https://shop.example/a/b?x=1"
        );
        let moved = Redirect {
            status: 302,
            scheme: None,
            host: Some("new.#{host}".into()),
            port: Some("#{port}".into()),
            path: Some("/v2#{path}".into()),
            query: Some("#{query}&from=old".into()),
        };
        assert_eq!(
            location(&moved, &r, "http", 8080),
            "http://new.shop.example:8080/v2/a/b?x=1&from=old"
        );
        let plain = req("/", "[fd77::1]:80");
        assert_eq!(host_of(&plain).as_deref(), Some("fd77::1"));
    }
}
