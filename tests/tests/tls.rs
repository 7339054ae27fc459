//! TLS termination, SNI, TLS policies, HTTP/2 (ALPN and h2c) and
//! certificate rotation, driven with curl, openssl s_client, h2load and a
//! rustls client.

#![allow(clippy::unwrap_used)] // a failed unwrap is how a test fails

use std::net::SocketAddr;
use std::process::Output;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use keel_dataplane::Dataplane;
use keel_tests::backend::{EchoBackend, HttpBackend};
use keel_tests::tls::{any_cert, connect, Ca, HttpsConn, Issued};
use keel_tests::{free_port, spec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

/// Runs a command with a deadline; its output.
async fn run(cmd: &mut Command) -> Output {
    cmd.kill_on_drop(true);
    tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("command timed out")
        .expect("command did not start")
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A file holding `pem`, for the command-line clients' `--cacert`.
fn ca_file(ca: &Ca) -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), ca.pem()).unwrap();
    f
}

/// curl against a listener on 127.0.0.1:`port` as if it were `host`,
/// trusting `ca`. Prints `HTTP-VERSION STATUS` then the body.
async fn curl(ca: &std::path::Path, host: &str, port: u16, path: &str, extra: &[&str]) -> Output {
    run(Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(ca)
        .arg("--resolve")
        .arg(format!("{host}:{port}:127.0.0.1"))
        .args(["-w", "\n%{http_version} %{http_code}"])
        .args(extra)
        .arg(format!("https://{host}:{port}{path}")))
    .await
}

struct Site {
    ca: Ca,
    a: Issued,
    wild: Issued,
    fallback: Issued,
}

impl Site {
    fn new() -> Self {
        let ca = Ca::new();
        Site {
            a: ca.issue(&["a.test"]),
            wild: ca.issue(&["*.wild.test"]),
            fallback: ca.issue(&["default.test"]),
            ca,
        }
    }

    fn certificates(&self) -> String {
        format!(
            "certificates:\n  - {}\n  - {}\n  - {}\n",
            self.fallback.yaml("fallback"),
            self.a.yaml("a"),
            self.wild.yaml("wild")
        )
    }
}

/// One HTTPS listener (certificates fallback, a, wild) and one HTTP
/// listener, both to backend `b`.
async fn https_lb(site: &Site, listener_extra: &str) -> (HttpBackend, u16, u16, Dataplane) {
    let b = HttpBackend::start("b").await;
    let (tls_port, http_port) = (free_port(), free_port());
    let yaml = format!(
        "load_balancers:\n  - {{ name: web, listeners: [\n\
           {{ port: {tls_port}, protocol: https, bind: 127.0.0.1, default_pool: app, certificates: [fallback, a, wild] {listener_extra} }},\n\
           {{ port: {http_port}, protocol: http, bind: 127.0.0.1, default_pool: app }} ] }}\n\
         pools:\n  - {{ name: app, members: [ {{ address: \"{}\" }} ] }}\n{}",
        b.addr,
        site.certificates()
    );
    let dp = keel_tests::dataplane();
    dp.apply(&spec(&yaml)).await.unwrap();
    (b, tls_port, http_port, dp)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_picks_the_exact_then_the_wildcard_then_the_first_certificate() {
    let site = Site::new();
    let (b, port, _, _dp) = https_lb(&site, "").await;
    let ca = ca_file(&site.ca);

    // curl checks the name against the certificate it is given, so each
    // success proves the right certificate was chosen.
    for host in ["a.test", "x.wild.test", "default.test"] {
        let o = curl(ca.path(), host, port, "/", &[]).await;
        assert!(o.status.success(), "{host}: {}", text(&o));
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(out.starts_with("b\n"), "{host}: {out}");
    }
    // A wildcard covers one label: the default (first) certificate is
    // shown instead, and curl refuses it for the name.
    let o = curl(ca.path(), "deep.x.wild.test", port, "/", &[]).await;
    assert_eq!(o.status.code(), Some(60), "{}", text(&o));

    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let seen = |sni: &'static str| {
        let cfg = any_cert();
        async move { keel_tests::tls::leaf(&connect(addr, sni, cfg).await.unwrap()).unwrap() }
    };
    assert_eq!(seen("A.TEST").await, site.a.der, "SNI is case-insensitive");
    assert_eq!(seen("unknown.test").await, site.fallback.der);
    assert_eq!(seen("wild.test").await, site.fallback.der);

    // The member sees HTTP/1.1 with the scheme the client used.
    let mut c = HttpsConn::open(addr, "a.test", site.ca.client_config(&[]))
        .await
        .unwrap();
    assert_eq!(c.get("/headers").await.unwrap().0, 200);
    let h = b.last_headers();
    assert!(h.contains("x-forwarded-proto: https\n"), "{h}");
    assert!(h.contains(&format!("x-forwarded-port: {port}\n")), "{h}");
    assert!(h.contains("host: a.test\n"), "{h}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_by_alpn_on_https_and_by_prior_knowledge_on_http() {
    let site = Site::new();
    let (b, port, http_port, dp) = https_lb(&site, "").await;
    let ca = ca_file(&site.ca);

    let o = curl(ca.path(), "a.test", port, "/headers", &["--http2"]).await;
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(out.ends_with("\n2 200"), "{}", text(&o));
    let h = b.last_headers();
    assert!(
        h.contains(&format!("host: a.test:{port}\n")),
        "HTTP/2 :authority becomes Host: {h}"
    );
    let o = curl(ca.path(), "a.test", port, "/", &["--http1.1"]).await;
    assert!(
        String::from_utf8_lossy(&o.stdout).ends_with("\n1.1 200"),
        "{}",
        text(&o)
    );

    let url = format!("http://127.0.0.1:{http_port}/");
    let o = run(Command::new("curl").args([
        "-sS",
        "--max-time",
        "10",
        "--http2-prior-knowledge",
        "-w",
        "\n%{http_version} %{http_code}",
        &url,
    ]))
    .await;
    assert!(
        String::from_utf8_lossy(&o.stdout).ends_with("\n2 200"),
        "{}",
        text(&o)
    );
    let o = run(Command::new("curl").args(["-sS", "-w", "\n%{http_version}", &url])).await;
    assert!(
        String::from_utf8_lossy(&o.stdout).ends_with("\n1.1"),
        "{}",
        text(&o)
    );

    // Many concurrent streams on few connections, both ways in.
    for (url, extra) in [
        (format!("https://127.0.0.1:{port}/"), None),
        (url.clone(), None),
        (format!("https://127.0.0.1:{port}/"), Some("--h1")),
    ] {
        let mut cmd = Command::new("h2load");
        cmd.args(["-n", "2000", "-c", "4", "-m", "16"]);
        cmd.args(extra);
        let o = run(cmd.arg(&url)).await;
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(
            out.contains("2000 succeeded, 0 failed, 0 errored"),
            "{url} {extra:?}: {}",
            text(&o)
        );
    }
    assert!(
        dp.render_metrics()
            .contains("keel_listener_tls_handshake_failures_total{lb=\"web\""),
        "TLS listeners report handshake failures"
    );

    // With http2 off, ALPN offers HTTP/1.1 only.
    let (_b, port, _, _dp) = https_lb(&site, ", http2: false").await;
    let o = curl(ca.path(), "a.test", port, "/", &["--http2"]).await;
    assert!(
        String::from_utf8_lossy(&o.stdout).ends_with("\n1.1 200"),
        "{}",
        text(&o)
    );
}

/// `openssl s_client` with one protocol version: whether the handshake worked.
async fn handshake_with(port: u16, version: &str) -> (bool, String) {
    let o = run(Command::new("openssl")
        .args(["s_client", "-connect"])
        .arg(format!("127.0.0.1:{port}"))
        .args(["-servername", "a.test", version])
        .stdin(std::process::Stdio::null()))
    .await;
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    (
        o.status.success() && out.contains("BEGIN CERTIFICATE"),
        text(&o),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_policies_choose_protocol_versions() {
    let site = Site::new();
    let (_b, modern, _, _dp) = https_lb(&site, ", tls_policy: modern").await;
    let (_b2, compatible, _, dp) = https_lb(&site, "").await;

    let (ok, out) = handshake_with(modern, "-tls1_2").await;
    assert!(!ok, "modern accepted TLS 1.2: {out}");
    let (ok, out) = handshake_with(modern, "-tls1_3").await;
    assert!(ok, "modern refused TLS 1.3: {out}");
    let (ok, out) = handshake_with(compatible, "-tls1_2").await;
    assert!(ok, "compatible refused TLS 1.2: {out}");
    let (ok, out) = handshake_with(compatible, "-tls1_3").await;
    assert!(ok, "compatible refused TLS 1.3: {out}");

    // Only forward-secret AEAD suites on TLS 1.2.
    let o = run(Command::new("openssl")
        .args(["s_client", "-connect"])
        .arg(format!("127.0.0.1:{compatible}"))
        .args([
            "-tls1_2",
            "-cipher",
            "AES128-SHA:AES256-SHA256:ECDHE-RSA-AES128-SHA",
        ])
        .stdin(std::process::Stdio::null()))
    .await;
    assert!(!o.status.success(), "weak cipher accepted: {}", text(&o));

    // Counted once the handshake's error comes back, after the alert went
    // out: the client may have seen the alert first.
    let failures = || {
        let metrics = dp.render_metrics();
        let line = metrics.lines().find(|l| {
            l.starts_with("keel_listener_tls_handshake_failures_total")
                && l.contains(&format!(":{compatible}\""))
        });
        line.map(str::to_owned).unwrap_or_default()
    };
    keel_tests::eventually(Duration::from_secs(5), "one handshake failure", || {
        let failures = failures();
        async move { failures.ends_with(" 1") }
    })
    .await;
    assert!(failures().ends_with(" 1"), "{}", failures());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_certificate_serves_new_handshakes_and_drops_nothing() {
    let site = Site::new();
    let b = HttpBackend::start("b").await;
    let port = free_port();
    let config = |cert: &Issued| {
        format!(
            "load_balancers:\n  - {{ name: web, listeners: [ {{ port: {port}, protocol: https, bind: 127.0.0.1, default_pool: app, certificates: [site] }} ] }}\n\
             pools:\n  - {{ name: app, members: [ {{ address: \"{}\" }} ] }}\n\
             certificates:\n  - {}\n",
            b.addr,
            cert.yaml("site")
        )
    };
    let old = site.ca.issue(&["a.test"]);
    let new = site.ca.issue(&["a.test"]);
    let dp = keel_tests::dataplane();
    dp.apply(&spec(&config(&old))).await.unwrap();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let client = site.ca.client_config(&[]);

    // A keep-alive connection opened before the change.
    let mut kept = HttpsConn::open(addr, "a.test", client.clone())
        .await
        .unwrap();
    assert_eq!(kept.leaf.as_ref(), Some(&old.der));

    // Clients that open a new connection for every request, throughout.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed, saw_new) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let mut loops = Vec::new();
    for _ in 0..4 {
        let (stop, ok, failed, saw_new) =
            (stop.clone(), ok.clone(), failed.clone(), saw_new.clone());
        let (client, new_der) = (client.clone(), new.der.clone());
        loops.push(tokio::spawn(async move {
            while !stop.load(SeqCst) {
                let result = match HttpsConn::open(addr, "a.test", client.clone()).await {
                    Ok(mut c) => c.get("/").await.map(|r| (r, c.leaf)),
                    Err(e) => Err(e),
                };
                match result {
                    Ok(((200, _), leaf)) => {
                        ok.fetch_add(1, SeqCst);
                        if leaf.as_ref() == Some(&new_der) {
                            saw_new.fetch_add(1, SeqCst);
                        }
                    }
                    other => {
                        eprintln!("request failed: {other:?}");
                        failed.fetch_add(1, SeqCst);
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = ok.load(SeqCst);
    assert_eq!(saw_new.load(SeqCst), 0);
    dp.apply(&spec(&config(&new))).await.unwrap();
    let after_apply = ok.load(SeqCst);
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, SeqCst);
    for l in loops {
        l.await.unwrap();
    }

    assert_eq!(failed.load(SeqCst), 0, "requests failed during rotation");
    assert!(before > 10, "the loop ran: {before} requests");
    assert!(
        ok.load(SeqCst) > after_apply + 10,
        "requests continued after the change"
    );
    assert!(
        saw_new.load(SeqCst) > 10,
        "new handshakes see the new certificate"
    );
    // A handshake after the change sees only the new certificate.
    let fresh = HttpsConn::open(addr, "a.test", client.clone())
        .await
        .unwrap();
    assert_eq!(fresh.leaf.as_ref(), Some(&new.der));
    // The connection opened before keeps its session and keeps working.
    assert_eq!(kept.get("/").await.unwrap(), (200, "b".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_listener_terminates_and_relays_bytes() {
    let site = Site::new();
    let echo = EchoBackend::start().await;
    let port = free_port();
    let yaml = format!(
        "load_balancers:\n  - {{ name: db, listeners: [ {{ port: {port}, protocol: tls, bind: 127.0.0.1, default_pool: echo, certificates: [a] }} ] }}\n\
         pools:\n  - {{ name: echo, members: [ {{ address: \"{}\" }} ] }}\n\
         certificates:\n  - {}\n",
        echo.addr,
        site.a.yaml("a")
    );
    let dp = keel_tests::dataplane();
    dp.apply(&spec(&yaml)).await.unwrap();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();

    let mut tls = connect(addr, "a.test", site.ca.client_config(&[]))
        .await
        .unwrap();
    tls.write_all(b"hello over tls").await.unwrap();
    let mut buf = [0u8; 14];
    tls.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"hello over tls");
    // Half-close: our end of stream reaches the member, its answer comes back.
    tls.shutdown().await.unwrap();
    let mut rest = Vec::new();
    tls.read_to_end(&mut rest).await.unwrap();
    assert_eq!(rest, b"bye");

    // Something that is not TLS is refused without disturbing others.
    let mut plain = tokio::net::TcpStream::connect(addr).await.unwrap();
    plain.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let mut junk = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut junk)).await;
    assert!(!junk.starts_with(b"HTTP"), "plain text got an HTTP answer");
    let mut again = connect(addr, "a.test", site.ca.client_config(&[]))
        .await
        .unwrap();
    again.write_all(b"x").await.unwrap();
    let mut one = [0u8; 1];
    again.read_exact(&mut one).await.unwrap();
    assert!(dp.render_metrics().contains(&format!(
        "keel_listener_tls_handshake_failures_total{{lb=\"db\",listener=\"127.0.0.1:{port}\",protocol=\"tls\"}} 1"
    )));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_client_puts_in_its_hello_does_not_reach_the_log_at_info() {
    // An IP address as the server name (as wrk and some libraries send):
    // rustls warns of it, once per handshake, in the client's words. At
    // `info` none of that is logged: a client could fill the log, and pay
    // nothing for each line Keel writes.
    let web = HttpBackend::start("web").await;
    let site = Ca::new().issue(&["a.test"]);
    let port = free_port();
    let node = keel_tests::node::KeelProcess::start(&format!(
        "load_balancers:\n  - {{ name: web, listeners: [ {{ port: {port}, protocol: https, bind: 127.0.0.1, default_pool: p, certificates: [site] }} ] }}\n\
         pools:\n  - {{ name: p, members: [ {{ address: \"{}\" }} ] }}\n\
         certificates:\n  - {}\n",
        web.addr,
        site.yaml("site")
    ));
    keel_tests::eventually(Duration::from_secs(10), "the listener", || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
    })
    .await;
    for _ in 0..3 {
        let o = run(Command::new("openssl")
            .args(["s_client", "-connect"])
            .arg(format!("127.0.0.1:{port}"))
            .args(["-servername", "127.0.0.1", "-tls1_3"])
            .stdin(std::process::Stdio::null()))
        .await;
        assert!(
            String::from_utf8_lossy(&o.stdout).contains("TLSv1.3"),
            "{}",
            text(&o)
        );
    }
    let log = node.log_text();
    assert!(!log.contains("rustls"), "{log}");
}
