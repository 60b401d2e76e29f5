//! Prometheus metrics, served at `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: String,
    /// The matched route pattern, not the raw path (bounded cardinality).
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    pub kind: String,
    pub outcome: String,
}

pub struct Metrics {
    registry: Registry,
    pub http_requests: Family<RequestLabels, Counter>,
    pub operations: Family<OperationLabels, Counter>,
    pub image_pulls: Counter,
    pub reconcile_passes: Counter,
    /// Unix time (s) of the last finished reconcile pass.
    pub reconcile_last_run: Gauge,
    pub reconcile_actions: Family<ActionLabels, Counter>,
    pub docker_events: Counter,
    pub outbox_published: Counter,
    pub stream_jobs: Family<OperationLabels, Counter>,
    pub plugin_sweeps: Counter,
    /// Unix time (s) of the last finished plugin sweep.
    pub plugin_sweep_last_run: Gauge,
    pub plugin_updates_queued: Counter,
    pub plugin_sweep_failures: Counter,
    /// State-store batches, by outcome (`committed`, `aborted`).
    pub store_batches: Family<OutcomeLabels, Counter>,
    pub store_batch_seconds: Histogram,
    /// Readiness verdicts computed, by impact (`none`, `degraded`, `blocked`).
    pub readiness_checks: Family<ImpactLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ImpactLabels {
    pub impact: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabels {
    pub action: String,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("berth");
        let http_requests = Family::<RequestLabels, Counter>::default();
        let operations = Family::<OperationLabels, Counter>::default();
        let image_pulls = Counter::default();
        registry.register(
            "http_requests",
            "HTTP requests served",
            http_requests.clone(),
        );
        registry.register(
            "operations",
            "Operations finished, by kind and outcome",
            operations.clone(),
        );
        registry.register(
            "image_pulls",
            "Images pulled from a registry",
            image_pulls.clone(),
        );
        let reconcile_passes = Counter::default();
        registry.register(
            "reconcile_passes",
            "Reconcile passes finished",
            reconcile_passes.clone(),
        );
        let reconcile_last_run = Gauge::default();
        registry.register(
            "reconcile_last_run_timestamp_seconds",
            "When the last reconcile pass finished",
            reconcile_last_run.clone(),
        );
        let reconcile_actions = Family::<ActionLabels, Counter>::default();
        registry.register(
            "reconcile_actions",
            "Reconcile actions carried out",
            reconcile_actions.clone(),
        );
        let docker_events = Counter::default();
        registry.register(
            "docker_events",
            "Docker container events received",
            docker_events.clone(),
        );
        let outbox_published = Counter::default();
        registry.register(
            "outbox_published",
            "Outbox messages published to Redis",
            outbox_published.clone(),
        );
        let stream_jobs = Family::<OperationLabels, Counter>::default();
        registry.register(
            "stream_jobs",
            "Stream jobs answered, by kind and outcome",
            stream_jobs.clone(),
        );
        let plugin_sweeps = Counter::default();
        registry.register(
            "plugin_sweeps",
            "Plugin drift sweeps finished",
            plugin_sweeps.clone(),
        );
        let plugin_sweep_last_run = Gauge::default();
        registry.register(
            "plugin_sweep_last_run_timestamp_seconds",
            "When the last plugin drift sweep finished",
            plugin_sweep_last_run.clone(),
        );
        let plugin_updates_queued = Counter::default();
        registry.register(
            "plugin_updates_queued",
            "Plugin updates queued or moved forward by sweeps",
            plugin_updates_queued.clone(),
        );
        let plugin_sweep_failures = Counter::default();
        registry.register(
            "plugin_sweep_failures",
            "Distinct plugin sources and tracks a sweep could not resolve",
            plugin_sweep_failures.clone(),
        );
        let store_batches = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "store_batches",
            "State-store batches written, by outcome",
            store_batches.clone(),
        );
        let store_batch_seconds = Histogram::new([
            0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
        ]);
        registry.register(
            "store_batch_commit_seconds",
            "Time to commit one state-store batch durably",
            store_batch_seconds.clone(),
        );
        let readiness_checks = Family::<ImpactLabels, Counter>::default();
        registry.register(
            "readiness_checks",
            "Readiness verdicts computed, by impact",
            readiness_checks.clone(),
        );
        Metrics {
            store_batches,
            store_batch_seconds,
            readiness_checks,
            registry,
            plugin_sweeps,
            plugin_sweep_last_run,
            plugin_updates_queued,
            plugin_sweep_failures,
            http_requests,
            operations,
            image_pulls,
            reconcile_passes,
            reconcile_last_run,
            reconcile_actions,
            docker_events,
            outbox_published,
            stream_jobs,
        }
    }
}

impl Metrics {
    pub fn operation_finished(&self, kind: &str, outcome: &str) {
        self.operations
            .get_or_create(&OperationLabels {
                kind: kind.to_string(),
                outcome: outcome.to_string(),
            })
            .inc();
    }

    pub fn plugin_sweep_finished(
        &self,
        report: &crate::services::plugins::SweepReport,
        finished_ms: i64,
    ) {
        self.plugin_sweeps.inc();
        self.plugin_sweep_last_run.set(finished_ms / 1000);
        self.plugin_updates_queued.inc_by(report.queued as u64);
        self.plugin_sweep_failures
            .inc_by(report.failed.len() as u64);
    }

    pub fn store_batch_committed(&self, seconds: f64) {
        self.store_batches
            .get_or_create(&OutcomeLabels {
                outcome: "committed".to_string(),
            })
            .inc();
        self.store_batch_seconds.observe(seconds);
    }

    pub fn store_batch_failed(&self) {
        self.store_batches
            .get_or_create(&OutcomeLabels {
                outcome: "aborted".to_string(),
            })
            .inc();
    }

    pub fn readiness_observed(&self, impact: berth_core::store::Impact) {
        self.readiness_checks
            .get_or_create(&ImpactLabels {
                impact: impact.as_str().to_string(),
            })
            .inc();
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
