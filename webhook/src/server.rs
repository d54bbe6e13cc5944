//! Serving: the admission router over TLS, the admin router over plain HTTP.
//!
//! TLS connections are handled with tokio-rustls and hyper-util directly rather than
//! axum-server: that keeps the handshake under our own timeout, lets the certificate come
//! from [`crate::CertificateStore`] at every handshake, and gives a graceful drain with a
//! deadline, in a few dozen lines.
//!
//! Overload is shed, never queued: connections, requests in flight and requests with large
//! bodies in flight each have a bound, and what is beyond it is refused at once (a closed
//! connection, or `503 Service Unavailable` before the body is read). Every webhook fails
//! open, so the API server admits the object unmutated and the controller converges it; what
//! the process holds stays bounded by the bounds times the body limit.

use std::{future::Future, sync::Arc, time::Duration};

use axum::{
    Router,
    extract::{Request, State},
    http::{HeaderValue, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::{conn::auto, graceful::GracefulShutdown},
    service::TowerToHyperService,
};
use kube::core::{Status, admission::AdmissionResponse};
use rustls::ServerConfig;
use tokio::{
    net::TcpListener,
    sync::{OwnedSemaphorePermit, Semaphore},
};
use tokio_rustls::TlsAcceptor;

use crate::{DEFAULT_BODY_LIMIT, Error, Result, WebhookMetrics, encode_response};

/// Default bound on admission requests in flight (reading, decoding, reviewing, answering).
///
/// Generous for bursts: a ReplicaSet scaling up by hundreds of pods makes the API server call
/// us that many times at once, and each review takes well under a millisecond, so a burst
/// drains quickly; refusing it would leave those pods without the readiness gate.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 128;
/// Default bound on requests in flight whose body may be larger than
/// [`LARGE_BODY_THRESHOLD`] (or whose size is not declared). With the 8 MiB body limit this
/// holds large bodies to 8 × 8 MiB = 64 MiB, and small ones to 128 × 256 KiB = 32 MiB, within
/// the 256 MiB memory limit of deploy/. A Pod review is tens of KiB.
pub const DEFAULT_MAX_LARGE_IN_FLIGHT: usize = 8;
/// Default bound on open connections (TLS handshakes included). The API server keeps a few
/// long-lived connections per replica; thousands means something else is connecting.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// A request whose declared `Content-Length` is above this counts as large.
pub const LARGE_BODY_THRESHOLD: u64 = 256 * 1024;

/// The bounds and their permits, shared by every connection of one server.
struct Limits {
    in_flight: Arc<Semaphore>,
    large_in_flight: Arc<Semaphore>,
    metrics: WebhookMetrics,
}

impl Limits {
    /// Permits for one request, or the reason it is shed.
    fn admit(
        &self,
        declared_length: Option<u64>,
    ) -> Result<(OwnedSemaphorePermit, Option<OwnedSemaphorePermit>), &'static str> {
        let request = self
            .in_flight
            .clone()
            .try_acquire_owned()
            .map_err(|_| "in_flight")?;
        let large = match declared_length {
            Some(length) if length <= LARGE_BODY_THRESHOLD => None,
            _ => Some(
                self.large_in_flight
                    .clone()
                    .try_acquire_owned()
                    .map_err(|_| "large_in_flight")?,
            ),
        };
        self.metrics.in_flight.inc();
        Ok((request, large))
    }
}

/// A request's permits, shown in `webhook_admission_in_flight` while held.
struct InFlight {
    metrics: WebhookMetrics,
    _permits: (OwnedSemaphorePermit, Option<OwnedSemaphorePermit>),
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.metrics.in_flight.dec();
    }
}

/// Holds a request's permits until its response is produced, or sheds it at once.
async fn shed_overload(
    State(limits): State<Arc<Limits>>,
    request: Request,
    next: Next,
) -> Response {
    let declared_length = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    match limits.admit(declared_length) {
        Ok((request_permit, large_permit)) => {
            // Released when the response is produced or the request is abandoned.
            let _held = InFlight {
                metrics: limits.metrics.clone(),
                _permits: (request_permit, large_permit),
            };
            next.run(request).await
        }
        Err(reason) => {
            limits.metrics.record_shed(reason);
            tracing::debug!(reason, "admission request shed: the webhook is at capacity");
            overloaded(reason)
        }
    }
}

/// `503` with an AdmissionReview whose status says why; the API server treats any non-200 as a
/// failed call and applies the webhook's `failurePolicy` (ours: `Ignore`).
fn overloaded(reason: &'static str) -> Response {
    let message = format!(
        "the webhook is at capacity ({reason} bound reached); request refused without queueing, retry later"
    );
    let mut review = AdmissionResponse::invalid(&message);
    review.result = Status::failure(&message, "ServiceUnavailable").with_code(503);
    let body = encode_response(&review).unwrap_or_else(|_| message.into_bytes());
    let mut response = (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

/// The admission router served over TLS (HTTP/1.1 with keep-alive, or HTTP/2 by ALPN).
pub struct TlsServer {
    listener: TcpListener,
    router: Router,
    config: Arc<ServerConfig>,
    handshake_timeout: Duration,
    drain_timeout: Duration,
    max_in_flight: usize,
    max_large_in_flight: usize,
    max_connections: usize,
    metrics: WebhookMetrics,
}

impl TlsServer {
    pub fn new(listener: TcpListener, router: Router, config: Arc<ServerConfig>) -> Self {
        Self {
            listener,
            router,
            config,
            handshake_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(20),
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            max_large_in_flight: DEFAULT_MAX_LARGE_IN_FLIGHT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            metrics: WebhookMetrics::unregistered(),
        }
    }

    /// Where shed requests and connections are counted
    /// (`webhook_admission_shed_total{reason}`) and requests in flight are shown
    /// (`webhook_admission_in_flight`); unregistered metrics by default.
    pub fn metrics(mut self, metrics: WebhookMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Requests in flight beyond which new ones get `503` at once (default
    /// [`DEFAULT_MAX_IN_FLIGHT`]; at least 1).
    pub fn max_in_flight(mut self, requests: usize) -> Self {
        self.max_in_flight = requests.max(1);
        self
    }

    /// Requests with a large or undeclared body in flight beyond which new ones get `503`
    /// at once (default [`DEFAULT_MAX_LARGE_IN_FLIGHT`]; at least 1).
    pub fn max_large_in_flight(mut self, requests: usize) -> Self {
        self.max_large_in_flight = requests.max(1);
        self
    }

    /// Open connections beyond which new ones are closed as soon as they are accepted
    /// (default [`DEFAULT_MAX_CONNECTIONS`]; at least 1).
    pub fn max_connections(mut self, connections: usize) -> Self {
        self.max_connections = connections.max(1);
        self
    }

    /// The worst-case bytes of request bodies held at once under the configured bounds,
    /// with the default body limit.
    pub fn body_memory_bound(&self) -> u64 {
        let large = self.max_large_in_flight.min(self.max_in_flight) as u64;
        let small = self.max_in_flight as u64 - large;
        large * DEFAULT_BODY_LIMIT as u64 + small * LARGE_BODY_THRESHOLD
    }

    /// How long a client may take to complete the TLS handshake (default 10 s).
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// How long, after `shutdown`, in-flight requests may take to finish before their
    /// connections are closed (default 20 s, within a Pod's default 30 s grace period).
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }

    /// Accepts connections until `shutdown` completes, then stops accepting, lets in-flight
    /// requests finish (idle keep-alive connections are closed, HTTP/2 gets GOAWAY) and
    /// returns.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> Result<()> {
        let acceptor = TlsAcceptor::from(self.config);
        let limits = Arc::new(Limits {
            in_flight: Arc::new(Semaphore::new(self.max_in_flight)),
            large_in_flight: Arc::new(Semaphore::new(self.max_large_in_flight)),
            metrics: self.metrics.clone(),
        });
        let router = self
            .router
            .layer(middleware::from_fn_with_state(limits, shed_overload));
        let connections = Arc::new(Semaphore::new(self.max_connections));
        let graceful = GracefulShutdown::new();
        let builder = auto::Builder::new(TokioExecutor::new());
        let local = self
            .listener
            .local_addr()
            .map(|addr| addr.to_string())
            .unwrap_or_default();
        tracing::info!(address = %local, "serving admission webhook over TLS");
        tokio::pin!(shutdown);
        loop {
            let (tcp, peer) = tokio::select! {
                () = &mut shutdown => break,
                accepted = self.listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(err) => {
                        // Typically out of file descriptors: back off instead of spinning.
                        tracing::warn!(error = %err, "cannot accept a connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let Ok(connection_permit) = connections.clone().try_acquire_owned() else {
                self.metrics.record_shed("connections");
                tracing::debug!(%peer, "connection closed at once: too many open connections");
                drop(tcp);
                continue;
            };
            // Small request/response exchanges: do not wait for Nagle.
            let _ = tcp.set_nodelay(true);
            // Subscribed before the handshake, so a shutdown that starts mid-handshake still
            // reaches this connection once it is served.
            let watcher = graceful.watcher();
            let acceptor = acceptor.clone();
            let builder = builder.clone();
            let service = TowerToHyperService::new(router.clone());
            let handshake_timeout = self.handshake_timeout;
            tokio::spawn(async move {
                let _connection_permit = connection_permit;
                let tls = match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await
                {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(err)) => {
                        tracing::debug!(%peer, error = %err, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                };
                let connection = builder.serve_connection(TokioIo::new(tls), service);
                if let Err(err) = watcher.watch(connection).await {
                    tracing::debug!(%peer, error = %err, "connection ended with an error");
                }
            });
        }
        drop(self.listener);
        tracing::info!("admission webhook draining connections");
        if tokio::time::timeout(self.drain_timeout, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!(
                timeout_s = self.drain_timeout.as_secs(),
                "connections still open after the drain timeout; closing them"
            );
        }
        Ok(())
    }
}

/// Serves the admin router over plain HTTP until `shutdown` completes.
pub async fn serve_admin(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(Error::Serve)
}
