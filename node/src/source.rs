//! The config file as a way to change the cluster: re-read on SIGHUP and
//! when its contents change, and applied like `keel apply -f --prune` as
//! the manager `file` (only the differences are proposed). A bad file is reported and nothing changes.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use keel_model::{ClusterCommand, Object, Refusal};
use keel_web_core::apply::{Mode, Plan};
use keel_web_core::{ControlError, ControlPlane};
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
        // The file is its manager's whole say: what it no longer has that
        // it applied before goes; what others set stays. Committed only
        // while the config is the one planned against (a registration that
        // came between is not undone), else planned again.
        let mut outcome = None;
        for _ in 0..5 {
            let (_, state) = control.state();
            let mode = Mode {
                prune: true,
                ..Mode::default()
            };
            let plan = match Plan::new(&state, "file", &spec, mode) {
                Ok(plan) => plan,
                Err(e) => {
                    tracing::error!(file = %path.display(), "config not applied; keeping the running one: {e}");
                    break;
                }
            };
            if let Some(refusal) = plan.refusal() {
                tracing::error!(file = %path.display(), "config not applied: {refusal}");
                break;
            }
            let described = plan.objects.clone();
            let expect = state
                .spec
                .etag(&Object::Config)
                .filter(|_| state.version() >= 4)
                .map(|etag| ClusterCommand::Expect {
                    object: Object::Config,
                    etag,
                });
            let Some(command) = plan.command(expect) else {
                break;
            };
            let command = ClusterCommand::Authored {
                by: "config file".to_owned(),
                at: keel_web_core::now(),
                command: Box::new(command),
            };
            let result = control.propose(command).await;
            // This node's copy was behind, or a write came between.
            let stale = matches!(result, Err(ControlError::Refused(Refusal::Stale(_))));
            outcome = Some((result, described));
            if !stale {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let Some((result, described)) = outcome else {
            continue;
        };
        match result {
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
