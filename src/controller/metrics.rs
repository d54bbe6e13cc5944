//! Prometheus metrics of the controller (served on the admin port's `/metrics`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub error: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriteLabels {
    pub verb: &'static str,
    pub resource: &'static str,
}

#[derive(Clone)]
pub struct Metrics {
    /// Pods whose upgrade ended, by result (`succeeded`, `rolled_back`, `failed`).
    pub pods_upgraded: Family<ResultLabels, Counter>,
    /// From the image patch to the container running the target and Ready.
    pub pod_upgrade_duration: Histogram,
    /// Workloads with an upgrade in progress.
    pub workloads_in_progress: Gauge,
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    /// Writes to the API server, by verb and resource.
    pub api_writes: Family<WriteLabels, Counter>,
    /// 1 while this replica holds the leader Lease.
    pub leader: Gauge,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Metrics {
            pods_upgraded: Family::default(),
            pod_upgrade_duration: Histogram::new(exponential_buckets(0.05, 2.0, 14)),
            workloads_in_progress: Gauge::default(),
            reconcile_errors: Family::default(),
            api_writes: Family::default(),
            leader: Gauge::default(),
        };
        let r = registry.sub_registry_with_prefix("inplace_upgrade");
        r.register(
            "pods_upgraded",
            "Pods whose in-place upgrade ended, by result",
            m.pods_upgraded.clone(),
        );
        r.register(
            "pod_upgrade_duration_seconds",
            "Time from a pod's image patch to its restarted container running the target and Ready",
            m.pod_upgrade_duration.clone(),
        );
        r.register(
            "workloads_in_progress",
            "Workloads with an in-place upgrade in progress",
            m.workloads_in_progress.clone(),
        );
        r.register(
            "reconcile_errors",
            "Reconcile errors by kind",
            m.reconcile_errors.clone(),
        );
        r.register(
            "api_writes",
            "Writes to the Kubernetes API by verb and resource",
            m.api_writes.clone(),
        );
        r.register(
            "leader",
            "1 while this replica holds the controller Lease",
            m.leader.clone(),
        );
        m
    }

    pub fn write(&self, verb: &'static str, resource: &'static str) {
        self.api_writes
            .get_or_create(&WriteLabels { verb, resource })
            .inc();
    }
}
