//! A real Kubernetes control plane for tests and the demo, with simulated kubelets.
//!
//! [`TestEnv::start`] runs etcd (from the `etcd-bin-vendored` crate), `kube-apiserver`
//! (RBAC on, admission webhooks on) and `kube-controller-manager` (built from the Go module in
//! `tests/k8s` by `tests/k8s/build.sh`, cached outside the repository), then simulated nodes
//! whose kubelet is this crate's Rust code. [`TestEnv::shared`] gives one environment per test
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
//! `image` is the spec string; `imageID` is `sha256:<digest>`, as containerd reports an imported
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

pub mod image;
pub mod images;
pub mod oci;
pub mod registry;
pub mod sim;

mod certs;
mod kubelet;
mod process;
mod wait;

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Node, ServiceAccount};
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use tokio::task::JoinHandle;

pub use kubelet::KubeletOptions;
pub use sim::{ANNOTATION_PREFIX, Delays};
pub use wait::{WAIT_LIMIT, summary, wait_deleted, wait_for, wait_list};

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
    Spawn {
        component: &'static str,
        message: String,
    },
    #[error("{component} exited during startup ({status}); last lines of {}:\n{tail}", log.display())]
    ComponentExited {
        component: &'static str,
        status: String,
        log: PathBuf,
        tail: String,
    },
    #[error("{component} was not ready after {seconds}s ({detail}); last lines of {}:\n{tail}", log.display())]
    NotReady {
        component: &'static str,
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
    pub kubelet: KubeletOptions,
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
            startup_limit: Duration::from_secs(120),
            apiserver_args: Vec::new(),
            controller_manager_args: Vec::new(),
        }
    }
}

/// A running control plane with simulated nodes. Dropping it stops every process it started.
pub struct TestEnv {
    dir: PathBuf,
    temp: Option<tempfile::TempDir>,
    bin_dir: PathBuf,
    kubeconfig: PathBuf,
    config: Config,
    nodes: Vec<String>,
    children: Mutex<Vec<Child>>,
    tasks: Vec<JoinHandle<()>>,
    /// kube-apiserver's flags and port, to restart it in place.
    apiserver_args: Vec<String>,
    api_port: u16,
}

impl std::fmt::Debug for TestEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestEnv")
            .field("dir", &self.dir)
            .field("nodes", &self.nodes)
            .finish_non_exhaustive()
    }
}

impl TestEnv {
    /// Starts etcd, kube-apiserver, kube-controller-manager and the simulated kubelet, and
    /// returns once the API server is ready, the nodes are Ready and the `default`
    /// ServiceAccount exists (so the controller manager works). The kubelet's tasks run on the
    /// calling tokio runtime: it must outlive the environment.
    pub async fn start(options: Options) -> Result<Self> {
        let started = Instant::now();
        if options.kubelet.nodes > kubelet::MAX_NODES {
            return Err(Error::Options(format!(
                "{} simulated nodes requested; at most {} (each has its own 10.<128+i>.0.0/16 pod range)",
                options.kubelet.nodes,
                kubelet::MAX_NODES
            )));
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
        let pki = certs::generate(&dir)?;
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
                format!("https://127.0.0.1:{api_port}")
                    .parse()
                    .map_err(|e| Error::Kubeconfig(format!("API server URL: {e}")))?,
            ),
            nodes: Vec::new(),
            children: Mutex::new(Vec::new()),
            tasks: Vec::new(),
            apiserver_args: Vec::new(),
            api_port,
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
            env.await_port("etcd", etcd_port, limit).await?;

            let issuer = "https://kubernetes.default.svc.cluster.local";
            let p = |path: &Path| path.display().to_string();
            let apiserver_args = [
                format!("--etcd-servers={client_url}"),
                format!("--secure-port={api_port}"),
                "--bind-address=127.0.0.1".to_owned(),
                "--advertise-address=127.0.0.1".to_owned(),
                // The `kubernetes` Endpoints may not point at loopback, and nothing in this
                // cluster connects to the API server through its Service.
                "--endpoint-reconciler-type=none".to_owned(),
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
            env.write_kubeconfig(&pki, api_port)?;
            env.await_port("kube-apiserver", api_port, limit).await?;
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

            let nodes = kubelet::register_nodes(&client, &options.kubelet).await?;
            env.nodes = nodes.iter().map(|n| n.name.clone()).collect();
            env.tasks = kubelet::spawn(client.clone(), &options.kubelet, nodes);

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
                    component: "kube-controller-manager",
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
    pub fn shared() -> Result<&'static TestEnv> {
        static SHARED: OnceLock<std::result::Result<&'static TestEnv, String>> = OnceLock::new();
        SHARED
            .get_or_init(|| {
                let (tx, rx) = std::sync::mpsc::channel();
                let spawned = std::thread::Builder::new()
                    .name("testenv-shared".into())
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
                        let result = runtime.block_on(TestEnv::start(Options::default()));
                        let _ = tx.send(
                            result
                                .map(|env| &*Box::leak(Box::new(env)))
                                .map_err(|e| e.to_string()),
                        );
                        // The runtime runs the kubelet for the rest of the process.
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
                SHARED_FOR_EXIT.get_or_init(|| env);
                // SAFETY: registering a plain extern "C" function with atexit.
                unsafe {
                    libc::atexit(stop_shared_at_exit);
                }
                Ok(env)
            })
            .as_ref()
            .copied()
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

    /// Names of the simulated nodes.
    pub fn nodes(&self) -> &[String] {
        &self.nodes
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

    /// PIDs of the control-plane processes (etcd, kube-apiserver, kube-controller-manager).
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
        self.await_port("kube-apiserver", self.api_port, limit)
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
        if let Ok(mut c) = self.children.lock() {
            c.push(child);
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
            component,
            seconds: limit.as_secs(),
            detail,
            tail: process::tail(&log, 30),
            log,
        }
    }

    /// Startup readiness has no watch to wait on: poll, checking that nothing died.
    async fn await_port(&self, component: &'static str, port: u16, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            self.check_children()?;
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(self.not_ready(
                    component,
                    limit,
                    format!("nothing listens on 127.0.0.1:{port}"),
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
        for name in &self.nodes {
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

    fn write_kubeconfig(&self, pki: &certs::Pki, port: u16) -> Result<()> {
        use base64::Engine;
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let yaml = format!(
            "apiVersion: v1
kind: Config
clusters:
- name: testenv
  cluster:
    server: https://127.0.0.1:{port}
    certificate-authority-data: {ca}
users:
- name: cluster-admin
  user:
    client-certificate-data: {cert}
    client-key-data: {key}
contexts:
- name: testenv
  context:
    cluster: testenv
    user: cluster-admin
    namespace: default
current-context: testenv
",
            ca = b64(&pki.ca_pem),
            cert = b64(&pki.admin_cert_pem),
            key = b64(&pki.admin_key_pem),
        );
        std::fs::write(&self.kubeconfig, yaml)
            .map_err(|e| Error::io(format!("write {}", self.kubeconfig.display()), e))
    }

    /// Stops the simulated kubelet and every process, controllers first and etcd last.
    fn stop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        let Ok(mut children) = self.children.lock() else {
            return;
        };
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
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        self.stop();
        if let Some(t) = self.temp.take() {
            let _ = t.close();
        }
    }
}

static SHARED_FOR_EXIT: OnceLock<&'static TestEnv> = OnceLock::new();

extern "C" fn stop_shared_at_exit() {
    let Some(env) = SHARED_FOR_EXIT.get() else {
        return;
    };
    if let Ok(mut children) = env.children.try_lock() {
        for c in children.iter_mut() {
            c.signal(libc::SIGKILL);
        }
        children.clear();
    }
    if std::env::var_os("INPLACE_TESTENV_KEEP").is_none()
        && let Some(t) = env.temp.as_ref()
    {
        let _ = std::fs::remove_dir_all(t.path());
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
