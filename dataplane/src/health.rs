//! Active health checks: one task per member of a pool with a check. A
//! member whose checks another node runs (see
//! [`crate::Dataplane::set_checking`]) is skipped until told otherwise.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::Empty;
use keel_model::{CheckKind, HealthCheck, MemberTls, ProxyProtocol};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::client::{self, SendError};
use crate::member::MemberState;
use crate::proxy_protocol;
use crate::tcp::Upstream;
use crate::tls::{Alpn, MemberTlsPlan};

/// Runs `check` against `member` until `stop` fires, flipping its health
/// after the configured number of consecutive passes or failures.
///
/// A member starts up (so a new pool serves at once) but unconfirmed: its
/// first check failing takes it down at once, without waiting for
/// `unhealthy_threshold` failures.
pub(crate) async fn run(member: Arc<MemberState>, probe_with: Probe, stop: CancellationToken) {
    let check = &probe_with.check;
    let mut ticks = tokio::time::interval(check.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut passes, mut failures) = (0u32, 0u32);
    let mut confirmed = false;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        if !member.checks_here() {
            // Another node checks it; start afresh if the job comes back.
            (passes, failures) = (0, 0);
            continue;
        }
        let started = Instant::now();
        let result = tokio::select! {
            _ = stop.cancelled() => return,
            r = tokio::time::timeout(check.timeout, probe(&member, &probe_with)) => {
                r.unwrap_or_else(|_| Err(format!("no answer within {:?}", check.timeout)))
            }
        };
        member.record_check(started.elapsed());
        match result {
            Ok(()) => {
                passes += 1;
                failures = 0;
                confirmed = true;
                if !member.is_up() && passes >= check.healthy_threshold && member.set_up(true) {
                    tracing::info!(pool = %member.pool, member = %member.address, passes,
                        latency_ms = started.elapsed().as_millis() as u64, "member is up");
                }
            }
            Err(reason) => {
                failures += 1;
                passes = 0;
                let threshold = if confirmed {
                    check.unhealthy_threshold
                } else {
                    1
                };
                if member.is_up() && failures >= threshold && member.set_up(false) {
                    tracing::warn!(pool = %member.pool, member = %member.address, failures, %reason, "member is down");
                }
                confirmed = true;
            }
        }
    }
}

/// A health check as it runs: the pool's check, and how the pool speaks to
/// its members (HTTP checks go over the pool's TLS and HTTP version).
#[derive(Clone)]
pub(crate) struct Probe {
    pub check: HealthCheck,
    pub tls_spec: Option<MemberTls>,
    pub tls: Option<Arc<MemberTlsPlan>>,
    pub http2: bool,
    /// The PROXY header the pool sends its members, if any.
    pub proxy_protocol: Option<ProxyProtocol>,
}

impl PartialEq for Probe {
    fn eq(&self, other: &Self) -> bool {
        (&self.check, &self.tls_spec, self.http2, self.proxy_protocol)
            == (
                &other.check,
                &other.tls_spec,
                other.http2,
                other.proxy_protocol,
            )
    }
}

async fn probe(member: &MemberState, with: &Probe) -> Result<(), String> {
    let target = with.check.port.map_or(member.address, |port| {
        std::net::SocketAddr::new(member.address.ip(), port)
    });
    let mut stream = TcpStream::connect(target)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let CheckKind::Http {
        method,
        path,
        host,
        expected_codes,
    } = &with.check.kind
    else {
        return Ok(());
    };
    let _ = stream.set_nodelay(true);
    // A member that expects a PROXY header on every connection gets one
    // that names no client, as a check is Keel's own connection. A check
    // on another port (`port`) reaches something else, which was not
    // said to take one (HAProxy's `send-proxy` rule for checks).
    if let Some(version) = with.proxy_protocol.filter(|_| target == member.address) {
        stream
            .write_all(&proxy_protocol::encode_local(version))
            .await
            .map_err(|e| format!("proxy header: {e}"))?;
    }
    let host = host.clone().unwrap_or_else(|| target.to_string());
    let alpn = if with.http2 { Alpn::Http2 } else { Alpn::Http1 };
    let io = match &with.tls {
        None => Upstream::Plain(stream),
        Some(tls) => Upstream::Tls(Box::new(
            tls.connect(stream, target, alpn)
                .await
                .map_err(|e| format!("tls: {e}"))?,
        )),
    };
    let method = http::Method::from_bytes(method.as_bytes()).map_err(|e| format!("method: {e}"))?;
    let status = if with.http2 {
        let scheme = if with.tls.is_some() { "https" } else { "http" };
        let request = http::Request::builder()
            .method(method)
            .uri(format!("{scheme}://{host}{path}"))
            .header(http::header::USER_AGENT, "keel-health-check")
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("request: {e}"))?;
        let mut sender = crate::http::h2_member::handshake(io, target, with.check.timeout)
            .await
            .map_err(|e| format!("handshake: {e}"))?
            .sender;
        sender
            .send_request(request)
            .await
            .map_err(|e| format!("request: {e}"))?
            .status()
    } else {
        // HTTP/1.1 through the member client that carries traffic: a
        // response traffic would refuse fails the check too.
        client::Conn::new(io)
            .check(&method, path, &host, with.check.timeout)
            .await
            .map_err(|e| match e {
                SendError::Upstream(e) => format!("response: {e}"),
                SendError::Timeout => format!("no answer within {:?}", with.check.timeout),
                SendError::Stale(_) => "closed by the member".to_owned(),
                SendError::ClientBody(e) => e.to_string(),
            })?
    }
    .as_u16();
    if expected_codes.contains(status) {
        Ok(())
    } else {
        Err(format!("status {status}, expected {expected_codes}"))
    }
}
