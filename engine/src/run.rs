//! Running integrations: the [`Engine`] starts runs, resumes unfinished ones
//! after a restart, cancels them and shuts down gracefully.
//!
//! # The actor tree
//!
//! Each run is a tree of ractor actors under one root actor per engine:
//!
//! ```text
//! root ─┬─ run (a sequence: the integration's steps, one after another)
//!       │    ├─ step (one attempt of a code or http step)
//!       │    └─ loop ─┬─ element 0 (a sequence: the loop's steps for item 0)
//!       │             │     └─ step
//!       │             └─ element 1 ...   (at most `concurrency` at once)
//!       └─ run ...
//! ```
//!
//! A sequence owns its steps' policy: it evaluates `when`, renders inputs,
//! starts one child per attempt, arms the step's time-out, decides on
//! retries with backoff, and checkpoints each finished step before it starts
//! the next. A child that fails, panics or times out is a supervision event
//! for its sequence, never a crash of the node; the root turns a failure of
//! a sequence itself into a failed run.
//!
//! # Durability and resumption
//!
//! A run, its definition and its input are stored before it starts. A
//! step's output is checkpointed with one fsynced write before anything
//! after it starts ([`crate::store`]). To resume, a sequence reads the
//! checkpoints: finished steps are not run again, their stored outputs are
//! used instead; the step that was in flight when the process stopped is
//! started again from its first attempt. So every step runs to completion at
//! least once and, once checkpointed, never again; an http step sends the
//! same `Idempotency-Key` (`<run id>/<step key>`) on every attempt, including
//! the one after a restart, so a receiver can drop the duplicate. Loops
//! checkpoint per element: a loop resumes at the elements it had not
//! finished.
//!
//! # Step keys
//!
//! A top-level step's key is its id. A step inside a loop is
//! `<loop id>/<index, 8 digits>/<step id>` and the element itself
//! `<loop id>/<index>`, so a run's checkpoints list in execution order.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ractor::{Actor, ActorRef};
use serde_json::Value;
use tokio::sync::mpsc;

use crate::action::egress::EgressPolicy;
use crate::action::http;
use crate::model::{CodeSource, Integration, Step, StepOutputs};
use crate::sandbox::{Sandbox, SandboxConfig};
use crate::store::{RunRecord, RunStatus, RunTrigger, StepStatus, Store, StoreConfig, StoreError};
use crate::telemetry::{NoTelemetry, Telemetry};

mod context;
mod for_each;
pub mod journal;
pub mod replay;
pub mod rerun;
mod retry;
mod root;
mod sequence;
mod step;

pub use journal::{
    Journal, JournalError, JournalFuture, JournalWrite, Restored, StoreJournal, WriteKind,
};
pub use replay::{ReplayError, StepReplay, step_replay};
pub use rerun::{RerunError, create_rerun};
pub use retry::retry_delay;

pub use crate::credential::{Credential, CredentialKind, Credentials, Secret, StaticCredentials};

/// Everything an engine needs.
#[derive(Clone)]
pub struct EngineConfig {
    pub store: StoreConfig,
    pub sandbox: SandboxConfig,
    /// The largest payload a run may produce or take: a step's output, a
    /// response body, a run's input. Default 1 GiB.
    pub max_payload_bytes: u64,
    /// Where http steps' `credential`s come from.
    pub credentials: Arc<dyn Credentials>,
    /// Which addresses http steps may connect to [default: public ones
    /// only].
    pub egress: EgressPolicy,
    /// Who observes runs: their traces' context and measurements [default:
    /// nobody].
    pub telemetry: Arc<dyn Telemetry>,
}

impl EngineConfig {
    /// Defaults with the store in `data_dir` and no credentials.
    pub fn new(data_dir: impl AsRef<Path>) -> Self {
        EngineConfig {
            store: StoreConfig::new(data_dir.as_ref()),
            sandbox: SandboxConfig::default(),
            max_payload_bytes: 1 << 30,
            credentials: Arc::new(StaticCredentials::default()),
            egress: EgressPolicy::public_only(),
            telemetry: Arc::new(NoTelemetry),
        }
    }
}

impl std::fmt::Debug for EngineConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineConfig")
            .field("store", &self.store)
            .field("sandbox", &self.sandbox)
            .field("max_payload_bytes", &self.max_payload_bytes)
            .field("egress", &self.egress)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot start the sandbox: {0}")]
    Sandbox(crate::sandbox::StepError),
    #[error("cannot start the http client: {0}")]
    Http(http::HttpError),
    #[error("cannot start run actors: {0}")]
    Actor(String),
    #[error("the engine is shutting down")]
    ShuttingDown,
    #[error("run input is {actual} bytes, over the payload limit of {limit} bytes")]
    InputTooLarge { actual: u64, limit: u64 },
    #[error("stored definition of run {run_id} cannot be read: {reason}")]
    Definition { run_id: String, reason: String },
    #[error("this engine has no store: it only executes runs it is given")]
    NoStore,
}

/// What happens in a run, in order, for whoever watches it.
#[derive(Debug, Clone, PartialEq)]
pub enum RunEvent {
    /// An attempt of a step started (`attempt` counts from 1).
    StepStarted { step_key: String, attempt: u32 },
    /// A step finished for good: succeeded, failed after its last attempt,
    /// or was skipped by its `when`.
    StepFinished {
        step_key: String,
        status: StepStatus,
        attempt: u32,
        duration: Duration,
        error: Option<String>,
    },
    /// A step was already checkpointed by an earlier process and is not run.
    StepRestored { step_key: String },
    /// An attempt failed and will be tried again after `delay`.
    StepRetrying {
        step_key: String,
        attempt: u32,
        error: String,
        delay: Duration,
    },
    /// The run is over (always the last event of a run that ends).
    Finished(RunOutcome),
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub struct RunOutcome {
    pub status: RunStatus,
    pub output: Option<Value>,
    /// The failing step's error, prefixed with its key.
    pub error: Option<String>,
    /// Where this process's time for the run went.
    pub timings: RunTimings,
}

/// Time a run spent, by kind, summed over its steps (concurrent loop
/// elements add up): what is left of the wall-clock time is the engine's
/// own overhead (actors, rendering, serialising) and waiting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunTimings {
    /// Inside step attempts: JavaScript in the sandbox, HTTP requests.
    pub execution: Duration,
    /// Durable writes: the run's creation, checkpoints, its end, including
    /// checkpoints made while the next code step computed.
    pub store: Duration,
    /// What of `store` the run stood still for: writes it waited on before
    /// going on (docs/running.md, "What is durable when").
    pub store_wait: Duration,
}

/// A started run: its id and its events.
#[derive(Debug)]
pub struct RunHandle {
    pub tenant: String,
    pub run_id: String,
    events: mpsc::UnboundedReceiver<RunEvent>,
}

impl RunHandle {
    /// The next event, or `None` once the run's actors stopped (after
    /// [`RunEvent::Finished`], or without it when the engine shut down
    /// before the run ended: it stays unfinished and resumes next time).
    pub async fn next_event(&mut self) -> Option<RunEvent> {
        self.events.recv().await
    }

    /// Waits for the run to end. `None` when the engine stopped first.
    pub async fn wait(mut self) -> Option<RunOutcome> {
        while let Some(event) = self.next_event().await {
            if let RunEvent::Finished(outcome) = event {
                return Some(outcome);
            }
        }
        None
    }
}

/// What every actor of every run shares.
pub(crate) struct Shared {
    /// `None` on a stateless executor (a cluster's worker).
    pub(crate) store: Option<Arc<Store>>,
    pub(crate) sandbox: Sandbox,
    pub(crate) http: http::Client,
    pub(crate) credentials: Arc<dyn Credentials>,
    pub(crate) max_payload_bytes: u64,
    pub(crate) telemetry: Arc<dyn Telemetry>,
    /// Set by [`Engine::shutdown`]: sequences start no new step.
    pub(crate) draining: AtomicBool,
}

/// Runs integrations on this node. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    shared: Arc<Shared>,
    root: ActorRef<root::RootMsg>,
    running: context::Running,
    root_handle: Arc<Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field(
                "store",
                &self.shared.store.as_ref().map(|s| s.path().to_owned()),
            )
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// Opens the store, starts the sandbox and the root actor. Must be
    /// called inside a multi-threaded tokio runtime. Unfinished runs are not
    /// resumed until [`Engine::resume_unfinished`].
    pub async fn start(config: EngineConfig) -> Result<Engine, EngineError> {
        let store = Arc::new(Store::open(&config.store)?);
        Engine::with_store(config, Some(store)).await
    }

    /// An engine on a store that is already open (`config.store` is not
    /// used), or with no store at all: a stateless executor that only runs
    /// what [`Engine::execute`] gives it, checkpointing through each run's
    /// own journal.
    pub async fn with_store(
        config: EngineConfig,
        store: Option<Arc<Store>>,
    ) -> Result<Engine, EngineError> {
        let mut sandbox_config = config.sandbox.clone();
        let cap = usize::try_from(config.max_payload_bytes).unwrap_or(usize::MAX);
        sandbox_config.limits.output_bytes = sandbox_config.limits.output_bytes.min(cap);
        let sandbox = Sandbox::new(sandbox_config).map_err(EngineError::Sandbox)?;
        let http = http::Client::new(&config.egress).map_err(EngineError::Http)?;
        let shared = Arc::new(Shared {
            store,
            sandbox,
            http,
            credentials: config.credentials,
            max_payload_bytes: config.max_payload_bytes,
            telemetry: config.telemetry,
            draining: AtomicBool::new(false),
        });
        let running = Arc::new(Mutex::new(HashMap::new()));
        let (root, handle) = Actor::spawn(
            None,
            root::Root,
            root::RootArgs {
                shared: shared.clone(),
                running: running.clone(),
            },
        )
        .await
        .map_err(|e| EngineError::Actor(e.to_string()))?;
        Ok(Engine {
            shared,
            root,
            running,
            root_handle: Arc::new(Mutex::new(Some(handle))),
        })
    }

    /// What the engine's sandbox pool did so far and the processes it holds.
    pub fn sandbox_stats(&self) -> crate::sandbox::SandboxStats {
        self.shared.sandbox.stats()
    }

    /// The engine's store; `None` on a stateless executor.
    pub fn store(&self) -> Option<&Store> {
        self.shared.store.as_deref()
    }

    fn local_store(&self) -> Result<&Arc<Store>, EngineError> {
        self.shared.store.as_ref().ok_or(EngineError::NoStore)
    }

    /// Stores a new run of `integration` for `tenant` and starts it (the
    /// local `isoflow run`: its trigger is `cli`). Code steps must hold
    /// their source (see [`inline_code_files`]).
    pub async fn start_run(
        &self,
        tenant: &str,
        integration: &Integration,
        input: Value,
    ) -> Result<RunHandle, EngineError> {
        if self.shared.draining.load(Ordering::Acquire) {
            return Err(EngineError::ShuttingDown);
        }
        let mut run = RunRecord::new(tenant, integration.name.as_str(), integration.version.get())
            .started_by(RunTrigger::Cli);
        let definition =
            serde_json::to_value(integration).map_err(|e| EngineError::Definition {
                run_id: run.run_id.clone(),
                reason: e.to_string(),
            })?;
        let size = json_size(&input);
        if size > self.shared.max_payload_bytes {
            return Err(EngineError::InputTooLarge {
                actual: size,
                limit: self.shared.max_payload_bytes,
            });
        }
        let store = self.local_store()?.clone();
        let stored = run.clone();
        let input = Arc::new(input);
        let input2 = input.clone();
        let created = std::time::Instant::now();
        let journal = Arc::new(StoreJournal::new(store.clone(), tenant, &run.run_id));
        tokio::task::spawn_blocking(move || store.create_run(&stored, &definition, &input2))
            .await
            .map_err(|e| EngineError::Actor(e.to_string()))??;
        let store_time = created.elapsed();
        run.status = RunStatus::Running;
        self.launch(
            run,
            Arc::new(integration.clone()),
            input,
            journal,
            false,
            store_time,
        )
        .await
    }

    /// Runs a run whose state lives elsewhere (a worker given a run by its
    /// coordinator): `journal` takes its checkpoints and knows the steps it
    /// finished before; when `resumed`, those are not run again.
    pub async fn execute(
        &self,
        run: RunRecord,
        integration: Arc<Integration>,
        input: Arc<Value>,
        journal: Arc<dyn Journal>,
        resumed: bool,
    ) -> Result<RunHandle, EngineError> {
        if self.shared.draining.load(Ordering::Acquire) {
            return Err(EngineError::ShuttingDown);
        }
        let mut run = run;
        run.status = RunStatus::Running;
        self.launch(run, integration, input, journal, resumed, Duration::ZERO)
            .await
    }

    /// Starts every unfinished run in the store again, from its last
    /// checkpoint.
    pub async fn resume_unfinished(&self) -> Result<Vec<RunHandle>, EngineError> {
        let store = self.local_store()?.clone();
        let store2 = store.clone();
        let runs = tokio::task::spawn_blocking(move || store2.unfinished_runs())
            .await
            .map_err(|e| EngineError::Actor(e.to_string()))??;
        let mut handles = Vec::new();
        for mut run in runs {
            let key = (run.tenant.clone(), run.run_id.clone());
            if self
                .running
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains_key(&key)
            {
                continue;
            }
            let definition = store.run_definition(&run.tenant, &run.run_id)?;
            let integration = match definition.map(serde_json::from_value::<Integration>) {
                Some(Ok(integration)) => integration,
                // A run this engine cannot read (stored by a version that
                // wrote another format) ends failed; the others resume.
                unreadable => {
                    let reason = match unreadable {
                        Some(Err(e)) => e.to_string(),
                        _ => "it is missing".to_owned(),
                    };
                    run.status = RunStatus::Failed;
                    run.error = Some(format!(
                        "cannot resume: the stored definition cannot be read: {reason}"
                    ));
                    run.updated_at_ms = crate::store::now_ms();
                    tracing::error!(run_id = %run.run_id, "{}", run.error.as_deref().unwrap_or_default());
                    store.update_run(&run, None)?;
                    continue;
                }
            };
            let input = store
                .run_input(&run.tenant, &run.run_id)?
                .unwrap_or(Value::Null);
            run.status = RunStatus::Running;
            let journal = Arc::new(StoreJournal::new(store.clone(), &run.tenant, &run.run_id));
            handles.push(
                self.launch(
                    run,
                    Arc::new(integration),
                    Arc::new(input),
                    journal,
                    true,
                    Duration::ZERO,
                )
                .await?,
            );
        }
        Ok(handles)
    }

    async fn launch(
        &self,
        run: RunRecord,
        integration: Arc<Integration>,
        input: Arc<Value>,
        journal: Arc<dyn Journal>,
        resumed: bool,
        store_time: Duration,
    ) -> Result<RunHandle, EngineError> {
        let (events, receiver) = mpsc::unbounded_channel();
        let handle = RunHandle {
            tenant: run.tenant.clone(),
            run_id: run.run_id.clone(),
            events: receiver,
        };
        let (reply, started) = tokio::sync::oneshot::channel();
        self.root
            .send_message(root::RootMsg::Start {
                run,
                integration,
                input,
                events,
                journal,
                resumed,
                store_time,
                reply,
            })
            .map_err(|e| EngineError::Actor(e.to_string()))?;
        started
            .await
            .map_err(|e| EngineError::Actor(e.to_string()))?
            .map_err(EngineError::Actor)?;
        Ok(handle)
    }

    /// Cancels a running run: its current steps are stopped and it ends
    /// `cancelled`. False when no such run is running here.
    pub fn cancel(&self, tenant: &str, run_id: &str) -> bool {
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        match running.get(&(tenant.to_owned(), run_id.to_owned())) {
            Some((run, _)) => run.send_message(sequence::SeqMsg::Cancel).is_ok(),
            None => false,
        }
    }

    /// Stops a run at once without ending it: nothing more is written to
    /// its journal, its events stop. For a worker whose run was taken back
    /// by its coordinator; the run goes on elsewhere. False when no such run
    /// is running here.
    pub fn abort(&self, tenant: &str, run_id: &str) -> bool {
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let Some((actor, ctx)) = running.get(&(tenant.to_owned(), run_id.to_owned())) else {
            return false;
        };
        ctx.aborted.store(true, Ordering::Release);
        kill_tree(&actor.get_cell());
        true
    }

    /// Ids of the runs in progress here.
    pub fn running(&self) -> Vec<(String, String)> {
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        running.keys().cloned().collect()
    }

    /// Graceful shutdown: no new run or step starts; steps in flight may
    /// finish and are checkpointed, for up to `grace`; then whatever is
    /// still running is stopped. Unfinished runs stay in the store and
    /// resume at the next start.
    pub async fn shutdown(&self, grace: Duration) {
        self.shared.draining.store(true, Ordering::Release);
        let deadline = tokio::time::Instant::now() + grace;
        for (run, _) in self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
        {
            let _ = run.send_message(sequence::SeqMsg::Drain);
        }
        while !self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.root.stop(Some("engine shut down".into()));
        let handle = self
            .root_handle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(handle) = handle {
            let _ = handle.await;
        }
    }
}

/// Kills an actor and everything under it.
fn kill_tree(cell: &ractor::ActorCell) {
    for child in cell.get_children() {
        kill_tree(&child);
    }
    cell.kill();
}

/// The size of a value as JSON text, without writing the text anywhere.
pub(crate) fn json_size(value: &Value) -> u64 {
    struct Count(u64);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len() as u64;
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing a JSON value to a counter cannot fail.
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

/// Replaces each code step's `file` by the file's text, read relative to
/// `base_dir` (the definition's folder), so that the stored definition is
/// complete on its own.
///
/// # Errors
/// One sentence naming the step and the file that cannot be read.
pub fn inline_code_files(integration: &mut Integration, base_dir: &Path) -> Result<(), String> {
    inline_code(integration, |file| {
        let path = base_dir.join(file);
        std::fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))
    })
}

/// Replaces each code step's `file` by what `read` returns for it (the
/// API's deploy call takes the files beside the definition).
///
/// # Errors
/// `step "id": ` and `read`'s sentence.
pub fn inline_code(
    integration: &mut Integration,
    mut read: impl FnMut(&Path) -> Result<String, String>,
) -> Result<(), String> {
    fn visit(
        steps: &mut [Step],
        read: &mut dyn FnMut(&Path) -> Result<String, String>,
    ) -> Result<(), String> {
        for step in steps {
            match step {
                Step::Code(code) => {
                    if let CodeSource::File(file) = &code.code {
                        let text =
                            read(file).map_err(|e| format!("step {:?}: {e}", code.id.as_str()))?;
                        code.code = CodeSource::Source(text);
                    }
                }
                Step::Loop(l) => visit(&mut l.steps, read)?,
                Step::Http(_) => {}
            }
        }
        Ok(())
    }
    visit(&mut integration.steps, &mut read)
}

/// Step outputs of one sequence, shared with loops without copying.
#[derive(Debug, Default, Clone)]
pub(crate) struct Outputs(pub(crate) HashMap<String, Arc<Value>>);

impl StepOutputs for Outputs {
    fn output(&self, id: &str) -> Option<&Value> {
        self.0.get(id).map(|v| &**v)
    }
}
