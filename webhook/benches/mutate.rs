//! The webhook benchmark: AdmissionReviews built from real Istio-injected objects, sent over TLS
//! (HTTP/1.1 keep-alive and h2) on two paths,
//! - mutate: pod CREATE of the fixture pod, answered by the real pod mutation
//!   ([`inplace_upgrade::admission::mutate::mutate_pod`]), and
//! - validate: Deployment UPDATE of the fixture Deployment (old and new objects; the new one
//!   changes the `inplace-upgrade` annotation, so the full check runs), answered by the real
//!   validation ([`inplace_upgrade::admission::validate::validate_workload_or_namespace`]),
//!
//! to
//! - ours: [`TlsServer`] + [`AdmissionRouter`] with those handlers over an in-memory cluster
//!   view, and
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
    borrow::Cow,
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
    admission::{
        ClusterView, Settings,
        mutate::mutate_pod,
        pod::{AdmittedPod, LeanContainer, LeanPodSpec},
        validate::{WorkloadObject, validate_workload_or_namespace},
    },
    cache::{Cache, FeedError, Role},
    controller,
    policy::InPlaceUpgradePolicy,
    workload::{WorkloadKey, WorkloadView},
};
use inplace_upgrade_webhook::{
    AdmissionRequest, AdmissionResponse, AdmissionRouter, CertificateStore, Decoded, TlsServer,
    WebhookMetrics,
    certs::{self, SubjectAltNames},
    decode_review, decode_review_as, encode_response,
};
use k8s_openapi::api::{
    apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet},
    coordination::v1::Lease,
    core::v1::{Namespace, Pod},
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::watcher::Event;
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
/// The Deployment of the validate path.
const DEPLOYMENT_FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../shared/fixtures/istio/hello-multi.yaml.injected"
);
const HOST: &str = "inplace-upgrade-webhook.inplace-upgrade-system.svc";
const PATH: &str = "/mutate-pods";
const VALIDATE_PATH: &str = "/validate-workloads";
/// The transport's floor on ours: the mutate review through the same router, with a handler
/// that reads nothing of the pod and answers the patch the mutation answered.
const FLOOR_PATH: &str = "/floor-mutate-pods";
const NAMESPACE: &str = "bench";
const DEPLOYMENT: &str = "hello";
const REPLICA_SET: &str = "hello-rs";
const CONTROLLER_NAMESPACE: &str = "inplace-upgrade-system";
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
/// CPU spent per in-process handler measurement.
const MICRO: Duration = Duration::from_millis(1500);

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

/// What `mutate_pod` reads, as the webhook process reads it: the same [`Cache`] (its webhook
/// role), fed as its watches would be, read the way the live view (`serve::view::LiveView`)
/// reads it, and the controller's Lease checked per call as the live view does. The cluster:
/// one Namespace; a Deployment annotated to move `istio-proxy` to a new image, with its
/// current ReplicaSet (the pod's owner) and [`OLD_REPLICA_SETS`] older ones, as a Deployment
/// that rolled out a few times keeps them; one policy selecting the Namespace with an
/// `allowedImages` list, as a production policy has.
struct BenchView {
    cache: Cache,
    lease: Lease,
}

/// Older ReplicaSets the Deployment keeps (its `revisionHistoryLimit` is 10 by default).
const OLD_REPLICA_SETS: usize = 4;

impl ClusterView for BenchView {
    fn synced(&self) -> bool {
        self.cache.is_synced()
    }
    fn namespace(&self, name: &str) -> Option<Arc<Namespace>> {
        self.cache.namespace(name)
    }
    fn replica_set(&self, namespace: &str, name: &str) -> Option<Arc<ReplicaSet>> {
        self.cache.replica_set(namespace, name)
    }
    fn workload(&self, key: &WorkloadKey) -> Option<WorkloadView> {
        self.cache.workload(key)
    }
    fn workloads_in(&self, namespace: &str) -> Vec<WorkloadView> {
        self.cache
            .workloads_in(Some(namespace))
            .iter()
            .filter_map(|k| self.cache.workload(k))
            .collect()
    }
    fn policies(&self) -> Vec<InPlaceUpgradePolicy> {
        self.cache.policies()
    }
    fn controller_alive(&self) -> bool {
        controller::lease_is_live(&self.lease, Timestamp::now())
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
                "uid": format!("uid-{REPLICA_SET}"), "controller": true, "blockOwnerDeletion": true}]),
    );
    let labels = pod["metadata"]["labels"].clone();
    let template = json!({"metadata": {"labels": labels}, "spec": pod["spec"]});
    let deployment: Deployment = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": DEPLOYMENT, "namespace": NAMESPACE, "uid": "uid-deploy",
                     "generation": 5, "labels": labels,
                     "annotations": {TARGETS_ANNOTATION: format!("istio-proxy={PROXY_NEW}")}},
        "spec": {"replicas": 3, "selector": {"matchLabels": labels}, "template": template},
        "status": {"observedGeneration": 5, "replicas": 3, "updatedReplicas": 3,
                   "readyReplicas": 3, "availableReplicas": 3},
    }))?;
    let replica_set = |name: String, replicas: i32| -> Result<ReplicaSet, BoxError> {
        Ok(serde_json::from_value(json!({
            "apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": name, "namespace": NAMESPACE, "uid": format!("uid-{name}"),
                         "labels": labels,
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment",
                             "name": DEPLOYMENT, "uid": "uid-deploy", "controller": true,
                             "blockOwnerDeletion": true}]},
            "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                     "template": template},
            "status": {"replicas": replicas, "readyReplicas": replicas,
                       "availableReplicas": replicas, "observedGeneration": 1},
        }))?)
    };
    let namespace: Namespace = serde_json::from_value(json!({
        "metadata": {"name": NAMESPACE, "labels": {"kubernetes.io/metadata.name": NAMESPACE}}
    }))?;
    let policy: InPlaceUpgradePolicy = serde_json::from_value(json!({
        "apiVersion": "inplace-upgrade.io/v1alpha1", "kind": "InPlaceUpgradePolicy",
        "metadata": {"name": "mesh"},
        "spec": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": NAMESPACE}},
                 "allowedImages": ["registry.istio.io/testing/proxyv2:*",
                                   "docker.io/istio/proxyv2:*"]},
    }))?;
    let cache = Cache::new(Role::Webhook);
    let fed = |result: Result<(), FeedError>| result.map_err(|err| err.to_string());
    // Every kind the webhook's cache watches has listed (an empty list), then the objects
    // arrive as watch events.
    fed(cache.feed(Event::<Namespace>::InitDone))?;
    fed(cache.feed(Event::<Deployment>::InitDone))?;
    fed(cache.feed(Event::<ReplicaSet>::InitDone))?;
    fed(cache.feed(Event::<StatefulSet>::InitDone))?;
    fed(cache.feed(Event::<DaemonSet>::InitDone))?;
    fed(cache.feed(Event::<InPlaceUpgradePolicy>::InitDone))?;
    fed(cache.feed(Event::Apply(namespace)))?;
    fed(cache.feed(Event::Apply(deployment)))?;
    fed(cache.feed(Event::Apply(replica_set(REPLICA_SET.into(), 3)?)))?;
    for old in 0..OLD_REPLICA_SETS {
        fed(cache.feed(Event::Apply(replica_set(
            format!("{DEPLOYMENT}-old{old}"),
            0,
        )?)))?;
    }
    fed(cache.feed(Event::Apply(policy)))?;
    let lease: Lease = serde_json::from_value(json!({
        "metadata": {"name": controller::LEASE_NAME, "namespace": CONTROLLER_NAMESPACE},
        "spec": {"holderIdentity": "controller-0", "leaseDurationSeconds": 15,
                 "renewTime": Timestamp::now().to_string()},
    }))?;
    // The bench runs for minutes: a lease renewed "now" would expire in it, so renew it far
    // ahead (the check reads the same fields either way).
    let mut lease = lease;
    if let Some(spec) = lease.spec.as_mut() {
        spec.lease_duration_seconds = Some(24 * 60 * 60);
    }
    let view = BenchView { cache, lease };
    if !view.synced() {
        return Err("the bench cache did not report synced after every kind listed".into());
    }
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

/// A Deployment UPDATE AdmissionReview of the fixture Deployment: the new object sets the
/// `inplace-upgrade` annotation the old one lacks, so the validation parses it, reads the pod
/// template and checks the governing policy (the expensive case; an update that leaves the
/// annotation alone stops after comparing it).
fn validate_body() -> Result<Bytes, BoxError> {
    let text = std::fs::read_to_string(DEPLOYMENT_FIXTURE)
        .map_err(|err| format!("cannot read the Istio fixture {DEPLOYMENT_FIXTURE}: {err}"))?;
    let mut old = None;
    for document in serde_yaml::Deserializer::from_str(&text) {
        let value: Value = <Value as serde::Deserialize>::deserialize(document)
            .map_err(|err| format!("{DEPLOYMENT_FIXTURE} is not YAML: {err}"))?;
        if value["kind"] == "Deployment" {
            old = Some(value);
            break;
        }
    }
    let mut old = old.ok_or_else(|| format!("{DEPLOYMENT_FIXTURE} holds no Deployment"))?;
    old["metadata"]["namespace"] = json!(NAMESPACE);
    old["metadata"]["uid"] = json!("6f1c2a3b-0d4e-4f5a-8b6c-7d8e9f0a1b2c");
    old["metadata"]["resourceVersion"] = json!("4711");
    old["metadata"]["generation"] = json!(3);
    let mut new = old.clone();
    new["metadata"]["annotations"][TARGETS_ANNOTATION] = json!(format!("istio-proxy={PROXY_NEW}"));
    let name = old["metadata"]["name"].clone();
    let review = json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "2b8e4f1a-9c3d-4e7b-a6f5-1d0c9b8a7e6f",
            "kind": {"group": "apps", "version": "v1", "kind": "Deployment"},
            "resource": {"group": "apps", "version": "v1", "resource": "deployments"},
            "requestKind": {"group": "apps", "version": "v1", "kind": "Deployment"},
            "requestResource": {"group": "apps", "version": "v1", "resource": "deployments"},
            "name": name,
            "namespace": NAMESPACE,
            "operation": "UPDATE",
            "userInfo": {"username": "kubernetes-admin",
                         "groups": ["kubeadm:cluster-admins", "system:authenticated"]},
            "object": new,
            "oldObject": old,
            "dryRun": false,
            "options": {"kind": "UpdateOptions", "apiVersion": "meta.k8s.io/v1"},
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
    async fn send(&mut self, path: &str, body: Bytes) -> Result<Bytes, BoxError> {
        let response = match self {
            Sender::Http1(sender) => {
                let request = Request::post(path)
                    .header(header::HOST, HOST)
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(Full::new(body))?;
                sender.ready().await?;
                sender.send_request(request).await?
            }
            Sender::H2(sender) => {
                let request = Request::post(format!("https://{HOST}{path}"))
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
async fn drive(
    senders: Vec<Sender>,
    path: &'static str,
    body: Bytes,
    load: Load,
    duration: Duration,
) -> Outcome {
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
                match sender.send(path, body.clone()).await {
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
fn server_buckets(registry: &Registry, path: &str) -> BTreeMap<u64, (f64, u64)> {
    let mut text = String::new();
    let mut buckets = BTreeMap::new();
    if encode(&mut text, registry).is_err() {
        return buckets;
    }
    for line in text.lines() {
        if !line.starts_with("webhook_admission_duration_seconds_bucket{")
            || !line.contains(&format!("route=\"{path}\""))
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
async fn serve_echo(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    answers: Vec<(&'static str, Bytes)>,
) {
    let mut router = Router::new();
    for (path, answer) in answers {
        router = router.route(
            path,
            post(move |body: Bytes| {
                let answer = answer.clone();
                async move {
                    drop(body);
                    ([(header::CONTENT_TYPE, "application/json")], answer)
                }
            }),
        );
    }
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

/// utime + stime of the calling thread, from /proc/thread-self/stat (10 ms resolution).
fn thread_cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 10))
}

/// CPU µs per call of `work`, on this thread, over at least `MICRO` of CPU.
fn cpu_per_call(mut work: impl FnMut() -> usize) -> Result<(f64, usize), BoxError> {
    for _ in 0..200 {
        work();
    }
    let start = thread_cpu_time().ok_or("cannot read /proc/thread-self/stat")?;
    let mut calls = 0u64;
    let mut out = 0;
    loop {
        for _ in 0..100 {
            out = work();
        }
        calls += 100;
        let spent = thread_cpu_time().unwrap_or(start).saturating_sub(start);
        if spent >= MICRO {
            return Ok((spent.as_secs_f64() * 1e6 / calls as f64, out));
        }
    }
}

/// The handlers alone, in this thread: decode, decide, encode, with no TLS, HTTP or client.
/// "before" is the decode this branch replaced, run in the same process: the pod decoded
/// whole into a `k8s_openapi` `Pod`, its fields then moved into the partial [`AdmittedPod`]
/// for the same mutation and encoding.
fn handler_cost(
    bodies: &[(&str, &'static str, Bytes)],
    view: &BenchView,
    settings: &Settings,
) -> Result<(), BoxError> {
    let json = Some("application/json");
    let respond =
        |response: AdmissionResponse| encode_response(&response).map_or(0, |body| body.len());
    let mutate_body = &bodies[0].2;
    let validate_body = &bodies[1].2;
    let (after, size) =
        cpu_per_call(
            || match decode_review_as::<AdmittedPod>(json, mutate_body) {
                Ok(Decoded::Request(request)) => respond(mutate_pod(&request, view, settings)),
                _ => 0,
            },
        )?;
    let (before, _) = cpu_per_call(|| match decode_review_as::<Pod>(json, mutate_body) {
        Ok(Decoded::Request(request)) => respond(mutate_pod(&partial(request), view, settings)),
        _ => 0,
    })?;
    let (decode_only, _) =
        cpu_per_call(|| decode_review_as::<AdmittedPod>(json, mutate_body).map_or(0, |_| 1))?;
    let (decode_full, _) =
        cpu_per_call(|| decode_review_as::<Pod>(json, mutate_body).map_or(0, |_| 1))?;
    let (skip_only, _) = cpu_per_call(|| {
        serde_json::from_slice::<serde::de::IgnoredAny>(mutate_body).map_or(0, |_| 1)
    })?;
    let request = match decode_review_as::<AdmittedPod>(json, mutate_body)? {
        Decoded::Request(request) => request,
        Decoded::UnreadableObject { error, .. } => return Err(error.into()),
    };
    let (decide_only, _) = cpu_per_call(|| respond(mutate_pod(&request, view, settings)))?;
    let (validate, _) =
        cpu_per_call(
            || match decode_review_as::<WorkloadObject>(json, validate_body) {
                Ok(Decoded::Request(request)) => {
                    respond(validate_workload_or_namespace(&request, view, settings))
                }
                _ => 0,
            },
        )?;
    let (validate_dynamic, _) =
        cpu_per_call(|| decode_review(json, validate_body).map_or(0, |_| 1))?;
    println!(
        "  handlers alone, one thread, no TLS/HTTP (CPU us per review; load average {}):",
        loadavg()
    );
    println!(
        "    mutate   {after:>7.1} us  (decode into AdmittedPod {decode_only:.1} us, decide + encode \
         {decide_only:.1} us; answer {size} bytes; skipping the review's JSON unread: {skip_only:.1} us)"
    );
    println!(
        "    mutate, before (whole k8s_openapi Pod decoded: {decode_full:.1} us) {before:>7.1} us  -> x{:.2}",
        before / after
    );
    println!(
        "    validate {validate:>7.1} us  (decoding the same review into DynamicObjects alone: {validate_dynamic:.1} us)"
    );
    Ok(())
}

/// The fields the mutation reads, moved out of a whole `Pod` (the "before" decode).
fn partial(request: AdmissionRequest<Pod>) -> AdmissionRequest<AdmittedPod> {
    let container =
        |name: String, image: Option<String>, restart_policy: Option<String>| LeanContainer {
            name: name.into(),
            image: image.map(Into::into),
            restart_policy: restart_policy.map(Into::into),
        };
    let object = request.object.map(|pod| AdmittedPod {
        metadata: pod.metadata,
        spec: pod.spec.map(|spec| LeanPodSpec {
            containers: spec
                .containers
                .into_iter()
                .map(|c| container(c.name, c.image, c.restart_policy))
                .collect(),
            init_containers: spec.init_containers.map(|init| {
                init.into_iter()
                    .map(|c| container(c.name, c.image, c.restart_policy))
                    .collect()
            }),
            readiness_gates: spec.readiness_gates,
            node_name: spec.node_name,
        }),
    });
    AdmissionRequest {
        types: request.types,
        uid: request.uid,
        kind: request.kind,
        resource: request.resource,
        sub_resource: request.sub_resource,
        request_kind: request.request_kind,
        request_resource: request.request_resource,
        request_sub_resource: request.request_sub_resource,
        name: request.name,
        namespace: request.namespace,
        operation: request.operation,
        user_info: request.user_info,
        object,
        old_object: None,
        dry_run: request.dry_run,
        options: request.options,
    }
}

/// An object left unread: the floor route's object type (the envelope is still decoded).
#[derive(Debug, Default)]
struct Unread {
    metadata: ObjectMeta,
}

impl<'de> serde::Deserialize<'de> for Unread {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        serde::de::IgnoredAny::deserialize(deserializer)?;
        Ok(Unread::default())
    }
}

impl kube::Resource for Unread {
    type DynamicType = ();
    type Scope = k8s_openapi::NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        "Pod".into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        "".into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        "v1".into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        "pods".into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// One measured phase against one server.
struct Measured {
    outcome: Outcome,
    throughput: f64,
    cpu: Option<Duration>,
    rss_delta: Option<i64>,
    server_p99: String,
}

impl Measured {
    fn cpu_per_request(&self) -> String {
        let done = self.outcome.latencies.len();
        self.cpu.filter(|_| done > 0).map_or("-".into(), |cpu| {
            format!("{:.0}", cpu.as_secs_f64() * 1e6 / done as f64)
        })
    }

    fn p(&self, percent: f64) -> Duration {
        percentile(&self.outcome.latencies, percent)
    }
}

/// `ours` over `echo` for a latency, as `x1.23`.
fn times(ours: Duration, echo: Duration) -> String {
    if echo.is_zero() {
        "-".to_owned()
    } else {
        format!("x{:.2}", ours.as_secs_f64() / echo.as_secs_f64())
    }
}

/// utime + stime of the servers' threads (the server runtime's workers and blocking threads,
/// all named `server`), from /proc/self/task (10 ms resolution).
fn server_cpu_time() -> Option<Duration> {
    let mut ticks = 0u64;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let Ok(stat) = std::fs::read_to_string(task.ok()?.path().join("stat")) else {
            continue; // the thread ended
        };
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        if !head.ends_with("(server") {
            continue;
        }
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let utime: u64 = fields.get(11)?.parse().ok()?;
        let stime: u64 = fields.get(12)?.parse().ok()?;
        ticks += utime + stime;
    }
    Some(Duration::from_millis(ticks * 10))
}

/// How kube-apiserver calls the pod webhook when pods are created one after another: one
/// request at a time on one long-lived h2 connection. Prints, for ours and echo, the client's
/// latency and the CPU of the servers' threads alone per request (no client in it).
fn one_at_a_time(
    client_runtime: &tokio::runtime::Runtime,
    ours: SocketAddr,
    echo: SocketAddr,
    client_config: &Arc<ClientConfig>,
    body: &Bytes,
) -> Result<(), BoxError> {
    const SEQUENTIAL: Duration = Duration::from_secs(4);
    let mut rows = Vec::new();
    for (server, addr) in [("ours", ours), ("echo", echo)] {
        let (outcome, cpu) = client_runtime.block_on(async {
            let senders = open(addr, Protocol::H2, client_config, 1).await?;
            let warm = drive(senders, PATH, body.clone(), Load::Saturation, WARM_UP).await;
            if warm.errors > 0 {
                return Err(BoxError::from(format!(
                    "{server} failed during warm-up: {}",
                    warm.first_error.unwrap_or_default()
                )));
            }
            let senders = open(addr, Protocol::H2, client_config, 1).await?;
            let before = server_cpu_time();
            let outcome = drive(senders, PATH, body.clone(), Load::Saturation, SEQUENTIAL).await;
            let cpu = match (before, server_cpu_time()) {
                (Some(before), Some(after)) => Some(after.saturating_sub(before)),
                _ => None,
            };
            Ok::<_, BoxError>((outcome, cpu))
        })?;
        rows.push((server, outcome, cpu));
    }
    println!(
        "  mutate, one request at a time on one h2 connection (as kube-apiserver sends pods created one by one; {} s each):",
        SEQUENTIAL.as_secs()
    );
    for (server, outcome, cpu) in &rows {
        let done = outcome.latencies.len();
        let cpu_per = cpu.filter(|_| done > 0).map_or("-".into(), |cpu| {
            format!("{:.0}", cpu.as_secs_f64() * 1e6 / done as f64)
        });
        println!(
            "    {server}: {done} requests, p50 {} ms, p99 {} ms, servers' threads' CPU {cpu_per} us/request, errors {}",
            ms(percentile(&outcome.latencies, 50.0)),
            ms(percentile(&outcome.latencies, 99.0)),
            outcome.errors
        );
    }
    Ok(())
}

fn run() -> Result<(), BoxError> {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("webhook bench: nproc {cores}, load average {}", loadavg());
    println!(
        "  servers: one tokio runtime ({cores} workers); load generator: a second runtime \
         ({cores} workers) in the same process, on the same cores"
    );
    // The webhook process's subscriber as deployed (`telemetry::init` at its default level,
    // JSON lines as deploy/ sets them): the router's per-request span is enabled and its
    // fields formatted, as in production. Nothing is written.
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
        .with_writer(std::io::sink)
        .json()
        .try_init()
        .map_err(|err| format!("cannot install the tracing subscriber: {err}"))?;
    let (pod, view) = scenario()?;
    handler_cost(
        &[
            ("mutate", PATH, review_body(&pod)?),
            ("validate", VALIDATE_PATH, validate_body()?),
        ],
        &view,
        &Settings {
            controller_namespace: CONTROLLER_NAMESPACE.into(),
        },
    )?;
    let view = Arc::new(view);
    let bodies = [
        ("mutate", PATH, review_body(&pod)?),
        ("validate", VALIDATE_PATH, validate_body()?),
        ("floor", FLOOR_PATH, review_body(&pod)?),
    ];
    // The patch the mutation answers, for the floor route to answer without deciding.
    let patch = match decode_review_as::<AdmittedPod>(Some("application/json"), &bodies[0].2)? {
        Decoded::Request(request) => {
            let response = mutate_pod(
                &request,
                &*view,
                &Settings {
                    controller_namespace: CONTROLLER_NAMESPACE.into(),
                },
            );
            response.patch.ok_or_else(|| {
                format!(
                    "the mutation gave no patch (warnings: {:?})",
                    response.warnings.unwrap_or_default()
                )
            })?
        }
        Decoded::UnreadableObject { error, .. } => return Err(error.into()),
    };
    let settings = Arc::new(Settings {
        controller_namespace: CONTROLLER_NAMESPACE.into(),
    });

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
    let (mutate_view, mutate_settings) = (view.clone(), settings.clone());
    let router = AdmissionRouter::new(metrics.clone())
        .handler(PATH, move |request: &AdmissionRequest<AdmittedPod>| {
            mutate_pod(request, &*mutate_view, &mutate_settings)
        })
        .handler(
            VALIDATE_PATH,
            move |request: &AdmissionRequest<WorkloadObject>| {
                validate_workload_or_namespace(request, &*view, &settings)
            },
        )
        .handler(FLOOR_PATH, move |request: &AdmissionRequest<Unread>| {
            // The transport writes `patchType` for any patch.
            let mut response = AdmissionResponse::from(request);
            response.patch = Some(patch.clone());
            response
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

    // One request of each path to ours: the mutation must carry a patch and the validation
    // must allow; the echo answers each path with exactly the bytes ours answered.
    let mut answers = Vec::new();
    for (label, path, body) in &bodies {
        let answer = client_runtime.block_on(async {
            let mut sender = Sender::connect(ours, Protocol::Http1, client_config.clone()).await?;
            sender.send(path, body.clone()).await
        })?;
        let decoded: Value = serde_json::from_slice(&answer)?;
        let patch_len = decoded["response"]["patch"].as_str().map_or(0, str::len);
        if *label == "mutate" && patch_len == 0 {
            return Err(format!(
                "the mutation gave no patch, so this would not measure it: {}",
                String::from_utf8_lossy(&answer)
            )
            .into());
        }
        if *label == "validate" && decoded["response"]["allowed"] != true {
            return Err(format!(
                "the validation did not allow the Deployment, so this would not measure the full check: {}",
                String::from_utf8_lossy(&answer)
            )
            .into());
        }
        println!(
            "  {label}: review {} bytes, response {} bytes (base64 JSON patch {patch_len} bytes); \
             ours https://{ours}{path}, echo https://{echo}{path}",
            body.len(),
            answer.len()
        );
        answers.push((*path, answer));
    }
    server_runtime.spawn(serve_echo(echo_listener, server_config, answers));
    println!("  fixtures: {FIXTURE} (pod), {DEPLOYMENT_FIXTURE} (Deployment)");
    one_at_a_time(&client_runtime, ours, echo, &client_config, &bodies[0].2)?;
    println!(
        "  phases of {} s after {} ms warm-up; fixed rates over {RATE_CONCURRENCY} HTTP/1.1 \
         connections or {RATE_CONCURRENCY} streams on {H2_CONNECTIONS} h2 connections",
        PHASE.as_secs(),
        WARM_UP.as_millis()
    );
    println!();
    println!(
        "{:<9} {:<8} {:<17} {:<5} {:>8} {:>8} {:>8} {:>8} {:>6} {:>9} {:>7} {:>7} {:>9} {:>9} {:>9}",
        "path",
        "proto",
        "load",
        "srv",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "req/s",
        "errors",
        "srv p99",
        "cpu us",
        "rss KiB",
        "p50/echo",
        "p99/echo",
        "tput/echo"
    );

    let rss_start = rss_kib();
    let cpu_start = cpu_time();
    let run_started = Instant::now();
    let mut summary = Vec::new();
    for (label, path, body) in &bodies {
        for protocol in [Protocol::Http1, Protocol::H2] {
            // The floor matters at saturation only: at a fixed rate both keep up.
            let rates = if *label == "floor" {
                &[][..]
            } else {
                &RATES[..]
            };
            for load in rates
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
                    let measured = client_runtime.block_on(async {
                        let senders = open(addr, protocol, &client_config, concurrency).await?;
                        // Warm-up (allocator, caches, code paths), then fresh connections so
                        // the measured phase starts with none of the warm-up's requests in
                        // flight.
                        let warm = drive(senders, path, body.clone(), load, WARM_UP).await;
                        if warm.errors > 0 {
                            return Err(format!(
                                "{server} {label} failed during warm-up: {}",
                                warm.first_error.unwrap_or_default()
                            )
                            .into());
                        }
                        let senders = open(addr, protocol, &client_config, concurrency).await?;
                        let buckets_before = server_buckets(&registry, path);
                        let cpu_before = cpu_time();
                        let rss_before = rss_kib();
                        let outcome = drive(senders, path, body.clone(), load, PHASE).await;
                        let cpu = match (cpu_before, cpu_time()) {
                            (Some(before), Some(after)) => Some(after.saturating_sub(before)),
                            _ => None,
                        };
                        let rss_delta = match (rss_before, rss_kib()) {
                            (Some(before), Some(after)) => Some(after as i64 - before as i64),
                            _ => None,
                        };
                        let server_p99 = if server == "ours" {
                            server_p99(&buckets_before, &server_buckets(&registry, path))
                        } else {
                            "-".into()
                        };
                        let throughput =
                            outcome.latencies.len() as f64 / outcome.elapsed.as_secs_f64();
                        Ok::<_, BoxError>(Measured {
                            outcome,
                            throughput,
                            cpu,
                            rss_delta,
                            server_p99,
                        })
                    })?;
                    pair.push((server, measured));
                }
                let echo_measured = &pair[1].1;
                for (server, m) in &pair {
                    let (p50, p99, tput) = if *server == "ours" {
                        (
                            times(m.p(50.0), echo_measured.p(50.0)),
                            times(m.p(99.0), echo_measured.p(99.0)),
                            if echo_measured.throughput > 0.0 {
                                format!("{:.0}%", m.throughput / echo_measured.throughput * 100.0)
                            } else {
                                "-".into()
                            },
                        )
                    } else {
                        ("-".into(), "-".into(), "-".into())
                    };
                    println!(
                        "{:<9} {:<8} {:<17} {:<5} {:>8} {:>8} {:>8} {:>8.0} {:>6} {:>9} {:>7} {:>7} {:>9} {:>9} {:>9}",
                        label,
                        protocol.name(),
                        load.name(),
                        server,
                        ms(m.p(50.0)),
                        ms(m.p(99.0)),
                        ms(m.p(99.9)),
                        m.throughput,
                        m.outcome.errors,
                        m.server_p99,
                        m.cpu_per_request(),
                        m.rss_delta.map_or("-".into(), |delta| format!("{delta:+}")),
                        p50,
                        p99,
                        tput,
                    );
                    if let Some(err) = &m.outcome.first_error {
                        println!("    first error: {err}");
                    }
                    if let Load::Rate(rate) = load
                        && m.throughput < f64::from(rate) * 0.95
                    {
                        println!(
                            "    offered {rate} req/s not sustained: {:.0} req/s achieved",
                            m.throughput
                        );
                    }
                }
                let ours_measured = &pair[0].1;
                summary.push(format!(
                    "{label:<9} {:<8} {:<17} ours/echo: p50 {}, p99 {}, p99.9 {}, throughput {:.0}%, cpu/req {} vs {} us",
                    protocol.name(),
                    load.name(),
                    times(ours_measured.p(50.0), echo_measured.p(50.0)),
                    times(ours_measured.p(99.0), echo_measured.p(99.0)),
                    times(ours_measured.p(99.9), echo_measured.p(99.9)),
                    if echo_measured.throughput > 0.0 {
                        ours_measured.throughput / echo_measured.throughput * 100.0
                    } else {
                        0.0
                    },
                    ours_measured.cpu_per_request(),
                    echo_measured.cpu_per_request(),
                ));
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
        "cpu us is the whole process's CPU (load generator included) per completed request; \
         rss KiB is the process's RSS change over the phase; srv p99 is the bucket bound of \
         webhook_admission_duration_seconds (decode, decide, encode; no network, no TLS)"
    );

    let _ = stop.send(true);
    match server_runtime.block_on(served) {
        Ok(Ok(())) => {}
        Ok(Err(err)) => println!("our server ended with an error: {err}"),
        Err(err) => println!("our server task failed: {err}"),
    }
    Ok(())
}
