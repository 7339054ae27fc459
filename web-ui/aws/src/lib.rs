//! The AWS-compatible endpoint (`--aws-api-addr`): the Elastic Load
//! Balancing Query API. Any path, GET query or POST form; every request is
//! SigV4-signed with a Keel-issued access key; `Action` and `Version` pick
//! the call; answers are the XML the AWS SDKs parse.
//!
//! Classic ELB (`elb`, 2012-06-01) and ELBv2 (`elbv2`, 2015-12-01) are one
//! file each, over this module's request handling and the compatibility
//! kernel (`keel_compat`); neither calls the other.

mod elb;
mod elbv2;
#[doc(hidden)]
pub mod fuzz;
mod sigv4;
mod tags;

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::{ConnectInfo, DefaultBodyLimit, Request, State};
use axum::response::{IntoResponse, Response};
use axum::Router;
use http::{header, HeaderMap, Method, StatusCode, Uri};

use keel_model::{ClusterCommand, ClusterState, Document, Spec};

use keel_compat::{hex_id, Notes, Refused, Writer};
use keel_web_core::auth::Attempts;
use keel_web_core::ControlPlane;

/// XML namespace of ELBv2 answers.
pub(crate) const NS_V2: &str = "http://elasticloadbalancing.amazonaws.com/doc/2015-12-01/";
/// XML namespace of classic ELB answers.
pub(crate) const NS_V1: &str = "http://elasticloadbalancing.amazonaws.com/doc/2012-06-01/";

pub(crate) struct Aws<C> {
    pub control: Arc<C>,
    /// The one region this endpoint serves (signatures must be scoped to it).
    pub region: String,
    /// Signatures of changes already made, within the clock-skew window.
    replays: Replays,
    /// Requests with bad signatures, per client address (20 a minute).
    failures: Attempts<IpAddr>,
    /// May ELB and ELBv2 see and change what other managers set
    /// (`keel_compat::visible`)?
    adopt: bool,
}

/// The AWS-compatible API's router. Serve it with connect info
/// (`into_make_service_with_connect_info::<SocketAddr>`) so bad signatures
/// are limited per client.
/// With `adopt`, ELB and ELBv2 see and change everything, not only what
/// they made (and what no manager has).
pub fn router<C: ControlPlane>(control: Arc<C>, region: String, adopt: bool) -> Router {
    Router::new()
        .fallback(handle::<C>)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(Arc::new(Aws {
            control,
            region,
            replays: Replays::default(),
            failures: Attempts::new(20, Duration::from_secs(60)),
            adopt,
        }))
}

const BODY_LIMIT: usize = 1024 * 1024;

#[cfg(test)]
impl<C> Aws<C> {
    /// The endpoint over `control`, as [`router`] makes it.
    pub(crate) fn testing(control: Arc<C>) -> Aws<C> {
        Aws {
            control,
            region: "us-east-1".into(),
            replays: Replays::default(),
            failures: Attempts::new(20, Duration::from_secs(60)),
            adopt: false,
        }
    }
}

/// The signatures of changes made, each kept until its `X-Amz-Date` is out
/// of the clock-skew window (after which the request is refused as expired
/// anyway), with the connection that sent it: a captured change replayed
/// from another connection is refused. A signature is the same for the same
/// request in the same second, so a client may legitimately send the same
/// bytes twice (`DeleteLoadBalancer` again, "gone already: no error"); it
/// does so on its own connection, which an attacker cannot use. Changes that
/// failed are forgotten (a client retries `DeleteLoadBalancerPolicy` after
/// "policy in use" with the same bytes, perhaps on a new connection), and
/// reads are not recorded: replaying either changes nothing now.
#[derive(Default)]
struct Replays(Mutex<HashMap<String, (u64, Option<SocketAddr>)>>);

impl Replays {
    /// Records `signature` (valid until `until`, Unix seconds) as sent on
    /// connection `from`; false when another connection sent it first.
    fn admit(&self, signature: &str, until: u64, from: Option<SocketAddr>, now: u64) -> bool {
        let mut seen = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if seen.len() >= 10_000 {
            seen.retain(|_, (until, _)| *until > now);
        }
        match seen.get(signature) {
            Some((until, first)) if *until > now => from.is_some() && *first == from,
            _ => {
                seen.insert(signature.to_owned(), (until, from));
                true
            }
        }
    }

    /// Forgets `signature`: its change failed.
    fn forget(&self, signature: &str) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(signature);
    }
}

/// The account number in ARNs (Keel has one).
pub(crate) const ACCOUNT: &str = "000000000000";

/// Keel's answer to the DNS-name question: names resolve however the
/// operator arranges; the VIP (if any) is what clients use.
const DNS_SUFFIX: &str = "elb.keel.internal";

/// A load balancer's DNS name (the same in both ELB APIs).
pub(crate) fn dns_name(lb: &str) -> String {
    format!("{lb}-{}.{DNS_SUFFIX}", &hex_id(lb)[..8])
}

/// One signed call: the endpoint and who is calling, with what both ELB
/// APIs share.
pub(crate) struct Call<'a, C> {
    pub aws: &'a Aws<C>,
    /// Who the change is recorded as made by.
    pub by: &'a str,
    /// The manager of what it creates or changes: `elb` or `elbv2`.
    pub manager: &'static str,
}

impl<C: ControlPlane> Call<'_, C> {
    /// The compatibility kernel for this caller.
    fn writer(&self) -> Writer<'_, C> {
        Writer {
            control: &*self.aws.control,
            by: self.by,
            manager: self.manager,
            adopt: self.aws.adopt,
        }
    }

    /// This node's provisioning status (`keel_compat::Provisioning`).
    pub fn provisioning(&self) -> keel_compat::Provisioning {
        self.writer().provisioning()
    }

    /// The config as this API sees it: its own objects, and those no
    /// manager has set (`keel_compat::visible`).
    pub fn state(&self) -> Arc<ClusterState> {
        Arc::new(self.writer().state())
    }

    pub fn arn(&self, rest: &str) -> String {
        format!(
            "arn:aws:elasticloadbalancing:{}:{ACCOUNT}:{rest}",
            self.aws.region
        )
    }

    /// Applies `edit` to the current config and commits the difference.
    pub async fn change(
        &self,
        edit: impl FnMut(&mut Document) -> Result<(), AwsError>,
    ) -> Result<Spec, AwsError> {
        self.change_noting(edit, Vec::new()).await
    }

    /// Like [`Call::change`], with annotations (`object`, values; none
    /// removes them) set in the same atomic entry.
    pub async fn change_noting(
        &self,
        edit: impl FnMut(&mut Document) -> Result<(), AwsError>,
        notes: Notes,
    ) -> Result<Spec, AwsError> {
        self.writer()
            .change(edit, notes)
            .await
            .map_err(|refused| match refused {
                Refused::Edit(e) => e,
                Refused::Invalid(e) => AwsError::bad("ValidationError", e.replace("\n  ", "; ")),
                Refused::NotOurs(e) => AwsError::bad("ValidationError", e),
                Refused::Commit(e) => commit_error(&e),
            })
    }

    /// Commits `command` and, like every change here, answers once this
    /// node serves it (or after two seconds), so an answer and the
    /// client's next call see it `active`.
    pub async fn commit(&self, command: ClusterCommand) -> Result<(), AwsError> {
        let writer = self.writer();
        writer.commit(command).await.map_err(|e| commit_error(&e))?;
        writer.caught_up().await;
        Ok(())
    }

    /// `object`'s annotations (empty when it has none).
    pub fn annotations(&self, object: &str) -> BTreeMap<String, String> {
        self.state()
            .annotations
            .get(object)
            .cloned()
            .unwrap_or_default()
    }

    /// Replaces `object`'s annotations (none: removes them), if they differ.
    pub async fn annotate(
        &self,
        object: &str,
        values: BTreeMap<String, String>,
    ) -> Result<(), AwsError> {
        if self.annotations(object) == values {
            return Ok(());
        }
        let (_, state) = self.aws.control.state();
        self.commit(keel_compat::annotate(&state, object, values))
            .await
    }
}

fn commit_error(e: &keel_web_core::ApiError) -> AwsError {
    AwsError::new(e.status().as_u16(), "ValidationError", e.message())
}

/// An error as the SDKs parse it: `<ErrorResponse><Error><Code>`.
#[derive(Debug)]
pub(crate) struct AwsError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
}

impl AwsError {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        AwsError {
            status,
            code,
            message: message.into(),
        }
    }

    /// A 400 with `code`.
    pub fn bad(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(400, code, message)
    }
}

/// The request's parameters, from the query string and a form body.
pub(crate) struct Params(Vec<(String, String)>);

impl Params {
    /// Both sources are form-encoded (`+` is a space, as libcloud and boto
    /// send query strings).
    pub(crate) fn parse(query: &str, form: Option<&[u8]>) -> Self {
        let body = form.map(String::from_utf8_lossy).unwrap_or_default();
        let pairs = [query, &body]
            .into_iter()
            .flat_map(crate::sigv4::form_pairs)
            .map(|(k, v)| {
                // libcloud's policy attributes arrive with whitespace inside
                // their names (`PolicyAttributes.member.1.  AttributeName`).
                let key: Vec<&str> = k.split('.').map(str::trim).collect();
                (key.join("."), v)
            })
            .collect();
        Params(pairs)
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// A required parameter.
    pub fn need(&self, key: &str) -> Result<&str, AwsError> {
        self.get(key).filter(|v| !v.is_empty()).ok_or_else(|| {
            AwsError::bad(
                "ValidationError",
                format!("1 validation error detected: Value null at '{key}' failed to satisfy constraint: Member must not be null"),
            )
        })
    }

    /// `PREFIX.member.N` values in order of N.
    pub fn list(&self, prefix: &str) -> Vec<String> {
        self.structs(prefix)
            .into_iter()
            .filter_map(|m| m.get("").cloned())
            .collect()
    }

    /// `PREFIX.member.N[.FIELD…]` grouped by N (in order), each a map from
    /// the field path after `N.` (`""` for the value itself).
    pub fn structs(&self, prefix: &str) -> Vec<BTreeMap<String, String>> {
        let lead = format!("{prefix}.member.");
        let mut by_n: BTreeMap<u32, BTreeMap<String, String>> = BTreeMap::new();
        for (k, v) in &self.0 {
            let Some(rest) = k.strip_prefix(&lead) else {
                continue;
            };
            let (n, field) = rest.split_once('.').unwrap_or((rest, ""));
            if let Ok(n) = n.parse::<u32>() {
                by_n.entry(n)
                    .or_default()
                    .insert(field.to_owned(), v.clone());
            }
        }
        by_n.into_values().collect()
    }
}

/// Escapes text for XML.
pub(crate) fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// `<tag>text</tag>`, escaped.
pub(crate) fn el(tag: &str, text: &str) -> String {
    format!("<{tag}>{}</{tag}>", esc(text))
}

fn request_id() -> String {
    let mut b = [0u8; 16];
    let _ = getrandom::fill(&mut b);
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

fn xml(status: u16, body: String) -> Response {
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
        [(header::CONTENT_TYPE, "text/xml")],
        body,
    )
        .into_response()
}

fn error_response(ns: &str, e: &AwsError, id: &str) -> Response {
    let kind = if e.status >= 500 {
        "Receiver"
    } else {
        "Sender"
    };
    xml(
        e.status,
        format!(
            "<ErrorResponse xmlns=\"{ns}\"><Error><Type>{kind}</Type>{}{}</Error>{}</ErrorResponse>",
            el("Code", e.code),
            el("Message", &e.message),
            el("RequestId", id)
        ),
    )
}

async fn handle<C: ControlPlane>(
    State(aws): State<Arc<Aws<C>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    request: Request,
) -> Response {
    let id = request_id();
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let client = peer.map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |p| p.ip());
    let body = match axum::body::to_bytes(request.into_body(), BODY_LIMIT).await {
        Ok(body) => body,
        Err(_) => {
            let e = AwsError::bad("InvalidRequest", "the request body is too large or broken");
            return error_response(NS_V2, &e, &id);
        }
    };
    let query = uri.query().unwrap_or("");
    let form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/x-www-form-urlencoded"));
    let params = Params::parse(query, form.then_some(&body[..]));
    let version = params.get("Version").unwrap_or_default().to_owned();
    let ns = if version == "2012-06-01" {
        NS_V1
    } else {
        NS_V2
    };
    if let Err(wait) = aws.failures.left(&client) {
        let e = AwsError::new(
            400,
            "Throttling",
            format!(
                "Rate exceeded: too many requests with bad signatures; try again in {} s",
                wait.as_secs().max(1)
            ),
        );
        return error_response(ns, &e, &id);
    }
    let (_, state) = aws.control.state();
    let now = keel_web_core::now();
    let signed = crate::sigv4::verify(
        &crate::sigv4::Request {
            method: method.as_str(),
            path: uri.path(),
            query,
            headers: &headers,
            body: &body,
        },
        |key| keel_web_core::awskeys::secret_of(&state, key),
        &aws.region,
        now,
    );
    let signed = match signed {
        Ok(s) => s,
        Err(r) => {
            let _ = aws.failures.attempt(&client);
            tracing::info!(%client, code = r.code, "aws api request refused");
            return error_response(ns, &AwsError::new(r.status, r.code, r.message), &id);
        }
    };
    let user = state
        .aws_keys
        .get(&signed.access_key_id)
        .map_or_else(|| signed.access_key_id.clone(), |k| k.user.clone());
    let by = format!("{user} (aws key {})", signed.access_key_id);
    let Some(action) = params.get("Action").map(str::to_owned) else {
        return error_response(
            ns,
            &AwsError::bad("MissingAction", "Action is required"),
            &id,
        );
    };
    let changes = !action.starts_with("Describe");
    let allowed = keel_web_core::access::Caller::of_user(&state, &user)
        .ok_or_else(|| format!("user {user:?} does not exist"))
        .and_then(|caller| {
            keel_web_core::access::authorize_compat(&caller, changes)
                .map_err(|e| e.message().to_owned())
        });
    if let Err(message) = allowed {
        tracing::info!(%client, action = %action, user = %user, "aws api request refused: {message}");
        return error_response(ns, &AwsError::new(403, "AccessDenied", message), &id);
    }
    let until = signed.signed_at + crate::sigv4::MAX_SKEW_SECS;
    if changes && !aws.replays.admit(&signed.signature, until, peer, now) {
        tracing::warn!(%client, action = %action, "aws api request replayed");
        let e = AwsError::new(
            403,
            "InvalidSignatureException",
            "This signed request was already received: sign each request anew.",
        );
        return error_response(ns, &e, &id);
    }
    let call = |manager| Call {
        aws: &aws,
        by: &by,
        manager,
    };
    let result = match version.as_str() {
        "2015-12-01" => elbv2::serve(call("elbv2"), &action, &params).await,
        "2012-06-01" => elb::serve(call("elb"), &action, &params).await,
        other => Err(AwsError::bad(
            "InvalidAction",
            format!("unknown API version {other:?} (expected 2012-06-01 or 2015-12-01)"),
        )),
    };
    if changes && result.is_err() {
        aws.replays.forget(&signed.signature);
    }
    match result {
        Ok(inner) => xml(
            200,
            format!(
                "<{action}Response xmlns=\"{ns}\"><{action}Result>{inner}</{action}Result><ResponseMetadata>{}</ResponseMetadata></{action}Response>",
                el("RequestId", &id)
            ),
        ),
        Err(e) => {
            tracing::debug!(action = %action, code = e.code, message = %e.message, "aws api call failed");
            error_response(ns, &e, &id)
        }
    }
}
