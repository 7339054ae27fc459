//! What the three compatibility APIs (ELB, ELBv2, Octavia) share: the one
//! transaction each change is (edit the document, note what the API keeps
//! beyond the spec, commit both as one Raft entry under the API's manager,
//! then wait until this node serves it), and what each API sees of the
//! config (its own objects, and those no manager has set, unless the node
//! lets them adopt everything).

use std::collections::BTreeMap;
use std::time::Duration;

use keel_model::{ClusterCommand, ClusterState, Document, Object, ObjectRef, Spec};
use sha2::{Digest, Sha256};

use keel_web_core::{ApiError, ControlPlane};

/// Notes to set with a change: annotation key, values (none removes it).
pub type Notes = Vec<(String, BTreeMap<String, String>)>;

/// Why a compatibility change was not made.
#[derive(Debug)]
pub enum Refused<E> {
    /// The API's own edit refused it.
    Edit(E),
    /// The config it would lead to breaks a rule (the text names them).
    Invalid(String),
    /// It would change what another manager set (the text names them).
    NotOurs(String),
    /// The cluster did not commit it.
    Commit(ApiError),
}

/// One caller of one compatibility API.
pub struct Writer<'a, C> {
    pub control: &'a C,
    /// Who the change is recorded as made by.
    pub by: &'a str,
    /// The API: `elb`, `elbv2` or `octavia`.
    pub manager: &'static str,
    /// May it see and change what other managers set?
    pub adopt: bool,
}

impl<C: ControlPlane> Writer<'_, C> {
    /// The config as this API sees it (see [`visible`]).
    pub fn state(&self) -> ClusterState {
        visible(&self.control.state().1, self.manager, self.adopt)
    }

    /// Applies `edit` to the whole current document and commits the
    /// difference with `notes` as one entry; then waits (briefly) until
    /// this node serves it. The entry holds only while the config is the
    /// one edited: when another write came between (a registration,
    /// another API), the edit is made again on the newer config rather
    /// than undo that write. The spec after the change.
    pub async fn change<E>(
        &self,
        mut edit: impl FnMut(&mut Document) -> Result<(), E>,
        notes: Notes,
    ) -> Result<Spec, Refused<E>> {
        let mut attempt = 0;
        let spec = loop {
            attempt += 1;
            let (_, state) = self
                .control
                .read()
                .await
                .map_err(|e| Refused::Commit(e.into()))?;
            let mut doc = Document::from_spec(&state.spec);
            edit(&mut doc).map_err(Refused::Edit)?;
            let spec = doc
                .into_spec()
                .map_err(|e| Refused::Invalid(e.to_string()))?;
            self.check_ours(&state, &spec).map_err(Refused::NotOurs)?;
            let mut commands = Vec::new();
            let changes = state.spec.diff(&spec);
            if !changes.is_empty() {
                commands.push(ClusterCommand::Spec(keel_model::Command::Batch(changes)));
            }
            for (key, values) in &notes {
                if state.annotations.get(key).cloned().unwrap_or_default() != *values {
                    commands.push(annotate(&state, key, values.clone()));
                }
            }
            if commands.is_empty() {
                return Ok(spec);
            }
            if let Some(etag) = state.spec.etag(&Object::Config) {
                let expect = ClusterCommand::Expect {
                    object: Object::Config,
                    etag,
                };
                if state.version() >= expect.needs() {
                    commands.insert(0, expect);
                }
            }
            let command = match commands.len() {
                1 => commands.remove(0),
                _ => ClusterCommand::Atomic(commands),
            };
            match self.commit(command).await {
                Ok(_) => break spec,
                Err(e) if e.is_stale() && attempt < 5 => {
                    tokio::time::sleep(Duration::from_millis(20 * attempt)).await;
                }
                Err(e) => return Err(Refused::Commit(e)),
            }
        };
        // The answer (and a client's first poll) should see it served:
        // ACTIVE, not PENDING_UPDATE.
        self.caught_up().await;
        Ok(spec)
    }

    /// Commits `command` as this API's, recorded as made by its caller.
    pub async fn commit(&self, command: ClusterCommand) -> Result<u64, ApiError> {
        let command = keel_web_core::managed(self.control, self.manager, command);
        keel_web_core::commit(self.control, self.by, command).await
    }

    /// Waits (up to two seconds) until this node's data plane serves the
    /// newest config, or refuses it; false if it still has not.
    pub async fn caught_up(&self) -> bool {
        for _ in 0..40 {
            let serving = self.control.serving();
            if serving.refused || serving.version >= self.control.state().0 {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    /// Refuses a change to a load balancer, pool or certificate another
    /// manager set (one the API cannot see: to it, it does not exist).
    fn check_ours(&self, state: &ClusterState, after: &Spec) -> Result<(), String> {
        let theirs = theirs(state, after, self.manager);
        if self.adopt || theirs.is_empty() {
            return Ok(());
        }
        let names: Vec<String> = theirs.iter().map(ToString::to_string).collect();
        Err(format!(
            "{} not found (managed outside this API)",
            names.join(", ")
        ))
    }
}

/// The load balancers, pools and certificates of `state` that turning it
/// into `after` changes or removes and that a manager other than
/// `manager` set. A member counts as its pool, a rule as its load
/// balancer: a compatibility API changes only what it made, whole.
fn theirs(state: &ClusterState, after: &Spec, manager: &str) -> Vec<ObjectRef> {
    let rules_apart = state.version() >= keel_model::PARTS_APART;
    let removed = state
        .spec
        .objects(rules_apart)
        .into_iter()
        .filter(|o| !after.has(o));
    let changed = state.spec.changed_objects(after, rules_apart);
    let mut out: Vec<ObjectRef> = Vec::new();
    for object in changed.into_iter().chain(removed) {
        let object = match object {
            ObjectRef::Member { pool, .. } => ObjectRef::Pool(pool),
            ObjectRef::Rule { load_balancer, .. } => ObjectRef::LoadBalancer(load_balancer),
            other => other,
        };
        if state.spec.has(&object) && !ours(state, &object, manager) && !out.contains(&object) {
            out.push(object);
        }
    }
    out
}

/// Where this node's data plane is with the newest config: the one
/// provisioning status all three APIs report (ELBv2's `State`, Octavia's
/// `provisioning_status`), from what it really serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provisioning {
    /// It serves the newest config.
    Active,
    /// It has not caught up yet.
    Pending,
    /// It refuses the newest config (and keeps serving the one before).
    Failed,
}

impl Provisioning {
    /// The status of a data plane serving `serving` when the newest config
    /// is `version`.
    pub fn of(serving: keel_web_core::Serving, version: u64) -> Provisioning {
        if serving.refused {
            Provisioning::Failed
        } else if serving.version < version {
            Provisioning::Pending
        } else {
            Provisioning::Active
        }
    }
}

impl<C: ControlPlane> Writer<'_, C> {
    /// This node's [`Provisioning`] now.
    pub fn provisioning(&self) -> Provisioning {
        Provisioning::of(self.control.serving(), self.control.state().0)
    }
}

/// The cluster version whose nodes read [`ClusterCommand::Note`].
const NOTES: u32 = 10;

/// The command that sets the annotations under `key` (none: removes them):
/// naming the object they describe ([`about`]) once every node reads that
/// (cluster version 10), so the replicated state drops them with it
/// without reading the key.
pub fn annotate(
    state: &ClusterState,
    key: &str,
    values: BTreeMap<String, String>,
) -> ClusterCommand {
    match about(key) {
        Some(about) if state.version() >= NOTES => ClusterCommand::Note {
            key: key.to_owned(),
            about,
            values,
        },
        _ => ClusterCommand::Annotate {
            object: key.to_owned(),
            values,
        },
    }
}

/// The object an annotation key of the compatibility APIs describes
/// (`tags/…` as what it tags): `octavia/loadbalancer/LB`,
/// `octavia/listener/LB/PORT`, `octavia/l7policy/LB/PORT/ID`,
/// `octavia/pool/POOL`, `octavia/healthmonitor/POOL`,
/// `octavia/member/POOL/ADDRESS`, `rules/LB/PORT` (ELBv2's rules of a
/// listener), `targetgroup/NAME` (a pool), `loadbalancer/NAME` and
/// `elb/NAME` (a classic ELB's record). None for
/// keys about no object (the instance registry's).
pub fn about(key: &str) -> Option<ObjectRef> {
    let key = key.strip_prefix("tags/").unwrap_or(key);
    let listener = |lb: &str, port: &str| {
        Some(ObjectRef::Listener {
            load_balancer: lb.to_owned(),
            port: port.parse().ok()?,
        })
    };
    let parts: Vec<&str> = key.split('/').collect();
    match parts.as_slice() {
        ["octavia", "loadbalancer", lb] | ["loadbalancer" | "elb", lb] => {
            Some(ObjectRef::LoadBalancer((*lb).to_owned()))
        }
        ["octavia", "listener", lb, port]
        | ["octavia", "l7policy", lb, port, _]
        | ["rules", lb, port] => listener(lb, port),
        ["octavia", "pool", pool] | ["targetgroup", pool] => {
            Some(ObjectRef::Pool((*pool).to_owned()))
        }
        ["octavia", "healthmonitor", pool] => Some(ObjectRef::HealthCheck((*pool).to_owned())),
        ["octavia", "member", pool, address] => Some(ObjectRef::Member {
            pool: (*pool).to_owned(),
            address: address.parse().ok()?,
        }),
        _ => None,
    }
}

/// The IDs the APIs derive from Keel's names, so no table maps IDs to
/// objects and every object has one: 16 hex digits of `text`'s SHA-256
/// (the id part of ELB ARNs).
pub fn hex_id(text: &str) -> String {
    Sha256::digest(text.as_bytes())[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A UUID-shaped ID (version 5 layout) for the `kind` object `key`
/// (Octavia's IDs).
pub fn uuid(kind: &str, key: &str) -> String {
    let h = Sha256::digest(format!("keel/octavia/{kind}/{key}"));
    let hex: String = h.iter().take(16).map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-5{}-8{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[13..16],
        &hex[17..20],
        &hex[20..32]
    )
}

/// May `manager` see `object`: it set it, or no manager has.
fn ours(state: &ClusterState, object: &ObjectRef, manager: &str) -> bool {
    state.managers.get(object).is_none_or(|m| m == manager)
}

/// `state` as the API writing as `manager` sees it: with `adopt`,
/// everything; otherwise the load balancers, pools and certificates it
/// set or no manager has (objects from before managers were kept), with
/// all their members.
pub fn visible(state: &ClusterState, manager: &str, adopt: bool) -> ClusterState {
    let mut seen = state.clone();
    if adopt {
        return seen;
    }
    seen.spec
        .load_balancers
        .retain(|name, _| ours(state, &ObjectRef::LoadBalancer(name.clone()), manager));
    seen.spec
        .pools
        .retain(|name, _| ours(state, &ObjectRef::Pool(name.clone()), manager));
    seen.spec
        .certificates
        .retain(|name, _| ours(state, &ObjectRef::Certificate(name.clone()), manager));
    seen
}

#[cfg(test)]
mod tests {

    use keel_web_core::fake::Fake;

    use super::*;

    #[tokio::test]
    async fn a_change_never_undoes_a_write_that_landed_while_it_was_made() {
        let spec =
            Document::parse_spec("pools:\n  - { name: tg, members: [{ address: 10.0.0.1:80 }] }\n")
                .expect("valid");
        let state = ClusterState {
            spec,
            version: keel_model::CLUSTER_VERSION,
            ..ClusterState::default()
        };
        let registered = keel_model::Member {
            address: "10.0.0.2:80".parse().expect("address"),
            weight: 1,
            enabled: true,
        };
        let control = Fake::with_state(state);
        *control.interloper.lock().expect("lock") =
            Some(ClusterCommand::Spec(keel_model::Command::UpsertMember {
                pool: "tg".into(),
                member: registered,
            }));
        let writer = Writer {
            control: &control,
            by: "ci",
            manager: "elbv2",
            adopt: false,
        };
        // An ELBv2-style edit: the pool's health check, member list as read.
        let mut edits = 0;
        writer
            .change(
                |doc| {
                    edits += 1;
                    let pool = doc.pools.iter_mut().find(|p| p.name == "tg").ok_or(())?;
                    pool.drain_timeout = Some(keel_model::DurationDoc::Text("5s".into()));
                    Ok::<(), ()>(())
                },
                Vec::new(),
            )
            .await
            .expect("committed");
        assert_eq!(edits, 2, "made again on the newer config");
        let (_, state) = control.state();
        let addresses: Vec<String> = state.spec.pools["tg"]
            .members
            .iter()
            .map(|m| m.address.to_string())
            .collect();
        assert_eq!(addresses, ["10.0.0.1:80", "10.0.0.2:80"]);
        assert_eq!(
            state.spec.pools["tg"].drain_timeout,
            std::time::Duration::from_secs(5)
        );
    }

    #[test]
    fn the_status_is_what_the_data_plane_serves_and_ids_stay_put() {
        let at = |version, refused| keel_web_core::Serving { version, refused };
        assert_eq!(Provisioning::of(at(7, false), 7), Provisioning::Active);
        assert_eq!(Provisioning::of(at(6, false), 7), Provisioning::Pending);
        assert_eq!(Provisioning::of(at(7, true), 7), Provisioning::Failed);
        // IDs clients already hold must not change.
        assert_eq!(hex_id("web"), "4b5e57f6eb2f42b9");
        assert_eq!(
            uuid("loadbalancer", "lb1"),
            "59e649dd-170d-5b53-8e42-8cb0a97e0d77"
        );
    }

    #[test]
    fn an_api_sees_and_changes_only_its_own_and_unmanaged_objects() {
        let spec = Document::parse_spec(
            "
load_balancers:
  - { name: file-lb, listeners: [{ port: 80, protocol: tcp, default_pool: file-pool }] }
  - { name: v2-lb, listeners: [{ port: 81, protocol: tcp, default_pool: v2-pool }] }
  - { name: old-lb, listeners: [{ port: 82, protocol: tcp, default_pool: v2-pool }] }
pools:
  - { name: file-pool, members: [{ address: 10.0.0.1:80 }] }
  - { name: v2-pool, members: [{ address: 10.0.0.2:80 }] }
",
        )
        .expect("valid");
        let mut state = ClusterState {
            spec,
            ..ClusterState::default()
        };
        for (object, manager) in [
            (ObjectRef::LoadBalancer("file-lb".into()), "file"),
            (ObjectRef::Pool("file-pool".into()), "file"),
            (ObjectRef::LoadBalancer("v2-lb".into()), "elbv2"),
            (ObjectRef::Pool("v2-pool".into()), "elbv2"),
            (
                ObjectRef::Member {
                    pool: "v2-pool".into(),
                    address: "10.0.0.2:80".parse().expect("address"),
                },
                "registration",
            ),
        ] {
            state.managers.insert(object, manager.into());
        }
        let seen = visible(&state, "elbv2", false);
        assert_eq!(
            seen.spec.load_balancers.keys().collect::<Vec<_>>(),
            ["old-lb", "v2-lb"]
        );
        assert_eq!(seen.spec.pools.keys().collect::<Vec<_>>(), ["v2-pool"]);
        assert_eq!(seen.spec.pools["v2-pool"].members.len(), 1);
        assert_eq!(visible(&state, "elbv2", true).spec, state.spec);

        // Its own pool's members, its own and unmanaged load balancers: fine.
        let mut after = state.spec.clone();
        after
            .pools
            .get_mut("v2-pool")
            .expect("pool")
            .members
            .clear();
        after.load_balancers.remove("old-lb");
        after.load_balancers.remove("v2-lb");
        assert!(theirs(&state, &after, "elbv2").is_empty());
        // The file's load balancer or pool: refused.
        let mut after = state.spec.clone();
        after.load_balancers.remove("file-lb");
        after.pools.get_mut("file-pool").expect("pool").members[0].weight = 9;
        assert_eq!(
            theirs(&state, &after, "elbv2"),
            [
                ObjectRef::Pool("file-pool".into()),
                ObjectRef::LoadBalancer("file-lb".into()),
            ]
        );
        let mut after = state.spec.clone();
        after.pools.get_mut("file-pool").expect("pool").algorithm =
            keel_model::Algorithm::SourceHash;
        assert_eq!(
            theirs(&state, &after, "octavia"),
            [ObjectRef::Pool("file-pool".into()),]
        );
    }
    /// Every key format the APIs write names its object, and a cluster
    /// whose nodes cannot all read that gets the key alone.
    #[test]
    fn annotation_keys_name_their_objects_once_every_node_reads_it() {
        for (key, object) in [
            ("octavia/loadbalancer/w", Some("load-balancer/w")),
            ("tags/loadbalancer/w", Some("load-balancer/w")),
            ("elb/w", Some("load-balancer/w")),
            ("octavia/listener/w/80", Some("listener/w/80")),
            ("octavia/l7policy/w/80/id", Some("listener/w/80")),
            ("rules/w/80", Some("listener/w/80")),
            ("octavia/pool/p", Some("pool/p")),
            ("targetgroup/p", Some("pool/p")),
            ("tags/targetgroup/p", Some("pool/p")),
            ("octavia/healthmonitor/p", Some("health-check/p")),
            ("octavia/member/p/10.0.0.1:80", Some("member/p/10.0.0.1:80")),
            ("instance/i-1", None),
            ("rules/w/not-a-port", None),
        ] {
            assert_eq!(about(key).map(|o| o.key()).as_deref(), object, "{key}");
        }
        let values = BTreeMap::from([("id".to_owned(), "1".to_owned())]);
        let mut state = ClusterState {
            version: NOTES,
            ..ClusterState::default()
        };
        assert!(matches!(
            annotate(&state, "targetgroup/p", values.clone()),
            ClusterCommand::Note { .. }
        ));
        assert!(matches!(
            annotate(&state, "instance/i-1", values.clone()),
            ClusterCommand::Annotate { .. }
        ));
        state.version = NOTES - 1;
        assert!(matches!(
            annotate(&state, "targetgroup/p", values),
            ClusterCommand::Annotate { .. }
        ));
    }
}
