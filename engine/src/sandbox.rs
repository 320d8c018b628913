//! The JavaScript sandbox: runs one code step in a fresh isolate and returns
//! its JSON output and captured logs.
//!
//! # Contract
//!
//! A step's source is an ES module whose default export is
//! `function (input, ctx)`, returning a JSON value or a Promise of one. The
//! engine hands it `input` (parsed from JSON text) and a `ctx` with
//! `ctx.log(...)` and `ctx.xml.parse` / `ctx.xml.stringify` (see [`xml`]).
//! `console.*` is captured like `ctx.log`. There is no network, filesystem,
//! process, environment, timer or module loader: all I/O belongs to engine
//! actions, so credentials never enter an isolate.
//!
//! # Invariants
//!
//! - Isolation by construction: every execution gets a fresh V8 isolate or a
//!   fresh QuickJS runtime, created before the job arrives (so taking one is
//!   cheap) and disposed after it. An isolate that ran user code is never used
//!   again, so nothing a step does to built-ins can reach another step.
//! - Isolates live on the sandbox's own OS threads ([`pool`]), never on a
//!   tokio worker; [`Sandbox::execute`] hands the job over and awaits it.
//! - Every limit in [`Limits`] is enforced inside the engine: exceeding one
//!   fails that step with an error naming the limit, and the process lives on.
//!   Time limits are enforced by one shared watchdog thread ([`watchdog`]).
//!
//! # Where to look next
//!
//! `prelude.js` is the JavaScript both engines run before the user's module
//! (console capture, `ctx`, output checks); [`host`] is the Rust side of it;
//! `v8` wraps the C++ bridge in `engine/cpp/`; `quickjs` wraps rquickjs.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

mod host;
mod pool;
#[cfg(feature = "quickjs")]
mod quickjs;
#[cfg(feature = "v8")]
mod v8;
// Only the V8 engine arms the watchdog; QuickJS polls its deadline itself.
#[cfg_attr(not(feature = "v8"), allow(dead_code))]
mod watchdog;
pub mod xml;

pub use pool::Sandbox;

/// The JavaScript engine a code step runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    /// V8 (Debian's libnode108, V8 10.2): JIT, `Intl`, fastest on real work.
    #[default]
    V8,
    /// QuickJS-ng: tiny start-up cost, no JIT, no `Intl`.
    #[serde(rename = "quickjs")]
    QuickJs,
}

impl Runtime {
    /// Every runtime, for iterating in tests and benchmarks.
    pub const ALL: [Runtime; 2] = [Runtime::V8, Runtime::QuickJs];

    /// Whether this build of the engine includes the runtime.
    pub fn is_available(self) -> bool {
        match self {
            Runtime::V8 => cfg!(feature = "v8"),
            Runtime::QuickJs => cfg!(feature = "quickjs"),
        }
    }
}

impl fmt::Display for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Runtime::V8 => "v8",
            Runtime::QuickJs => "quickjs",
        })
    }
}

/// Per-step limits. Exceeding any of them fails the step with a
/// [`StepError`] that names the limit and its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Heap the step's JavaScript may use, in bytes (ArrayBuffers included).
    pub heap_bytes: usize,
    /// Wall-clock time from the start of the module's evaluation to the
    /// serialised output.
    #[serde(with = "duration_ms")]
    pub timeout: Duration,
    /// Size of the step's output as UTF-8 JSON text, in bytes.
    pub output_bytes: usize,
    /// Number of log lines (`console.*` and `ctx.log` together).
    pub log_lines: usize,
    /// Total size of the log lines' text, in bytes.
    pub log_bytes: usize,
}

impl Limits {
    /// A single log line longer than this is cut, with a marker saying how
    /// much was cut; the cut line still counts against `log_bytes`.
    pub const MAX_LOG_LINE_BYTES: usize = 16 * 1024;
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            heap_bytes: 128 * 1024 * 1024,
            timeout: Duration::from_secs(30),
            output_bytes: 64 * 1024 * 1024,
            log_lines: 1_000,
            log_bytes: 1024 * 1024,
        }
    }
}

mod duration_ms {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

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

/// One execution of a code step: which engine, which script, what input.
#[derive(Debug, Clone)]
pub struct Execution {
    pub runtime: Runtime,
    pub script: Script,
    /// The step's input as JSON text. Kept as text end to end: the isolate
    /// parses it itself, which is faster than building objects from Rust.
    pub input_json: Arc<str>,
    /// Limits for this execution; `None` takes the sandbox's defaults.
    pub limits: Option<Limits>,
}

impl Execution {
    /// An execution with the default limits.
    pub fn new(runtime: Runtime, script: Script, input_json: impl Into<Arc<str>>) -> Self {
        Execution {
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
}

/// Severity of a captured log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
}

impl LogLevel {
    /// The level numbers `prelude.js` sends to the host.
    pub(crate) fn from_code(code: i32) -> LogLevel {
        match code {
            0 => LogLevel::Debug,
            2 => LogLevel::Warn,
            3 => LogLevel::Error,
            _ => LogLevel::Info,
        }
    }
}

/// One line a step logged through `console.*` or `ctx.log`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    pub level: LogLevel,
    pub message: String,
    pub time: SystemTime,
}

/// A position in the step's source, 1-based.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Location {
    pub filename: String,
    pub line: u32,
    pub column: u32,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.filename, self.line, self.column)
    }
}

/// Why a step failed. Every variant is one sentence that names what went
/// wrong and where; none of them means the process is in trouble.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StepError {
    #[error("syntax error at {location}: {message}")]
    Syntax { message: String, location: Location },
    #[error("uncaught {message}{}", at(.location))]
    Exception {
        message: String,
        location: Option<Location>,
        stack: Option<String>,
    },
    #[error("step timed out after {} ms", .limit.as_millis())]
    Timeout { limit: Duration },
    #[error(
        "step returned a promise that never settled: nothing was left that could settle it \
         (steps have no timers or I/O)"
    )]
    NeverSettled,
    #[error("step exceeded its heap limit of {} MiB", .limit_bytes / (1024 * 1024))]
    HeapLimit { limit_bytes: usize },
    #[error("step output is {actual_bytes} bytes, over the output limit of {limit_bytes} bytes")]
    OutputLimit {
        limit_bytes: usize,
        actual_bytes: usize,
    },
    #[error("step logged more than {limit} {what}, the log limit")]
    LogLimit { what: LogLimitKind, limit: usize },
    #[error("step output is not JSON-serialisable: {reason}")]
    NotSerializable { reason: String },
    #[error("{message}")]
    Module { message: String },
    #[error("step input could not be parsed: {message}")]
    Input { message: String },
    #[error("this build of isoflow has no {0} engine")]
    Unavailable(Runtime),
    #[error("sandbox is shut down")]
    Shutdown,
    #[error("sandbox failure: {message}")]
    Internal { message: String },
}

fn at(location: &Option<Location>) -> String {
    location
        .as_ref()
        .map(|l| format!(" at {l}"))
        .unwrap_or_default()
}

/// Which log limit a step exceeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLimitKind {
    Lines,
    Bytes,
}

impl fmt::Display for LogLimitKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LogLimitKind::Lines => "lines",
            LogLimitKind::Bytes => "bytes",
        })
    }
}

/// Coarse class of a [`StepError`], for retry policies and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The step's code is wrong (syntax, exception, module shape, output).
    User,
    /// A resource limit was hit (time, heap, output, logs).
    Limit,
    /// The input handed to the step was not JSON.
    Input,
    /// The sandbox could not run the step at all.
    Sandbox,
}

impl StepError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            StepError::Syntax { .. }
            | StepError::Exception { .. }
            | StepError::NotSerializable { .. }
            | StepError::Module { .. } => ErrorKind::User,
            StepError::Timeout { .. }
            | StepError::NeverSettled
            | StepError::HeapLimit { .. }
            | StepError::OutputLimit { .. }
            | StepError::LogLimit { .. } => ErrorKind::Limit,
            StepError::Input { .. } => ErrorKind::Input,
            StepError::Unavailable(_) | StepError::Shutdown | StepError::Internal { .. } => {
                ErrorKind::Sandbox
            }
        }
    }

    /// True for time-outs, including a promise that can never settle.
    pub fn is_timeout(&self) -> bool {
        matches!(self, StepError::Timeout { .. } | StepError::NeverSettled)
    }
}

/// What an execution produced: the output (or why there is none), the logs
/// it wrote either way, and how long it took.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The step's return value as JSON text.
    pub result: Result<String, StepError>,
    pub logs: Vec<LogLine>,
    /// From taking the isolate to having the output serialised.
    pub duration: Duration,
}

impl Outcome {
    /// The output parsed into a JSON value (convenient in tests and tools).
    pub fn value(&self) -> Result<serde_json::Value, StepError> {
        let text = self.result.as_ref().map_err(Clone::clone)?;
        serde_json::from_str(text).map_err(|e| StepError::Internal {
            message: format!("engine produced invalid JSON output: {e}"),
        })
    }
}

/// Sandbox-wide settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxConfig {
    /// OS threads that run isolates. Each keeps one fresh isolate per engine
    /// ready, so a step does not wait for isolate creation.
    pub threads: usize,
    /// Limits for executions that do not set their own.
    pub limits: Limits,
    /// Engines each thread prepares an instance of before the first step
    /// (an engine not listed is started by its first step, then kept warm).
    pub warm: Vec<Runtime>,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            threads: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            limits: Limits::default(),
            warm: Runtime::ALL
                .into_iter()
                .filter(|r| r.is_available())
                .collect(),
        }
    }
}
