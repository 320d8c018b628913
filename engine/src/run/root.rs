//! The root actor: one per engine, the supervisor of every run.

use std::collections::HashMap;
use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use super::context::{RunCtx, Running, Timings, lock};
use super::journal::Journal;
use super::sequence::{SeqArgs, SeqScope, Sequence};
use super::{RunEvent, Shared};
use crate::model::Integration;
use crate::store::{RunRecord, RunStatus};

pub(crate) enum RootMsg {
    Start {
        run: RunRecord,
        integration: Arc<Integration>,
        input: Arc<Value>,
        events: mpsc::UnboundedSender<RunEvent>,
        journal: Arc<dyn Journal>,
        resumed: bool,
        /// Time already spent storing the run.
        store_time: std::time::Duration,
        reply: oneshot::Sender<Result<(), String>>,
    },
}

/// Supervises every run of an engine: a run whose own actor fails ends
/// `failed` with the reason, the node goes on.
pub(crate) struct Root;

pub(crate) struct RootArgs {
    pub(crate) shared: Arc<Shared>,
    pub(crate) running: Running,
}

pub(crate) struct RootState {
    pub(crate) args: RootArgs,
    pub(crate) runs: HashMap<ractor::ActorId, Arc<RunCtx>>,
}

impl Actor for Root {
    type Msg = RootMsg;
    type State = RootState;
    type Arguments = RootArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<RootMsg>,
        args: RootArgs,
    ) -> Result<RootState, ActorProcessingErr> {
        Ok(RootState {
            args,
            runs: HashMap::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<RootMsg>,
        message: RootMsg,
        state: &mut RootState,
    ) -> Result<(), ActorProcessingErr> {
        let RootMsg::Start {
            run,
            integration,
            input,
            events,
            journal,
            resumed,
            store_time,
            reply,
        } = message;
        let key = (run.tenant.clone(), run.run_id.clone());
        // The run's span on this node: every log line of the run carries
        // its id; with tracing on, the embedder puts it in the run's trace.
        let span = tracing::info_span!(
            parent: None,
            "run",
            otel.name = "run.execute",
            run_id = %run.run_id,
            tenant = %run.tenant,
            integration = %run.integration,
            version = run.version,
            trigger = run.trigger.as_ref().map(ToString::to_string).unwrap_or_default(),
            resumed,
            trace_id = tracing::field::Empty,
        );
        let trace = state.args.shared.telemetry.run_span(&span, &run);
        let ctx = Arc::new(RunCtx {
            span,
            trace: trace.map(Into::into),
            shared: state.args.shared.clone(),
            run,
            integration,
            input,
            events,
            journal,
            resumed,
            aborted: std::sync::atomic::AtomicBool::new(false),
            timings: Arc::new(Timings::default()),
            ahead: tokio::sync::Mutex::new(None),
        });
        ctx.timings.add_store(store_time);
        ctx.timings.add_store_wait(store_time);
        let spawned = Actor::spawn_linked(
            None,
            Sequence,
            SeqArgs {
                ctx: ctx.clone(),
                scope: SeqScope::Top,
            },
            myself.get_cell(),
        )
        .await;
        match spawned {
            Ok((actor, _)) => {
                state.runs.insert(actor.get_id(), ctx.clone());
                lock(&state.args.running).insert(key, (actor, ctx));
                let _ = reply.send(Ok(()));
            }
            Err(e) => {
                let _ = reply.send(Err(e.to_string()));
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<RootMsg>,
        event: SupervisionEvent,
        state: &mut RootState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, failure) = match event {
            SupervisionEvent::ActorTerminated(cell, _, _) => (cell, None),
            SupervisionEvent::ActorFailed(cell, error) => (cell, Some(error)),
            _ => return Ok(()),
        };
        let Some(ctx) = state.runs.remove(&cell.get_id()) else {
            return Ok(());
        };
        lock(&state.args.running).remove(&(ctx.run.tenant.clone(), ctx.run.run_id.clone()));
        if ctx.aborted.load(std::sync::atomic::Ordering::Acquire) {
            return Ok(());
        }
        if let Some(error) = failure {
            let message = format!("run failed inside the engine: {error}");
            tracing::error!(run_id = %ctx.run.run_id, "{message}");
            // If the store itself failed, this write may fail too; the run
            // then stays unfinished and is resumed at the next start.
            if let Err(e) = ctx.end(RunStatus::Failed, None, Some(message)).await {
                tracing::error!(run_id = %ctx.run.run_id, "cannot record the failure: {e}");
            }
        }
        Ok(())
    }
}
