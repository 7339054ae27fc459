//! Active health checks: one task per member of a pool with a check. A
//! member whose checks another node runs (see
//! [`crate::Dataplane::set_checking`]) is skipped until told otherwise.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use keel_model::{CheckKind, HealthCheck};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::member::MemberState;

/// Runs `check` against `member` until `stop` fires, flipping its health
/// after the configured number of consecutive passes or failures.
///
/// A member starts up (so a new pool serves at once) but unconfirmed: its
/// first check failing takes it down at once, without waiting for
/// `unhealthy_threshold` failures.
pub(crate) async fn run(member: Arc<MemberState>, check: HealthCheck, stop: CancellationToken) {
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
            r = tokio::time::timeout(check.timeout, probe(&member, &check)) => {
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

async fn probe(member: &MemberState, check: &HealthCheck) -> Result<(), String> {
    let stream = TcpStream::connect(member.address)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let CheckKind::Http {
        method,
        path,
        host,
        expected_codes,
    } = &check.kind
    else {
        return Ok(());
    };
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(conn);
    let host = host.clone().unwrap_or_else(|| member.address.to_string());
    let request = http::Request::builder()
        .method(method.as_str())
        .uri(path.as_str())
        .header(http::header::HOST, host)
        .header(http::header::USER_AGENT, "keel-health-check")
        .header(http::header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("request: {e}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("request: {e}"))?;
    let status = response.status().as_u16();
    if expected_codes.contains(status) {
        Ok(())
    } else {
        Err(format!("status {status}, expected {expected_codes}"))
    }
}
