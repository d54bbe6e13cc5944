//! `inplace-upgrade run`: the controller and the webhook in one process, with a CA of its own,
//! registered by URL so a local control plane calls it.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use inplace_upgrade_webhook::certs::{self, SubjectAltNames};
use inplace_upgrade_webhook::{CertificateStore, TlsServer, WebhookMetrics};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use super::certificates::{CertificateSource, start_certificates, write_secret_dir};
use super::view::LiveView;
use super::{CA_VALIDITY, FIELD_MANAGER, SERVING_VALIDITY, ServeError, kube_error};
use crate::admission::configuration::{self, ConfigurationOptions, Endpoint};
use crate::admission::{self, ClusterView, Settings};
use crate::controller;

/// Options of the local mode.
#[derive(Clone, Debug)]
pub struct LocalOptions {
    /// `https://HOST:PORT` the API server calls.
    pub webhook_url: String,
    /// Address to listen on (default: the URL's, when its host is an IP address).
    pub listen: Option<SocketAddr>,
    /// Where to keep the CA and serving certificate (kubelet's Secret layout, re-read every
    /// second so they can be rotated by hand). `None`: in memory only.
    pub cert_dir: Option<PathBuf>,
    /// The controller's settings (its namespace is also excluded from the webhooks).
    pub controller: controller::Settings,
    /// Plain-HTTP /metrics, /healthz, /readyz (ready once the caches synced). `None`: none.
    pub admin_addr: Option<SocketAddr>,
}

/// The host and port of an `https://HOST:PORT` URL.
pub fn parse_webhook_url(url: &str) -> Result<(String, u16), ServeError> {
    let bad = || ServeError::WebhookUrl {
        url: url.to_owned(),
    };
    let rest = url.strip_prefix("https://").ok_or_else(bad)?;
    let authority = rest.trim_end_matches('/');
    if authority.contains('/') {
        return Err(bad());
    }
    let (host, port) = authority.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(bad());
    }
    Ok((host.to_owned(), port))
}

/// `inplace-upgrade run`: creates the controller's namespace and the policy CRD when missing
/// (so it works on a fresh cluster), starts the controller, serves the webhook at
/// `webhook_url` with a CA of its own and registers URL-based configurations with that
/// caBundle; returns when `shutdown` completes and in-flight admissions are answered.
///
/// The configurations stay registered after it returns: every webhook fails open
/// (`failurePolicy: Ignore`), so a stopped process only means new pods are not mutated until
/// the next start, and the controller upgrades them in place meanwhile.
pub async fn run_local(
    client: kube::Client,
    options: LocalOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    start_local(client, options).await?.serve(shutdown).await
}

/// The local mode, started: the controller runs, the configurations are registered and the
/// socket is bound (the API server's connections wait in its backlog until [`Self::serve`]).
pub struct LocalWebhook {
    /// The controller's handle (leadership, caches).
    pub controller: controller::Handle,
    /// What the admission handlers read.
    pub view: Arc<LiveView>,
    server: TlsServer,
    stop: tokio::sync::watch::Sender<bool>,
}

impl LocalWebhook {
    /// Serves admissions until `shutdown`, answers those in flight, then releases the
    /// controller's Lease.
    pub async fn serve(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let stop = self.stop;
        let served = self
            .server
            .serve(async move {
                shutdown.await;
                let _ = stop.send(true);
            })
            .await;
        // Hand the controller's Lease over at once rather than after it expires.
        self.controller.step_down().await;
        served?;
        Ok(())
    }
}

/// Starts the local mode; see [`run_local`].
pub async fn start_local(
    client: kube::Client,
    options: LocalOptions,
) -> Result<LocalWebhook, ServeError> {
    let mut registry = Registry::default();
    let (host, port) = parse_webhook_url(&options.webhook_url)?;
    let ip: Option<IpAddr> = host.parse().ok();
    let listen = options
        .listen
        .unwrap_or_else(|| SocketAddr::new(ip.unwrap_or(IpAddr::from([0, 0, 0, 0])), port));
    let names = match ip {
        Some(ip) => SubjectAltNames::default().with_ip_address(ip),
        None => SubjectAltNames::default().with_dns_name(host.clone()),
    };
    let ca = certs::generate_ca("inplace-upgrade local webhook CA", CA_VALIDITY)?;
    let serving = certs::generate_serving_certificate(&ca, &host, &names, SERVING_VALIDITY)?;

    let metrics = WebhookMetrics::new(&mut registry);
    let store = CertificateStore::new(metrics.clone());
    store.expect_names(names.clone());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    match &options.cert_dir {
        Some(dir) => {
            write_secret_dir(
                dir,
                &[
                    ("ca.crt", &ca.cert_pem),
                    ("ca.key", &ca.key_pem),
                    ("tls.crt", &serving.cert_pem),
                    ("tls.key", &serving.key_pem),
                ],
            )?;
            let source = CertificateSource::Files {
                dir: dir.clone(),
                reload_interval: Duration::from_secs(1),
            };
            start_certificates(&client, &source, store.clone(), stopped()).await?;
        }
        None => {
            store.load_pem(serving.cert_pem.as_bytes(), serving.key_pem.as_bytes())?;
        }
    }

    let namespace = options.controller.namespace.clone();
    // The laptop mode works on a fresh cluster: what the controller needs is made here.
    let created = controller::preflight::ensure(&client, &namespace).await?;
    if created.namespace {
        tracing::info!(%namespace, "created the controller's namespace (its leader Lease lives there)");
    }
    if created.crd {
        tracing::info!(
            crd = controller::preflight::CRD_NAME,
            "installed the InPlaceUpgradePolicy CRD"
        );
    }
    let handle = controller::start(client.clone(), options.controller, &mut registry);
    let view = Arc::new(LiveView::start(&client, handle.cache.clone(), &namespace));
    if let Some(addr) = options.admin_addr {
        let ready = (view.clone(), store.clone());
        let admin = inplace_upgrade_webhook::AdminRouter::new(Arc::new(registry), move || {
            ready.0.synced() && ready.1.is_loaded()
        })
        .into_router();
        let listener = TcpListener::bind(addr).await.map_err(|source| {
            inplace_upgrade_webhook::Error::Bind {
                address: addr.to_string(),
                source,
            }
        })?;
        tokio::spawn(inplace_upgrade_webhook::serve_admin(
            listener,
            admin,
            stopped(),
        ));
    }
    let settings = Settings {
        controller_namespace: namespace.clone(),
    };
    let router = admission::router(view.clone(), settings, metrics.clone());
    let listener =
        TcpListener::bind(listen)
            .await
            .map_err(|source| inplace_upgrade_webhook::Error::Bind {
                address: listen.to_string(),
                source,
            })?;
    let config_options = ConfigurationOptions {
        endpoint: Endpoint::Url(format!("https://{}", url_authority(&host, port))),
        ca_bundle: Some(ca.cert_pem.clone().into_bytes()),
        own_namespace: namespace,
        cert_manager_certificate: None,
    };
    configuration::apply(&client, &config_options, FIELD_MANAGER)
        .await
        .map_err(kube_error("cannot register the webhook configurations"))?;
    tracing::info!(url = %options.webhook_url, "webhook configurations registered");
    let server = TlsServer::new(listener, router, store.server_config()?)
        .metrics(metrics)
        .drain_timeout(Duration::from_secs(10));
    Ok(LocalWebhook {
        controller: handle,
        view,
        server,
        stop: stop_tx,
    })
}

fn url_authority(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_urls_are_parsed() {
        assert_eq!(
            parse_webhook_url("https://127.0.0.1:9443").expect("ok"),
            ("127.0.0.1".into(), 9443)
        );
        assert_eq!(
            parse_webhook_url("https://[::1]:8443/").expect("ok"),
            ("::1".into(), 8443)
        );
        assert_eq!(
            parse_webhook_url("https://localhost:1").expect("ok"),
            ("localhost".into(), 1)
        );
        for bad in [
            "http://127.0.0.1:1",
            "https://127.0.0.1",
            "https://h:1/path",
            "https://:1",
        ] {
            assert!(parse_webhook_url(bad).is_err(), "{bad}");
        }
    }
}
