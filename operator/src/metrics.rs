//! Prometheus metrics: migrations by phase (read from the controller's cache at scrape time), Jobs
//! launched, retries, reconciliations, reconcile errors by kind and reconcile duration.

use std::sync::Arc;

use crd::{Phase, VMMigration};
use kube::runtime::reflector::Store;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Label of the error counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// [`crate::Error::metric_label`].
    pub error: String,
}

/// Label of the Job counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModeLabels {
    /// `migrate` or `cleanup`.
    pub mode: String,
}

/// The operator's metrics.
pub struct Metrics {
    registry: Registry,
    /// Reconciliations started.
    pub reconciliations: Counter,
    /// Failed reconciliations by error kind.
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    /// Reconcile duration in seconds.
    pub reconcile_duration: Histogram,
    /// Runner Jobs created, by mode.
    pub jobs_launched: Family<ModeLabels, Counter>,
    /// Retries scheduled.
    pub retries: Counter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// Counts the migrations in the controller's cache by phase on each scrape (`None` = not yet seen).
#[derive(Debug)]
struct PhaseCollector {
    store: Store<VMMigration>,
}

/// Every phase label value, so each series exists even at zero.
const PHASE_LABELS: [&str; 12] = [
    "Unknown",
    "Pending",
    "Validating",
    "Snapshotting",
    "Exporting",
    "Converting",
    "Transferring",
    "Importing",
    "Creating",
    "ValidatingTarget",
    "Ready",
    "Failed",
];

/// Migrations per phase label, in [`PHASE_LABELS`] order.
pub fn count_by_phase<'a>(phases: impl Iterator<Item = Option<Phase>> + 'a) -> [i64; 12] {
    let mut counts = [0i64; 12];
    for phase in phases {
        let label = phase.map(Phase::as_str).unwrap_or("Unknown");
        if let Some(i) = PHASE_LABELS.iter().position(|l| *l == label) {
            counts[i] += 1;
        }
    }
    counts
}

impl Collector for PhaseCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let counts = count_by_phase(
            self.store
                .state()
                .into_iter()
                .map(|m| m.status.as_ref().and_then(|s| s.phase)),
        );
        let mut family = encoder.encode_descriptor(
            "migrations",
            "VMMigrations by phase (registered under the registry prefix)",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (label, count) in PHASE_LABELS.iter().zip(counts) {
            let gauge = ConstGauge::new(count);
            gauge.encode(family.encode_family(&[("phase", *label)])?)?;
        }
        Ok(())
    }
}

impl Metrics {
    /// Registers every metric; `store` (the controller's VMMigration cache) feeds the phase gauge.
    pub fn new(store: Option<Store<VMMigration>>) -> Self {
        let mut registry = Registry::with_prefix("virtrigaud_operator");
        let reconciliations = Counter::default();
        let reconcile_errors = Family::<ErrorLabels, Counter>::default();
        let reconcile_duration = Histogram::new(
            [0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]
                .iter()
                .copied(),
        );
        let jobs_launched = Family::<ModeLabels, Counter>::default();
        let retries = Counter::default();
        registry.register(
            "reconciliations",
            "Reconciliations started",
            reconciliations.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Failed reconciliations by error kind",
            reconcile_errors.clone(),
        );
        registry.register_with_unit(
            "reconcile_duration",
            "Duration of one reconciliation",
            prometheus_client::registry::Unit::Seconds,
            reconcile_duration.clone(),
        );
        registry.register(
            "jobs_launched",
            "Runner Jobs created, by mode (migrate, cleanup)",
            jobs_launched.clone(),
        );
        registry.register(
            "retries",
            "Attempts scheduled after a transient failure",
            retries.clone(),
        );
        if let Some(store) = store {
            registry.register_collector(Box::new(PhaseCollector { store }));
        }
        Metrics {
            registry,
            reconciliations,
            reconcile_errors,
            reconcile_duration,
            jobs_launched,
            retries,
        }
    }

    /// Counts one launched Job.
    pub fn job_launched(&self, mode: &str) {
        self.jobs_launched
            .get_or_create(&ModeLabels { mode: mode.into() })
            .inc();
    }

    /// Counts one failed reconcile.
    pub fn reconcile_failed(&self, error: &crate::Error) {
        self.reconcile_errors
            .get_or_create(&ErrorLabels {
                error: error.metric_label().into(),
            })
            .inc();
    }

    /// The OpenMetrics text of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// Shared handle.
pub type SharedMetrics = Arc<Metrics>;

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::reflector;
    use kube::runtime::watcher;

    #[test]
    fn counts_phases() {
        let counts = count_by_phase(
            [
                None,
                Some(Phase::Pending),
                Some(Phase::Transferring),
                Some(Phase::Transferring),
                Some(Phase::Ready),
            ]
            .into_iter(),
        );
        assert_eq!(counts, [1, 1, 0, 0, 0, 0, 2, 0, 0, 0, 1, 0]);
    }

    #[test]
    fn renders_every_metric() {
        let (reader, mut writer) = reflector::store::<VMMigration>();
        let m: VMMigration = serde_json::from_value(serde_json::json!({
            "apiVersion": "infra.virtrigaud.io/v1beta1", "kind": "VMMigration",
            "metadata": {"name": "a", "namespace": "default"},
            "spec": {"sourceName": "vm", "targetProviderRef": {"name": "p"}, "targetName": "t",
                     "storage": {"type": "nfs", "path": "/x", "endpoint": "nfs"}},
            "status": {"phase": "Transferring"}
        }))
        .unwrap();
        writer.apply_watcher_event(&watcher::Event::Apply(m));
        let metrics = Metrics::new(Some(reader));
        metrics.job_launched("migrate");
        metrics.retries.inc();
        metrics.reconcile_failed(&crate::Error::MissingMetadata("uid"));
        let text = metrics.render();
        let lines: Vec<&str> = text.lines().collect();
        for line in [
            "virtrigaud_operator_migrations{phase=\"Transferring\"} 1",
            "virtrigaud_operator_migrations{phase=\"Ready\"} 0",
            "virtrigaud_operator_jobs_launched_total{mode=\"migrate\"} 1",
            "virtrigaud_operator_retries_total 1",
            "virtrigaud_operator_reconcile_errors_total{error=\"missing_metadata\"} 1",
            "# TYPE virtrigaud_operator_reconcile_duration_seconds histogram",
        ] {
            assert!(lines.contains(&line), "missing line {line:?} in\n{text}");
        }
    }
}
