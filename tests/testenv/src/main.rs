//! `testenv up --dir DIR [--nodes N] [--real-nodes N]`: run the local control plane with
//! simulated kubelets and, as root, real ones until SIGINT/SIGTERM. Prints `ready` once
//! usable; `DIR/kubeconfig` is cluster-admin and `DIR/bin/kubectl` the matching kubectl.
//!
//! `testenv cleanup`: undo what real nodes of killed runs left on the host.
//!
//! `testenv images [--out DIR]`: build the test images.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use testenv::{Delays, KubeletOptions, Options, RealNodeOptions, TestEnv};
use tokio::signal::unix::{SignalKind, signal};

#[derive(Parser)]
#[command(
    version,
    about = "A real Kubernetes control plane with simulated and real kubelets"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start etcd, kube-apiserver, kube-controller-manager, simulated and real nodes.
    Up(Up),
    /// Undo what real nodes of killed runs left on the host (processes, mounts, bridges,
    /// routes, netfilter chains, cgroups, sysctls, files). Running environments are left alone.
    Cleanup,
    /// Build the test images (OCI archives for `ctr images import`, `kind load image-archive`,
    /// `skopeo copy oci-archive:…`) and print `NAME ARCHIVE` lines, then `bundle ARCHIVE`.
    /// Cached by content: a warm run only checks the testapp build.
    Images {
        /// Output directory (default: ~/.cache/inplace-upgrade/images).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Build the product image (the static release `inplace-upgrade` in a minimal non-root
    /// image, what deploy/Dockerfile describes) as an OCI archive and print `NAME ARCHIVE`.
    /// Cached: a warm run only checks the release build.
    ProductImage {
        /// Output directory (default: ~/.cache/inplace-upgrade/product).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Also write `DIR/kustomization.yaml`: deploy/ with only the image swapped for this one.
        #[arg(long)]
        overlay: Option<PathBuf>,
        /// Put this dynamically linked `inplace-upgrade` (e.g. target/debug/inplace-upgrade)
        /// and the shared libraries ldd names into the image instead of the static release
        /// build (what CI installs: no second compile). Default output: the product directory.
        #[arg(long, value_name = "BINARY")]
        shared_libraries: Option<PathBuf>,
    },
}

#[derive(Args)]
struct Up {
    /// Directory for certificates, etcd data, logs, the kubeconfig and bin/kubectl.
    #[arg(long)]
    dir: PathBuf,
    /// Number of simulated nodes (0 for none).
    #[arg(long, default_value_t = 2)]
    nodes: usize,
    /// Number of real nodes: kubelet + containerd + CNI bridge on this host (root only;
    /// installs missing Debian packages; changes the host until it stops).
    #[arg(long, default_value_t = 0)]
    real_nodes: usize,
    /// Image archive to import into every real node's containerd (repeatable); one must hold
    /// the sandbox image. Default: the test image set (`testenv images`).
    #[arg(long = "image")]
    images: Vec<PathBuf>,
    /// The pod sandbox image of real nodes.
    #[arg(long, default_value_t = RealNodeOptions::default().sandbox_image)]
    sandbox_image: String,
    /// Run kube-proxy (iptables mode) on the host for the real nodes.
    #[arg(long)]
    kube_proxy: bool,
    /// Run the loopback registry with the test images, and pull every image real nodes do
    /// not have from it (a missing tag is a real 404).
    #[arg(long)]
    registry: bool,
    /// Delay from an image change to the new container running, in milliseconds.
    #[arg(long, default_value_t = Delays::default().restart.as_millis() as u64)]
    restart_delay_ms: u64,
    /// Delay from running to ready for containers with a readinessProbe, in milliseconds.
    #[arg(long, default_value_t = Delays::default().readiness.as_millis() as u64)]
    readiness_delay_ms: u64,
    /// Do not record Kubernetes Events.
    #[arg(long)]
    no_events: bool,
}

impl Up {
    fn options(self) -> Options {
        Options {
            dir: Some(self.dir),
            kubelet: KubeletOptions {
                nodes: self.nodes,
                delays: Delays {
                    restart: Duration::from_millis(self.restart_delay_ms),
                    readiness: Duration::from_millis(self.readiness_delay_ms),
                    ..Delays::default()
                },
                events: !self.no_events,
                ..KubeletOptions::default()
            },
            real_nodes: self.real_nodes,
            real: RealNodeOptions {
                images: self.images,
                sandbox_image: self.sandbox_image,
                kube_proxy: self.kube_proxy,
                registry: self.registry,
            },
            ..Options::default()
        }
    }
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
    let up = match Cli::parse().command {
        Command::Up(up) => up,
        Command::Cleanup => {
            let report = testenv::host::cleanup().context("cleanup")?;
            for d in &report.cleaned {
                println!("cleaned up after the killed environment in {}", d.display());
            }
            for d in &report.running {
                println!("left alone: the running environment in {}", d.display());
            }
            println!("host clean");
            return Ok(());
        }
        Command::Images { out } => return images(out),
        Command::ProductImage {
            out,
            overlay,
            shared_libraries,
        } => return product_image(out, overlay, shared_libraries),
    };
    let mut sigint = signal(SignalKind::interrupt()).context("install SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("install SIGTERM handler")?;
    let start = TestEnv::start(up.options());
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

fn product_image(
    out: Option<PathBuf>,
    overlay: Option<PathBuf>,
    shared_libraries: Option<PathBuf>,
) -> anyhow::Result<()> {
    let dir = out.unwrap_or_else(testenv::product::default_dir);
    let built = match shared_libraries {
        Some(binary) => testenv::product::build_with_shared_libraries(&dir, &binary),
        None => testenv::product::build(&dir),
    }
    .context("building the product image")?;
    if let Some(overlay) = overlay {
        testenv::product::write_overlay(&built, &overlay)
            .with_context(|| format!("the overlay in {}", overlay.display()))?;
    }
    println!("{} {}", built.name, built.archive.display());
    Ok(())
}
