//! Prometheus metrics, served at `/metrics`: the Prometheus text format
//! (0.0.4) by default, which `promtool check metrics` reads, and OpenMetrics
//! to a scraper that asks for it (`Accept: application/openmetrics-text`).
//!
//! Names carry their unit (`_seconds`); durations are histograms; counters
//! get `_total` in the exposition (prometheus-client adds it to samples,
//! [`Metrics::encode_text`] to their `HELP` and `TYPE` lines).

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
    /// Pending deliveries per webhook.
    pub webhook_backlog: Family<WebhookLabels, Gauge>,
    /// Delivery attempts per webhook, by outcome (`delivered`, `failed`).
    pub webhook_deliveries: Family<WebhookOutcomeLabels, Counter>,
    /// Operation durations (started → finished), by kind and outcome.
    pub operation_seconds: Family<OperationLabels, Histogram>,
    pub reconcile_seconds: Histogram,
    pub watch_tick_seconds: Histogram,
    /// Outbox messages waiting to be published, as the relay last counted.
    pub outbox_backlog: Gauge,
    /// Times the Docker events stream was opened again after it broke.
    pub docker_events_reconnects: Counter,
    /// Clients connected to `GET /v1/stream`.
    pub stream_clients: Gauge,
    /// Stream connections closed because their client fell behind what
    /// the in-memory feed holds (they resume from the database).
    pub stream_dropped_clients: Counter,
}

/// Buckets of operation durations: a stop takes milliseconds, a start with
/// a pull and a health gate can take minutes.
const OPERATION_BUCKETS: [f64; 15] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];
/// Buckets of a reconcile pass or a watch tick: milliseconds, seconds when
/// the engine or a registry is slow.
const PASS_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookLabels {
    pub webhook: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookOutcomeLabels {
    pub webhook: String,
    pub outcome: String,
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
        let webhook_backlog = Family::<WebhookLabels, Gauge>::default();
        registry.register(
            "webhook_backlog",
            "Webhook deliveries waiting to be delivered, per webhook",
            webhook_backlog.clone(),
        );
        let webhook_deliveries = Family::<WebhookOutcomeLabels, Counter>::default();
        registry.register(
            "webhook_deliveries",
            "Webhook delivery attempts, per webhook and outcome",
            webhook_deliveries.clone(),
        );
        let operation_seconds = Family::<OperationLabels, Histogram>::new_with_constructor(
            operation_histogram as fn() -> Histogram,
        );
        registry.register(
            "operation_duration_seconds",
            "Time from an operation's start to its end, by kind and outcome",
            operation_seconds.clone(),
        );
        let reconcile_seconds = Histogram::new(PASS_BUCKETS);
        registry.register(
            "reconcile_duration_seconds",
            "Time one reconcile pass took, acting included",
            reconcile_seconds.clone(),
        );
        let watch_tick_seconds = Histogram::new(PASS_BUCKETS);
        registry.register(
            "image_watch_tick_duration_seconds",
            "Time one image watch tick took, registry lookups included",
            watch_tick_seconds.clone(),
        );
        let outbox_backlog = Gauge::default();
        registry.register(
            "outbox_backlog",
            "Outbox messages waiting to be published to Redis, as the relay last counted",
            outbox_backlog.clone(),
        );
        let docker_events_reconnects = Counter::default();
        registry.register(
            "docker_events_reconnects",
            "Times the Docker events stream was opened again after it broke",
            docker_events_reconnects.clone(),
        );
        let stream_clients = Gauge::default();
        registry.register(
            "stream_clients",
            "Clients connected to the change stream",
            stream_clients.clone(),
        );
        let stream_dropped_clients = Counter::default();
        registry.register(
            "stream_dropped_clients",
            "Change-stream clients disconnected for falling behind the in-memory feed",
            stream_dropped_clients.clone(),
        );
        Metrics {
            stream_clients,
            stream_dropped_clients,
            operation_seconds,
            reconcile_seconds,
            watch_tick_seconds,
            outbox_backlog,
            docker_events_reconnects,
            webhook_backlog,
            webhook_deliveries,
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

fn operation_histogram() -> Histogram {
    Histogram::new(OPERATION_BUCKETS)
}

impl Metrics {
    /// Counts a finished operation and observes how long it took
    /// (`seconds`; a clock that went backwards counts as 0).
    pub fn operation_finished(&self, kind: &str, outcome: &str, seconds: f64) {
        let labels = OperationLabels {
            kind: kind.to_string(),
            outcome: outcome.to_string(),
        };
        self.operations.get_or_create(&labels).inc();
        self.operation_seconds
            .get_or_create(&labels)
            .observe(seconds.max(0.0));
    }

    /// Counts `op` once it has finished, with its duration from its start
    /// and finish times (an operation without a finish time counts 0 s).
    pub fn operation_done(&self, op: &berth_core::operation::Operation) {
        let finished = op.finished_at_ms.unwrap_or(op.started_at_ms);
        let seconds = (finished - op.started_at_ms) as f64 / 1000.0;
        self.operation_finished(op.kind.as_str(), op.outcome.as_str(), seconds);
    }

    pub fn outbox_backlog_set(&self, pending: u64) {
        self.outbox_backlog
            .set(i64::try_from(pending).unwrap_or(i64::MAX));
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

    pub fn webhook_backlog_set(&self, webhook: &str, pending: u64) {
        self.webhook_backlog
            .get_or_create(&WebhookLabels {
                webhook: webhook.to_string(),
            })
            .set(i64::try_from(pending).unwrap_or(i64::MAX));
    }

    pub fn webhook_attempt(&self, webhook: &str, outcome: &str) {
        self.webhook_deliveries
            .get_or_create(&WebhookOutcomeLabels {
                webhook: webhook.to_string(),
                outcome: outcome.to_string(),
            })
            .inc();
    }

    /// The OpenMetrics text exposition (`application/openmetrics-text`).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// The Prometheus text format 0.0.4 (`text/plain; version=0.0.4`).
    pub fn encode_text(&self) -> String {
        openmetrics_to_text(&self.encode())
    }
}

/// Rewrites prometheus-client's OpenMetrics output as the Prometheus text
/// format: a counter family `x` has samples `x_total`, so its `HELP` and
/// `TYPE` lines name `x_total`; `# UNIT` and `# EOF` do not exist there.
/// Gauges and histograms read the same in both.
pub fn openmetrics_to_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len() + 16 * counters.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        if let Some((prefix, rest)) = meta {
            let name = rest.split(' ').next().unwrap_or_default();
            if counters.contains(name) {
                out.push_str(prefix);
                out.push_str(name);
                out.push_str("_total");
                out.push_str(&rest[name.len()..]);
                out.push('\n');
                continue;
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_format_names_counters_with_total_and_has_no_eof() {
        let m = Metrics::default();
        m.operation_finished("start", "success", 0.3);
        m.docker_events_reconnects.inc();
        let text = m.encode_text();
        assert!(
            text.contains("# TYPE berth_operations_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "# HELP berth_operations_total Operations finished, by kind and outcome.\n"
            ),
            "{text}"
        );
        assert!(text.contains("berth_operations_total{kind=\"start\",outcome=\"success\"} 1\n"));
        assert!(
            text.contains("berth_docker_events_reconnects_total 1\n"),
            "{text}"
        );
        assert!(text.contains("# TYPE berth_operation_duration_seconds histogram\n"));
        assert!(text.contains(
            "berth_operation_duration_seconds_bucket{le=\"0.5\",kind=\"start\",outcome=\"success\"} 1\n"
        ), "{text}");
        assert!(text.contains("# TYPE berth_outbox_backlog gauge\n"));
        assert!(!text.contains("# EOF"));
        assert!(m.encode().ends_with("# EOF\n"));
    }

    #[test]
    fn a_negative_duration_is_observed_as_zero() {
        let m = Metrics::default();
        m.operation_finished("stop", "failed", -1.0);
        let text = m.encode_text();
        assert!(
            text.contains(
                "berth_operation_duration_seconds_sum{kind=\"stop\",outcome=\"failed\"} 0.0\n"
            ),
            "{text}"
        );
    }
}
