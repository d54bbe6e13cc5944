//! The mutate-path benchmark: pod CREATE AdmissionReviews built from a real Istio-injected pod,
//! sent over TLS (HTTP/1.1 keep-alive and h2) to
//! - ours: [`TlsServer`] + [`AdmissionRouter`] with the real pod mutation
//!   ([`inplace_upgrade::admission::mutate::mutate_pod`]) over an in-memory cluster view, and
//! - echo: a bare tokio-rustls + hyper + axum server with the same rustls configuration that
//!   reads the body and answers with a same-size body (the bytes ours answered), the floor of
//!   the transport on this machine,
//!
//! at fixed offered rates and at saturation. It prints numbers and never fails on a slow
//! machine; it fails only when it cannot set up (fixture missing, a server not answering,
//! the mutation giving no patch).
//!
//! The load generator runs in this process on its own tokio runtime, beside the servers' own
//! runtime: on a 2-core machine they compete for the same cores, so client latency includes
//! the client's own work.
//!
//! Run: `cargo bench -p inplace-upgrade-webhook --bench mutate`.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    process::ExitCode,
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{Router, http::header, routing::post};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{
    Request, StatusCode,
    client::conn::{http1, http2},
};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
    service::TowerToHyperService,
};
use inplace_upgrade::{
    TARGETS_ANNOTATION,
    admission::{ClusterView, Settings, mutate::mutate_pod},
    controller::{WorkloadKey, WorkloadView},
    policy::InPlaceUpgradePolicy,
};
use inplace_upgrade_webhook::{
    AdmissionRequest, AdmissionRouter, CertificateStore, TlsServer, WebhookMetrics,
    certs::{self, SubjectAltNames},
};
use k8s_openapi::api::{
    apps::v1::ReplicaSet,
    core::v1::{Namespace, Pod},
};
use prometheus_client::{encoding::text::encode, registry::Registry};
use rustls::{
    ClientConfig, RootCertStore,
    pki_types::{CertificateDer, ServerName, pem::PemObject},
};
use serde_json::{Value, json};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{Mutex, mpsc, watch},
};
use tokio_rustls::{TlsAcceptor, TlsConnector};

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../shared/fixtures/istio/native-sidecar.yaml.injected"
);
const HOST: &str = "inplace-upgrade-webhook.inplace-upgrade-system.svc";
const PATH: &str = "/mutate-pods";
const NAMESPACE: &str = "bench";
const REPLICA_SET: &str = "hello-rs";
const PROXY_NEW: &str = "registry.istio.io/testing/proxyv2:1.99.0";
const DAY: Duration = Duration::from_secs(24 * 60 * 60);

/// Length of each measured phase; 12 phases plus warm-up keep the run under a minute.
const PHASE: Duration = Duration::from_secs(3);
const WARM_UP: Duration = Duration::from_millis(500);
/// Fixed-rate phases: keep-alive HTTP/1.1 connections (one request in flight each) or
/// concurrent streams over [`H2_CONNECTIONS`] h2 connections; enough that a 1-2 ms response
/// does not queue at 5k req/s.
const RATE_CONCURRENCY: usize = 16;
/// Saturation: closed loop, this many requests in flight at all times.
const SATURATION_CONCURRENCY: usize = 16;
const H2_CONNECTIONS: usize = 2;
const RATES: [u32; 2] = [1_000, 5_000];

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("mutate bench: {err}");
            ExitCode::FAILURE
        }
    }
}

/// What `mutate_pod` reads: one Namespace, one standalone ReplicaSet annotated to move
/// `istio-proxy` to a new image, one policy, a live controller. Clones per call, like the
/// live view's caches do.
struct BenchView {
    namespace: Arc<Namespace>,
    replica_set: Arc<ReplicaSet>,
    workload: WorkloadView,
    policies: Vec<InPlaceUpgradePolicy>,
}

impl ClusterView for BenchView {
    fn synced(&self) -> bool {
        true
    }
    fn namespace(&self, name: &str) -> Option<Arc<Namespace>> {
        (name == NAMESPACE).then(|| self.namespace.clone())
    }
    fn replica_set(&self, namespace: &str, name: &str) -> Option<Arc<ReplicaSet>> {
        (namespace == NAMESPACE && name == REPLICA_SET).then(|| self.replica_set.clone())
    }
    fn workload(&self, key: &WorkloadKey) -> Option<WorkloadView> {
        (key == &self.workload.key).then(|| self.workload.clone())
    }
    fn workloads_in(&self, namespace: &str) -> Vec<WorkloadView> {
        if namespace == NAMESPACE {
            vec![self.workload.clone()]
        } else {
            Vec::new()
        }
    }
    fn policies(&self) -> Vec<InPlaceUpgradePolicy> {
        self.policies.clone()
    }
    fn controller_alive(&self) -> bool {
        true
    }
}

/// The fixture pod as the ReplicaSet controller would create it, and the view it lives in.
fn scenario() -> Result<(Value, BenchView), BoxError> {
    let text = std::fs::read_to_string(FIXTURE).map_err(|err| {
        format!(
            "cannot read the Istio fixture {FIXTURE}: {err}; the repository must be cloned next \
             to `shared/` (see shared/fixtures/istio/README.md)"
        )
    })?;
    // The file holds the Pod, then other documents.
    let document = serde_yaml::Deserializer::from_str(&text)
        .next()
        .ok_or_else(|| format!("{FIXTURE} holds no YAML document"))?;
    let mut pod: Value = <Value as serde::Deserialize>::deserialize(document)
        .map_err(|err| format!("{FIXTURE} is not YAML: {err}"))?;
    if pod["kind"] != "Pod" {
        return Err(format!("{FIXTURE}: the first document is not a Pod").into());
    }
    let metadata = pod["metadata"]
        .as_object_mut()
        .ok_or_else(|| format!("{FIXTURE}: the Pod has no metadata"))?;
    metadata.remove("name");
    metadata.insert("generateName".into(), json!(format!("{REPLICA_SET}-")));
    metadata.insert(
        "ownerReferences".into(),
        json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": REPLICA_SET,
                "uid": "uid-rs", "controller": true, "blockOwnerDeletion": true}]),
    );
    let labels = pod["metadata"]["labels"].clone();
    let replica_set: ReplicaSet = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {"name": REPLICA_SET, "namespace": NAMESPACE, "uid": "uid-rs",
                     "annotations": {TARGETS_ANNOTATION: format!("istio-proxy={PROXY_NEW}")}},
        "spec": {"replicas": 3, "selector": {"matchLabels": labels},
                 "template": {"metadata": {"labels": labels}, "spec": pod["spec"]}},
        "status": {"replicas": 3, "readyReplicas": 3, "availableReplicas": 3},
    }))?;
    let namespace: Namespace = serde_json::from_value(json!({
        "metadata": {"name": NAMESPACE, "labels": {"kubernetes.io/metadata.name": NAMESPACE}}
    }))?;
    let policy: InPlaceUpgradePolicy = serde_json::from_value(json!({
        "apiVersion": "inplace-upgrade.io/v1alpha1", "kind": "InPlaceUpgradePolicy",
        "metadata": {"name": "mesh"},
        "spec": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": NAMESPACE}}},
    }))?;
    let view = BenchView {
        workload: WorkloadView::from_replica_set(&replica_set),
        namespace: Arc::new(namespace),
        replica_set: Arc::new(replica_set),
        policies: vec![policy],
    };
    Ok((pod, view))
}

/// A pod CREATE AdmissionReview the way kube-apiserver sends it.
fn review_body(pod: &Value) -> Result<Bytes, BoxError> {
    let review = json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "0f7a4c3e-5b1d-4e8a-9c2f-6d3b1a0e9f47",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "name": "",
            "namespace": NAMESPACE,
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller",
                         "uid": "5c4f2c1a-7e55-4b8e-8a0e-0d3f4b8d2a11",
                         "groups": ["system:serviceaccounts", "system:serviceaccounts:kube-system",
                                    "system:authenticated"]},
            "object": pod,
            "oldObject": null,
            "dryRun": false,
            "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"},
        }
    });
    Ok(Bytes::from(serde_json::to_vec(&review)?))
}

#[derive(Clone, Copy, PartialEq)]
enum Protocol {
    Http1,
    H2,
}

impl Protocol {
    fn name(self) -> &'static str {
        match self {
            Protocol::Http1 => "http/1.1",
            Protocol::H2 => "h2",
        }
    }
}

#[derive(Clone, Copy)]
enum Load {
    Rate(u32),
    Saturation,
}

impl Load {
    fn name(self) -> String {
        match self {
            Load::Rate(rate) => format!("{rate} req/s"),
            Load::Saturation => format!("saturation x{SATURATION_CONCURRENCY}"),
        }
    }
}

/// One keep-alive connection (HTTP/1.1: one request at a time) or a share of an h2 one.
enum Sender {
    Http1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

impl Sender {
    async fn connect(
        addr: SocketAddr,
        protocol: Protocol,
        config: Arc<ClientConfig>,
    ) -> Result<Sender, BoxError> {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let name = ServerName::try_from(HOST.to_owned())?;
        let mut config = ClientConfig::clone(&config);
        config.alpn_protocols = vec![match protocol {
            Protocol::Http1 => b"http/1.1".to_vec(),
            Protocol::H2 => b"h2".to_vec(),
        }];
        let tls = TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await?;
        let io = TokioIo::new(tls);
        Ok(match protocol {
            Protocol::Http1 => {
                let (sender, connection) = http1::handshake(io).await?;
                tokio::spawn(connection);
                Sender::Http1(sender)
            }
            Protocol::H2 => {
                let (sender, connection) = http2::handshake(TokioExecutor::new(), io).await?;
                tokio::spawn(connection);
                Sender::H2(sender)
            }
        })
    }

    fn share(&self) -> Option<Sender> {
        match self {
            Sender::H2(sender) => Some(Sender::H2(sender.clone())),
            Sender::Http1(_) => None,
        }
    }

    /// Sends one review and returns the response body.
    async fn send(&mut self, body: Bytes) -> Result<Bytes, BoxError> {
        let response = match self {
            Sender::Http1(sender) => {
                let request = Request::post(PATH)
                    .header(header::HOST, HOST)
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(Full::new(body))?;
                sender.ready().await?;
                sender.send_request(request).await?
            }
            Sender::H2(sender) => {
                let request = Request::post(format!("https://{HOST}{PATH}"))
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(Full::new(body))?;
                sender.ready().await?;
                sender.send_request(request).await?
            }
        };
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        if status != StatusCode::OK {
            return Err(format!("HTTP {status}: {}", String::from_utf8_lossy(&body)).into());
        }
        Ok(body)
    }
}

/// `concurrency` senders: as many HTTP/1.1 connections, or streams over [`H2_CONNECTIONS`].
async fn open(
    addr: SocketAddr,
    protocol: Protocol,
    config: &Arc<ClientConfig>,
    concurrency: usize,
) -> Result<Vec<Sender>, BoxError> {
    let mut senders = Vec::with_capacity(concurrency);
    match protocol {
        Protocol::Http1 => {
            for _ in 0..concurrency {
                senders.push(Sender::connect(addr, protocol, config.clone()).await?);
            }
        }
        Protocol::H2 => {
            let mut connections = Vec::new();
            for _ in 0..H2_CONNECTIONS {
                connections.push(Sender::connect(addr, protocol, config.clone()).await?);
            }
            for i in 0..concurrency {
                if let Some(shared) = connections[i % H2_CONNECTIONS].share() {
                    senders.push(shared);
                }
            }
        }
    }
    Ok(senders)
}

struct Outcome {
    /// Client latencies; at a fixed rate measured from the scheduled send time, so a request
    /// that waited for a free connection counts its wait (no coordinated omission).
    latencies: Vec<Duration>,
    errors: usize,
    first_error: Option<String>,
    elapsed: Duration,
}

/// Drives `senders` for `duration`: open loop at a fixed rate, or closed loop at saturation.
async fn drive(senders: Vec<Sender>, body: Bytes, load: Load, duration: Duration) -> Outcome {
    let started = Instant::now();
    let deadline = started + duration;
    let schedule = match load {
        Load::Rate(rate) => {
            let (tx, rx) = mpsc::unbounded_channel::<Instant>();
            tokio::spawn(async move {
                // Tokio timers tick at 1 ms: each tick releases every request due by then,
                // stamped with its own due time.
                let interval = Duration::from_secs_f64(1.0 / f64::from(rate));
                let mut sent: u32 = 0;
                loop {
                    let now = Instant::now();
                    if now >= deadline {
                        break;
                    }
                    while started + interval * sent <= now {
                        if tx.send(started + interval * sent).is_err() {
                            return;
                        }
                        sent += 1;
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            });
            Some(Arc::new(Mutex::new(rx)))
        }
        Load::Saturation => None,
    };
    let mut workers = Vec::new();
    for mut sender in senders {
        let body = body.clone();
        let schedule = schedule.clone();
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0;
            let mut first_error = None;
            loop {
                let start = match &schedule {
                    Some(schedule) => match schedule.lock().await.recv().await {
                        Some(due) => due,
                        None => break,
                    },
                    None => {
                        let now = Instant::now();
                        if now >= deadline {
                            break;
                        }
                        now
                    }
                };
                match sender.send(body.clone()).await {
                    Ok(_) => latencies.push(start.elapsed()),
                    Err(err) => {
                        errors += 1;
                        first_error.get_or_insert_with(|| err.to_string());
                        // A broken connection stays broken: stop this worker.
                        break;
                    }
                }
            }
            (latencies, errors, first_error)
        }));
    }
    let mut outcome = Outcome {
        latencies: Vec::new(),
        errors: 0,
        first_error: None,
        elapsed: Duration::ZERO,
    };
    for worker in workers {
        match worker.await {
            Ok((latencies, errors, first_error)) => {
                outcome.latencies.extend(latencies);
                outcome.errors += errors;
                if outcome.first_error.is_none() {
                    outcome.first_error = first_error;
                }
            }
            Err(err) => {
                outcome.errors += 1;
                outcome.first_error.get_or_insert_with(|| err.to_string());
            }
        }
    }
    outcome.elapsed = started.elapsed();
    outcome.latencies.sort_unstable();
    outcome
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1e3)
}

/// Cumulative bucket counts of the transport's latency histogram for our route, by bound.
fn server_buckets(registry: &Registry) -> BTreeMap<u64, (f64, u64)> {
    let mut text = String::new();
    let mut buckets = BTreeMap::new();
    if encode(&mut text, registry).is_err() {
        return buckets;
    }
    for line in text.lines() {
        if !line.starts_with("webhook_admission_duration_seconds_bucket{")
            || !line.contains(&format!("route=\"{PATH}\""))
        {
            continue;
        }
        let bound = line
            .split("le=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .and_then(|le| {
                if le == "+Inf" {
                    Some(f64::INFINITY)
                } else {
                    le.parse::<f64>().ok()
                }
            });
        let count = line
            .rsplit(' ')
            .next()
            .and_then(|count| count.parse::<u64>().ok());
        if let (Some(bound), Some(count)) = (bound, count) {
            // Order by bound; f64 bits of non-negative numbers sort like the numbers.
            let entry = buckets.entry(bound.to_bits()).or_insert((bound, 0));
            entry.1 += count;
        }
    }
    buckets
}

/// The bucket bound holding the server-side p99 of the requests between two snapshots.
fn server_p99(before: &BTreeMap<u64, (f64, u64)>, after: &BTreeMap<u64, (f64, u64)>) -> String {
    let delta: Vec<(f64, u64)> = after
        .iter()
        .map(|(key, (bound, count))| {
            let earlier = before.get(key).map_or(0, |(_, count)| *count);
            (*bound, count.saturating_sub(earlier))
        })
        .collect();
    let total = delta.last().map_or(0, |(_, count)| *count);
    if total == 0 {
        return "-".into();
    }
    let wanted = (total as f64 * 0.99).ceil() as u64;
    match delta.iter().find(|(_, count)| *count >= wanted) {
        Some((bound, _)) if bound.is_finite() => {
            format!("<={}", ms(Duration::from_secs_f64(*bound)))
        }
        _ => ">2500".into(),
    }
}

/// utime + stime of this process (client and both servers), from /proc/self/stat.
fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // USER_HZ is 100 on every Linux architecture this runs on.
    Some(Duration::from_millis((utime + stime) * 10))
}

/// Resident set size in KiB, from /proc/self/status.
fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The bare floor: same rustls configuration, hyper's auto (HTTP/1.1 + h2) connection
/// builder, an axum route that reads the whole body and answers with `answer`.
async fn serve_echo(listener: TcpListener, config: Arc<rustls::ServerConfig>, answer: Bytes) {
    let router = Router::new().route(
        PATH,
        post(move |body: Bytes| {
            let answer = answer.clone();
            async move {
                drop(body);
                ([(header::CONTENT_TYPE, "application/json")], answer)
            }
        }),
    );
    let acceptor = TlsAcceptor::from(config);
    let builder = auto::Builder::new(TokioExecutor::new());
    while let Ok((tcp, _)) = listener.accept().await {
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let builder = builder.clone();
        let service = TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            if let Ok(tls) = acceptor.accept(tcp).await {
                let _ = builder.serve_connection(TokioIo::new(tls), service).await;
            }
        });
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| text.trim().to_owned())
        .unwrap_or_else(|err| format!("unknown ({err})"))
}

fn run() -> Result<(), BoxError> {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("mutate bench: nproc {cores}, load average {}", loadavg());
    println!(
        "  servers: one tokio runtime ({cores} workers); load generator: a second runtime \
         ({cores} workers) in the same process, on the same cores"
    );
    let (pod, view) = scenario()?;
    let body = review_body(&pod)?;
    let settings = Settings {
        controller_namespace: "inplace-upgrade-system".into(),
    };

    let ca = certs::generate_ca("bench webhook CA", 30 * DAY)?;
    let names = SubjectAltNames::for_service("inplace-upgrade-webhook", "inplace-upgrade-system");
    let serving = certs::generate_serving_certificate(&ca, "inplace-upgrade-webhook", &names, DAY)?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca.cert_pem.as_bytes()) {
        roots.add(cert?)?;
    }
    let client_config = Arc::new(
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );

    let server_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores.max(1))
        .thread_name("server")
        .enable_all()
        .build()?;
    let client_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores.max(1))
        .thread_name("load")
        .enable_all()
        .build()?;

    let mut registry = Registry::default();
    let metrics = WebhookMetrics::new(&mut registry);
    let router = AdmissionRouter::new(metrics.clone())
        .handler(PATH, move |request: &AdmissionRequest<Pod>| {
            mutate_pod(request, &view, &settings)
        })
        .into_router();
    let store = CertificateStore::new(metrics);
    store.load_pem(serving.cert_pem.as_bytes(), serving.key_pem.as_bytes())?;
    let server_config = store.server_config()?;
    let (stop, stopped) = watch::channel(false);
    let (ours, echo_listener, echo) = server_runtime.block_on(async {
        let ours = TcpListener::bind("127.0.0.1:0").await?;
        let echo = TcpListener::bind("127.0.0.1:0").await?;
        let (ours_addr, echo_addr) = (ours.local_addr()?, echo.local_addr()?);
        Ok::<_, std::io::Error>(((ours, ours_addr), echo, echo_addr))
    })?;
    let (ours_listener, ours) = ours;
    let served = server_runtime.spawn(
        TlsServer::new(ours_listener, router, server_config.clone()).serve(async move {
            let mut stopped = stopped;
            let _ = stopped.wait_for(|stop| *stop).await;
        }),
    );

    // One request to ours: the answer must carry the mutation, and the echo answers with
    // exactly those bytes.
    let answer = client_runtime.block_on(async {
        let mut sender = Sender::connect(ours, Protocol::Http1, client_config.clone()).await?;
        sender.send(body.clone()).await
    })?;
    let decoded: Value = serde_json::from_slice(&answer)?;
    let patch_len = decoded["response"]["patch"].as_str().map_or(0, str::len);
    if patch_len == 0 {
        return Err(format!(
            "the mutation gave no patch, so this would not measure it: {}",
            String::from_utf8_lossy(&answer)
        )
        .into());
    }
    server_runtime.spawn(serve_echo(echo_listener, server_config, answer.clone()));
    println!(
        "  review {} bytes (fixture {FIXTURE}), response {} bytes (base64 JSON patch {patch_len} \
         bytes); ours https://{ours}{PATH}, echo https://{echo}{PATH}",
        body.len(),
        answer.len()
    );
    println!(
        "  phases of {} s after {} ms warm-up; fixed rates over {RATE_CONCURRENCY} HTTP/1.1 \
         connections or {RATE_CONCURRENCY} streams on {H2_CONNECTIONS} h2 connections",
        PHASE.as_secs(),
        WARM_UP.as_millis()
    );
    println!();
    println!(
        "{:<8} {:<17} {:<5} {:>9} {:>9} {:>9} {:>10} {:>8} {:>11} {:>10} {:>9}",
        "proto",
        "load",
        "srv",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "req/s",
        "errors",
        "srv p99 ms",
        "cpu us/req",
        "rss KiB"
    );

    let rss_start = rss_kib();
    let cpu_start = cpu_time();
    let run_started = Instant::now();
    let mut summary = Vec::new();
    for protocol in [Protocol::Http1, Protocol::H2] {
        for load in RATES
            .iter()
            .map(|rate| Load::Rate(*rate))
            .chain([Load::Saturation])
        {
            let concurrency = match load {
                Load::Rate(_) => RATE_CONCURRENCY,
                Load::Saturation => SATURATION_CONCURRENCY,
            };
            let mut pair = Vec::new();
            for (server, addr) in [("ours", ours), ("echo", echo)] {
                let (outcome, cpu, rss, server_side) = client_runtime.block_on(async {
                    let senders = open(addr, protocol, &client_config, concurrency).await?;
                    // Warm-up (allocator, caches, code paths), then fresh connections so the
                    // measured phase starts with none of the warm-up's requests in flight.
                    let warm = drive(senders, body.clone(), load, WARM_UP).await;
                    if warm.errors > 0 {
                        return Err(format!(
                            "{server} failed during warm-up: {}",
                            warm.first_error.unwrap_or_default()
                        )
                        .into());
                    }
                    let senders = open(addr, protocol, &client_config, concurrency).await?;
                    let buckets_before = server_buckets(&registry);
                    let cpu_before = cpu_time();
                    let rss_before = rss_kib();
                    let outcome = drive(senders, body.clone(), load, PHASE).await;
                    let cpu = match (cpu_before, cpu_time()) {
                        (Some(before), Some(after)) => Some(after.saturating_sub(before)),
                        _ => None,
                    };
                    let rss = match (rss_before, rss_kib()) {
                        (Some(before), Some(after)) => Some(after as i64 - before as i64),
                        _ => None,
                    };
                    let server_side = if server == "ours" {
                        server_p99(&buckets_before, &server_buckets(&registry))
                    } else {
                        "-".into()
                    };
                    Ok::<_, BoxError>((outcome, cpu, rss, server_side))
                })?;
                let done = outcome.latencies.len();
                let throughput = done as f64 / outcome.elapsed.as_secs_f64();
                let cpu_per_request = cpu.filter(|_| done > 0).map_or("-".into(), |cpu| {
                    format!("{:.0}", cpu.as_secs_f64() * 1e6 / done as f64)
                });
                println!(
                    "{:<8} {:<17} {:<5} {:>9} {:>9} {:>9} {:>10.0} {:>8} {:>11} {:>10} {:>9}",
                    protocol.name(),
                    load.name(),
                    server,
                    ms(percentile(&outcome.latencies, 50.0)),
                    ms(percentile(&outcome.latencies, 99.0)),
                    ms(percentile(&outcome.latencies, 99.9)),
                    throughput,
                    outcome.errors,
                    server_side,
                    cpu_per_request,
                    rss.map_or("-".into(), |delta| format!("{delta:+}")),
                );
                if let Some(err) = &outcome.first_error {
                    println!("    first error: {err}");
                }
                if let Load::Rate(rate) = load
                    && throughput < f64::from(rate) * 0.95
                {
                    println!(
                        "    offered {rate} req/s not sustained: {throughput:.0} req/s achieved"
                    );
                }
                pair.push((outcome, throughput));
            }
            if let [(ours_outcome, ours_rate), (echo_outcome, echo_rate)] = &pair[..] {
                let ratio = |ours: Duration, echo: Duration| {
                    if echo.is_zero() {
                        "-".to_owned()
                    } else {
                        format!("{:.2}", ours.as_secs_f64() / echo.as_secs_f64())
                    }
                };
                let line = format!(
                    "{:<8} {:<17} ours/echo: p50 x{}, p99 x{}, p99.9 x{}, throughput {:.0}%",
                    protocol.name(),
                    load.name(),
                    ratio(
                        percentile(&ours_outcome.latencies, 50.0),
                        percentile(&echo_outcome.latencies, 50.0)
                    ),
                    ratio(
                        percentile(&ours_outcome.latencies, 99.0),
                        percentile(&echo_outcome.latencies, 99.0)
                    ),
                    ratio(
                        percentile(&ours_outcome.latencies, 99.9),
                        percentile(&echo_outcome.latencies, 99.9)
                    ),
                    if *echo_rate > 0.0 {
                        ours_rate / echo_rate * 100.0
                    } else {
                        0.0
                    },
                );
                println!("  {line}");
                summary.push(line);
            }
        }
    }

    println!();
    for line in &summary {
        println!("{line}");
    }
    let cpu_total = match (cpu_start, cpu_time()) {
        (Some(before), Some(after)) => {
            format!("{:.2} s", after.saturating_sub(before).as_secs_f64())
        }
        _ => "unknown".into(),
    };
    let rss_delta = match (rss_start, rss_kib()) {
        (Some(before), Some(after)) => {
            format!("{:+} KiB (now {after} KiB)", after as i64 - before as i64)
        }
        _ => "unknown".into(),
    };
    println!(
        "process (client + both servers) over {:.1} s: CPU {cpu_total}, RSS {rss_delta}; \
         load average now {}",
        run_started.elapsed().as_secs_f64(),
        loadavg()
    );
    println!(
        "cpu us/req is the whole process (load generator included) per completed request; \
         srv p99 is the bucket bound of webhook_admission_duration_seconds (decode, mutate, \
         encode; no network, no TLS)"
    );

    let _ = stop.send(true);
    match server_runtime.block_on(served) {
        Ok(Ok(())) => {}
        Ok(Err(err)) => println!("our server ended with an error: {err}"),
        Err(err) => println!("our server task failed: {err}"),
    }
    Ok(())
}
