//! The config file as a way to change the cluster: re-read on SIGHUP and
//! when its contents change, and applied like `keel apply -f` (only the
//! differences are proposed). A bad file is reported and nothing changes.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use keel_model::{ClusterCommand, Command};
use keel_web::ControlPlane;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

/// Watches `path` until `stop` turns true, applying each valid new version.
pub(crate) async fn watch<C: ControlPlane>(
    path: PathBuf,
    control: Arc<C>,
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
        // Read in place: a small local file takes microseconds, and going
        // through the blocking pool once a second would keep its threads
        // alive, making every socket call of the data plane pay for a
        // shared file table (BENCHMARKS.md).
        let text = match std::fs::read_to_string(&path) {
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
        let (_, state) = control.state();
        let changes = state.spec.diff(&spec);
        if changes.is_empty() {
            continue;
        }
        let described: Vec<String> = changes.iter().map(ToString::to_string).collect();
        match control
            .propose(ClusterCommand::Spec(Command::Batch(changes)))
            .await
        {
            Ok(version) => {
                for change in described {
                    tracing::info!(version, %change, file = %path.display(), "config change from file");
                }
            }
            Err(e) => {
                tracing::error!(file = %path.display(), error = %e, "config file change not applied")
            }
        }
    }
}
