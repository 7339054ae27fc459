//! The admin HTTP endpoints: `/healthz`, `/readyz` and `/metrics`.

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

/// The admin router over a data plane.
pub fn router(dataplane: Arc<Dataplane>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(dataplane)
}

/// Binds `addr` and serves the admin router until `stop` turns true.
pub async fn serve(
    addr: SocketAddr,
    dataplane: Arc<Dataplane>,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let app = router(dataplane);
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

async fn readyz(State(dp): State<Arc<Dataplane>>) -> impl IntoResponse {
    if dp.version() > 0 {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: no config applied yet\n",
        )
    }
}

async fn metrics(State(dp): State<Arc<Dataplane>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        dp.render_metrics(),
    )
}
