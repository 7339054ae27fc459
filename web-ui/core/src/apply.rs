//! The declarative apply, as the admin API (`PUT /api/v1/config`, `keel
//! apply -f`) and a node's config file do it: the document applied as its
//! manager ([`keel_model::Spec::apply_as`]), the changes it makes, the
//! conflicts with other managers, and the one command that commits it.

use keel_model::{ClusterCommand, ClusterState, Command, ObjectRef, Spec, ValidationErrors};

/// How a document is applied.
#[derive(Debug, Clone, Copy, Default)]
pub struct Mode {
    /// The document is the whole config: what it lacks is removed,
    /// whoever set it (the dashboard's editor, which shows all of it).
    pub replace: bool,
    /// Also remove the load balancers, pools and certificates the manager
    /// applied before that the document no longer has.
    pub prune: bool,
    /// Take over what other managers set instead of refusing.
    pub force: bool,
}

/// What applying a document would do.
#[derive(Debug)]
pub struct Plan {
    manager: String,
    mode: Mode,
    /// The spec changes, in commit order.
    pub changes: Vec<Command>,
    /// The same, object by object (`create`, `change`, `remove`).
    pub objects: Vec<String>,
    /// What other managers set that the apply would change (naming the
    /// fields) or remove.
    pub conflicts: Vec<String>,
    claims: Vec<ObjectRef>,
    keeps_managers: bool,
}

impl Plan {
    /// The plan for `doc` applied by `manager` to `state`; refused when
    /// the spec it leads to breaks a rule.
    pub fn new(
        state: &ClusterState,
        manager: &str,
        doc: &Spec,
        mode: Mode,
    ) -> Result<Plan, ValidationErrors> {
        let rules_apart = state.version() >= keel_model::PARTS_APART;
        let (next, conflicts, claims) = if mode.replace {
            (doc.clone(), Vec::new(), Vec::new())
        } else {
            let out = state
                .spec
                .apply_as(&state.owners(), manager, doc, mode.prune);
            let conflicts = out.conflicts.iter().map(ToString::to_string).collect();
            let mut claims = out.claims;
            // Unforced, an apply takes no object another manager has: in
            // one, it changes only fields it set itself (or it conflicts).
            if !mode.force {
                claims.retain(|o| state.managers.get(o).is_none_or(|m| m == manager));
            }
            (out.spec, conflicts, claims)
        };
        let errors = next.check();
        if !errors.is_empty() {
            return Err(ValidationErrors(errors));
        }
        Ok(Plan {
            manager: manager.to_owned(),
            mode,
            changes: state.spec.diff(&next),
            objects: state.spec.object_changes(&next, rules_apart),
            conflicts,
            claims,
            keeps_managers: state.version() >= 8,
        })
    }

    /// Why the apply must not go ahead: it would change what other
    /// managers set and is not forced.
    pub fn refusal(&self) -> Option<String> {
        if self.conflicts.is_empty() || self.mode.force {
            return None;
        }
        Some(format!(
            "this would change what other managers set: {}. Leave them out of the document, \
             or apply with force to take them over (keel apply --force)",
            self.conflicts.join(", ")
        ))
    }

    /// The one command that makes the change (after `expect`, an
    /// `If-Match` condition), recording the manager: the objects it
    /// creates or changes, and those of the document that matched and had
    /// none. `None` when there is nothing to do.
    pub fn command(self, expect: Option<ClusterCommand>) -> Option<ClusterCommand> {
        let adopt = self.keeps_managers && !self.mode.replace && !self.claims.is_empty();
        if self.changes.is_empty() && !adopt {
            return None;
        }
        let mut commands: Vec<ClusterCommand> = expect.into_iter().collect();
        if adopt {
            commands.push(ClusterCommand::Own {
                manager: self.manager.clone(),
                objects: self.claims,
                force: self.mode.force,
            });
        }
        if !self.changes.is_empty() {
            let change = ClusterCommand::Spec(Command::Batch(self.changes));
            commands.push(if self.keeps_managers {
                ClusterCommand::Managed {
                    manager: self.manager,
                    command: Box::new(change),
                }
            } else {
                change
            });
        }
        Some(match commands.len() {
            1 => commands.remove(0),
            _ => ClusterCommand::Atomic(commands),
        })
    }
}

/// `command` made by `manager`, who is then recorded as the manager of what
/// it creates or changes (once every node runs a version that keeps them).
pub fn managed(state: &ClusterState, manager: &str, command: ClusterCommand) -> ClusterCommand {
    if state.version() < 8 {
        return command;
    }
    ClusterCommand::Managed {
        manager: manager.to_owned(),
        command: Box::new(command),
    }
}

#[cfg(test)]
mod tests {
    use keel_model::{ClusterCommand, ClusterState, Command, Document, ObjectRef};

    use super::*;

    fn spec(algorithm: &str) -> Spec {
        Document::parse_spec(&format!(
            "load_balancers: []\npools:\n  - {{ name: app, algorithm: {algorithm}, members: [] }}\n"
        ))
        .expect("valid")
    }

    /// Applies `plan`'s command to `state`.
    fn commit(state: &mut ClusterState, plan: Plan) {
        if let Some(command) = plan.command(None) {
            state.apply(&command).expect("applied");
        }
    }

    #[test]
    fn an_apply_changes_a_field_it_set_in_anothers_object_without_taking_the_object() {
        let mut state = ClusterState::default();
        state
            .apply(&ClusterCommand::SetVersion {
                version: keel_model::PARTS_APART,
            })
            .expect("version");
        let plan = Plan::new(&state, "file", &spec("round_robin"), Mode::default()).expect("plan");
        commit(&mut state, plan);
        let pool = ObjectRef::Pool("app".into());
        // A script sets the algorithm (an imperative write), then applies
        // its own document that changes it again: no conflict, since the
        // field is its, and the pool stays the file's.
        state
            .apply(&ClusterCommand::Managed {
                manager: "script".into(),
                command: Box::new(ClusterCommand::Spec(Command::ReplaceSpec(spec(
                    "least_outstanding",
                )))),
            })
            .expect("script");
        let plan = Plan::new(&state, "script", &spec("random_two"), Mode::default()).expect("plan");
        assert!(plan.refusal().is_none(), "{:?}", plan.conflicts);
        commit(&mut state, plan);
        assert_eq!(state.managers[&pool], "file");
        assert_eq!(state.field_managers[&pool]["algorithm"], "script");
        // The file's document as it was now conflicts over that field;
        // forced, it takes the pool back whole.
        let plan = Plan::new(&state, "file", &spec("round_robin"), Mode::default()).expect("plan");
        assert_eq!(
            plan.conflicts,
            ["pool \"app\" (managed by script): algorithm"]
        );
        let forced = Mode {
            force: true,
            ..Mode::default()
        };
        let plan = Plan::new(&state, "file", &spec("round_robin"), forced).expect("plan");
        commit(&mut state, plan);
        assert_eq!(state.managers[&pool], "file");
        assert!(state.field_managers.is_empty());
    }
}
