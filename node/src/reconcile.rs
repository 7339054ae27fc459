//! The data-plane reconciler: every applied cluster state whose spec differs
//! from what the data plane serves is applied to it. Runs on every node,
//! leader and followers alike. A spec the data plane refuses (a port in use
//! on this host) keeps the old plan serving, is retried, and marks the node
//! unhealthy (it then holds no VIP) until it succeeds.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use keel_consensus::Applied;
use keel_dataplane::Dataplane;
use keel_model::Spec;
use tokio::sync::watch;

/// How soon a refused spec is tried again.
const RETRY: Duration = Duration::from_secs(2);

pub(crate) async fn run(
    mut applied: watch::Receiver<Applied>,
    dataplane: Arc<Dataplane>,
    serving: Arc<AtomicU64>,
    healthy: watch::Sender<bool>,
    mut stop: watch::Receiver<bool>,
) {
    let mut current: Option<Spec> = None;
    let mut cookies: Vec<Vec<u8>> = Vec::new();
    let mut failed = false;
    loop {
        let next = applied.borrow_and_update().clone();
        if next.state.identity.is_some() {
            // Every node derives the same sticky-cookie keys from the
            // replicated cluster secret; new ones need the plans compiled
            // again.
            let wanted = crate::secrets::cookie_secrets(&next.state);
            if wanted != cookies {
                dataplane.set_cookie_secrets(&wanted).await;
                if current.is_some() {
                    tracing::info!(
                        "the cluster secret changed: signing sticky cookies with the new key"
                    );
                }
                cookies = wanted;
                current = None;
            }
            if current.as_ref() == Some(&next.state.spec) {
                serving.store(next.index, Ordering::Relaxed);
                failed = false;
            } else {
                match dataplane.apply(&next.state.spec).await {
                    Ok(_) => {
                        if let Some(old) = &current {
                            for change in old.diff(&next.state.spec) {
                                tracing::info!(version = next.index, %change, "serving config change");
                            }
                        }
                        current = Some(next.state.spec.clone());
                        serving.store(next.index, Ordering::Relaxed);
                        failed = false;
                    }
                    Err(e) => {
                        if !failed {
                            tracing::error!(version = next.index, error = %e, "cannot serve this config version; keeping the previous one and retrying");
                        }
                        failed = true;
                    }
                }
            }
        }
        healthy.send_if_modified(|h| {
            let changed = *h == failed;
            *h = !failed;
            changed
        });
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            changed = applied.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(RETRY), if failed => {}
        }
    }
}
