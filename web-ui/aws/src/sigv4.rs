//! AWS Signature Version 4, verified strictly: the scope, the clock and
//! every signed header are checked before the signature is computed.

use hmac::{Hmac, Mac};
use http::HeaderMap;
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// How far a request's timestamp may be from this node's clock (as AWS).
pub const MAX_SKEW_SECS: u64 = 15 * 60;

/// The service name the credential's scope must carry.
pub const SERVICE: &str = "elasticloadbalancing";

/// Why a request's signature is refused: an AWS error code, its HTTP
/// status and a message.
#[derive(Debug, PartialEq, Eq)]
pub struct Refused {
    pub code: &'static str,
    pub status: u16,
    pub message: String,
}

fn refused(code: &'static str, status: u16, message: impl Into<String>) -> Refused {
    Refused {
        code,
        status,
        message: message.into(),
    }
}

/// What a verified request was signed with.
#[derive(Debug, PartialEq, Eq)]
pub struct Signed {
    pub access_key_id: String,
    pub region: String,
    /// The signature (hex): the same bytes signed again give the same one,
    /// so it names the request for a replay cache.
    pub signature: String,
    /// When it was signed (Unix seconds, from `X-Amz-Date`).
    pub signed_at: u64,
}

/// The scope boto 2 derives from an IP-address `Host` (it reads the service
/// and region from the host's first two labels: `127.0.0.1` signs for region
/// `0`, service `127`): `(region, service)`.
fn scope_from_ip_host(headers: &HeaderMap) -> Option<(&str, &str)> {
    let host = headers.get(http::header::HOST)?.to_str().ok()?;
    let name = host.rsplit_once(':').map_or(host, |(name, _)| name);
    name.parse::<std::net::Ipv4Addr>().ok()?;
    let mut labels = name.split('.');
    let service = labels.next()?;
    Some((labels.next()?, service))
}

/// The parts of a request a signature covers.
pub struct Request<'a> {
    pub method: &'a str,
    /// The path as sent (percent-encoded).
    pub path: &'a str,
    /// The raw query string, without `?`.
    pub query: &'a str,
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
}

/// Checks `req`'s SigV4 signature. `secret` looks up an access key's
/// secret; `region` is the one region this endpoint serves; `now` is Unix
/// seconds.
pub fn verify(
    req: &Request<'_>,
    secret: impl Fn(&str) -> Option<String>,
    region: &str,
    now: u64,
) -> Result<Signed, Refused> {
    let auth = req
        .headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            refused(
                "MissingAuthenticationToken",
                403,
                "Request is missing Authentication Token",
            )
        })?;
    let fields = auth.strip_prefix("AWS4-HMAC-SHA256 ").ok_or_else(|| {
        refused(
            "IncompleteSignature",
            400,
            "Authorization must use AWS4-HMAC-SHA256",
        )
    })?;
    let mut credential = None;
    let mut signed_headers = None;
    let mut signature = None;
    for part in fields.split(',').map(str::trim) {
        match part.split_once('=') {
            Some(("Credential", v)) => credential = Some(v),
            Some(("SignedHeaders", v)) => signed_headers = Some(v),
            Some(("Signature", v)) => signature = Some(v),
            _ => {}
        }
    }
    let (Some(credential), Some(signed_headers), Some(signature)) =
        (credential, signed_headers, signature)
    else {
        return Err(refused(
            "IncompleteSignature",
            400,
            "Authorization needs Credential, SignedHeaders and Signature",
        ));
    };
    let scope: Vec<&str> = credential.split('/').collect();
    let [key_id, date, cred_region, service, terminator] = scope[..] else {
        return Err(refused(
            "IncompleteSignature",
            400,
            "Credential must be KEY/DATE/REGION/SERVICE/aws4_request",
        ));
    };
    if terminator != "aws4_request" {
        return Err(refused(
            "IncompleteSignature",
            400,
            "Credential must end with aws4_request",
        ));
    }
    // The scope is this endpoint's, or the one a client derives from the IP
    // address it was given (and signs in the `host` header, checked below).
    let from_host = scope_from_ip_host(req.headers) == Some((cred_region, service));
    if service != SERVICE && !from_host {
        return Err(refused(
            "SignatureDoesNotMatch",
            403,
            format!("Credential should be scoped to correct service: '{SERVICE}'"),
        ));
    }
    if cred_region != region && !from_host {
        return Err(refused(
            "SignatureDoesNotMatch",
            403,
            format!("Credential should be scoped to a valid region, not '{cred_region}'; this endpoint serves '{region}'"),
        ));
    }
    let amz_date = req
        .headers
        .get("x-amz-date")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| refused("IncompleteSignature", 400, "X-Amz-Date header is missing"))?;
    let when = parse_amz_date(amz_date).ok_or_else(|| {
        refused(
            "IncompleteSignature",
            400,
            "X-Amz-Date must be YYYYMMDDTHHMMSSZ",
        )
    })?;
    if !amz_date.starts_with(date) {
        return Err(refused(
            "SignatureDoesNotMatch",
            403,
            "Credential date does not match X-Amz-Date",
        ));
    }
    if when.abs_diff(now) > MAX_SKEW_SECS {
        return Err(refused(
            "RequestExpired",
            400,
            "Request has expired: its X-Amz-Date is more than 15 minutes from the server's time",
        ));
    }
    let names: Vec<&str> = signed_headers.split(';').collect();
    if !names.contains(&"host") {
        return Err(refused(
            "SignatureDoesNotMatch",
            403,
            "the host header must be signed",
        ));
    }
    // The body is covered by the signature whatever the client says: a
    // payload hash it sends must be signed and must be the body's.
    let body_hash = hex(&Sha256::digest(req.body));
    if let Some(sent) = req.headers.get("x-amz-content-sha256") {
        if !names.contains(&"x-amz-content-sha256") {
            return Err(refused(
                "SignatureDoesNotMatch",
                403,
                "x-amz-content-sha256 must be signed when it is sent",
            ));
        }
        if sent.as_bytes() != body_hash.as_bytes() {
            return Err(refused(
                "XAmzContentSHA256Mismatch",
                400,
                "The provided 'x-amz-content-sha256' header does not match what was computed.",
            ));
        }
    }
    let Some(secret) = secret(key_id) else {
        return Err(refused(
            "InvalidClientTokenId",
            403,
            "The security token included in the request is invalid.",
        ));
    };

    let canonical = canonical_request(req, &names, &body_hash)
        .ok_or_else(|| refused("SignatureDoesNotMatch", 403, "a signed header is missing"))?;
    let scope = format!("{date}/{cred_region}/{service}/aws4_request");
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex(&Sha256::digest(canonical.as_bytes()))
    );
    let mut key = mac(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    for part in [cred_region, service, "aws4_request"] {
        key = mac(&key, part.as_bytes());
    }
    let expected = hex(&mac(&key, to_sign.as_bytes()));
    if !keel_model::constant_time_eq(expected.as_bytes(), signature.as_bytes()) {
        return Err(refused(
            "SignatureDoesNotMatch",
            403,
            "The request signature we calculated does not match the signature you provided.",
        ));
    }
    Ok(Signed {
        access_key_id: key_id.to_owned(),
        region: cred_region.to_owned(),
        signature: expected,
        signed_at: when,
    })
}

fn canonical_request(req: &Request<'_>, signed: &[&str], body_hash: &str) -> Option<String> {
    let mut out = String::new();
    out.push_str(req.method);
    out.push('\n');
    let path = if req.path.is_empty() { "/" } else { req.path };
    out.push_str(&encode(&decode(path), false));
    out.push('\n');
    let mut pairs: Vec<(String, String)> = req
        .query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            // A raw `+` is a form-encoded space (libcloud sends them so, and
            // signs `%20`); signers encode a real plus as `%2B`.
            let canonical = |s: &str| encode(&decode(&s.replace('+', " ")), true);
            (canonical(k), canonical(v))
        })
        .collect();
    pairs.sort();
    let query: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
    out.push_str(&query.join("&"));
    out.push('\n');
    for name in signed {
        let values: Vec<String> = req
            .headers
            .get_all(*name)
            .iter()
            .map(|v| {
                String::from_utf8_lossy(v.as_bytes())
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect();
        if values.is_empty() {
            return None;
        }
        out.push_str(&format!("{name}:{}\n", values.join(",")));
    }
    out.push('\n');
    out.push_str(&signed.join(";"));
    out.push('\n');
    out.push_str(body_hash);
    Some(out)
}

fn mac(key: &[u8], data: &[u8]) -> Vec<u8> {
    match HmacSha256::new_from_slice(key) {
        Ok(mut m) => {
            m.update(data);
            m.finalize().into_bytes().to_vec()
        }
        // HMAC takes keys of any length.
        Err(_) => Vec::new(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The decoded `key=value` pairs of form-encoded text (`+` is a space).
pub(crate) fn form_pairs(text: &str) -> Vec<(String, String)> {
    let clean = |s: &str| String::from_utf8_lossy(&decode(&s.replace('+', " "))).into_owned();
    text.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (clean(k), clean(v))
        })
        .collect()
}

/// Percent-decodes (`+` stays `+`: SigV4 clients encode spaces as %20).
pub fn decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let digit = |c: u8| (c as char).to_digit(16);
            if let (Some(hi), Some(lo)) = (digit(b[i + 1]), digit(b[i + 2])) {
                out.push((hi * 16 + lo) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// RFC 3986 encoding as SigV4 wants it: unreserved characters kept, the
/// rest `%XX` in capitals; `/` kept in paths.
fn encode(bytes: &[u8], slash: bool) -> String {
    let mut out = String::new();
    for &b in bytes {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) || (b == b'/' && !slash) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `20150830T123600Z` as Unix seconds.
fn parse_amz_date(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<u64>().ok();
    let (y, mo, d) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (h, mi, se) = (num(9..11)?, num(11..13)?, num(13..15)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let (y, m) = if mo <= 2 {
        (y - 1, mo + 9)
    } else {
        (y, mo - 3)
    };
    let era = y / 400;
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe;
    let days = days.checked_sub(719_468)?;
    Some(days * 86_400 + h * 3600 + mi * 60 + se)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_parse_to_unix_seconds() {
        assert_eq!(parse_amz_date("19700101T000000Z"), Some(0));
        assert_eq!(parse_amz_date("20150830T123600Z"), Some(1_440_938_160));
        assert_eq!(parse_amz_date("20240229T235959Z"), Some(1_709_251_199));
        for bad in [
            "",
            "2015-08-30T12:36:00Z",
            "20151330T123600Z",
            "20150830T123600",
        ] {
            assert_eq!(parse_amz_date(bad), None, "{bad}");
        }
    }

    #[test]
    fn malformed_authorization_is_refused_with_its_code() {
        let code = |auth: Option<&str>, date: Option<&str>| {
            let mut headers = HeaderMap::new();
            headers.insert("host", http::HeaderValue::from_static("lb"));
            if let Some(a) = auth {
                headers.insert("authorization", a.parse().expect("ascii"));
            }
            if let Some(d) = date {
                headers.insert("x-amz-date", d.parse().expect("ascii"));
            }
            let req = Request {
                method: "GET",
                path: "/",
                query: "Action=DescribeLoadBalancers",
                headers: &headers,
                body: b"",
            };
            let now = parse_amz_date("20260101T000000Z").expect("date");
            verify(&req, |_| Some("secret".into()), "us-east-1", now)
                .expect_err("refused")
                .code
        };
        let cred = |scope: &str| {
            format!("AWS4-HMAC-SHA256 Credential=AKIA/{scope}, SignedHeaders=host;x-amz-date, Signature=00")
        };
        let good_date = Some("20260101T000000Z");
        assert_eq!(code(None, good_date), "MissingAuthenticationToken");
        assert_eq!(code(Some("Basic abc"), good_date), "IncompleteSignature");
        assert_eq!(
            code(Some("AWS4-HMAC-SHA256 nonsense"), good_date),
            "IncompleteSignature"
        );
        assert_eq!(
            code(Some(&cred("20260101/us-east-1")), good_date),
            "IncompleteSignature"
        );
        let ok_scope = "20260101/us-east-1/elasticloadbalancing/aws4_request";
        assert_eq!(
            code(Some(&cred("20260101/us-east-1/s3/aws4_request")), good_date),
            "SignatureDoesNotMatch"
        );
        assert_eq!(
            code(
                Some(&cred(
                    "20260101/eu-west-1/elasticloadbalancing/aws4_request"
                )),
                good_date
            ),
            "SignatureDoesNotMatch"
        );
        assert_eq!(code(Some(&cred(ok_scope)), None), "IncompleteSignature");
        assert_eq!(
            code(Some(&cred(ok_scope)), Some("yesterday")),
            "IncompleteSignature"
        );
        assert_eq!(
            code(
                Some(&cred(
                    "20251231/us-east-1/elasticloadbalancing/aws4_request"
                )),
                good_date
            ),
            "SignatureDoesNotMatch"
        );
        let stale = "20251231T230000Z";
        let stale_scope = "20251231/us-east-1/elasticloadbalancing/aws4_request";
        assert_eq!(
            code(Some(&cred(stale_scope)), Some(stale)),
            "RequestExpired"
        );
        assert_eq!(
            code(Some(&cred(ok_scope)), good_date),
            "SignatureDoesNotMatch"
        );
    }

    const DATE: &str = "20260101T000000Z";

    /// Headers for a request signed as a client does: `host`, the date,
    /// `extra`, and an Authorization over `names` for `region`/`service`.
    fn signed(
        host: &str,
        body: &[u8],
        extra: &[(&'static str, &str)],
        names: &[&str],
        (region, service): (&str, &str),
    ) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("host", host.parse().expect("ascii"));
        headers.insert("x-amz-date", DATE.parse().expect("ascii"));
        for (k, v) in extra {
            headers.insert(*k, v.parse().expect("ascii"));
        }
        let req = Request {
            method: "POST",
            path: "/",
            query: "",
            headers: &headers,
            body,
        };
        let canonical =
            canonical_request(&req, names, &hex(&Sha256::digest(body))).expect("headers");
        let scope = format!("20260101/{region}/{service}/aws4_request");
        let to_sign = format!(
            "AWS4-HMAC-SHA256\n{DATE}\n{scope}\n{}",
            hex(&Sha256::digest(canonical.as_bytes()))
        );
        let mut key = mac(b"AWS4secret", b"20260101");
        for part in [region, service, "aws4_request"] {
            key = mac(&key, part.as_bytes());
        }
        let auth = format!(
            "AWS4-HMAC-SHA256 Credential=AKIA/{scope}, SignedHeaders={}, Signature={}",
            names.join(";"),
            hex(&mac(&key, to_sign.as_bytes()))
        );
        headers.insert("authorization", auth.parse().expect("ascii"));
        headers
    }

    fn check(headers: &HeaderMap, body: &[u8]) -> Result<Signed, Refused> {
        let req = Request {
            method: "POST",
            path: "/",
            query: "",
            headers,
            body,
        };
        let now = parse_amz_date(DATE).expect("date");
        verify(&req, |_| Some("secret".into()), "us-east-1", now)
    }

    #[test]
    fn the_body_is_covered_whatever_the_payload_header_says() {
        let scope = ("us-east-1", SERVICE);
        let body = b"Action=CreateTargetGroup&Name=a";
        let swapped = b"Action=DeleteTargetGroup&Name=a";
        let hash = hex(&Sha256::digest(body));
        // Signed without the header: the body is hashed here.
        let h = signed("lb", body, &[], &["host", "x-amz-date"], scope);
        assert!(check(&h, body).is_ok());
        assert_eq!(
            check(&h, swapped).unwrap_err().code,
            "SignatureDoesNotMatch"
        );
        // The original body's hash added unsigned, with another body.
        let mut forged = h.clone();
        forged.insert("x-amz-content-sha256", hash.parse().unwrap());
        let e = check(&forged, swapped).unwrap_err();
        assert_eq!((e.code, e.status), ("SignatureDoesNotMatch", 403));
        // Signed, but not the body's hash (or UNSIGNED-PAYLOAD).
        let names = ["host", "x-amz-content-sha256", "x-amz-date"];
        let h = signed(
            "lb",
            body,
            &[("x-amz-content-sha256", &hash)],
            &names,
            scope,
        );
        assert!(check(&h, body).is_ok());
        assert_eq!(
            check(&h, swapped).unwrap_err().code,
            "XAmzContentSHA256Mismatch"
        );
        let unsigned = [("x-amz-content-sha256", "UNSIGNED-PAYLOAD")];
        let h = signed("lb", body, &unsigned, &names, scope);
        assert_eq!(
            check(&h, body).unwrap_err().code,
            "XAmzContentSHA256Mismatch"
        );
    }

    #[test]
    fn a_scope_derived_from_an_ip_host_is_accepted_for_that_host_only() {
        let names = ["host", "x-amz-date"];
        let h = signed("127.0.0.1:8080", b"", &[], &names, ("0", "127"));
        let ok = check(&h, b"").expect("boto 2's scope for 127.0.0.1");
        assert_eq!(ok.region, "0");
        for (host, scope) in [
            ("10.1.2.3", ("0", "127")),
            ("127.0.0.1", ("1", "127")),
            ("lb.example", ("example", "lb")),
        ] {
            let h = signed(host, b"", &[], &names, scope);
            assert_eq!(
                check(&h, b"").unwrap_err().code,
                "SignatureDoesNotMatch",
                "{host}"
            );
        }
    }

    #[test]
    fn encoding_is_rfc3986() {
        assert_eq!(encode(b"a b/c~", true), "a%20b%2Fc~");
        assert_eq!(encode(b"/x y", false), "/x%20y");
        assert_eq!(decode("a%20b%2fc%zz%"), b"a b/c%zz%".to_vec());
    }
}
