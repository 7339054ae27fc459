//! Who may do what, against a real `keel run`: every admin API route is
//! tried as an admin, an operator, a viewer and with a registration token;
//! only the allowed ones succeed, the rest get 403 naming the missing
//! permission and commit nothing. Then the lifecycle of a user: a first
//! password that must be changed, a demotion that takes effect at once, an
//! admin reset that ends the user's sessions, a deletion that ends their
//! tokens; tokens with a lesser role or a scope.

#![allow(clippy::unwrap_used)] // a failed unwrap is how a test fails

use keel_tests::node::{raw_call, KeelProcess};
use keel_tests::tls::Ca;
use keel_tests::{free_port, http_lb};
use serde_json::{json, Value};

const ADMIN_PASSWORD: &str = "test-admin-password";

/// Who a request of the matrix is made as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum As {
    Registration,
    Viewer,
    Operator,
    Admin,
}

struct Node {
    keel: KeelProcess,
    admin: String,
}

impl Node {
    fn call(&self, token: &str, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let body = body.map(Value::to_string);
        let (status, text) =
            raw_call(&self.admin, method, path, Some(token), body.as_deref()).unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    fn login(&self, user: &str, password: &str) -> Result<(String, bool), (u16, Value)> {
        let body = json!({"user": user, "password": password}).to_string();
        let (status, text) =
            raw_call(&self.admin, "POST", "/api/v1/login", None, Some(&body)).unwrap();
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if status != 200 {
            return Err((status, v));
        }
        Ok((
            v["token"].as_str().unwrap().to_owned(),
            v["must_change_password"] == true,
        ))
    }

    /// The log index the node has applied: any write moves it.
    fn version(&self, admin: &str) -> u64 {
        self.call(admin, "GET", "/api/v1/status", None).1["applied_version"]
            .as_u64()
            .unwrap()
    }

    /// A user the admin adds with `role`, logged in after changing the
    /// first password: their session token.
    fn user(&self, admin: &str, name: &str, role: &str) -> String {
        let first = format!("first password of {name}");
        let (status, body) = self.call(
            admin,
            "POST",
            "/api/v1/users",
            Some(&json!({"name": name, "role": role, "password": first})),
        );
        assert_eq!(status, 201, "{body}");
        let (token, must_change) = self.login(name, &first).unwrap();
        assert!(must_change);
        // Until the password is their own, nothing else.
        let (status, body) = self.call(&token, "GET", "/api/v1/pools", None);
        assert_eq!(status, 403, "{body}");
        assert_eq!(body["error"]["code"], "password_change_required", "{body}");
        let change = |current: &str| json!({"password": format!("own password of {name}"), "current_password": current});
        let path = format!("/api/v1/users/{name}/password");
        let (status, _) = self.call(&token, "POST", &path, Some(&change("a wrong guess")));
        assert_eq!(status, 403);
        let (status, body) = self.call(&token, "POST", &path, Some(&change(&first)));
        assert_eq!(status, 204, "{body}");
        let (status, me) = self.call(&token, "GET", "/api/v1/session", None);
        assert_eq!(status, 200);
        assert_eq!(
            (me["role"].as_str(), me["must_change_password"].as_bool()),
            (Some(role), Some(false))
        );
        token
    }
}

fn start() -> Node {
    let port = free_port();
    let config = http_lb(port, "members: [ { address: \"10.0.9.1:80\" } ]").replace(
        "pools:\n",
        "pools:\n  - name: other\n    members: [ { address: \"10.0.9.2:80\" } ]\n",
    );
    let keel = KeelProcess::start(&config);
    let admin = keel.admin.to_string();
    Node { keel, admin }
}

/// One request of the matrix: who may make it at least, and what an
/// allowed request answers (2xx unless `allowed` says otherwise).
struct Step {
    least: As,
    method: &'static str,
    path: String,
    body: Option<Value>,
    /// Registration tokens may (register, deregister) though they are
    /// below viewers.
    registration_too: bool,
    allowed: fn(u16) -> bool,
}

fn step(least: As, method: &'static str, path: impl Into<String>, body: Option<Value>) -> Step {
    Step {
        least,
        method,
        path: path.into(),
        body,
        registration_too: false,
        allowed: |s| (200..300).contains(&s),
    }
}

/// Every route of the admin API, in an order where each allowed request
/// can succeed (objects are made before they are changed or removed);
/// `me` names the objects so the roles' runs do not meet. `{id}` is the id
/// the last creation answered with.
fn matrix(me: &str, port: u16, cert: &keel_tests::tls::Issued, setup: &Setup) -> Vec<Step> {
    use As::*;
    let pool = json!({"name": format!("p-{me}"), "members": [{"address": "10.0.9.3:80"}]});
    let lb = json!({"name": format!("lb-{me}"), "listeners": [{"port": port, "protocol": "http", "bind": "127.0.0.1", "default_pool": "app"}]});
    let certificate =
        json!({"name": format!("c-{me}"), "cert_pem": cert.cert_pem, "key_pem": cert.key_pem});
    let member = json!({"pool": "app", "address": format!("10.0.8.{}:80", me.len())});
    let not_found = |s: u16| s == 404;
    let mut steps = vec![
        step(Viewer, "GET", "/api/v1/status", None),
        step(Viewer, "GET", "/api/v1/traffic", None),
        step(Viewer, "GET", "/api/v1/events", None),
        step(Viewer, "GET", "/api/v1/config", None),
        step(Viewer, "GET", "/api/v1/managers", None),
        step(Viewer, "GET", "/api/v1/load-balancers", None),
        step(Viewer, "GET", "/api/v1/load-balancers/web", None),
        step(Viewer, "GET", "/api/v1/pools", None),
        step(Viewer, "GET", "/api/v1/pools/app", None),
        step(Viewer, "GET", "/api/v1/certificates", None),
        step(Viewer, "GET", "/api/v1/certificates/c-seed", None),
        step(Viewer, "GET", "/api/v1/nodes", None),
        step(Viewer, "GET", "/api/v1/vips", None),
        step(Viewer, "GET", "/api/v1/instances", None),
        step(Viewer, "GET", "/api/v1/session", None),
        step(
            Operator,
            "PUT",
            "/api/v1/config?dry_run=true",
            Some(setup.config.clone()),
        ),
        step(
            Operator,
            "PATCH",
            "/api/v1/config?dry_run=true",
            Some(setup.config.clone()),
        ),
        step(Operator, "POST", "/api/v1/pools", Some(pool.clone())),
        step(Operator, "PUT", format!("/api/v1/pools/p-{me}"), Some(pool)),
        step(
            Operator,
            "PATCH",
            format!("/api/v1/pools/p-{me}/members/10.0.9.3:80"),
            Some(json!({"enabled": false})),
        ),
        step(
            Operator,
            "PUT",
            format!("/api/v1/pools/p-{me}/members/10.0.9.4:80"),
            Some(json!({"weight": 2})),
        ),
        step(
            Operator,
            "DELETE",
            format!("/api/v1/pools/p-{me}/members/10.0.9.4:80"),
            None,
        ),
        step(Operator, "POST", "/api/v1/load-balancers", Some(lb.clone())),
        step(
            Operator,
            "PUT",
            format!("/api/v1/load-balancers/lb-{me}"),
            Some(lb),
        ),
        step(
            Operator,
            "DELETE",
            format!("/api/v1/load-balancers/lb-{me}"),
            None,
        ),
        step(Operator, "DELETE", format!("/api/v1/pools/p-{me}"), None),
        step(
            Operator,
            "POST",
            "/api/v1/certificates",
            Some(certificate.clone()),
        ),
        step(
            Operator,
            "PUT",
            format!("/api/v1/certificates/c-{me}"),
            Some(certificate),
        ),
        step(
            Operator,
            "DELETE",
            format!("/api/v1/certificates/c-{me}"),
            None,
        ),
        step(
            Operator,
            "PUT",
            format!("/api/v1/instances/i-{me}"),
            Some(json!({"address": "10.0.9.7"})),
        ),
        step(Viewer, "GET", "/api/v1/instances/i-seed", None),
        step(
            Operator,
            "DELETE",
            format!("/api/v1/instances/i-{me}"),
            None,
        ),
        Step {
            registration_too: true,
            ..step(Operator, "POST", "/api/v1/register", Some(member.clone()))
        },
        Step {
            registration_too: true,
            ..step(Operator, "POST", "/api/v1/deregister", Some(member))
        },
        step(Admin, "GET", "/api/v1/users", None),
        step(
            Admin,
            "POST",
            "/api/v1/users",
            Some(json!({"name": format!("u-{me}"), "password": "a first password"})),
        ),
        step(
            Admin,
            "PATCH",
            format!("/api/v1/users/u-{me}"),
            Some(json!({"role": "operator"})),
        ),
        step(
            Admin,
            "POST",
            format!("/api/v1/users/u-{me}/password"),
            Some(json!({"password": "another first password"})),
        ),
        step(Admin, "DELETE", format!("/api/v1/users/u-{me}"), None),
        step(Admin, "GET", "/api/v1/api-tokens", None),
        step(
            Admin,
            "POST",
            "/api/v1/api-tokens",
            Some(json!({"name": format!("t-{me}")})),
        ),
        step(Admin, "DELETE", "/api/v1/api-tokens/{id}", None),
        step(Admin, "GET", "/api/v1/tokens", None),
        step(Admin, "POST", "/api/v1/tokens", Some(json!({}))),
        step(Admin, "DELETE", "/api/v1/tokens/{id}", None),
        step(Admin, "GET", "/api/v1/registration-tokens", None),
        step(
            Admin,
            "POST",
            "/api/v1/registration-tokens",
            Some(json!({"name": format!("r-{me}"), "pool": "other"})),
        ),
        step(Admin, "DELETE", "/api/v1/registration-tokens/{id}", None),
        step(Admin, "GET", "/api/v1/aws-keys", None),
        step(
            Admin,
            "POST",
            "/api/v1/aws-keys",
            Some(json!({"name": format!("k-{me}")})),
        ),
        step(Admin, "DELETE", "/api/v1/aws-keys/{id}", None),
        step(
            Admin,
            "POST",
            "/api/v1/backup",
            Some(json!({"passphrase": "a backup passphrase"})),
        ),
        step(
            Admin,
            "PUT",
            "/api/v1/cluster/timing",
            Some(setup.timing.clone()),
        ),
        step(Admin, "POST", "/api/v1/cluster/secret/rotate", None),
        step(Viewer, "GET", "/api/v1/cluster/ca", None),
        // Begins a CA rotation, then abandons it.
        step(Admin, "POST", "/api/v1/cluster/ca/rotate", None),
        step(
            Admin,
            "POST",
            "/api/v1/cluster/ca/rotate?abandon=true",
            None,
        ),
        // The only node is not to be removed or drained here: a name no
        // node has shows the route let the caller through.
        Step {
            allowed: not_found,
            ..step(Admin, "POST", "/api/v1/nodes/ghost/drain", None)
        },
        Step {
            allowed: not_found,
            ..step(Admin, "POST", "/api/v1/nodes/ghost/undrain", None)
        },
        Step {
            allowed: not_found,
            ..step(Admin, "DELETE", "/api/v1/nodes/ghost", None)
        },
    ];
    // Last, as it ends the session.
    steps.push(step(Viewer, "POST", "/api/v1/logout", None));
    steps
}

/// What the matrix's requests send that is read from the node first.
struct Setup {
    timing: Value,
    config: Value,
}

/// Does `path` fit the OpenAPI path `template` (`{x}` stands for one
/// segment)?
fn fits(template: &str, path: &str) -> bool {
    let path = path.split('?').next().unwrap_or(path);
    let (t, p): (Vec<&str>, Vec<&str>) = (template.split('/').collect(), path.split('/').collect());
    t.len() == p.len() && t.iter().zip(&p).all(|(t, p)| t == p || t.starts_with('{'))
}

#[test]
fn every_route_is_allowed_only_to_the_roles_that_should_have_it() {
    let node = start();
    let (admin, _) = node.login("admin", ADMIN_PASSWORD).unwrap();
    // The matrix's admin is a second admin, so its logout leaves `admin`.
    node.user(&admin, "boss", "admin");
    let operator = node.user(&admin, "ops", "operator");
    let viewer = node.user(&admin, "view", "viewer");
    let boss = node.login("boss", "own password of boss").unwrap().0;
    let (status, body) = node.call(
        &admin,
        "POST",
        "/api/v1/registration-tokens",
        Some(&json!({"name": "backends", "pool": "app"})),
    );
    assert_eq!(status, 201, "{body}");
    let registration = body["token"].as_str().unwrap().to_owned();
    let (status, body) = node.call(
        &admin,
        "PUT",
        "/api/v1/instances/i-seed",
        Some(&json!({"address": "10.0.9.8"})),
    );
    assert_eq!(status, 200, "{body}");
    let setup = Setup {
        timing: node.call(&admin, "GET", "/api/v1/status", None).1["timing"].clone(),
        config: node.call(&admin, "GET", "/api/v1/config", None).1,
    };
    assert!(setup.timing.is_object(), "{}", setup.timing);
    let cert = Ca::new().issue(&["roles.example"]);
    let seed = json!({"name": "c-seed", "cert_pem": cert.cert_pem, "key_pem": cert.key_pem});
    let (status, body) = node.call(&admin, "POST", "/api/v1/certificates", Some(&seed));
    assert_eq!(status, 201, "{body}");

    let mut refused = 0;
    for (who, token) in [
        (As::Registration, &registration),
        (As::Viewer, &viewer),
        (As::Operator, &operator),
        (As::Admin, &boss),
    ] {
        let me = format!("{who:?}").to_lowercase();
        let mut id = String::from("none");
        for step in matrix(&me, free_port(), &cert, &setup) {
            let path = step.path.replace("{id}", &id);
            let may = if who == As::Registration {
                step.registration_too
            } else {
                who >= step.least
            };
            let before = node.version(&admin);
            let (status, body) = node.call(token, step.method, &path, step.body.as_ref());
            let what = format!("{who:?} {} {path}: {status} {body}", step.method);
            if may {
                assert!((step.allowed)(status), "allowed, but: {what}");
                if let Some(new) = body["id"].as_str().or(body["access_key_id"].as_str()) {
                    id = new.to_owned();
                }
            } else {
                refused += 1;
                assert_eq!(status, 403, "refused, but: {what}");
                let message = body["error"]["message"].as_str().unwrap_or_default();
                assert!(
                    message.contains("permission")
                        || message.contains("registration token may only"),
                    "a refusal names what is missing: {what}"
                );
                assert_eq!(
                    node.version(&admin),
                    before,
                    "a refusal committed something: {what}"
                );
            }
        }
    }
    // Registration: all but 2 of the steps; viewer: operator's and
    // admin's; operator: admin's.
    assert!(refused > 80, "{refused} refusals");

    // The matrix covers every operation the API documents, and agrees
    // with the role the document says each one needs.
    let (_, doc) = node.call(&admin, "GET", "/api/v1/openapi.json", None);
    let steps = matrix("x", 1, &cert, &setup);
    for (template, ops) in doc["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            if template == "/api/v1/login" {
                continue;
            }
            let step = steps
                .iter()
                .find(|s| s.method.eq_ignore_ascii_case(method) && fits(template, &s.path))
                .unwrap_or_else(|| panic!("{method} {template} is not in the matrix"));
            if let Some(role) = op["x-keel-role"].as_str() {
                assert_eq!(
                    role,
                    format!("{:?}", step.least).to_lowercase(),
                    "{method} {template}"
                );
            }
        }
    }
    let log = node.keel.log_text();
    assert!(log.contains("request refused"), "refusals are logged");
}

#[test]
fn roles_take_effect_at_once_and_tokens_never_exceed_their_user() {
    let node = start();
    let (admin, _) = node.login("admin", ADMIN_PASSWORD).unwrap();
    let ops = node.user(&admin, "ops", "operator");
    let pool = json!({"name": "other", "members": [{"address": "10.0.9.2:80", "weight": 2}]});
    let put = |token: &str| {
        node.call(token, "PUT", "/api/v1/pools/other", Some(&pool))
            .0
    };
    assert_eq!(put(&ops), 200);

    // A demotion applies to the session already open.
    let (status, _) = node.call(
        &admin,
        "PATCH",
        "/api/v1/users/ops",
        Some(&json!({"role": "viewer"})),
    );
    assert_eq!(status, 204);
    assert_eq!(put(&ops), 403);
    assert_eq!(node.call(&ops, "GET", "/api/v1/pools/other", None).0, 200);
    node.call(
        &admin,
        "PATCH",
        "/api/v1/users/ops",
        Some(&json!({"role": "operator"})),
    );

    // A token asks for less than its user has, never more.
    let token = |body: Value| {
        let (status, answer) = node.call(&admin, "POST", "/api/v1/api-tokens", Some(&body));
        assert_eq!(status, 201, "{answer}");
        answer["token"].as_str().unwrap().to_owned()
    };
    let read_only = token(json!({"name": "dashboards", "role": "viewer"}));
    assert_eq!(put(&read_only), 403);
    let for_ops = token(json!({"name": "ci", "user": "ops", "role": "admin"}));
    assert_eq!(put(&for_ops), 200);
    assert_eq!(
        node.call(&for_ops, "GET", "/api/v1/users", None).0,
        403,
        "ops's token is no admin"
    );
    let (status, body) = node.call(
        &admin,
        "POST",
        "/api/v1/api-tokens",
        Some(&json!({"name": "x", "user": "nobody"})),
    );
    assert_eq!(status, 422, "{body}");

    // A scoped token changes only what it names.
    let scoped = token(json!({"name": "app deploys", "pools": ["app"]}));
    let app = json!({"name": "app", "members": [{"address": "10.0.9.1:80", "weight": 3}]});
    assert_eq!(
        node.call(&scoped, "PUT", "/api/v1/pools/app", Some(&app)).0,
        200
    );
    let (status, body) = node.call(&scoped, "PUT", "/api/v1/pools/other", Some(&pool));
    assert_eq!(status, 403, "{body}");
    assert!(body.to_string().contains("scope"), "{body}");
    assert_eq!(
        node.call(&scoped, "DELETE", "/api/v1/load-balancers/web", None)
            .0,
        403
    );
    let (status, body) = node.call(
        &admin,
        "POST",
        "/api/v1/api-tokens",
        Some(&json!({"name": "x", "pools": ["nope"]})),
    );
    assert_eq!(status, 422, "{body}");
    assert!(body.to_string().contains("pools"), "{body}");

    // An admin's reset ends the user's sessions; the next login must
    // change the password.
    let (status, _) = node.call(
        &admin,
        "POST",
        "/api/v1/users/ops/password",
        Some(&json!({"password": "reset by the admin"})),
    );
    assert_eq!(status, 204);
    assert_eq!(
        node.call(&ops, "GET", "/api/v1/pools", None).0,
        401,
        "the session ended"
    );
    assert_eq!(
        put(&for_ops),
        403,
        "an API token of a user who must change the password"
    );
    let (again, must_change) = node.login("ops", "reset by the admin").unwrap();
    assert!(must_change);
    assert_eq!(node.call(&again, "GET", "/api/v1/pools", None).0, 403);

    // There is always an admin; a deleted user's tokens die with them.
    let (status, body) = node.call(&admin, "DELETE", "/api/v1/users/admin", None);
    assert_eq!(status, 409, "{body}");
    assert!(body.to_string().contains("last admin"), "{body}");
    let (status, body) = node.call(
        &admin,
        "PATCH",
        "/api/v1/users/admin",
        Some(&json!({"role": "viewer"})),
    );
    assert_eq!(status, 409, "{body}");
    assert_eq!(
        node.call(&admin, "DELETE", "/api/v1/users/ops", None).0,
        204
    );
    assert_eq!(node.call(&for_ops, "GET", "/api/v1/pools", None).0, 401);
    assert!(node.login("ops", "reset by the admin").is_err());
    let (_, users) = node.call(&admin, "GET", "/api/v1/users", None);
    let names: Vec<&str> = users
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|u| u["name"].as_str())
        .collect();
    assert_eq!(names, ["admin"]);

    // What was done, and by whom, is in the history.
    let (_, events) = node.call(&admin, "GET", "/api/v1/events", None);
    let text = events.to_string();
    for what in [
        "create user ops (operator)",
        "make user ops viewer",
        "reset the password of user ops",
        "delete user ops",
    ] {
        assert!(text.contains(what), "{what} missing from {text}");
    }
}

#[test]
fn the_cli_manages_users_and_scoped_tokens() {
    let node = start();
    let home = tempfile::tempdir().unwrap();
    let server = format!("http://{}", node.admin);
    let keel = |args: &[&str], stdin: &str| {
        let args: Vec<&str> = args.iter().copied().chain(["--server", &server]).collect();
        let out = keel_tests::node::keel_command(
            &args,
            &[("XDG_CONFIG_HOME", home.path().to_str().unwrap())],
            stdin,
        );
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };
    let ok = |(ok, text): (bool, String)| {
        assert!(ok, "{text}");
        text
    };
    ok(keel(&["login", "--password-stdin"], ADMIN_PASSWORD));
    ok(keel(
        &[
            "user",
            "add",
            "ops",
            "--role",
            "operator",
            "--password-stdin",
        ],
        "first password of ops\n",
    ));
    let list = ok(keel(&["user", "list"], ""));
    assert!(
        list.contains("ops  operator  must-change-password") && list.contains("admin  admin"),
        "{list}"
    );
    ok(keel(&["user", "role", "ops", "viewer"], ""));
    assert!(ok(keel(&["get", "users"], "")).contains("ops  viewer"));
    let (refused, text) = keel(&["user", "role", "ops", "root"], "");
    assert!(!refused && text.contains("role"), "{text}");
    let token = ok(keel(
        &[
            "api-token",
            "create",
            "deploys",
            "--role",
            "operator",
            "--pool",
            "app",
        ],
        "",
    ));
    assert!(token.trim().starts_with("keel_"), "{token}");
    let tokens = ok(keel(&["get", "api-tokens"], ""));
    assert!(
        tokens.contains("deploys")
            && tokens.contains("role=operator")
            && tokens.contains("pools=app"),
        "{tokens}"
    );
    // Your own password: the current one first, then the new one.
    let (refused, text) = keel(
        &["user", "passwd", "--password-stdin"],
        "wrong\nnew password of admin\n",
    );
    assert!(!refused && text.contains("wrong password"), "{text}");
    ok(keel(
        &["user", "passwd", "--password-stdin"],
        &format!("{ADMIN_PASSWORD}\nnew password of admin\n"),
    ));
    assert!(node.login("admin", "new password of admin").is_ok());
    ok(keel(&["user", "delete", "ops"], ""));
    assert!(!ok(keel(&["user", "list"], "")).contains("ops"));
}
