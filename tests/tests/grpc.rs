//! HTTP/2 to members and gRPC through Keel: `te: trailers` reaches the
//! member, response trailers (`grpc-status`) reach the client, and many
//! streams share one member connection.

#![allow(clippy::unwrap_used)] // a failed unwrap is how a test fails

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use keel_tests::{free_port, spec};
use tokio::net::{TcpListener, TcpStream};

/// A cleartext HTTP/2 (h2c) member that answers like a unary gRPC echo:
/// the request's message back, then trailers. It refuses requests without
/// `te: trailers` or with a non-gRPC content type, as gRPC servers do.
struct GrpcMember {
    addr: SocketAddr,
    connections: Arc<AtomicU64>,
}

impl GrpcMember {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicU64::new(0));
        let counted = connections.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                counted.fetch_add(1, SeqCst);
                tokio::spawn(async move {
                    let svc = service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                        let ok = req.version() == http::Version::HTTP_2
                            && req.headers().get("te").is_some_and(|v| v == "trailers")
                            && req
                                .headers()
                                .get("content-type")
                                .is_some_and(|v| v == "application/grpc");
                        let path = req.uri().path().to_owned();
                        let message = match req.into_body().collect().await {
                            Ok(b) => b.to_bytes(),
                            Err(_) => Bytes::new(),
                        };
                        let mut trailers = http::HeaderMap::new();
                        let status = if ok { "0" } else { "3" };
                        trailers.insert("grpc-status", status.parse().unwrap());
                        trailers.insert("grpc-message", format!("echo{path}").parse().unwrap());
                        // No empty DATA frames: h2 counts them as abuse.
                        let mut frames: Vec<Result<Frame<Bytes>, Infallible>> = Vec::new();
                        if !message.is_empty() {
                            frames.push(Ok(Frame::data(message)));
                        }
                        frames.push(Ok(Frame::trailers(trailers)));
                        let mut r = hyper::Response::new(StreamBody::new(
                            futures_util::stream::iter(frames),
                        ));
                        r.headers_mut()
                            .insert("content-type", "application/grpc".parse().unwrap());
                        Ok::<_, Infallible>(r)
                    });
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        GrpcMember { addr, connections }
    }
}

/// A length-prefixed gRPC message.
fn grpc_frame(payload: &[u8]) -> Bytes {
    let mut out = vec![0u8];
    out.extend((payload.len() as u32).to_be_bytes());
    out.extend(payload);
    Bytes::from(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_calls_keep_their_trailers_and_share_a_member_connection() {
    let member = GrpcMember::start().await;
    let port = free_port();
    let dp = keel_tests::dataplane();
    dp.apply(&spec(&format!(
        "load_balancers:\n  - {{ name: web, listeners: [ {{ port: {port}, protocol: http, bind: 127.0.0.1, default_pool: grpc }} ] }}\n\
         pools:\n  - {{ name: grpc, http_version: http2, members: [ {{ address: \"{}\" }} ] }}\n",
        member.addr
    )))
    .await
    .unwrap();

    // An HTTP/2 client with prior knowledge, like a gRPC client over h2c.
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let call = |n: usize| {
        let mut sender = sender.clone();
        async move {
            let req = http::Request::post(format!("http://svc.example/echo.Echo/Say{n}"))
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(Full::new(grpc_frame(format!("hello {n}").as_bytes())))
                .unwrap();
            let resp = sender.send_request(req).await.unwrap();
            assert_eq!(resp.status(), 200);
            let collected = resp.into_body().collect().await.unwrap();
            let trailers = collected.trailers().cloned().expect("trailers");
            (collected.to_bytes(), trailers)
        }
    };
    let (body, trailers) = call(1).await;
    assert_eq!(body, grpc_frame(b"hello 1"));
    assert_eq!(
        trailers["grpc-status"], "0",
        "te: trailers must reach the member"
    );
    assert_eq!(trailers["grpc-message"], "echo/echo.Echo/Say1");

    // 100 concurrent calls: every one intact, over one member connection.
    let mut tasks = Vec::new();
    for n in 0..100 {
        tasks.push(tokio::spawn(call(n)));
    }
    for (n, t) in tasks.into_iter().enumerate() {
        let (body, trailers) = tokio::time::timeout(Duration::from_secs(10), t)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(body, grpc_frame(format!("hello {n}").as_bytes()));
        assert_eq!(trailers["grpc-status"], "0");
    }
    assert_eq!(member.connections.load(SeqCst), 1);

    // h2load over h2c against the HTTP/2 pool.
    let out = tokio::process::Command::new("h2load")
        .args(["-n", "2000", "-c", "4", "-m", "16"])
        .args(["-H", "content-type: application/grpc", "-H", "te: trailers"])
        .arg(format!("http://127.0.0.1:{port}/echo.Echo/Load"))
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("2000 succeeded, 0 failed"),
        "h2load: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    dp.shutdown(Duration::from_millis(100)).await;
}
