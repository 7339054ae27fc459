//! Entry points for fuzzing the admin surface's parsers of untrusted
//! bytes (see `keel_dataplane::fuzz`): each must return without panicking
//! whatever it is given.

use keel_model::ClusterState;

/// A bearer or registration token as the API receives it.
pub fn token(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let state = ClusterState::default();
    let _ = crate::auth::check_bearer(&state, &text, 1_700_000_000);
    let _ = crate::auth::check_registration(&state, &text, 1_700_000_000);
}
