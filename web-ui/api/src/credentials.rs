//! The credentials the API issues, as one family: join tokens
//! (`/api/v1/tokens`), API tokens (`/api/v1/api-tokens`), registration
//! tokens (`/api/v1/registration-tokens`) and AWS access keys
//! (`/api/v1/aws-keys`). Each kind is listed without its secret, made with
//! its secret shown once in the answer, and revoked by id, through the same
//! three handlers; a kind says only what it takes, how it is shown and
//! which commands record it.

use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::routing::{delete, get};
use axum::{Extension, Json, Router};
use http::StatusCode;
use keel_model::{ApiToken, ClusterCommand, ClusterState, JoinToken, Role};
use keel_web_core::access::Caller;
use keel_web_core::auth::{new_bearer, random_hex, sha256_hex};
use keel_web_core::ApiError;
use keel_web_core::ControlPlane;
use keel_web_core::{commit, now};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::{App, AppState};

/// What making a credential may read.
pub(crate) struct Making<'a> {
    pub state: &'a ClusterState,
    pub caller: &'a Caller,
    /// The cluster CA's fingerprint (join tokens pin it).
    pub ca_fingerprint: String,
}

/// One kind of credential.
pub(crate) trait Credential: 'static {
    /// What `POST` takes.
    type New: DeserializeOwned + Send + 'static;
    /// One of them as listed: never its secret.
    type View: Serialize + Send;
    /// The answer to `POST`: the secret, shown this once.
    type Made: Serialize + Send;
    /// For the log: `join token`.
    const KIND: &'static str;

    fn list(state: &ClusterState) -> Vec<Self::View>;

    /// Checks `new` and makes the credential: the command that records it
    /// and the answer.
    fn make(m: &Making<'_>, new: Self::New) -> Result<(ClusterCommand, Self::Made), ApiError>;

    fn revoke(id: String) -> ClusterCommand;
}

/// `GET`, `POST` on `path` and `DELETE` on `path/{id}` for kind `K`.
pub(crate) fn routes<C: ControlPlane, K: Credential>(path: &str) -> Router<std::sync::Arc<App<C>>> {
    Router::new()
        .route(path, get(list::<C, K>).post(create::<C, K>))
        .route(&format!("{path}/{{id}}"), delete(revoke::<C, K>))
}

async fn list<C: ControlPlane, K: Credential>(State(app): AppState<C>) -> Json<Vec<K::View>> {
    let (_, state) = app.control.state();
    Json(K::list(&state))
}

async fn create<C: ControlPlane, K: Credential>(
    State(app): AppState<C>,
    Extension(caller): Extension<Caller>,
    body: Result<Json<K::New>, JsonRejection>,
) -> Result<(StatusCode, Json<K::Made>), ApiError> {
    let Json(new) = body?;
    let (command, made) = {
        let (_, state) = app.control.state();
        let making = Making {
            state: &state,
            caller: &caller,
            ca_fingerprint: app.control.ca_fingerprint(),
        };
        K::make(&making, new)?
    };
    let what = command.to_string();
    commit(&*app.control, &caller.user, command).await?;
    tracing::info!(kind = K::KIND, by = %caller.user, "{what}");
    Ok((StatusCode::CREATED, Json(made)))
}

async fn revoke<C: ControlPlane, K: Credential>(
    State(app): AppState<C>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    commit(&*app.control, &caller.user, K::revoke(id)).await?;
    Ok(StatusCode::NO_CONTENT)
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", message)
}

/// A lifetime such as `30m`, `1h` or `7d`: more than zero, at most a year.
pub(crate) fn parse_ttl(ttl: Option<&str>, default: Duration) -> Result<Duration, ApiError> {
    let ttl = match ttl {
        None => default,
        Some(t) => humantime::parse_duration(t).map_err(|_| {
            invalid(format!(
                "ttl: {t:?} is not a duration (examples: 30m, 1h, 7d)"
            ))
        })?,
    };
    if ttl.is_zero() || ttl > Duration::from_secs(365 * 86400) {
        return Err(invalid("ttl: must be more than zero and at most a year"));
    }
    Ok(ttl)
}

/// When a credential with lifetime `ttl` expires (unix seconds); never
/// without one.
pub(crate) fn expiry(ttl: Option<&str>) -> Result<Option<u64>, ApiError> {
    ttl.map(|t| Ok(now() + parse_ttl(Some(t), Duration::ZERO)?.as_secs()))
        .transpose()
}

/// The name given to a new token or key: 1 to 100 characters.
pub(crate) fn check_name(name: &str) -> Result<(), ApiError> {
    if name.trim().is_empty() || name.len() > 100 {
        return Err(invalid("name: 1 to 100 characters"));
    }
    Ok(())
}

/// Each of `ranges` as a CIDR, or a 422 naming `field[i]`.
fn cidrs(field: &str, ranges: &[String]) -> Result<Vec<keel_model::Cidr>, ApiError> {
    ranges
        .iter()
        .enumerate()
        .map(|(i, r)| {
            r.parse::<keel_model::Cidr>()
                .map_err(|e| invalid(format!("{field}[{i}]: {e}")))
        })
        .collect()
}

/// A node's way into the cluster.
pub(crate) struct Join;

#[derive(Serialize)]
pub(crate) struct JoinTokenView {
    id: String,
    created_at: u64,
    expires_at: u64,
    uses_left: u32,
    revoked: bool,
    expired: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewJoinToken {
    /// e.g. "1h"; default 1 hour.
    ttl: Option<String>,
    /// Default 1.
    uses: Option<u32>,
}

#[derive(Serialize)]
pub(crate) struct MadeJoinToken {
    id: String,
    token: String,
    expires_at: u64,
    uses: u32,
}

impl Credential for Join {
    type New = NewJoinToken;
    type View = JoinTokenView;
    type Made = MadeJoinToken;
    const KIND: &'static str = "join token";

    fn list(state: &ClusterState) -> Vec<JoinTokenView> {
        let now = now();
        state
            .join_tokens
            .iter()
            .map(|(id, t)| JoinTokenView {
                id: id.clone(),
                created_at: t.created_at,
                expires_at: t.expires_at,
                uses_left: t.uses_left,
                revoked: t.revoked,
                expired: now >= t.expires_at,
            })
            .collect()
    }

    fn make(
        m: &Making<'_>,
        new: NewJoinToken,
    ) -> Result<(ClusterCommand, MadeJoinToken), ApiError> {
        let ttl = parse_ttl(new.ttl.as_deref(), Duration::from_secs(3600))?;
        let uses = new.uses.unwrap_or(1);
        if uses == 0 || uses > 1000 {
            return Err(invalid("uses: must be between 1 and 1000"));
        }
        let id = random_hex(4);
        let secret = random_hex(16);
        let expires_at = now() + ttl.as_secs();
        let command = ClusterCommand::CreateJoinToken {
            id: id.clone(),
            token: JoinToken {
                secret_sha256: sha256_hex(&secret),
                created_at: now(),
                expires_at,
                uses_left: uses,
                revoked: false,
            },
        };
        let token = format!("KEEL1.{}.{id}.{secret}", m.ca_fingerprint);
        Ok((
            command,
            MadeJoinToken {
                id,
                token,
                expires_at,
                uses,
            },
        ))
    }

    fn revoke(id: String) -> ClusterCommand {
        ClusterCommand::RevokeJoinToken { id }
    }
}

/// A script's or tool's bearer token, acting as a user.
pub(crate) struct Api;

#[derive(Serialize)]
pub(crate) struct ApiTokenView {
    id: String,
    name: String,
    user: String,
    created_at: u64,
    expires_at: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<Role>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    load_balancers: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pools: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewApiToken {
    name: String,
    /// Default: until revoked.
    ttl: Option<String>,
    /// The user it acts as; default: the caller.
    user: Option<String>,
    /// At most this role; default: the user's.
    role: Option<Role>,
    /// Only these load balancers and pools may it change (default: any).
    #[serde(default)]
    load_balancers: Vec<String>,
    #[serde(default)]
    pools: Vec<String>,
}

#[derive(Serialize)]
pub(crate) struct MadeApiToken {
    id: String,
    name: String,
    token: String,
    expires_at: Option<u64>,
}

impl Credential for Api {
    type New = NewApiToken;
    type View = ApiTokenView;
    type Made = MadeApiToken;
    const KIND: &'static str = "api token";

    fn list(state: &ClusterState) -> Vec<ApiTokenView> {
        state
            .api_tokens
            .iter()
            .map(|(id, t)| ApiTokenView {
                id: id.clone(),
                name: t.name.clone(),
                user: t.user.clone(),
                created_at: t.created_at,
                expires_at: t.expires_at,
                role: t.role,
                load_balancers: t.load_balancers.clone(),
                pools: t.pools.clone(),
            })
            .collect()
    }

    fn make(m: &Making<'_>, new: NewApiToken) -> Result<(ClusterCommand, MadeApiToken), ApiError> {
        check_name(&new.name)?;
        let expires_at = expiry(new.ttl.as_deref())?;
        let user = new.user.unwrap_or_else(|| m.caller.user.clone());
        if !m.state.users.contains_key(&user) {
            return Err(ApiError::field(
                "user",
                format!("user {user:?} does not exist"),
            ));
        }
        check_scope(m.state, &new.load_balancers, &new.pools)?;
        let (id, token, secret_sha256) = new_bearer();
        let command = ClusterCommand::CreateApiToken {
            id: id.clone(),
            token: ApiToken {
                name: new.name.clone(),
                user,
                secret_sha256,
                created_at: now(),
                expires_at,
                role: new.role,
                load_balancers: new.load_balancers,
                pools: new.pools,
            },
        };
        Ok((
            command,
            MadeApiToken {
                id,
                name: new.name,
                token,
                expires_at,
            },
        ))
    }

    fn revoke(id: String) -> ClusterCommand {
        ClusterCommand::RevokeApiToken { id }
    }
}

/// A scope names only load balancers and pools that exist.
fn check_scope(
    state: &ClusterState,
    load_balancers: &[String],
    pools: &[String],
) -> Result<(), ApiError> {
    if let Some(lb) = load_balancers
        .iter()
        .find(|n| !state.spec.load_balancers.contains_key(*n))
    {
        return Err(ApiError::field(
            "load_balancers",
            format!("load balancer {lb:?} does not exist"),
        ));
    }
    if let Some(pool) = pools.iter().find(|n| !state.spec.pools.contains_key(*n)) {
        return Err(ApiError::field(
            "pools",
            format!("pool {pool:?} does not exist"),
        ));
    }
    Ok(())
}

/// Lets backends add and remove themselves in one pool.
pub(crate) struct Registration;

#[derive(Serialize)]
pub(crate) struct RegistrationTokenView {
    id: String,
    name: String,
    pool: String,
    created_at: u64,
    expires_at: Option<u64>,
    sources: Vec<String>,
    members: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewRegistrationToken {
    name: String,
    pool: String,
    /// Default: until revoked.
    ttl: Option<String>,
    /// CIDRs registrations may come from (default: anywhere).
    #[serde(default)]
    sources: Vec<String>,
    /// CIDRs registered members must be in (default: any but loopback,
    /// link-local, unspecified, multicast and the cluster's own addresses).
    #[serde(default)]
    members: Vec<String>,
}

#[derive(Serialize)]
pub(crate) struct MadeRegistrationToken {
    id: String,
    name: String,
    pool: String,
    token: String,
    expires_at: Option<u64>,
}

impl Credential for Registration {
    type New = NewRegistrationToken;
    type View = RegistrationTokenView;
    type Made = MadeRegistrationToken;
    const KIND: &'static str = "registration token";

    fn list(state: &ClusterState) -> Vec<RegistrationTokenView> {
        state
            .registration_tokens
            .iter()
            .map(|(id, t)| RegistrationTokenView {
                id: id.clone(),
                name: t.name.clone(),
                pool: t.pool.clone(),
                created_at: t.created_at,
                expires_at: t.expires_at,
                sources: t.sources.clone(),
                members: t.members.clone(),
            })
            .collect()
    }

    fn make(
        _: &Making<'_>,
        new: NewRegistrationToken,
    ) -> Result<(ClusterCommand, MadeRegistrationToken), ApiError> {
        check_name(&new.name)?;
        let expires_at = expiry(new.ttl.as_deref())?;
        cidrs("sources", &new.sources)?;
        cidrs("members", &new.members)?;
        let (id, token, secret_sha256) = keel_web_core::auth::new_registration_token();
        let command = ClusterCommand::CreateRegistrationToken {
            id: id.clone(),
            token: keel_model::RegistrationToken {
                name: new.name.clone(),
                pool: new.pool.clone(),
                secret_sha256,
                created_at: now(),
                expires_at,
                sources: new.sources,
                members: new.members,
            },
        };
        Ok((
            command,
            MadeRegistrationToken {
                id,
                name: new.name,
                pool: new.pool,
                token,
                expires_at,
            },
        ))
    }

    fn revoke(id: String) -> ClusterCommand {
        ClusterCommand::RevokeRegistrationToken { id }
    }
}

/// An access key for the AWS-compatible API, acting as its maker.
pub(crate) struct AwsKey;

#[derive(Serialize)]
pub(crate) struct AwsKeyView {
    access_key_id: String,
    name: String,
    user: String,
    created_at: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewAwsKey {
    name: String,
}

#[derive(Serialize)]
pub(crate) struct MadeAwsKey {
    access_key_id: String,
    secret_access_key: String,
    name: String,
}

impl Credential for AwsKey {
    type New = NewAwsKey;
    type View = AwsKeyView;
    type Made = MadeAwsKey;
    const KIND: &'static str = "aws access key";

    fn list(state: &ClusterState) -> Vec<AwsKeyView> {
        state
            .aws_keys
            .iter()
            .map(|(id, k)| AwsKeyView {
                access_key_id: id.clone(),
                name: k.name.clone(),
                user: k.user.clone(),
                created_at: k.created_at,
            })
            .collect()
    }

    fn make(m: &Making<'_>, new: NewAwsKey) -> Result<(ClusterCommand, MadeAwsKey), ApiError> {
        check_name(&new.name)?;
        let (id, secret) = keel_web_core::awskeys::new_key();
        let Some(sealed) = keel_web_core::awskeys::seal(m.state, &id, &secret) else {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_ready",
                "the cluster has no identity yet",
            ));
        };
        let command = ClusterCommand::CreateAwsKey {
            id: id.clone(),
            key: keel_model::AwsKey {
                name: new.name.clone(),
                user: m.caller.user.clone(),
                secret_sealed: sealed,
                created_at: now(),
            },
        };
        Ok((
            command,
            MadeAwsKey {
                access_key_id: id,
                secret_access_key: secret,
                name: new.name,
            },
        ))
    }

    fn revoke(id: String) -> ClusterCommand {
        ClusterCommand::RevokeAwsKey { id }
    }
}
