//! The pool of sandbox processes, and the threads that use them.
//!
//! - `concurrency` runner threads take steps from a queue that serves
//!   tenants in turn ([`Queue`]; no tenant runs more than
//!   `tenant_concurrency` steps at once), each runs its step on a process
//!   of the step's tenant and replies.
//! - A process is bound to the first tenant it runs a step for and serves
//!   only that tenant until it is stopped. Idle processes wait in the pool
//!   by tenant; past `processes` of them (busy ones included) the least
//!   recently used is stopped. Every process is replaced after
//!   `steps_per_process` steps, and at once after anything went wrong.
//! - A keeper thread keeps `spare` unbound processes started and ready, so
//!   that a tenant without an idle process takes a spare instead of waiting
//!   for a start; it also stops and reaps retired processes, off the steps'
//!   path.
//!
//! Processes are only started by the runner and keeper threads, which live
//! as long as the sandbox: a process dies with the thread that started it
//! (`PR_SET_PDEATHSIG`), so it must be a thread that does not come and go.

use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::memory;
use super::process::{Process, RunError, Spawner};
use super::{Execution, Limits, Outcome, SandboxConfig, StepError};

/// Runs code steps on sandbox processes. Cheap to clone; the threads and
/// processes stop when the last clone is dropped.
#[derive(Clone)]
pub struct Sandbox {
    inner: Arc<Inner>,
}

struct Inner {
    queue: Arc<Queue>,
    runners: Vec<JoinHandle<()>>,
    keeper: Option<JoinHandle<()>>,
    pool: Arc<Pool>,
    config: SandboxConfig,
}

struct Job {
    exec: Execution,
    reply: oneshot::Sender<Outcome>,
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
    /// Processes started, and their time to become ready, in all.
    pub started: u64,
    pub start_time: Duration,
    /// Processes stopped to make room for another tenant's.
    pub evicted: u64,
    /// Processes replaced after their quota of steps.
    pub recycled: u64,
    /// Processes that died or misbehaved during a step.
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
    /// Starts the runner and keeper threads and one process, which must
    /// become ready: a sandbox that cannot start processes (a missing
    /// program, a machine where the lockdown cannot be applied) fails here,
    /// not at its first step.
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
        // The keeper starts the first process: a process dies with the
        // thread that started it, and the caller's thread may not live as
        // long as the sandbox.
        let (first_tx, first_rx) = std::sync::mpsc::channel();
        let keeper = std::thread::Builder::new()
            .name("isoflow-sandbox-keeper".into())
            .spawn({
                let pool = pool.clone();
                move || {
                    match pool.start() {
                        Ok(first) => {
                            let _ = first_tx.send(Ok(first.hello().cloned()));
                            pool.lock().spares.push(first);
                        }
                        Err(error) => {
                            let _ = first_tx.send(Err(error));
                            return;
                        }
                    }
                    pool.keep();
                }
            })
            .map_err(|e| StepError::Internal {
                message: format!("cannot start the sandbox's keeper thread: {e}"),
            })?;
        let hello = first_rx
            .recv()
            .unwrap_or_else(|_| {
                Err(StepError::Internal {
                    message: "the sandbox's keeper thread stopped".to_owned(),
                })
            })
            .map_err(|e| StepError::Internal {
                message: format!("the sandbox cannot start a process: {e}"),
            });
        let hello = match hello {
            Ok(hello) => hello,
            Err(error) => {
                let _ = keeper.join();
                return Err(error);
            }
        };
        if let Some(hello) = hello {
            let layers = &hello.layers;
            tracing::info!(
                program = %config.program.path.display(),
                seccomp = layers.seccomp,
                uid = layers.uid,
                gid = layers.gid,
                network_namespace = layers.network_namespace,
                empty_root = layers.empty_root,
                jitless = layers.jitless,
                memory = %memory_described,
                "sandbox processes start locked down"
            );
            for missing in &layers.missing {
                tracing::warn!("sandbox layer not available on this machine: {missing}");
            }
        }

        let concurrency = config.concurrency.max(1);
        let queue = Arc::new(Queue::new(
            config
                .tenant_concurrency
                .unwrap_or(concurrency.saturating_sub(1))
                .clamp(1, concurrency),
        ));
        let mut runners = Vec::new();
        let defaults = config.limits;
        for i in 0..concurrency {
            let queue = queue.clone();
            let pool = pool.clone();
            let runner = std::thread::Builder::new()
                .name(format!("isoflow-sandbox-{i}"))
                .spawn(move || {
                    while let Some(Job { exec, reply }) = queue.take() {
                        let outcome = pool.run(&exec, defaults);
                        queue.done(&exec.tenant);
                        // The caller may have given up waiting; the step ran all the same.
                        let _ = reply.send(outcome);
                    }
                })
                .map_err(|e| StepError::Internal {
                    message: format!("cannot start a sandbox thread: {e}"),
                })?;
            runners.push(runner);
        }
        Ok(Sandbox {
            inner: Arc::new(Inner {
                queue,
                runners,
                keeper: Some(keeper),
                pool,
                config,
            }),
        })
    }

    pub fn config(&self) -> &SandboxConfig {
        &self.inner.config
    }

    /// Runs one execution in a sandbox process and waits for its outcome.
    /// A step's failure is in `Outcome::result`; this never fails itself.
    pub async fn execute(&self, exec: Execution) -> Outcome {
        match self.submit(exec) {
            Ok(rx) => rx.await.unwrap_or_else(|_| lost()),
            Err(outcome) => outcome,
        }
    }

    /// [`Sandbox::execute`] for synchronous callers. Must not be called from
    /// inside an async runtime.
    pub fn execute_blocking(&self, exec: Execution) -> Outcome {
        match self.submit(exec) {
            Ok(rx) => rx.blocking_recv().unwrap_or_else(|_| lost()),
            Err(outcome) => outcome,
        }
    }

    fn submit(&self, exec: Execution) -> Result<oneshot::Receiver<Outcome>, Outcome> {
        if !exec.runtime.is_available() {
            return Err(Outcome::failed(StepError::Unavailable(exec.runtime)));
        }
        let (reply, rx) = oneshot::channel();
        if !self.inner.queue.push(Job { exec, reply }) {
            return Err(Outcome::failed(StepError::Shutdown));
        }
        Ok(rx)
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
        // Closing the queue ends every runner once the steps queued are done.
        self.queue.close();
        for runner in self.runners.drain(..) {
            let _ = runner.join();
        }
        self.pool.lock().shutdown = true;
        self.pool.changed.notify_all();
        if let Some(keeper) = self.keeper.take() {
            let _ = keeper.join();
        }
    }
}

/// Steps waiting for a runner, per tenant, served round-robin: a tenant
/// with a thousand steps queued does not make another's one step wait
/// behind them all, and no tenant runs more than `per_tenant` steps at once
/// (one runner short of all of them, by default), so that another tenant's
/// step always finds a runner soon, even while one tenant's steps spin for
/// as long as their time limits allow.
struct Queue {
    state: Mutex<QueueState>,
    ready: Condvar,
    per_tenant: usize,
}

#[derive(Default)]
struct QueueState {
    /// Tenants with steps waiting, in the order they are served next.
    waiting: std::collections::VecDeque<(Arc<str>, std::collections::VecDeque<Job>)>,
    running: std::collections::HashMap<Arc<str>, usize>,
    closed: bool,
}

impl Queue {
    fn new(per_tenant: usize) -> Queue {
        Queue {
            state: Mutex::new(QueueState::default()),
            ready: Condvar::new(),
            per_tenant,
        }
    }

    fn lock(&self) -> MutexGuard<'_, QueueState> {
        // Moves between collections only: consistent even after a panic.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `job`; `false` if the queue is closed (the sandbox is
    /// shutting down).
    fn push(&self, job: Job) -> bool {
        let mut state = self.lock();
        if state.closed {
            return false;
        }
        let tenant = &job.exec.tenant;
        match state.waiting.iter_mut().find(|(t, _)| t == tenant) {
            Some((_, jobs)) => jobs.push_back(job),
            None => {
                let tenant = tenant.clone();
                state.waiting.push_back((tenant, [job].into()));
            }
        }
        drop(state);
        self.ready.notify_one();
        true
    }

    /// The next step to run, waiting for one; `None` once the queue is
    /// closed and empty.
    fn take(&self) -> Option<Job> {
        let mut state = self.lock();
        loop {
            let eligible = state.waiting.iter().position(|(tenant, _)| {
                state.running.get(tenant).copied().unwrap_or(0) < self.per_tenant
            });
            if let Some(index) = eligible {
                let (tenant, mut jobs) = state.waiting.remove(index).expect("a valid index");
                let job = jobs.pop_front().expect("tenants in the queue have steps");
                *state.running.entry(tenant.clone()).or_default() += 1;
                if !jobs.is_empty() {
                    // To the back: the other tenants go first.
                    state.waiting.push_back((tenant, jobs));
                }
                return Some(job);
            }
            if state.closed && state.waiting.is_empty() {
                return None;
            }
            state = self
                .ready
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// A step of `tenant` has finished: another of its steps may start.
    fn done(&self, tenant: &Arc<str>) {
        let mut state = self.lock();
        if let Some(running) = state.running.get_mut(tenant) {
            *running -= 1;
            if *running == 0 {
                state.running.remove(tenant);
            }
        }
        drop(state);
        self.ready.notify_all();
    }

    fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_all();
    }
}

fn lost() -> Outcome {
    Outcome::failed(StepError::Internal {
        message: "the sandbox thread running the step stopped before replying".to_owned(),
    })
}

/// How often the keeper looks at idle processes' CPU time, and how much
/// one may use between steps.
const IDLE_CHECK: Duration = Duration::from_secs(1);
const IDLE_CPU: Duration = Duration::from_millis(500);

struct Pool {
    state: Mutex<State>,
    /// Wakes the keeper: a spare was taken, a process retired, shutdown.
    changed: Condvar,
    spawner: Spawner,
    processes: usize,
    spare: usize,
    steps_per_process: u32,
}

#[derive(Default)]
struct State {
    /// Bound to a tenant, waiting for its next step.
    idle: Vec<Process>,
    /// Unbound, started (ready or nearly).
    spares: Vec<Process>,
    /// Running a step on a runner thread.
    busy: Vec<Busy>,
    /// Spares the keeper is starting.
    starting: usize,
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

impl Pool {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every change under the lock is a move between lists; a panic
        // cannot leave one half made.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts a process and waits until it is ready.
    fn start(&self) -> Result<Process, StepError> {
        let begun = Instant::now();
        let process = self.spawner.spawn().map_err(|e| StepError::Internal {
            message: e.to_string(),
        })?;
        self.ready(process, begun)
    }

    /// Waits for a started process to become ready, and counts it.
    fn ready(&self, mut process: Process, begun: Instant) -> Result<Process, StepError> {
        process.ready(&self.spawner)?;
        process.idle_cpu = process.cpu_ticks();
        let took = begun.elapsed();
        let mut state = self.lock();
        state.stats.started += 1;
        state.stats.start_time += took;
        Ok(process)
    }

    /// Runs `exec` on a process of its tenant: one more try on another
    /// process if the step never reached the first.
    fn run(&self, exec: &Execution, defaults: Limits) -> Outcome {
        let mut limits = exec.limits.unwrap_or(defaults).clamped();
        limits.output_bytes = limits.output_bytes.min(defaults.output_bytes.max(1));
        // Under an address space cap, a process can only take steps as large
        // as its first (see process.rs): what this one needs.
        let address_space =
            matches!(self.spawner.memory.mode(), memory::Mode::AddressSpace).then(|| {
                super::process::address_space_allowance(
                    limits
                        .heap_bytes
                        .saturating_add(exec.input_json.len())
                        .saturating_add(self.spawner.margin),
                )
            });
        let mut last = None;
        for _ in 0..2 {
            let mut process = match self.acquire(&exec.tenant, address_space) {
                Ok(process) => process,
                Err(error) => return Outcome::failed(error),
            };
            let result = process.run(exec, &limits, &self.spawner);
            let pid = process.pid;
            match result {
                Ok(outcome) => {
                    self.release(process, pid, true);
                    return outcome;
                }
                Err(RunError::NotDelivered(error)) => {
                    self.release(process, pid, false);
                    last = Some(error);
                }
                Err(RunError::Failed(error)) => {
                    self.lock().stats.failed += 1;
                    self.release(process, pid, false);
                    return Outcome::failed(error);
                }
            }
        }
        Outcome::failed(last.expect("the loop ran"))
    }

    /// An idle process of `tenant` (able to give the step `address_space`,
    /// if that is how memory is capped), else a spare, else a new one.
    fn acquire(&self, tenant: &Arc<str>, address_space: Option<u64>) -> Result<Process, StepError> {
        let mut state = self.lock();
        state.stats.steps += 1;
        let too_small = |p: &Process| match (p.address_space, address_space) {
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
        loop {
            let found = state
                .idle
                .iter()
                .position(|p| p.tenant.as_deref() == Some(&**tenant));
            let Some(index) = found else { break };
            let mut process = state.idle.swap_remove(index);
            if process.is_alive() {
                state.stats.hits += 1;
                return Ok(self.bind(state, process, tenant));
            }
            state.retired.push(process);
        }
        while let Some(mut process) = state.spares.pop() {
            self.changed.notify_all();
            if process.is_alive() {
                state.stats.spares_taken += 1;
                return Ok(self.bind(state, process, tenant));
            }
            state.retired.push(process);
        }
        state.stats.cold_starts += 1;
        drop(state);
        let process = self.start()?;
        let state = self.lock();
        Ok(self.bind(state, process, tenant))
    }

    /// Marks `process` busy for `tenant`, and makes room under the cap by
    /// stopping the least recently used idle processes.
    fn bind(
        &self,
        mut state: MutexGuard<'_, State>,
        mut process: Process,
        tenant: &Arc<str>,
    ) -> Process {
        process.tenant = Some(tenant.clone());
        state.busy.push(Busy {
            pid: process.pid,
            tenant: tenant.clone(),
            steps: process.steps,
        });
        self.evict(&mut state);
        process
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
    fn release(&self, mut process: Process, pid: u32, healthy: bool) {
        process.idle_cpu = process.cpu_ticks();
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
        let busy = |p: &Process| match (p.idle_cpu, p.cpu_ticks()) {
            (Some(then), Some(now)) => now.saturating_sub(then) > allowed,
            _ => false,
        };
        for list in [&mut state.idle, &mut state.spares] {
            let mut i = 0;
            while i < list.len() {
                if busy(&list[i]) {
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

    /// The keeper: keeps spares started, stops retired processes, watches
    /// idle ones.
    fn keep(&self) {
        loop {
            let (retired, wanted) = {
                let mut state = self.lock();
                loop {
                    self.retire_busy_idlers(&mut state);
                    let short = self.spare > state.spares.len() + state.starting;
                    if state.shutdown || !state.retired.is_empty() || short {
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
                    drop(state);
                    // Dropping a process kills and reaps it.
                    drop(all);
                    return;
                }
                let wanted = self
                    .spare
                    .saturating_sub(state.spares.len() + state.starting);
                state.starting += wanted;
                (std::mem::take(&mut state.retired), wanted)
            };
            drop(retired);
            // Started all at once, then waited for: they load and start
            // their engines in parallel.
            let begun = Instant::now();
            let started: Vec<_> = (0..wanted).map(|_| self.spawner.spawn()).collect();
            let mut failed = false;
            for process in started {
                let ready = process
                    .map_err(|e| StepError::Internal {
                        message: e.to_string(),
                    })
                    .and_then(|p| self.ready(p, begun));
                let mut state = self.lock();
                state.starting -= 1;
                match ready {
                    Ok(process) => state.spares.push(process),
                    Err(error) => {
                        tracing::warn!(%error, "cannot start a spare sandbox process");
                        failed = true;
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
