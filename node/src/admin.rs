//! The admin HTTP listener: `/healthz`, `/readyz`, `/metrics`, and (on a
//! cluster node) the `/api/v1` and `/ui/` routers of `keel-api` and `keel-dashboard`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use keel_dataplane::Dataplane;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What the node adds to the data plane's view: readiness beyond having a
/// config, and metrics of its own.
pub trait Readiness: Send + Sync + 'static {
    /// True when the node may receive traffic.
    fn ready(&self) -> bool;
    /// More Prometheus text for `/metrics`.
    fn metrics(&self) -> String {
        String::new()
    }
}

impl Readiness for crate::cluster::Control {
    fn ready(&self) -> bool {
        crate::cluster::Control::ready(self)
    }

    fn metrics(&self) -> String {
        crate::metrics::render(self)
    }
}

#[derive(Clone)]
struct AdminState {
    dataplane: Arc<Dataplane>,
    readiness: Option<Arc<dyn Readiness>>,
}

/// The admin router over a data plane.
pub fn router(dataplane: Arc<Dataplane>, readiness: Option<Arc<dyn Readiness>>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(AdminState {
            dataplane,
            readiness,
        })
}

/// Binds `addr` and serves the admin router until `stop` turns true.
/// With `tls`, serves HTTPS (any admin address off loopback does).
pub async fn serve<R: Readiness>(
    addr: SocketAddr,
    dataplane: Arc<Dataplane>,
    api: Option<Router>,
    readiness: Option<Arc<R>>,
    tls: Option<Arc<rustls::ServerConfig>>,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let readiness = readiness.map(|r| r as Arc<dyn Readiness>);
    let mut app = router(dataplane, readiness);
    if let Some(api) = api {
        app = app.merge(api);
    }
    if let Some(tls) = tls {
        return Ok(tokio::spawn(keel_consensus::rpc::serve(
            listener,
            tls,
            app,
            async move {
                let _ = stop.wait_for(|s| *s).await;
            },
        )));
    }
    let app = app.into_make_service_with_connect_info::<SocketAddr>();
    Ok(tokio::spawn(async move {
        let shutdown = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(error = %e, "admin server failed");
        }
    }))
}

async fn readyz(State(s): State<AdminState>) -> impl IntoResponse {
    if s.readiness.as_ref().is_some_and(|r| !r.ready()) {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: not serving the cluster's config yet\n",
        )
    } else if s.dataplane.version() > 0 {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: no config applied yet\n",
        )
    }
}

async fn metrics(State(s): State<AdminState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.dataplane.render_metrics() + &s.readiness.map(|r| r.metrics()).unwrap_or_default(),
    )
}
