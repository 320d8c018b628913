//! What a node tells its operators: logs (text or JSON lines), traces
//! (OpenTelemetry over OTLP/gRPC, when `[telemetry] otlp_endpoint` is set)
//! and Prometheus metrics (`metrics.rs`, served at `GET /metrics`).
//!
//! # One trace per run
//!
//! A run's trace context is chosen once, when the run is created
//! ([`new_run_context`]): a child of the span that started it (a webhook's
//! or StartRun's server span, which continue a caller's `traceparent`), or
//! a new trace sampled by `telemetry.sampling_ratio`. It is stored in the
//! run's record (`traceparent`, and `trace_caller`, the starting span) and
//! sent with each assignment, so every node that executes the run, a
//! worker that resumes it after another died included, puts its step and
//! checkpoint spans directly under the run's span: spans of a worker that
//! was killed are never left dangling under a span that never ended. The
//! `run` span itself is written by the coordinator when the run ends
//! ([`finished_run`]), with the ids chosen at creation and the run's
//! creation and end times. A run stored without a context (before tracing
//! was on) gets one derived from its id, the same on every node.
//!
//! Spans carry ids, names, sizes, times and outcomes: never a payload, a
//! header value or a credential (`docs/security.md`).

use std::sync::{Arc, OnceLock};
use std::time::{Duration, UNIX_EPOCH};

use isoflow_engine::store::{RunRecord, RunStatus};
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState,
    TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, IdGenerator, RandomIdGenerator, Sampler,
    SamplingDecision, SdkTracerProvider, ShouldSample, SpanData, SpanExporter as _, SpanProcessor,
};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{Config, LogFormat};

pub mod json;
pub mod metrics;

pub use isoflow_engine::telemetry::TARGET;

/// The process's tracing, once [`init`] configured it.
static TRACING: OnceLock<Tracing> = OnceLock::new();

struct Tracing {
    provider: SdkTracerProvider,
    /// The processor the provider exports through, shared so that the
    /// coordinator can hand it the `run` spans it writes itself.
    processor: Arc<BatchSpanProcessor>,
    sampler: Sampler,
    scope: opentelemetry::InstrumentationScope,
}

/// Keeps traces flowing; [`Guard::shutdown`] exports what is left.
#[derive(Debug)]
pub struct Guard(());

impl Guard {
    /// Exports the spans still buffered (on a blocking thread: the
    /// exporter's thread needs the runtime's reactor meanwhile).
    pub async fn shutdown(self) {
        if let Some(tracing) = TRACING.get() {
            let provider = tracing.provider.clone();
            let _ = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        }
    }
}

/// Sets up logging and, when configured, tracing, for `isoflow serve`.
/// Must run inside the tokio runtime (the OTLP exporter's channel lives
/// there).
pub fn init(config: &Config) -> anyhow::Result<Guard> {
    // tonic logs a refused TLS handshake (a client certificate from another
    // CA, plain HTTP on the TLS port) at debug only; an operator needs to
    // see those, whatever the level of the rest.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
        .add_directive(
            "tonic::transport::server::io_stream=debug"
                .parse()
                .expect("a valid directive"),
        );
    let logs = match config.log.format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_filter(filter)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
            .event_format(json::JsonLines)
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed(),
    };
    let traces = match &config.telemetry.otlp_endpoint {
        Some(endpoint) => {
            let tracing = start_tracing(config, endpoint)?;
            let tracer = tracing.provider.tracer("isoflow");
            let _ = TRACING.set(tracing);
            // Only the spans made for traces: no log line becomes a span
            // event, no library's spans a trace.
            let only_ours = tracing_subscriber::filter::Targets::new()
                .with_target(TARGET, tracing::Level::DEBUG);
            Some(
                tracing_opentelemetry::layer()
                    .with_tracer(tracer)
                    .with_location(false)
                    .with_threads(false)
                    .with_target(false)
                    .with_filter(only_ours),
            )
        }
        None => None,
    };
    tracing_subscriber::registry()
        .with(logs)
        .with(traces)
        .try_init()
        .map_err(|e| anyhow::anyhow!("cannot set up logging: {e}"))?;
    Ok(Guard(()))
}

fn start_tracing(config: &Config, endpoint: &str) -> anyhow::Result<Tracing> {
    let telemetry = &config.telemetry;
    let mut exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .with_timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| anyhow::anyhow!("telemetry.otlp_endpoint {endpoint}: {e}"))?;
    let mut attributes = vec![
        KeyValue::new("service.instance.id", config.node_id()),
        KeyValue::new("isoflow.role", config.role_name_short()),
    ];
    for (key, value) in &telemetry.resource {
        attributes.push(KeyValue::new(key.clone(), value.clone()));
    }
    let resource = Resource::builder_empty()
        .with_service_name(telemetry.service_name.clone())
        .with_attributes(attributes)
        .build();
    exporter.set_resource(&resource);
    let processor = Arc::new(
        BatchSpanProcessor::builder(exporter)
            .with_batch_config(
                BatchConfigBuilder::default()
                    .with_scheduled_delay(telemetry.export_interval)
                    .build(),
            )
            .build(),
    );
    let sampler = Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
        telemetry.sampling_ratio,
    )));
    let provider = SdkTracerProvider::builder()
        .with_span_processor(Shared(processor.clone()))
        .with_sampler(sampler.clone())
        .with_resource(resource)
        .build();
    Ok(Tracing {
        provider,
        processor,
        sampler,
        scope: opentelemetry::InstrumentationScope::builder("isoflow")
            .with_version(env!("CARGO_PKG_VERSION"))
            .build(),
    })
}

/// The batch processor, shared between the provider and
/// [`finished_run`].
#[derive(Debug)]
struct Shared(Arc<BatchSpanProcessor>);

impl SpanProcessor for Shared {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &Context) {
        self.0.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        self.0.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.0.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }
}

/// Whether this process exports traces.
pub fn tracing_on() -> bool {
    TRACING.get().is_some()
}

/// A W3C `traceparent` (version 00) read strictly: `None` unless it is
/// one, with non-zero ids.
pub fn parse_traceparent(text: &str) -> Option<SpanContext> {
    let mut parts = text.trim().split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version != "00"
        || parts.next().is_some()
        || trace.len() != 32
        || span.len() != 16
        || flags.len() != 2
        || ![trace, span, flags].iter().all(|p| {
            p.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
    {
        return None;
    }
    let trace_id = TraceId::from_hex(trace).ok()?;
    let span_id = SpanId::from_hex(span).ok()?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    let context = SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::new(flags & 1),
        true,
        TraceState::default(),
    );
    context.is_valid().then_some(context)
}

fn format_traceparent(context: &SpanContext) -> String {
    format!(
        "00-{}-{}-{:02x}",
        context.trace_id(),
        context.span_id(),
        context.trace_flags().to_u8()
    )
}

/// Gives a server span (a webhook's, StartRun's) the caller's trace, when
/// its request carried a valid `traceparent`.
pub fn continue_caller(span: &tracing::Span, traceparent: Option<&str>) {
    if !tracing_on() {
        return;
    }
    if let Some(caller) = traceparent.and_then(parse_traceparent) {
        let _ = span.set_parent(Context::new().with_remote_span_context(caller));
    }
}

/// The trace context of a run being created inside `parent` (the current
/// span: a webhook's or StartRun's, or none): its `traceparent` and the
/// span id of the span that started it. `None` when tracing is off.
pub fn new_run_context(parent: &tracing::Span) -> Option<(String, Option<String>)> {
    let tracing = TRACING.get()?;
    let parent_cx = parent.context();
    let caller = parent_cx.span().span_context().clone();
    let ids = RandomIdGenerator::default();
    let trace_id = if caller.is_valid() {
        caller.trace_id()
    } else {
        ids.new_trace_id()
    };
    let decision = tracing
        .sampler
        .should_sample(
            Some(&parent_cx),
            trace_id,
            "run",
            &SpanKind::Internal,
            &[],
            &[],
        )
        .decision;
    let flags = if decision == SamplingDecision::RecordAndSample {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::default()
    };
    let run = SpanContext::new(
        trace_id,
        ids.new_span_id(),
        flags,
        false,
        TraceState::default(),
    );
    Some((
        format_traceparent(&run),
        caller.is_valid().then(|| caller.span_id().to_string()),
    ))
}

/// The run's span context: the stored one, or for a run stored without one
/// a context derived from its id (the same on every node), sampled by the
/// ratio.
fn run_context(run: &RunRecord) -> Option<SpanContext> {
    if let Some(context) = run.traceparent.as_deref().and_then(parse_traceparent) {
        return Some(context);
    }
    let tracing = TRACING.get()?;
    let id = uuid_bytes(&run.run_id)?;
    let trace_id = TraceId::from_bytes(id);
    let mut span = [0u8; 8];
    span.copy_from_slice(&id[8..]);
    let decision = tracing
        .sampler
        .should_sample(None, trace_id, "run", &SpanKind::Internal, &[], &[])
        .decision;
    let flags = if decision == SamplingDecision::RecordAndSample {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::default()
    };
    let context = SpanContext::new(
        trace_id,
        SpanId::from_bytes(span),
        flags,
        true,
        TraceState::default(),
    );
    context.is_valid().then_some(context)
}

fn uuid_bytes(text: &str) -> Option<[u8; 16]> {
    let hex: String = text.chars().filter(|c| *c != '-').collect();
    u128::from_str_radix(&hex, 16)
        .ok()
        .filter(|_| hex.len() == 32)
        .map(u128::to_be_bytes)
}

/// Writes the `run` span of a run that ended: its ids are the ones chosen
/// when it was created, its parent the span that started it, its times the
/// run's creation and end. Called by the coordinator, once per run.
pub fn finished_run(run: &RunRecord) {
    let Some(tracing) = TRACING.get() else {
        return;
    };
    let Some(context) = run_context(run) else {
        return;
    };
    if !context.is_sampled() {
        return;
    }
    let at = |ms: u64| UNIX_EPOCH + Duration::from_millis(ms);
    let mut attributes = vec![
        KeyValue::new("run_id", run.run_id.clone()),
        KeyValue::new("tenant", run.tenant.clone()),
        KeyValue::new("integration", run.integration.clone()),
        KeyValue::new("version", i64::from(run.version)),
        KeyValue::new(
            "trigger",
            run.trigger
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
        ),
        KeyValue::new("run.status", status_name(run.status)),
    ];
    if let Some(rerun_of) = &run.rerun_of {
        attributes.push(KeyValue::new("rerun_of", rerun_of.clone()));
    }
    let status = match (&run.status, &run.error) {
        (RunStatus::Failed, Some(error)) => {
            let mut end = error.len().min(1024);
            while !error.is_char_boundary(end) {
                end -= 1;
            }
            Status::error(error[..end].to_owned())
        }
        (RunStatus::Failed, None) => Status::error("failed"),
        _ => Status::Ok,
    };
    let parent = run
        .trace_caller
        .as_deref()
        .and_then(|id| SpanId::from_hex(id).ok())
        .unwrap_or(SpanId::INVALID);
    let end = at(run.updated_at_ms.max(run.created_at_ms));
    tracing.processor.on_end(SpanData {
        span_context: SpanContext::new(
            context.trace_id(),
            context.span_id(),
            context.trace_flags(),
            false,
            TraceState::default(),
        ),
        parent_span_id: parent,
        parent_span_is_remote: false,
        span_kind: SpanKind::Internal,
        name: "run".into(),
        start_time: at(run.created_at_ms),
        end_time: end.max(at(run.created_at_ms)),
        attributes,
        dropped_attributes_count: 0,
        events: opentelemetry_sdk::trace::SpanEvents::default(),
        links: opentelemetry_sdk::trace::SpanLinks::default(),
        status,
        instrumentation_scope: tracing.scope.clone(),
    });
}

pub fn status_name(status: RunStatus) -> &'static str {
    match status {
        RunStatus::Pending => "pending",
        RunStatus::Running => "running",
        RunStatus::Succeeded => "succeeded",
        RunStatus::Failed => "failed",
        RunStatus::Cancelled => "cancelled",
    }
}

/// The engine's telemetry on a node: spans go under the run's stored
/// context, measurements to the node's metrics.
#[derive(Debug, Default)]
pub struct NodeTelemetry;

impl isoflow_engine::telemetry::Telemetry for NodeTelemetry {
    fn run_span(&self, span: &tracing::Span, run: &RunRecord) -> Option<String> {
        if !tracing_on() {
            return None;
        }
        let context = run_context(run)?;
        // The run's own span (for log lines) carries the trace id; the
        // spans of its steps and checkpoints are the run span's children
        // in the trace.
        span.record("trace_id", context.trace_id().to_string());
        Some(format_traceparent(&context))
    }

    fn adopt(&self, span: &tracing::Span, parent: &str) {
        if span.is_disabled() {
            return;
        }
        if let Some(context) = parse_traceparent(parent) {
            let _ = span.set_parent(Context::new().with_remote_span_context(context));
        }
    }

    fn traceparent(&self, span: &tracing::Span) -> Option<String> {
        if span.is_disabled() || !tracing_on() {
            return None;
        }
        let context = span.context();
        let span_context = context.span().span_context().clone();
        span_context
            .is_valid()
            .then(|| format_traceparent(&span_context))
    }

    fn step_attempt(&self, kind: &'static str, runtime: &'static str, took: Duration) {
        metrics::get().step(kind, runtime, took);
    }

    fn sandbox(&self, runtime: &'static str, waited: Duration, created: Option<Duration>) {
        metrics::get().sandbox(runtime, waited, created);
    }

    fn checkpoint(&self, took: Duration, bytes: u64) {
        metrics::get().checkpoint(took, bytes);
    }
}
