//! A real Kubernetes control plane for tests and the demo, with simulated and real kubelets.
//!
//! [`TestEnv::start`] runs etcd (from the `etcd-bin-vendored` crate), `kube-apiserver`
//! (RBAC on, admission webhooks on) and `kube-controller-manager` (built from the Go module in
//! `tests/k8s` by `tests/k8s/build.sh`, cached outside the repository), then simulated nodes
//! whose kubelet is this crate's Rust code, and, as root, real nodes (kubelet, containerd,
//! runc and a CNI bridge on this host: [`node`]; what they change on the host and how it is
//! undone: [`host`]). [`TestEnv::shared`] gives one environment per test
//! binary; [`TestEnv::namespace`] a fresh namespace per test; [`wait_for`], [`wait_list`] and
//! [`wait_deleted`] watch-driven waits with a generous limit.
//!
//! # The simulated kubelet
//!
//! One pod watch serves every simulated node. A binder plays the scheduler (round-robin over
//! the nodes that fit `nodeSelector` and required node affinity, including the DaemonSet
//! controller's `matchFields metadata.name`). Each pod on a node runs the state machine in
//! [`sim`], which follows kubelet's rules: unique pod IP kept for the pod's life; init
//! containers in order, run-to-completion ones terminate `Completed`, native sidecars
//! (`restartPolicy: Always`) must be started before the next one; containers are ready when
//! they run, or after the readiness delay when they have a readinessProbe/startupProbe;
//! `ContainersReady` needs all regular containers and sidecars ready, `Ready` also needs every
//! readiness gate's condition present and `True`; `lastTransitionTime` moves only when a
//! condition flips; status writes are strategic-merge patches of `pods/status` holding only
//! kubelet's fields and its four conditions, so conditions of other writers survive.
//!
//! A changed image on a running container kills that container only (`Killing` event, state
//! `terminated`, not ready) and after the restart delay starts a new one: new `containerID`,
//! `restartCount + 1`, `lastState.terminated` with the old containerID, same pod IP and UID.
//! `image` is the spec reference fully qualified (after a same-digest retag of the container, the
//! name it ran before), as containerd reports it; `imageID` is `sha256:<digest>`, as containerd reports an imported
//! image (see [`image`] for the digest rule and the `--` retag convention). The old process's
//! exit code comes from the image name ([`image::exit_code_on_sigterm`]); a native sidecar
//! whose old process exited 0 and whose new image cannot start shows no waiting reason, only
//! Events, as kubelet 1.35 does.
//!
//! Failure injection by image name (substring anywhere in the reference):
//! - `fail-pull`: `ErrImagePull`, then `ImagePullBackOff`, alternating;
//! - `crashloop`: runs briefly, terminates `Error` exit 1, restarts with a growing back-off,
//!   waiting reason `CrashLoopBackOff`, `restartCount` grows;
//! - `never-ready`: runs, never ready;
//! - `flapping`: runs, ready and not ready in turn (ready after the readiness delay, not ready
//!   three readiness delays later, and again) without restarting.
//!
//! An unparsable reference gives `InvalidImageName`. Delays are [`Delays`], overridable per
//! pod with `sim.inplace-upgrade.io/<name>-delay-ms` annotations.

pub mod host;
pub mod image;
pub mod images;
pub mod node;
pub mod oci;
pub mod product;
pub mod registry;
pub mod sim;

mod certs;
mod cgroup;
mod kubelet;
mod process;
mod wait;

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Node, ServiceAccount};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use tokio::task::JoinHandle;

pub use kubelet::KubeletOptions;
pub use node::{NODE_KIND_LABEL, RealNodeOptions};
pub use sim::{ANNOTATION_PREFIX, Delays};
pub use wait::{WAIT_LIMIT, summary, wait_deleted, wait_for, wait_for_within, wait_list};

use process::Child;

/// The Kubernetes release of the control plane (`tests/k8s/go.mod`), also the simulated
/// kubelet's `nodeInfo.kubeletVersion`.
pub const KUBERNETES_VERSION: &str = "v1.35.4";

/// Environment variable naming a directory that holds `kube-apiserver`,
/// `kube-controller-manager` and `kubectl`; when set, `tests/k8s/build.sh` is not run.
pub const BIN_ENV: &str = "INPLACE_K8S_BIN";

/// The controllers kube-controller-manager runs (besides the six, the StatefulSet,
/// DaemonSet and PodDisruptionBudget ones the controller suites need, and the publisher of
/// `kube-root-ca.crt`).
pub const CONTROLLERS: &[&str] = &[
    "deployment-controller",
    "replicaset-controller",
    "endpointslice-controller",
    "garbage-collector-controller",
    "namespace-controller",
    "serviceaccount-controller",
    "statefulset-controller",
    "daemonset-controller",
    "disruption-controller",
    "root-ca-certificate-publisher-controller",
];

/// What went wrong, naming the component or the awaited thing.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("generating certificates: {0}")]
    Certificate(String),
    #[error(
        "the Kubernetes binaries are not available: {0}\n(set {BIN_ENV} to a directory with kube-apiserver, kube-controller-manager and kubectl to skip tests/k8s/build.sh)"
    )]
    Binaries(String),
    #[error("cannot start {component}: {message}")]
    Spawn { component: String, message: String },
    #[error("{component} exited during startup ({status}); last lines of {}:\n{tail}", log.display())]
    ComponentExited {
        component: String,
        status: String,
        log: PathBuf,
        tail: String,
    },
    #[error("{component} was not ready after {seconds}s ({detail}); last lines of {}:\n{tail}", log.display())]
    NotReady {
        component: String,
        seconds: u64,
        detail: String,
        log: PathBuf,
        tail: String,
    },
    #[error("{what}: {source}")]
    Kube {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("kubeconfig {0}")]
    Kubeconfig(String),
    #[error("timed out after {seconds}s waiting for {what}; last seen: {last}")]
    Timeout {
        what: String,
        seconds: u64,
        last: String,
    },
    #[error("the shared test environment did not start: {0}")]
    Shared(String),
    #[error("invalid options: {0}")]
    Options(String),
    /// Real nodes cannot run or clean up here (not root, a package missing, a subnet in use,
    /// a leftover that cannot be removed).
    #[error("{0}")]
    Host(String),
}

impl Error {
    pub(crate) fn io(what: String, source: std::io::Error) -> Self {
        Self::Io { what, source }
    }

    pub(crate) fn kube(what: String, source: kube::Error) -> Self {
        Self::Kube { what, source }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How to start an environment.
#[derive(Clone, Debug)]
pub struct Options {
    /// Where certificates, etcd data, logs and the kubeconfig go. `None`: a temporary
    /// directory removed when the environment is dropped.
    pub dir: Option<PathBuf>,
    /// Simulated nodes (`kubelet.nodes` of them; 0 for none).
    pub kubelet: KubeletOptions,
    /// Real nodes (kubelet + containerd on this host; needs root). With any, kube-scheduler
    /// places every pod (the simulated binder is off) and the host is changed as
    /// [`host`] describes until the environment stops.
    pub real_nodes: usize,
    pub real: RealNodeOptions,
    /// Bound on each startup phase (etcd, API server, controller manager).
    pub startup_limit: Duration,
    /// Extra kube-apiserver flags (e.g. `--feature-gates=…`), after the harness's own.
    pub apiserver_args: Vec<String>,
    /// Extra kube-controller-manager flags, after the harness's own.
    pub controller_manager_args: Vec<String>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            dir: None,
            kubelet: KubeletOptions::default(),
            real_nodes: 0,
            real: RealNodeOptions::default(),
            startup_limit: Duration::from_secs(120),
            apiserver_args: Vec::new(),
            controller_manager_args: Vec::new(),
        }
    }
}

/// A running control plane with simulated and real nodes. Dropping it stops every process it
/// started and undoes what real nodes changed on the host.
pub struct TestEnv {
    dir: PathBuf,
    temp: Option<tempfile::TempDir>,
    bin_dir: PathBuf,
    kubeconfig: PathBuf,
    config: Config,
    nodes: Vec<String>,
    real_nodes: Vec<node::RealNode>,
    /// The host slot of the real nodes; released (host cleaned) after the processes stop.
    host: Mutex<Option<host::Lease>>,
    /// The loopback registry real nodes pull from.
    registry: Option<registry::Registry>,
    children: Mutex<Vec<Child>>,
    tasks: Vec<JoinHandle<()>>,
    /// kube-apiserver's flags and port, to restart it in place.
    apiserver_args: Vec<String>,
    /// Where kube-apiserver listens: 127.0.0.1, or with real nodes the first node's IP.
    api_host: String,
    api_port: u16,
    /// An existing cluster ([`TestEnv::external`]): its nodes that are not simulated ones.
    external: Option<Vec<String>>,
}

impl std::fmt::Debug for TestEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestEnv")
            .field("dir", &self.dir)
            .field("nodes", &self.nodes)
            .field("real_nodes", &self.real_nodes)
            .finish_non_exhaustive()
    }
}

impl TestEnv {
    /// Starts etcd, kube-apiserver, kube-controller-manager, the simulated kubelet and the
    /// real nodes (with kube-scheduler), and returns once the API server is ready, every node
    /// is Ready and the `default` ServiceAccount exists (so the controller manager works).
    /// The simulated kubelet's tasks run on the calling tokio runtime: it must outlive the
    /// environment.
    pub async fn start(options: Options) -> Result<Self> {
        let started = Instant::now();
        if options.kubelet.nodes > kubelet::MAX_NODES {
            return Err(Error::Options(format!(
                "{} simulated nodes requested; at most {} (each has its own 10.<128+i>.0.0/16 pod range)",
                options.kubelet.nodes,
                kubelet::MAX_NODES
            )));
        }
        let real = options.real_nodes;
        if real == 0 && options.real.kube_proxy {
            return Err(Error::Options(
                "kube-proxy runs on the host for real nodes: ask for at least one".into(),
            ));
        }
        if real > 0 {
            host::preflight(options.real.kube_proxy, options.real.registry)?;
        }
        let bin_dir = binaries()?;
        let (dir, temp) = match &options.dir {
            Some(d) => {
                std::fs::create_dir_all(d)
                    .map_err(|e| Error::io(format!("create {}", d.display()), e))?;
                (
                    d.canonicalize()
                        .map_err(|e| Error::io(format!("resolve {}", d.display()), e))?,
                    None,
                )
            }
            None => {
                let t = tempfile::Builder::new()
                    .prefix("testenv-")
                    .tempdir()
                    .map_err(|e| Error::io("create a temporary directory".into(), e))?;
                (t.path().to_path_buf(), Some(t))
            }
        };
        let logs = dir.join("logs");
        std::fs::create_dir_all(&logs)
            .map_err(|e| Error::io(format!("create {}", logs.display()), e))?;
        let real_names: Vec<String> = (0..real).map(node::node_name).collect();
        let lease = if real > 0 {
            let (d, k, sims) = (dir.clone(), options.real.kube_proxy, options.kubelet.nodes);
            Some(
                tokio::task::spawn_blocking(move || {
                    let lease = host::acquire(&d, real, k, sims)?;
                    // The nodes' bridges first: the API server listens on the first one.
                    (0..real).try_for_each(|i| node::network(lease.slot, i))?;
                    Ok::<_, Error>(lease)
                })
                .await
                .map_err(|e| Error::Host(format!("claiming the host: {e}")))??,
            )
        } else {
            None
        };
        // With real nodes the API server listens on the first node's IP, as a cluster's does
        // on its node: pods reach it there through the `kubernetes` Service (its endpoint,
        // which the API server publishes itself) and the host reaches it as before. Without
        // them, on loopback only.
        let api_host = lease
            .as_ref()
            .map_or_else(|| "127.0.0.1".to_owned(), |l| l.slot.node_ip(0));
        let pki = certs::generate(&dir, &real_names, &api_host)?;
        let ports = process::free_ports(3)?;
        let (etcd_port, peer_port, api_port) = (ports[0], ports[1], ports[2]);
        let limit = options.startup_limit;
        let mut env = Self {
            dir: dir.clone(),
            temp,
            bin_dir: bin_dir.clone(),
            kubeconfig: dir.join("kubeconfig"),
            // Replaced by the kubeconfig's (with credentials) once the API server runs.
            config: Config::new(
                format!("https://{api_host}:{api_port}")
                    .parse()
                    .map_err(|e| Error::Kubeconfig(format!("API server URL: {e}")))?,
            ),
            nodes: Vec::new(),
            real_nodes: Vec::new(),
            host: Mutex::new(lease),
            registry: None,
            children: Mutex::new(Vec::new()),
            tasks: Vec::new(),
            apiserver_args: Vec::new(),
            api_host: api_host.clone(),
            api_port,
            external: None,
        };
        let booted = async {
            let etcd_bin = etcd_bin_vendored::etcd_bin_path()
                .map_err(|e| Error::Binaries(format!("etcd: {e}")))?;
            let etcd_data = dir.join("etcd");
            let client_url = format!("http://127.0.0.1:{etcd_port}");
            let peer_url = format!("http://127.0.0.1:{peer_port}");
            let etcd_args = [
                "--name=testenv".to_owned(),
                format!("--data-dir={}", etcd_data.display()),
                format!("--listen-client-urls={client_url}"),
                format!("--advertise-client-urls={client_url}"),
                format!("--listen-peer-urls={peer_url}"),
                format!("--initial-advertise-peer-urls={peer_url}"),
                format!("--initial-cluster=testenv={peer_url}"),
                // Test data need not survive a power cut; fsync dominates etcd latency otherwise.
                "--unsafe-no-fsync".to_owned(),
                "--log-level=warn".to_owned(),
            ];
            env.spawn("etcd", etcd_bin, &etcd_args, logs.join("etcd.log"))?;
            env.await_port("etcd", "127.0.0.1", etcd_port, limit)
                .await?;

            let issuer = "https://kubernetes.default.svc.cluster.local";
            let p = |path: &Path| path.display().to_string();
            let apiserver_args = [
                format!("--etcd-servers={client_url}"),
                format!("--secure-port={api_port}"),
                format!("--bind-address={api_host}"),
                format!("--advertise-address={api_host}"),
                // The `kubernetes` Endpoints may not point at loopback: without real nodes
                // nothing in the cluster connects to the API server through its Service. With
                // them the API server publishes its node IP there (the default reconciler).
                format!(
                    "--endpoint-reconciler-type={}",
                    if real > 0 { "lease" } else { "none" }
                ),
                format!("--cert-dir={}", p(&dir.join("apiserver-certs"))),
                format!("--tls-cert-file={}", p(&pki.serving_cert)),
                format!("--tls-private-key-file={}", p(&pki.serving_key)),
                format!("--client-ca-file={}", p(&pki.ca_cert)),
                "--authorization-mode=Node,RBAC".to_owned(),
                format!("--service-account-issuer={issuer}"),
                format!("--service-account-key-file={}", p(&pki.service_account_pub)),
                format!(
                    "--service-account-signing-key-file={}",
                    p(&pki.service_account_key)
                ),
                format!("--api-audiences={issuer}"),
                "--service-cluster-ip-range=10.96.0.0/16".to_owned(),
                "--allow-privileged=true".to_owned(),
                // Logs and exec reach a kubelet at its InternalIP, never by resolving its name
                // (a DNS query that would leave the machine).
                "--kubelet-preferred-address-types=InternalIP".to_owned(),
                format!(
                    "--kubelet-client-certificate={}",
                    p(&pki.kubelet_client_cert)
                ),
                format!("--kubelet-client-key={}", p(&pki.kubelet_client_key)),
                "--profiling=false".to_owned(),
                "--v=1".to_owned(),
            ];
            let apiserver_args: Vec<String> = apiserver_args
                .into_iter()
                .chain(options.apiserver_args.iter().cloned())
                .collect();
            env.spawn(
                "kube-apiserver",
                &bin_dir.join("kube-apiserver"),
                &apiserver_args,
                logs.join("kube-apiserver.log"),
            )?;
            env.apiserver_args = apiserver_args;
            env.write_kubeconfig(&pki)?;
            env.await_port("kube-apiserver", &api_host, api_port, limit)
                .await?;
            env.config = load_config(&env.kubeconfig).await?;
            let client = env.client()?;
            env.await_readyz(&client, limit).await?;

            let kcm_args = [
                format!("--kubeconfig={}", p(&env.kubeconfig)),
                format!("--authentication-kubeconfig={}", p(&env.kubeconfig)),
                format!("--authorization-kubeconfig={}", p(&env.kubeconfig)),
                format!("--controllers={}", CONTROLLERS.join(",")),
                "--leader-elect=false".to_owned(),
                "--secure-port=0".to_owned(),
                format!("--root-ca-file={}", p(&pki.ca_cert)),
                format!(
                    "--service-account-private-key-file={}",
                    p(&pki.service_account_key)
                ),
                "--use-service-account-credentials=false".to_owned(),
                // Benchmarks create thousands of pods; the default 20 QPS would be the bottleneck.
                "--kube-api-qps=500".to_owned(),
                "--kube-api-burst=1000".to_owned(),
                "--concurrent-replicaset-syncs=10".to_owned(),
                "--concurrent-deployment-syncs=10".to_owned(),
                "--v=1".to_owned(),
            ];
            let kcm_args: Vec<String> = kcm_args
                .into_iter()
                .chain(options.controller_manager_args.iter().cloned())
                .collect();
            env.spawn(
                "kube-controller-manager",
                &bin_dir.join("kube-controller-manager"),
                &kcm_args,
                logs.join("kube-controller-manager.log"),
            )?;

            // With real nodes kube-scheduler places every pod, as in a cluster; otherwise the
            // simulated binder does (faster for thousands of pods).
            let scheduler = real > 0;
            if scheduler {
                let child = node::scheduler(&dir, &bin_dir, &env.kubeconfig)?;
                env.push(child);
            }
            let nodes = kubelet::register_nodes(&client, &options.kubelet).await?;
            env.nodes = nodes.iter().map(|n| n.name.clone()).collect();
            env.tasks = kubelet::spawn(client.clone(), &options.kubelet, nodes, !scheduler);
            if real > 0 {
                env.start_real_nodes(&pki, &options).await?;
            }

            let bin = dir.join("bin");
            std::fs::create_dir_all(&bin)
                .map_err(|e| Error::io(format!("create {}", bin.display()), e))?;
            let kubectl = bin.join("kubectl");
            let _ = std::fs::remove_file(&kubectl);
            std::os::unix::fs::symlink(bin_dir.join("kubectl"), &kubectl)
                .map_err(|e| Error::io(format!("link {}", kubectl.display()), e))?;

            env.await_nodes_ready(&client).await?;
            // The default ServiceAccount appears once the controller manager runs its controllers.
            let sa: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
            let waited = tokio::time::timeout(
                limit,
                wait_for(&sa, "default", "ServiceAccount default/default", |_| true),
            )
            .await;
            if !matches!(waited, Ok(Ok(_))) {
                env.check_children()?;
                let log = logs.join("kube-controller-manager.log");
                return Err(Error::NotReady {
                    component: "kube-controller-manager".into(),
                    seconds: limit.as_secs(),
                    detail: "the serviceaccount controller did not create default/default".into(),
                    tail: process::tail(&log, 30),
                    log,
                });
            }
            Ok::<(), Error>(())
        }
        .await;
        if let Err(e) = booted {
            // Keep the logs the error points to.
            if let Some(t) = env.temp.take() {
                let kept = t.keep();
                tracing::warn!(dir = %kept.display(), "startup failed; keeping the directory for its logs");
            }
            return Err(e);
        }
        tracing::info!(dir = %dir.display(), seconds = started.elapsed().as_secs_f64(), "test environment ready");
        Ok(env)
    }

    /// One environment per test binary, started on first use on a dedicated thread and tokio
    /// runtime that live as long as the process (a `#[tokio::test]` runtime ends with its
    /// test). Two simulated nodes. Its processes are killed and its directory removed when
    /// the process exits (set `INPLACE_TESTENV_KEEP=1` to keep the directory).
    ///
    /// With [`E2E_KUBECONFIG_ENV`] set, it is that cluster instead ([`TestEnv::external`]).
    pub fn shared() -> Result<&'static TestEnv> {
        static SHARED: OnceLock<std::result::Result<&'static TestEnv, String>> = OnceLock::new();
        SHARED
            .get_or_init(|| match std::env::var_os(E2E_KUBECONFIG_ENV) {
                Some(path) if !path.is_empty() => {
                    start_shared_with("testenv-shared", move |runtime| {
                        runtime.block_on(TestEnv::external(Path::new(&path)))
                    })
                }
                _ => start_shared("testenv-shared", || Ok(Options::default())),
            })
            .as_ref()
            .copied()
            .map_err(|e| Error::Shared(e.clone()))
    }

    /// Like [`TestEnv::shared`], with one real node and no simulated one (kube-scheduler
    /// places pods; the test images of [`test_images`] are imported and in the loopback
    /// registry, which the node pulls everything else from), or `Ok(None)`
    /// when real nodes cannot run here and are not required: see [`real_nodes_wanted`].
    /// What the node changed on the host is undone when the process exits.
    pub fn shared_real() -> Result<Option<&'static TestEnv>> {
        static SHARED: OnceLock<std::result::Result<&'static TestEnv, String>> = OnceLock::new();
        if !real_nodes_wanted()? {
            return Ok(None);
        }
        SHARED
            .get_or_init(|| {
                start_shared("testenv-shared-real", || {
                    let mut options = Options {
                        real_nodes: 1,
                        ..Options::default()
                    };
                    options.kubelet.nodes = 0;
                    options.real.registry = true;
                    Ok(options)
                })
            })
            .as_ref()
            .copied()
            .map(Some)
            .map_err(|e| Error::Shared(e.clone()))
    }

    /// A cluster-admin client on the caller's runtime.
    pub fn client(&self) -> Result<Client> {
        Client::try_from(self.config.clone()).map_err(|e| Error::kube("build a client".into(), e))
    }

    /// The cluster-admin client configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// `<dir>/kubeconfig`: cluster-admin, certificates embedded.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// The environment's directory (pki, etcd data, logs, kubeconfig, bin/kubectl).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Names of all nodes, simulated then real.
    pub fn nodes(&self) -> Vec<String> {
        self.nodes
            .iter()
            .cloned()
            .chain(self.real_nodes())
            .collect()
    }

    /// Names of the simulated nodes (`sim-node-<i>`).
    pub fn simulated_nodes(&self) -> &[String] {
        &self.nodes
    }

    /// Names of the real nodes (`real-node-<i>`).
    /// On an external cluster: every node that is not a simulated one.
    pub fn real_nodes(&self) -> Vec<String> {
        match &self.external {
            Some(nodes) => nodes.clone(),
            None => self.real_nodes.iter().map(|n| n.name.clone()).collect(),
        }
    }

    /// An existing cluster given by [`E2E_KUBECONFIG_ENV`]: this harness started nothing.
    pub fn is_external(&self) -> bool {
        self.external.is_some()
    }

    /// Whether a test that needs the simulated kubelet (failure injected by timing, delays
    /// per pod, restarting the API server, the simulator's own rules) can run here. When it
    /// cannot, prints that `test` is skipped and why, so a skip is never silent.
    pub fn simulator_only(&self, test: &str, why: &str) -> bool {
        if self.is_external() {
            eprintln!(
                "skipped {test}: it needs the simulated kubelet ({why}); {E2E_KUBECONFIG_ENV} gives an existing cluster"
            );
            return false;
        }
        true
    }

    /// Uses the existing cluster of `kubeconfig` (cluster-admin expected): starts no
    /// control plane and no kubelet; the nodes are the cluster's (those labelled
    /// [`NODE_KIND_LABEL`]`=simulated` are [`Self::simulated_nodes`], the others
    /// [`Self::real_nodes`]); `kubectl` is this build's. Namespaces the tests create are
    /// labelled `testenv.inplace-upgrade.io/test` and left for the caller to delete (the
    /// cluster outlives the tests).
    pub async fn external(kubeconfig: &Path) -> Result<Self> {
        let kubeconfig = kubeconfig
            .canonicalize()
            .map_err(|e| Error::io(format!("{E2E_KUBECONFIG_ENV}={}", kubeconfig.display()), e))?;
        let config = load_config(&kubeconfig).await?;
        let client = Client::try_from(config.clone())
            .map_err(|e| Error::kube("build a client".into(), e))?;
        let listed = Api::<Node>::all(client)
            .list(&Default::default())
            .await
            .map_err(|e| Error::kube(format!("list the nodes of {}", kubeconfig.display()), e))?;
        let (mut simulated, mut others) = (Vec::new(), Vec::new());
        for node in listed.items {
            let name = node.metadata.name.clone().unwrap_or_default();
            let kind = node
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(NODE_KIND_LABEL))
                .map(String::as_str);
            if kind == Some("simulated") {
                simulated.push(name);
            } else {
                others.push(name);
            }
        }
        if simulated.is_empty() && others.is_empty() {
            return Err(Error::Options(format!(
                "{E2E_KUBECONFIG_ENV}={}: the cluster has no nodes",
                kubeconfig.display()
            )));
        }
        let temp = tempfile::Builder::new()
            .prefix("testenv-external-")
            .tempdir()
            .map_err(|e| Error::io("create a temporary directory".into(), e))?;
        let dir = temp.path().to_path_buf();
        std::fs::create_dir_all(dir.join("logs"))
            .map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
        Ok(Self {
            dir,
            temp: Some(temp),
            bin_dir: binaries()?,
            kubeconfig,
            config,
            nodes: simulated,
            real_nodes: Vec::new(),
            host: Mutex::new(None),
            registry: None,
            children: Mutex::new(Vec::new()),
            tasks: Vec::new(),
            apiserver_args: Vec::new(),
            api_host: String::new(),
            api_port: 0,
            external: Some(others),
        })
    }

    /// A real node's IP (its bridge address: InternalIP, pods' gateway).
    pub fn real_node_ip(&self, name: &str) -> Option<&str> {
        self.real_nodes
            .iter()
            .find(|n| n.name == name)
            .map(|n| n.ip.as_str())
    }

    /// A real node's directory (`nodes/<name>`: containerd, kubelet, CNI, pod logs).
    pub fn real_node_dir(&self, name: &str) -> Option<&Path> {
        self.real_nodes
            .iter()
            .find(|n| n.name == name)
            .map(|n| n.dir.as_path())
    }

    /// Imports image archives into every real node's containerd.
    pub async fn import_images(&self, archives: &[PathBuf]) -> Result<()> {
        let nodes = self.real_nodes.clone();
        let archives = archives.to_vec();
        tokio::task::spawn_blocking(move || {
            for n in &nodes {
                for a in &archives {
                    n.import(a)?;
                }
            }
            Ok(())
        })
        .await
        .map_err(|e| Error::Host(format!("importing images: {e}")))?
    }

    /// Removes an image from every real node for good ([`node::RealNode::remove_image`]): the
    /// next pod that needs it pulls it again (pull-time measurements). Waits up to two minutes
    /// for kubelet to remove the containers of deleted pods that still hold its layers. An
    /// image a node does not have is no error.
    pub async fn remove_image(&self, name: &str) -> Result<()> {
        let nodes = self.real_nodes.clone();
        let image = name.to_string();
        tokio::task::spawn_blocking(move || {
            for n in &nodes {
                n.remove_image(&image, Duration::from_secs(120))?;
            }
            Ok(())
        })
        .await
        .map_err(|e| Error::Host(format!("removing {name}: {e}")))?
    }

    /// The directory holding kube-apiserver, kube-controller-manager and kubectl.
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// A `kubectl` command with `KUBECONFIG` set to this environment.
    pub fn kubectl(&self) -> std::process::Command {
        let mut cmd = std::process::Command::new(self.bin_dir.join("kubectl"));
        cmd.env("KUBECONFIG", &self.kubeconfig);
        cmd
    }

    /// How long each real node took from kubelet's start to `Ready` (as this harness saw it).
    pub fn real_node_ready_after(&self) -> Vec<(String, Duration)> {
        self.real_nodes
            .iter()
            .filter_map(|n| Some((n.name.clone(), n.ready_after?)))
            .collect()
    }

    /// The processes the harness started, by name (`kubelet (real-node-0)`,
    /// `containerd (real-node-0)`, `kube-apiserver`, …), with their PIDs.
    pub fn processes(&self) -> Vec<(String, u32)> {
        self.children
            .lock()
            .map(|c| c.iter().map(|c| (c.name.clone(), c.pid())).collect())
            .unwrap_or_default()
    }

    /// The loopback registry real nodes pull from, if the environment runs one.
    pub fn registry(&self) -> Option<&registry::Registry> {
        self.registry.as_ref()
    }

    /// PIDs of the processes the harness started (etcd, kube-apiserver,
    /// kube-controller-manager; with real nodes kube-scheduler, each node's containerd and
    /// kubelet, kube-proxy).
    pub fn pids(&self) -> Vec<u32> {
        self.children
            .lock()
            .map(|c| c.iter().map(Child::pid).collect())
            .unwrap_or_default()
    }

    /// Creates a namespace `<prefix>-<unique suffix>` and waits for its `default`
    /// ServiceAccount (pods are rejected until it exists). Returns its name.
    pub async fn namespace(&self, prefix: &str) -> Result<String> {
        use std::sync::atomic::{AtomicU32, Ordering};
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let client = self.client()?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let name = format!(
            "{prefix}-{:x}{:x}",
            nanos % 0xfffff,
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": {"testenv.inplace-upgrade.io/test": prefix}}
        }))
        .map_err(|e| Error::Kubeconfig(format!("namespace object: {e}")))?;
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .map_err(|e| Error::kube(format!("create Namespace {name}"), e))?;
        let sa: Api<ServiceAccount> = Api::namespaced(client, &name);
        wait_for(
            &sa,
            "default",
            &format!("ServiceAccount {name}/default"),
            |_| true,
        )
        .await?;
        Ok(name)
    }

    /// Stops kube-apiserver (SIGKILL when `kill`, otherwise SIGTERM as a rolling upgrade of
    /// the control plane would) and starts it again with the same flags, on the same port,
    /// over the same etcd; returns once its `/readyz` is ok. Clients, watches, the controller
    /// manager and the simulated kubelet see the connection drop and must reconnect on their
    /// own. The restarted server logs to `logs/kube-apiserver-<n>.log` (n = 1, 2, …).
    pub async fn restart_apiserver(&self, kill: bool) -> Result<Duration> {
        use std::sync::atomic::{AtomicU32, Ordering};
        static RESTARTS: AtomicU32 = AtomicU32::new(0);
        if self.is_external() {
            return Err(Error::Options(
                "the API server of an external cluster is not this harness's to restart".into(),
            ));
        }
        let started = Instant::now();
        let mut old = {
            let mut children = self
                .children
                .lock()
                .map_err(|_| Error::Shared("the process list lock is poisoned".into()))?;
            let Some(i) = children.iter().position(|c| c.name == "kube-apiserver") else {
                return Err(Error::Shared("kube-apiserver is not running".into()));
            };
            children.remove(i)
        };
        if kill {
            old.signal(libc::SIGKILL);
        }
        // A graceful stop drains requests; kube-apiserver can take a minute over it with
        // watches open, so it gets 10 s, then SIGKILL. Waited for off the async threads.
        tokio::task::spawn_blocking(move || old.stop(Duration::from_secs(10)))
            .await
            .map_err(|e| Error::Shared(format!("stopping kube-apiserver: {e}")))?;
        // The port is free once the old process is reaped; bind it again for the new one.
        let n = RESTARTS.fetch_add(1, Ordering::Relaxed) + 1;
        let log = self
            .dir
            .join("logs")
            .join(format!("kube-apiserver-{n}.log"));
        let child = Child::spawn(
            "kube-apiserver",
            &self.bin_dir.join("kube-apiserver"),
            &self.apiserver_args,
            log,
        )?;
        if let Ok(mut c) = self.children.lock() {
            c.push(child);
        }
        let limit = Duration::from_secs(120);
        self.await_port("kube-apiserver", &self.api_host, self.api_port, limit)
            .await?;
        let client = self.client()?;
        self.await_readyz(&client, limit).await?;
        Ok(started.elapsed())
    }

    fn spawn(
        &mut self,
        name: &'static str,
        program: &Path,
        args: &[String],
        log: PathBuf,
    ) -> Result<()> {
        let child = Child::spawn(name, program, args, log)?;
        self.push(child);
        Ok(())
    }

    fn push(&self, child: Child) {
        if let Ok(mut c) = self.children.lock() {
            c.push(child);
        }
    }

    /// Starts containerd and kubelet for each real node, waits until they are Ready, then
    /// does what the node lifecycle controller (not run here) does for a Ready node: lifts
    /// the `node.kubernetes.io/not-ready` taint that admission put on it. Also gives each
    /// node the `podCIDR` its CNI bridge serves, as the node IPAM controller would.
    async fn start_real_nodes(&mut self, pki: &certs::Pki, options: &Options) -> Result<()> {
        let slot = self
            .host
            .lock()
            .ok()
            .and_then(|h| h.as_ref().map(|l| l.slot))
            .ok_or_else(|| Error::Host("no host slot for real nodes".into()))?;
        for b in ["kubelet", "kube-scheduler", "kube-proxy"] {
            if !self.bin_dir.join(b).is_file() {
                return Err(Error::Binaries(format!(
                    "{} has no {b} (real nodes need it)",
                    self.bin_dir.display()
                )));
            }
        }
        let limit = options.startup_limit;
        let (dir, real) = (self.dir.clone(), options.real.clone());
        // The image set (built, or read from its cache) and the registry, off the async threads.
        let (images, registry) = tokio::task::spawn_blocking(move || {
            let set = if real.images.is_empty() || real.registry {
                Some(test_images()?)
            } else {
                None
            };
            let images = match (&set, real.images.is_empty()) {
                (Some(set), true) => vec![set.bundle.clone()],
                _ => real.images.clone(),
            };
            let registry = match set.filter(|_| real.registry) {
                Some(set) => {
                    let r = registry::Registry::start(&dir.join("registry"), None)
                        .and_then(|r| r.push_set(&set, |name| name != images::BIG).map(|()| r))
                        .map_err(|e| Error::Host(format!("the loopback registry: {e}")))?;
                    Some((r, registry::hosts(&set)))
                }
                None => None,
            };
            Ok::<_, Error>((images, registry))
        })
        .await
        .map_err(|e| Error::Host(format!("preparing images: {e}")))??;
        let hosts = registry
            .as_ref()
            .map(|(_, h)| h.clone())
            .unwrap_or_default();
        // The registry moves into the blocking task for the node setup and comes back.
        let registry = registry.map(|(r, _)| r);
        let (dir, bin_dir, pki_c, real) = (
            self.dir.clone(),
            self.bin_dir.clone(),
            pki.clone(),
            options.real.clone(),
        );
        let (api_host, api_port) = (self.api_host.clone(), self.api_port);
        let (started, registry) = tokio::task::spawn_blocking(move || {
            let api_url = format!("https://{api_host}:{api_port}");
            let setup = node::Setup {
                env_dir: &dir,
                slot,
                bin_dir: &bin_dir,
                api_url: &api_url,
                ca_pem: &pki_c.ca_pem,
                ca_file: &pki_c.ca_cert,
                options: &real,
                images: &images,
                registry: registry.as_ref().map(|r| (r, hosts.as_slice())),
                limit,
            };
            let mut out = Vec::new();
            for (i, (_, cert, key)) in pki_c.nodes.iter().enumerate() {
                match node::start(&setup, i, cert, key) {
                    Ok(n) => out.push(n),
                    Err(e) => return (Err((e, out)), registry),
                }
            }
            (Ok(out), registry)
        })
        .await
        .map_err(|e| Error::Host(format!("starting real nodes: {e}")))?;
        self.registry = registry;
        // Register the processes even when a later node failed, so they are stopped.
        let (started, failed) = match started {
            Ok(all) => (all, None),
            Err((e, some)) => (some, Some(e)),
        };
        for (n, children) in started {
            for c in children {
                self.push(c);
            }
            self.real_nodes.push(n);
        }
        if let Some(e) = failed {
            return Err(e);
        }
        let client = self.client()?;
        let api: Api<Node> = Api::all(client.clone());
        for i in 0..self.real_nodes.len() {
            let name = self.real_nodes[i].name.clone();
            let ready = wait_for_checked(self, &api, &name, limit).await?;
            let n = &mut self.real_nodes[i];
            n.ready_after = Some(n.kubelet_started.elapsed());
            tracing::info!(node = %name, seconds = n.ready_after.map(|d| d.as_secs_f64()), "real node Ready after kubelet started");
            let taints: Vec<serde_json::Value> = ready
                .spec
                .as_ref()
                .and_then(|s| s.taints.as_ref())
                .into_iter()
                .flatten()
                .filter(|t| t.key != "node.kubernetes.io/not-ready")
                .map(|t| serde_json::to_value(t).unwrap_or_default())
                .collect();
            let cidr = slot.subnet(n.index);
            let mut patch = serde_json::json!({"spec": {"taints": taints}});
            if ready
                .spec
                .as_ref()
                .and_then(|s| s.pod_cidr.as_ref())
                .is_none()
            {
                patch["spec"]["podCIDR"] = cidr.clone().into();
                patch["spec"]["podCIDRs"] = serde_json::json!([cidr]);
            }
            api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(|e| Error::kube(format!("lift the not-ready taint of Node {name}"), e))?;
        }
        if options.real.kube_proxy {
            let child = node::kube_proxy(&self.dir, &self.bin_dir, &self.kubeconfig, slot)?;
            self.push(child);
        }
        Ok(())
    }

    fn check_children(&self) -> Result<()> {
        let Ok(mut children) = self.children.lock() else {
            return Ok(());
        };
        children.iter_mut().try_for_each(Child::check)
    }

    fn not_ready(&self, component: &'static str, limit: Duration, detail: String) -> Error {
        let log = self.dir.join("logs").join(format!("{component}.log"));
        Error::NotReady {
            component: component.to_owned(),
            seconds: limit.as_secs(),
            detail,
            tail: process::tail(&log, 30),
            log,
        }
    }

    /// Startup readiness has no watch to wait on: poll, checking that nothing died.
    async fn await_port(
        &self,
        component: &'static str,
        host: &str,
        port: u16,
        limit: Duration,
    ) -> Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            self.check_children()?;
            if tokio::net::TcpStream::connect((host, port)).await.is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(self.not_ready(
                    component,
                    limit,
                    format!("nothing listens on {host}:{port}"),
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn await_readyz(&self, client: &Client, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        let mut last;
        loop {
            self.check_children()?;
            let req = http::Request::get("/readyz")
                .body(Vec::new())
                .map_err(|e| Error::Kubeconfig(format!("readyz request: {e}")))?;
            match client.request_text(req).await {
                Ok(body) if body.trim() == "ok" => return Ok(()),
                Ok(body) => last = body,
                Err(e) => last = e.to_string(),
            }
            if Instant::now() > deadline {
                return Err(self.not_ready("kube-apiserver", limit, format!("/readyz: {last}")));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn await_nodes_ready(&self, client: &Client) -> Result<()> {
        let api: Api<Node> = Api::all(client.clone());
        for name in &self.nodes() {
            wait_for(&api, name, &format!("Node {name} Ready"), |n: &Node| {
                n.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            })
            .await?;
        }
        Ok(())
    }

    fn write_kubeconfig(&self, pki: &certs::Pki) -> Result<()> {
        let yaml = kubeconfig_yaml(
            &format!("https://{}:{}", self.api_host, self.api_port),
            &pki.ca_pem,
            "cluster-admin",
            &pki.admin_cert_pem,
            &pki.admin_key_pem,
        );
        std::fs::write(&self.kubeconfig, yaml)
            .map_err(|e| Error::io(format!("write {}", self.kubeconfig.display()), e))
    }

    /// Stops the simulated kubelet and every process, nodes and controllers first and etcd
    /// last, then cleans what real nodes left on the host.
    fn stop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        if let Ok(mut children) = self.children.lock() {
            for c in children.iter().rev() {
                if c.name != "etcd" {
                    c.signal(libc::SIGTERM);
                }
            }
            for c in children.iter_mut().rev() {
                c.stop(Duration::from_secs(5));
            }
            children.clear();
        }
        self.release_host();
    }

    fn release_host(&self) {
        let lease = self.host.lock().ok().and_then(|mut h| h.take());
        if let Some(lease) = lease
            && let Err(e) = lease.release()
        {
            tracing::error!(error = %e, "real nodes left something on the host; `testenv cleanup` retries");
            eprintln!("testenv: {e}");
        }
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        self.stop();
        if let Some(t) = self.temp.take() {
            let _ = t.close();
        }
    }
}

/// The shared environments, stopped by [`stop_shared_at_exit`].
static SHARED_FOR_EXIT: Mutex<Vec<&'static TestEnv>> = Mutex::new(Vec::new());

/// Starts an environment on a thread and tokio runtime of its own that live as long as the
/// process, leaks it, and registers it to be stopped at exit.
fn start_shared(
    thread: &str,
    options: impl FnOnce() -> Result<Options> + Send + 'static,
) -> std::result::Result<&'static TestEnv, String> {
    start_shared_with(thread, move |runtime| {
        options().and_then(|o| runtime.block_on(TestEnv::start(o)))
    })
}

/// [`start_shared`] with the environment made by `start` on the shared runtime.
fn start_shared_with(
    thread: &str,
    start: impl FnOnce(&tokio::runtime::Runtime) -> Result<TestEnv> + Send + 'static,
) -> std::result::Result<&'static TestEnv, String> {
    let (tx, rx) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name(thread.into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    let _ = tx.send(Err(format!("cannot build a tokio runtime: {e}")));
                    return;
                }
            };
            let result = start(&runtime);
            let _ = tx.send(
                result
                    .map(|env| &*Box::leak(Box::new(env)))
                    .map_err(|e| e.to_string()),
            );
            // The runtime runs the simulated kubelet for the rest of the process.
            loop {
                std::thread::park();
            }
        });
    if let Err(e) = spawned {
        return Err(format!("cannot start the shared environment's thread: {e}"));
    }
    let env = rx
        .recv()
        .map_err(|_| "the shared environment's thread died".to_owned())??;
    let mut registered = SHARED_FOR_EXIT
        .lock()
        .map_err(|_| "the shared environment list is poisoned".to_owned())?;
    if registered.is_empty() {
        // SAFETY: registering a plain extern "C" function with atexit.
        unsafe {
            libc::atexit(stop_shared_at_exit);
        }
    }
    registered.push(env);
    Ok(env)
}

extern "C" fn stop_shared_at_exit() {
    let envs: Vec<&'static TestEnv> = match SHARED_FOR_EXIT.try_lock() {
        Ok(mut e) => std::mem::take(&mut *e),
        Err(_) => return,
    };
    for env in envs {
        if let Ok(mut children) = env.children.try_lock() {
            for c in children.iter_mut() {
                c.signal(libc::SIGKILL);
            }
            children.clear();
        }
        env.release_host();
        if std::env::var_os("INPLACE_TESTENV_KEEP").is_none()
            && let Some(t) = env.temp.as_ref()
        {
            let _ = std::fs::remove_dir_all(t.path());
        }
    }
}

/// Environment variable naming the kubeconfig of an existing cluster: [`TestEnv::shared`] is
/// then that cluster ([`TestEnv::external`]).
pub const E2E_KUBECONFIG_ENV: &str = "INPLACE_E2E_KUBECONFIG";

/// Environment variable deciding whether suites run their real-node half: `require` (CI:
/// fail when real nodes cannot run), `skip`, or unset (run when root, else skip with a
/// printed reason).
pub const REAL_NODES_ENV: &str = "INPLACE_REAL_NODES";

/// Whether a suite should run its real-node tests (see [`REAL_NODES_ENV`]). Prints the
/// reason when it should not.
pub fn real_nodes_wanted() -> Result<bool> {
    let mode = std::env::var(REAL_NODES_ENV).unwrap_or_default();
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    match mode.as_str() {
        "skip" => {
            eprintln!("real-node tests skipped: {REAL_NODES_ENV}=skip");
            Ok(false)
        }
        "require" if !root => Err(Error::Host(format!(
            "{REAL_NODES_ENV}=require, but real nodes need root"
        ))),
        "require" => Ok(true),
        "" if !root => {
            eprintln!(
                "real-node tests skipped: not root (kubelet and containerd need it); set {REAL_NODES_ENV}=require to fail instead"
            );
            Ok(false)
        }
        "" => Ok(true),
        other => Err(Error::Options(format!(
            "{REAL_NODES_ENV}={other}: expected require or skip"
        ))),
    }
}

/// The test image set ([`images`]) in its default cache directory, built on first use.
pub fn test_images() -> Result<images::ImageSet> {
    static SET: OnceLock<std::result::Result<images::ImageSet, String>> = OnceLock::new();
    SET.get_or_init(|| images::build(&images::default_dir()).map_err(|e| e.to_string()))
        .clone()
        .map_err(|e| Error::Options(format!("the test images: {e}")))
}

/// A kubeconfig (YAML) for `server` with a client certificate, all embedded.
pub(crate) fn kubeconfig_yaml(
    server: &str,
    ca_pem: &str,
    user: &str,
    cert_pem: &str,
    key_pem: &str,
) -> String {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: testenv
  cluster:
    server: {server}
    certificate-authority-data: {ca}
users:
- name: {user}
  user:
    client-certificate-data: {cert}
    client-key-data: {key}
contexts:
- name: testenv
  context:
    cluster: testenv
    user: {user}
    namespace: default
current-context: testenv
",
        ca = b64(ca_pem),
        cert = b64(cert_pem),
        key = b64(key_pem),
    )
}

/// Waits for a real Node to be Ready, failing early with the log of a node process that
/// exited.
async fn wait_for_checked(
    env: &TestEnv,
    api: &Api<Node>,
    name: &str,
    limit: Duration,
) -> Result<Node> {
    let what = format!("Node {name} Ready");
    let ready = wait_for(api, name, &what, |n: &Node| {
        n.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
    });
    tokio::pin!(ready);
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        tokio::select! {
            r = &mut ready => return r,
            () = tokio::time::sleep(Duration::from_millis(200)) => {
                env.check_children()?;
                if tokio::time::Instant::now() > deadline {
                    let log = env.dir.join("logs").join(format!("{name}-kubelet.log"));
                    return Err(Error::NotReady {
                        component: format!("kubelet ({name})"),
                        seconds: limit.as_secs(),
                        detail: format!("{what} not seen"),
                        tail: process::tail(&log, 30),
                        log,
                    });
                }
            }
        }
    }
}

async fn load_config(path: &Path) -> Result<Config> {
    let kc = Kubeconfig::read_from(path)
        .map_err(|e| Error::Kubeconfig(format!("{}: {e}", path.display())))?;
    Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(|e| Error::Kubeconfig(format!("{}: {e}", path.display())))
}

/// The directory with the control-plane binaries: `$INPLACE_K8S_BIN`, or what
/// `tests/k8s/build.sh` prints (a no-op when its cache is warm, a build of several minutes
/// when cold).
pub fn binaries() -> Result<PathBuf> {
    static BIN: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| {
        let check = |dir: PathBuf| {
            for b in ["kube-apiserver", "kube-controller-manager", "kubectl"] {
                if !dir.join(b).is_file() {
                    return Err(format!("{} has no {b}", dir.display()));
                }
            }
            Ok(dir)
        };
        if let Some(dir) = std::env::var_os(BIN_ENV) {
            return check(PathBuf::from(dir));
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../k8s/build.sh");
        let out = std::process::Command::new("bash")
            .arg(&script)
            .stderr(std::process::Stdio::inherit())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
        if !out.status.success() {
            return Err(format!(
                "{} failed ({}); its output is above",
                script.display(),
                out.status
            ));
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let dir = stdout.lines().last().map(str::trim).unwrap_or_default();
        if dir.is_empty() {
            return Err(format!("{} printed no bin directory", script.display()));
        }
        check(PathBuf::from(dir))
    })
    .clone()
    .map_err(Error::Binaries)
}
