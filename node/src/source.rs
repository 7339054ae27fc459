//! The config file as the source of truth: re-read on SIGHUP and when its
//! contents change. A bad file is reported and the running config stays.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use keel_dataplane::Dataplane;
use keel_model::Spec;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

/// Watches `path` until `stop` turns true, applying each valid new version.
pub(crate) async fn watch(
    path: PathBuf,
    mut current: Spec,
    dataplane: Arc<Dataplane>,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; watching the file only");
            None
        }
    };
    let mut last_text = std::fs::read_to_string(&path).ok();
    let mut ticks = tokio::time::interval(every);
    loop {
        let forced = tokio::select! {
            _ = stop.changed() => return,
            _ = ticks.tick() => false,
            Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => None } } => true,
        };
        let text = match tokio::fs::read_to_string(&path).await {
            Ok(t) => t,
            Err(e) => {
                if forced || last_text.is_some() {
                    tracing::error!(file = %path.display(), error = %e, "cannot read config; keeping the running one");
                }
                last_text = None;
                continue;
            }
        };
        if !forced && last_text.as_deref() == Some(text.as_str()) {
            continue;
        }
        last_text = Some(text.clone());
        let spec = match keel_model::Document::parse_spec(&text) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(file = %path.display(), "invalid config; keeping the running one: {e}");
                continue;
            }
        };
        if spec == current && !forced {
            continue;
        }
        let changes = current.diff(&spec);
        match dataplane.apply(&spec).await {
            Ok(version) => {
                for c in &changes {
                    tracing::info!(version, change = %c, "config change");
                }
                current = spec;
            }
            Err(e) => {
                tracing::error!(file = %path.display(), error = %e, "config not applied; keeping the running one")
            }
        }
    }
}
