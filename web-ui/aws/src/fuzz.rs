//! Entry points for fuzzing the AWS endpoints' parser of untrusted bytes
//! (see `keel_dataplane::fuzz`): each must return without panicking
//! whatever it is given.

use http::{HeaderMap, HeaderName, HeaderValue};

/// A SigV4-signed request: `data` is read as a request line (`METHOD
/// path?query`), header lines up to an empty line, then the body, and
/// checked as the AWS endpoints check it.
pub fn sigv4(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (head, body) = text.split_once("\n\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let (method, target) = lines
        .next()
        .and_then(|l| l.split_once(' '))
        .unwrap_or(("POST", "/"));
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut headers = HeaderMap::new();
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.trim().as_bytes()),
            HeaderValue::from_str(value.trim()),
        ) {
            headers.append(n, v);
        }
    }
    let req = crate::sigv4::Request {
        method,
        path,
        query,
        headers: &headers,
        body: body.as_bytes(),
    };
    let secret = |id: &str| (id == "AKIDEXAMPLE").then(|| "secret".to_owned());
    let _ = crate::sigv4::verify(&req, secret, "us-east-1", 1_700_000_000);
    let _ = crate::sigv4::decode(&text);
}
