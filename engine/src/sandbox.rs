//! Code steps, run in sandbox processes: the node's side of the sandbox.
//!
//! # Contract
//!
//! A step's source is an ES module whose default export is
//! `function (input, ctx)`, returning a JSON value or a Promise of one. The
//! engine hands it `input` (parsed from JSON text) and a `ctx` with
//! `ctx.log(...)` and `ctx.xml.parse` / `ctx.xml.stringify`. `console.*` is
//! captured like `ctx.log`. There is no network, filesystem, process,
//! environment, timer or module loader: all I/O belongs to engine actions,
//! so credentials never enter a sandbox.
//!
//! # Invariants
//!
//! - Customer JavaScript never runs in this process. [`Sandbox::execute`]
//!   sends each step to a sandbox process (the `isoflow-sandbox` crate)
//!   over a Unix socket: a locked-down process (seccomp, no network, an
//!   empty root, a non-root uid) that runs it in a fresh isolate and
//!   answers. A process that crashes, aborts, is killed or runs past its
//!   step's deadline costs that one step, which fails with a [`StepError`]
//!   saying so; the next step gets another process.
//! - A sandbox process serves one tenant: the pool ([`pool`]) keeps idle
//!   processes per tenant, recycles the least recently used first and every
//!   process after [`SandboxConfig::steps_per_process`] steps, and starts
//!   spare processes ahead of need.
//! - Every limit is enforced twice: inside the process (the step's heap,
//!   time, output and logs) and from outside (a memory cgroup or address
//!   space limit, a pids cgroup, a deadline after which the node kills the
//!   process, a kill for a process that computes while idle). Nothing a process sends is trusted: every length is
//!   checked against the step's limits and every text is bounded again.
//!
//! # Where to look next
//!
//! [`pool`] (turns per tenant, processes per tenant, the keeper thread),
//! [`process`] (one process: start, one step, diagnosing a death),
//! [`wire`] (frames over the socket, from a task or a thread), [`memory`]
//! (the memory and pids cgroups); the `isoflow-sandbox` crate for what runs
//! inside.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use isoflow_sandbox::lockdown::Lockdown;
pub use isoflow_sandbox::{
    ErrorKind, Limits, Location, LogLevel, LogLimitKind, LogLine, MAX_ERROR_TEXT, Runtime,
    StepError,
};

mod memory;
mod pool;
mod process;
mod wire;

pub use memory::MemoryCap;
pub use pool::{ProcessInfo, Sandbox, SandboxStats};

/// A step's JavaScript source and the name it is reported under in errors
/// and stack traces (usually the integration file or the step id).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Script {
    pub source: Arc<str>,
    pub filename: Arc<str>,
}

impl Script {
    pub fn new(filename: impl Into<Arc<str>>, source: impl Into<Arc<str>>) -> Self {
        Script {
            source: source.into(),
            filename: filename.into(),
        }
    }
}

/// One execution of a code step: whose, which engine, which script, what
/// input.
#[derive(Debug, Clone)]
pub struct Execution {
    /// The tenant the step belongs to: it runs in a process that serves
    /// this tenant only.
    pub tenant: Arc<str>,
    pub runtime: Runtime,
    pub script: Script,
    /// The step's input as JSON text. Kept as text end to end: the isolate
    /// parses it itself, which is faster than building objects from Rust.
    pub input_json: Arc<str>,
    /// Limits for this execution; `None` takes the sandbox's defaults.
    pub limits: Option<Limits>,
}

impl Execution {
    /// An execution with the default limits, for the anonymous tenant `""`.
    pub fn new(runtime: Runtime, script: Script, input_json: impl Into<Arc<str>>) -> Self {
        Execution {
            tenant: Arc::from(""),
            runtime,
            script,
            input_json: input_json.into(),
            limits: None,
        }
    }

    /// An execution whose input is serialised from a JSON value.
    pub fn with_value(runtime: Runtime, script: Script, input: &serde_json::Value) -> Self {
        Self::new(runtime, script, input.to_string())
    }

    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = Some(limits);
        self
    }

    pub fn tenant(mut self, tenant: impl Into<Arc<str>>) -> Self {
        self.tenant = tenant.into();
        self
    }
}

/// What an execution produced: the output (or why there is none), the logs
/// it wrote either way, and how long it took.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The step's return value as JSON text.
    pub result: Result<String, StepError>,
    pub logs: Vec<LogLine>,
    /// From taking the isolate to having the output serialised, as the
    /// sandbox process measured it.
    pub duration: Duration,
    /// How long the step waited for its turn (admission) in the sandbox.
    pub queue_wait: Duration,
    /// How long the isolate it ran in took to make (before the step,
    /// usually), as the sandbox process measured it.
    pub isolate_create: Option<Duration>,
}

impl Outcome {
    /// The output parsed into a JSON value (convenient in tests and tools).
    pub fn value(&self) -> Result<serde_json::Value, StepError> {
        let text = self.result.as_ref().map_err(Clone::clone)?;
        serde_json::from_str(text).map_err(|e| StepError::Internal {
            message: format!("engine produced invalid JSON output: {e}"),
        })
    }

    pub(crate) fn failed(error: StepError) -> Outcome {
        Outcome {
            result: Err(error),
            logs: Vec::new(),
            duration: Duration::ZERO,
            queue_wait: Duration::ZERO,
            isolate_create: None,
        }
    }
}

/// The program a sandbox process runs: `path` with `args`, then the
/// process's own options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Program {
    pub path: PathBuf,
    pub args: Vec<String>,
}

impl Program {
    /// The name of the engine's sandbox binary.
    pub const BINARY: &'static str = "isoflow-sandbox";

    /// This very executable, run again with `args` (`isoflow` runs itself
    /// as `isoflow sandbox-process`). `/proc/self/exe` is the running file
    /// even if it was replaced on disk since, so node and sandbox always
    /// speak the same protocol.
    pub fn this_executable(args: &[&str]) -> Program {
        Program {
            path: PathBuf::from("/proc/self/exe"),
            args: args.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    /// `isoflow-sandbox` next to the running executable or one folder up
    /// (where cargo puts binaries relative to tests and benchmarks).
    pub fn beside_this_executable() -> Program {
        let exe = std::env::current_exe().unwrap_or_default();
        let candidates = exe
            .ancestors()
            .skip(1)
            .take(2)
            .map(|dir| dir.join(Self::BINARY));
        let path = candidates
            .clone()
            .find(|p| p.is_file())
            .or_else(|| candidates.clone().next())
            .unwrap_or_else(|| PathBuf::from(Self::BINARY));
        Program {
            path,
            args: Vec::new(),
        }
    }
}

/// Sandbox-wide settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxConfig {
    /// What a sandbox process runs.
    pub program: Program,
    /// Steps that run at once (each on its own process). More than the
    /// cores: the processes share the CPU, and a tenant whose steps spin
    /// shares it with the others instead of holding every runner.
    pub concurrency: usize,
    /// Steps one tenant may run at once [default: one fewer than
    /// `concurrency`, so that another tenant's step always finds a runner].
    pub tenant_concurrency: Option<usize>,
    /// Processes kept per tenant and idle, in all: past it, the least
    /// recently used is stopped.
    pub processes: usize,
    /// Processes started ahead of need, so that a tenant's first step, or a
    /// process's replacement, rarely waits for one to start.
    pub spare: usize,
    /// Steps a process runs before it is replaced by a fresh one.
    pub steps_per_process: u32,
    /// Limits for executions that do not set their own.
    pub limits: Limits,
    /// Engines each process starts before its first step.
    pub warm: Vec<Runtime>,
    /// How the processes lock themselves down.
    pub lockdown: Lockdown,
    /// V8 without its JIT compilers (much slower, far less of V8 reachable).
    pub jitless: bool,
    /// How a process's memory is capped from outside.
    pub memory: MemoryCap,
    /// A process may use a step's heap limit plus its input plus this.
    pub memory_margin: usize,
    /// How long a new process may take to be ready.
    pub start_timeout: Duration,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        SandboxConfig {
            program: Program::beside_this_executable(),
            concurrency: (cores * 2).max(2),
            tenant_concurrency: None,
            processes: (cores * 2).max(8),
            spare: 2,
            steps_per_process: 1000,
            limits: Limits::default(),
            warm: Runtime::ALL
                .into_iter()
                .filter(|r| r.is_available())
                .collect(),
            lockdown: Lockdown {
                parent: Some(std::process::id()),
                ..Lockdown::default()
            },
            jitless: false,
            memory: MemoryCap::Auto,
            memory_margin: 64 << 20,
            start_timeout: Duration::from_secs(30),
        }
    }
}
