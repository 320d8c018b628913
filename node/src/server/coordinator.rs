//! The coordinator: owns the run store, reaches the workers, and makes
//! every checkpoint a worker reports durable before acknowledging it.
//!
//! Which run goes to which worker, and when, is decided by the
//! [`Scheduler`] (`scheduler.rs`, pure: no I/O), which this holds under its
//! lock with each worker's link (a stream's channel, or this process's own
//! engine). This side performs what the scheduler decides: an assignment
//! becomes an Assign message or a local run, a checkpoint the scheduler
//! admits is written to the store, and watchers are told what happened.
//!
//! # Assignments
//!
//! A run is given to one worker at a time under an assignment id. A
//! checkpoint is applied only while its assignment is current, and only
//! once (a worker numbers its checkpoints; a repeated number is
//! acknowledged again without a write). When a worker goes (its stream
//! ends, it falls silent for longer than the heartbeat time-out, or its
//! etcd lease expires) its assignments are revoked and their runs queued
//! again at the front of their tenant's queue: the next worker resumes
//! them from their last checkpoint. A revoked assignment whose checkpoint
//! is being written is queued once that write is over, so two workers
//! never write one run at once.
//!
//! # Fairness
//!
//! Tenants with waiting runs are served in turn, each tenant's runs in the
//! order they were started; a tenant at `cluster.tenant_runs_in_flight`
//! waits while others go. Each run goes to the worker with the most free
//! slots, and no worker takes more than its capacity. The rules in full:
//! `scheduler.rs`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use isoflow_engine::credential::vault::Vault;
use isoflow_engine::credential::{Credential, Secret};
use isoflow_engine::model::{CredentialName, Integration, Step};
use isoflow_engine::run::{
    Engine, Journal, JournalError, JournalFuture, JournalWrite, StoreJournal, WriteKind,
    create_rerun,
};
use isoflow_engine::store::{RunRecord, RunStatus, RunTrigger, StepRecord, Store};
use isoflow_proto::cluster::v1 as wire;
use isoflow_proto::v1;
use serde_json::Value;
use tokio::sync::{broadcast, mpsc};

use super::convert;
use super::scheduler::{Admitted, Revoked, Scheduler, Written};
use super::tenants::Tenants;

pub use super::scheduler::RunKey;

/// The worker id of an `all` node's own engine.
const LOCAL_WORKER: &str = "local";

/// Something that happened to a run, for whoever watches it.
#[derive(Debug, Clone)]
pub struct Update {
    pub tenant: String,
    pub run_id: String,
    pub kind: UpdateKind,
}

#[derive(Debug, Clone)]
pub enum UpdateKind {
    /// The run was stored and queued (a start, a rerun, a restart's).
    Queued,
    Step(v1::Step),
    Log(v1::LogLine),
    /// The run ended; what it ended with is in the store.
    Finished,
}

/// The cluster as its leader sees it.
#[derive(Debug, Clone)]
pub struct ClusterView {
    /// This coordinator's id.
    pub leader: String,
    /// Runs waiting for a slot.
    pub queued: usize,
    pub workers: Vec<WorkerView>,
}

/// One worker (or an `all` node's own engine) and its slots.
#[derive(Debug, Clone)]
pub struct WorkerView {
    pub name: String,
    pub capacity: u32,
    pub in_flight: usize,
    /// Connected over the network (false: this process's own engine).
    pub remote: bool,
}

/// What the coordinator tells a connected worker's stream.
#[derive(Debug)]
pub enum Outbound {
    /// Send this run (its definition, input and checkpoints) under this
    /// assignment.
    Assign(u64, RunKey),
    /// Boxed: the largest kind (an Assign, with its run) is several times
    /// the other variants, and heartbeats need not carry its size.
    Message(Box<wire::coordinator_message::Kind>),
    /// The worker's slot is gone: end its stream, so that it connects again.
    Close,
}

/// How the coordinator reaches a worker.
enum Link {
    Remote(mpsc::UnboundedSender<Outbound>),
    /// This process's own engine (role `all`).
    Local(Engine),
}

struct WorkerLink {
    /// Which connection of this worker: a reconnection replaces the link
    /// (and the scheduler's slot).
    connection: u64,
    link: Link,
}

/// What the lock guards: the scheduler and the links its workers are
/// reached by, changed together so that every worker the scheduler knows
/// has a link.
struct State {
    scheduler: Scheduler,
    links: HashMap<String, WorkerLink>,
}

/// Why a checkpoint was not applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("assignment {0} is no longer current: the run was given to another worker")]
    Stale(u64),
    #[error("cannot store the checkpoint: {0}")]
    Store(#[from] JournalError),
}

pub struct Coordinator {
    pub id: String,
    pub store: Arc<Store>,
    /// Tenants created through the admin API: issued tokens, quotas,
    /// disabled or not.
    pub tenants: Arc<Tenants>,
    /// The tenants' credentials; `None` when no vault key is configured.
    pub vault: Option<Arc<Vault>>,
    pub max_payload_bytes: u64,
    state: Mutex<State>,
    /// Held while a run with a request key is looked up and created, so
    /// that one key starts one run.
    starting: Arc<Mutex<()>>,
    next_id: AtomicU64,
    updates: broadcast::Sender<Arc<Update>>,
    /// The stored trace context (traceparent, caller span) of each run
    /// assigned to a remote worker, by assignment: a worker's checkpoint
    /// carries the run's summary without it, and the stored record keeps
    /// it.
    traces: Mutex<HashMap<u64, StoredTrace>>,
}

/// A run's stored trace context: its `traceparent` and the span that
/// started it.
type StoredTrace = (Option<String>, Option<String>);

impl std::fmt::Debug for Coordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coordinator")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Locks `m`, also after a thread panicked holding it: the node's shared
/// state stays usable (the console's too).
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Coordinator {
    /// A coordinator over `store`, with every unfinished run in it queued;
    /// a tenant may hold `tenant_runs_in_flight` assignments at once (0:
    /// no limit). `vault` holds the tenants' credentials.
    pub fn new(
        id: String,
        store: Arc<Store>,
        vault: Option<Arc<Vault>>,
        max_payload_bytes: u64,
        tenant_runs_in_flight: u32,
    ) -> anyhow::Result<Arc<Self>> {
        let (updates, _) = broadcast::channel(4096);
        let mut scheduler = Scheduler::new(tenant_runs_in_flight);
        let tenants = Tenants::load(store.clone(), max_payload_bytes)?;
        for record in tenants.records() {
            scheduler.set_tenant_limit(&record.name, record.quotas.runs_in_flight);
        }
        for run in store.unfinished_runs()? {
            scheduler.enqueue((run.tenant, run.run_id));
        }
        if scheduler.queued() > 0 {
            tracing::info!(
                runs = scheduler.queued(),
                "unfinished runs queued to resume"
            );
        }
        Ok(Arc::new(Coordinator {
            id,
            store,
            tenants,
            vault,
            max_payload_bytes,
            state: Mutex::new(State {
                scheduler,
                links: HashMap::new(),
            }),
            starting: Arc::new(Mutex::new(())),
            next_id: AtomicU64::new(1),
            updates,
            traces: Mutex::new(HashMap::new()),
        }))
    }

    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Update>> {
        self.updates.subscribe()
    }

    /// Waits until the run has ended (or `deadline` passes): the run as
    /// stored then. `updates` must have been subscribed before the run
    /// could end. `None`: the deadline passed or updates stopped (the node
    /// is stopping).
    pub async fn wait_for_end(
        &self,
        mut updates: broadcast::Receiver<Arc<Update>>,
        tenant: &str,
        run_id: &str,
        deadline: Option<tokio::time::Instant>,
    ) -> anyhow::Result<Option<RunRecord>> {
        use broadcast::error::RecvError;
        let finished = || -> anyhow::Result<Option<RunRecord>> {
            Ok(self
                .store
                .run(tenant, run_id)?
                .filter(|run| run.status.is_finished()))
        };
        if let Some(run) = finished()? {
            return Ok(Some(run));
        }
        loop {
            let next = match deadline {
                Some(deadline) => match tokio::time::timeout_at(deadline, updates.recv()).await {
                    Ok(next) => next,
                    Err(_) => return Ok(None),
                },
                None => updates.recv().await,
            };
            match next {
                Ok(update)
                    if update.run_id == run_id
                        && update.tenant == tenant
                        && matches!(update.kind, UpdateKind::Finished) =>
                {
                    return finished();
                }
                Ok(_) => {}
                // Missed updates: the store says whether it ended.
                Err(RecvError::Lagged(_)) => {
                    if let Some(run) = finished()? {
                        return Ok(Some(run));
                    }
                }
                Err(RecvError::Closed) => return Ok(None),
            }
        }
    }

    fn publish(&self, tenant: &str, run_id: &str, kind: UpdateKind) {
        let _ = self.updates.send(Arc::new(Update {
            tenant: tenant.to_owned(),
            run_id: run_id.to_owned(),
            kind,
        }));
    }

    /// Stores a run of the tenant's integration (its latest version, or
    /// `version`) with `input`, recorded as started by `trigger`, and
    /// queues it. With a request `(scope, key)` a key starts one run: asked
    /// again, it returns that run, not started again (`false`). `None`: no
    /// such integration.
    pub async fn start_run(
        self: &Arc<Self>,
        tenant: &str,
        integration: &str,
        version: Option<u32>,
        input: Value,
        request: Option<(String, String)>,
        trigger: RunTrigger,
    ) -> anyhow::Result<Option<(RunRecord, bool)>> {
        let store = self.store.clone();
        let starting = self.starting.clone();
        let (tenant, name) = (tenant.to_owned(), integration.to_owned());
        // The run's trace: under the span it is started in (a webhook's or
        // the API's, which continue their caller's), chosen once.
        let trace = crate::telemetry::new_run_context(&tracing::Span::current());
        let started = tokio::task::spawn_blocking(move || {
            let _one_at_a_time = request.as_ref().map(|_| lock(&starting));
            // A key kept with no run (its run was deleted by retention)
            // starts a new one.
            if let Some((scope, key)) = &request
                && let Some(run_id) = store.requested_run(&tenant, scope, key)?
                && !run_id.is_empty()
                && let Some(run) = store.run(&tenant, &run_id)?
            {
                return Ok(Some((run, false)));
            }
            let Some(integration) = store.integration(&tenant, &name, version)? else {
                return Ok(None);
            };
            let mut run =
                RunRecord::new(&tenant, &integration.name, integration.version).started_by(trigger);
            if let Some((traceparent, caller)) = trace {
                run.traceparent = Some(traceparent);
                run.trace_caller = caller;
            }
            match &request {
                Some((scope, key)) => {
                    store.create_requested_run(&run, &integration.definition, &input, scope, key)?
                }
                None => store.create_run(&run, &integration.definition, &input)?,
            }
            Ok::<_, anyhow::Error>(Some((run, true)))
        })
        .await??;
        if let Some((run, true)) = &started {
            crate::telemetry::metrics::get().run_started(&run.tenant, &run.integration);
            self.enqueue((run.tenant.clone(), run.run_id.clone()));
        }
        Ok(started)
    }

    /// Gives `tenant` its own limit of runs in flight (`None`: the
    /// node's default), and dispatches what it now allows.
    pub fn set_tenant_runs_in_flight(self: &Arc<Self>, tenant: &str, limit: Option<u32>) {
        lock(&self.state).scheduler.set_tenant_limit(tenant, limit);
        self.dispatch();
    }

    /// Stores a rerun of the tenant's failed run `run_id` (a new run that
    /// starts at the step the old one failed in; see the engine's
    /// `run::rerun`) and queues it. Why it cannot is a [`RerunError`] in
    /// the error's chain.
    /// `version`: another version of the run's integration to run from the
    /// failed step on (a fix).
    pub async fn rerun(
        self: &Arc<Self>,
        tenant: &str,
        run_id: &str,
        version: Option<u32>,
    ) -> anyhow::Result<RunRecord> {
        let store = self.store.clone();
        let (tenant, run_id) = (tenant.to_owned(), run_id.to_owned());
        let run =
            tokio::task::spawn_blocking(move || create_rerun(&store, &tenant, &run_id, version))
                .await??;
        tracing::info!(
            tenant = %run.tenant,
            run_id = %run.run_id,
            rerun_of = run.rerun_of.as_deref().unwrap_or_default(),
            from_step = run.from_step.as_deref().unwrap_or_default(),
            version = run.version,
            from_version = run.from_version.unwrap_or_default(),
            "rerun queued"
        );
        crate::telemetry::metrics::get().run_started(&run.tenant, &run.integration);
        self.enqueue((run.tenant.clone(), run.run_id.clone()));
        Ok(run)
    }

    /// Queues a run that was just stored.
    pub fn enqueue(self: &Arc<Self>, key: RunKey) {
        if lock(&self.state).scheduler.enqueue(key.clone()) {
            self.publish(&key.0, &key.1, UpdateKind::Queued);
            self.dispatch();
        }
    }

    /// What a caller is told of a run's status: a run stored as pending
    /// that a worker already has is running (its first step is in flight;
    /// the store says so with its first checkpoint).
    pub fn shown_status(&self, run: &mut RunRecord) {
        if run.status == RunStatus::Pending
            && lock(&self.state)
                .scheduler
                .assignment_of(&(run.tenant.clone(), run.run_id.clone()))
                .is_some()
        {
            run.status = RunStatus::Running;
        }
    }

    /// Who leads, who works and how much waits: the console's cluster
    /// page.
    pub fn cluster_view(&self) -> ClusterView {
        let state = lock(&self.state);
        let workers = state
            .scheduler
            .slots()
            .into_iter()
            .map(|(name, capacity, in_flight)| WorkerView {
                remote: matches!(
                    state.links.get(&name).map(|l| &l.link),
                    Some(Link::Remote(_))
                ),
                name: if name == LOCAL_WORKER {
                    format!("{} (this process)", self.id)
                } else {
                    name
                },
                capacity,
                in_flight,
            })
            .collect();
        ClusterView {
            leader: self.id.clone(),
            queued: state.scheduler.queued(),
            workers,
        }
    }

    /// A worker connected (again): it replaces any earlier connection of the
    /// same worker, whose runs are queued again.
    pub fn add_worker(
        self: &Arc<Self>,
        worker: &str,
        capacity: u32,
        link: mpsc::UnboundedSender<Outbound>,
    ) -> u64 {
        self.add_slot(worker, capacity, Link::Remote(link))
    }

    /// This process's own engine as a worker (role `all`).
    pub fn add_local(self: &Arc<Self>, capacity: u32, engine: Engine) {
        self.add_slot(LOCAL_WORKER, capacity, Link::Local(engine));
    }

    fn add_slot(self: &Arc<Self>, worker: &str, capacity: u32, link: Link) -> u64 {
        let connection = self.next_id();
        let (old, revoked) = {
            let mut state = lock(&self.state);
            let old = state
                .links
                .insert(worker.to_owned(), WorkerLink { connection, link });
            (old, state.scheduler.add_worker(worker, capacity))
        };
        if let Some(WorkerLink {
            link: Link::Remote(link),
            ..
        }) = old
        {
            let _ = link.send(Outbound::Close);
        }
        self.revoked(&revoked, "the worker connected again");
        tracing::info!(worker, capacity, "worker joined");
        self.dispatch();
        connection
    }

    /// A worker's connection ended (or its lease expired: `connection`
    /// `None` removes whichever connection it has).
    pub fn remove_worker(self: &Arc<Self>, worker: &str, connection: Option<u64>, why: &str) {
        let removed = {
            let mut state = lock(&self.state);
            match state.links.get(worker) {
                Some(link) if connection.is_none_or(|c| c == link.connection) => {
                    let link = state.links.remove(worker);
                    let revoked = state.scheduler.remove_worker(worker).unwrap_or_default();
                    link.map(|link| (link, revoked))
                }
                _ => None,
            }
        };
        if let Some((link, revoked)) = removed {
            tracing::warn!(worker, runs = revoked.len(), "worker left: {why}");
            if let Link::Remote(link) = &link.link {
                let _ = link.send(Outbound::Close);
            }
            self.revoked(&revoked, why);
            self.dispatch();
        }
    }

    /// Gives queued runs to workers with free slots, as the scheduler
    /// decides: an Assign to a remote worker's stream, or a run started on
    /// this process's own engine.
    pub fn dispatch(self: &Arc<Self>) {
        let mut local = Vec::new();
        {
            let mut guard = lock(&self.state);
            let state = &mut *guard;
            for assigned in state.scheduler.dispatch(|| self.next_id()) {
                let (id, key, worker) = (assigned.id, assigned.key, assigned.worker);
                tracing::info!(run_id = %key.1, tenant = %key.0, %worker, assignment = id, "run assigned");
                match state.links.get(&worker).map(|w| &w.link) {
                    Some(Link::Remote(link)) => {
                        let _ = link.send(Outbound::Assign(id, key));
                    }
                    Some(Link::Local(engine)) => local.push((id, key, engine.clone())),
                    None => debug_assert!(false, "worker {worker} has a slot but no link"),
                }
            }
        }
        for (id, key, engine) in local {
            let coordinator = self.clone();
            tokio::spawn(async move {
                if let Err(e) = coordinator.run_locally(id, &key, &engine).await {
                    tracing::error!(run_id = %key.1, "cannot start the run: {e:#}");
                    coordinator.fail_assignment(id, &key, &format!("cannot start the run: {e:#}"));
                }
            });
        }
    }

    /// What an engine needs to start a run: its record, definition and
    /// input.
    pub fn load_run(&self, key: &RunKey) -> anyhow::Result<LoadedRun> {
        let (tenant, run_id) = key;
        let store = &self.store;
        let run = store
            .run(tenant, run_id)?
            .ok_or_else(|| anyhow::anyhow!("run {run_id} is not in the store"))?;
        let definition = store
            .run_definition(tenant, run_id)?
            .ok_or_else(|| anyhow::anyhow!("run {run_id} has no stored definition"))?;
        let input = store.run_input(tenant, run_id)?.unwrap_or(Value::Null);
        Ok(LoadedRun {
            run,
            definition,
            input,
        })
    }

    /// The steps a run finished before, with their outputs: what a remote
    /// worker is sent with the run (this process's own engine reads them
    /// from the store as it needs them).
    pub fn restored_steps(&self, key: &RunKey) -> anyhow::Result<Vec<(StepRecord, Option<Value>)>> {
        let (tenant, run_id) = key;
        let mut restored = Vec::new();
        for record in self.store.steps(tenant, run_id)? {
            let output = match record.output_bytes {
                Some(_) => self.store.step_output(tenant, run_id, &record.step_key)?,
                None => None,
            };
            restored.push((record, output));
        }
        Ok(restored)
    }

    async fn run_locally(
        self: &Arc<Self>,
        id: u64,
        key: &RunKey,
        engine: &Engine,
    ) -> anyhow::Result<()> {
        let this = self.clone();
        let key2 = key.clone();
        let loaded = tokio::task::spawn_blocking(move || this.load_run(&key2)).await??;
        let integration = serde_json::from_value(loaded.definition)
            .map_err(|e| anyhow::anyhow!("the stored definition cannot be read: {e}"))?;
        // A rerun starts with checkpoints copied from the run it reruns.
        let resumed = loaded.run.status != RunStatus::Pending || loaded.run.rerun_of.is_some();
        let journal = Arc::new(LocalJournal {
            coordinator: self.clone(),
            assignment: id,
            seq: AtomicU64::new(0),
            store: StoreJournal::new(self.store.clone(), &key.0, &key.1),
        });
        let mut run = loaded.run;
        run.status = RunStatus::Running;
        let mut handle = engine
            .execute(
                run,
                Arc::new(integration),
                Arc::new(loaded.input),
                journal,
                resumed,
            )
            .await?;
        // The run reports through its journal; its events are not needed
        // here, but their channel is drained.
        tokio::spawn(async move { while handle.next_event().await.is_some() {} });
        Ok(())
    }

    /// Ends a run that cannot be started at all (its definition is
    /// unreadable): failed, with the reason.
    fn fail_assignment(self: &Arc<Self>, id: u64, key: &RunKey, error: &str) {
        let Ok(Some(run)) = self.store.run(&key.0, &key.1) else {
            return;
        };
        if let Err(e) = self.end_unstarted(run, RunStatus::Failed, error) {
            tracing::error!(run_id = %key.1, "cannot record the failure: {e}");
            return;
        }
        lock(&self.state).scheduler.finish(id);
        self.dispatch();
    }

    /// Ends a run no engine is running (it never started, or could not):
    /// stored with `status` and `error`, then watchers are told.
    fn end_unstarted(
        &self,
        mut run: RunRecord,
        status: RunStatus,
        error: &str,
    ) -> anyhow::Result<RunRecord> {
        run.status = status;
        run.error = Some(error.to_owned());
        run.updated_at_ms = isoflow_engine::store::now_ms();
        self.store.update_run(&run, None)?;
        ended(&run);
        self.publish(&run.tenant, &run.run_id, UpdateKind::Finished);
        Ok(run)
    }

    /// Applies checkpoint `seq` of assignment `id`, sent by `worker`:
    /// stores it (once) and tells watchers. Returns once it is durable.
    pub async fn apply(
        self: &Arc<Self>,
        worker: &str,
        id: u64,
        seq: u64,
        mut write: JournalWrite,
    ) -> Result<(), ApplyError> {
        let admitted = lock(&self.state).scheduler.begin_write(worker, id, seq);
        match admitted {
            Err(_) => return Err(ApplyError::Stale(id)),
            // Sent twice: it was stored the first time.
            Ok(Admitted::Repeat) => return Ok(()),
            Ok(Admitted::Write((tenant, run_id))) => {
                // A worker writes only to the run it was given.
                write.run.tenant = tenant;
                write.run.run_id = run_id;
                // Which node ran each step is the coordinator's to say.
                let node = if worker == LOCAL_WORKER {
                    &self.id
                } else {
                    worker
                };
                for (record, _) in &mut write.steps {
                    record.node = Some(node.to_owned());
                }
                if let Some((traceparent, caller)) = lock(&self.traces).get(&id) {
                    write.run.traceparent.clone_from(traceparent);
                    write.run.trace_caller.clone_from(caller);
                }
            }
        }
        let store = self.store.clone();
        let write = Arc::new(write);
        let stored = write.clone();
        let written = tokio::task::spawn_blocking(move || {
            isoflow_engine::run::journal::apply(&store, &stored)
        })
        .await
        .map_err(|e| JournalError::Unavailable(e.to_string()))
        .and_then(|r| r);
        let finished = matches!(write.kind, WriteKind::Finish { .. }) && written.is_ok();
        let outcome = match (&written, finished) {
            (Err(_), _) => Written::Failed,
            (Ok(()), true) => Written::Finished,
            (Ok(()), false) => Written::Stored,
        };
        let requeued = lock(&self.state).scheduler.end_write(id, seq, outcome);
        if let Some((_, run_id)) = &requeued {
            tracing::info!(%run_id, assignment = id, "run queued again: its last checkpoint write is over");
            self.dispatch();
        }
        written?;
        let (tenant, run_id) = (&write.run.tenant, &write.run.run_id);
        for (record, _) in &write.steps {
            self.publish(tenant, run_id, UpdateKind::Step(convert::step(record)));
        }
        for line in &write.logs {
            self.publish(tenant, run_id, UpdateKind::Log(convert::log(line)));
        }
        if finished {
            lock(&self.traces).remove(&id);
            ended(&write.run);
            self.publish(tenant, run_id, UpdateKind::Finished);
            self.dispatch();
        }
        Ok(())
    }

    /// The secret of the tenant's credential `name` (a webhook's key, an
    /// alert's signing key), read off the async threads. `None`: the tenant
    /// has no such credential, or this node has no vault.
    pub async fn tenant_secret(&self, tenant: &str, name: &str) -> anyhow::Result<Option<Secret>> {
        let Some(vault) = self.vault.clone() else {
            tracing::warn!(
                tenant,
                credential = name,
                "a credential was wanted, but this node has no vault"
            );
            return Ok(None);
        };
        let (tenant, name) = (tenant.to_owned(), name.to_owned());
        let credential = tokio::task::spawn_blocking(move || vault.get(&tenant, &name)).await??;
        Ok(credential.map(|c| c.kind.secret().clone()))
    }

    /// The credential `name` for a step of the run under assignment `id`,
    /// asked for by `worker`: given only while that assignment is current
    /// and `worker`'s, only the run's tenant's, and only if an http step of
    /// the run's definition names it (a worker cannot ask for the rest of
    /// the tenant's credentials).
    pub async fn credential_for(
        &self,
        worker: &str,
        id: u64,
        name: &str,
        rejected_sha256: Option<&str>,
    ) -> Result<Option<Credential>, String> {
        if CredentialName::new(name.to_owned()).is_err() {
            return Err("that is not a credential name".to_owned());
        }
        let (tenant, run_id) = match lock(&self.state).scheduler.current_run(worker, id) {
            Some(key) => key.clone(),
            None => return Err(format!("assignment {id} is not one this worker holds")),
        };
        let Some(vault) = self.vault.clone() else {
            return Ok(None);
        };
        let store = self.store.clone();
        let wanted = name.to_owned();
        let (tenant_, run_id_) = (tenant.clone(), run_id.clone());
        tokio::task::spawn_blocking(move || {
            let definition = store
                .run_definition(&tenant_, &run_id_)
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("run {run_id_} has no definition"))?;
            let integration: Integration = serde_json::from_value(definition)
                .map_err(|e| format!("the run's definition cannot be read: {e}"))?;
            if names_credential(&integration.steps, &wanted) {
                Ok(())
            } else {
                Err(format!(
                    "no http step of the run's definition sends credential {wanted:?}"
                ))
            }
        })
        .await
        .map_err(|e| e.to_string())??;
        // The coordinator renews OAuth2 tokens: one renewal per
        // credential, however many workers ask at once.
        vault
            .access(&tenant, name, rejected_sha256)
            .await
            .map_err(|e| e.to_string())
    }

    /// Cancels a run: a queued one ends at once, an assigned one is stopped
    /// by its worker and ends `cancelled` through its journal. Returns the
    /// run as it is now.
    pub fn cancel(self: &Arc<Self>, key: &RunKey) -> anyhow::Result<CancelOutcome> {
        let Some(run) = self.store.run(&key.0, &key.1)? else {
            return Ok(CancelOutcome::NotFound);
        };
        if run.status.is_finished() {
            return Ok(CancelOutcome::AlreadyEnded(run));
        }
        let mut state = lock(&self.state);
        if state.scheduler.cancel_queued(key) {
            drop(state);
            let run =
                self.end_unstarted(run, RunStatus::Cancelled, "cancelled before it started")?;
            return Ok(CancelOutcome::Cancelling(run));
        }
        let assigned = state.scheduler.assignment_of(key);
        match assigned.and_then(|(id, worker)| Some((id, &state.links.get(worker)?.link))) {
            Some((id, Link::Remote(link))) => {
                let _ = link.send(Outbound::Message(Box::new(
                    wire::coordinator_message::Kind::Cancel(wire::CancelRun { assignment_id: id }),
                )));
            }
            Some((_, Link::Local(engine))) => {
                engine.cancel(&key.0, &key.1);
            }
            None => {}
        }
        Ok(CancelOutcome::Cancelling(run))
    }

    /// Assignment `id` of `run` goes to a remote worker: its checkpoints
    /// keep the run's stored trace context.
    pub fn assigned_trace(&self, id: u64, run: &RunRecord) {
        if run.traceparent.is_some() || run.trace_caller.is_some() {
            lock(&self.traces).insert(id, (run.traceparent.clone(), run.trace_caller.clone()));
        }
    }

    /// Sets the gauges of the scheduler's state (read when scraped).
    pub fn observe_gauges(&self) {
        let state = lock(&self.state);
        let metrics = crate::telemetry::metrics::get();
        metrics
            .queue_depth
            .set(i64::try_from(state.scheduler.queued()).unwrap_or(i64::MAX));
        let remote = state
            .links
            .values()
            .filter(|w| matches!(w.link, Link::Remote(_)))
            .count();
        metrics
            .workers_connected
            .set(i64::try_from(remote).unwrap_or(i64::MAX));
    }

    fn revoked(&self, revoked: &[Revoked], why: &str) {
        log_revoked(revoked, why);
        crate::telemetry::metrics::get()
            .assignments_revoked
            .inc_by(revoked.len() as u64);
        let mut traces = lock(&self.traces);
        for r in revoked {
            traces.remove(&r.id);
        }
    }

    /// `worker` gave a run back unfinished (it is shutting down).
    pub fn released(self: &Arc<Self>, worker: &str, id: u64) {
        let revoked = lock(&self.state).scheduler.release(worker, id);
        self.revoked(revoked.as_slice(), "the worker gave it back");
        self.dispatch();
    }
}

/// Whether an http step among `steps` (loops' included) names credential
/// `name`.
pub fn names_credential(steps: &[Step], name: &str) -> bool {
    steps.iter().any(|step| match step {
        Step::Http(http) => http.credential.as_ref().is_some_and(|c| c.as_str() == name),
        Step::Loop(l) => names_credential(&l.steps, name),
        Step::Code(_) => false,
    })
}

/// A run's end, for metrics and its trace's `run` span.
fn ended(run: &RunRecord) {
    crate::telemetry::metrics::get().run_finished(
        &run.tenant,
        &run.integration,
        crate::telemetry::status_name(run.status),
    );
    crate::telemetry::finished_run(run);
}

fn log_revoked(revoked: &[Revoked], why: &str) {
    for r in revoked {
        tracing::info!(
            run_id = %r.key.1,
            assignment = r.id,
            requeued = r.requeued,
            "run taken back: {why}"
        );
    }
}

pub enum CancelOutcome {
    NotFound,
    AlreadyEnded(RunRecord),
    Cancelling(RunRecord),
}

/// A run as it is handed to a worker.
#[derive(Debug)]
pub struct LoadedRun {
    pub run: RunRecord,
    pub definition: Value,
    pub input: Value,
}

/// The journal of a run this process's own engine runs: checkpoints go
/// through [`Coordinator::apply`] like a remote worker's.
struct LocalJournal {
    coordinator: Arc<Coordinator>,
    assignment: u64,
    seq: AtomicU64,
    store: StoreJournal,
}

impl Journal for LocalJournal {
    fn restored(
        &self,
        step_key: &str,
    ) -> Result<Option<isoflow_engine::run::Restored>, JournalError> {
        self.store.restored(step_key)
    }

    fn write(&self, write: JournalWrite) -> JournalFuture {
        let coordinator = self.coordinator.clone();
        let id = self.assignment;
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        Box::pin(async move {
            coordinator
                .apply(LOCAL_WORKER, id, seq, write)
                .await
                .map_err(|e| match e {
                    ApplyError::Store(e) => e,
                    stale @ ApplyError::Stale(_) => JournalError::Unavailable(stale.to_string()),
                })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use isoflow_engine::store::{StepStatus, StoreConfig};

    fn assigned(link: &mut mpsc::UnboundedReceiver<Outbound>) -> Vec<(u64, String)> {
        let mut out = Vec::new();
        while let Ok(message) = link.try_recv() {
            if let Outbound::Assign(id, (_, run_id)) = message {
                out.push((id, run_id));
            }
        }
        out
    }

    fn checkpoint(run: &RunRecord, step: &str) -> JournalWrite {
        JournalWrite {
            run: run.clone(),
            steps: vec![(
                StepRecord {
                    step_key: step.to_owned(),
                    status: StepStatus::Succeeded,
                    attempts: 1,
                    started_at_ms: 1,
                    finished_at_ms: 2,
                    output_bytes: None,
                    error: None,
                    node: None,
                },
                Some(Arc::new(serde_json::json!({ "step": step }))),
            )],
            logs: Vec::new(),
            kind: WriteKind::Checkpoint,
        }
    }

    #[tokio::test]
    async fn runs_go_to_free_slots_in_order_and_only_their_worker_writes() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Arc::new(Store::open(&StoreConfig::new(dir.path())).expect("store"));
        let coordinator =
            Coordinator::new("c".into(), store.clone(), None, 1 << 20, 0).expect("new");
        let mut runs = Vec::new();
        for _ in 0..5 {
            let run = RunRecord::new("acme", "held", 1);
            store
                .create_run(&run, &serde_json::json!({}), &serde_json::Value::Null)
                .expect("stored");
            coordinator.enqueue(("acme".into(), run.run_id.clone()));
            runs.push(run);
        }
        let (a_tx, mut a) = mpsc::unbounded_channel();
        let (b_tx, mut b) = mpsc::unbounded_channel();
        let a_connection = coordinator.add_worker("a", 2, a_tx);
        coordinator.add_worker("b", 2, b_tx);
        let to_a = assigned(&mut a);
        let to_b = assigned(&mut b);
        assert_eq!(to_a.len(), 2, "a fills its slots first: it was alone");
        assert_eq!(to_b.len(), 2);
        let first_four: Vec<_> = to_a.iter().chain(&to_b).map(|(_, r)| r.clone()).collect();
        let expected: Vec<_> = runs[..4].iter().map(|r| r.run_id.clone()).collect();
        assert_eq!(first_four, expected, "in start order");

        // b cannot write to a's run; a can, once per checkpoint number.
        let (a_first, a_run) = to_a[0].clone();
        let run = runs.iter().find(|r| r.run_id == a_run).expect("a's run");
        let stale = coordinator
            .apply("b", a_first, 1, checkpoint(run, "one"))
            .await;
        assert!(matches!(stale, Err(ApplyError::Stale(_))));
        coordinator
            .apply("a", a_first, 1, checkpoint(run, "one"))
            .await
            .expect("stored");
        coordinator
            .apply("a", a_first, 1, checkpoint(run, "again"))
            .await
            .expect("acknowledged again");
        let steps = store.steps("acme", &a_run).expect("steps");
        assert_eq!(steps.len(), 1, "the repeat was not written: {steps:?}");

        // a goes: its runs go to the front of the queue, before the fifth.
        coordinator.remove_worker("a", Some(a_connection), "test");
        assert!(matches!(a.try_recv(), Ok(Outbound::Close)));
        let (c_tx, mut c) = mpsc::unbounded_channel();
        coordinator.add_worker("c", 3, c_tx);
        let to_c: Vec<_> = assigned(&mut c).into_iter().map(|(_, r)| r).collect();
        assert_eq!(to_c.len(), 3);
        assert_eq!(
            to_c[2], runs[4].run_id,
            "the fifth run after the requeued ones"
        );
        assert!(to_c[..2].contains(&a_run));
        let stale = coordinator
            .apply("a", a_first, 2, checkpoint(run, "two"))
            .await;
        assert!(
            matches!(stale, Err(ApplyError::Stale(_))),
            "a's assignment is over"
        );
    }

    #[tokio::test]
    async fn a_credential_goes_only_to_the_worker_holding_the_run_and_only_its_tenants() {
        use isoflow_engine::credential::vault::{Key, Keyring};
        use isoflow_engine::credential::{CredentialKind, Secret};

        let dir = tempfile::tempdir().expect("temp dir");
        let store = Arc::new(Store::open(&StoreConfig::new(dir.path())).expect("store"));
        let key = Key::new("k1", &[7; 32]).expect("a key");
        let vault = Arc::new(Vault::open(store.clone(), Keyring::new(key)).expect("vault"));
        let bearer = |t: &str| CredentialKind::Bearer {
            token: Secret::new(t),
        };
        let origins = ["https://erp.example.com".to_owned()];
        vault
            .set("acme", "erp-api", &bearer("acme-secret"), &origins, false)
            .expect("set");
        vault
            .set(
                "globex",
                "erp-api",
                &bearer("globex-secret"),
                &origins,
                false,
            )
            .expect("set");
        vault
            .set("acme", "unused", &bearer("unused-secret"), &origins, false)
            .expect("set");
        let definition = isoflow_engine::model::load(
            "d.yaml",
            "apiVersion: isoflow.dev/v1\nname: d\nversion: 1\nsteps:\n  - id: post\n    type: http\n    \
             url: https://erp.example.com/\n    credential: erp-api\n",
        )
        .expect("a definition");
        let definition = serde_json::to_value(&definition).expect("json");
        let coordinator =
            Coordinator::new("c".into(), store.clone(), Some(vault), 1 << 20, 0).expect("new");
        let run = RunRecord::new("acme", "d", 1);
        store
            .create_run(&run, &definition, &serde_json::Value::Null)
            .expect("stored");
        coordinator.enqueue(("acme".into(), run.run_id.clone()));
        let (a_tx, mut a) = mpsc::unbounded_channel();
        let (b_tx, _b) = mpsc::unbounded_channel();
        let a_connection = coordinator.add_worker("a", 1, a_tx);
        coordinator.add_worker("b", 1, b_tx);
        let (id, _) = assigned(&mut a)[0].clone();

        let given = coordinator
            .credential_for("a", id, "erp-api", None)
            .await
            .expect("a holds the run")
            .expect("acme has erp-api");
        assert_eq!(
            given.kind,
            bearer("acme-secret"),
            "the run's tenant's, never another's"
        );
        let unnamed = coordinator.credential_for("a", id, "unused", None).await;
        assert!(
            unnamed.is_err(),
            "no step of the run names it, so its worker may not have it: {unnamed:?}"
        );
        let bad = coordinator
            .credential_for("a", id, &"x".repeat(100_000), None)
            .await;
        assert!(bad.is_err(), "not a credential name");
        let other = coordinator.credential_for("b", id, "erp-api", None).await;
        assert!(other.is_err(), "b does not hold the run: {other:?}");
        let unknown = coordinator
            .credential_for("a", id + 100, "erp-api", None)
            .await;
        assert!(unknown.is_err(), "no such assignment: {unknown:?}");

        coordinator.remove_worker("a", Some(a_connection), "test");
        let after = coordinator.credential_for("a", id, "erp-api", None).await;
        assert!(
            after.is_err(),
            "a revoked assignment gets nothing: {after:?}"
        );
    }
}
