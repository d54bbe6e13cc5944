//! Serving the admission handlers over the transport crate, in three modes:
//!
//! - **given files** ([`CertificateSource::Files`]): serve `tls.crt`/`tls.key` from a directory
//!   (cert-manager's Secret mounted as a volume), re-read on an interval so kubelet's `..data`
//!   symlink swap is picked up without a restart;
//! - **self-managed** ([`CertificateSource::SelfManaged`]): one CA and serving certificate in a
//!   Secret, created or renewed by whichever replica wins a resourceVersion-guarded write (no
//!   Lease: the guarded write is the election, and a loser serves the winner's certificates),
//!   and served by every replica from the mounted Secret with the transport's hot reload (the
//!   same code path as cert-manager's Secret, and no watch permission on Secrets); the
//!   caBundle is applied to our webhook configurations;
//! - **local** ([`run_local`]): the controller and the webhook in one process, with a CA of its
//!   own, registered by URL so a local control plane calls it.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use inplace_upgrade_webhook::certs::{self, CertificatePem, Renewal, SubjectAltNames};
use inplace_upgrade_webhook::{
    AdmissionRequest, AdmissionRouter, CertificateFiles, CertificateStore, TlsServer,
    WebhookMetrics,
};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, PostParams};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use super::configuration::{self, ConfigurationOptions, Endpoint};
use super::{
    ClusterView, MUTATE_PODS_PATH, Settings, VALIDATE_POLICIES_PATH, VALIDATE_WORKLOADS_PATH,
    mutate, validate,
};

/// Field manager of the webhook configurations we apply.
pub const FIELD_MANAGER: &str = "inplace-upgrade-webhook";
/// CA lifetime for generated CAs.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Serving certificate lifetime for generated certificates.
pub const SERVING_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// Renew a serving certificate when less than this remains.
pub const SERVING_RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);
/// Renew the CA when less than this remains (more than a serving certificate's lifetime, so a
/// serving certificate never outlives its CA).
pub const CA_RENEW_BEFORE: Duration = Duration::from_secs(400 * 24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Transport(#[from] inplace_upgrade_webhook::Error),
    #[error("{action}: {source}")]
    Kube {
        action: String,
        #[source]
        source: kube::Error,
    },
    #[error(
        "--webhook-url {url:?} must be https://HOST:PORT (the API server only calls webhooks over TLS)"
    )]
    WebhookUrl { url: String },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Secret {secret}: key {key} is missing or not UTF-8 PEM")]
    SecretKey { secret: String, key: String },
    #[error(transparent)]
    Preflight(#[from] crate::controller::preflight::PreflightError),
}

fn kube_error(action: impl Into<String>) -> impl FnOnce(kube::Error) -> ServeError {
    let action = action.into();
    move |source| ServeError::Kube { action, source }
}

/// The admission router: the three handlers at their paths, over `view`.
pub fn admission_router<V: ClusterView + Send + Sync + 'static>(
    view: Arc<V>,
    settings: Settings,
    metrics: WebhookMetrics,
) -> axum::Router {
    let settings = Arc::new(settings);
    let (v1, s1) = (view.clone(), settings.clone());
    let (v2, s2) = (view, settings);
    AdmissionRouter::new(metrics)
        .handler(MUTATE_PODS_PATH, mutate::PodMutator::new(v1, s1))
        .handler(
            VALIDATE_WORKLOADS_PATH,
            move |r: &AdmissionRequest<validate::WorkloadObject>| {
                validate::validate_workload_or_namespace(r, &*v2, &s2)
            },
        )
        .handler(VALIDATE_POLICIES_PATH, validate::validate_policy)
        .into_router()
}

/// Where the serving certificate comes from.
#[derive(Clone, Debug)]
pub enum CertificateSource {
    /// `tls.crt`/`tls.key` in a directory, re-read every `reload_interval`.
    Files {
        dir: PathBuf,
        reload_interval: Duration,
    },
    /// A Secret this process keeps valid (see the module doc), plus the configurations.
    SelfManaged(SelfManaged),
}

#[derive(Clone, Debug)]
pub struct SelfManaged {
    pub namespace: String,
    pub secret: String,
    /// The Service the API server dials; its DNS names go into the serving certificate.
    pub service: String,
    pub service_port: Option<i32>,
    /// How often the Secret's certificates are checked for renewal.
    pub check_interval: Duration,
    /// Where the Secret is mounted: what every replica serves.
    pub dir: PathBuf,
    /// How often the mounted files are re-read.
    pub reload_interval: Duration,
}

/// Starts keeping the certificate of `source` loaded in `store`, until `shutdown`.
pub async fn start_certificates(
    client: &kube::Client,
    source: &CertificateSource,
    store: Arc<CertificateStore>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let (dir, reload_interval) = match source {
        CertificateSource::Files {
            dir,
            reload_interval,
        } => (dir, *reload_interval),
        CertificateSource::SelfManaged(sm) => {
            // A certificate for other names would fail every API server call: refuse it.
            store.expect_names(SubjectAltNames::for_service(&sm.service, &sm.namespace));
            // Served at once from what was written or read, so the first replica does not wait
            // for kubelet to fill the mount; the mounted files then carry every renewal.
            let pair = ensure_secret(client, sm).await?;
            store.load_pem(
                pair.serving.cert_pem.as_bytes(),
                pair.serving.key_pem.as_bytes(),
            )?;
            apply_configurations(client, sm, &pair.ca_bundle).await?;
            tokio::spawn(keep_secret(client.clone(), sm.clone()));
            (&sm.dir, sm.reload_interval)
        }
    };
    let files = CertificateFiles::in_dir(dir);
    // A refusal is logged (error level, naming the file and the reason) and counted inside,
    // readiness stays false until a good pair arrives, and the poll below keeps trying.
    let _ = store.reload_files(&files);
    tokio::spawn(store.poll_files(files, reload_interval, shutdown));
    Ok(())
}

/// What the Secret holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretCertificates {
    pub ca: CertificatePem,
    /// `ca.crt`: the CA, plus the previous CA while it is still valid after a CA renewal, so
    /// replicas still serving the previous certificate keep being trusted.
    pub ca_bundle: String,
    pub serving: CertificatePem,
}

/// The pure part of self-management: given what the Secret holds now (if anything), what it
/// must hold (`None`: keep it as is).
pub fn renew(
    current: Option<&SecretCertificates>,
    names: &SubjectAltNames,
    now: SystemTime,
) -> Result<Option<SecretCertificates>, inplace_upgrade_webhook::Error> {
    let (ca, bundle) = match current {
        Some(c)
            if matches!(
                certs::check_ca(&c.ca, CA_RENEW_BEFORE, now),
                Renewal::NotNeeded { .. }
            ) =>
        {
            (c.ca.clone(), c.ca_bundle.clone())
        }
        previous => {
            let ca = certs::generate_ca("inplace-upgrade webhook CA", CA_VALIDITY)?;
            let mut bundle = ca.cert_pem.clone();
            if let Some(p) = previous
                && matches!(
                    certs::check_ca(&p.ca, Duration::ZERO, now),
                    Renewal::NotNeeded { .. }
                )
            {
                bundle.push_str(&p.ca.cert_pem);
            }
            (ca, bundle)
        }
    };
    if let Some(c) = current
        && c.ca == ca
        && matches!(
            certs::check_serving_certificate(
                &ca.cert_pem,
                &c.serving,
                names,
                SERVING_RENEW_BEFORE,
                now
            ),
            Renewal::NotNeeded { .. }
        )
    {
        return Ok(None);
    }
    let common_name = names
        .dns_names
        .first()
        .cloned()
        .unwrap_or_else(|| "inplace-upgrade-webhook".to_owned());
    let serving = certs::generate_serving_certificate(&ca, &common_name, names, SERVING_VALIDITY)?;
    Ok(Some(SecretCertificates {
        ca,
        ca_bundle: bundle,
        serving,
    }))
}

fn secret_data(secret: &Secret, name: &str) -> Result<SecretCertificates, ServeError> {
    let get = |key: &str| -> Result<String, ServeError> {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .and_then(|b| String::from_utf8(b.0.clone()).ok())
            .ok_or_else(|| ServeError::SecretKey {
                secret: name.to_owned(),
                key: key.to_owned(),
            })
    };
    Ok(SecretCertificates {
        ca: CertificatePem {
            cert_pem: get("ca.crt")?,
            key_pem: get("ca.key")?,
        },
        ca_bundle: get("ca.crt")?,
        serving: CertificatePem {
            cert_pem: get("tls.crt")?,
            key_pem: get("tls.key")?,
        },
    })
}

fn secret_object(sm: &SelfManaged, c: &SecretCertificates) -> Secret {
    let bytes = |s: &str| ByteString(s.as_bytes().to_vec());
    Secret {
        metadata: ObjectMeta {
            name: Some(sm.secret.clone()),
            namespace: Some(sm.namespace.clone()),
            ..ObjectMeta::default()
        },
        type_: Some("kubernetes.io/tls".to_owned()),
        data: Some(
            [
                ("ca.crt", bytes(&c.ca_bundle)),
                ("ca.key", bytes(&c.ca.key_pem)),
                ("tls.crt", bytes(&c.serving.cert_pem)),
                ("tls.key", bytes(&c.serving.key_pem)),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
        ),
        ..Secret::default()
    }
}

/// Makes the Secret hold a valid CA and serving certificate and returns what it holds.
///
/// Every write is guarded: `create` fails with 409 when another replica created it first, and
/// `replace` carries the resourceVersion read, so it fails with 409 when another replica
/// renewed in between. The loser re-reads and serves the winner's certificates: however many
/// replicas start at once, there is one CA.
pub async fn ensure_secret(
    client: &kube::Client,
    sm: &SelfManaged,
) -> Result<SecretCertificates, ServeError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), &sm.namespace);
    let names = SubjectAltNames::for_service(&sm.service, &sm.namespace);
    let what = format!("Secret {}/{}", sm.namespace, sm.secret);
    for _ in 0..5 {
        let existing = api
            .get_opt(&sm.secret)
            .await
            .map_err(kube_error(format!("cannot read {what}")))?;
        let current = existing.as_ref().and_then(|s| secret_data(s, &what).ok());
        let Some(next) = renew(current.as_ref(), &names, SystemTime::now())? else {
            if let Some(c) = current {
                return Ok(c);
            }
            continue;
        };
        let mut object = secret_object(sm, &next);
        let written = match existing {
            None => api.create(&PostParams::default(), &object).await,
            Some(old) => {
                object.metadata.resource_version = old.metadata.resource_version;
                api.replace(&sm.secret, &PostParams::default(), &object)
                    .await
            }
        };
        match written {
            Ok(_) => {
                tracing::info!(secret = %what, "wrote a new webhook serving certificate");
                return Ok(next);
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {
                tracing::info!(secret = %what, "another replica wrote the certificates first; using theirs");
            }
            Err(e) => return Err(kube_error(format!("cannot write {what}"))(e)),
        }
    }
    Err(ServeError::SecretKey {
        secret: what,
        key: "(conflicting writers: gave up after 5 attempts; check who else writes it)".into(),
    })
}

async fn apply_configurations(
    client: &kube::Client,
    sm: &SelfManaged,
    ca_bundle: &str,
) -> Result<(), ServeError> {
    let options = ConfigurationOptions {
        endpoint: Endpoint::Service {
            namespace: sm.namespace.clone(),
            name: sm.service.clone(),
            port: sm.service_port,
        },
        ca_bundle: Some(ca_bundle.as_bytes().to_vec()),
        own_namespace: sm.namespace.clone(),
        cert_manager_certificate: None,
    };
    configuration::apply(client, &options, FIELD_MANAGER)
        .await
        .map_err(kube_error("cannot apply the webhook configurations"))
}

/// Renews the Secret's certificates on an interval, and keeps the caBundle in step.
async fn keep_secret(client: kube::Client, sm: SelfManaged) {
    let mut ticker = tokio::time::interval(sm.check_interval);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        match ensure_secret(&client, &sm).await {
            Ok(pair) => {
                if let Err(e) = apply_configurations(&client, &sm, &pair.ca_bundle).await {
                    tracing::warn!(error = %e, "cannot update the caBundle; retrying");
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot renew the webhook certificates; retrying"),
        }
    }
}

/// Writes `files` into `dir` the way kubelet updates a mounted Secret: a new timestamped
/// directory, a `..data` symlink renamed over the old one atomically, and `name -> ..data/name`
/// symlinks. A reader by path sees either every old file or every new one.
pub fn write_secret_dir(dir: &Path, files: &[(&str, &str)]) -> Result<(), ServeError> {
    let err = |path: &Path| {
        let path = path.to_owned();
        move |source| ServeError::Write { path, source }
    };
    std::fs::create_dir_all(dir).map_err(err(dir))?;
    let stamp = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let version = format!("..{stamp}");
    let version_dir = dir.join(&version);
    std::fs::create_dir(&version_dir).map_err(err(&version_dir))?;
    for (name, contents) in files {
        let path = version_dir.join(name);
        std::fs::write(&path, contents).map_err(err(&path))?;
    }
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&version, &tmp).map_err(err(&tmp))?;
    let data = dir.join("..data");
    let previous = std::fs::read_link(&data).ok();
    std::fs::rename(&tmp, &data).map_err(err(&data))?;
    for (name, _) in files {
        let link = dir.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(Path::new("..data").join(name), &link)
                .map_err(err(&link))?;
        }
    }
    if let Some(previous) = previous.filter(|p| p != Path::new(&version)) {
        let _ = std::fs::remove_dir_all(dir.join(previous));
    }
    Ok(())
}

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
    pub controller: crate::controller::Settings,
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
    pub controller: crate::controller::Handle,
    /// What the admission handlers read.
    pub view: Arc<super::LiveView>,
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
    let created = crate::controller::preflight::ensure(&client, &namespace).await?;
    if created.namespace {
        tracing::info!(%namespace, "created the controller's namespace (its leader Lease lives there)");
    }
    if created.crd {
        tracing::info!(
            crd = crate::controller::preflight::CRD_NAME,
            "installed the InPlaceUpgradePolicy CRD"
        );
    }
    let handle = crate::controller::start(client.clone(), options.controller, &mut registry);
    let view = Arc::new(super::LiveView::start(
        &client,
        handle.cache.clone(),
        &namespace,
    ));
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
    let router = admission_router(view.clone(), settings, metrics.clone());
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
