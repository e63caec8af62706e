//! Prometheus metrics: admission requests by operation and result, and their latency.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of a request counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// CREATE, UPDATE, DELETE, CONNECT, or `unknown` for an unreadable body.
    pub operation: String,
    /// allowed, denied or invalid.
    pub result: String,
}

/// Labels of the latency histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    pub operation: String,
}

type HistogramFamily = Family<OperationLabels, Histogram, fn() -> Histogram>;

/// The webhook's metrics and the registry that renders them.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: HistogramFamily,
}

fn latency_histogram() -> Histogram {
    // 0.25 ms .. ~4 s.
    Histogram::new(exponential_buckets(0.000_25, 2.0, 15))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("virtrigaud_webhook");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "admission_requests",
            "Admission requests answered, by operation and result",
            requests.clone(),
        );
        let latency: HistogramFamily = Family::new_with_constructor(latency_histogram);
        registry.register(
            "admission_duration_seconds",
            "Time to answer an admission request",
            latency.clone(),
        );
        Metrics {
            registry,
            requests,
            latency,
        }
    }
}

impl Metrics {
    /// Records one answered request.
    pub fn observe(&self, operation: &str, result: &str, elapsed: Duration) {
        self.requests
            .get_or_create(&RequestLabels {
                operation: operation.into(),
                result: result.into(),
            })
            .inc();
        self.latency
            .get_or_create(&OperationLabels {
                operation: operation.into(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts_and_latency() {
        let metrics = Metrics::default();
        metrics.observe("CREATE", "denied", Duration::from_millis(2));
        metrics.observe("CREATE", "denied", Duration::from_millis(3));
        let text = metrics.render();
        assert!(
            text.contains(
                r#"virtrigaud_webhook_admission_requests_total{operation="CREATE",result="denied"} 2"#
            ),
            "{text}"
        );
        assert!(text.contains(
            r#"virtrigaud_webhook_admission_duration_seconds_count{operation="CREATE"} 2"#
        ));
    }
}
