//! Backend servers started by tests: real sockets on loopback.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// An HTTP/1.1 backend. Paths:
/// - `/health`: 200, or 503 after `set_healthy(false)`
/// - `/slow/<ms>`: answers after a delay
/// - `/upload`: reads the body slowly, answers with its length
/// - `/download/<bytes>`: streams that many bytes in 64 KiB chunks
/// - `/headers`: answers with the request's headers, one per line
/// - `/login`: answers with the backend's name and sets cookie `SESSION`
/// - anything else: answers with the backend's name
pub struct HttpBackend {
    pub addr: SocketAddr,
    pub name: String,
    state: Arc<State>,
    stop: CancellationToken,
}

struct State {
    name: String,
    hits: AtomicU64,
    healthy: AtomicBool,
    health_checks: AtomicU64,
    delay_ms: AtomicU64,
    connections: AtomicU64,
    last_headers: Mutex<String>,
}

impl HttpBackend {
    pub async fn start(name: &str) -> Self {
        Self::start_on(name, "127.0.0.1:0".parse().unwrap()).await
    }

    /// Starts on a given address (to bring a killed backend back on its port).
    pub async fn start_on(name: &str, addr: SocketAddr) -> Self {
        Self::serve(name, TcpListener::bind(addr).await.unwrap())
    }

    /// Serves on a listener bound elsewhere (in another network namespace).
    pub fn from_std(name: &str, listener: std::net::TcpListener) -> Self {
        listener.set_nonblocking(true).unwrap();
        Self::serve(name, TcpListener::from_std(listener).unwrap())
    }

    fn serve(name: &str, listener: TcpListener) -> Self {
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            name: name.to_owned(),
            hits: AtomicU64::new(0),
            healthy: AtomicBool::new(true),
            health_checks: AtomicU64::new(0),
            delay_ms: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            last_headers: Mutex::new(String::new()),
        });
        let stop = CancellationToken::new();
        let (s, st) = (state.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let stream = tokio::select! {
                    _ = st.cancelled() => return,
                    r = listener.accept() => match r { Ok((s, _)) => s, Err(_) => continue },
                };
                s.connections.fetch_add(1, SeqCst);
                let (s, st) = (s.clone(), st.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req| handle(s.clone(), req));
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc);
                    tokio::select! {
                        _ = conn => {}
                        _ = st.cancelled() => {}
                    }
                });
            }
        });
        HttpBackend {
            addr,
            name: name.to_owned(),
            state,
            stop,
        }
    }

    /// Requests served, health checks excluded.
    pub fn hits(&self) -> u64 {
        self.state.hits.load(SeqCst)
    }

    /// TCP connections accepted, health checks included.
    pub fn connections(&self) -> u64 {
        self.state.connections.load(SeqCst)
    }

    pub fn health_checks(&self) -> u64 {
        self.state.health_checks.load(SeqCst)
    }

    /// Makes every request (health checks aside) wait this long first.
    pub fn set_delay(&self, delay: Duration) {
        self.state.delay_ms.store(delay.as_millis() as u64, SeqCst);
    }

    pub fn set_healthy(&self, healthy: bool) {
        self.state.healthy.store(healthy, SeqCst);
    }

    /// The headers of the last `/headers` request, `name: value` per line.
    pub fn last_headers(&self) -> String {
        self.state.last_headers.lock().unwrap().clone()
    }

    /// Stops listening and drops every open connection, like a crash.
    pub fn kill(&self) {
        self.stop.cancel();
    }
}

impl Drop for HttpBackend {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_owned();
    if path == "/health" {
        state.health_checks.fetch_add(1, SeqCst);
        let status = if state.healthy.load(SeqCst) {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        return Ok(text(status, "health\n".into()));
    }
    state.hits.fetch_add(1, SeqCst);
    let delay = state.delay_ms.load(SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    if let Some(ms) = path.strip_prefix("/slow/") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(100))).await;
    } else if path == "/upload" {
        let mut body = req.into_body();
        let mut total = 0u64;
        while let Some(Ok(frame)) = body.frame().await {
            if let Some(d) = frame.data_ref() {
                total += d.len() as u64;
                // Read slowly, so the proxy must hold the client back.
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
        }
        return Ok(text(StatusCode::OK, format!("{total}")));
    } else if let Some(n) = path.strip_prefix("/download/") {
        let body = Download {
            left: n.parse().unwrap_or(0),
            chunk: Bytes::from(vec![b'x'; 64 * 1024]),
        };
        return Ok(Response::new(BodyExt::boxed(body)));
    } else if path == "/headers" {
        let mut lines = String::new();
        for (k, v) in req.headers() {
            lines.push_str(&format!("{}: {}\n", k, v.to_str().unwrap_or("?")));
        }
        *state.last_headers.lock().unwrap() = lines.clone();
        return Ok(text(StatusCode::OK, lines));
    } else if path == "/login" {
        let mut r = text(StatusCode::OK, state.name.clone());
        let cookie = format!("SESSION={}-session; Path=/", state.name);
        r.headers_mut()
            .insert(http::header::SET_COOKIE, cookie.parse().unwrap());
        return Ok(r);
    }
    Ok(text(StatusCode::OK, state.name.clone()))
}

fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut r = Response::new(BodyExt::boxed(Full::new(Bytes::from(body))));
    *r.status_mut() = status;
    r
}

/// A response body of `left` bytes, produced chunk by chunk as it is read.
struct Download {
    left: u64,
    chunk: Bytes,
}

impl http_body::Body for Download {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.left == 0 {
            return std::task::Poll::Ready(None);
        }
        let n = self.left.min(self.chunk.len() as u64);
        self.left -= n;
        std::task::Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(..n as usize)))))
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.left)
    }
}

/// A TCP echo server: echoes until the client half-closes, then sends
/// `bye` and closes its side too.
pub struct EchoBackend {
    pub addr: SocketAddr,
    stop: CancellationToken,
}

impl EchoBackend {
    pub async fn start() -> Self {
        Self::start_on("127.0.0.1:0".parse().unwrap()).await
    }

    pub async fn start_on(addr: SocketAddr) -> Self {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let st = stop.clone();
        tokio::spawn(async move {
            loop {
                let mut stream = tokio::select! {
                    _ = st.cancelled() => return,
                    r = listener.accept() => match r { Ok((s, _)) => s, Err(_) => continue },
                };
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if stream.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                    let _ = stream.write_all(b"bye").await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        EchoBackend { addr, stop }
    }
}

impl Drop for EchoBackend {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A member that answers each request with a head promising 1000 bytes
/// and sends 7 of them (`partial`), then nothing until the connection is
/// closed: a member stalled mid-body.
pub async fn stalling_member() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let addr = listener.local_addr().expect("a bound address");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\npartial")
                    .await;
                while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
            });
        }
    });
    addr
}
