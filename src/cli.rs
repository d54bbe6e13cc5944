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
    /// Log filter in `tracing` EnvFilter syntax, e.g. `info` or `inplace_upgrade=debug,kube=warn`.
    #[arg(
        long,
        global = true,
        env = "INPLACE_UPGRADE_LOG_LEVEL",
        default_value = "info"
    )]
    pub log_level: String,
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

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the InPlaceUpgradePolicy CustomResourceDefinition as YAML (what deploy/crds holds).
    Crd,
    /// Run the controller: upgrade the pods of annotated workloads in place, one replica at a
    /// time (or as the governing policy allows), until SIGINT or SIGTERM.
    Controller(ControllerArgs),
}

impl Command {
    pub fn run(self) -> anyhow::Result<()> {
        match self {
            Command::Crd => {
                let yaml = inplace_upgrade::policy::crd_yaml()?;
                std::io::stdout().lock().write_all(yaml.as_bytes())?;
                Ok(())
            }
            Command::Controller(args) => tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("cannot start the tokio runtime")?
                .block_on(run_controller(args)),
        }
    }
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
    }
}
