//! Admission webhook transport: it serves Kubernetes `AdmissionReview` v1 requests over TLS
//! and hands each decoded request to an [`AdmissionHandler`] chosen by the URL path.
//!
//! The crate knows nothing of what is being admitted. It owns the wire: body limits,
//! decoding with typed errors, response encoding (base64 JSON patch), per-request tracing and
//! metrics, the rustls server (TLS 1.2 and 1.3 only) with certificate hot reload and checks
//! (expired, not yet valid, key mismatch and wrong names are refused and reported), load
//! shedding (bounded connections and requests in flight, `503` beyond), the plain-HTTP admin
//! endpoints, and certificate generation for development and self-managed in-cluster mode.
//!
//! ```no_run
//! # async fn example() -> Result<(), inplace_upgrade_webhook::Error> {
//! use std::{sync::Arc, time::Duration};
//! use inplace_upgrade_webhook::{
//!     AdminRouter, AdmissionRequest, AdmissionResponse, AdmissionRouter, CertificateFiles,
//!     CertificateStore, Error, TlsServer, WebhookMetrics, serve_admin,
//! };
//! use prometheus_client::registry::Registry;
//! use tokio::{net::TcpListener, sync::watch};
//!
//! let mut registry = Registry::default();
//! let metrics = WebhookMetrics::new(&mut registry);
//! let router = AdmissionRouter::new(metrics.clone())
//!     .handler("/mutate-pods", |req: &AdmissionRequest| AdmissionResponse::from(req))
//!     .into_router();
//!
//! let (stop, stopped) = watch::channel(false);
//! let shutdown = move || {
//!     let mut stopped = stopped.clone();
//!     async move { let _ = stopped.wait_for(|stop| *stop).await; }
//! };
//! let store = CertificateStore::new(metrics.clone());
//! let files = CertificateFiles::in_dir("/var/run/secrets/webhook-tls");
//! tokio::spawn(store.clone().poll_files(files, Duration::from_secs(5), shutdown()));
//!
//! let ready = store.clone();
//! let admin = AdminRouter::new(Arc::new(registry), move || ready.is_loaded()).into_router();
//! let admin_listener = TcpListener::bind("0.0.0.0:8080").await
//!     .map_err(|source| Error::Bind { address: "0.0.0.0:8080".into(), source })?;
//! tokio::spawn(serve_admin(admin_listener, admin, shutdown()));
//!
//! let listener = TcpListener::bind("0.0.0.0:8443").await
//!     .map_err(|source| Error::Bind { address: "0.0.0.0:8443".into(), source })?;
//! TlsServer::new(listener, router, store.server_config()?)
//!     .metrics(metrics)
//!     .serve(shutdown())
//!     .await?;
//! # drop(stop);
//! # Ok(()) }
//! ```

mod admin;
pub mod certs;
mod error;
mod metrics;
mod review;
mod router;
mod server;
mod tls;

pub use admin::AdminRouter;
pub use error::{Error, Result};
pub use metrics::WebhookMetrics;
pub use review::{Decoded, decode_review, decode_review_as, encode_response};
pub use router::{AdmissionHandler, AdmissionRouter, DEFAULT_BODY_LIMIT};
pub use server::{
    DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_IN_FLIGHT, DEFAULT_MAX_LARGE_IN_FLIGHT,
    LARGE_BODY_THRESHOLD, TlsServer, serve_admin,
};
pub use tls::{CertificateFiles, CertificateStore, ReloadOutcome, server_config};

pub use kube::core::admission::{AdmissionResponse, Operation};

/// The request a handler receives, its objects decoded as `K`: untyped JSON (with metadata
/// parsed) by default, or the typed object a handler asks for (see [`AdmissionHandler`]).
pub type AdmissionRequest<K = kube::core::DynamicObject> =
    kube::core::admission::AdmissionRequest<K>;
