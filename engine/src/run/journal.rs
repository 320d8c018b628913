//! Where a run's checkpoints go.
//!
//! A run's actors never write to the store themselves: they hand each
//! checkpoint to the run's [`Journal`] and start the next step only once the
//! journal says the checkpoint is durable. On one node the journal is the
//! local store ([`StoreJournal`]: an fsynced RocksDB write). On a worker of
//! a cluster it is the coordinator that owns the run: the checkpoint travels
//! over the network and is durable once the coordinator stored it and
//! acknowledged it. The engine does not know which.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde_json::Value;

use crate::store::{LogRecord, RunRecord, StepRecord, Store, StoreError};

/// What a journal write returns once it is durable.
pub type JournalFuture = Pin<Box<dyn Future<Output = Result<(), JournalError>> + Send>>;

/// The checkpoints of one run.
pub trait Journal: Send + Sync + 'static {
    /// A step this run finished before this process started it (a resumed
    /// run): its record and output, or `None` when it must run.
    fn restored(&self, step_key: &str) -> Result<Option<Restored>, JournalError>;

    /// Records `write`. The future resolves once the write is durable
    /// ([`WriteKind::Logs`] excepted: those may be lost in a crash).
    fn write(&self, write: JournalWrite) -> JournalFuture;
}

/// A finished step as it was checkpointed.
#[derive(Debug, Clone)]
pub struct Restored {
    pub record: StepRecord,
    pub output: Option<Value>,
}

/// One write of a run's journal.
#[derive(Debug, Clone)]
pub struct JournalWrite {
    /// The run's summary as of this write.
    pub run: RunRecord,
    /// Finished steps with their outputs (usually one; a loop element's
    /// last step and the element itself go together).
    pub steps: Vec<(StepRecord, Option<Arc<Value>>)>,
    /// Log lines of the attempts these steps ended with.
    pub logs: Vec<LogRecord>,
    pub kind: WriteKind,
}

/// What a [`JournalWrite`] is.
#[derive(Debug, Clone)]
pub enum WriteKind {
    /// Steps finished; the run goes on.
    Checkpoint,
    /// The run ended (`run.status` says how), with its output if it has one.
    Finish { output: Option<Arc<Value>> },
    /// Log lines of an attempt that failed and will be retried: no step
    /// finished, nothing to make durable.
    Logs,
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The owner of the run's state cannot take the write (a coordinator
    /// that is unreachable, or that gave the run to another worker).
    #[error("{0}")]
    Unavailable(String),
}

/// A journal that is the local store.
#[derive(Debug, Clone)]
pub struct StoreJournal {
    store: Arc<Store>,
    tenant: String,
    run_id: String,
}

impl StoreJournal {
    pub fn new(store: Arc<Store>, tenant: &str, run_id: &str) -> Self {
        StoreJournal {
            store,
            tenant: tenant.to_owned(),
            run_id: run_id.to_owned(),
        }
    }
}

impl Journal for StoreJournal {
    fn restored(&self, step_key: &str) -> Result<Option<Restored>, JournalError> {
        let Some(record) = self.store.step(&self.tenant, &self.run_id, step_key)? else {
            return Ok(None);
        };
        let output = match record.output_bytes {
            Some(_) => self
                .store
                .step_output(&self.tenant, &self.run_id, step_key)?,
            None => None,
        };
        Ok(Some(Restored { record, output }))
    }

    fn write(&self, write: JournalWrite) -> JournalFuture {
        let store = self.store.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || apply(&store, &write))
                .await
                .map_err(|e| JournalError::Unavailable(format!("store write stopped: {e}")))?
        })
    }
}

/// Applies `write` to `store`: what a [`StoreJournal`] does, and what a
/// coordinator does with a checkpoint a worker sent.
pub fn apply(store: &Store, write: &JournalWrite) -> Result<(), JournalError> {
    let steps = write
        .steps
        .iter()
        .map(|(record, output)| (record.clone(), output.as_deref()))
        .collect();
    match &write.kind {
        WriteKind::Checkpoint => store.checkpoint(&write.run, steps, &write.logs)?,
        WriteKind::Finish { output } => {
            store.finish_run(&write.run, steps, &write.logs, output.as_deref())?;
        }
        WriteKind::Logs => store.append_logs(&write.run, &write.logs)?,
    }
    Ok(())
}
