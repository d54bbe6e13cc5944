//! What the controller benchmarks share: a private control plane with an audit log, the
//! controller as its own process under its own identity, and readers for the audit log and
//! for the process's memory and CPU.
//!
//! Whose request is whose: kube-controller-manager, the simulated kubelet, the binder and the
//! benchmark all use the environment's admin certificate, so `apiserver_request_total` (which
//! has no user label) cannot tell them apart. The controller therefore runs as a
//! ServiceAccount of its own (`bench-controller`, bound to cluster-admin, token from the
//! TokenRequest API), and kube-apiserver writes an audit log (level Metadata, one line per
//! request; level Request, with the body, for the controller's and real kubelets' `pods/status`
//! patches) naming the user, the user agent, the verb and the object of every request. The
//! benchmark's own client sends the user agent [`BENCH_AGENT`]; kube-controller-manager's
//! controllers name themselves in theirs; what remains under the admin user is the simulated
//! kubelet and binder.
#![allow(dead_code)] // each bench uses a different subset

use std::collections::BTreeMap;
use std::io::{BufRead, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, PostParams};
use kube::config::Kubeconfig;
use kube::{Client, Config};
use serde::Deserialize;
use serde_json::json;
use testenv::{Options, TestEnv};

pub type AnyResult<T> = Result<T, Box<dyn std::error::Error>>;

/// User agent of the benchmark's own requests.
pub const BENCH_AGENT: &str = "inplace-bench";
/// The controller's user in the audit log.
pub const CONTROLLER_USER: &str = "system:serviceaccount:inplace-upgrade-system:bench-controller";

/// An environment variable as a number, or `default`.
pub fn knob(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v.parse().unwrap_or_else(|_| {
            eprintln!("{name}={v:?} is not a whole number; using {default}");
            default
        }),
        Err(_) => default,
    }
}

/// `uptime`'s load averages (1, 5, 15 min), as printed with every measurement.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

pub fn now_utc() -> String {
    Timestamp::now().to_string()
}

/// A private control plane with an audit log; `dir` is removed when dropped unless
/// `INPLACE_BENCH_KEEP=1`.
pub struct Bench {
    pub env: TestEnv,
    pub audit: Audit,
    /// cluster-admin, user agent [`BENCH_AGENT`].
    pub client: Client,
    _dir: Option<tempfile::TempDir>,
}

impl Bench {
    pub async fn start(mut options: Options, audit: bool) -> AnyResult<Bench> {
        let temp = tempfile::Builder::new()
            .prefix("inplace-bench-")
            .tempdir()?;
        let dir = temp.path().to_path_buf();
        copy_binary(&dir)?;
        let audit_log = dir.join("audit.log");
        if audit {
            let policy = dir.join("audit-policy.yaml");
            // Metadata for everything (RequestReceived would double every line), except the
            // body of the controller's and real kubelets' `pods/status` patches: which
            // condition each one wrote (the drained window, `--bench prepull`).
            std::fs::write(
                &policy,
                format!(
                    "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n\
                     - level: Request\n  users: [\"{CONTROLLER_USER}\"]\n  verbs: [patch]\n  resources: [{{group: \"\", resources: [pods/status]}}]\n\
                     - level: Request\n  userGroups: [system:nodes]\n  verbs: [patch]\n  resources: [{{group: \"\", resources: [pods/status]}}]\n\
                     - level: Metadata\n"
                ),
            )?;
            options.apiserver_args.extend([
                format!("--audit-policy-file={}", policy.display()),
                format!("--audit-log-path={}", audit_log.display()),
                "--audit-log-format=json".into(),
                "--audit-log-mode=blocking".into(),
                "--audit-log-maxsize=0".into(),
            ]);
        }
        options.dir = Some(dir.clone());
        let env = TestEnv::start(options).await?;
        let mut config: Config = env.config().clone();
        config.headers.push((
            http::header::USER_AGENT,
            http::HeaderValue::from_static(BENCH_AGENT),
        ));
        let client = Client::try_from(config)?;
        let keep = std::env::var("INPLACE_BENCH_KEEP").is_ok_and(|v| v == "1");
        if keep {
            eprintln!("keeping {}", dir.display());
        }
        Ok(Bench {
            env,
            audit: Audit { path: audit_log },
            client,
            _dir: if keep {
                let _ = temp.keep();
                None
            } else {
                Some(temp)
            },
        })
    }

    /// Starts the controller under test (as `bench-controller`, logging to `logs/<log>` in
    /// the bench's directory) and waits for its initial sync; returns it and the sync time.
    pub async fn start_controller(&self, log: &str) -> AnyResult<(Controller, Duration)> {
        let mut controller = self.spawn_controller(log, None).await?;
        let sync = controller.await_synced(Duration::from_secs(600)).await?;
        Ok((controller, sync))
    }

    /// Starts a controller without waiting for its sync: the build under test, or a
    /// [`Variant`] to compare it with.
    pub async fn spawn_controller(
        &self,
        log: &str,
        variant: Option<&Variant>,
    ) -> AnyResult<Controller> {
        await_binary().await?;
        let kubeconfig = self.controller_kubeconfig().await?;
        let binary = variant_binary(variant)?;
        let env = variant.map(|v| v.env.as_slice()).unwrap_or_default();
        Controller::start_binary(
            &binary,
            env,
            &kubeconfig,
            self.env.dir().join("logs").join(log),
            &[],
        )
    }

    /// Starts `inplace-upgrade webhook` (the build under test, or a [`Variant`]) under the
    /// controller's identity, serving a certificate of its own on a free loopback port, and
    /// registered nowhere: what it costs to keep its caches. Ready (`/readyz`) once its
    /// certificate is loaded and its caches synced.
    pub async fn spawn_webhook(
        &self,
        log: &str,
        variant: Option<&Variant>,
    ) -> AnyResult<Controller> {
        await_binary().await?;
        let kubeconfig = self.controller_kubeconfig().await?;
        let certs = self.env.dir().join("webhook-tls");
        if !certs.join("tls.key").exists() {
            let status = Command::new(controller_binary()?)
                .args(["certs", "--ip", "127.0.0.1", "--out"])
                .arg(&certs)
                .stderr(Stdio::null())
                .status()?;
            if !status.success() {
                return Err(format!("inplace-upgrade certs failed: {status}").into());
            }
        }
        let listen = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let env = variant.map(|v| v.env.as_slice()).unwrap_or_default();
        let args = [
            "webhook".to_string(),
            "--listen".into(),
            listen.to_string(),
            "--cert-dir".into(),
            certs.display().to_string(),
        ];
        Controller::spawn(
            &variant_binary(variant)?,
            &args,
            env,
            &kubeconfig,
            self.env.dir().join("logs").join(log),
        )
    }

    /// A kubeconfig for the ServiceAccount `bench-controller` (cluster-admin), so the audit
    /// log can tell the controller's requests from everyone else's.
    pub async fn controller_kubeconfig(&self) -> AnyResult<PathBuf> {
        self.service_account_kubeconfig("inplace-upgrade-system", "bench-controller")
            .await
    }

    /// A kubeconfig for the ServiceAccount `ns/name`, created and bound to cluster-admin
    /// (its audit log user is `system:serviceaccount:<ns>:<name>`); `ns` must exist.
    pub async fn service_account_kubeconfig(&self, ns: &str, name: &str) -> AnyResult<PathBuf> {
        let sa: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": name}}))?;
        let sas = Api::<ServiceAccount>::namespaced(self.client.clone(), ns);
        match sas.create(&PostParams::default(), &sa).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
        let binding: ClusterRoleBinding = serde_json::from_value(json!({
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": ns}],
        }))?;
        match Api::<ClusterRoleBinding>::all(self.client.clone())
            .create(&PostParams::default(), &binding)
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
        let request: TokenRequest = serde_json::from_value(json!({
            "spec": {"audiences": [], "expirationSeconds": 86400}
        }))?;
        let token = sas
            .create_token_request(name, &PostParams::default(), &request)
            .await?
            .status
            .ok_or("TokenRequest returned no status")?
            .token;
        let dir = self.env.dir();
        let token_file = dir.join(format!("{name}.token"));
        std::fs::write(&token_file, token)?;
        let mut kubeconfig = Kubeconfig::read_from(self.env.kubeconfig_path())?;
        for named in &mut kubeconfig.auth_infos {
            named.auth_info = Some(kube::config::AuthInfo {
                token_file: Some(token_file.display().to_string()),
                ..Default::default()
            });
        }
        let path = dir.join(format!("{name}.kubeconfig"));
        std::fs::write(&path, serde_yaml::to_string(&kubeconfig)?)?;
        Ok(path)
    }
}

/// Another way to run the controller, measured beside the build under test: another build
/// (e.g. main's), or this one with other environment variables (a preloaded allocator, its
/// settings).
#[derive(Clone, Debug, Default)]
pub struct Variant {
    pub label: String,
    /// `None`: the build under test.
    pub binary: Option<PathBuf>,
    pub env: Vec<(String, String)>,
}

/// Parses `label=TOKENS;label=TOKENS`: a token `KEY=VALUE` sets an environment variable of
/// the controller, any other token is the binary to run (default: the build under test).
pub fn variants(spec: &str) -> AnyResult<Vec<Variant>> {
    let mut out = Vec::new();
    for entry in spec.split(';').map(str::trim).filter(|e| !e.is_empty()) {
        let (label, tokens) = entry
            .split_once('=')
            .ok_or_else(|| format!("variant {entry:?} is not label=TOKENS"))?;
        let mut variant = Variant {
            label: label.trim().to_string(),
            ..Variant::default()
        };
        for token in tokens.split_whitespace() {
            match token.split_once('=') {
                Some((k, v)) => variant.env.push((k.to_string(), v.to_string())),
                None => variant.binary = Some(PathBuf::from(token)),
            }
        }
        out.push(variant);
    }
    Ok(out)
}

/// Where [`Bench::start`] put its private copy of the `inplace-upgrade` binary under test:
/// the target directory is shared, and a later build must not change the code under test
/// between the phases of a long run. The copy lives in the bench's directory and goes with it.
static BINARY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// The `inplace-upgrade` binary under test: `BENCH_CONTROLLER` when set (e.g. a
/// `cargo build --release` binary while the bench itself runs as `--profile dev`, whose own
/// build of the crate is unoptimised), else the one cargo built beside this bench.
fn binary_under_test() -> PathBuf {
    match std::env::var_os("BENCH_CONTROLLER") {
        Some(b) if !b.is_empty() => PathBuf::from(b),
        _ => PathBuf::from(env!("CARGO_BIN_EXE_inplace-upgrade")),
    }
}

/// A `BENCH_CONTROLLER` that did not exist yet when the bench started (a release build still
/// linking): where it will be, and where its copy goes.
static PENDING: std::sync::OnceLock<(PathBuf, PathBuf)> = std::sync::OnceLock::new();

fn copy_binary(dir: &Path) -> AnyResult<()> {
    let built = binary_under_test();
    let copy = dir.join("inplace-upgrade");
    if !built.exists() && std::env::var_os("BENCH_CONTROLLER").is_some() {
        // The cluster can grow while the build finishes: the first controller or webhook
        // started through `Bench` waits for it ([`await_binary`]).
        println!(
            "# BENCH_CONTROLLER {} does not exist yet: waiting for it before the first controller",
            built.display()
        );
        let _ = PENDING.set((built, copy));
        return Ok(());
    }
    install_binary(&built, copy)
}

fn install_binary(built: &Path, copy: PathBuf) -> AnyResult<()> {
    std::fs::copy(built, &copy)
        .map_err(|e| format!("cannot copy the controller binary {}: {e}", built.display()))?;
    println!(
        "# inplace-upgrade under test: {} ({})",
        built.display(),
        now_utc()
    );
    let _ = BINARY.set(copy);
    Ok(())
}

/// Waits until the binary under test exists (see [`PENDING`]) and copies it; at once when
/// it already did.
pub async fn await_binary() -> AnyResult<PathBuf> {
    if let Some((built, copy)) = PENDING.get()
        && BINARY.get().is_none()
    {
        while !built.exists() {
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        install_binary(built, copy.clone())?;
    }
    controller_binary()
}

/// The variant's binary, or the build under test.
fn variant_binary(variant: Option<&Variant>) -> AnyResult<PathBuf> {
    match variant.and_then(|v| v.binary.clone()) {
        Some(b) => Ok(b),
        None => controller_binary(),
    }
}

/// The private copy of the binary under test (controller and webhook); after [`Bench::start`].
pub fn controller_binary() -> AnyResult<PathBuf> {
    BINARY.get().cloned().ok_or_else(|| {
        match PENDING.get() {
            Some((built, _)) => format!(
                "BENCH_CONTROLLER {} is not built yet (await_binary waits for it)",
                built.display()
            ),
            None => "start a Bench before a Controller".to_string(),
        }
        .into()
    })
}

/// One `inplace-upgrade controller` (or `webhook`) process (release build); killed when
/// dropped.
pub struct Controller {
    pub child: Child,
    pub admin: u16,
    pub log: PathBuf,
    pub started: Instant,
}

impl Controller {
    pub fn start(kubeconfig: &Path, log: PathBuf, extra: &[&str]) -> AnyResult<Controller> {
        Self::start_binary(&controller_binary()?, &[], kubeconfig, log, extra)
    }

    /// [`Controller::start`] of another build of `inplace-upgrade`, with more environment.
    pub fn start_binary(
        binary: &Path,
        env: &[(String, String)],
        kubeconfig: &Path,
        log: PathBuf,
        extra: &[&str],
    ) -> AnyResult<Controller> {
        let mut args: Vec<String> = ["controller", "--identity", "bench"]
            .iter()
            .map(|a| a.to_string())
            .collect();
        args.extend(extra.iter().map(|a| a.to_string()));
        Self::spawn(binary, &args, env, kubeconfig, log)
    }

    /// One `inplace-upgrade` process running `args`, with an admin port of its own.
    pub fn spawn(
        binary: &Path,
        args: &[String],
        env: &[(String, String)],
        kubeconfig: &Path,
        log: PathBuf,
    ) -> AnyResult<Controller> {
        let admin = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let started = Instant::now();
        let child = Command::new(binary)
            .args(args)
            .args(["--admin-addr", &format!("127.0.0.1:{admin}")])
            .args(["--log-level", "info"])
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .env("POD_NAMESPACE", "inplace-upgrade-system")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()?;
        Ok(Controller {
            child,
            admin,
            log,
            started,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn get(&self, path: &str) -> std::io::Result<String> {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.admin))?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
        let mut body = String::new();
        s.read_to_string(&mut body)?;
        Ok(body)
    }

    /// Waits until `/readyz` answers 200 (every watch listed) and returns the time from the
    /// process start: the initial sync time.
    pub async fn await_synced(&mut self, limit: Duration) -> AnyResult<Duration> {
        loop {
            if let Ok(body) = self.get("/readyz")
                && body.starts_with("HTTP/1.")
                && body.split_whitespace().nth(1) == Some("200")
            {
                return Ok(self.started.elapsed());
            }
            if let Some(status) = self.child.try_wait()? {
                return Err(format!(
                    "the controller exited ({status}) before its caches synced; see {}",
                    self.log.display()
                )
                .into());
            }
            if self.started.elapsed() > limit {
                return Err(format!(
                    "the controller did not sync within {limit:?}; see {}",
                    self.log.display()
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Resident set size now, in MiB.
    pub fn rss_mib(&self) -> f64 {
        proc_status(self.pid(), "VmRSS:") / 1024.0
    }

    /// Peak resident set size so far, in MiB.
    pub fn peak_rss_mib(&self) -> f64 {
        proc_status(self.pid(), "VmHWM:") / 1024.0
    }

    /// User + system CPU time so far, in seconds.
    pub fn cpu_seconds(&self) -> f64 {
        cpu_seconds(self.pid())
    }
}

impl Controller {
    /// Stops the controller as Kubernetes would (SIGTERM: it releases its Lease, so the next
    /// controller of the bench leads at once), killing it if it has not exited within 10 s.
    pub fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `/proc/<pid>/status` field in kB.
pub fn proc_status(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(f64::NAN)
}

/// utime + stime of a process from `/proc/<pid>/stat`, in seconds (clock ticks of 100 Hz,
/// the value on every Linux this runs on).
pub fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return f64::NAN;
    };
    // Fields after the command name (which may hold spaces) start at state (field 3).
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return f64::NAN;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime is field 14, stime 15; `rest` starts at field 3.
    (ticks(11) + ticks(12)) / 100.0
}

/// kube-apiserver's audit log.
pub struct Audit {
    pub path: PathBuf,
}

#[derive(Deserialize, Debug, Clone)]
#[serde(rename_all = "camelCase")]
pub struct AuditEvent {
    #[serde(rename = "auditID")]
    pub audit_id: String,
    pub stage: String,
    pub verb: String,
    pub user: AuditUser,
    #[serde(default)]
    pub user_agent: String,
    #[serde(default)]
    pub object_ref: Option<ObjectRef>,
    pub request_received_timestamp: Timestamp,
    /// When this stage was reached (for a write: ResponseComplete, after etcd stored it), to
    /// the microsecond.
    pub stage_timestamp: Timestamp,
    /// The request body, where the policy logs it (level Request).
    #[serde(default)]
    pub request_object: Option<serde_json::Value>,
    #[serde(default)]
    pub response_status: Option<ResponseStatus>,
    #[serde(rename = "requestURI")]
    pub request_uri: String,
}

#[derive(Deserialize, Debug, Clone)]
pub struct AuditUser {
    #[serde(default)]
    pub username: String,
}

#[derive(Deserialize, Debug, Clone, Default)]
#[serde(rename_all = "camelCase")]
pub struct ObjectRef {
    #[serde(default)]
    pub resource: String,
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub subresource: String,
}

#[derive(Deserialize, Debug, Clone, Default)]
pub struct ResponseStatus {
    #[serde(default)]
    pub code: i32,
}

/// Who made a request, in the benchmark's terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Actor {
    Controller,
    Bench,
    /// kube-controller-manager (deployment, replicaset, endpointslice, … controllers).
    ControllerManager,
    /// The simulated kubelet and binder (the harness, admin user, kube-rs agent).
    Kubelet,
    Other,
}

impl AuditEvent {
    pub fn actor(&self) -> Actor {
        if self.user.username == CONTROLLER_USER {
            Actor::Controller
        } else if self.user_agent == BENCH_AGENT {
            Actor::Bench
        } else if self.user_agent.starts_with("kube-controller-manager") {
            Actor::ControllerManager
        } else if self.user.username == "kubernetes-admin" {
            Actor::Kubelet
        } else {
            Actor::Other
        }
    }

    /// `verb resource[/subresource]`, e.g. `patch pods/status`.
    pub fn what(&self) -> String {
        let r = self.object_ref.clone().unwrap_or_default();
        let resource = if r.resource.is_empty() {
            self.request_uri.clone()
        } else if r.subresource.is_empty() {
            r.resource
        } else {
            format!("{}/{}", r.resource, r.subresource)
        };
        format!("{} {resource}", self.verb)
    }

    pub fn is_write(&self) -> bool {
        matches!(
            self.verb.as_str(),
            "create" | "update" | "patch" | "delete" | "deletecollection"
        )
    }

    pub fn resource(&self) -> &str {
        self.object_ref.as_ref().map_or("", |r| r.resource.as_str())
    }

    pub fn subresource(&self) -> &str {
        self.object_ref
            .as_ref()
            .map_or("", |r| r.subresource.as_str())
    }

    pub fn name(&self) -> &str {
        self.object_ref.as_ref().map_or("", |r| r.name.as_str())
    }

    pub fn namespace(&self) -> &str {
        self.object_ref
            .as_ref()
            .map_or("", |r| r.namespace.as_str())
    }
}

impl Audit {
    /// The log's length now: read from here to see only later requests.
    pub fn mark(&self) -> u64 {
        std::fs::metadata(&self.path).map_or(0, |m| m.len())
    }

    /// Every request logged after `from`, once each (a watch logs ResponseStarted and, when
    /// it ends, ResponseComplete), in log order.
    pub fn since(&self, from: u64) -> AnyResult<Vec<AuditEvent>> {
        let mut f = std::fs::File::open(&self.path)?;
        f.seek(std::io::SeekFrom::Start(from))?;
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        for line in std::io::BufReader::new(f).lines() {
            let line = line?;
            let Ok(ev) = serde_json::from_str::<AuditEvent>(&line) else {
                continue; // a line cut at the mark
            };
            if seen.insert(ev.audit_id.clone()) {
                out.push(ev);
            }
        }
        Ok(out)
    }
}

/// Requests counted by `verb resource`.
pub fn by_what<'a>(events: impl Iterator<Item = &'a AuditEvent>) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for e in events {
        *m.entry(e.what()).or_insert(0) += 1;
    }
    m
}

/// The `p`-th percentile (0..=100) by nearest rank; NaN when empty.
pub fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Milliseconds from `a` to `b` (negative when `b` is earlier).
pub fn ms_between(a: Timestamp, b: Timestamp) -> f64 {
    (b.as_microsecond() - a.as_microsecond()) as f64 / 1000.0
}

/// The load average and the time, printed before and after each measurement.
pub fn stamp(what: &str) {
    println!(
        "# {what}: {} UTC, load average {}",
        now_utc(),
        load_average()
    );
}

/// `perf record` attached to a process while it lives, when `BENCH_PERF_DIR` is set (for
/// the profiles in docs/benchmarks.md); stopped with SIGINT so it writes its data.
pub struct Perf(Option<Child>);

impl Perf {
    pub fn attach(pid: u32, name: &str) -> Perf {
        let Ok(dir) = std::env::var("BENCH_PERF_DIR") else {
            return Perf(None);
        };
        let out = Path::new(&dir).join(format!("{name}.data"));
        let child = Command::new("perf")
            .args(["record", "-F", "499", "-g", "--call-graph", "dwarf,16384"])
            .args(["-p", &pid.to_string(), "-o"])
            .arg(&out)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        match child {
            Ok(c) => {
                eprintln!("perf recording {} into {}", pid, out.display());
                Perf(Some(c))
            }
            Err(e) => {
                eprintln!("perf record did not start ({e}); no profile");
                Perf(None)
            }
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = Command::new("kill")
                .args(["-INT", &c.id().to_string()])
                .status();
            let _ = c.wait();
        }
    }
}

impl Drop for Perf {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Deletes the mutating and the validating webhook configuration named `name`; either may be
/// absent.
pub async fn delete_configurations(client: &Client, name: &str) -> AnyResult<()> {
    let params = DeleteParams::default();
    for deleted in [
        Api::<MutatingWebhookConfiguration>::all(client.clone())
            .delete(name, &params)
            .await
            .map(|_| ()),
        Api::<ValidatingWebhookConfiguration>::all(client.clone())
            .delete(name, &params)
            .await
            .map(|_| ()),
    ] {
        match deleted {
            Ok(()) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}
