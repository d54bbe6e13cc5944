//! `testenv up --dir DIR [--nodes N]`: run the local control plane with simulated kubelets
//! until SIGINT/SIGTERM. Prints `ready` once usable; `DIR/kubeconfig` is cluster-admin and
//! `DIR/bin/kubectl` the matching kubectl.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use testenv::{Delays, KubeletOptions, Options, TestEnv};
use tokio::signal::unix::{SignalKind, signal};

#[derive(Parser)]
#[command(
    version,
    about = "A real Kubernetes control plane with simulated kubelets"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start etcd, kube-apiserver, kube-controller-manager and N simulated nodes.
    Up {
        /// Directory for certificates, etcd data, logs, the kubeconfig and bin/kubectl.
        #[arg(long)]
        dir: PathBuf,
        /// Number of simulated nodes.
        #[arg(long, default_value_t = 2)]
        nodes: usize,
        /// Delay from an image change to the new container running, in milliseconds.
        #[arg(long, default_value_t = Delays::default().restart.as_millis() as u64)]
        restart_delay_ms: u64,
        /// Delay from running to ready for containers with a readinessProbe, in milliseconds.
        #[arg(long, default_value_t = Delays::default().readiness.as_millis() as u64)]
        readiness_delay_ms: u64,
        /// Do not record Kubernetes Events.
        #[arg(long)]
        no_events: bool,
    },
    /// Build the test images (OCI archives for `ctr images import`, `kind load image-archive`,
    /// `skopeo copy oci-archive:…`) and print `NAME ARCHIVE` lines, then `bundle ARCHIVE`.
    /// Cached by content: a warm run only checks the testapp build.
    Images {
        /// Output directory (default: ~/.cache/inplace-upgrade/images).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,testenv=info,kube_client::client::builder=off".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let (dir, nodes, restart_delay_ms, readiness_delay_ms, no_events) = match Cli::parse().command {
        Command::Up {
            dir,
            nodes,
            restart_delay_ms,
            readiness_delay_ms,
            no_events,
        } => (dir, nodes, restart_delay_ms, readiness_delay_ms, no_events),
        Command::Images { out } => return images(out),
    };
    let mut sigint = signal(SignalKind::interrupt()).context("install SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("install SIGTERM handler")?;
    let delays = Delays {
        restart: Duration::from_millis(restart_delay_ms),
        readiness: Duration::from_millis(readiness_delay_ms),
        ..Delays::default()
    };
    let options = Options {
        dir: Some(dir),
        kubelet: KubeletOptions {
            nodes,
            delays,
            events: !no_events,
            ..KubeletOptions::default()
        },
        ..Options::default()
    };
    let start = TestEnv::start(options);
    let env = tokio::select! {
        env = start => env.context("the test environment did not start")?,
        _ = sigint.recv() => return Ok(()),
        _ = sigterm.recv() => return Ok(()),
    };
    println!("kubeconfig {}", env.kubeconfig_path().display());
    println!("kubectl {}", env.dir().join("bin/kubectl").display());
    println!("ready");
    tokio::select! {
        _ = sigint.recv() => {}
        _ = sigterm.recv() => {}
    }
    eprintln!("stopping");
    drop(env);
    Ok(())
}

fn images(out: Option<PathBuf>) -> anyhow::Result<()> {
    let dir = out.unwrap_or_else(testenv::images::default_dir);
    let set = testenv::images::build(&dir).context("building the test images")?;
    for (name, archive) in set.names() {
        println!("{name} {}", archive.display());
    }
    println!("bundle {}", set.bundle.display());
    Ok(())
}
