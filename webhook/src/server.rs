//! Serving: the admission router over TLS, the admin router over plain HTTP.
//!
//! TLS connections are handled with tokio-rustls and hyper-util directly rather than
//! axum-server: that keeps the handshake under our own timeout, lets the certificate come
//! from [`crate::CertificateStore`] at every handshake, and gives a graceful drain with a
//! deadline, in a few dozen lines.

use std::{future::Future, sync::Arc, time::Duration};

use axum::Router;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::{conn::auto, graceful::GracefulShutdown},
    service::TowerToHyperService,
};
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::{Error, Result};

/// The admission router served over TLS (HTTP/1.1 with keep-alive, or HTTP/2 by ALPN).
pub struct TlsServer {
    listener: TcpListener,
    router: Router,
    config: Arc<ServerConfig>,
    handshake_timeout: Duration,
    drain_timeout: Duration,
}

impl TlsServer {
    pub fn new(listener: TcpListener, router: Router, config: Arc<ServerConfig>) -> Self {
        Self {
            listener,
            router,
            config,
            handshake_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(20),
        }
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
            // Small request/response exchanges: do not wait for Nagle.
            let _ = tcp.set_nodelay(true);
            // Subscribed before the handshake, so a shutdown that starts mid-handshake still
            // reaches this connection once it is served.
            let watcher = graceful.watcher();
            let acceptor = acceptor.clone();
            let builder = builder.clone();
            let service = TowerToHyperService::new(self.router.clone());
            let handshake_timeout = self.handshake_timeout;
            tokio::spawn(async move {
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
