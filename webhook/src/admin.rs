//! The admin endpoints, served over plain HTTP on a separate port so that probes and metric
//! scrapes need no certificate and never compete with admission traffic for TLS.

use std::sync::Arc;

use axum::{
    Router,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use prometheus_client::{encoding::text::encode, registry::Registry};

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type Readiness = Arc<dyn Fn() -> bool + Send + Sync>;

/// Builds the admin [`Router`]: `/healthz` (the process answers), `/readyz` (the caller's
/// readiness function, e.g. "a serving certificate is loaded"), `/metrics` (OpenMetrics text
/// of the registry).
pub struct AdminRouter {
    registry: Arc<Registry>,
    ready: Readiness,
}

impl AdminRouter {
    pub fn new(registry: Arc<Registry>, ready: impl Fn() -> bool + Send + Sync + 'static) -> Self {
        Self {
            registry,
            ready: Arc::new(ready),
        }
    }

    pub fn into_router(self) -> Router {
        let registry = self.registry;
        let ready = self.ready;
        Router::new()
            .route("/healthz", get(|| async { "ok\n" }))
            .route(
                "/readyz",
                get(move || {
                    let ready = ready.clone();
                    async move {
                        if ready() {
                            (StatusCode::OK, "ok\n")
                        } else {
                            (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                        }
                    }
                }),
            )
            .route(
                "/metrics",
                get(move || {
                    let registry = registry.clone();
                    async move { metrics(&registry) }
                }),
            )
    }
}

fn metrics(registry: &Registry) -> Response {
    let mut body = String::new();
    match encode(&mut body, registry) {
        Ok(()) => ([(header::CONTENT_TYPE, OPENMETRICS)], body).into_response(),
        Err(err) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode metrics: {err}\n"),
        )
            .into_response(),
    }
}
