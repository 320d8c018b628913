//! Running a failed run again from the step it failed in.
//!
//! A rerun is a new run (its own id, `rerun_of` the old one, trigger
//! `rerun`) of the same definition with the same input, stored with copies
//! of the old run's checkpoints of every step before the one that failed.
//! It then runs as a resumed run does: a sequence that finds a step's
//! checkpoint uses its output and does not run the step. So there is one
//! way to skip a step, the crash-resume path, and a rerun is a resumption
//! of a run that never ran its last steps.
//!
//! What is kept, in definition order of the top-level steps:
//!
//! - every step that succeeded or was skipped, with everything checkpointed
//!   under it (a loop's elements and their steps);
//! - of the first step that did not (the one the run failed in, `from_step`):
//!   if it is a loop, its elements that finished and, inside the others,
//!   the steps that succeeded or were skipped. The loop then runs only the
//!   rest, as a loop resumed after a crash does. Failed records are never
//!   kept.
//!
//! Nothing after `from_step` is kept: the run stopped there.
//!
//! With another version of the integration (the failed step fixed and
//! deployed as a new version), the rerun runs that version's definition:
//! the kept checkpoints are still the old run's, so the steps before
//! `from_step` are not run again, and the new version must have the same
//! top-level steps, by id and in order, up to and including `from_step`.
//! The rerun records the version it moved from (`from_version`).

use std::collections::HashMap;

use crate::model::Integration;
use crate::store::{RunRecord, RunStatus, RunTrigger, StepRecord, StepStatus, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum RerunError {
    #[error("run {0} does not exist")]
    NotFound(String),
    #[error(
        "run {run_id} did not fail (its status is {status}): only a failed run can be run again"
    )]
    NotFailed {
        run_id: String,
        status: &'static str,
    },
    #[error("run {0} has no step left to run again: every step finished")]
    NothingToRun(String),
    #[error("the stored definition of run {run_id} cannot be read: {reason}")]
    Definition { run_id: String, reason: String },
    #[error("integration {integration} has no version {version}")]
    NoSuchVersion { integration: String, version: u32 },
    /// The version asked for cannot take over the failed run's checkpoints.
    #[error("version {version} of integration {integration} cannot resume run {run_id}: {reason}")]
    Incompatible {
        run_id: String,
        integration: String,
        version: u32,
        reason: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a rerun keeps of the run it runs again.
#[derive(Debug, Clone, PartialEq)]
pub struct RerunPlan {
    /// The first top-level step that runs again.
    pub from_step: String,
    /// The checkpoints copied, in the old run's key order.
    pub keep: Vec<StepRecord>,
}

/// Which of a failed run's checkpoints `steps` a rerun keeps, and where it
/// starts (see the module docs). `None`: every top-level step finished, so
/// there is nothing to run again.
pub fn plan(integration: &Integration, steps: &[StepRecord]) -> Option<RerunPlan> {
    let finished = |r: &StepRecord| matches!(r.status, StepStatus::Succeeded | StepStatus::Skipped);
    let by_key: HashMap<&str, &StepRecord> =
        steps.iter().map(|r| (r.step_key.as_str(), r)).collect();
    let mut keep_ids = Vec::new();
    let mut from_step = None;
    for step in &integration.steps {
        let id = step.id().as_str();
        keep_ids.push(id);
        if !by_key.get(id).is_some_and(|r| finished(r)) {
            from_step = Some(id);
            break;
        }
    }
    let from_step = from_step?;
    let under = |key: &str, id: &str| {
        key == id
            || key
                .strip_prefix(id)
                .is_some_and(|rest| rest.starts_with('/'))
    };
    let keep = steps
        .iter()
        .filter(|r| finished(r) && keep_ids.iter().any(|id| under(&r.step_key, id)))
        // The step run again is never restored itself, only what is
        // under it.
        .filter(|r| r.step_key != from_step)
        .cloned()
        .collect();
    Some(RerunPlan {
        from_step: from_step.to_owned(),
        keep,
    })
}

/// Why `new` cannot resume a run of `old` that failed in `from_step`:
/// its top-level steps up to and including `from_step` must be `old`'s, by
/// id and in order (their code and settings may differ: that is the fix).
pub fn incompatibility(old: &Integration, new: &Integration, from_step: &str) -> Option<String> {
    let ids = |i: &Integration| -> Vec<String> {
        i.steps.iter().map(|s| s.id().as_str().to_owned()).collect()
    };
    let (old, new) = (ids(old), ids(new));
    let through = old.iter().position(|id| id == from_step)? + 1;
    if !new.iter().any(|id| id == from_step) {
        return Some(format!(
            "it has no step \"{from_step}\", the step the run failed in"
        ));
    }
    if new.len() < through || new[..through] != old[..through] {
        return Some(format!(
            "its steps up to \"{from_step}\" are {}, where the run had {}; \
             only the steps from \"{from_step}\" on may change",
            quoted(
                new.iter()
                    .take_while(|id| *id != from_step)
                    .chain([&from_step.to_owned()])
            ),
            quoted(old[..through].iter()),
        ));
    }
    None
}

fn quoted<'a>(ids: impl Iterator<Item = &'a String>) -> String {
    ids.map(|id| format!("\"{id}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Stores a rerun of the tenant's failed run `run_id` (see the module
/// docs) and returns it, pending: whoever runs it runs it as a resumed run
/// (its `rerun_of` says so), so that its copied checkpoints are used.
/// `version`: run that version of the integration from the failed step on
/// instead of the failed run's own.
///
/// # Errors
/// [`RerunError::NotFound`] for no such run of this tenant,
/// [`RerunError::NotFailed`] for a run that did not fail,
/// [`RerunError::NoSuchVersion`] and [`RerunError::Incompatible`] for a
/// version that is not there or cannot take over, and the store's.
pub fn create_rerun(
    store: &Store,
    tenant: &str,
    run_id: &str,
    version: Option<u32>,
) -> Result<RunRecord, RerunError> {
    let old = store
        .run(tenant, run_id)?
        .ok_or_else(|| RerunError::NotFound(run_id.to_owned()))?;
    if old.status != RunStatus::Failed {
        return Err(RerunError::NotFailed {
            run_id: run_id.to_owned(),
            status: old.status.as_str(),
        });
    }
    let definition =
        store
            .run_definition(tenant, run_id)?
            .ok_or_else(|| RerunError::Definition {
                run_id: run_id.to_owned(),
                reason: "it is missing".to_owned(),
            })?;
    let integration: Integration =
        serde_json::from_value(definition).map_err(|e| RerunError::Definition {
            run_id: run_id.to_owned(),
            reason: e.to_string(),
        })?;
    let steps = store.steps(tenant, run_id)?;
    let plan =
        plan(&integration, &steps).ok_or_else(|| RerunError::NothingToRun(run_id.to_owned()))?;
    let other =
        match version {
            Some(version) if version != old.version => {
                let record = store
                    .integration(tenant, &old.integration, Some(version))?
                    .ok_or_else(|| RerunError::NoSuchVersion {
                        integration: old.integration.clone(),
                        version,
                    })?;
                let fixed: Integration = serde_json::from_value(record.definition.clone())
                    .map_err(|e| RerunError::Definition {
                        run_id: run_id.to_owned(),
                        reason: format!("version {version}: {e}"),
                    })?;
                if let Some(reason) = incompatibility(&integration, &fixed, &plan.from_step) {
                    return Err(RerunError::Incompatible {
                        run_id: run_id.to_owned(),
                        integration: old.integration.clone(),
                        version,
                        reason,
                    });
                }
                Some((version, record.definition))
            }
            _ => None,
        };
    let version = other.as_ref().map_or(old.version, |(version, _)| *version);
    let mut run = RunRecord::new(tenant, &old.integration, version).started_by(RunTrigger::Rerun);
    run.rerun_of = Some(old.run_id.clone());
    run.from_step = Some(plan.from_step);
    run.from_version = other.is_some().then_some(old.version);
    let definition = other.as_ref().map(|(_, definition)| definition);
    store.create_rerun(&run, &old.run_id, &plan.keep, definition)?;
    Ok(run)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(key: &str, status: StepStatus) -> StepRecord {
        StepRecord {
            step_key: key.to_owned(),
            status,
            attempts: 1,
            started_at_ms: 1,
            finished_at_ms: 2,
            output_bytes: Some(2),
            error: None,
            node: None,
        }
    }

    fn keys(plan: &RerunPlan) -> Vec<&str> {
        plan.keep.iter().map(|r| r.step_key.as_str()).collect()
    }

    const DEFINITION: &str = "apiVersion: isoflow.dev/v1\nname: p\nversion: 1\nsteps:\n\
        - {id: a, type: code, source: 'export default () => 1'}\n\
        - {id: b, type: code, source: 'export default () => 1'}\n\
        - id: each\n  type: loop\n  for_each: '{{ steps.a.output }}'\n  steps:\n\
        \x20   - {id: x, type: code, source: 'export default () => 1'}\n\
        \x20   - {id: y, type: code, source: 'export default () => 1'}\n\
        - {id: c, type: code, source: 'export default () => 1'}\n";

    #[test]
    fn the_steps_before_the_failed_one_are_kept_and_it_is_where_the_rerun_starts() {
        let integration = crate::model::load("p.yaml", DEFINITION).expect("valid");
        use StepStatus::{Failed, Skipped, Succeeded};
        let steps = [record("a", Succeeded), record("b", Failed)];
        let plan = super::plan(&integration, &steps).expect("something to run");
        assert_eq!(plan.from_step, "b");
        assert_eq!(keys(&plan), ["a"]);

        // Failed in a loop: its finished elements and, in the failed
        // element, the steps before the failed one are kept; the loop's
        // own failed record is not, nor anything of a step after it.
        let steps = [
            record("a", Succeeded),
            record("b", Skipped),
            record("each", Failed),
            record("each/00000000", Succeeded),
            record("each/00000000/x", Succeeded),
            record("each/00000000/y", Succeeded),
            record("each/00000001/x", Succeeded),
            record("each/00000001/y", Failed),
            record("eachother", Succeeded),
        ];
        let plan = super::plan(&integration, &steps).expect("something to run");
        assert_eq!(plan.from_step, "each");
        assert_eq!(
            keys(&plan),
            [
                "a",
                "b",
                "each/00000000",
                "each/00000000/x",
                "each/00000000/y",
                "each/00000001/x"
            ]
        );

        // A run that failed before its first step (it could not start)
        // starts from the first.
        let plan = super::plan(&integration, &[]).expect("something to run");
        assert_eq!((plan.from_step.as_str(), plan.keep.len()), ("a", 0));
        let all: Vec<_> = ["a", "b", "each", "c"]
            .iter()
            .map(|k| record(k, Succeeded))
            .collect();
        assert_eq!(super::plan(&integration, &all), None);
    }

    #[test]
    fn a_version_takes_over_a_failed_run_when_its_steps_up_to_the_failed_one_are_the_same() {
        let old = crate::model::load("p.yaml", DEFINITION).expect("valid");
        let version = |text: &str| crate::model::load("p.yaml", text).expect("valid");
        // b's code changed, a step added after it: fine.
        let fixed = DEFINITION.replace(
            "- {id: b, type: code, source: 'export default () => 1'}",
            "- {id: b, type: code, source: 'export default () => 2'}",
        ) + "- {id: d, type: code, source: 'export default () => 1'}\n";
        assert_eq!(incompatibility(&old, &version(&fixed), "b"), None);
        // b gone.
        let without = DEFINITION.replace(
            "- {id: b, type: code, source: 'export default () => 1'}\n",
            "",
        );
        assert_eq!(
            incompatibility(&old, &version(&without), "b").as_deref(),
            Some("it has no step \"b\", the step the run failed in")
        );
        // A step inserted before b.
        let inserted = DEFINITION.replace(
            "- {id: b,",
            "- {id: z, type: code, source: 'export default () => 1'}\n- {id: b,",
        );
        assert_eq!(
            incompatibility(&old, &version(&inserted), "b").as_deref(),
            Some(
                "its steps up to \"b\" are \"a\", \"z\", \"b\", where the run had \"a\", \"b\"; \
                 only the steps from \"b\" on may change"
            )
        );
        // Steps after the failed one may go.
        let shorter = DEFINITION.replace(
            "- {id: c, type: code, source: 'export default () => 1'}\n",
            "",
        );
        assert_eq!(incompatibility(&old, &version(&shorter), "each"), None);
    }
}
