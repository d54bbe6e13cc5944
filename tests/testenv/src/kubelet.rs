//! The simulated kubelet's I/O: Node registration and Lease heartbeats, the binder that plays
//! the scheduler, one pod watch shared by all simulated nodes that feeds a task per pod
//! running [`PodSim`], and an Event sink.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, stream::FuturesUnordered};
use k8s_openapi::api::core::v1::{
    Event, EventSource, Node, NodeSelectorRequirement, ObjectReference, Pod,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::sim::{Delays, NodeImages, Now, PodSim, SimEvent, ts};
use crate::{Error, Result};

/// The field manager of everything the simulated kubelet writes with server-side apply.
const MANAGER: &str = "sim-kubelet";
const LEASE_NAMESPACE: &str = "kube-node-lease";
const LEASE_SECONDS: i32 = 40;
const HEARTBEAT: Duration = Duration::from_secs(10);
const SCHEDULER: &str = "default-scheduler";
const MAX_CONCURRENT_WRITES: usize = 64;
/// Pod ranges are 10.128.0.0/16 … 10.255.0.0/16.
pub(crate) const MAX_NODES: usize = 128;

/// Simulated nodes and their behaviour.
#[derive(Clone, Debug)]
pub struct KubeletOptions {
    /// Number of simulated nodes (0 for none).
    pub nodes: usize,
    /// Node names are `<prefix>-<index>`, from 0.
    pub node_prefix: String,
    /// Extra labels on every node (besides `kubernetes.io/hostname`, `kubernetes.io/os`,
    /// `kubernetes.io/arch`).
    pub node_labels: BTreeMap<String, String>,
    /// Step delays of the simulated runtime; pods override them by annotation.
    pub delays: Delays,
    /// Record Kubernetes Events like kubelet (a benchmark may turn them off).
    pub events: bool,
    /// Each node keeps the images it pulled: a container whose image is already on its node
    /// starts without the `pull` delay, and an in-place image change to an image not on the
    /// node takes `restart` plus `pull` (kubelet's `IfNotPresent`). Off: every first start of
    /// a container pulls and an image change takes `restart`, wherever the image is.
    pub image_cache: bool,
}

impl Default for KubeletOptions {
    fn default() -> Self {
        Self {
            nodes: 2,
            node_prefix: "sim-node".to_owned(),
            node_labels: BTreeMap::new(),
            delays: Delays::default(),
            events: true,
            image_cache: false,
        }
    }
}

#[derive(Debug)]
pub(crate) struct SimNode {
    pub name: String,
    pub index: usize,
    pub host_ip: String,
    pub labels: BTreeMap<String, String>,
    /// Pod IPs in use on this node, from 10.<128+index>.0.0/16.
    ips: Mutex<IpPool>,
    /// The images pulled onto this node (used with [`KubeletOptions::image_cache`]).
    images: NodeImages,
}

#[derive(Debug, Default)]
struct IpPool {
    next: u32,
    used: HashSet<u32>,
}

impl SimNode {
    fn new(opts: &KubeletOptions, index: usize) -> Self {
        let name = format!("{}-{index}", opts.node_prefix);
        let mut labels = opts.node_labels.clone();
        labels.insert("kubernetes.io/hostname".into(), name.clone());
        labels.insert("kubernetes.io/os".into(), "linux".into());
        labels.insert("kubernetes.io/arch".into(), "amd64".into());
        labels.insert(crate::NODE_KIND_LABEL.into(), "simulated".into());
        Self {
            // No kubelet listens for a simulated node. Its address is on loopback, so the API
            // server's connection for `kubectl logs` is refused here instead of leaving the
            // machine towards an address that exists nowhere.
            host_ip: format!("127.0.{}.{}", 20 + index / 250, index % 250 + 2),
            name,
            index,
            labels,
            ips: Mutex::new(IpPool::default()),
            images: NodeImages::default(),
        }
    }

    fn pod_cidr(&self) -> String {
        format!("10.{}.0.0/16", 128 + self.index)
    }

    /// A pod IP unique among this node's live pods (the sandbox keeps it for the pod's life).
    fn allocate_ip(&self) -> Option<String> {
        let mut pool = self.ips.lock().ok()?;
        for _ in 0..65_534 {
            let n = pool.next % 65_534 + 1;
            pool.next = n;
            if pool.used.insert(n) {
                return Some(format!("10.{}.{}.{}", 128 + self.index, n >> 8, n & 0xff));
            }
        }
        None
    }

    fn release_ip(&self, ip: &str) {
        let Some(n) = ip
            .split('.')
            .skip(2)
            .map(str::parse::<u32>)
            .collect::<Result<Vec<_>, _>>()
            .ok()
        else {
            return;
        };
        if let (Some(hi), Some(lo), Ok(mut pool)) = (n.first(), n.get(1), self.ips.lock()) {
            pool.used.remove(&((hi << 8) | lo));
        }
    }
}

/// Registers the nodes (Ready, with capacity, addresses and nodeInfo) and returns them.
pub(crate) async fn register_nodes(
    client: &Client,
    opts: &KubeletOptions,
) -> Result<Vec<Arc<SimNode>>> {
    let api: Api<Node> = Api::all(client.clone());
    let mut nodes = Vec::new();
    for index in 0..opts.nodes {
        let node = SimNode::new(opts, index);
        let body = json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": node.name, "labels": node.labels},
            "spec": {"podCIDR": node.pod_cidr(), "podCIDRs": [node.pod_cidr()]},
        });
        let pp = PatchParams::apply(MANAGER).force();
        api.patch(&node.name, &pp, &Patch::Apply(&body))
            .await
            .map_err(|e| Error::kube(format!("register Node {}", node.name), e))?;
        api.patch_status(&node.name, &pp, &Patch::Apply(&node_status(&node)))
            .await
            .map_err(|e| Error::kube(format!("set status of Node {}", node.name), e))?;
        // The TaintNodesByCondition admission plugin taints every new Node
        // `node.kubernetes.io/not-ready:NoSchedule`; the node lifecycle controller (not run
        // here: it would evict pods) lifts it once the node is Ready. Do its part.
        api.patch(
            &node.name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"taints": null}})),
        )
        .await
        .map_err(|e| {
            Error::kube(
                format!("remove the not-ready taint of Node {}", node.name),
                e,
            )
        })?;
        nodes.push(Arc::new(node));
    }
    Ok(nodes)
}

fn node_status(node: &SimNode) -> Value {
    let now = ts(chrono::Utc::now());
    let resources =
        json!({"cpu": "64", "memory": "256Gi", "pods": "10000", "ephemeral-storage": "1Ti"});
    let condition = |type_: &str, status: &str, reason: &str, message: &str| {
        json!({"type": type_, "status": status, "reason": reason, "message": message,
               "lastHeartbeatTime": now, "lastTransitionTime": now})
    };
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "status": {
            "capacity": resources,
            "allocatable": resources,
            "conditions": [
                condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
                condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
                condition("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
                condition("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
            ],
            "addresses": [
                {"type": "InternalIP", "address": node.host_ip},
                {"type": "Hostname", "address": node.name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {
                "architecture": "amd64",
                "bootID": format!("sim-boot-{}", node.index),
                "containerRuntimeVersion": "containerd://2.1.0-sim",
                "kernelVersion": "6.1.0-sim",
                "kubeProxyVersion": "",
                "kubeletVersion": crate::KUBERNETES_VERSION,
                "machineID": format!("sim-machine-{}", node.index),
                "operatingSystem": "linux",
                "osImage": "inplace-upgrade simulated kubelet",
                "systemUUID": format!("sim-uuid-{}", node.index),
            },
        },
    })
}

/// Starts the kubelet's background tasks on the current runtime; with `binder`, the binder
/// schedules pending pods (without it, kube-scheduler does).
pub(crate) fn spawn(
    client: Client,
    opts: &KubeletOptions,
    nodes: Vec<Arc<SimNode>>,
    binder: bool,
) -> Vec<JoinHandle<()>> {
    let mut tasks = Vec::new();
    if nodes.is_empty() && !binder {
        return tasks;
    }
    let events = if opts.events {
        let (tx, rx) = mpsc::channel(10_000);
        tasks.push(tokio::spawn(event_sink(client.clone(), rx)));
        Some(tx)
    } else {
        None
    };
    tasks.push(tokio::spawn(heartbeat(client.clone(), nodes.clone())));
    tasks.push(tokio::spawn(
        Dispatcher {
            client,
            nodes,
            delays: opts.delays,
            image_cache: opts.image_cache,
            events,
            workers: HashMap::new(),
            binding: Arc::new(Mutex::new(HashSet::new())),
            writes: Arc::new(Semaphore::new(MAX_CONCURRENT_WRITES)),
            round_robin: 0,
            binder,
        }
        .run(),
    ));
    tasks
}

/// Renews every node's Lease in `kube-node-lease`, as kubelet's node lease controller does.
async fn heartbeat(client: Client, nodes: Vec<Arc<SimNode>>) {
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(client.clone(), LEASE_NAMESPACE);
    let node_api: Api<Node> = Api::all(client);
    let pp = PatchParams::apply(MANAGER).force();
    let mut tick = tokio::time::interval(HEARTBEAT);
    loop {
        tick.tick().await;
        for node in &nodes {
            let uid = match node_api.get(&node.name).await {
                Ok(n) => n.metadata.uid.unwrap_or_default(),
                Err(e) => {
                    warn!(node = %node.name, error = %e, "cannot read Node for its Lease");
                    continue;
                }
            };
            let lease = json!({
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": node.name, "namespace": LEASE_NAMESPACE,
                    "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": node.name, "uid": uid}]},
                "spec": {"holderIdentity": node.name, "leaseDurationSeconds": LEASE_SECONDS,
                    "renewTime": chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()},
            });
            if let Err(e) = leases.patch(&node.name, &pp, &Patch::Apply(&lease)).await {
                // kube-node-lease may not exist for a moment after the API server starts.
                debug!(node = %node.name, error = %e, "Lease renewal failed; retrying next beat");
            }
        }
    }
}

/// A kubelet-style Event about a pod.
struct EventRequest {
    pod: Arc<Pod>,
    /// `kubelet` or `default-scheduler`.
    component: &'static str,
    /// The reporting node; empty for the scheduler.
    node: String,
    event: SimEvent,
}

/// Creates Events with bounded concurrency so a burst of pods cannot flood the API server.
async fn event_sink(client: Client, mut rx: mpsc::Receiver<EventRequest>) {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let mut inflight = FuturesUnordered::new();
    loop {
        tokio::select! {
            Some(req) = rx.recv(), if inflight.len() < 32 => {
                let client = client.clone();
                inflight.push(async move {
                    let ns = req.pod.namespace().unwrap_or_default();
                    let now = chrono::Utc::now();
                    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
                    let nanos = now.timestamp_nanos_opt().unwrap_or_default();
                    let ev = Event {
                        metadata: ObjectMeta {
                            name: Some(format!("{}.{:x}{:04x}", req.pod.name_any(), nanos, seq & 0xffff)),
                            namespace: Some(ns.clone()),
                            ..Default::default()
                        },
                        involved_object: ObjectReference {
                            api_version: Some("v1".into()),
                            kind: Some("Pod".into()),
                            name: Some(req.pod.name_any()),
                            namespace: Some(ns.clone()),
                            uid: req.pod.metadata.uid.clone(),
                            field_path: req.event.field_path.clone(),
                            ..Default::default()
                        },
                        reason: Some(req.event.reason.to_owned()),
                        message: Some(req.event.message.clone()),
                        type_: Some(req.event.type_.to_owned()),
                        source: Some(EventSource {
                            component: Some(req.component.to_owned()),
                            host: Some(req.node.clone()).filter(|n| !n.is_empty()),
                        }),
                        first_timestamp: serde_json::from_value(json!(ts(now))).ok(),
                        last_timestamp: serde_json::from_value(json!(ts(now))).ok(),
                        count: Some(1),
                        reporting_component: Some(req.component.to_owned()),
                        reporting_instance: Some(if req.node.is_empty() { req.component.to_owned() } else { req.node.clone() }),
                        ..Default::default()
                    };
                    let api: Api<Event> = Api::namespaced(client, &ns);
                    if let Err(e) = api.create(&PostParams::default(), &ev).await {
                        debug!(error = %e, "cannot record Event");
                    }
                });
            }
            Some(()) = inflight.next(), if !inflight.is_empty() => {}
            else => break,
        }
    }
}

struct Dispatcher {
    client: Client,
    nodes: Vec<Arc<SimNode>>,
    delays: Delays,
    image_cache: bool,
    events: Option<mpsc::Sender<EventRequest>>,
    /// One task per pod on our nodes, by UID.
    workers: HashMap<String, mpsc::UnboundedSender<Arc<Pod>>>,
    /// UIDs with a binding in flight.
    binding: Arc<Mutex<HashSet<String>>>,
    /// Bounds concurrent status writes (and so connections) when thousands of pods change.
    writes: Arc<Semaphore>,
    round_robin: usize,
    binder: bool,
}

impl Dispatcher {
    async fn run(mut self) {
        let api: Api<Pod> = Api::all(self.client.clone());
        let mut stream = watcher(api, watcher::Config::default())
            .default_backoff()
            .boxed();
        let mut listed: Option<HashSet<String>> = None;
        while let Some(event) = stream.next().await {
            match event {
                Ok(watcher::Event::Init) => listed = Some(HashSet::new()),
                Ok(watcher::Event::InitApply(pod)) => {
                    if let (Some(seen), Some(uid)) = (listed.as_mut(), pod.metadata.uid.clone()) {
                        seen.insert(uid);
                    }
                    self.on_pod(pod);
                }
                Ok(watcher::Event::InitDone) => {
                    if let Some(seen) = listed.take() {
                        self.workers.retain(|uid, _| seen.contains(uid));
                    }
                }
                Ok(watcher::Event::Apply(pod)) => self.on_pod(pod),
                Ok(watcher::Event::Delete(pod)) => {
                    if let Some(uid) = pod.metadata.uid.as_ref() {
                        self.workers.remove(uid);
                    }
                }
                Err(e) => warn!(error = %e, "pod watch error; the watcher retries"),
            }
        }
    }

    fn on_pod(&mut self, mut pod: Pod) {
        pod.metadata.managed_fields = None;
        let Some(uid) = pod.metadata.uid.clone() else {
            return;
        };
        let node_name = pod.spec.as_ref().and_then(|s| s.node_name.clone());
        match node_name {
            Some(n) => {
                let Some(node) = self.nodes.iter().find(|x| x.name == n).cloned() else {
                    return;
                };
                let pod = Arc::new(pod);
                if let Some(tx) = self.workers.get(&uid)
                    && tx.send(pod.clone()).is_ok()
                {
                    return;
                }
                if pod.metadata.deletion_timestamp.is_some()
                    && pod
                        .status
                        .as_ref()
                        .and_then(|s| s.pod_ip.as_ref())
                        .is_none()
                {
                    // Deleted before this kubelet ever ran it: nothing to stop.
                    self.delete_now(&pod);
                    return;
                }
                let (tx, rx) = mpsc::unbounded_channel();
                let _ = tx.send(pod.clone());
                self.workers.insert(uid, tx);
                tokio::spawn(run_pod(
                    self.client.clone(),
                    node,
                    self.delays,
                    self.image_cache,
                    self.events.clone(),
                    self.writes.clone(),
                    rx,
                ));
            }
            None if self.binder => self.schedule(pod),
            None => {}
        }
    }

    fn delete_now(&self, pod: &Pod) {
        let api: Api<Pod> =
            Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
        let (name, uid) = (pod.name_any(), pod.metadata.uid.clone());
        tokio::spawn(async move {
            let _ = api.delete(&name, &delete_params(uid)).await;
        });
    }

    /// The binder: what kube-scheduler would do for pods this simple cluster can place.
    fn schedule(&mut self, pod: Pod) {
        let spec = pod.spec.as_ref();
        let scheduler = spec
            .and_then(|s| s.scheduler_name.as_deref())
            .unwrap_or(SCHEDULER);
        let gated = spec
            .and_then(|s| s.scheduling_gates.as_ref())
            .is_some_and(|g| !g.is_empty());
        // The nodes never change, so a pod found unschedulable stays so: do not retry (and
        // rewrite its condition) on every event.
        let unschedulable = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| {
                cs.iter().any(|c| {
                    c.type_ == "PodScheduled" && c.reason.as_deref() == Some("Unschedulable")
                })
            });
        if scheduler != SCHEDULER
            || gated
            || unschedulable
            || pod.metadata.deletion_timestamp.is_some()
        {
            return;
        }
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let Ok(mut binding) = self.binding.lock() else {
            return;
        };
        if !binding.insert(uid.clone()) {
            return;
        }
        drop(binding);
        let fits: Vec<&Arc<SimNode>> = self
            .nodes
            .iter()
            .filter(|n| node_fits(&pod, &n.name, &n.labels))
            .collect();
        let node = if fits.is_empty() {
            None
        } else {
            self.round_robin = self.round_robin.wrapping_add(1);
            Some(fits[self.round_robin % fits.len()].name.clone())
        };
        let client = self.client.clone();
        let in_flight = self.binding.clone();
        let events = self.events.clone();
        let total = self.nodes.len();
        tokio::spawn(async move {
            bind(client, &pod, node, total, events).await;
            if let Ok(mut b) = in_flight.lock() {
                b.remove(&uid);
            }
        });
    }
}

/// Binds the pod through `pods/binding` (or marks it Unschedulable), retrying transient errors.
async fn bind(
    client: Client,
    pod: &Pod,
    node: Option<String>,
    total: usize,
    events: Option<mpsc::Sender<EventRequest>>,
) {
    let ns = pod.namespace().unwrap_or_default();
    let name = pod.name_any();
    let api: Api<Pod> = Api::namespaced(client, &ns);
    let Some(node) = node else {
        let message = format!(
            "0/{total} nodes are available: {total} node(s) didn't match Pod's node affinity/selector."
        );
        let patch = json!({"status": {"conditions": [{"type": "PodScheduled", "status": "False",
            "reason": "Unschedulable", "message": message, "lastTransitionTime": ts(chrono::Utc::now())}]}});
        let _ = api
            .patch_status(&name, &PatchParams::default(), &Patch::Strategic(&patch))
            .await;
        send_event(
            &events,
            pod,
            "",
            SimEvent {
                type_: "Warning",
                reason: "FailedScheduling",
                message,
                field_path: None,
            },
        );
        return;
    };
    let body = json!({
        "apiVersion": "v1",
        "kind": "Binding",
        "metadata": {"name": name, "namespace": ns, "uid": pod.metadata.uid},
        "target": {"apiVersion": "v1", "kind": "Node", "name": node},
    });
    for attempt in 0..5u32 {
        match api
            .create_subresource::<_, Value>("binding", &name, &PostParams::default(), &body)
            .await
        {
            Ok(_) => {
                let message = format!("Successfully assigned {ns}/{name} to {node}");
                send_event(
                    &events,
                    pod,
                    "",
                    SimEvent {
                        type_: "Normal",
                        reason: "Scheduled",
                        message,
                        field_path: None,
                    },
                );
                return;
            }
            // Gone, already bound, or the UID changed: nothing left to do.
            Err(kube::Error::Api(s)) if matches!(s.code, 404 | 409 | 422) => return,
            Err(e) => {
                warn!(pod = %name, error = %e, attempt, "binding failed; retrying");
                tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
            }
        }
    }
}

fn send_event(events: &Option<mpsc::Sender<EventRequest>>, pod: &Pod, node: &str, event: SimEvent) {
    if let Some(tx) = events {
        let component = if node.is_empty() {
            SCHEDULER
        } else {
            "kubelet"
        };
        // A full queue drops the Event rather than stall pods, as kubelet's recorder does.
        let _ = tx.try_send(EventRequest {
            pod: Arc::new(pod.clone()),
            component,
            node: node.to_owned(),
            event,
        });
    }
}

fn delete_params(uid: Option<String>) -> DeleteParams {
    DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid,
            resource_version: None,
        }),
        ..Default::default()
    }
}

/// Whether the pod may run on the node: `nodeSelector`, and required node affinity terms
/// (`matchFields metadata.name`, as the DaemonSet controller writes, and `matchExpressions`
/// on labels). The simulated nodes have no taints, so tolerations never matter.
pub(crate) fn node_fits(pod: &Pod, node: &str, labels: &BTreeMap<String, String>) -> bool {
    let Some(spec) = pod.spec.as_ref() else {
        return true;
    };
    if let Some(sel) = &spec.node_selector
        && sel.iter().any(|(k, v)| labels.get(k) != Some(v))
    {
        return false;
    }
    let terms = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|n| {
            n.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .map(|r| r.node_selector_terms.as_slice());
    let Some(terms) = terms.filter(|t| !t.is_empty()) else {
        return true;
    };
    // Terms are ORed; requirements within a term are ANDed.
    terms.iter().any(|term| {
        let fields = term.match_fields.iter().flatten().all(|r| {
            let value = (r.key == "metadata.name").then_some(node);
            requirement_holds(r, value)
        });
        let exprs = term
            .match_expressions
            .iter()
            .flatten()
            .all(|r| requirement_holds(r, labels.get(&r.key).map(String::as_str)));
        let empty = term.match_fields.as_ref().is_none_or(Vec::is_empty)
            && term.match_expressions.as_ref().is_none_or(Vec::is_empty);
        !empty && fields && exprs
    })
}

fn requirement_holds(r: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = r.values.as_deref().unwrap_or_default();
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => value.is_none_or(|v| values.iter().all(|x| x != v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => {
            let (Some(v), Some(bound)) = (
                value.and_then(|v| v.parse::<i64>().ok()),
                values.first().and_then(|b| b.parse::<i64>().ok()),
            ) else {
                return false;
            };
            if r.operator == "Gt" {
                v > bound
            } else {
                v < bound
            }
        }
        _ => false,
    }
}

/// One pod's life on a simulated node: advance the state machine on every watch event and
/// timer, write status when it changed, record Events, delete after graceful termination.
async fn run_pod(
    client: Client,
    node: Arc<SimNode>,
    delays: Delays,
    image_cache: bool,
    events: Option<mpsc::Sender<EventRequest>>,
    writes: Arc<Semaphore>,
    mut rx: mpsc::UnboundedReceiver<Arc<Pod>>,
) {
    let Some(mut pod) = rx.recv().await else {
        return;
    };
    let name = pod.name_any();
    let api: Api<Pod> = Api::namespaced(client, &pod.namespace().unwrap_or_default());
    let Some(ip) = node.allocate_ip() else {
        warn!(pod = %name, node = %node.name, "no free pod IP on the node");
        return;
    };
    let mut sim = PodSim::new(&pod, ip, node.host_ip.clone());
    if image_cache {
        sim = sim.on_node_with_images(node.images.clone());
    }
    let mut written: Option<Value> = None;
    let mut retry_at: Option<Instant> = None;
    let mut deleting = false;
    loop {
        let now = Now::current();
        let outcome = sim.advance(&pod, &delays.for_pod(&pod), now);
        for event in outcome.events {
            send_event(&events, &pod, &node.name, event);
        }
        let patch = sim.status_patch(&pod, now);
        if written.as_ref() != Some(&patch) && retry_at.is_none_or(|t| t <= now.mono) {
            let _permit = writes.acquire().await;
            match api
                .patch_status(&name, &PatchParams::default(), &Patch::Strategic(&patch))
                .await
            {
                Ok(_) => {
                    written = Some(patch);
                    retry_at = None;
                }
                // The pod is gone or was replaced by another with the same name.
                Err(kube::Error::Api(s)) if matches!(s.code, 404 | 409) => break,
                Err(e) => {
                    warn!(pod = %name, error = %e, "status write failed; retrying");
                    retry_at = Some(now.mono + Duration::from_millis(500));
                }
            }
        }
        if outcome.delete && !deleting {
            deleting = true;
            match api
                .delete(&name, &delete_params(pod.metadata.uid.clone()))
                .await
            {
                Ok(_) | Err(kube::Error::Api(_)) => {}
                Err(e) => warn!(pod = %name, error = %e, "cannot delete terminated pod"),
            }
        }
        let deadline = [sim.next_deadline(), retry_at].into_iter().flatten().min();
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            msg = rx.recv() => match msg {
                Some(p) => pod = p,
                None => break,
            },
            () = sleep => {}
        }
        // Coalesce a burst of watch events into one pass.
        while let Ok(p) = rx.try_recv() {
            pod = p;
        }
    }
    node.release_ip(sim.pod_ip());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(spec: Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": spec})).unwrap()
    }

    fn labels(name: &str) -> BTreeMap<String, String> {
        SimNode::new(
            &KubeletOptions::default(),
            name.trim_start_matches("sim-node-").parse().unwrap(),
        )
        .labels
    }

    #[test]
    fn daemonset_affinity_picks_one_node() {
        let p = pod(
            json!({"containers": [], "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
            {"nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["sim-node-1"]}]}]}}}}),
        );
        assert!(!node_fits(&p, "sim-node-0", &labels("sim-node-0")));
        assert!(node_fits(&p, "sim-node-1", &labels("sim-node-1")));
    }

    #[test]
    fn node_selector_and_expressions() {
        let p = pod(
            json!({"containers": [], "nodeSelector": {"kubernetes.io/hostname": "sim-node-0"}}),
        );
        assert!(node_fits(&p, "sim-node-0", &labels("sim-node-0")));
        assert!(!node_fits(&p, "sim-node-1", &labels("sim-node-1")));
        let p = pod(
            json!({"containers": [], "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
            {"nodeSelectorTerms": [{"matchExpressions": [{"key": "gpu", "operator": "Exists"}]}]}}}}),
        );
        assert!(!node_fits(&p, "sim-node-0", &labels("sim-node-0")));
        let p = pod(json!({"containers": []}));
        assert!(node_fits(&p, "sim-node-0", &labels("sim-node-0")));
    }

    #[test]
    fn pod_ips_are_unique_and_reusable() {
        let node = SimNode::new(&KubeletOptions::default(), 3);
        let a = node.allocate_ip().unwrap();
        let b = node.allocate_ip().unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with("10.131."), "{a}");
        node.release_ip(&a);
        assert!(node.ips.lock().unwrap().used.len() == 1);
    }
}
