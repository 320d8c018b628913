//! What the actors of one run share: the run, its definition and input,
//! where its events go, and the checkpoint writes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ractor::{ActorProcessingErr, ActorRef};
use serde_json::Value;
use tokio::sync::mpsc;

use super::journal::{Journal, JournalWrite, WriteKind};
use super::sequence::SeqMsg;
use super::{RunEvent, RunOutcome, RunTimings, Shared};
use crate::model::Integration;
use crate::store::{LogRecord, RunRecord, RunStatus, StepRecord, now_ms};

/// The runs in progress: their top sequence and context, by (tenant, run id).
pub(crate) type Running = Arc<Mutex<HashMap<(String, String), (ActorRef<SeqMsg>, Arc<RunCtx>)>>>;

/// What a run's actors share.
pub(crate) struct RunCtx {
    /// The run's span on this node: the parent of its steps' spans.
    pub(crate) span: tracing::Span,
    /// Where its step and checkpoint spans go in its trace (see
    /// [`crate::telemetry::Telemetry::run_span`]); `None`: not traced.
    pub(crate) trace: Option<Arc<str>>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) run: RunRecord,
    pub(crate) integration: Arc<Integration>,
    pub(crate) input: Arc<Value>,
    pub(crate) events: mpsc::UnboundedSender<RunEvent>,
    /// Where its checkpoints go.
    pub(crate) journal: Arc<dyn Journal>,
    /// Started again after a restart: look for checkpoints before each step.
    pub(crate) resumed: bool,
    /// Set by [`crate::run::Engine::abort`]: the run stops without a word
    /// to its journal.
    pub(crate) aborted: std::sync::atomic::AtomicBool,
    pub(crate) timings: Arc<Timings>,
    /// A checkpoint being made durable while the next code step computes
    /// ([`RunCtx::checkpoint_ahead`]); every other write, and every step
    /// that is not a code step, waits for it first ([`RunCtx::settle`]).
    pub(crate) ahead: tokio::sync::Mutex<Option<AheadWrite>>,
}

/// A checkpoint write in its own task: its error, as text, if it failed.
pub(crate) type AheadWrite = tokio::task::JoinHandle<Result<(), String>>;

/// How a run ends: its status, output and error.
pub(crate) struct End {
    pub(crate) status: RunStatus,
    pub(crate) output: Option<Value>,
    pub(crate) error: Option<String>,
}

/// [`RunTimings`] as the run's actors add to it.
#[derive(Debug, Default)]
pub(crate) struct Timings {
    execution_ns: AtomicU64,
    store_ns: AtomicU64,
    store_wait_ns: AtomicU64,
}

impl Timings {
    pub(crate) fn add_execution(&self, d: Duration) {
        self.execution_ns.fetch_add(nanos(d), Ordering::Relaxed);
    }

    pub(crate) fn add_store(&self, d: Duration) {
        self.store_ns.fetch_add(nanos(d), Ordering::Relaxed);
    }

    pub(crate) fn add_store_wait(&self, d: Duration) {
        self.store_wait_ns.fetch_add(nanos(d), Ordering::Relaxed);
    }

    fn snapshot(&self) -> RunTimings {
        let load = |ns: &AtomicU64| Duration::from_nanos(ns.load(Ordering::Relaxed));
        RunTimings {
            execution: load(&self.execution_ns),
            store: load(&self.store_ns),
            store_wait: load(&self.store_wait_ns),
        }
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl RunCtx {
    pub(crate) fn emit(&self, event: RunEvent) {
        if self.aborted.load(Ordering::Acquire) {
            return;
        }
        let _ = self.events.send(event);
    }

    /// The run record as the next write stores it.
    pub(crate) fn record(&self) -> RunRecord {
        let mut run = self.run.clone();
        run.updated_at_ms = now_ms();
        run
    }

    /// Waits until the checkpoint written ahead (if any) is durable, and
    /// fails as it did. Writes are made one after the other: a later one
    /// (a run's end above all) never lands before an earlier one.
    pub(crate) async fn settle(&self) -> Result<(), ActorProcessingErr> {
        self.settled_ahead().await.map(drop)
    }

    /// [`RunCtx::settle`], keeping the slot of the write ahead locked for
    /// the next one. The wait counts as time the run stood still.
    async fn settled_ahead(
        &self,
    ) -> Result<tokio::sync::MutexGuard<'_, Option<AheadWrite>>, ActorProcessingErr> {
        let start = Instant::now();
        // Held while waiting, so that a second caller waits as well.
        let mut ahead = self.ahead.lock().await;
        let settled = settled(&mut ahead).await;
        self.timings.add_store_wait(start.elapsed());
        settled.map(|()| ahead)
    }

    /// Starts making finished steps durable and returns at once: the run's
    /// next step, a code step, computes meanwhile. Pipelined durability
    /// (docs/running.md, "What is durable when"): a code step has no effect
    /// outside the run, so if the process dies before this write is durable,
    /// the step and the one computed meanwhile both run again and nobody
    /// saw either. What has an effect (an http step, a loop's steps, the
    /// run's end) waits for [`RunCtx::settle`] first, as does every write.
    /// `finished` is reported once the write is durable, as after
    /// [`RunCtx::checkpoint`]: a step reported finished is never run again.
    pub(crate) async fn checkpoint_ahead(
        self: &Arc<Self>,
        steps: Vec<(StepRecord, Option<Arc<Value>>)>,
        logs: Vec<LogRecord>,
        bytes: u64,
        finished: RunEvent,
    ) -> Result<(), ActorProcessingErr> {
        let mut ahead = self.settled_ahead().await?;
        let ctx = self.clone();
        *ahead = Some(tokio::spawn(async move {
            ctx.write_now(ctx.record(), steps, logs, WriteKind::Checkpoint, bytes)
                .await
                .map_err(|e| e.to_string())?;
            ctx.emit(finished);
            Ok(())
        }));
        Ok(())
    }

    async fn write(
        &self,
        run: RunRecord,
        steps: Vec<(StepRecord, Option<Arc<Value>>)>,
        logs: Vec<LogRecord>,
        kind: WriteKind,
        bytes: u64,
    ) -> Result<(), ActorProcessingErr> {
        self.settle().await?;
        let start = Instant::now();
        let written = self.write_now(run, steps, logs, kind, bytes).await;
        self.timings.add_store_wait(start.elapsed());
        written
    }

    async fn write_now(
        &self,
        run: RunRecord,
        steps: Vec<(StepRecord, Option<Arc<Value>>)>,
        logs: Vec<LogRecord>,
        kind: WriteKind,
        bytes: u64,
    ) -> Result<(), ActorProcessingErr> {
        if self.aborted.load(Ordering::Acquire) {
            return Err("the run was aborted on this node".into());
        }
        let what = match kind {
            WriteKind::Checkpoint => "steps",
            WriteKind::Finish { .. } => "finish",
            WriteKind::Logs => "logs",
        };
        let span = tracing::debug_span!(
            target: crate::telemetry::TARGET,
            parent: &self.span,
            "checkpoint",
            checkpoint.kind = what,
            checkpoint.steps = steps.len(),
            checkpoint.bytes = bytes,
            checkpoint.write_ms = tracing::field::Empty,
        );
        if let Some(trace) = &self.trace {
            self.shared.telemetry.adopt(&span, trace);
        }
        let start = Instant::now();
        let written = tracing::Instrument::instrument(
            self.journal.write(JournalWrite {
                run,
                steps,
                logs,
                kind,
            }),
            span.clone(),
        )
        .await;
        let took = start.elapsed();
        self.timings.add_store(took);
        span.record("checkpoint.write_ms", took.as_secs_f64() * 1000.0);
        if what != "logs" {
            self.shared.telemetry.checkpoint(took, bytes);
        }
        Ok(written?)
    }

    /// Makes finished steps durable; returns once they are.
    /// `bytes`: the size of the steps' outputs, as far as it is known.
    pub(crate) async fn checkpoint(
        &self,
        steps: Vec<(StepRecord, Option<Arc<Value>>)>,
        logs: Vec<LogRecord>,
        bytes: u64,
    ) -> Result<(), ActorProcessingErr> {
        self.write(self.record(), steps, logs, WriteKind::Checkpoint, bytes)
            .await
    }

    /// Records the logs of an attempt that will be retried.
    pub(crate) async fn append_logs(&self, logs: Vec<LogRecord>) -> Result<(), ActorProcessingErr> {
        self.write(self.record(), Vec::new(), logs, WriteKind::Logs, 0)
            .await
    }

    /// Ends the run with no checkpoint to write alongside.
    pub(crate) async fn end(
        &self,
        status: RunStatus,
        output: Option<Value>,
        error: Option<String>,
    ) -> Result<(), ActorProcessingErr> {
        self.finish(
            Vec::new(),
            Vec::new(),
            Vec::new(),
            End {
                status,
                output,
                error,
            },
            0,
        )
        .await
    }

    /// Ends the run: `steps` (its last checkpoints, if any) and the run's
    /// end in one durable write; then `events`, then [`RunEvent::Finished`].
    pub(crate) async fn finish(
        &self,
        steps: Vec<(StepRecord, Option<Arc<Value>>)>,
        logs: Vec<LogRecord>,
        events: Vec<RunEvent>,
        end: End,
        bytes: u64,
    ) -> Result<(), ActorProcessingErr> {
        let End {
            status,
            output,
            error,
        } = end;
        let mut run = self.record();
        run.status = status;
        run.error.clone_from(&error);
        let output = output.map(Arc::new);
        self.write(
            run,
            steps,
            logs,
            WriteKind::Finish {
                output: output.clone(),
            },
            bytes,
        )
        .await?;
        // The journal has let go of its reference once the write is done.
        let output = output.map(|o| Arc::try_unwrap(o).unwrap_or_else(|shared| (*shared).clone()));
        for event in events {
            self.emit(event);
        }
        self.emit(RunEvent::Finished(RunOutcome {
            status,
            output,
            error,
            timings: self.timings.snapshot(),
        }));
        Ok(())
    }
}

/// Waits for the write in `ahead`, if any, and takes it out.
async fn settled(ahead: &mut Option<AheadWrite>) -> Result<(), ActorProcessingErr> {
    let Some(write) = ahead.take() else {
        return Ok(());
    };
    match write.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(message)) => Err(message.into()),
        Err(e) => Err(format!("a checkpoint write stopped: {e}").into()),
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
