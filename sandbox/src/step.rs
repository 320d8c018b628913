//! What a code step is given and what it gives back, as both sides of the
//! process boundary see it: the engine it runs on, its limits, its log
//! lines, and why it failed.
//!
//! These types cross the wire (see [`crate::protocol`]) as JSON. Every
//! string in them that a step can influence is bounded: [`StepError::bounded`]
//! cuts error texts to [`MAX_ERROR_TEXT`] bytes and notes the original size,
//! and log lines are cut to [`Limits::MAX_LOG_LINE_BYTES`].

use std::fmt;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

/// The most bytes of any one text in a [`StepError`] (a message, a stack,
/// a reason). Longer texts are cut, with their original size noted.
pub const MAX_ERROR_TEXT: usize = 8 * 1024;

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

    /// Whether this build includes the runtime.
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
    /// The sandbox process as a whole may use this plus the step's input and
    /// a fixed margin (see the engine's `SandboxConfig::memory_margin`).
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

    /// The longest time limit a step may have: a day. Longer ones are cut to
    /// it, so that no deadline computation can overflow.
    pub const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 60 * 60);

    /// The limits with every value brought into range: a time limit of at
    /// most [`Limits::MAX_TIMEOUT`], a heap of at least 4 MiB (V8 cannot
    /// start an isolate with less) and at most 64 GiB.
    pub fn clamped(self) -> Limits {
        Limits {
            heap_bytes: self.heap_bytes.clamp(4 << 20, 64 << 30),
            timeout: self.timeout.min(Self::MAX_TIMEOUT),
            ..self
        }
    }
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
/// wrong and where; none of them means the node is in trouble.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
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
    #[error(
        "step exceeded its memory limit: its sandbox process went over {} MiB (the heap limit \
         of {} MiB, the input and a fixed margin; ArrayBuffers, Intl and other memory outside \
         the heap count too)",
        .cap_bytes / (1024 * 1024),
        .limit_bytes / (1024 * 1024)
    )]
    MemoryLimit {
        limit_bytes: usize,
        cap_bytes: usize,
    },
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
    #[error("step's sandbox crashed: {reason}")]
    Crashed { reason: String },
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
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
    /// A resource limit was hit (time, heap, memory, output, logs).
    Limit,
    /// The input handed to the step was not JSON.
    Input,
    /// The sandbox could not run the step at all, or its process died.
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
            | StepError::MemoryLimit { .. }
            | StepError::OutputLimit { .. }
            | StepError::LogLimit { .. } => ErrorKind::Limit,
            StepError::Input { .. } => ErrorKind::Input,
            StepError::Crashed { .. }
            | StepError::Unavailable(_)
            | StepError::Shutdown
            | StepError::Internal { .. } => ErrorKind::Sandbox,
        }
    }

    /// True for time-outs, including a promise that can never settle.
    pub fn is_timeout(&self) -> bool {
        matches!(self, StepError::Timeout { .. } | StepError::NeverSettled)
    }

    /// The error with every text cut to [`MAX_ERROR_TEXT`] bytes (the cut
    /// noted with the original size). Both sides of the process boundary
    /// apply it: the sandbox so that it never sends more, the node because
    /// it does not trust what a sandbox process sends.
    pub fn bounded(self) -> StepError {
        self.map_texts(|text| cut_text(text, MAX_ERROR_TEXT))
    }

    /// The error with `f` applied to each of its texts (message, stack,
    /// reason, file name).
    pub fn map_texts(self, f: impl Fn(String) -> String) -> StepError {
        let location = |l: Location| Location {
            filename: f(cut_text(l.filename, 1024)),
            ..l
        };
        match self {
            StepError::Syntax {
                message,
                location: at,
            } => StepError::Syntax {
                message: f(message),
                location: location(at),
            },
            StepError::Exception {
                message,
                location: at,
                stack,
            } => StepError::Exception {
                message: f(message),
                location: at.map(location),
                stack: stack.map(&f),
            },
            StepError::NotSerializable { reason } => {
                StepError::NotSerializable { reason: f(reason) }
            }
            StepError::Module { message } => StepError::Module {
                message: f(message),
            },
            StepError::Input { message } => StepError::Input {
                message: f(message),
            },
            StepError::Crashed { reason } => StepError::Crashed { reason: f(reason) },
            StepError::Internal { message } => StepError::Internal {
                message: f(message),
            },
            other => other,
        }
    }
}

/// `text` cut to at most `max` bytes (on a character boundary), with a note
/// of how long it was; unchanged when it fits.
pub fn cut_text(text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… (cut: {} bytes in all)", &text[..end], text.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_texts_are_cut_with_their_size_noted() {
        let long = "é".repeat(MAX_ERROR_TEXT);
        let error = StepError::Exception {
            message: long.clone(),
            location: None,
            stack: Some(long.clone()),
        }
        .bounded();
        let StepError::Exception { message, stack, .. } = error else {
            panic!("same variant");
        };
        assert!(message.len() < MAX_ERROR_TEXT + 64, "{}", message.len());
        assert!(message.ends_with(&format!("(cut: {} bytes in all)", long.len())));
        assert_eq!(stack.as_deref(), Some(message.as_str()));
        let short = StepError::Module {
            message: "fine".into(),
        };
        assert_eq!(short.clone().bounded(), short);
    }

    #[test]
    fn errors_cross_the_wire_as_json() {
        let errors = [
            StepError::Timeout {
                limit: Duration::from_millis(1500),
            },
            StepError::LogLimit {
                what: LogLimitKind::Bytes,
                limit: 10,
            },
            StepError::Syntax {
                message: "bad".into(),
                location: Location {
                    filename: "s.js".into(),
                    line: 1,
                    column: 2,
                },
            },
            StepError::Unavailable(Runtime::QuickJs),
            StepError::NeverSettled,
        ];
        for error in errors {
            let text = serde_json::to_string(&error).unwrap();
            let back: StepError = serde_json::from_str(&text).unwrap();
            assert_eq!(back, error, "{text}");
        }
    }

    #[test]
    fn limits_are_clamped_into_range() {
        let wild = Limits {
            heap_bytes: 0,
            timeout: Duration::MAX,
            ..Limits::default()
        }
        .clamped();
        assert_eq!(wild.heap_bytes, 4 << 20);
        assert_eq!(wild.timeout, Limits::MAX_TIMEOUT);
        assert_eq!(Limits::default().clamped(), Limits::default());
    }
}
