//! The rules that span steps, checked once every step has been read: ids
//! are unique, and every expression path names something its step can see.
//!
//! What a step can see: the run's `input`; the output of every top-level step
//! before it (for a step inside a loop: before the loop); inside a loop, the
//! outputs of the same loop's earlier steps (of the same element) and
//! `item`/`index`. Not: itself, a later step, the loop it is in (whose output
//! exists only when the loop is done), or a step inside a loop it is not in.

use std::collections::HashMap;

use super::Root;
use super::decode::{Problem, StepInfo, Use, closest};

/// The problems with `steps` (in reading order) and the `uses` of paths.
pub(super) fn check(steps: &[StepInfo], uses: &[Use]) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut by_id: HashMap<&str, usize> = HashMap::new();
    for (i, step) in steps.iter().enumerate() {
        let Some(id) = step.id.as_deref() else {
            continue;
        };
        match by_id.get(id) {
            Some(&first) => problems.push(Problem {
                line: step.id_line,
                step: None,
                message: format!(
                    "duplicate step id \"{id}\" (first used at line {})",
                    steps[first].id_line
                ),
            }),
            None => {
                by_id.insert(id, i);
            }
        }
    }
    for u in uses {
        let label = u.consumer.step.map(|i| steps[i].label.clone());
        let problem = |message: String| Problem {
            line: u.line,
            step: label.clone(),
            message,
        };
        let field = &u.field;
        let target = match &u.root {
            Root::Input => continue,
            Root::Item | Root::Index => {
                if u.consumer.in_loop.is_none() {
                    let name = if u.root == Root::Item {
                        "item"
                    } else {
                        "index"
                    };
                    problems.push(problem(format!(
                        "\"{name}\" used in {field} outside a loop (item and index exist only in a loop's steps)"
                    )));
                }
                continue;
            }
            Root::Step(r) => r.id.as_str(),
        };
        let Some(&t) = by_id.get(target) else {
            // In step order, so that the suggestion does not depend on hashing.
            let hint = closest(target, steps.iter().filter_map(|s| s.id.as_deref()))
                .map(|near| format!(" (did you mean \"{near}\"?)"))
                .unwrap_or_default();
            problems.push(problem(format!(
                "unknown step \"{target}\" referenced in {field}{hint}"
            )));
            continue;
        };
        let info = &steps[t];
        let message = if u.consumer.step == Some(t) {
            format!("step \"{target}\" referenced in {field} is this step itself")
        } else if u.consumer.in_loop == Some(t) {
            format!(
                "loop \"{target}\" referenced in {field} contains this step (its output exists only when the loop is done)"
            )
        } else if let Some(outer) = info.parent.filter(|&p| Some(p) != u.consumer.in_loop) {
            let outer = steps[outer].id.as_deref().unwrap_or("?");
            format!(
                "step \"{target}\" referenced in {field} is inside loop \"{outer}\" (use steps.{outer}.output, the list of its results)"
            )
        } else if u.consumer.step.is_some_and(|c| t > c) {
            format!(
                "step \"{target}\" referenced in {field} runs later (line {})",
                info.id_line
            )
        } else {
            continue;
        };
        problems.push(problem(message));
    }
    problems
}
