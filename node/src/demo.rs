//! `keel demo`: a node in front of two built-in backends, so a newcomer
//! sees traffic balanced without writing a config or starting servers.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use keel_dataplane::Dataplane;
use keel_model::{Document, Spec};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::cli::DemoArgs;

/// Runs the demo until SIGTERM or SIGINT.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let mut backends = Vec::new();
    for n in 1..=2 {
        backends.push(start_backend(n).await?);
    }
    let spec = demo_spec(args.port, &backends)?;
    let dataplane = Arc::new(Dataplane::new());
    dataplane.apply(&spec).await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let admin = crate::admin::serve::<crate::cluster::Control>(
        args.admin_addr,
        dataplane.clone(),
        None,
        None,
        None,
        stop_rx,
    )
    .await?;
    println!(
        "\nKeel demo: http://127.0.0.1:{port}/ is balanced round robin across two backends ({} and {}).\n\
         Try:      for i in 1 2 3 4; do curl -s http://127.0.0.1:{port}/; done\n\
         Metrics:  curl -s http://{}/metrics | grep keel_member_requests_total\n\
         Stop:     Ctrl-C\n",
        backends[0],
        backends[1],
        args.admin_addr,
        port = args.port,
    );
    crate::shutdown_signal().await;
    let _ = stop_tx.send(true);
    dataplane.shutdown(std::time::Duration::from_secs(2)).await;
    let _ = admin.await;
    Ok(())
}

/// The demo's config: one HTTP listener, one pool of the two backends.
pub fn demo_spec(port: u16, backends: &[SocketAddr]) -> anyhow::Result<Spec> {
    let members: Vec<String> = backends
        .iter()
        .map(|b| format!("{{ address: \"{b}\" }}"))
        .collect();
    let yaml = format!(
        r#"
load_balancers:
  - name: demo
    listeners:
      - {{ port: {port}, protocol: http, bind: 127.0.0.1, default_pool: demo }}
pools:
  - name: demo
    algorithm: round_robin
    health_check: {{ type: http, path: /health, interval: 1s, timeout: 500ms }}
    members: [ {} ]
"#,
        members.join(", ")
    );
    Ok(Document::parse_spec(&yaml)?)
}

/// A tiny HTTP backend on an ephemeral loopback port that names itself.
async fn start_backend(n: u32) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let body = Bytes::from(format!("Hello from demo backend {n} ({addr})\n"));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let body = body.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let text = if req.uri().path() == "/health" {
                        Bytes::from_static(b"ok\n")
                    } else {
                        body.clone()
                    };
                    async move { Ok::<_, Infallible>(hyper::Response::new(Full::new(text))) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}
