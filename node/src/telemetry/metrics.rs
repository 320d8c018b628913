//! The node's Prometheus metrics, served at `GET /metrics` on the HTTP
//! listener (OpenMetrics text). Names are an interface: dashboards and the
//! Helm chart (`isoflow_queue_depth`) rely on them; docs/operating.md
//! lists each.
//!
//! Every role serves the engine's metrics (steps, isolates, checkpoints);
//! a coordinator or an `all` node adds the run and scheduling ones. Gauges
//! of the coordinator's state are read when scraped.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RunLabels {
    pub tenant: String,
    pub integration: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FinishedLabels {
    pub tenant: String,
    pub integration: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StepLabels {
    pub kind: &'static str,
    pub runtime: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuntimeLabels {
    pub runtime: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Every metric of the process (one set per process: a node is one
/// process).
#[derive(Debug)]
pub struct Metrics {
    pub runs_started: Family<RunLabels, Counter>,
    pub runs_finished: Family<FinishedLabels, Counter>,
    step_duration: HistogramFamily<StepLabels>,
    isolate_create: HistogramFamily<RuntimeLabels>,
    sandbox_queue_wait: Histogram,
    checkpoint_duration: Histogram,
    checkpoint_bytes: Histogram,
    pub queue_depth: Gauge,
    pub workers_connected: Gauge,
    pub assignments_revoked: Counter,
    pub credential_refreshes: Family<OutcomeLabels, Counter>,
}

fn seconds() -> Histogram {
    // 0.5 ms to ~65 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 18))
}

fn fast_seconds() -> Histogram {
    // 50 µs to ~1.6 s: isolates, waits, fsyncs.
    Histogram::new(exponential_buckets(0.00005, 2.0, 16))
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| Metrics {
    runs_started: Family::default(),
    runs_finished: Family::default(),
    step_duration: Family::new_with_constructor(seconds),
    isolate_create: Family::new_with_constructor(fast_seconds),
    sandbox_queue_wait: fast_seconds(),
    checkpoint_duration: fast_seconds(),
    // 64 B to 1 GiB.
    checkpoint_bytes: Histogram::new(exponential_buckets(64.0, 4.0, 13)),
    queue_depth: Gauge::default(),
    workers_connected: Gauge::default(),
    assignments_revoked: Counter::default(),
    credential_refreshes: Family::default(),
});

/// The process's metrics.
pub fn get() -> &'static Metrics {
    &METRICS
}

impl Metrics {
    /// The registry a node serves: the engine's metrics, and with
    /// `coordinator` the runs' and the scheduler's.
    pub fn registry(&self, coordinator: bool) -> Registry {
        let mut registry = Registry::default();
        registry.register(
            "isoflow_step_duration_seconds",
            "Duration of step attempts, by step kind and JavaScript runtime",
            self.step_duration.clone(),
        );
        registry.register(
            "isoflow_isolate_create_seconds",
            "Time to make the fresh isolate (or QuickJS runtime) a code step ran in",
            self.isolate_create.clone(),
        );
        registry.register(
            "isoflow_sandbox_queue_wait_seconds",
            "Time code steps waited for their turn in the sandbox",
            self.sandbox_queue_wait.clone(),
        );
        registry.register(
            "isoflow_checkpoint_duration_seconds",
            "Time from a checkpoint's write to its being durable (fsync, or the coordinator's acknowledgement)",
            self.checkpoint_duration.clone(),
        );
        registry.register(
            "isoflow_checkpoint_bytes",
            "Step output bytes in each checkpoint",
            self.checkpoint_bytes.clone(),
        );
        if coordinator {
            registry.register(
                "isoflow_runs_started",
                "Runs created, by tenant and integration",
                self.runs_started.clone(),
            );
            registry.register(
                "isoflow_runs_finished",
                "Runs ended, by tenant, integration and status (succeeded, failed, cancelled)",
                self.runs_finished.clone(),
            );
            registry.register(
                "isoflow_queue_depth",
                "Runs waiting for a slot on a worker",
                self.queue_depth.clone(),
            );
            registry.register(
                "isoflow_workers_connected",
                "Workers connected to this coordinator",
                self.workers_connected.clone(),
            );
            registry.register(
                "isoflow_assignments_revoked",
                "Assignments taken back from workers (the worker left, reconnected or gave them back)",
                self.assignments_revoked.clone(),
            );
            registry.register(
                "isoflow_credential_refreshes",
                "OAuth2 access token renewals asked of token endpoints, by outcome (succeeded, failed)",
                self.credential_refreshes.clone(),
            );
        }
        registry
    }

    pub fn run_started(&self, tenant: &str, integration: &str) {
        self.runs_started
            .get_or_create(&RunLabels {
                tenant: tenant.to_owned(),
                integration: integration.to_owned(),
            })
            .inc();
    }

    pub fn run_finished(&self, tenant: &str, integration: &str, status: &'static str) {
        self.runs_finished
            .get_or_create(&FinishedLabels {
                tenant: tenant.to_owned(),
                integration: integration.to_owned(),
                status: status.to_owned(),
            })
            .inc();
    }

    pub fn step(&self, kind: &'static str, runtime: &'static str, took: Duration) {
        self.step_duration
            .get_or_create(&StepLabels { kind, runtime })
            .observe(took.as_secs_f64());
    }

    pub fn sandbox(&self, runtime: &'static str, waited: Duration, created: Option<Duration>) {
        self.sandbox_queue_wait.observe(waited.as_secs_f64());
        if let Some(created) = created {
            self.isolate_create
                .get_or_create(&RuntimeLabels { runtime })
                .observe(created.as_secs_f64());
        }
    }

    pub fn checkpoint(&self, took: Duration, bytes: u64) {
        self.checkpoint_duration.observe(took.as_secs_f64());
        #[allow(clippy::cast_precision_loss)]
        self.checkpoint_bytes.observe(bytes as f64);
    }

    pub fn credential_refresh(&self, ok: bool) {
        let outcome = if ok { "succeeded" } else { "failed" };
        self.credential_refreshes
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }
}

/// What `/metrics` serves: a registry, and what to read just before.
pub struct Exposition {
    registry: Registry,
    refresh: Option<Arc<dyn Fn() + Send + Sync>>,
}

impl std::fmt::Debug for Exposition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exposition").finish_non_exhaustive()
    }
}

impl Exposition {
    pub fn new(registry: Registry, refresh: Option<Arc<dyn Fn() + Send + Sync>>) -> Self {
        Exposition { registry, refresh }
    }

    /// The OpenMetrics text of every metric.
    pub fn render(&self) -> String {
        if let Some(refresh) = &self.refresh {
            refresh();
        }
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}
