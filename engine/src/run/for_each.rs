//! The loop actor: one sequence per element, at most `concurrency` at
//! once; elements checkpointed before (a restart, an earlier attempt of the
//! loop) are not run again.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, SupervisionEvent};
use serde_json::Value;

use super::Outputs;
use super::context::RunCtx;
use super::sequence::{Failure, SeqArgs, SeqMsg, SeqScope, Sequence};
use crate::model::Step;

pub(crate) enum LoopMsg {
    ItemDone {
        index: usize,
        result: Result<Value, String>,
    },
    /// The element's sequence stopped because the engine is draining.
    ItemStopped { index: usize },
}

pub(crate) struct LoopActor;

pub(crate) struct LoopArgs {
    pub(crate) ctx: Arc<RunCtx>,
    pub(crate) loop_index: usize,
    pub(crate) items: Arc<Vec<Value>>,
    pub(crate) top: Arc<Outputs>,
    pub(crate) token: u64,
    pub(crate) parent: ActorRef<SeqMsg>,
}

pub(crate) struct LoopState {
    pub(crate) args: LoopArgs,
    pub(crate) results: Vec<Option<Value>>,
    /// The next element that may need starting.
    pub(crate) next: usize,
    pub(crate) running: HashMap<usize, ActorCell>,
    pub(crate) over: bool,
}

impl Actor for LoopActor {
    type Msg = LoopMsg;
    type State = LoopState;
    type Arguments = LoopArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<LoopMsg>,
        args: LoopArgs,
    ) -> Result<LoopState, ActorProcessingErr> {
        let mut results = vec![None; args.items.len()];
        // Elements finished before a restart or an earlier attempt of the
        // loop are not run again.
        let ctx = &args.ctx;
        let loop_id = ctx.integration.steps[args.loop_index]
            .id()
            .as_str()
            .to_owned();
        for (index, result) in results.iter_mut().enumerate() {
            let key = format!("{loop_id}/{index:08}");
            if let Some(restored) = ctx.journal.restored(&key)? {
                *result = Some(restored.output.unwrap_or(Value::Null));
            }
        }
        Ok(LoopState {
            args,
            results,
            next: 0,
            running: HashMap::new(),
            over: false,
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<LoopMsg>,
        state: &mut LoopState,
    ) -> Result<(), ActorProcessingErr> {
        fill(&myself, state).await
    }

    async fn handle(
        &self,
        myself: ActorRef<LoopMsg>,
        message: LoopMsg,
        state: &mut LoopState,
    ) -> Result<(), ActorProcessingErr> {
        if state.over {
            return Ok(());
        }
        match message {
            LoopMsg::ItemDone { index, result } => {
                state.running.remove(&index);
                match result {
                    Ok(output) => {
                        state.results[index] = Some(output);
                        fill(&myself, state).await
                    }
                    Err(message) => {
                        state.over = true;
                        let failure = Failure::transient(format!("element {index}: {message}"));
                        report(state, Err(failure));
                        Ok(())
                    }
                }
            }
            LoopMsg::ItemStopped { index } => {
                state.running.remove(&index);
                fill(&myself, state).await
            }
        }
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<LoopMsg>,
        event: SupervisionEvent,
        state: &mut LoopState,
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ActorFailed(cell, error) = event {
            let index = state
                .running
                .iter()
                .find(|(_, c)| c.get_id() == cell.get_id())
                .map(|(i, _)| *i);
            if let Some(index) = index.filter(|_| !state.over) {
                state.over = true;
                let failure = Failure::transient(format!("element {index} crashed: {error}"));
                report(state, Err(failure));
            }
        }
        Ok(())
    }
}

pub(crate) fn report(state: &LoopState, result: Result<Value, Failure>) {
    let _ = state.args.parent.send_message(SeqMsg::Done {
        token: state.args.token,
        result,
        logs: Vec::new(),
        bytes: 0,
    });
}

/// Starts elements until `concurrency` run, or reports the loop's end.
pub(crate) async fn fill(
    myself: &ActorRef<LoopMsg>,
    state: &mut LoopState,
) -> Result<(), ActorProcessingErr> {
    let Step::Loop(step) = &state.args.ctx.integration.steps[state.args.loop_index] else {
        return Err("loop actor started for a step that is not a loop".into());
    };
    let concurrency = usize::from(step.concurrency.max(1));
    let draining = state.args.ctx.shared.draining.load(Ordering::Acquire);
    while !draining && state.running.len() < concurrency && state.next < state.results.len() {
        let index = state.next;
        state.next += 1;
        if state.results[index].is_some() {
            continue;
        }
        let args = SeqArgs {
            ctx: state.args.ctx.clone(),
            scope: SeqScope::Item {
                loop_index: state.args.loop_index,
                index,
                item: Arc::new(state.args.items[index].clone()),
                top: state.args.top.clone(),
                parent: myself.clone(),
            },
        };
        let (actor, _) = Actor::spawn_linked(None, Sequence, args, myself.get_cell()).await?;
        state.running.insert(index, actor.get_cell());
    }
    if !state.running.is_empty() {
        return Ok(());
    }
    if state.results.iter().all(Option::is_some) {
        state.over = true;
        let outputs = state
            .results
            .iter_mut()
            .map(|r| r.take().unwrap_or(Value::Null))
            .collect();
        report(state, Ok(Value::Array(outputs)));
    } else if draining {
        state.over = true;
        let _ = state.args.parent.send_message(SeqMsg::Stopped {
            token: state.args.token,
        });
    }
    Ok(())
}
