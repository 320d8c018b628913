//! The pool of sandbox processes, and how steps get one.
//!
//! - A step first gets its turn ([`Admission`]): at most `concurrency` steps
//!   run at once, at most `tenant_concurrency` of one tenant, and tenants
//!   waiting for a turn are served in turn.
//! - It then takes the idle process of its tenant that answered longest
//!   ago, else a spare, else asks the keeper to start one (and a spare
//!   before a tenant's only process that answered just now, which is still
//!   preparing its next isolate, when the pool has room for one more), and
//!   runs on it: from the caller's own task
//!   (async callers: the socket is waited on through the runtime's reactor)
//!   or thread (blocking callers), with no hand-off in between.
//! - A process is bound to the first tenant it runs a step for and serves
//!   only that tenant until it is stopped. Idle processes wait in the pool
//!   by tenant; past `processes` of them (busy ones included) the least
//!   recently used is stopped. Every process is replaced after
//!   `steps_per_process` steps, and at once after anything went wrong.
//! - The keeper thread starts processes (spares ahead of need, and any a
//!   step asks for), stops and reaps retired ones off the steps' path, and
//!   stops idle ones that use CPU time. Processes are only ever started by
//!   the keeper: a process dies with the thread that started it
//!   (`PR_SET_PDEATHSIG`), so that must be a thread that lives as long as
//!   the sandbox.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use isoflow_sandbox::protocol::Hello;
use tokio::sync::oneshot;

use super::memory;
use super::process::{Process, RunError, Spawner};
use super::{Execution, Limits, Outcome, SandboxConfig, StepError};

/// Runs code steps on sandbox processes. Cheap to clone; the processes
/// stop when the last clone is dropped.
#[derive(Clone)]
pub struct Sandbox {
    inner: Arc<Inner>,
}

struct Inner {
    admission: Arc<Admission>,
    keeper: Option<JoinHandle<()>>,
    pool: Arc<Pool>,
    config: SandboxConfig,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("config", &self.inner.config)
            .finish()
    }
}

/// What the pool did so far, and what it holds now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SandboxStats {
    /// Steps run (whatever their outcome).
    pub steps: u64,
    /// Steps that found an idle process of their tenant.
    pub hits: u64,
    /// Steps that took a spare process.
    pub spares_taken: u64,
    /// Steps that had to wait for a process to start.
    pub cold_starts: u64,
    /// Processes that became ready, and their time from start to ready, in all.
    pub started: u64,
    pub start_time: Duration,
    /// Processes stopped to make room for another tenant's.
    pub evicted: u64,
    /// Processes replaced after their quota of steps.
    pub recycled: u64,
    /// Processes that died or misbehaved during a step, or computed while
    /// idle.
    pub failed: u64,
    /// The processes alive now.
    pub processes: Vec<ProcessInfo>,
}

/// One live process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessInfo {
    pub pid: u32,
    /// `None` for a spare.
    pub tenant: Option<String>,
    pub busy: bool,
    pub steps: u32,
    /// The most memory its cgroup ever charged it (idle processes, where
    /// memory is capped by a cgroup).
    pub peak_memory: Option<u64>,
}

impl Sandbox {
    /// Starts the keeper and one process, which must become ready: a
    /// sandbox that cannot start processes (a missing program, a machine
    /// where the lockdown cannot be applied) fails here, not at its first
    /// step.
    pub fn new(config: SandboxConfig) -> Result<Sandbox, StepError> {
        let memory = memory::Control::resolve(config.memory)
            .map_err(|message| StepError::Internal { message })?;
        let memory_described = memory.describe();
        let spawner = Spawner {
            program: config.program.clone(),
            options: isoflow_sandbox::process::Options {
                lockdown: config.lockdown.clone(),
                jitless: config.jitless,
                heap_bytes: config.limits.clamped().heap_bytes,
                warm: config.warm.clone(),
            },
            memory,
            pids: memory::CgroupTree::create(memory::Controller::Pids).ok(),
            margin: config.memory_margin,
            start_timeout: config.start_timeout,
        };
        let pool = Arc::new(Pool {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            spawner,
            processes: config.processes.max(1),
            spare: config.spare,
            steps_per_process: config.steps_per_process.max(1),
        });
        let keeper = std::thread::Builder::new()
            .name("isoflow-sandbox-keeper".into())
            .spawn({
                let pool = pool.clone();
                move || pool.keep()
            })
            .map_err(|e| StepError::Internal {
                message: format!("cannot start the sandbox's keeper thread: {e}"),
            })?;
        let inner = Inner {
            admission: Arc::new(Admission::new(
                config.concurrency.max(1),
                config.tenant_concurrency,
            )),
            keeper: Some(keeper),
            pool,
            config,
        };
        // The first process: it must start, and it says how locked down
        // processes are here.
        // Waited for with a plain channel: this may be called from inside a
        // runtime (an engine starting), where tokio's channels refuse to
        // block.
        let (tx, rx) = std::sync::mpsc::channel();
        inner.pool.ask_keeper(Box::new(move |started| {
            let _ = tx.send(started);
        }));
        let mut first = rx.recv().unwrap_or_else(|_| {
            Err(StepError::Internal {
                message: "the sandbox's keeper thread stopped".to_owned(),
            })
        });
        let hello = first
            .as_mut()
            .map_err(|e| e.clone())
            .and_then(|p| inner.pool.ready_blocking(p).cloned());
        let hello = hello.map_err(|e| StepError::Internal {
            message: format!("the sandbox cannot start a process: {e}"),
        })?;
        inner.pool.lock().spares.extend(first.ok());
        let layers = &hello.layers;
        tracing::info!(
            program = %inner.config.program.path.display(),
            seccomp = layers.seccomp,
            uid = layers.uid,
            gid = layers.gid,
            network_namespace = layers.network_namespace,
            empty_root = layers.empty_root,
            jitless = layers.jitless,
            memory = %memory_described,
            threads = inner.pool.spawner.pids.is_some(),
            "sandbox processes start locked down"
        );
        for missing in &layers.missing {
            tracing::warn!("sandbox layer not available on this machine: {missing}");
        }
        inner.pool.changed.notify_all();
        Ok(Sandbox {
            inner: Arc::new(inner),
        })
    }

    pub fn config(&self) -> &SandboxConfig {
        &self.inner.config
    }

    /// Runs one execution in a sandbox process and waits for its outcome.
    /// A step's failure is in `Outcome::result`; this never fails itself.
    /// Dropping the future kills the process running the step.
    pub async fn execute(&self, exec: Execution) -> Outcome {
        if !exec.runtime.is_available() {
            return Outcome::failed(StepError::Unavailable(exec.runtime));
        }
        let queued = std::time::Instant::now();
        let Some(_turn) = self.inner.admission.enter(&exec.tenant).await else {
            return Outcome::failed(StepError::Shutdown);
        };
        let queue_wait = queued.elapsed();
        let mut outcome = self
            .inner
            .pool
            .run_async(&exec, self.inner.config.limits)
            .await;
        outcome.queue_wait = queue_wait;
        outcome
    }

    /// [`Sandbox::execute`] for synchronous callers, on their own thread.
    /// Must not be called from inside an async runtime.
    pub fn execute_blocking(&self, exec: Execution) -> Outcome {
        if !exec.runtime.is_available() {
            return Outcome::failed(StepError::Unavailable(exec.runtime));
        }
        let queued = std::time::Instant::now();
        let Some(_turn) = self.inner.admission.enter_blocking(&exec.tenant) else {
            return Outcome::failed(StepError::Shutdown);
        };
        let queue_wait = queued.elapsed();
        let mut outcome = self
            .inner
            .pool
            .run_blocking(&exec, self.inner.config.limits);
        outcome.queue_wait = queue_wait;
        outcome
    }

    /// What the pool did so far and the processes it holds.
    pub fn stats(&self) -> SandboxStats {
        let state = self.inner.pool.lock();
        let mut stats = state.stats.clone();
        let info = |p: &Process, busy: bool| ProcessInfo {
            pid: p.pid,
            tenant: p.tenant.as_deref().map(str::to_owned),
            busy,
            steps: p.steps,
            peak_memory: p.peak_memory(),
        };
        stats.processes = state
            .idle
            .iter()
            .chain(&state.spares)
            .map(|p| info(p, false))
            .chain(state.busy.iter().map(|b| ProcessInfo {
                pid: b.pid,
                tenant: Some(b.tenant.to_string()),
                busy: true,
                steps: b.steps,
                peak_memory: None,
            }))
            .collect();
        stats
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.admission.close();
        self.pool.lock().shutdown = true;
        self.pool.changed.notify_all();
        if let Some(keeper) = self.keeper.take() {
            let _ = keeper.join();
        }
    }
}

/// Turns to run a step: at most `concurrency` at once, at most `per_tenant`
/// of one tenant (one short of all of them, by default), and tenants that
/// wait are served in turn. A tenant with a thousand steps waiting does not
/// make another's one step wait behind them all, and however long one
/// tenant's steps spin, another tenant's step gets a turn soon.
struct Admission {
    state: Mutex<AdmissionState>,
    concurrency: usize,
    per_tenant: usize,
}

#[derive(Default)]
struct AdmissionState {
    running: usize,
    per_tenant: HashMap<Arc<str>, usize>,
    /// Tenants with steps waiting, in the order they are served next.
    waiting: VecDeque<(Arc<str>, VecDeque<oneshot::Sender<Turn>>)>,
    closed: bool,
}

/// A step's turn; the next waiting step gets one when it is dropped.
struct Turn {
    /// `None` once the turn was given back by hand.
    admission: Option<Arc<Admission>>,
    tenant: Arc<str>,
}

impl Drop for Turn {
    fn drop(&mut self) {
        if let Some(admission) = self.admission.take() {
            admission.done(&self.tenant);
        }
    }
}

impl Admission {
    fn new(concurrency: usize, per_tenant: Option<usize>) -> Admission {
        Admission {
            state: Mutex::new(AdmissionState::default()),
            concurrency,
            per_tenant: per_tenant
                .unwrap_or(concurrency.saturating_sub(1))
                .clamp(1, concurrency),
        }
    }

    fn lock(&self) -> MutexGuard<'_, AdmissionState> {
        // Counters and queues only: consistent even after a panic.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A turn now, or a receiver that gets one when it comes (`Err` once
    /// the sandbox is shutting down).
    fn ask(self: &Arc<Self>, tenant: &Arc<str>) -> Result<Turn, Option<oneshot::Receiver<Turn>>> {
        let mut state = self.lock();
        if state.closed {
            return Err(None);
        }
        let mine = state.per_tenant.get(tenant).copied().unwrap_or(0);
        // Steps that wait while a runner is free are all of tenants at
        // their own cap ([`Admission::hand_out`] gives free turns away at
        // once): they do not hold up another tenant's step.
        let queued = state.waiting.iter().any(|(t, _)| t == tenant);
        if !queued && state.running < self.concurrency && mine < self.per_tenant {
            state.running += 1;
            *state.per_tenant.entry(tenant.clone()).or_default() += 1;
            return Ok(Turn {
                admission: Some(self.clone()),
                tenant: tenant.clone(),
            });
        }
        let (tx, rx) = oneshot::channel();
        match state.waiting.iter_mut().find(|(t, _)| t == tenant) {
            Some((_, waiters)) => waiters.push_back(tx),
            None => state.waiting.push_back((tenant.clone(), [tx].into())),
        }
        Err(Some(rx))
    }

    async fn enter(self: &Arc<Self>, tenant: &Arc<str>) -> Option<Turn> {
        match self.ask(tenant) {
            Ok(turn) => Some(turn),
            Err(waiting) => waiting?.await.ok(),
        }
    }

    fn enter_blocking(self: &Arc<Self>, tenant: &Arc<str>) -> Option<Turn> {
        match self.ask(tenant) {
            Ok(turn) => Some(turn),
            Err(waiting) => waiting?.blocking_recv().ok(),
        }
    }

    fn done(self: &Arc<Self>, tenant: &Arc<str>) {
        let mut state = self.lock();
        state.running -= 1;
        Self::uncount(&mut state, tenant);
        self.hand_out(&mut state);
    }

    fn uncount(state: &mut AdmissionState, tenant: &Arc<str>) {
        if let Some(mine) = state.per_tenant.get_mut(tenant) {
            *mine -= 1;
            if *mine == 0 {
                state.per_tenant.remove(tenant);
            }
        }
    }

    /// Gives free turns to waiting steps, tenants in turn.
    fn hand_out(self: &Arc<Self>, state: &mut AdmissionState) {
        while state.running < self.concurrency {
            let eligible = state.waiting.iter().position(|(tenant, _)| {
                state.per_tenant.get(tenant).copied().unwrap_or(0) < self.per_tenant
            });
            let Some(index) = eligible else { return };
            let (tenant, mut waiters) = state.waiting.remove(index).expect("a valid index");
            let waiter = waiters.pop_front().expect("waiting tenants have waiters");
            if !waiters.is_empty() {
                // To the back: the other tenants go first.
                state.waiting.push_back((tenant.clone(), waiters));
            }
            state.running += 1;
            *state.per_tenant.entry(tenant.clone()).or_default() += 1;
            let turn = Turn {
                admission: Some(self.clone()),
                tenant,
            };
            if let Err(mut unwanted) = waiter.send(turn) {
                // Its caller gave up waiting: the turn goes back, counted
                // here (the lock is held), not by its drop.
                unwanted.admission = None;
                state.running -= 1;
                Self::uncount(state, &unwanted.tenant);
            }
        }
    }

    fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        // Dropping the senders tells every waiter.
        state.waiting.clear();
    }
}

/// How often the keeper looks at idle processes' CPU time, and how much
/// one may use between steps.
const IDLE_CHECK: Duration = Duration::from_secs(1);
const IDLE_CPU: Duration = Duration::from_millis(500);

/// How long after answering a process is taken to be still preparing its
/// next isolate (a fresh V8 isolate takes about 2.5 ms of CPU when
/// optimised; a slow or busy machine takes longer).
const PREPARING: Duration = Duration::from_millis(5);

struct Pool {
    state: Mutex<State>,
    /// Wakes the keeper: a start asked for, a spare taken, a process
    /// retired, shutdown.
    changed: Condvar,
    spawner: Spawner,
    processes: usize,
    spare: usize,
    steps_per_process: u32,
}

/// A process asked of the keeper: started, not yet ready.
type Started = Result<Process, StepError>;

#[derive(Default)]
struct State {
    /// Bound to a tenant, waiting for its next step.
    idle: Vec<Process>,
    /// Unbound, started (ready, or on their way).
    spares: Vec<Process>,
    /// Running a step.
    busy: Vec<Busy>,
    /// Processes steps asked the keeper to start, and where each goes.
    requests: VecDeque<Box<dyn FnOnce(Started) + Send>>,
    /// To stop and reap, off the steps' path.
    retired: Vec<Process>,
    stats: SandboxStats,
    shutdown: bool,
}

struct Busy {
    pid: u32,
    tenant: Arc<str>,
    steps: u32,
}

/// What a step found in the pool.
enum Found {
    Process(Box<Process>),
    /// Nothing: the keeper is to start one.
    Start(oneshot::Receiver<Started>),
}

/// A process lent to a step. Dropped without [`Lease::release`] (its step's
/// future was dropped, say), the process is retired: its state cannot be
/// known.
struct Lease<'a> {
    pool: &'a Pool,
    process: Option<Process>,
}

impl Lease<'_> {
    fn get(&mut self) -> &mut Process {
        self.process.as_mut().expect("held until released")
    }

    fn release(mut self, healthy: bool) {
        if let Some(process) = self.process.take() {
            self.pool.release(process, healthy);
        }
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some(process) = self.process.take() {
            self.pool.release(process, false);
        }
    }
}

impl Pool {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every change under the lock is a move between lists; a panic
        // cannot leave one half made.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Asks the keeper to start a process and hand it to `deliver`.
    fn ask_keeper(&self, deliver: Box<dyn FnOnce(Started) + Send>) {
        self.lock().requests.push_back(deliver);
        self.changed.notify_all();
    }

    /// Asks the keeper to start a process, to be received from a step.
    fn request(&self) -> oneshot::Receiver<Started> {
        let (tx, rx) = oneshot::channel();
        self.ask_keeper(Box::new(move |started| {
            // A step that gave up waiting leaves the process to drop.
            let _ = tx.send(started);
        }));
        rx
    }

    /// Counts a process that became ready.
    fn count_ready(&self, process: &mut Process, was_ready: bool) {
        if was_ready {
            return;
        }
        process.idle_cpu = process.cpu_ticks();
        let mut state = self.lock();
        state.stats.started += 1;
        state.stats.start_time += process.age();
    }

    fn ready_blocking<'p>(&self, process: &'p mut Process) -> Result<&'p Hello, StepError> {
        let was_ready = process.hello().is_some();
        process.ready_blocking(&self.spawner)?;
        self.count_ready(process, was_ready);
        Ok(process.hello().expect("ready"))
    }

    /// The memory a step needs of its process under an address space cap
    /// (a process can only take steps as large as its first).
    fn address_space(&self, exec: &Execution, limits: &Limits) -> Option<u64> {
        matches!(self.spawner.memory.mode(), memory::Mode::AddressSpace).then(|| {
            super::process::address_space_allowance(
                limits
                    .heap_bytes
                    .saturating_add(exec.input_json.len())
                    .saturating_add(self.spawner.margin),
            )
        })
    }

    fn limits(exec: &Execution, defaults: Limits) -> Limits {
        let mut limits = exec.limits.unwrap_or(defaults).clamped();
        limits.output_bytes = limits.output_bytes.min(defaults.output_bytes.max(1));
        limits
    }

    /// Runs `exec` on a process of its tenant from a tokio task: one more
    /// try on another process if the step never reached the first.
    async fn run_async(&self, exec: &Execution, defaults: Limits) -> Outcome {
        let limits = Self::limits(exec, defaults);
        let needs = self.address_space(exec, &limits);
        let mut last = None;
        for _ in 0..2 {
            let process = match self.find(&exec.tenant, needs) {
                Found::Process(process) => *process,
                Found::Start(started) => match started.await {
                    Ok(Ok(process)) => process,
                    Ok(Err(error)) => return Outcome::failed(error),
                    Err(_) => return Outcome::failed(StepError::Shutdown),
                },
            };
            let mut lease = self.lend(process, &exec.tenant);
            let was_ready = lease.get().hello().is_some();
            let result = match lease.get().ready_async(&self.spawner).await {
                Ok(_) => {
                    self.count_ready(lease.get(), was_ready);
                    lease.get().run_async(exec, &limits, &self.spawner).await
                }
                Err(error) => Err(RunError::NotDelivered(error)),
            };
            match self.settle(lease, result) {
                Ok(outcome) => return outcome,
                Err(error) => last = Some(error),
            }
        }
        Outcome::failed(last.expect("the loop ran"))
    }

    /// [`Pool::run_async`] on the caller's thread.
    fn run_blocking(&self, exec: &Execution, defaults: Limits) -> Outcome {
        let limits = Self::limits(exec, defaults);
        let needs = self.address_space(exec, &limits);
        let mut last = None;
        for _ in 0..2 {
            let process = match self.find(&exec.tenant, needs) {
                Found::Process(process) => *process,
                Found::Start(started) => match started.blocking_recv() {
                    Ok(Ok(process)) => process,
                    Ok(Err(error)) => return Outcome::failed(error),
                    Err(_) => return Outcome::failed(StepError::Shutdown),
                },
            };
            let mut lease = self.lend(process, &exec.tenant);
            let was_ready = lease.get().hello().is_some();
            let result = match lease.get().ready_blocking(&self.spawner) {
                Ok(_) => {
                    self.count_ready(lease.get(), was_ready);
                    lease.get().run_blocking(exec, &limits, &self.spawner)
                }
                Err(error) => Err(RunError::NotDelivered(error)),
            };
            match self.settle(lease, result) {
                Ok(outcome) => return outcome,
                Err(error) => last = Some(error),
            }
        }
        Outcome::failed(last.expect("the loop ran"))
    }

    /// Returns the lease; the outcome, or the error to try again with.
    fn settle(
        &self,
        lease: Lease<'_>,
        result: Result<Outcome, RunError>,
    ) -> Result<Outcome, StepError> {
        match result {
            Ok(outcome) => {
                lease.release(true);
                Ok(outcome)
            }
            Err(RunError::NotDelivered(error)) => {
                lease.release(false);
                Err(error)
            }
            Err(RunError::Failed(error)) => {
                self.lock().stats.failed += 1;
                lease.release(false);
                Ok(Outcome::failed(error))
            }
        }
    }

    /// An idle process of `tenant` (able to give the step `needs` of
    /// address space, where that is how memory is capped), else a spare,
    /// else a start asked of the keeper.
    fn find(&self, tenant: &Arc<str>, needs: Option<u64>) -> Found {
        let mut state = self.lock();
        state.stats.steps += 1;
        let too_small = |p: &Process| match (p.address_space, needs) {
            (Some(has), Some(needs)) => has < needs,
            _ => false,
        };
        while let Some(index) = state
            .idle
            .iter()
            .position(|p| p.tenant.as_deref() == Some(&**tenant) && too_small(p))
        {
            let process = state.idle.swap_remove(index);
            state.retired.push(process);
        }
        // The tenant's process that answered longest ago: the likeliest to
        // have its next isolate ready.
        let mine = state
            .idle
            .iter()
            .enumerate()
            .filter(|(_, p)| p.tenant.as_deref() == Some(&**tenant))
            .min_by_key(|(_, p)| p.last_used)
            .map(|(index, p)| (index, p.last_used.elapsed() < PREPARING));
        if let Some((index, preparing)) = mine {
            // Steps of one run follow each other closely: the process that
            // ran the last one is still preparing the isolate for the next.
            // A spare is ready now, and the tenant's two processes then
            // take turns.
            let held = state
                .idle
                .iter()
                .filter(|p| p.tenant.as_deref() == Some(&**tenant))
                .count()
                + state.busy.iter().filter(|b| b.tenant == *tenant).count();
            // Not when that would stop another tenant's idle process to
            // stay under the cap: a wait of milliseconds is cheaper than
            // the other tenant's next cold start.
            let room = state.idle.len() + state.busy.len() < self.processes;
            if !(preparing && held < 2 && room && !state.spares.is_empty()) {
                // One that died while idle is found out when its step
                // cannot be sent, and the step goes to another: no system
                // call here.
                let process = state.idle.swap_remove(index);
                state.stats.hits += 1;
                return Found::Process(Box::new(process));
            }
        }
        if let Some(process) = state.spares.pop() {
            self.changed.notify_all();
            state.stats.spares_taken += 1;
            return Found::Process(Box::new(process));
        }
        state.stats.cold_starts += 1;
        drop(state);
        Found::Start(self.request())
    }

    /// Marks `process` busy for `tenant`, and makes room under the cap by
    /// stopping the least recently used idle processes.
    fn lend(&self, mut process: Process, tenant: &Arc<str>) -> Lease<'_> {
        process.tenant = Some(tenant.clone());
        let mut state = self.lock();
        state.busy.push(Busy {
            pid: process.pid,
            tenant: tenant.clone(),
            steps: process.steps,
        });
        self.evict(&mut state);
        Lease {
            pool: self,
            process: Some(process),
        }
    }

    fn evict(&self, state: &mut State) {
        while state.idle.len() + state.busy.len() > self.processes && !state.idle.is_empty() {
            let oldest = state
                .idle
                .iter()
                .enumerate()
                .min_by_key(|(_, p)| p.last_used)
                .map(|(i, _)| i)
                .expect("idle is not empty");
            let process = state.idle.swap_remove(oldest);
            state.retired.push(process);
            state.stats.evicted += 1;
            self.changed.notify_all();
        }
    }

    /// Returns a process after a step: to the idle list if it can serve
    /// more, else to be stopped.
    fn release(&self, mut process: Process, healthy: bool) {
        // Its CPU time is read by the keeper, off the step's path.
        process.idle_cpu = None;
        let pid = process.pid;
        let mut state = self.lock();
        state.busy.retain(|b| b.pid != pid);
        if healthy && process.steps < self.steps_per_process && !state.shutdown {
            state.idle.push(process);
            self.evict(&mut state);
        } else {
            if healthy {
                state.stats.recycled += 1;
            }
            state.retired.push(process);
            self.changed.notify_all();
        }
    }

    /// Stops idle processes that used CPU time while they had no step: an
    /// honest one only disposes of an isolate and prepares the next, which
    /// takes milliseconds. More means code that escaped its isolate kept
    /// running between steps.
    fn retire_busy_idlers(&self, state: &mut State) {
        let allowed = IDLE_CPU.as_millis() as u64 * super::process::ticks_per_second() / 1000;
        // First seen idle: the baseline. Seen again: compared with it.
        let busy = |p: &mut Process| match (p.idle_cpu, p.cpu_ticks()) {
            (Some(then), Some(now)) => now.saturating_sub(then) > allowed,
            (None, now) => {
                p.idle_cpu = now;
                false
            }
            _ => false,
        };
        for list in [&mut state.idle, &mut state.spares] {
            let mut i = 0;
            while i < list.len() {
                if busy(&mut list[i]) {
                    let process = list.swap_remove(i);
                    tracing::warn!(
                        pid = process.pid,
                        tenant = process.tenant.as_deref().unwrap_or(""),
                        "a sandbox process used CPU time with no step to run: stopped"
                    );
                    state.retired.push(process);
                    state.stats.failed += 1;
                } else {
                    i += 1;
                }
            }
        }
    }

    /// The keeper: starts the processes steps ask for and keeps spares
    /// started, stops retired processes, watches idle ones. It never waits
    /// for a process to become ready: whoever takes it does.
    fn keep(&self) {
        loop {
            let (requests, retired, spares) = {
                let mut state = self.lock();
                loop {
                    self.retire_busy_idlers(&mut state);
                    let short = self.spare > state.spares.len();
                    if state.shutdown
                        || !state.requests.is_empty()
                        || !state.retired.is_empty()
                        || short
                    {
                        break;
                    }
                    state = self
                        .changed
                        .wait_timeout(state, IDLE_CHECK)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
                if state.shutdown {
                    let mut all = std::mem::take(&mut state.retired);
                    all.append(&mut state.idle);
                    all.append(&mut state.spares);
                    // Dropping a request's sender tells its step.
                    state.requests.clear();
                    drop(state);
                    // Dropping a process kills and reaps it.
                    drop(all);
                    return;
                }
                let spares = self.spare.saturating_sub(state.spares.len());
                (
                    std::mem::take(&mut state.requests),
                    std::mem::take(&mut state.retired),
                    spares,
                )
            };
            let mut failed = false;
            for deliver in requests {
                let started = self.spawner.spawn().map_err(|e| StepError::Internal {
                    message: format!("the sandbox cannot start a process: {e}"),
                });
                failed |= started.is_err();
                deliver(started);
            }
            drop(retired);
            for _ in 0..spares {
                match self.spawner.spawn() {
                    Ok(process) => self.lock().spares.push(process),
                    Err(error) => {
                        tracing::warn!(%error, "cannot start a spare sandbox process");
                        failed = true;
                        break;
                    }
                }
            }
            if failed {
                // Not in a tight loop: the next try waits a little.
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    }
}
