//! Active health checks: one task per member of a pool with a check. A
//! member whose checks another node runs (see
//! [`crate::Dataplane::set_checking`]) is skipped until told otherwise.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use keel_model::{CheckKind, HealthCheck, MemberTls};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::member::MemberState;
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
}

impl PartialEq for Probe {
    fn eq(&self, other: &Self) -> bool {
        (&self.check, &self.tls_spec, self.http2) == (&other.check, &other.tls_spec, other.http2)
    }
}

async fn probe(member: &MemberState, with: &Probe) -> Result<(), String> {
    let target = with.check.port.map_or(member.address, |port| {
        std::net::SocketAddr::new(member.address.ip(), port)
    });
    let stream = TcpStream::connect(target)
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
    let host = host.clone().unwrap_or_else(|| target.to_string());
    let scheme = if with.tls.is_some() { "https" } else { "http" };
    let mut request = http::Request::builder()
        .method(method.as_str())
        .header(http::header::USER_AGENT, "keel-health-check");
    request = if with.http2 {
        request.uri(format!("{scheme}://{host}{path}"))
    } else {
        request
            .uri(path.as_str())
            .header(http::header::HOST, host)
            .header(http::header::CONNECTION, "close")
    };
    let request = request
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("request: {e}"))?;
    let alpn = if with.http2 { Alpn::Http2 } else { Alpn::Http1 };
    let io = match &with.tls {
        None => Upstream::Plain(stream),
        Some(tls) => Upstream::Tls(Box::new(
            tls.connect(stream, target, alpn)
                .await
                .map_err(|e| format!("tls: {e}"))?,
        )),
    };
    let io = TokioIo::new(io);
    let response = if with.http2 {
        let (mut sender, conn) =
            hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                .handshake(io)
                .await
                .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(conn);
        sender.send_request(request).await
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(conn);
        sender.send_request(request).await
    }
    .map_err(|e| format!("request: {e}"))?;
    let status = response.status().as_u16();
    if expected_codes.contains(status) {
        Ok(())
    } else {
        Err(format!("status {status}, expected {expected_codes}"))
    }
}
