//! What a code step of a stored run was given, to run it again elsewhere
//! (`isoflow eval step.js --input @input.json`).
//!
//! A step's input is its `input` template rendered from the run's input
//! and the outputs of the steps before it (inside a loop: the element, its
//! index and the element's earlier steps too). Templates read nothing else,
//! so rendering them again from the run's stored input and checkpoints gives
//! the input the step ran with: the run stores no second copy of it.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::model::{CodeSource, Integration, Scope, Step};
use crate::sandbox::Runtime;
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("run {0} does not exist")]
    NotFound(String),
    #[error("run {run_id} has no step {step_key}")]
    NoSuchStep { run_id: String, step_key: String },
    #[error(
        "step {step_key} of run {run_id} is {kind} step: only a code step has an input to replay"
    )]
    NotCode {
        run_id: String,
        step_key: String,
        kind: &'static str,
    },
    #[error("step {step_key} of run {run_id} has no input yet: {reason}")]
    NotReached {
        run_id: String,
        step_key: String,
        reason: String,
    },
    #[error("the stored definition or input of run {run_id} cannot be read: {reason}")]
    Stored { run_id: String, reason: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A code step as a run gave it: enough to run it again.
#[derive(Debug, Clone, PartialEq)]
pub struct StepReplay {
    /// The module's source, as deployed.
    pub source: String,
    pub runtime: Runtime,
    /// Its input, rendered as the run rendered it.
    pub input: Value,
}

/// The source and input of code step `step_key` (`id`, or
/// `<loop>/<index>/<id>` inside a loop) of the tenant's run `run_id`.
///
/// # Errors
/// [`ReplayError::NotFound`] for no such run of this tenant,
/// [`ReplayError::NoSuchStep`] and [`ReplayError::NotCode`] for a key that
/// names no code step, [`ReplayError::NotReached`] for a loop element the
/// run has not got to, and the store's.
pub fn step_replay(
    store: &Store,
    tenant: &str,
    run_id: &str,
    step_key: &str,
) -> Result<StepReplay, ReplayError> {
    store
        .run(tenant, run_id)?
        .ok_or_else(|| ReplayError::NotFound(run_id.to_owned()))?;
    let stored = |what: &str, value: Option<Value>| {
        value.ok_or_else(|| ReplayError::Stored {
            run_id: run_id.to_owned(),
            reason: format!("its {what} is missing"),
        })
    };
    let definition = stored("definition", store.run_definition(tenant, run_id)?)?;
    let integration: Integration =
        serde_json::from_value(definition).map_err(|e| ReplayError::Stored {
            run_id: run_id.to_owned(),
            reason: e.to_string(),
        })?;
    let input = stored("input", store.run_input(tenant, run_id)?)?;
    let no_such = || ReplayError::NoSuchStep {
        run_id: run_id.to_owned(),
        step_key: step_key.to_owned(),
    };
    // The outputs of the steps before `id` in `steps` that `wanted` names
    // (a template reads nothing else: only these are read from the store),
    // whose keys start with `prefix`.
    let outputs_before = |steps: &[Step], id: &str, prefix: &str, wanted: &BTreeSet<&str>| {
        let mut outputs = BTreeMap::new();
        for step in steps
            .iter()
            .take_while(|s| s.id().as_str() != id)
            .filter(|s| wanted.contains(s.id().as_str()))
        {
            let key = format!("{prefix}{}", step.id().as_str());
            if let Some(output) = store.step_output(tenant, run_id, &key)? {
                outputs.insert(step.id().as_str().to_owned(), output);
            }
        }
        Ok::<_, ReplayError>(outputs)
    };
    let not_code = |kind| ReplayError::NotCode {
        run_id: run_id.to_owned(),
        step_key: step_key.to_owned(),
        kind,
    };
    // The code step `id` of `steps`.
    let code_step = |steps: &'_ [Step], id: &str| match find(steps, id) {
        Some(Step::Code(code)) => Ok(code.clone()),
        Some(Step::Http(_)) => Err(not_code("an http")),
        Some(Step::Loop(_)) => Err(not_code("a loop")),
        None => Err(no_such()),
    };
    let parts: Vec<&str> = step_key.split('/').collect();
    let (code, input) = match parts.as_slice() {
        [id] => {
            let code = code_step(&integration.steps, id)?;
            let wanted = code.input.references().map(|r| r.id.as_str()).collect();
            let top = outputs_before(&integration.steps, id, "", &wanted)?;
            let input = code.input.render(&Scope::new(&input, &top));
            (code, input)
        }
        [loop_id, index, id] => {
            let Some(Step::Loop(each)) = find(&integration.steps, loop_id) else {
                return Err(no_such());
            };
            let code = code_step(&each.steps, id)?;
            let index: usize = index.parse().map_err(|_| no_such())?;
            let wanted: BTreeSet<&str> = code
                .input
                .references()
                .chain(each.for_each.references())
                .map(|r| r.id.as_str())
                .collect();
            let top = outputs_before(&integration.steps, loop_id, "", &wanted)?;
            let items = each.for_each.render(&Scope::new(&input, &top));
            let Some(item) = items.as_array().and_then(|items| items.get(index)) else {
                return Err(ReplayError::NotReached {
                    run_id: run_id.to_owned(),
                    step_key: step_key.to_owned(),
                    reason: format!("its loop {loop_id} has no element {index}"),
                });
            };
            let own = outputs_before(&each.steps, id, &format!("{loop_id}/{index:08}/"), &wanted)?;
            let both = (&own, &top);
            let input = code
                .input
                .render(&Scope::new(&input, &both).with_item(item, index));
            (code, input)
        }
        _ => return Err(no_such()),
    };
    match code.code {
        CodeSource::Source(source) => Ok(StepReplay {
            source,
            runtime: code.runtime,
            input,
        }),
        CodeSource::File(file) => Err(ReplayError::Stored {
            run_id: run_id.to_owned(),
            reason: format!(
                "step {step_key}'s code is a file ({}), not inlined",
                file.display()
            ),
        }),
    }
}

fn find<'a>(steps: &'a [Step], id: &str) -> Option<&'a Step> {
    steps.iter().find(|s| s.id().as_str() == id)
}
