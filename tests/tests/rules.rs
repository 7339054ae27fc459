//! Listener rules: conditions on host, path, header, method, query and
//! source address; actions forward, weighted forward, redirect and fixed
//! response. Driven with curl.

#![allow(clippy::unwrap_used)] // a failed unwrap is how a test fails

use std::time::Duration;

use keel_dataplane::Dataplane;
use keel_tests::backend::HttpBackend;
use keel_tests::{free_port, spec};
use tokio::process::Command;

/// What curl saw: status, `Location` (curl's `redirect_url`), content type, body.
#[derive(Debug, PartialEq)]
struct Seen {
    status: u16,
    location: String,
    content_type: String,
    body: String,
}

async fn curl(port: u16, path: &str, args: &[&str]) -> Seen {
    let mut cmd = Command::new("curl");
    cmd.kill_on_drop(true)
        .args(["-sS", "--max-time", "10", "-w"])
        .arg("\n%{http_code}\n%{redirect_url}\n%{content_type}")
        .args(args)
        .arg(format!("http://127.0.0.1:{port}{path}"));
    let out = tokio::time::timeout(Duration::from_secs(20), cmd.output())
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "curl failed: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut parts = text.rsplitn(4, '\n');
    let content_type = parts.next().unwrap().to_owned();
    let location = parts.next().unwrap().to_owned();
    let status = parts.next().unwrap().parse().unwrap();
    let body = parts.next().unwrap_or("").to_owned();
    Seen {
        status,
        location,
        content_type,
        body,
    }
}

/// The body of a GET (the name of the backend that answered).
async fn who(port: u16, path: &str, args: &[&str]) -> String {
    let seen = curl(port, path, args).await;
    assert_eq!(seen.status, 200, "{path} {args:?}: {seen:?}");
    seen.body
}

struct Backends {
    app: HttpBackend,
    blog: HttpBackend,
    api: HttpBackend,
    canary: HttpBackend,
}

async fn backends() -> Backends {
    Backends {
        app: HttpBackend::start("app").await,
        blog: HttpBackend::start("blog").await,
        api: HttpBackend::start("api").await,
        canary: HttpBackend::start("canary").await,
    }
}

fn pools(b: &Backends) -> String {
    let pool = |name: &str, be: &HttpBackend| {
        format!(
            "  - {{ name: {name}, members: [ {{ address: \"{}\" }} ] }}\n",
            be.addr
        )
    };
    format!(
        "pools:\n{}{}{}{}",
        pool("app", &b.app),
        pool("blog", &b.blog),
        pool("api", &b.api),
        pool("canary", &b.canary)
    )
}

async fn serve(rules: &str, b: &Backends) -> (u16, Dataplane) {
    let port = free_port();
    let yaml = format!(
        "load_balancers:\n  - name: web\n    listeners:\n      - port: {port}\n        protocol: http\n        bind: 127.0.0.1\n        default_pool: app\n        rules:\n{rules}{}",
        pools(b)
    );
    let dp = keel_tests::dataplane();
    dp.apply(&spec(&yaml)).await.unwrap();
    (port, dp)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_and_blog_go_to_their_own_pools() {
    // The ALB walkthrough: one listener, `/` to one pool, `/blog` to another.
    let b = backends().await;
    let (port, dp) = serve(
        "          - { priority: 10, path_prefix: /blog, pool: blog }\n",
        &b,
    )
    .await;
    assert_eq!(who(port, "/", &[]).await, "app");
    assert_eq!(who(port, "/shop/cart", &[]).await, "app");
    assert_eq!(who(port, "/blog", &[]).await, "blog");
    assert_eq!(who(port, "/blog/2026/hello?x=1", &[]).await, "blog");
    // Over HTTP/2 (h2c) the same rules apply.
    assert_eq!(
        who(port, "/blog/x", &["--http2-prior-knowledge"]).await,
        "blog"
    );
    let metrics = dp.render_metrics();
    assert!(
        metrics.contains("keel_pool_requests_total{pool=\"blog\",class=\"2xx\"} 3"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_condition_kind_and_their_combination() {
    let b = backends().await;
    let rules = "          - { priority: 1, host: \"*.api.test\", path: /v1/items, pool: api }\n\
                 \x20         - { priority: 2, path_glob: \"/img/*.png\", pool: blog }\n\
                 \x20         - { priority: 3, header: { x-canary: [\"on\", \"y*\"] }, pool: canary }\n\
                 \x20         - { priority: 4, method: [DELETE, PATCH], pool: api }\n\
                 \x20         - { priority: 5, query: { debug: \"tr?e\" }, pool: canary }\n\
                 \x20         - { priority: 6, source: 10.0.0.0/8, pool: blog }\n\
                 \x20         - { priority: 7, source: [127.0.0.0/8], path_prefix: /local, pool: canary }\n\
                 \x20         - { priority: 8, host: exact.test, pool: blog }\n";
    let (port, _dp) = serve(rules, &b).await;

    // host (wildcard, any case, port ignored) AND exact path
    assert_eq!(
        who(port, "/v1/items", &["-H", "Host: EU.api.test:8080"]).await,
        "api"
    );
    assert_eq!(
        who(port, "/v1/items/7", &["-H", "Host: eu.api.test"]).await,
        "app"
    );
    assert_eq!(
        who(port, "/v1/items", &["-H", "Host: api.test"]).await,
        "app"
    );
    assert_eq!(who(port, "/", &["-H", "Host: exact.test"]).await, "blog");
    assert_eq!(who(port, "/", &["-H", "Host: x.exact.test"]).await, "app");
    // glob path, case-sensitive
    assert_eq!(who(port, "/img/a/b.png", &[]).await, "blog");
    assert_eq!(who(port, "/img/a.PNG", &[]).await, "app");
    // header values, any of them, without case
    assert_eq!(who(port, "/", &["-H", "X-Canary: ON"]).await, "canary");
    assert_eq!(
        who(port, "/", &["-H", "x-canary: yes-please"]).await,
        "canary"
    );
    assert_eq!(who(port, "/", &["-H", "x-canary: off"]).await, "app");
    // method
    assert_eq!(who(port, "/", &["-X", "DELETE"]).await, "api");
    assert_eq!(who(port, "/", &["-X", "POST"]).await, "app");
    // query parameter with a pattern
    assert_eq!(who(port, "/?a=1&debug=true", &[]).await, "canary");
    assert_eq!(who(port, "/?debug=false", &[]).await, "app");
    assert_eq!(who(port, "/?xdebug=true", &[]).await, "app");
    // source address: the client is 127.0.0.1, not in 10/8
    assert_eq!(who(port, "/local/x", &[]).await, "canary");
    // priority decides between matching rules: 3 (header) before 5 (query)
    assert_eq!(
        who(port, "/?debug=true", &["-H", "x-canary: on"]).await,
        "canary"
    );
    assert_eq!(
        who(port, "/img/x.png", &["-H", "x-canary: on"]).await,
        "blog",
        "priority 2 wins over 3"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_forward_splits_by_weight() {
    let b = backends().await;
    let (port, _dp) = serve(
        "          - { priority: 1, path_prefix: /, forward: [ { pool: app, weight: 80 }, { pool: canary, weight: 20 }, { pool: blog, weight: 0 } ] }\n",
        &b,
    )
    .await;
    // One curl, many requests on one connection: each is routed on its own.
    let n = 1000;
    let urls: Vec<String> = (0..n)
        .map(|_| format!("http://127.0.0.1:{port}/"))
        .collect();
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "60", "-w", "\n"])
        .args(&urls)
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let app = text.lines().filter(|l| *l == "app").count();
    let canary = text.lines().filter(|l| *l == "canary").count();
    assert_eq!(app + canary, n, "{text}");
    // 20% of 1000: a standard deviation is about 13.
    assert!((140..=260).contains(&canary), "canary got {canary} of {n}");
    assert_eq!(b.blog.hits(), 0, "weight 0 gets nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_and_fixed_responses() {
    let b = backends().await;
    let rules = "          - { priority: 1, path_prefix: /secure, redirect: { scheme: https } }\n\
                 \x20         - { priority: 2, path_prefix: /old, redirect: { status: 302, host: \"new.#{host}\", path: \"/v2#{path}\", query: \"#{query}&from=old\" } }\n\
                 \x20         - { priority: 3, path: /maintenance, fixed_response: { status: 503, content_type: application/json, body: '{\"status\":\"down\"}' } }\n\
                 \x20         - { priority: 4, path: /teapot, fixed_response: { status: 418 } }\n";
    let (port, _dp) = serve(rules, &b).await;

    let seen = curl(port, "/secure/login?next=%2F", &["-H", "Host: shop.test"]).await;
    assert_eq!(seen.status, 301);
    assert_eq!(seen.location, "https://shop.test/secure/login?next=%2F");
    let seen = curl(port, "/old/page?id=3", &["-H", "Host: shop.test"]).await;
    assert_eq!(seen.status, 302);
    assert_eq!(
        seen.location,
        format!("http://new.shop.test:{port}/v2/old/page?id=3&from=old")
    );
    let seen = curl(port, "/maintenance", &[]).await;
    assert_eq!(
        (seen.status, seen.content_type.as_str(), seen.body.as_str()),
        (503, "application/json", "{\"status\":\"down\"}")
    );
    let seen = curl(port, "/teapot", &[]).await;
    assert_eq!((seen.status, seen.body.as_str()), (418, ""));
    assert_eq!(
        b.app.hits() + b.blog.hits() + b.api.hits() + b.canary.hits(),
        0,
        "no member saw a request Keel answered itself"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_without_a_default_pool_serves_its_rules_and_refuses_the_rest() {
    // Octavia's shape: a listener that routes only by L7 policy (and a TCP
    // listener whose pool is not made yet).
    let b = backends().await;
    let (http, tcp) = (free_port(), free_port());
    let yaml = format!(
        "load_balancers:\n  - name: web\n    listeners:\n      - port: {http}\n        protocol: http\n        bind: 127.0.0.1\n        rules:\n          - {{ priority: 10, path_prefix: /blog, pool: blog }}\n      - {{ port: {tcp}, protocol: tcp, bind: 127.0.0.1 }}\n{}",
        pools(&b)
    );
    let dp = keel_tests::dataplane();
    dp.apply(&spec(&yaml)).await.unwrap();
    assert_eq!(who(http, "/blog/post", &[]).await, "blog");
    let seen = curl(http, "/", &[]).await;
    assert_eq!(seen.status, 503, "{seen:?}");
    // The TCP listener accepts and closes: nothing to relay to. The close
    // may be a reset that lands before the connect call returns.
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", tcp)).await?;
        let mut buf = [0u8; 16];
        tokio::io::AsyncReadExt::read(&mut stream, &mut buf).await
    })
    .await
    .unwrap();
    assert!(
        matches!(&read, Ok(0))
            || read
                .as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        "{read:?}"
    );
}
