//! The OpenAPI 3 description of `/api/v1`, written by hand and kept next to
//! the router; a test checks every routed path appears here.

use axum::Json;
use keel_web_core::access::{required, Permission};
use serde_json::{json, Value};

/// Every path the API routes, with its methods and a one-line summary.
pub(crate) const PATHS: &[(&str, &[(&str, &str)])] = &[
    (
        "/api/v1/login",
        &[(
            "post",
            "Exchange the admin user name and password for a session token (or, with \"cookie\": true, a session cookie and a CSRF token)",
        )],
    ),
    (
        "/api/v1/logout",
        &[("post", "Revoke the token or session the request carries")],
    ),
    (
        "/api/v1/session",
        &[(
            "get",
            "Who the caller is; for cookie sessions, the X-CSRF-Token value",
        )],
    ),
    (
        "/api/v1/traffic",
        &[(
            "get",
            "Requests/s, error rate, connections and p50/p99 latency per load balancer and pool, last 15 minutes",
        )],
    ),
    (
        "/api/v1/events",
        &[(
            "get",
            "Recent events: config changes and who made them, leader changes, VIP moves, member and node flips",
        )],
    ),
    (
        "/api/v1/status",
        &[(
            "get",
            "Leader, term, and each node's role, applied version and readiness",
        )],
    ),
    (
        "/api/v1/vips",
        &[(
            "get",
            "Each load balancer's VIP and the nodes holding it now",
        )],
    ),
    (
        "/api/v1/config",
        &[
            (
                "get",
                "The whole declarative config (JSON, or YAML with ?format=yaml), with its ETag",
            ),
            (
                "put",
                "Replace the whole config with the document, whoever set what it lacks; only the differences are committed (?dry_run=true: only list them; If-Match: 412 if it changed since)",
            ),
            (
                "patch",
                "Apply a declarative config as the caller's manager (Keel-Manager header): create or replace what it names, leave what other managers set; 409 naming what another manager set that it would change (?force=true takes it over); ?prune=true also removes what this manager applied before and the document dropped; ?dry_run=true lists the changes and conflicts",
            ),
        ],
    ),
    (
        "/api/v1/managers",
        &[(
            "get",
            "Who manages each load balancer, pool, member, certificate and rule, by object key (pool/NAME, member/POOL/ADDRESS, rule/LB/PORT/PRIORITY, ...), and who set a field of one where another manager did (pool/NAME#FIELD)",
        )],
    ),
    (
        "/api/v1/backup",
        &[(
            "post",
            "The whole replicated state sealed with {\"passphrase\"} (at least 12 characters): a file `keel run --restore` seeds a new cluster from",
        )],
    ),
    (
        "/api/v1/load-balancers",
        &[
            ("get", "List load balancers"),
            ("post", "Create a load balancer"),
        ],
    ),
    (
        "/api/v1/load-balancers/{name}",
        &[
            ("get", "Read a load balancer (with its ETag)"),
            ("put", "Create or replace a load balancer"),
            ("delete", "Delete a load balancer"),
        ],
    ),
    (
        "/api/v1/pools",
        &[
            ("get", "List pools with their members"),
            ("post", "Create a pool"),
        ],
    ),
    (
        "/api/v1/pools/{name}",
        &[
            ("get", "Read a pool (with its ETag)"),
            ("put", "Create or replace a pool (If-Match: 412 if it changed since)"),
            ("delete", "Delete a pool no listener uses (If-Match: 412 if it changed since)"),
        ],
    ),
    (
        "/api/v1/pools/{name}/members/{address}",
        &[
            (
                "put",
                "Add or replace one member ({\"weight\": 0-1000, \"enabled\": bool}); the pool's other members are untouched",
            ),
            (
                "patch",
                "Drain ({\"enabled\": false}) or re-enable a member",
            ),
            (
                "delete",
                "Remove one member; it drains within the pool's drain timeout",
            ),
        ],
    ),
    (
        "/api/v1/certificates",
        &[
            ("get", "List certificates (keys are never returned)"),
            (
                "post",
                "Add a certificate and key (checked: parses, key matches, valid now, names a host)",
            ),
        ],
    ),
    (
        "/api/v1/certificates/{name}",
        &[
            ("get", "Read a certificate (without its key; with its ETag)"),
            (
                "put",
                "Create or replace a certificate; without key_pem the stored key is kept",
            ),
            ("delete", "Delete a certificate"),
        ],
    ),
    ("/api/v1/nodes", &[("get", "List the cluster's nodes")]),
    (
        "/api/v1/nodes/{name}",
        &[("delete", "Remove a node from the cluster")],
    ),
    (
        "/api/v1/nodes/{name}/drain",
        &[(
            "post",
            "Drain a node: it hands over its VIPs and leadership and keeps serving (409 when no \
             other voter would be left undrained)",
        )],
    ),
    (
        "/api/v1/nodes/{name}/undrain",
        &[("post", "Let a drained node hold VIPs and lead again")],
    ),
    (
        "/api/v1/cluster/secret/rotate",
        &[(
            "post",
            "Rotate the cluster secret the gossip key derives from (gossip runs through it)",
        )],
    ),
    (
        "/api/v1/cluster/ca",
        &[(
            "get",
            "The cluster CA: the one that signs, those trusted (with their certificates), \
             and how far a rotation has come on every member",
        )],
    ),
    (
        "/api/v1/cluster/ca/rotate",
        &[(
            "post",
            "Take the next step of a CA rotation: trust a new CA, then sign with it and make \
             every certificate again, then drop the old one (?abandon=true drops the new one \
             before it signs; 409 naming the members it waits for)",
        )],
    ),
    (
        "/api/v1/cluster/timing",
        &[(
            "put",
            "Set the Raft timing every node runs from its next start (heartbeat_ms, \
             election_min_ms, election_max_ms, lease_ms; 422 naming the field when unsafe)",
        )],
    ),
    (
        "/api/v1/tokens",
        &[
            ("get", "List join tokens"),
            ("post", "Create a join token (ttl, uses)"),
        ],
    ),
    ("/api/v1/tokens/{id}", &[("delete", "Revoke a join token")]),
    (
        "/api/v1/api-tokens",
        &[
            ("get", "List API tokens"),
            (
                "post",
                "Create an API token (shown once): {name, ttl, user, role, load_balancers, pools}",
            ),
        ],
    ),
    (
        "/api/v1/api-tokens/{id}",
        &[("delete", "Revoke an API token")],
    ),
    (
        "/api/v1/users",
        &[
            ("get", "List users with their roles"),
            (
                "post",
                "Add a user: {name, role (admin, operator, viewer), password}; they must change the password at their first login",
            ),
        ],
    ),
    (
        "/api/v1/users/{name}",
        &[
            ("patch", "Change a user's role: {role}"),
            ("delete", "Delete a user with their API tokens and AWS keys"),
        ],
    ),
    (
        "/api/v1/users/{name}/password",
        &[(
            "post",
            "Change your own password ({password, current_password}; any user) or, as an admin, reset another user's ({password}; they must change it at their next login); ends that user's other sessions",
        )],
    ),
    (
        "/api/v1/registration-tokens",
        &[
            ("get", "List registration tokens"),
            (
                "post",
                "Create a token that may only (de)register members of one pool (shown once)",
            ),
        ],
    ),
    (
        "/api/v1/registration-tokens/{id}",
        &[("delete", "Revoke a registration token")],
    ),
    (
        "/api/v1/aws-keys",
        &[
            ("get", "List access keys of the AWS-compatible API"),
            (
                "post",
                "Create an access key for the AWS-compatible API (secret shown once)",
            ),
        ],
    ),
    (
        "/api/v1/aws-keys/{id}",
        &[("delete", "Revoke an AWS access key")],
    ),
    (
        "/api/v1/instances",
        &[(
            "get",
            "List the instance registry: what classic ELB instance IDs stand for",
        )],
    ),
    (
        "/api/v1/instances/{id}",
        &[
            ("get", "Show an instance ID's address"),
            ("put", "Add an instance ID or move it: {address}"),
            ("delete", "Remove an instance ID"),
        ],
    ),
    (
        "/api/v1/register",
        &[(
            "post",
            "Add a member to a pool, with a registration token for it: {pool, address, weight}",
        )],
    ),
    (
        "/api/v1/deregister",
        &[(
            "post",
            "Remove a member from a pool (it drains), with a registration token for it",
        )],
    ),
];

/// The permission an operation needs (none for login, the document and
/// (de)registration, which check their own credentials).
fn permission(method: &str, path: &str) -> Option<Permission> {
    if matches!(
        path,
        "/api/v1/login" | "/api/v1/openapi.json" | "/api/v1/register" | "/api/v1/deregister"
    ) {
        return None;
    }
    let method = http::Method::from_bytes(method.to_uppercase().as_bytes()).ok()?;
    Some(required(&method, path, ""))
}

pub(crate) async fn document() -> Json<Value> {
    let mut paths = serde_json::Map::new();
    for (path, methods) in PATHS {
        let mut ops = serde_json::Map::new();
        for (method, summary) in *methods {
            let mut op = json!({
                "summary": summary,
                "responses": {
                    "default": {
                        "description": "An error",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
                    }
                }
            });
            if *path != "/api/v1/login" {
                op["security"] = json!([{"bearer": []}, {"session": []}]);
            }
            if let Some(need) = permission(method, path) {
                op["x-keel-permission"] = json!(need.name());
                op["x-keel-role"] = json!(need.role());
            }
            ops.insert((*method).to_owned(), op);
        }
        paths.insert((*path).to_owned(), Value::Object(ops));
    }
    Json(json!({
        "openapi": "3.0.3",
        "info": {"title": "Keel admin API", "version": env!("CARGO_PKG_VERSION")},
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "session": {"type": "apiKey", "in": "cookie", "name": "keel_session",
                            "description": "The dashboard's session; changes also need the X-CSRF-Token header"}
            },
            "schemas": {
                "Error": {
                    "type": "object",
                    "properties": {
                        "error": {
                            "type": "object",
                            "required": ["code", "message"],
                            "properties": {
                                "code": {"type": "string"},
                                "message": {"type": "string"},
                                "field": {"type": "string"}
                            }
                        }
                    }
                }
            }
        }
    }))
}
