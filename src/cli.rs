//! Command-line interface: global logging flags and one variant per working subcommand.
//!
//! Every flag has an `env =` fallback (`INPLACE_UPGRADE_*`) so the same binary is configured
//! by flags on a laptop and by environment in a Deployment. A new subcommand is a new
//! [`Command`] variant with its own flattened `Args` struct and a `run` arm.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};
use inplace_upgrade::controller;

#[derive(Debug, Parser)]
#[command(
    name = "inplace-upgrade",
    version,
    about = "Upgrade container images of running pods in place"
)]
pub struct Cli {
    #[command(flatten)]
    pub log: LogArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Plain,
    Json,
}

#[derive(Debug, Args)]
pub struct LogArgs {
    /// Log line format.
    #[arg(
        long,
        global = true,
        env = "INPLACE_UPGRADE_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Plain
    )]
    pub log_format: LogFormat,
    /// Log filter in `tracing` EnvFilter syntax, e.g. `info` or `inplace_upgrade=debug,kube=warn`
    /// (default: `info`; `warn` for `demo`, whose own output is the show).
    #[arg(long, global = true, env = "INPLACE_UPGRADE_LOG_LEVEL")]
    pub log_level: Option<String>,
}

/// How to reach the API server.
#[derive(Debug, Args)]
pub struct ClientArgs {
    /// Kubeconfig file. Without it: `KUBECONFIG`, `~/.kube/config`, then the in-cluster
    /// ServiceAccount.
    #[arg(long, env = "INPLACE_UPGRADE_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context (default: its current context).
    #[arg(long, env = "INPLACE_UPGRADE_CONTEXT")]
    pub context: Option<String>,
}

impl ClientArgs {
    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        let options = kube::config::KubeConfigOptions {
            context: self.context.clone(),
            ..Default::default()
        };
        let config = match &self.kubeconfig {
            Some(path) => {
                let kubeconfig = kube::config::Kubeconfig::read_from(path)
                    .with_context(|| format!("cannot read kubeconfig {}", path.display()))?;
                kube::Config::from_custom_kubeconfig(kubeconfig, &options)
                    .await
                    .with_context(|| format!("cannot use kubeconfig {}", path.display()))?
            }
            None if self.context.is_some() => kube::Config::from_kubeconfig(&options)
                .await
                .context("cannot load the kubeconfig context")?,
            None => kube::Config::infer().await.context(
                "no kubeconfig given and none found (KUBECONFIG, ~/.kube/config, in-cluster)",
            )?,
        };
        kube::Client::try_from(config).context("cannot build a Kubernetes client")
    }
}

#[derive(Debug, Args)]
pub struct ControllerArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Namespace the controller runs in: its leader Lease lives there, and a policy with an
    /// empty namespaceSelector never reaches it.
    #[arg(long, env = "POD_NAMESPACE", default_value = "inplace-upgrade-system")]
    pub namespace: String,
    /// This replica's identity in the leader Lease and in Events (default: `POD_NAME`, else
    /// the host name and process ID).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Plain-HTTP admin endpoints: /metrics, /healthz, /readyz (ready once the caches synced).
    #[arg(
        long,
        env = "INPLACE_UPGRADE_ADMIN_ADDR",
        default_value = "0.0.0.0:8080"
    )]
    pub admin_addr: SocketAddr,
    /// Workloads reconciled at once.
    #[arg(long, env = "INPLACE_UPGRADE_CONCURRENCY", default_value_t = 8)]
    pub concurrency: usize,
    /// Seconds the leader Lease stays valid without renewal (a successor takes over after
    /// this long when the leader dies; the leader renews within 2/3 of it).
    #[arg(
        long,
        env = "INPLACE_UPGRADE_LEASE_DURATION_SECONDS",
        default_value_t = 15,
        value_parser = clap::value_parser!(u64).range(3..=300)
    )]
    pub lease_duration_seconds: u64,
}

/// The admission webhook's serving socket and its certificates.
#[derive(Debug, Args)]
pub struct WebhookArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Namespace the webhook and the controller run in: the controller's Lease, the
    /// self-managed Secret and the Service live there, and it is never sent to the webhook.
    #[arg(long, env = "POD_NAMESPACE", default_value = "inplace-upgrade-system")]
    pub namespace: String,
    /// HTTPS address the API server calls.
    #[arg(
        long,
        env = "INPLACE_UPGRADE_WEBHOOK_ADDR",
        default_value = "0.0.0.0:8443"
    )]
    pub listen: SocketAddr,
    /// Plain-HTTP admin endpoints: /metrics, /healthz, /readyz (ready once a certificate is
    /// loaded and the caches synced).
    #[arg(
        long,
        env = "INPLACE_UPGRADE_ADMIN_ADDR",
        default_value = "0.0.0.0:8080"
    )]
    pub admin_addr: SocketAddr,
    /// Directory holding tls.crt and tls.key (a mounted kubernetes.io/tls Secret), re-read
    /// every few seconds so a rotation needs no restart.
    #[arg(
        long,
        env = "INPLACE_UPGRADE_CERT_DIR",
        default_value = "/etc/inplace-upgrade/tls"
    )]
    pub cert_dir: PathBuf,
    /// Keep the CA and serving certificate in --secret ourselves and write the caBundle into
    /// our webhook configurations. Without it: serve the files in --cert-dir as they are
    /// (cert-manager).
    #[arg(long, env = "INPLACE_UPGRADE_SELF_MANAGED_CERTS")]
    pub self_managed_certs: bool,
    /// The Secret holding the certificates (mounted at --cert-dir).
    #[arg(
        long,
        env = "INPLACE_UPGRADE_CERT_SECRET",
        default_value = "inplace-upgrade-webhook-tls"
    )]
    pub secret: String,
    /// The Service in front of the webhook (names in the serving certificate, and the
    /// configurations' service reference).
    #[arg(
        long,
        env = "INPLACE_UPGRADE_SERVICE",
        default_value = "inplace-upgrade-webhook"
    )]
    pub service: String,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub controller: ControllerArgs,
    /// `https://HOST:PORT` at which the API server reaches this process; URL-based webhook
    /// configurations are registered with it.
    #[arg(long, env = "INPLACE_UPGRADE_WEBHOOK_URL")]
    pub webhook_url: String,
    /// Address to listen on for admission (default: the URL's address when its host is an IP).
    #[arg(long, env = "INPLACE_UPGRADE_WEBHOOK_ADDR")]
    pub listen: Option<SocketAddr>,
    /// Keep the generated CA and serving certificate in this directory (kubelet's Secret
    /// layout, re-read every second). Default: in memory only.
    #[arg(long, env = "INPLACE_UPGRADE_CERT_DIR")]
    pub cert_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct CertsArgs {
    /// Directory to write ca.crt, ca.key, tls.crt and tls.key into (created if missing; keys
    /// are written with mode 0600). Never commit them.
    #[arg(long)]
    pub out: PathBuf,
    /// DNS names of the serving certificate (repeatable), e.g. `inplace-upgrade-webhook.inplace-upgrade-system.svc`.
    #[arg(long = "dns")]
    pub dns_names: Vec<String>,
    /// IP addresses of the serving certificate (repeatable), e.g. `127.0.0.1`.
    #[arg(long = "ip")]
    pub ip_addresses: Vec<std::net::IpAddr>,
    /// Serving certificate lifetime in days.
    #[arg(long, default_value_t = 365)]
    pub days: u64,
}

#[derive(Debug, Subcommand)]
pub enum Manifests {
    /// The Mutating- and ValidatingWebhookConfigurations for an in-cluster Service (what
    /// deploy/ holds), without caBundle (the webhook or cert-manager fills it in).
    Webhooks(ManifestsWebhooksArgs),
    /// The MutatingAdmissionPolicy that adds the readiness gate inside the API server, without
    /// the webhook (admissionregistration.k8s.io/v1beta1: Kubernetes 1.34-1.35 with the
    /// MutatingAdmissionPolicy feature gate and API enabled; README, "The readiness gate without
    /// the webhook").
    ReadinessGatePolicy(ManifestsReadinessGateArgs),
}

#[derive(Debug, Args)]
pub struct ManifestsReadinessGateArgs {
    /// The controller's namespace (left out, like kube-system).
    #[arg(long, default_value = "inplace-upgrade-system")]
    pub namespace: String,
}

#[derive(Debug, Args)]
pub struct ManifestsWebhooksArgs {
    #[arg(long, default_value = "inplace-upgrade-system")]
    pub namespace: String,
    #[arg(long, default_value = "inplace-upgrade-webhook")]
    pub service: String,
    /// Service port (default 443).
    #[arg(long)]
    pub port: Option<i32>,
    /// `<namespace>/<Certificate>`: add cert-manager's `cert-manager.io/inject-ca-from`.
    #[arg(long)]
    pub cert_manager_certificate: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the InPlaceUpgradePolicy CustomResourceDefinition as YAML (what deploy/crds holds).
    Crd,
    /// Run the controller: upgrade the pods of annotated workloads in place, one replica at a
    /// time (or as the governing policy allows), until SIGINT or SIGTERM.
    Controller(ControllerArgs),
    /// Serve the admission webhook (pod mutation, annotation and policy validation) until
    /// SIGINT or SIGTERM.
    Webhook(WebhookArgs),
    /// Run the controller AND serve the webhook in one process, registering URL-based webhook
    /// configurations with a CA of its own (a local control plane, a laptop).
    Run(RunArgs),
    /// Generate a CA and a serving certificate signed by it (development, or to load into a
    /// Secret yourself).
    Certs(CertsArgs),
    /// Print generated manifests as YAML.
    #[command(subcommand)]
    Manifests(Manifests),
    /// Show the main job end to end: start a local control plane (or use --kubeconfig), deploy
    /// a mesh-like app, upgrade its istio-proxy sidecars in place and print it live.
    #[cfg(feature = "demo")]
    Demo(crate::demo::DemoArgs),
}

impl Command {
    pub fn run(self) -> anyhow::Result<()> {
        match self {
            Command::Crd => {
                let yaml = inplace_upgrade::policy::crd_yaml()?;
                std::io::stdout().lock().write_all(yaml.as_bytes())?;
                Ok(())
            }
            Command::Controller(args) => runtime()?.block_on(run_controller(args)),
            Command::Webhook(args) => runtime()?.block_on(run_webhook(args)),
            Command::Run(args) => runtime()?.block_on(run_both(args)),
            Command::Certs(args) => write_certs(&args),
            #[cfg(feature = "demo")]
            Command::Demo(args) => {
                let runtime = runtime()?;
                let mut env = None;
                let result = runtime.block_on(crate::demo::run(args, &mut env));
                // Stop the controller's watches before the control plane they watch.
                runtime.shutdown_timeout(std::time::Duration::from_secs(2));
                drop(env);
                result
            }
            Command::Manifests(Manifests::Webhooks(args)) => {
                use inplace_upgrade::admission::configuration::{
                    ConfigurationOptions, Endpoint, webhook_configurations_yaml,
                };
                let yaml = webhook_configurations_yaml(&ConfigurationOptions {
                    endpoint: Endpoint::Service {
                        namespace: args.namespace.clone(),
                        name: args.service,
                        port: args.port,
                    },
                    ca_bundle: None,
                    own_namespace: args.namespace,
                    cert_manager_certificate: args.cert_manager_certificate,
                })?;
                std::io::stdout().lock().write_all(yaml.as_bytes())?;
                Ok(())
            }
            Command::Manifests(Manifests::ReadinessGatePolicy(args)) => {
                let yaml = inplace_upgrade::admission::configuration::readiness_gate_policy_yaml(
                    &args.namespace,
                )?;
                std::io::stdout().lock().write_all(yaml.as_bytes())?;
                Ok(())
            }
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")
}

/// A shutdown future that can be awaited from several tasks: resolves once SIGINT or SIGTERM
/// arrived.
fn shared_shutdown() -> impl Fn() -> futures::future::BoxFuture<'static, ()> + Clone {
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = tx.send(true);
    });
    move || {
        let mut rx = rx.clone();
        Box::pin(async move {
            let _ = rx.wait_for(|stop| *stop).await;
        })
    }
}

async fn run_webhook(args: WebhookArgs) -> anyhow::Result<()> {
    use inplace_upgrade::{admission, serve};
    let client = args.client.client().await?;
    let shutdown = shared_shutdown();
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = inplace_upgrade_webhook::WebhookMetrics::new(&mut registry);
    let store = inplace_upgrade_webhook::CertificateStore::new(metrics.clone());
    let source = if args.self_managed_certs {
        serve::CertificateSource::SelfManaged(serve::SelfManaged {
            namespace: args.namespace.clone(),
            secret: args.secret,
            service: args.service,
            service_port: None,
            check_interval: std::time::Duration::from_secs(3600),
            dir: args.cert_dir,
            reload_interval: std::time::Duration::from_secs(5),
        })
    } else {
        serve::CertificateSource::Files {
            dir: args.cert_dir,
            reload_interval: std::time::Duration::from_secs(5),
        }
    };
    serve::start_certificates(&client, &source, store.clone(), shutdown()).await?;

    // What admission reads, and nothing else: no pods, EndpointSlices or PDBs.
    let cache = inplace_upgrade::cache::Cache::new(inplace_upgrade::cache::Role::Webhook);
    for driver in cache.watch(&client) {
        tokio::spawn(driver);
    }
    let view = Arc::new(serve::LiveView::start(&client, cache, &args.namespace));
    let settings = admission::Settings {
        controller_namespace: args.namespace,
    };
    let router = admission::router(view.clone(), settings, metrics.clone());

    let ready_store = store.clone();
    let admin = inplace_upgrade_webhook::AdminRouter::new(Arc::new(registry), move || {
        use inplace_upgrade::admission::ClusterView as _;
        ready_store.is_loaded() && view.synced()
    })
    .into_router();
    let admin_listener = tokio::net::TcpListener::bind(args.admin_addr)
        .await
        .with_context(|| format!("cannot listen on {}", args.admin_addr))?;
    tokio::spawn(inplace_upgrade_webhook::serve_admin(
        admin_listener,
        admin,
        shutdown(),
    ));
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    inplace_upgrade_webhook::TlsServer::new(listener, router, store.server_config()?)
        .metrics(metrics)
        .serve(shutdown())
        .await?;
    tracing::info!("shutting down");
    Ok(())
}

async fn run_both(args: RunArgs) -> anyhow::Result<()> {
    use inplace_upgrade::serve;
    let client = args.controller.client.client().await?;
    let options = serve::LocalOptions {
        webhook_url: args.webhook_url,
        listen: args.listen,
        cert_dir: args.cert_dir,
        controller: controller::Settings {
            namespace: args.controller.namespace,
            identity: args.controller.identity.unwrap_or_else(default_identity),
            concurrency: args.controller.concurrency.max(1),
            lease_duration: std::time::Duration::from_secs(args.controller.lease_duration_seconds),
        },
        admin_addr: Some(args.controller.admin_addr),
    };
    serve::run_local(client, options, shutdown_signal()).await?;
    tracing::info!("shut down; the webhook configurations stay registered and fail open");
    Ok(())
}

fn write_certs(args: &CertsArgs) -> anyhow::Result<()> {
    use inplace_upgrade::serve;
    use inplace_upgrade_webhook::certs::{self, SubjectAltNames};
    use std::os::unix::fs::OpenOptionsExt as _;
    let names = SubjectAltNames {
        dns_names: args.dns_names.clone(),
        ip_addresses: args.ip_addresses.clone(),
    };
    if names.dns_names.is_empty() && names.ip_addresses.is_empty() {
        anyhow::bail!(
            "give the names the API server will dial: --dns NAME (e.g. inplace-upgrade-webhook.inplace-upgrade-system.svc) and/or --ip IP (e.g. 127.0.0.1)"
        );
    }
    let ca = certs::generate_ca("inplace-upgrade webhook CA", serve::CA_VALIDITY)?;
    let common_name = names
        .dns_names
        .first()
        .cloned()
        .or_else(|| names.ip_addresses.first().map(ToString::to_string))
        .unwrap_or_default();
    let serving = certs::generate_serving_certificate(
        &ca,
        &common_name,
        &names,
        std::time::Duration::from_secs(args.days.max(1) * 24 * 3600),
    )?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    for (name, contents, mode) in [
        ("ca.crt", &ca.cert_pem, 0o644),
        ("ca.key", &ca.key_pem, 0o600),
        ("tls.crt", &serving.cert_pem, 0o644),
        ("tls.key", &serving.key_pem, 0o600),
    ] {
        let path = args.out.join(name);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&path)
            .with_context(|| format!("cannot write {}", path.display()))?;
        // `mode` applies only to a new file: an existing key file keeps no looser mode.
        file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))
            .and_then(|()| file.write_all(contents.as_bytes()))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    eprintln!(
        "wrote ca.crt, ca.key, tls.crt, tls.key to {} (keys are secret: never commit them)",
        args.out.display()
    );
    Ok(())
}

fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{}-{}", host.trim(), std::process::id())
}

async fn run_controller(args: ControllerArgs) -> anyhow::Result<()> {
    let client = args.client.client().await?;
    let mut registry = prometheus_client::registry::Registry::default();
    let settings = controller::Settings {
        namespace: args.namespace,
        identity: args.identity.unwrap_or_else(default_identity),
        concurrency: args.concurrency.max(1),
        lease_duration: std::time::Duration::from_secs(args.lease_duration_seconds),
    };
    // Stop at once, in one line, when the namespace or the CRD is missing: without them the
    // controller would only retry (no leader, a cache that never syncs).
    controller::preflight::check(&client, &settings.namespace)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    tracing::info!(identity = %settings.identity, namespace = %settings.namespace, "starting the controller");
    let handle = controller::start(client, settings, &mut registry);
    let ready = handle.clone();
    let admin =
        inplace_upgrade_webhook::AdminRouter::new(Arc::new(registry), move || ready.is_synced())
            .into_router();
    let listener = tokio::net::TcpListener::bind(args.admin_addr)
        .await
        .with_context(|| format!("cannot listen on {}", args.admin_addr))?;
    tracing::info!(address = %args.admin_addr, "admin endpoints listening");
    inplace_upgrade_webhook::serve_admin(listener, admin, shutdown_signal()).await?;
    tracing::info!("shutting down");
    handle.step_down().await;
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn log_flags_are_global() {
        let cli = Cli::try_parse_from(["inplace-upgrade", "crd", "--log-format", "json"])
            .expect("parses");
        assert_eq!(cli.log.log_format, LogFormat::Json);
        assert!(matches!(cli.command, Command::Crd));
        assert!(Cli::try_parse_from(["inplace-upgrade", "--log-format", "xml", "crd"]).is_err());
        assert!(Cli::try_parse_from(["inplace-upgrade", "controler"]).is_err());
        let cli = Cli::try_parse_from([
            "inplace-upgrade",
            "controller",
            "--admin-addr",
            "127.0.0.1:0",
        ])
        .expect("parses");
        assert!(matches!(cli.command, Command::Controller(ref a) if a.concurrency == 8));
        let cli = Cli::try_parse_from([
            "inplace-upgrade",
            "run",
            "--webhook-url",
            "https://127.0.0.1:9443",
        ])
        .expect("parses");
        assert!(
            matches!(cli.command, Command::Run(ref a) if a.webhook_url == "https://127.0.0.1:9443")
        );
        assert!(
            Cli::try_parse_from(["inplace-upgrade", "run"]).is_err(),
            "--webhook-url is required"
        );
        let cli = Cli::try_parse_from(["inplace-upgrade", "webhook", "--self-managed-certs"])
            .expect("parses");
        assert!(
            matches!(cli.command, Command::Webhook(ref a) if a.self_managed_certs
            && a.secret == "inplace-upgrade-webhook-tls"
            && a.cert_dir == std::path::Path::new("/etc/inplace-upgrade/tls"))
        );
    }
}
