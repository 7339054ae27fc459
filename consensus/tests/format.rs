#![allow(clippy::unwrap_used)]
//! Raft entries are stored on disk and sent between versions: entries
//! written by Keel 0.1.0 must still decode, apply to the same state, and
//! re-encode byte for byte. Add a fixture per release that changes the
//! format; never edit an old one.

use keel_consensus::TypeConfig;
use keel_model::ClusterState;
use openraft::{Entry, EntryPayload};

#[test]
fn entries_written_by_0_1_0_decode_and_apply() {
    let text = include_str!("fixtures/entries-v0.1.0.json");
    let entries: Vec<Entry<TypeConfig>> = serde_json::from_str(text).unwrap();
    assert_eq!(
        serde_json::to_string_pretty(&entries).unwrap(),
        text.trim_end()
    );

    let mut state = ClusterState::default();
    let mut membership = None;
    for entry in &entries {
        match &entry.payload {
            EntryPayload::Normal(command) => state.apply(command).unwrap(),
            EntryPayload::Membership(m) => membership = Some(m.clone()),
            EntryPayload::Blank => {}
        }
    }
    assert_eq!(state.identity.as_ref().unwrap().cluster_id, "c0ffee");
    assert!(state.users["admin"].must_change_password);
    let app = &state.spec.pools["app"];
    assert_eq!(app.members.len(), 1);
    assert!(app.members[0].enabled);
    assert_eq!(app.members[0].address.to_string(), "10.0.0.2:8080");
    assert_eq!(state.spec.load_balancers["web"].listeners[0].port, 80);
    let token = &state.join_tokens["0a0b0c0d"];
    assert_eq!((token.uses_left, token.revoked), (1, true));
    assert_eq!(state.api_tokens["0102"].name, "ci");
    let membership = membership.unwrap();
    assert_eq!(membership.get_node(&7).unwrap().name, "n1");
}

/// Entries of the version that records managers (cluster version 8): a
/// managed change and an `Own`, after the 0.1.0 ones.
#[test]
fn managed_entries_decode_and_record_their_managers() {
    let state = replay(include_str!("fixtures/entries-cluster-v8-managers.json"));
    assert_eq!(
        managers(&state),
        [
            ("load-balancer/web", "file"),
            ("pool/app", "file"),
            ("member/app/10.0.0.2:8080", "file"),
            ("member/app/10.0.0.9:8080", "registration"),
        ]
        .map(|(o, m)| (o.to_owned(), m.to_owned()))
    );
    // A snapshot keeps them.
    let snapshot = serde_json::to_string(&state).unwrap();
    let back: ClusterState = serde_json::from_str(&snapshot).unwrap();
    assert_eq!(back.managers, state.managers);
}

/// Entries of cluster versions 9 and 10: a CA rotation's three steps, and
/// annotations that name their object (`Note`) beside one that does not.
#[test]
fn ca_rotation_and_note_entries_decode_and_apply() {
    let state = replay(include_str!(
        "fixtures/entries-cluster-v10-ca-rotation-and-notes.json"
    ));
    let identity = state.identity.as_ref().unwrap();
    assert_eq!(identity.ca_cert_pem, "NEW");
    assert_eq!(identity.ca_rotation, None);
    // The last entry took the load balancer and the health check away,
    // and their notes with them; the member's note and the key without an
    // object (which the legacy rules do not know) stay.
    assert_eq!(
        state.annotations.keys().collect::<Vec<_>>(),
        ["api-x/member", "api-x/pool/app"]
    );
    assert_eq!(
        state
            .annotated
            .values()
            .map(|o| o.key())
            .collect::<Vec<_>>(),
        ["member/app/10.0.0.1:8080"]
    );
}

/// Entries of cluster version 11: a rule another manager adds to a load
/// balancer is that manager's and the load balancer stays its own; an
/// `Own` takes a rule; a field another manager changes is that manager's
/// and the pool stays its own.
#[test]
fn rule_and_field_manager_entries_decode_and_record_their_managers() {
    let state = replay(include_str!(
        "fixtures/entries-cluster-v11-rule-and-field-managers.json"
    ));
    assert_eq!(
        managers(&state),
        [
            ("load-balancer/web", "file"),
            ("pool/app", "file"),
            ("member/app/10.0.0.1:8080", "file"),
            ("rule/web/80/10", "cli"),
            ("rule/web/80/20", "api"),
        ]
        .map(|(o, m)| (o.to_owned(), m.to_owned()))
    );
    let fields: Vec<(String, String, String)> = state
        .field_managers
        .iter()
        .flat_map(|(o, f)| f.iter().map(|(f, m)| (o.key(), f.clone(), m.clone())))
        .collect();
    assert_eq!(
        fields,
        [(
            "pool/app".to_owned(),
            "algorithm".to_owned(),
            "dashboard".to_owned()
        )]
    );
    // A snapshot keeps them.
    let snapshot = serde_json::to_string(&state).unwrap();
    let back: ClusterState = serde_json::from_str(&snapshot).unwrap();
    assert_eq!(back.field_managers, state.field_managers);
}

/// Who manages what in `state`, by object key.
fn managers(state: &ClusterState) -> Vec<(String, String)> {
    state
        .managers
        .iter()
        .map(|(o, m)| (o.key(), m.clone()))
        .collect()
}

/// The state `text`'s entries apply to, once they are shown to decode and
/// re-encode byte for byte.
fn replay(text: &str) -> ClusterState {
    let entries: Vec<Entry<TypeConfig>> = serde_json::from_str(text).unwrap();
    assert_eq!(
        serde_json::to_string_pretty(&entries).unwrap(),
        text.trim_end()
    );
    let mut state = ClusterState::default();
    for entry in &entries {
        if let EntryPayload::Normal(command) = &entry.payload {
            state.apply(command).unwrap();
        }
    }
    state
}
