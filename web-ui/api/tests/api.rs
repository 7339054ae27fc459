#![allow(clippy::unwrap_used)]
//! The API's handlers over a fake control plane (commands applied to an
//! in-memory state), driven with `Router::oneshot`.

use std::sync::Arc;

use axum::body::Body;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use keel_web_core::ControlPlane;
use serde_json::{json, Value};
use tower::ServiceExt;

use keel_web_core::fake::{fake, Fake, PASSWORD};

async fn call(
    app: &axum::Router,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: impl Into<Body>,
) -> (StatusCode, Value) {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let resp = app
        .clone()
        .oneshot(req.body(body.into()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, value)
}

/// A logged-in caller of a router over `control`.
struct Api {
    app: axum::Router,
    token: String,
}

impl Api {
    async fn logged_in(control: Arc<Fake>) -> Self {
        let app = keel_api::router(control, keel_api::Options::default());
        let token = login(&app).await;
        Api { app, token }
    }

    async fn send(&self, method: &str, path: &str, body: impl Into<Body>) -> (StatusCode, Value) {
        call(&self.app, method, path, Some(&self.token), body).await
    }
}

async fn login(app: &axum::Router) -> String {
    let (status, v) = call(
        app,
        "POST",
        "/api/v1/login",
        None,
        json!({"password": PASSWORD}).to_string(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    v["token"].as_str().unwrap().to_owned()
}

fn fields(v: &Value) -> Vec<String> {
    v["error"]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["field"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn calls_without_valid_credentials_get_401_and_logins_are_rate_limited() {
    let app = keel_api::router(fake(), keel_api::Options::default());
    let (status, v) = call(&app, "GET", "/api/v1/pools", None, "").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(v["error"]["code"], "unauthorized");
    let (status, _) = call(&app, "GET", "/api/v1/pools", Some("keel_abc_def"), "").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let wrong = json!({"password": "nope"}).to_string();
    for _ in 0..5 {
        let (status, _) = call(&app, "POST", "/api/v1/login", None, wrong.clone()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let right = json!({"password": PASSWORD}).to_string();
    let (status, v) = call(&app, "POST", "/api/v1/login", None, right).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{v}");
}

#[tokio::test]
async fn invalid_objects_get_422_naming_each_field_and_change_nothing() {
    let control = fake();
    let api = Api::logged_in(control.clone()).await;
    let version = control.state().0;

    let pool = json!({"name": "app", "members": [
        {"address": "not-an-address"},
        {"address": "10.0.0.1:80", "weight": 5000}
    ]});
    let (status, v) = api.send("POST", "/api/v1/pools", pool.to_string()).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(
        fields(&v),
        ["members[0].address", "members[1].weight"],
        "{v}"
    );

    let lb = json!({"name": "web", "listeners": [{"port": 80, "protocol": "http", "default_pool": "missing"}]});
    let (status, v) = api
        .send("POST", "/api/v1/load-balancers", lb.to_string())
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(fields(&v), ["listeners[0].default_pool"], "{v}");

    // Unknown fields, malformed JSON and a 10 MB body are refused cleanly.
    let unknown = json!({"name": "app", "members": [], "colour": "red"});
    let (status, v) = api.send("POST", "/api/v1/pools", unknown.to_string()).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("colour"),
        "{v}"
    );
    let (status, v) = api.send("POST", "/api/v1/pools", "{\"name\": ").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["error"]["code"], "bad_request");
    let huge = format!("{{\"name\": \"{}\"}}", "x".repeat(10 << 20));
    let (status, v) = api.send("POST", "/api/v1/pools", huge).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{v}");
    let (status, v) = api
        .send("PUT", "/api/v1/config", "x".repeat(10 << 20))
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{v}");

    // Nothing was committed.
    assert_eq!(control.state().0, version);
    assert!(control.state().1.spec.pools.is_empty());
}

#[tokio::test]
async fn objects_round_trip_and_config_apply_is_idempotent() {
    let control = fake();
    let api = Api::logged_in(control.clone()).await;
    let pool = json!({"name": "app", "members": [{"address": "10.0.0.1:80"}]});
    let (status, v) = api.send("POST", "/api/v1/pools", pool.to_string()).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let (status, _) = api.send("POST", "/api/v1/pools", pool.to_string()).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let lb = json!({"name": "web", "listeners": [{"port": 80, "protocol": "http", "default_pool": "app"}]});
    let (status, v) = api
        .send("PUT", "/api/v1/load-balancers/web", lb.to_string())
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let (status, v) = api.send("GET", "/api/v1/load-balancers/web", "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["listeners"][0]["default_pool"], "app");

    // A pool in use cannot go; the refusal names why.
    let (status, v) = api.send("DELETE", "/api/v1/pools/app", "").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{v}");

    let (_, doc) = api.send("GET", "/api/v1/config", "").await;
    let version = control.state().0;
    let (status, v) = api.send("PUT", "/api/v1/config", doc.to_string()).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["changes"], json!([]));
    assert_eq!(
        control.state().0,
        version,
        "an identical apply commits nothing"
    );

    let (status, v) = api
        .send(
            "POST",
            "/api/v1/tokens",
            json!({"ttl": "10m", "uses": 2}).to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let t = v["token"].as_str().unwrap();
    assert!(t.starts_with(&format!("KEEL1.{}.", "ab".repeat(32))), "{t}");
    let (status, v) = api
        .send("POST", "/api/v1/tokens", json!({"ttl": "soon"}).to_string())
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
}

/// An apply planned before a registration landed must not undo it: the
/// apply is committed only while the config is the one it read, and is
/// planned again when another write came between.
#[tokio::test]
async fn an_apply_never_undoes_a_write_that_landed_while_it_was_planned() {
    let control = fake();
    {
        let mut guard = control.state.lock().unwrap();
        let mut state = (*guard.1).clone();
        state.version = keel_model::CLUSTER_VERSION;
        *guard = (guard.0, Arc::new(state));
    }
    let api = Api::logged_in(control.clone()).await;
    let file = |algorithm: &str| {
        json!({"pools": [{"name": "app", "algorithm": algorithm,
                          "members": [{"address": "10.0.0.1:80"}]}]})
        .to_string()
    };
    let (status, v) = api
        .send("PATCH", "/api/v1/config", file("round_robin"))
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    // A backend registers itself while the next apply is being planned.
    *control.interloper.lock().unwrap() = Some(keel_model::ClusterCommand::Managed {
        manager: "registration".into(),
        command: Box::new(keel_model::ClusterCommand::Spec(
            keel_model::Command::UpsertMember {
                pool: "app".into(),
                member: keel_model::Member {
                    address: "10.0.0.2:80".parse().unwrap(),
                    weight: 1,
                    enabled: true,
                },
            },
        )),
    });
    let (status, v) = api
        .send("PATCH", "/api/v1/config", file("random_two"))
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let (_, pool) = api.send("GET", "/api/v1/pools/app", "").await;
    assert_eq!(pool["algorithm"], "random_two");
    let members: Vec<&str> = pool["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["address"].as_str().unwrap())
        .collect();
    assert_eq!(
        members,
        ["10.0.0.1:80", "10.0.0.2:80"],
        "the registration survives"
    );
}

/// A writer names itself in `Keel-Manager`; a name that is not one is
/// refused before anything is read or written, and says what a name is.
#[tokio::test]
async fn a_bad_manager_name_is_refused_and_changes_nothing() {
    let control = fake();
    {
        let mut guard = control.state.lock().unwrap();
        let mut state = (*guard.1).clone();
        state.version = keel_model::CLUSTER_VERSION;
        *guard = (guard.0, Arc::new(state));
    }
    let api = Api::logged_in(control.clone()).await;
    let body = json!({"pools": [{"name": "app"}]}).to_string();
    let before = control.state().0;
    for bad in ["has space", "a/b", &"m".repeat(65), ""] {
        let req = Request::builder()
            .method("PATCH")
            .uri("/api/v1/config")
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {}", api.token))
            .header("keel-manager", bad)
            .body(Body::from(body.clone()))
            .unwrap();
        let resp = api.app.clone().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{bad:?}");
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            text.contains("keel-manager") && text.contains("letters, digits"),
            "{text}"
        );
    }
    assert_eq!(control.state().0, before);
    // A good name is recorded as the manager of what it made.
    let req = Request::builder()
        .method("PATCH")
        .uri("/api/v1/config")
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {}", api.token))
        .header("keel-manager", "gitops.prod-1")
        .body(Body::from(body))
        .unwrap();
    let resp = api.app.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let (_, managers) = api.send("GET", "/api/v1/managers", "").await;
    assert_eq!(managers["pool/app"], "gitops.prod-1", "{managers}");
}

#[tokio::test]
async fn every_documented_path_is_routed() {
    let api = Api::logged_in(fake()).await;
    let (status, doc) = call(&api.app, "GET", "/api/v1/openapi.json", None, "").await;
    assert_eq!(status, StatusCode::OK);
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 10);
    // Logging out would end this test's session; the dashboard tests cover it.
    for (path, ops) in paths.iter().filter(|(p, _)| *p != "/api/v1/logout") {
        let concrete = path
            .replace("{name}", "x")
            .replace("{id}", "x")
            .replace("{address}", "x");
        for method in ops.as_object().unwrap().keys() {
            let (_, v) = api.send(&method.to_uppercase(), &concrete, "{}").await;
            assert_ne!(
                v["error"]["message"], "no such API endpoint",
                "{method} {path} is documented but not routed"
            );
        }
    }
    let (status, v) = api.send("GET", "/api/v1/nope", "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(v["error"]["message"], "no such API endpoint");
}

fn cert(names: &[&str], expired: bool) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap();
    if expired {
        params.not_before = rcgen::date_time_ymd(2019, 1, 1);
        params.not_after = rcgen::date_time_ymd(2020, 1, 1);
    }
    (params.self_signed(&key).unwrap().pem(), key.serialize_pem())
}

#[tokio::test]
async fn certificates_are_checked_on_submission_and_keys_never_come_back() {
    let control = fake();
    let api = Api::logged_in(control.clone()).await;
    let (cert_pem, key_pem) = cert(&["shop.example"], false);
    let body = json!({"name": "site", "cert_pem": cert_pem, "key_pem": key_pem});
    let (status, v) = api
        .send("POST", "/api/v1/certificates", body.to_string())
        .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    assert!(v.get("key_pem").is_none(), "{v}");

    // Keys are stored but never shown: not in the object, the list or the config.
    assert_eq!(control.state().1.spec.certificates["site"].key_pem, key_pem);
    for path in [
        "/api/v1/certificates/site",
        "/api/v1/certificates",
        "/api/v1/config",
    ] {
        let (_, v) = api.send("GET", path, "").await;
        assert!(!v.to_string().contains("PRIVATE KEY"), "{path}: {v}");
    }
    // So an exported config applies back unchanged (the stored key is kept).
    let (_, doc) = api.send("GET", "/api/v1/config", "").await;
    let (status, v) = api.send("PUT", "/api/v1/config", doc.to_string()).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["changes"], json!([]));

    // Mismatched key, expired certificate, garbage: 422 naming the field.
    let (_, other_key) = cert(&["shop.example"], false);
    let cases = [
        (
            json!({"name": "x", "cert_pem": cert_pem, "key_pem": other_key}),
            "key_pem",
        ),
        (
            {
                let (c, k) = cert(&["old.example"], true);
                json!({"name": "x", "cert_pem": c, "key_pem": k})
            },
            "cert_pem",
        ),
        (
            json!({"name": "x", "cert_pem": "-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n", "key_pem": key_pem}),
            "cert_pem",
        ),
        (json!({"name": "x", "cert_pem": cert_pem}), "key_pem"),
    ];
    for (body, field) in cases {
        let (status, v) = api
            .send("POST", "/api/v1/certificates", body.to_string())
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
        assert_eq!(fields(&v), [field], "{v}");
    }
    assert_eq!(control.state().1.spec.certificates.len(), 1);
    let (status, _) = api.send("DELETE", "/api/v1/certificates/site", "").await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(control.state().1.spec.certificates.is_empty());
}

#[tokio::test]
async fn logging_in_forgets_expired_sessions() {
    let control = fake();
    {
        let mut guard = control.state.lock().unwrap();
        let mut next = (*guard.1).clone();
        next.api_tokens.insert(
            "old".into(),
            keel_model::ApiToken {
                name: "session:admin".into(),
                user: "admin".into(),
                secret_sha256: "00".repeat(32),
                created_at: 0,
                expires_at: Some(1),
                role: None,
                load_balancers: Vec::new(),
                pools: Vec::new(),
            },
        );
        guard.1 = Arc::new(next);
    }
    let app = keel_api::router(control.clone(), keel_api::Options::default());
    login(&app).await;
    let tokens = &control.state().1.api_tokens;
    assert!(!tokens.contains_key("old"));
    assert_eq!(tokens.len(), 1, "only the new session is left");
}

/// One logged-in app for every generated case (a login hashes a password,
/// which is slow on purpose).
fn shared() -> &'static (tokio::runtime::Runtime, axum::Router, String, Arc<Fake>) {
    static SHARED: std::sync::OnceLock<(tokio::runtime::Runtime, axum::Router, String, Arc<Fake>)> =
        std::sync::OnceLock::new();
    SHARED.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let control = fake();
        let app = keel_api::router(control.clone(), keel_api::Options::default());
        let token = rt.block_on(login(&app));
        (rt, app, token, control)
    })
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
    /// Arbitrary bodies to every write endpoint get a 4xx (never a 5xx, never
    /// a panic) and change nothing.
    #[test]
    fn arbitrary_bodies_are_refused_cleanly(body in proptest::prelude::any::<Vec<u8>>(), which in 0usize..9) {
        let (rt, app, token, control) = shared();
        rt.block_on(async {
            let before = control.state();
            let (method, path) = [
                ("POST", "/api/v1/pools"),
                ("PUT", "/api/v1/pools/app"),
                ("POST", "/api/v1/load-balancers"),
                ("PUT", "/api/v1/config"),
                ("POST", "/api/v1/tokens"),
                ("POST", "/api/v1/certificates"),
                ("PUT", "/api/v1/config?dry_run=true"),
                ("PATCH", "/api/v1/pools/app/members/10.0.0.1%3A80"),
                ("POST", "/api/v1/login"),
            ][which];
            let (status, v) = call(app, method, path, Some(token), body).await;
            assert!(status.is_client_error() || status.is_success(), "{status} {v}");
            if !status.is_success() {
                assert_eq!(control.state().0, before.0, "a refused body changed the state");
            }
        });
    }
}

/// A call with an optional `If-Match`: status, the answer's `ETag`, body.
async fn tagged(
    api: &Api,
    method: &str,
    path: &str,
    if_match: Option<&str>,
    body: Value,
) -> (StatusCode, Option<String>, Value) {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {}", api.token));
    if let Some(tag) = if_match {
        req = req.header("if-match", tag);
    }
    let body = if body.is_null() {
        String::new()
    } else {
        body.to_string()
    };
    let resp = api
        .app
        .clone()
        .oneshot(req.body(Body::from(body)).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let etag = resp
        .headers()
        .get("etag")
        .map(|v| v.to_str().unwrap().to_owned());
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        etag,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn a_write_with_a_stale_if_match_gets_412_and_changes_nothing() {
    let api = Api::logged_in(fake()).await;
    let pool = |weight: u32| json!({"name": "app", "members": [{"address": "10.0.0.1:80", "weight": weight}]});
    let (status, _) = api.send("POST", "/api/v1/pools", pool(1).to_string()).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, read, v) = tagged(&api, "GET", "/api/v1/pools/app", None, Value::Null).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let read = read.expect("an ETag");
    assert!(read.starts_with('"') && read.len() == 18, "{read}");

    // Someone changes the pool (a registration, another session) ...
    let (status, _, _) = tagged(&api, "PUT", "/api/v1/pools/app", Some(&read), pool(2)).await;
    assert_eq!(status, StatusCode::OK);
    // ... so a write from the first read is refused and changes nothing.
    let (status, _, v) = tagged(&api, "PUT", "/api/v1/pools/app", Some(&read), pool(3)).await;
    assert_eq!(status, StatusCode::PRECONDITION_FAILED, "{v}");
    assert_eq!(v["error"]["code"], "stale");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("pool \"app\" was changed"),
        "{v}"
    );
    let (status, _, _) = tagged(
        &api,
        "DELETE",
        "/api/v1/pools/app",
        Some(&read),
        Value::Null,
    )
    .await;
    assert_eq!(status, StatusCode::PRECONDITION_FAILED);
    let (_, now, v) = tagged(&api, "GET", "/api/v1/pools/app", None, Value::Null).await;
    assert_eq!(v["members"][0]["weight"], 2, "{v}");
    assert_ne!(now.as_deref(), Some(read.as_str()));

    // The whole config has a tag too; a weak tag or `*` are understood.
    let (_, config_tag, _) = tagged(&api, "GET", "/api/v1/config", None, Value::Null).await;
    let config_tag = config_tag.expect("the config's ETag");
    let doc = json!({"load_balancers": [], "pools": [pool(4)]});
    let (status, _, v) = tagged(&api, "PUT", "/api/v1/config", Some(&read), doc.clone()).await;
    assert_eq!(status, StatusCode::PRECONDITION_FAILED, "{v}");
    let weak = format!("W/{config_tag}");
    let (status, _, v) = tagged(&api, "PUT", "/api/v1/config", Some(&weak), doc).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let (status, _, _) = tagged(&api, "DELETE", "/api/v1/pools/app", Some("*"), Value::Null).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _, _) = tagged(&api, "DELETE", "/api/v1/pools/app", Some("*"), Value::Null).await;
    assert_eq!(status, StatusCode::PRECONDITION_FAILED);
    // Without If-Match, writes go through as before.
    let (status, _) = api.send("POST", "/api/v1/pools", pool(5).to_string()).await;
    assert_eq!(status, StatusCode::CREATED);
}

#[tokio::test]
async fn draining_a_node_that_is_not_a_member_is_404_and_garbage_tags_are_stale() {
    let api = Api::logged_in(fake()).await;
    for action in ["drain", "undrain"] {
        let (status, v) = api
            .send("POST", &format!("/api/v1/nodes/nope/{action}"), "")
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("\"nope\" is not a member"),
            "{v}"
        );
    }
    let pool = json!({"name": "app", "members": []});
    let (status, _) = api.send("POST", "/api/v1/pools", pool.to_string()).await;
    assert_eq!(status, StatusCode::CREATED);
    for garbage in ["", "\"\"", "W/", "not a tag at all", "\"0000000000000000\""] {
        let (status, _, v) = tagged(
            &api,
            "PUT",
            "/api/v1/pools/app",
            Some(garbage),
            pool.clone(),
        )
        .await;
        assert_eq!(status, StatusCode::PRECONDITION_FAILED, "{garbage:?}: {v}");
    }
}

/// Garbage for the cluster's timing is refused before anything is
/// proposed (400 for what is not a timing, 422 naming the unsafe field);
/// a safe one and a secret rotation are committed, the secret named
/// nowhere in the history.
#[tokio::test]
async fn timing_garbage_is_refused_and_changes_nothing_and_a_rotation_commits() {
    let control = fake();
    let api = Api::logged_in(control.clone()).await;
    let version = control.state().0;
    for body in [
        "not json".to_owned(),
        json!({"heartbeat_ms": "fast"}).to_string(),
        json!({"heartbeat_ms": -1, "election_min_ms": 80, "election_max_ms": 160, "lease_ms": 110})
            .to_string(),
    ] {
        let (status, v) = api.send("PUT", "/api/v1/cluster/timing", body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    }
    for (timing, field) in [
        ((0, 80, 160, 110), "heartbeat"),
        ((30, 160, 80, 50), "election_timeout"),
        ((30, 80, 160, 150), "lease"),
        ((30, 80, 160, 0), "lease"),
    ] {
        let body = json!({"heartbeat_ms": timing.0, "election_min_ms": timing.1,
                          "election_max_ms": timing.2, "lease_ms": timing.3});
        let (status, v) = api
            .send("PUT", "/api/v1/cluster/timing", body.to_string())
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
        assert_eq!(fields(&v), [field], "{v}");
    }
    assert_eq!(control.state().0, version, "a refused timing was proposed");

    let fast =
        json!({"heartbeat_ms": 30, "election_min_ms": 80, "election_max_ms": 160, "lease_ms": 110});
    let (status, v) = api
        .send("PUT", "/api/v1/cluster/timing", fast.to_string())
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{v}");
    assert_eq!(control.state().1.timing.map(|t| t.lease_ms), Some(110));

    let (status, v) = api.send("POST", "/api/v1/cluster/secret/rotate", "").await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{v}");
    let state = control.state().1;
    let secret = state.secret.clone().expect("a secret");
    let (status, first) = api.send("POST", "/api/v1/cluster/secret/rotate", "").await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{first}");
    assert_ne!(
        control.state().1.secret,
        Some(secret.clone()),
        "a new secret"
    );
    let (_, events) = api.send("GET", "/api/v1/events", "").await;
    assert!(
        events.to_string().contains("set the cluster secret"),
        "{events}"
    );
    assert!(!events.to_string().contains(secret.expose()), "{events}");
}
