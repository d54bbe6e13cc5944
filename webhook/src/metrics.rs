use std::sync::atomic::AtomicI64;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RequestLabels {
    pub route: String,
    pub operation: String,
    /// `allowed`, `denied` or `error`.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct LatencyLabels {
    pub route: String,
    pub operation: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ShedLabels {
    /// The bound that was reached: `in_flight`, `large_in_flight` or `connections`.
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct CertificateErrorLabels {
    /// `expired`, `not_yet_valid`, `key_mismatch`, `missing_name`, `unreadable` or `invalid`.
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ReloadLabels {
    /// `success` or `error`.
    pub result: &'static str,
}

/// Label values known in advance, exported at 0 from the start: a series that first appears
/// at 1 hides its first increase from `rate()` and `increase()`, and so from the alerts in
/// deploy/monitoring (and a family with no series is not exported at all).
const SHED_REASONS: [&str; 3] = ["in_flight", "large_in_flight", "connections"];
const CERTIFICATE_ERROR_REASONS: [&str; 6] = [
    "expired",
    "not_yet_valid",
    "key_mismatch",
    "missing_name",
    "unreadable",
    "invalid",
];
const RELOAD_RESULTS: [&str; 2] = ["success", "error"];

fn latency_histogram() -> Histogram {
    // Fine buckets below a millisecond: the target is a sub-millisecond p99 for a mutation.
    Histogram::new([
        0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
        2.5,
    ])
}

/// The transport's metrics, registered under the `webhook_` prefix in a caller's registry.
/// Cheap to clone; every clone updates the same series.
#[derive(Clone)]
pub struct WebhookMetrics {
    pub(crate) requests: Family<RequestLabels, Counter>,
    pub(crate) latency: Family<LatencyLabels, Histogram, fn() -> Histogram>,
    pub(crate) certificate_reloads: Family<ReloadLabels, Counter>,
    pub(crate) certificate_not_after: Gauge<i64, AtomicI64>,
    pub(crate) certificate_errors: Family<CertificateErrorLabels, Counter>,
    pub(crate) certificate_valid: Gauge<i64, AtomicI64>,
    pub(crate) shed: Family<ShedLabels, Counter>,
    pub(crate) in_flight: Gauge<i64, AtomicI64>,
}

impl WebhookMetrics {
    /// Registers the metrics in `registry`:
    /// - `webhook_admission_requests_total{route,operation,result}`
    /// - `webhook_admission_duration_seconds{route,operation}` (histogram; decode, handler
    ///   and encode, excluding the network)
    /// - `webhook_certificate_reloads_total{result}`
    /// - `webhook_certificate_not_after_seconds` (Unix time the serving certificate expires;
    ///   0 while none is loaded)
    /// - `webhook_certificate_errors_total{reason}` (certificates refused or gone bad:
    ///   `expired`, `not_yet_valid`, `key_mismatch`, `missing_name`, `unreadable`, `invalid`)
    /// - `webhook_certificate_valid` (1 while the served certificate is within its validity
    ///   period, else 0)
    /// - `webhook_admission_shed_total{reason}` (requests answered 503, or connections closed,
    ///   at once because a bound was reached: `in_flight`, `large_in_flight`, `connections`)
    /// - `webhook_admission_in_flight` (admission requests being served now)
    pub fn new(registry: &mut Registry) -> Self {
        let metrics = Self {
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            certificate_reloads: Family::default(),
            certificate_not_after: Gauge::default(),
            certificate_errors: Family::default(),
            certificate_valid: Gauge::default(),
            shed: Family::default(),
            in_flight: Gauge::default(),
        };
        let registry = registry.sub_registry_with_prefix("webhook");
        registry.register(
            "admission_requests",
            "AdmissionReview requests by route, operation and result (allowed, denied, error)",
            metrics.requests.clone(),
        );
        registry.register(
            "admission_duration_seconds",
            "Time to decode, review and encode one AdmissionReview",
            metrics.latency.clone(),
        );
        registry.register(
            "certificate_reloads",
            "Serving certificate loads by result; an error keeps the previous certificate",
            metrics.certificate_reloads.clone(),
        );
        registry.register(
            "certificate_not_after_seconds",
            "Unix time at which the serving certificate expires (0 while none is loaded)",
            metrics.certificate_not_after.clone(),
        );
        registry.register(
            "certificate_errors",
            "Serving certificates refused or gone bad, by reason; a refused one never replaces the one served",
            metrics.certificate_errors.clone(),
        );
        registry.register(
            "certificate_valid",
            "1 while the served certificate is within its validity period, else 0",
            metrics.certificate_valid.clone(),
        );
        registry.register(
            "admission_shed",
            "Admission requests answered 503 (or connections closed) at once because a bound was reached",
            metrics.shed.clone(),
        );
        registry.register(
            "admission_in_flight",
            "Admission requests being served now",
            metrics.in_flight.clone(),
        );
        for reason in SHED_REASONS {
            metrics.shed.get_or_create(&ShedLabels { reason }).inc_by(0);
        }
        for reason in CERTIFICATE_ERROR_REASONS {
            metrics
                .certificate_errors
                .get_or_create(&CertificateErrorLabels { reason })
                .inc_by(0);
        }
        for result in RELOAD_RESULTS {
            metrics
                .certificate_reloads
                .get_or_create(&ReloadLabels { result })
                .inc_by(0);
        }
        metrics
    }

    /// Metrics that are not registered anywhere, for callers that do not export them.
    pub fn unregistered() -> Self {
        Self::new(&mut Registry::default())
    }

    pub(crate) fn record_shed(&self, reason: &'static str) {
        self.shed.get_or_create(&ShedLabels { reason }).inc();
    }

    pub(crate) fn record_certificate_error(&self, reason: &'static str) {
        self.certificate_errors
            .get_or_create(&CertificateErrorLabels { reason })
            .inc();
    }

    pub(crate) fn record_reload(&self, result: &'static str) {
        self.certificate_reloads
            .get_or_create(&ReloadLabels { result })
            .inc();
    }
}

impl std::fmt::Debug for WebhookMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookMetrics").finish_non_exhaustive()
    }
}
