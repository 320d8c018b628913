//! What the engine tells whoever observes it: spans (through `tracing`) and
//! measurements (through [`Telemetry`]), with no exporter of its own.
//!
//! The engine opens one `run` span per run it executes (INFO: log lines
//! inside a run carry its id), and under it a `step` span per attempt, a
//! `checkpoint` span per durable write and an `http.client` span per
//! request (DEBUG, target `isoflow::trace`: disabled, and so free beyond a
//! disabled span's check, unless a subscriber asks for them). Where a run's
//! trace comes from (its stored `traceparent`) and what a span's context is
//! on the wire are the embedder's to say: the node implements
//! [`Telemetry`] with OpenTelemetry; the default, [`NoTelemetry`], does
//! nothing. Attributes never hold a payload, a header value or a
//! credential.

use std::time::Duration;

use crate::store::RunRecord;

/// The target of the engine's spans below the run's.
pub const TARGET: &str = "isoflow::trace";

/// The embedder's side of the engine's telemetry. Every method has a
/// default that does nothing.
pub trait Telemetry: Send + Sync + 'static {
    /// A run starts executing here under `span`: returns the parent its
    /// spans take in its trace (from `run.traceparent`), if it is traced.
    fn run_span(&self, _span: &tracing::Span, _run: &RunRecord) -> Option<String> {
        None
    }

    /// Puts `span` (a step's or a checkpoint's) under `parent`, which
    /// [`Telemetry::run_span`] returned.
    fn adopt(&self, _span: &tracing::Span, _parent: &str) {}

    /// The W3C `traceparent` naming `span`, for a request made inside it;
    /// `None` when nothing traces.
    fn traceparent(&self, _span: &tracing::Span) -> Option<String> {
        None
    }

    /// One attempt of a step ended. `runtime` is `v8` or `quickjs` for a
    /// code step, `none` otherwise.
    fn step_attempt(&self, _kind: &'static str, _runtime: &'static str, _took: Duration) {}

    /// A code step waited `waited` for its turn in the sandbox, and ran in
    /// an isolate that took `created` to make (ahead of time, usually).
    fn sandbox(&self, _runtime: &'static str, _waited: Duration, _created: Option<Duration>) {}

    /// A checkpoint with `bytes` of step output took `took` to be durable
    /// (an fsynced write here, or a coordinator's acknowledgement).
    fn checkpoint(&self, _took: Duration, _bytes: u64) {}
}

/// Telemetry that observes nothing: the engine's default.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoTelemetry;

impl Telemetry for NoTelemetry {}
