//! Who may do what: the roles users and API tokens carry, and the rules the
//! state machine keeps about users (there is always an admin; a password
//! change ends the user's sessions).
//!
//! Which API route needs which role is the API's business (`keel-web-core`);
//! this module holds only what must be agreed on by every node.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::cluster::{ClusterState, Refusal, User};

/// What a user or token may do, each role everything the one before it
/// may: `viewer` reads; `operator` also changes load balancers, pools,
/// certificates and members; `admin` also manages users, tokens, keys,
/// nodes and the cluster.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Viewer,
    Operator,
    /// The default of records written before roles: every user was one.
    #[default]
    Admin,
}

impl Role {
    /// Every role, least first.
    pub const ALL: [Role; 3] = [Role::Viewer, Role::Operator, Role::Admin];

    /// The role's name, as the API and CLI spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == text)
            .ok_or_else(|| format!("{text:?} is not a role (admin, operator, viewer)"))
    }
}

/// Is `role` the admin default (for `skip_serializing_if`: a record with
/// the default reads the same to a Keel from before roles)?
pub(crate) fn is_admin(role: &Role) -> bool {
    *role == Role::Admin
}

/// The prefix of a login session's API token name; the rest is the user.
pub const SESSION_PREFIX: &str = "session:";

/// A user name the API accepts: 1 to 64 of `a-z 0-9 . _ -`, starting with
/// a letter or digit.
pub fn check_user_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "user {name:?}: 1 to 64 of a-z, 0-9, '.', '_' and '-', starting with a letter or digit"
        ))
    }
}

impl ClusterState {
    /// `name`'s record, or the refusal naming it.
    pub(crate) fn user(&self, name: &str) -> Result<&User, Refusal> {
        self.users
            .get(name)
            .ok_or_else(|| Refusal::NotFound(format!("user {name:?} does not exist")))
    }

    /// Refused when no admin would be left with `name` set to `role`
    /// (`None`: deleted): a cluster nobody can administer cannot be mended
    /// through its API.
    pub(crate) fn keep_an_admin(&self, name: &str, role: Option<Role>) -> Result<(), Refusal> {
        let left = self
            .users
            .iter()
            .filter(|(n, u)| {
                let role = if n.as_str() == name {
                    role
                } else {
                    Some(u.role)
                };
                role == Some(Role::Admin)
            })
            .count();
        if left == 0 {
            return Err(Refusal::Conflict(format!(
                "user {name:?} is the last admin: make another user admin first"
            )));
        }
        Ok(())
    }

    /// End `name`'s login sessions but `keep` (a token id).
    pub(crate) fn end_sessions(&mut self, name: &str, keep: Option<&str>) {
        self.api_tokens.retain(|id, t| {
            Some(id.as_str()) == keep || !(t.user == name && t.name.starts_with(SESSION_PREFIX))
        });
    }

    /// Remove `name` with everything that acts as it (API tokens, AWS
    /// access keys).
    pub(crate) fn delete_user(&mut self, name: &str) -> Result<(), Refusal> {
        self.user(name)?;
        self.keep_an_admin(name, None)?;
        self.users.remove(name);
        self.api_tokens.retain(|_, t| t.user != name);
        self.aws_keys.retain(|_, k| k.user != name);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::{ApiToken, ClusterCommand};

    fn user(role: Role) -> User {
        User {
            password_hash: "h".into(),
            must_change_password: false,
            role,
        }
    }

    fn token(user: &str, name: &str) -> ApiToken {
        ApiToken {
            name: name.into(),
            user: user.into(),
            secret_sha256: "aa".repeat(32),
            created_at: 0,
            expires_at: None,
            role: None,
            load_balancers: Vec::new(),
            pools: Vec::new(),
        }
    }

    #[test]
    fn roles_read_and_order() {
        assert!(Role::Viewer < Role::Operator && Role::Operator < Role::Admin);
        assert_eq!("operator".parse::<Role>(), Ok(Role::Operator));
        assert!("root".parse::<Role>().unwrap_err().contains("not a role"));
        // A user recorded before roles is an admin, and an admin's record
        // reads as it did then.
        let old: User =
            serde_json::from_str(r#"{"password_hash":"h","must_change_password":false}"#).unwrap();
        assert_eq!(old.role, Role::Admin);
        assert!(!serde_json::to_string(&old).unwrap().contains("role"));
        assert_eq!(check_user_name("ops-1"), Ok(()));
        for bad in ["", "Admin", "-x", "a b", &"a".repeat(65)] {
            assert!(check_user_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn there_is_always_an_admin() {
        let mut s = ClusterState::default();
        s.apply(&ClusterCommand::CreateUser {
            name: "admin".into(),
            user: user(Role::Admin),
        })
        .unwrap();
        s.apply(&ClusterCommand::CreateUser {
            name: "ops".into(),
            user: user(Role::Operator),
        })
        .unwrap();
        let again = s.apply(&ClusterCommand::CreateUser {
            name: "ops".into(),
            user: user(Role::Viewer),
        });
        assert!(matches!(again, Err(Refusal::Conflict(_))), "{again:?}");
        for last in [
            ClusterCommand::DeleteUser {
                name: "admin".into(),
            },
            ClusterCommand::SetRole {
                name: "admin".into(),
                role: Role::Operator,
            },
        ] {
            let refused = s.apply(&last).unwrap_err();
            assert!(refused.to_string().contains("last admin"), "{refused}");
        }
        s.apply(&ClusterCommand::SetRole {
            name: "ops".into(),
            role: Role::Admin,
        })
        .unwrap();
        s.apply(&ClusterCommand::DeleteUser {
            name: "admin".into(),
        })
        .unwrap();
        assert_eq!(s.users.keys().collect::<Vec<_>>(), ["ops"]);
        assert!(matches!(
            s.apply(&ClusterCommand::DeleteUser { name: "x".into() }),
            Err(Refusal::NotFound(_))
        ));
    }

    #[test]
    fn a_password_change_ends_sessions_and_a_deleted_user_leaves_no_credential() {
        let mut s = ClusterState::default();
        for name in ["admin", "ops"] {
            s.users.insert(name.into(), user(Role::Admin));
        }
        s.api_tokens
            .insert("s1".into(), token("ops", "session:ops"));
        s.api_tokens
            .insert("s2".into(), token("ops", "session:ops"));
        s.api_tokens.insert("ci".into(), token("ops", "ci"));
        s.api_tokens
            .insert("a1".into(), token("admin", "session:admin"));
        s.apply(&ClusterCommand::SetPassword {
            name: "ops".into(),
            password_hash: "new".into(),
            must_change_password: false,
            keep_session: Some("s1".into()),
        })
        .unwrap();
        assert_eq!(
            s.api_tokens.keys().collect::<Vec<_>>(),
            ["a1", "ci", "s1"],
            "the other session ends; tokens and other users' sessions stay"
        );
        assert_eq!(s.users["ops"].password_hash, "new");
        assert_eq!(s.users["ops"].role, Role::Admin, "the role stays");
        s.apply(&ClusterCommand::DeleteUser { name: "ops".into() })
            .unwrap();
        assert_eq!(s.api_tokens.keys().collect::<Vec<_>>(), ["a1"]);
        assert!(matches!(
            s.apply(&ClusterCommand::SetPassword {
                name: "ops".into(),
                password_hash: "x".into(),
                must_change_password: true,
                keep_session: None,
            }),
            Err(Refusal::NotFound(_))
        ));
    }

    #[test]
    fn commands_about_roles_need_version_6() {
        let create = ClusterCommand::CreateUser {
            name: "v".into(),
            user: user(Role::Viewer),
        };
        assert_eq!(create.needs(), 6);
        let set_admin = ClusterCommand::SetUser {
            name: "admin".into(),
            user: user(Role::Admin),
        };
        assert_eq!(set_admin.needs(), 1);
        let mut scoped = token("ops", "ci");
        let plain = ClusterCommand::CreateApiToken {
            id: "t".into(),
            token: scoped.clone(),
        };
        assert_eq!(plain.needs(), 1);
        scoped.pools = vec!["web".into()];
        let scoped = ClusterCommand::CreateApiToken {
            id: "t".into(),
            token: scoped,
        };
        assert_eq!(scoped.needs(), 6);
    }
}
