#![allow(clippy::unwrap_used)]
//! The dashboard's security: pages only with a session, cookie flags, CSRF
//! on every change made with the cookie, logout; and the API additions the
//! dashboard uses (history, dry run, member drain).

use axum::body::Body;
use http::{header, HeaderMap, Request, StatusCode};
use http_body_util::BodyExt;
use keel_api::Options;
use keel_web_core::ControlPlane;
use serde_json::{json, Value};
use tower::ServiceExt;

use keel_web_core::fake::{fake, fake_with, PASSWORD};

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    text: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or(Value::Null)
    }
}

/// The admin API and the dashboard, as a node serves them.
fn surface<C: ControlPlane>(control: std::sync::Arc<C>, options: Options) -> axum::Router {
    keel_api::router(control.clone(), options).merge(keel_dashboard::router(control))
}

async fn send(
    app: &axum::Router,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Answer {
    let mut req = Request::builder().method(method).uri(path);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = app
        .clone()
        .oneshot(req.body(Body::from(body.to_owned())).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        headers,
        text: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

/// Logs in the dashboard's way: (cookie header value, CSRF token, the
/// whole Set-Cookie line).
async fn cookie_login(app: &axum::Router) -> (String, String, String) {
    let a = send(
        app,
        "POST",
        "/api/v1/login",
        &[("content-type", "application/json")],
        &json!({"password": PASSWORD, "cookie": true}).to_string(),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let body = a.json();
    assert!(
        body.get("token").is_none(),
        "the token goes only into the HttpOnly cookie"
    );
    let set_cookie = a.headers[header::SET_COOKIE].to_str().unwrap().to_owned();
    let pair = set_cookie.split(';').next().unwrap().to_owned();
    (pair, body["csrf"].as_str().unwrap().to_owned(), set_cookie)
}

#[tokio::test]
async fn pages_need_a_session_and_the_cookie_is_locked_down() {
    let app = surface(fake(), Options::default());
    for page in ["/ui/", "/ui/pools", "/ui/cluster", "/ui/config"] {
        let a = send(&app, "GET", page, &[], "").await;
        assert_eq!(a.status, StatusCode::SEE_OTHER, "{page}");
        assert_eq!(a.headers[header::LOCATION], "/ui/login", "{page}");
        assert!(
            !a.text.contains("<nav"),
            "no page content without a session"
        );
    }
    assert_eq!(
        send(&app, "GET", "/", &[], "").await.headers[header::LOCATION],
        "/ui/"
    );
    let login = send(&app, "GET", "/ui/login", &[], "").await;
    assert_eq!(login.status, StatusCode::OK);
    let csp = login.headers[header::CONTENT_SECURITY_POLICY]
        .to_str()
        .unwrap();
    assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"));
    assert_eq!(login.headers[header::X_FRAME_OPTIONS], "DENY");
    // A forged cookie is no session.
    let a = send(
        &app,
        "GET",
        "/ui/",
        &[("cookie", "keel_session=keel_abc_def")],
        "",
    )
    .await;
    assert_eq!(a.status, StatusCode::SEE_OTHER);

    let (cookie, _, set_cookie) = cookie_login(&app).await;
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=43200"] {
        assert!(
            set_cookie.contains(flag),
            "{flag} missing from {set_cookie}"
        );
    }
    assert!(
        !set_cookie.contains("Secure"),
        "plain HTTP (loopback) cannot use Secure cookies"
    );
    let page = send(&app, "GET", "/ui/pools", &[("cookie", &cookie)], "").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.text.contains("/ui/assets/app.js"));
    let signed_in = send(&app, "GET", "/ui/login", &[("cookie", &cookie)], "").await;
    assert_eq!(signed_in.headers[header::LOCATION], "/ui/");

    // Over TLS the cookie is Secure.
    let tls = surface(
        fake(),
        Options {
            tls: true,
            ..Options::default()
        },
    );
    let (_, _, set_cookie) = cookie_login(&tls).await;
    assert!(set_cookie.contains("; Secure"), "{set_cookie}");
}

#[tokio::test]
async fn changes_with_the_cookie_need_the_csrf_token() {
    let control = fake();
    let app = surface(control.clone(), Options::default());
    let (cookie, csrf, _) = cookie_login(&app).await;
    let pool = json!({"name": "app", "members": [{"address": "10.0.0.1:80"}]}).to_string();
    let json_ct = ("content-type", "application/json");

    // Reads work with the cookie alone.
    let a = send(&app, "GET", "/api/v1/pools", &[("cookie", &cookie)], "").await;
    assert_eq!(a.status, StatusCode::OK);
    let me = send(&app, "GET", "/api/v1/session", &[("cookie", &cookie)], "")
        .await
        .json();
    assert_eq!(
        me["csrf"],
        csrf.as_str(),
        "a reloaded page gets its CSRF token back"
    );
    assert_eq!(me["user"], "admin");

    let version = control.state().0;
    for bad in [None, Some("0".repeat(64)), Some(csrf.to_uppercase())] {
        let mut headers = vec![("cookie", cookie.as_str()), json_ct];
        if let Some(b) = &bad {
            headers.push(("x-csrf-token", b));
        }
        for (method, path) in [
            ("POST", "/api/v1/pools"),
            ("PUT", "/api/v1/pools/app"),
            ("DELETE", "/api/v1/pools/app"),
            ("POST", "/api/v1/tokens"),
            ("POST", "/api/v1/logout"),
        ] {
            let a = send(&app, method, path, &headers, &pool).await;
            assert_eq!(
                a.status,
                StatusCode::FORBIDDEN,
                "{method} {path} with {bad:?}"
            );
            assert_eq!(a.json()["error"]["code"], "csrf");
        }
    }
    assert_eq!(
        control.state().0,
        version,
        "refused requests changed nothing"
    );

    let a = send(
        &app,
        "POST",
        "/api/v1/pools",
        &[("cookie", &cookie), ("x-csrf-token", &csrf), json_ct],
        &pool,
    )
    .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);

    // The change is in the history, with who made it.
    let events = send(&app, "GET", "/api/v1/events", &[("cookie", &cookie)], "")
        .await
        .json();
    let last = events.as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["kind"], "config");
    assert_eq!(last["by"], "admin");
    assert!(
        last["message"].as_str().unwrap().contains("pool app"),
        "{last}"
    );

    // Logout ends the session: the cookie is cleared and no longer works.
    let out = send(
        &app,
        "POST",
        "/api/v1/logout",
        &[("cookie", &cookie), ("x-csrf-token", &csrf)],
        "",
    )
    .await;
    assert_eq!(out.status, StatusCode::NO_CONTENT);
    assert!(out.headers[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .contains("Max-Age=0"));
    let a = send(&app, "GET", "/api/v1/pools", &[("cookie", &cookie)], "").await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    let a = send(&app, "GET", "/ui/", &[("cookie", &cookie)], "").await;
    assert_eq!(a.status, StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn dry_run_member_drain_and_bearer_clients_without_csrf() {
    let control = fake();
    let app = surface(control.clone(), Options::default());
    let login = send(
        &app,
        "POST",
        "/api/v1/login",
        &[("content-type", "application/json")],
        &json!({"password": PASSWORD}).to_string(),
    )
    .await
    .json();
    let bearer = format!("Bearer {}", login["token"].as_str().unwrap());
    let auth = [
        ("authorization", bearer.as_str()),
        ("content-type", "application/yaml"),
    ];
    let yaml = "pools:\n  - name: app\n    members: [ { address: 10.0.0.1:80 }, { address: 10.0.0.2:80 } ]\n";

    let before = control.state().0;
    let a = send(&app, "PUT", "/api/v1/config?dry_run=true", &auth, yaml).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json()["dry_run"], true);
    assert_eq!(a.json()["changes"], json!(["upsert pool app"]));
    assert_eq!(control.state().0, before, "a dry run commits nothing");
    let a = send(
        &app,
        "PUT",
        "/api/v1/config?dry_run=true",
        &auth,
        "pools: [ { name: app, members: [ { address: nowhere } ] } ]",
    )
    .await;
    assert_eq!(
        a.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "a dry run validates like an apply"
    );

    // A bearer token is not sent by browsers on their own: no CSRF needed.
    let a = send(&app, "PUT", "/api/v1/config", &auth, yaml).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);

    let json_auth = [
        ("authorization", bearer.as_str()),
        ("content-type", "application/json"),
    ];
    let a = send(
        &app,
        "PATCH",
        "/api/v1/pools/app/members/10.0.0.2%3A80",
        &json_auth,
        r#"{"enabled": false}"#,
    )
    .await;
    assert_eq!(a.status, StatusCode::NO_CONTENT, "{}", a.text);
    let pool = &control.state().1.spec.pools["app"];
    assert!(pool
        .members
        .iter()
        .any(|m| m.address.port() == 80 && !m.enabled));
    assert_eq!(pool.members.iter().filter(|m| m.enabled).count(), 1);
    let a = send(
        &app,
        "PATCH",
        "/api/v1/pools/app/members/10.0.0.9%3A80",
        &json_auth,
        r#"{"enabled": false}"#,
    )
    .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    let a = send(
        &app,
        "PATCH",
        "/api/v1/pools/app/members/10.0.0.2%3A80",
        &json_auth,
        r#"{"enabled": "no"}"#,
    )
    .await;
    assert!(a.status.is_client_error());
}

#[tokio::test]
async fn the_dashboard_weighs_under_200_kb() {
    let app = surface(fake(), Options::default());
    let (cookie, _, _) = cookie_login(&app).await;
    let mut total = send(&app, "GET", "/ui/", &[("cookie", &cookie)], "")
        .await
        .text
        .len();
    total += send(&app, "GET", "/ui/login", &[], "").await.text.len();
    for asset in ["app.js", "app.css", "icon.svg"] {
        let a = send(&app, "GET", &format!("/ui/assets/{asset}"), &[], "").await;
        assert_eq!(a.status, StatusCode::OK, "{asset}");
        total += a.text.len();
    }
    assert!(
        total < 200 * 1024,
        "the dashboard's assets weigh {total} bytes"
    );
    let missing = send(&app, "GET", "/ui/assets/../../etc/passwd", &[], "").await;
    assert_ne!(missing.status, StatusCode::OK);
}

#[tokio::test]
async fn a_generated_password_must_be_changed_before_anything_else() {
    let control = fake_with(true);
    let app = surface(control.clone(), Options::default());
    let (cookie, csrf, _) = cookie_login(&app).await;
    let (other, _, _) = cookie_login(&app).await;
    let with_cookie = [
        ("cookie", cookie.as_str()),
        ("x-csrf-token", csrf.as_str()),
        ("content-type", "application/json"),
    ];
    let me = send(&app, "GET", "/api/v1/session", &with_cookie, "").await;
    assert_eq!(me.json()["must_change_password"], true, "{}", me.text);
    // The server, not the dashboard's script, holds the line.
    for (method, path) in [("GET", "/api/v1/pools"), ("POST", "/api/v1/tokens")] {
        let a = send(&app, method, path, &with_cookie, "{}").await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{method} {path}");
        assert_eq!(a.json()["error"]["code"], "password_change_required");
    }
    let change = |body: Value| {
        let app = app.clone();
        async move {
            send(
                &app,
                "POST",
                "/api/v1/users/admin/password",
                &with_cookie,
                &body.to_string(),
            )
            .await
        }
    };
    let new = "a new password for admin";
    let a = change(json!({"password": new})).await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", a.text);
    assert!(a.text.contains("current_password"), "{}", a.text);
    let a = change(json!({"password": new, "current_password": "wrong one"})).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.text);
    let a = change(json!({"password": new, "current_password": PASSWORD})).await;
    assert_eq!(a.status, StatusCode::NO_CONTENT, "{}", a.text);
    // This session goes on, now allowed everything; the other one ended.
    let a = send(&app, "GET", "/api/v1/pools", &with_cookie, "").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let a = send(&app, "GET", "/api/v1/pools", &[("cookie", &other)], "").await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    let admin = &control.state().1.users["admin"];
    assert!(!admin.must_change_password);
    assert!(keel_web_core::verify_password(new, &admin.password_hash));
}
