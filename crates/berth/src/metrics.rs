//! Prometheus metrics, served at `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
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
        Metrics {
            registry,
            http_requests,
            operations,
            image_pulls,
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

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
