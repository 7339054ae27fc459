//! The fake control plane the HTTP surfaces' tests share: commands applied
//! to an in-memory state, the way the Raft state machine applies them.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::{ClusterStatus, ControlError, ControlPlane, Serving};
use keel_model::{ClusterCommand, ClusterState, User};

pub const PASSWORD: &str = "a-long-admin-password";

pub struct Fake {
    pub state: Mutex<(u64, Arc<ClusterState>)>,
    /// A write that lands just before the next proposal: another writer
    /// (a registration, another API) between a handler's read and its
    /// commit.
    pub interloper: Mutex<Option<ClusterCommand>>,
    /// A data plane a step behind: each version is served only from the
    /// poll after the one that first sees it.
    pub slow_dataplane: AtomicBool,
    served: AtomicU64,
}

impl Fake {
    /// A fake holding `state` at version 1.
    pub fn with_state(state: ClusterState) -> Fake {
        Fake {
            state: Mutex::new((1, Arc::new(state))),
            interloper: Mutex::new(None),
            slow_dataplane: AtomicBool::new(false),
            served: AtomicU64::new(1),
        }
    }
}

impl ControlPlane for Fake {
    fn state(&self) -> (u64, Arc<ClusterState>) {
        self.state.lock().unwrap().clone()
    }

    async fn propose(&self, command: ClusterCommand) -> Result<u64, ControlError> {
        let mut guard = self.state.lock().unwrap();
        if let Some(first) = self.interloper.lock().unwrap().take() {
            let mut next = (*guard.1).clone();
            next.apply(&first).unwrap();
            *guard = (guard.0 + 1, Arc::new(next));
        }
        let mut next = (*guard.1).clone();
        next.apply(&command).map_err(ControlError::Refused)?;
        *guard = (guard.0 + 1, Arc::new(next));
        Ok(guard.0)
    }

    fn serving(&self) -> Serving {
        let newest = self.state().0;
        let version = if self.slow_dataplane.load(Ordering::Relaxed) {
            self.served.swap(newest, Ordering::Relaxed)
        } else {
            newest
        };
        Serving {
            version,
            refused: false,
        }
    }

    async fn status(&self) -> ClusterStatus {
        ClusterStatus::default()
    }

    async fn remove_node(&self, name: &str, _by: &str) -> Result<(), ControlError> {
        Err(ControlError::NotFound(format!(
            "node {name:?} is not a member"
        )))
    }

    fn ca_fingerprint(&self) -> String {
        "ab".repeat(32)
    }
}

/// A fresh state with user `admin` and [`PASSWORD`].
pub fn fake() -> Arc<Fake> {
    fake_with(false)
}

/// Like [`fake`], with the admin still on a generated password when
/// `must_change_password`.
pub fn fake_with(must_change_password: bool) -> Arc<Fake> {
    let mut state = ClusterState::default();
    state.users.insert(
        "admin".into(),
        User {
            password_hash: crate::hash_password(PASSWORD).unwrap(),
            must_change_password,
            role: keel_model::Role::Admin,
        },
    );
    Arc::new(Fake::with_state(state))
}
