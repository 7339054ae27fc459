//! Who may call which admin route: each route needs one [`Permission`],
//! each permission one [`Role`] at least. A caller's role is the lesser of
//! their user's (looked up on every request, so a demotion takes effect at
//! once) and their token's; a token with a scope changes only the load
//! balancers and pools it names. Every refusal is a 403 naming the
//! permission that is missing.

use http::{Method, StatusCode};
use keel_model::{ApiToken, ClusterState, Role};

use crate::error::ApiError;

/// Who is calling, once authenticated.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The user the token acts as.
    pub user: String,
    /// What the caller may do now.
    pub role: Role,
    /// The token's id.
    pub token: String,
    /// The load balancers and pools a scoped token may change (both empty:
    /// not scoped).
    pub load_balancers: Vec<String>,
    pub pools: Vec<String>,
    /// The user must change their password before anything else.
    pub must_change_password: bool,
}

impl Caller {
    /// The caller token `id` (already checked) stands for, if its user
    /// still exists.
    pub fn of_token(state: &ClusterState, id: &str, token: &ApiToken) -> Option<Caller> {
        let user = state.users.get(&token.user)?;
        Some(Caller {
            user: token.user.clone(),
            role: token.role.map_or(user.role, |r| r.min(user.role)),
            token: id.to_owned(),
            load_balancers: token.load_balancers.clone(),
            pools: token.pools.clone(),
            must_change_password: user.must_change_password,
        })
    }

    /// User `name` (authenticated by password or an AWS access key),
    /// unscoped with their own role.
    pub fn of_user(state: &ClusterState, name: &str) -> Option<Caller> {
        let user = state.users.get(name)?;
        Some(Caller {
            user: name.to_owned(),
            role: user.role,
            token: String::new(),
            load_balancers: Vec::new(),
            pools: Vec::new(),
            must_change_password: user.must_change_password,
        })
    }

    fn scoped(&self) -> bool {
        !self.load_balancers.is_empty() || !self.pools.is_empty()
    }
}

/// What a route lets its caller do, least first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Permission {
    /// See who they are, log out, change their own password: every user,
    /// even one who must change their password first.
    Own,
    /// Read the config, status, traffic and events.
    Read,
    /// Change load balancers, pools, members, certificates, instances.
    ChangeConfig,
    /// Manage users and API tokens.
    ManageUsers,
    /// Manage registration tokens and AWS access keys.
    ManageKeys,
    /// Remove and drain nodes, make join tokens, change the cluster's
    /// timing and secret, take backups.
    ManageCluster,
}

impl Permission {
    /// Its name, as refusals give it.
    pub fn name(self) -> &'static str {
        match self {
            Permission::Own => "own",
            Permission::Read => "read",
            Permission::ChangeConfig => "change_config",
            Permission::ManageUsers => "manage_users",
            Permission::ManageKeys => "manage_keys",
            Permission::ManageCluster => "manage_cluster",
        }
    }

    /// The least role that has it.
    pub fn role(self) -> Role {
        match self {
            Permission::Own | Permission::Read => Role::Viewer,
            Permission::ChangeConfig => Role::Operator,
            Permission::ManageUsers | Permission::ManageKeys | Permission::ManageCluster => {
                Role::Admin
            }
        }
    }
}

/// The permission `method` on `path` (under `/api/v1/`, as sent) needs,
/// for a caller who is `user`. A route not named here needs the most.
pub fn required(method: &Method, path: &str, user: &str) -> Permission {
    let parts: Vec<&str> = path
        .strip_prefix("/api/v1/")
        .unwrap_or(path)
        .split('/')
        .collect();
    let read = method == Method::GET || method == Method::HEAD;
    match (parts.as_slice(), read) {
        (["session"], true) | (["logout"], false) => Permission::Own,
        (["users", name, "password"], false) if decoded(name) == user => Permission::Own,
        (
            ["status" | "traffic" | "events" | "config" | "managers" | "nodes" | "vips"]
            | ["cluster", "ca"]
            | ["load-balancers" | "pools" | "certificates" | "instances"]
            | ["load-balancers" | "pools" | "certificates" | "instances", _],
            true,
        ) => Permission::Read,
        (
            ["config" | "load-balancers" | "pools" | "certificates"]
            | ["load-balancers" | "pools" | "certificates" | "instances", _]
            | ["pools", _, "members", _],
            false,
        ) => Permission::ChangeConfig,
        (["users" | "api-tokens", ..], _) => Permission::ManageUsers,
        (["registration-tokens" | "aws-keys", ..], _) => Permission::ManageKeys,
        _ => Permission::ManageCluster,
    }
}

/// May `caller` do `method` on `path`? The 403 says what is missing.
pub fn authorize(caller: &Caller, method: &Method, path: &str) -> Result<(), ApiError> {
    let need = required(method, path, &caller.user);
    check(caller, need)?;
    if caller.scoped() && need > Permission::Read && !in_scope(caller, path) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "this needs the permission {} outside this token's scope: it may change only \
                 load balancers [{}] and pools [{}], each by its own URL",
                need.name(),
                caller.load_balancers.join(", "),
                caller.pools.join(", ")
            ),
        ));
    }
    Ok(())
}

/// May `caller` read (`change` false) or change load balancers and pools
/// through a compatibility API (ELB, ELBv2, Octavia)? Their objects do not
/// map one to one onto a token's scope, so a scoped token only reads.
pub fn authorize_compat(caller: &Caller, change: bool) -> Result<(), ApiError> {
    let need = if change {
        Permission::ChangeConfig
    } else {
        Permission::Read
    };
    check(caller, need)?;
    if change && caller.scoped() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this needs the permission change_config without a scope: a scoped token only \
             reads through the compatibility APIs",
        ));
    }
    Ok(())
}

/// Has `caller` the role `need` asks for, with their password their own?
fn check(caller: &Caller, need: Permission) -> Result<(), ApiError> {
    if caller.must_change_password && need != Permission::Own {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "password_change_required",
            format!(
                "user {} must change their password first (POST /api/v1/users/{}/password)",
                caller.user, caller.user
            ),
        ));
    }
    if caller.role < need.role() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "this needs the permission {} (role {} or above); {} acts as {} here",
                need.name(),
                need.role(),
                caller.user,
                caller.role
            ),
        ));
    }
    Ok(())
}

/// Does `path` name a load balancer or pool (or a pool's member) a scoped
/// caller may change?
fn in_scope(caller: &Caller, path: &str) -> bool {
    let parts: Vec<&str> = path
        .strip_prefix("/api/v1/")
        .unwrap_or(path)
        .split('/')
        .collect();
    let named = |list: &[String], name: &str| list.iter().any(|n| *n == decoded(name));
    match parts.as_slice() {
        ["load-balancers", name] => named(&caller.load_balancers, name),
        ["pools", name] | ["pools", name, "members", _] => named(&caller.pools, name),
        _ => false,
    }
}

/// A path segment with its `%XX` escapes decoded (as the handler will see
/// it); a malformed escape is kept as sent.
fn decoded(segment: &str) -> String {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                let value = hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0);
                out.push(u8::try_from(value).unwrap_or(b'?'));
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn caller(role: Role) -> Caller {
        Caller {
            user: "u".into(),
            role,
            token: "t".into(),
            load_balancers: Vec::new(),
            pools: Vec::new(),
            must_change_password: false,
        }
    }

    #[test]
    fn routes_need_the_least_role_that_should_have_them() {
        let get = Method::GET;
        let put = Method::PUT;
        let post = Method::POST;
        for (method, path, need) in [
            (&get, "/api/v1/session", Permission::Own),
            (&post, "/api/v1/users/u/password", Permission::Own),
            (&post, "/api/v1/users/%75/password", Permission::Own),
            (
                &post,
                "/api/v1/users/admin/password",
                Permission::ManageUsers,
            ),
            (&get, "/api/v1/pools/web", Permission::Read),
            (&put, "/api/v1/pools/web", Permission::ChangeConfig),
            (
                &Method::PATCH,
                "/api/v1/pools/web/members/10.0.0.1:80",
                Permission::ChangeConfig,
            ),
            (&get, "/api/v1/users", Permission::ManageUsers),
            (&get, "/api/v1/api-tokens", Permission::ManageUsers),
            (&get, "/api/v1/aws-keys", Permission::ManageKeys),
            (&get, "/api/v1/tokens", Permission::ManageCluster),
            (&post, "/api/v1/backup", Permission::ManageCluster),
            (
                &Method::DELETE,
                "/api/v1/nodes/n2",
                Permission::ManageCluster,
            ),
            (&get, "/api/v1/something-new", Permission::ManageCluster),
        ] {
            assert_eq!(required(method, path, "u"), need, "{method} {path}");
        }
    }

    #[test]
    fn refusals_name_the_missing_permission() {
        let viewer = caller(Role::Viewer);
        let refused = authorize(&viewer, &Method::PUT, "/api/v1/pools/web").unwrap_err();
        assert_eq!(refused.status(), StatusCode::FORBIDDEN);
        assert!(
            refused.message().contains("change_config"),
            "{}",
            refused.message()
        );
        authorize(&viewer, &Method::GET, "/api/v1/pools/web").unwrap();
        let operator = caller(Role::Operator);
        authorize(&operator, &Method::PUT, "/api/v1/pools/web").unwrap();
        let refused = authorize(&operator, &Method::GET, "/api/v1/users").unwrap_err();
        assert!(refused.message().contains("manage_users"));
        let mut changing = caller(Role::Admin);
        changing.must_change_password = true;
        let refused = authorize(&changing, &Method::GET, "/api/v1/pools").unwrap_err();
        assert!(refused.message().contains("must change"));
        authorize(&changing, &Method::POST, "/api/v1/users/u/password").unwrap();
    }

    #[test]
    fn a_scoped_token_changes_only_what_it_names() {
        let mut scoped = caller(Role::Admin);
        scoped.pools = vec!["web".into()];
        authorize(&scoped, &Method::PUT, "/api/v1/pools/web").unwrap();
        authorize(
            &scoped,
            &Method::PATCH,
            "/api/v1/pools/web/members/10.0.0.1:80",
        )
        .unwrap();
        authorize(&scoped, &Method::GET, "/api/v1/load-balancers").unwrap();
        for (method, path) in [
            (Method::PUT, "/api/v1/pools/api"),
            (Method::POST, "/api/v1/pools"),
            (Method::PUT, "/api/v1/config"),
            (Method::PUT, "/api/v1/load-balancers/web"),
            (Method::GET, "/api/v1/users"),
        ] {
            let refused = authorize(&scoped, &method, path).unwrap_err();
            assert!(refused.message().contains("scope"), "{method} {path}");
        }
    }
}
