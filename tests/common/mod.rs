//! Helpers shared by the end-to-end suites: the Istio fixtures, policies per test namespace,
//! watch-driven waits on workload status, and an observer of pods and EndpointSlices.
#![allow(dead_code)] // each suite uses a different subset

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};

use futures::StreamExt;
use inplace_upgrade::controller;
use inplace_upgrade::policy::InPlaceUpgradePolicy;
use inplace_upgrade::{STATE_ANNOTATION, STATUS_ANNOTATION};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{
    ConfigMap, ContainerStatus, Namespace, Pod, Service, ServiceAccount,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use testenv::{TestEnv, wait_for};

pub type TestResult = Result<(), Box<dyn std::error::Error>>;
pub type AnyResult<T> = Result<T, Box<dyn std::error::Error>>;

pub const CONTROLLER_NAMESPACE: &str = "inplace-upgrade-system";
pub const NEW_PROXY: &str = "registry.istio.io/testing/proxyv2:1.24.2";

pub fn obj<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).expect("test object literal matches its Kubernetes type")
}

pub async fn install(client: &Client) -> AnyResult<()> {
    let crd: CustomResourceDefinition =
        serde_yaml::from_str(&inplace_upgrade::policy::crd_yaml()?)?;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let ssa = PatchParams::apply("e2e").force();
    crds.patch(&crd.name_any(), &ssa, &Patch::Apply(&crd))
        .await?;
    wait_for(
        &crds,
        &crd.name_any(),
        "CRD Established",
        |c: &CustomResourceDefinition| {
            c.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c.type_ == "Established" && c.status == "True")
                })
        },
    )
    .await?;
    let ns: Namespace = obj(json!({"metadata": {"name": CONTROLLER_NAMESPACE}}));
    match Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

pub fn merge(into: &mut Value, from: Value) {
    if let (Some(a), Value::Object(b)) = (into.as_object_mut(), from) {
        for (k, v) in b {
            a.insert(k, v);
        }
    }
}

pub fn fixture(name: &str) -> AnyResult<Vec<Value>> {
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/fixtures/istio")
        .join(name);
    let text = std::fs::read_to_string(&path).map_err(|e| {
        format!(
            "fixture {} is unreadable ({e}); shared/ must sit next to the repository",
            path.display()
        )
    })?;
    let mut docs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        docs.push(<Value as serde::Deserialize>::deserialize(doc)?);
    }
    Ok(docs)
}

/// The first object of `kind` in a fixture, ready to create in a test namespace: status and
/// server-set metadata dropped, `replicas` set (when given), and, when `gated`, our readiness
/// gate in its pod template (as the webhook would inject it into each pod).
pub fn fixture_workload<K: serde::de::DeserializeOwned>(
    file: &str,
    kind: &str,
    replicas: Option<i32>,
    gated: bool,
) -> AnyResult<K> {
    let mut w = fixture(file)?
        .into_iter()
        .find(|d| d["kind"] == kind)
        .ok_or(format!("{file} has no {kind}"))?;
    if let Some(r) = replicas {
        w["spec"]["replicas"] = json!(r);
    }
    if gated {
        w["spec"]["template"]["spec"]["readinessGates"] =
            json!([{"conditionType": "inplace-upgrade.io/ready"}]);
    }
    if let Some(o) = w.as_object_mut() {
        o.remove("status");
    }
    if let Some(m) = w["metadata"].as_object_mut() {
        m.remove("namespace");
        m.remove("creationTimestamp");
    }
    Ok(serde_json::from_value(w)?)
}

pub fn hello_deployment(file: &str, replicas: i32, gated: bool) -> AnyResult<Deployment> {
    fixture_workload(file, "Deployment", Some(replicas), gated)
}

/// Creates the fixture's `hello` Deployment (Istio's older layout: `istio-proxy` as a regular
/// container) with `replicas`, gated or not, and waits until every replica is ready.
pub async fn deploy_hello(
    client: &Client,
    ns: &str,
    replicas: i32,
    gated: bool,
) -> AnyResult<Api<Deployment>> {
    let deployments = Api::<Deployment>::namespaced(client.clone(), ns);
    let d = hello_deployment("hello-old-version.yaml.injected", replicas, gated)?;
    deployments.create(&PostParams::default(), &d).await?;
    await_deployment_ready(&deployments, "hello", replicas).await?;
    Ok(deployments)
}

pub async fn create_service(client: &Client, ns: &str, app: &str) -> AnyResult<()> {
    let svc: Service = obj(json!({
        "metadata": {"name": app},
        "spec": {"selector": {"app": app}, "ports": [{"port": 80, "targetPort": 80}]},
    }));
    Api::<Service>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &svc)
        .await?;
    Ok(())
}

pub fn status_of<'a>(pod: &'a Pod, name: &str) -> Option<&'a ContainerStatus> {
    let s = pod.status.as_ref()?;
    s.container_statuses
        .iter()
        .chain(s.init_container_statuses.iter())
        .flatten()
        .find(|c| c.name == name)
}

/// Whether container `name` of `pod` runs `image`, as its status shows. A simulated kubelet
/// reports the spec's string; containerd reports one of the names the image was imported under,
/// and the test image set imports aliases (`registry.istio.io/testing/proxyv2:1.24.2` and
/// `docker.io/istio/proxyv2:1.24.2`) as one image. On a real node the container therefore runs
/// `image` when its `imageID` is the one the test image set built under that name: the image
/// ID (`sha256:<config digest>`) of an imported image, or `<repository>@<manifest digest>` of
/// one pulled from the loopback registry. A different image under any name still fails.
pub fn runs_image(env: &TestEnv, pod: &Pod, name: &str, image: &str) -> AnyResult<bool> {
    let Some(status) = status_of(pod, name) else {
        return Ok(false);
    };
    if status.image == image {
        return Ok(true);
    }
    let node = pod.spec.as_ref().and_then(|s| s.node_name.as_deref());
    if node.is_none_or(|n| env.simulated_nodes().iter().any(|s| s == n)) {
        return Ok(false);
    }
    static SET: OnceLock<testenv::images::ImageSet> = OnceLock::new();
    let set = match SET.get() {
        Some(set) => set,
        None => {
            let built = testenv::images::build(&testenv::images::default_dir())?;
            SET.get_or_init(|| built)
        }
    };
    let expected = set
        .get(image)
        .ok_or_else(|| format!("{image} is not in the test image set"))?;
    Ok(status.image_id == expected.id
        || status
            .image_id
            .strip_suffix(&expected.digest)
            .is_some_and(|repo| repo.ends_with('@')))
}

pub fn spec_image(pod: &Pod, name: &str) -> Option<String> {
    let s = pod.spec.as_ref()?;
    s.containers
        .iter()
        .chain(s.init_containers.iter().flatten())
        .find(|c| c.name == name)?
        .image
        .clone()
}

pub fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

pub fn workload_status(annotations: &BTreeMap<String, String>) -> Option<Value> {
    serde_json::from_str(annotations.get(STATUS_ANNOTATION)?).ok()
}

pub async fn await_deployment_ready(
    api: &Api<Deployment>,
    name: &str,
    replicas: i32,
) -> AnyResult<()> {
    wait_for(
        api,
        name,
        &format!("Deployment {name} with {replicas} ready replicas"),
        |d: &Deployment| {
            d.status.as_ref().is_some_and(|s| {
                s.ready_replicas == Some(replicas) && s.updated_replicas == Some(replicas)
            })
        },
    )
    .await?;
    Ok(())
}

/// Waits until the workload's status reports `phase` for the target `target` (as written).
pub async fn await_phase<K>(api: &Api<K>, name: &str, target: &str, phase: &str) -> AnyResult<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug
        + Send
        + 'static,
{
    Ok(wait_for(
        api,
        name,
        &format!("{} {name} status phase {phase} for {target}", K::kind(&())),
        |w: &K| {
            workload_status(w.annotations())
                .is_some_and(|s| s["phase"] == phase && s["target"] == target)
        },
    )
    .await?)
}

pub async fn annotate<K>(api: &Api<K>, name: &str, key: &str, value: &str) -> AnyResult<()>
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let patch = json!({"metadata": {"annotations": {key: value}}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

/// What a watcher saw of the pods and EndpointSlices of one app during a rollout: the most
/// pods not Ready at once, every version of the app's EndpointSlices, and per pod the etcd
/// revision at which its image was patched. One etcd serves the test environment, so
/// resourceVersions of different objects are ordered.
#[derive(Default, Debug)]
pub struct Observed {
    pub max_not_ready: usize,
    pub not_ready: BTreeSet<String>,
    /// Per EndpointSlice, each version seen: its revision and the pods it listed as ready or
    /// serving.
    pub slices: BTreeMap<String, Vec<(u64, BTreeSet<String>)>>,
    pub patched_rv: BTreeMap<String, u64>,
    /// Per pod, what the watches showed of it, in order: for a failure message.
    pub timeline: BTreeMap<String, Vec<String>>,
}

impl Observed {
    /// The EndpointSlices that listed `pod` as ready or serving just before revision `rv`
    /// (in their latest version older than it), or `None` when no version of any slice older
    /// than `rv` was seen.
    pub fn serving_before(&self, pod: &str, rv: u64) -> Option<Vec<String>> {
        let mut seen = false;
        let mut serving = Vec::new();
        for (name, versions) in &self.slices {
            if let Some((_, pods)) = versions.iter().rev().find(|(v, _)| *v < rv) {
                seen = true;
                if pods.contains(pod) {
                    serving.push(name.clone());
                }
            }
        }
        seen.then_some(serving)
    }

    /// Checks that every patched pod was out of the ready endpoints when its image was
    /// patched: in the latest version of each EndpointSlice before the patch, it was neither
    /// ready nor serving.
    pub fn drained_before_patched(&self) -> Result<(), String> {
        for (pod, rv) in &self.patched_rv {
            let serving = self.serving_before(pod, *rv);
            if serving != Some(vec![]) {
                return Err(format!(
                    "pod {pod}, patched at rv {rv}, was still ready in EndpointSlices {serving:?} \
                     (None: no slice seen before); what the watches showed of it: {:#?}",
                    self.timeline.get(pod)
                ));
            }
        }
        Ok(())
    }
}

pub fn rv<K: ResourceExt>(o: &K) -> u64 {
    o.resource_version()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Starts watching the pods labelled `app=<app>` and the EndpointSlices of the Service
/// `app`, and returns once both watches have listed: everything after the call is seen.
pub async fn observe(
    client: &Client,
    ns: &str,
    app: &str,
    container: &str,
) -> AnyResult<Arc<Mutex<Observed>>> {
    let seen = Arc::new(Mutex::new(Observed::default()));
    let pods = watcher(
        Api::<Pod>::namespaced(client.clone(), ns),
        watcher::Config::default().labels(&format!("app={app}")),
    );
    let slices = watcher(
        Api::<EndpointSlice>::namespaced(client.clone(), ns),
        watcher::Config::default().labels(&format!("kubernetes.io/service-name={app}")),
    );
    let s = seen.clone();
    let container = container.to_string();
    let mut images: BTreeMap<String, String> = BTreeMap::new();
    let (listed_tx, listed) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let mut pods = pods.boxed();
        let mut slices = slices.boxed();
        let (mut pods_listed, mut slices_listed) = (false, false);
        let mut listed_tx = Some(listed_tx);
        loop {
            tokio::select! {
                ev = pods.next() => match ev {
                    Some(Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p))) => {
                        let mut o = s.lock().unwrap();
                        let name = p.name_any();
                        if p.metadata.deletion_timestamp.is_none() && !is_ready(&p) {
                            o.not_ready.insert(name.clone());
                        } else {
                            o.not_ready.remove(&name);
                        }
                        o.max_not_ready = o.max_not_ready.max(o.not_ready.len());
                        let image = spec_image(&p, &container).unwrap_or_default();
                        let line = format!(
                            "rv {}: pod Ready {}, gate {}, image {image}",
                            rv(&p),
                            is_ready(&p),
                            gate_of(&p)
                        );
                        o.timeline.entry(name.clone()).or_default().push(line);
                        if images.get(&name).is_some_and(|old| *old != image) {
                            o.patched_rv.entry(name.clone()).or_insert(rv(&p));
                        }
                        images.insert(name, image);
                    }
                    Some(Ok(watcher::Event::InitDone)) => pods_listed = true,
                    Some(_) => {}
                    None => break,
                },
                ev = slices.next() => match ev {
                    Some(Ok(watcher::Event::Apply(slice) | watcher::Event::InitApply(slice))) => {
                        let mut o = s.lock().unwrap();
                        let version = rv(&slice);
                        let mut serving = BTreeSet::new();
                        for e in &slice.endpoints {
                            let Some(name) = e.target_ref.as_ref().and_then(|t| t.name.clone())
                            else {
                                continue;
                            };
                            let c = e.conditions.as_ref();
                            let ready = c.and_then(|c| c.ready).unwrap_or(true);
                            let up = ready || c.and_then(|c| c.serving).unwrap_or(ready);
                            let state = if up { "ready" } else { "not ready" };
                            let line =
                                format!("rv {version}: slice {} lists it {state}", slice.name_any());
                            o.timeline.entry(name.clone()).or_default().push(line);
                            if up {
                                serving.insert(name);
                            }
                        }
                        o.slices.entry(slice.name_any()).or_default().push((version, serving));
                    }
                    Some(Ok(watcher::Event::Delete(slice))) => {
                        let mut o = s.lock().unwrap();
                        let gone = (rv(&slice), BTreeSet::new());
                        o.slices.entry(slice.name_any()).or_default().push(gone);
                    }
                    Some(Ok(watcher::Event::InitDone)) => slices_listed = true,
                    Some(_) => {}
                    None => break,
                },
            }
            if pods_listed
                && slices_listed
                && let Some(tx) = listed_tx.take()
            {
                let _ = tx.send(());
            }
        }
    });
    tokio::time::timeout(testenv::WAIT_LIMIT, listed)
        .await
        .map_err(|_| {
            format!(
                "the pods and EndpointSlices of {app} were not listed within {:?}",
                testenv::WAIT_LIMIT
            )
        })?
        .map_err(|_| format!("the watches of {app}'s pods and EndpointSlices ended"))?;
    Ok(seen)
}

/// Our readiness gate's condition as `status/reason`, `-` when the pod has none.
fn gate_of(pod: &Pod) -> String {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| {
            c.iter()
                .find(|c| c.type_ == inplace_upgrade::READINESS_GATE)
        })
        .map_or("-".into(), |c| {
            format!("{}/{}", c.status, c.reason.as_deref().unwrap_or_default())
        })
}

pub struct PodFacts {
    pub uid: String,
    pub ip: String,
    pub node: String,
    pub proxy_id: Option<String>,
    pub proxy_restarts: i32,
    pub app_id: Option<String>,
}

pub fn facts(pod: &Pod, proxy: &str, app: &str) -> PodFacts {
    let st = pod.status.clone().unwrap_or_default();
    PodFacts {
        uid: pod.uid().unwrap_or_default(),
        ip: st.pod_ip.unwrap_or_default(),
        node: pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default(),
        proxy_id: status_of(pod, proxy).and_then(|c| c.container_id.clone()),
        proxy_restarts: status_of(pod, proxy).map_or(0, |c| c.restart_count),
        app_id: status_of(pod, app).and_then(|c| c.container_id.clone()),
    }
}

pub async fn pods_by_name(
    client: &Client,
    ns: &str,
    app: &str,
) -> AnyResult<BTreeMap<String, Pod>> {
    let list = Api::<Pod>::namespaced(client.clone(), ns)
        .list(&kube::api::ListParams::default().labels(&format!("app={app}")))
        .await?;
    Ok(list
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| (p.name_any(), p))
        .collect())
}

/// Waits for an Event with `reason` about the object `name` in `ns`.
pub async fn await_event(
    client: &Client,
    ns: &str,
    name: &str,
    reason: &str,
) -> AnyResult<k8s_openapi::api::core::v1::Event> {
    let api = Api::<k8s_openapi::api::core::v1::Event>::namespaced(client.clone(), ns);
    let config =
        watcher::Config::default().fields(&format!("involvedObject.name={name},reason={reason}"));
    let found = tokio::time::timeout(testenv::WAIT_LIMIT, async {
        let mut events = watcher(api, config).boxed();
        while let Some(ev) = events.next().await {
            if let Ok(watcher::Event::Apply(e) | watcher::Event::InitApply(e)) = ev {
                return Some(e);
            }
        }
        None
    })
    .await;
    match found {
        Ok(Some(e)) => Ok(e),
        _ => Err(format!(
            "no Event {reason} about {ns}/{name} within {:?}",
            testenv::WAIT_LIMIT
        )
        .into()),
    }
}

pub fn state_phase(pod: &Pod) -> Option<String> {
    let state: Value = serde_json::from_str(pod.annotations().get(STATE_ANNOTATION)?).ok()?;
    state["phase"].as_str().map(str::to_string)
}

/// The ConfigMap `istio-ca-root-cert` that the Istio fixtures' pods mount: istiod publishes
/// it in every namespace, and a real kubelet does not start such a pod without it (the
/// simulator does not look).
pub async fn create_istio_ca_configmap(client: &Client, ns: &str) -> AnyResult<()> {
    let cm: ConfigMap = obj(json!({
        "metadata": {"name": "istio-ca-root-cert"},
        "data": {"root-cert.pem": "not a certificate: the test images do not read it"},
    }));
    Api::<ConfigMap>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &cm)
        .await?;
    Ok(())
}

/// An InPlaceUpgradePolicy named after the namespace that selects exactly that namespace,
/// with fast drain and ready timeouts; `overrides` replaces top-level spec fields.
pub async fn create_policy(client: &Client, ns: &str, overrides: Value) -> AnyResult<()> {
    let mut spec = json!({
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}},
        "drain": {"gracePeriodSeconds": 0, "timeoutSeconds": 60},
        "readyTimeoutSeconds": 60,
    });
    merge(&mut spec, overrides);
    let policy: InPlaceUpgradePolicy = obj(json!({
        "apiVersion": "inplace-upgrade.io/v1alpha1",
        "kind": "InPlaceUpgradePolicy",
        "metadata": {"name": ns},
        "spec": spec,
    }));
    Api::<InPlaceUpgradePolicy>::all(client.clone())
        .create(&PostParams::default(), &policy)
        .await?;
    Ok(())
}

/// Scales the `hello` Deployment of `ns` to `replicas` (a merge patch; returns at once).
pub async fn scale_hello(client: &Client, ns: &str, replicas: usize) -> AnyResult<()> {
    Api::<Deployment>::namespaced(client.clone(), ns)
        .patch(
            "hello",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": replicas}})),
        )
        .await?;
    Ok(())
}

/// Waits until the controller has labelled `ns` governed ([`inplace_upgrade::GOVERNED_LABEL`]):
/// from then on the API server sends the namespace's pod creations to the webhook, whose
/// configuration selects that label. (A pod created before is not mutated, as during a webhook
/// outage: the controller converges it.)
pub async fn await_governed(client: &Client, ns: &str) -> AnyResult<()> {
    testenv::wait_for(
        &Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone()),
        ns,
        "the namespace labelled governed by the controller",
        |n: &k8s_openapi::api::core::v1::Namespace| {
            n.labels()
                .get(inplace_upgrade::GOVERNED_LABEL)
                .is_some_and(|v| v == "true")
        },
    )
    .await?;
    Ok(())
}

/// One `inplace-upgrade controller` process; killed when dropped.
pub struct Replica {
    pub identity: String,
    pub child: Child,
    pub admin: u16,
    pub log: PathBuf,
}

impl Replica {
    pub fn start(env: &TestEnv, identity: &str) -> AnyResult<Replica> {
        let admin = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let log = env
            .dir()
            .join("logs")
            .join(format!("controller-{identity}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_inplace-upgrade"))
            .args([
                "controller",
                "--identity",
                identity,
                "--lease-duration-seconds",
                "3",
            ])
            .args([
                "--admin-addr",
                &format!("127.0.0.1:{admin}"),
                "--log-level",
                "info,inplace_upgrade=debug",
            ])
            .arg("--kubeconfig")
            .arg(env.kubeconfig_path())
            .env("POD_NAMESPACE", CONTROLLER_NAMESPACE)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()?;
        Ok(Replica {
            identity: identity.into(),
            child,
            admin,
            log,
        })
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }

    pub fn terminate(&mut self) -> AnyResult<std::process::ExitStatus> {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        Ok(self.child.wait()?)
    }

    /// `inplace_upgrade_leader` from its /metrics.
    pub fn leader_metric(&self) -> AnyResult<Option<String>> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.admin))?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
        let mut body = String::new();
        s.read_to_string(&mut body)?;
        Ok(body
            .lines()
            .find(|l| l.starts_with("inplace_upgrade_leader "))
            .map(|l| l["inplace_upgrade_leader ".len()..].to_string()))
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The identity holding the controller's Lease, if any.
pub async fn holder(client: &Client) -> Option<String> {
    let lease = Api::<Lease>::namespaced(client.clone(), CONTROLLER_NAMESPACE)
        .get_opt(controller::LEASE_NAME)
        .await
        .ok()??;
    lease.spec?.holder_identity.filter(|h| !h.is_empty())
}

/// Waits until one of `among` holds the controller's Lease; returns it.
pub async fn await_holder(client: &Client, among: &[&str]) -> AnyResult<String> {
    let api = Api::<Lease>::namespaced(client.clone(), CONTROLLER_NAMESPACE);
    let lease = wait_for(
        &api,
        controller::LEASE_NAME,
        &format!("a leader among {among:?}"),
        |l: &Lease| {
            l.spec
                .as_ref()
                .and_then(|s| s.holder_identity.as_deref())
                .is_some_and(|h| among.contains(&h))
        },
    )
    .await?;
    Ok(lease
        .spec
        .and_then(|s| s.holder_identity)
        .unwrap_or_default())
}

/// Whether the pod's spec lists our readiness gate (injected by the webhook at CREATE).
pub fn has_gate(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.readiness_gates.as_ref())
        .is_some_and(|g| {
            g.iter()
                .any(|g| g.condition_type == inplace_upgrade::READINESS_GATE)
        })
}

/// Our readiness gate condition: (status, reason).
pub fn gate(pod: &Pod) -> Option<(String, String)> {
    let c = pod
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "inplace-upgrade.io/ready")?;
    Some((c.status.clone(), c.reason.clone().unwrap_or_default()))
}

/// On an external cluster ([`TestEnv::is_external`]), the identity holding a live controller
/// Lease: the product runs in-cluster. A Lease held by `ours` (the suite's in-process
/// controller's identity) is not the product: it is this run's controller, or an earlier
/// run's that exited within the lease's 15 s (ours takes that over at once: same identity).
pub async fn in_cluster_controller(env: &TestEnv, client: &Client, ours: &str) -> Option<String> {
    if !env.is_external() {
        return None;
    }
    let lease = Api::<Lease>::namespaced(client.clone(), CONTROLLER_NAMESPACE)
        .get_opt(controller::LEASE_NAME)
        .await
        .ok()??;
    controller::lease_is_live(&lease, k8s_openapi::jiff::Timestamp::now())
        .then(|| lease.spec?.holder_identity)
        .flatten()
        .filter(|holder| holder != ours)
}

/// Installs the CRD and starts one in-process controller (identity `identity`) for the whole
/// test binary, on a thread and runtime of its own that live as long as the process (so no
/// process outlives the tests); waits until it leads. On an external cluster where the
/// product already runs ([`in_cluster_controller`]), starts none and says so.
pub fn shared_controller(identity: &'static str) -> AnyResult<&'static TestEnv> {
    static STARTED: OnceLock<Result<(), String>> = OnceLock::new();
    let env = TestEnv::shared()?;
    STARTED
        .get_or_init(|| {
            let (tx, rx) = std::sync::mpsc::channel::<Result<(), String>>();
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build();
                let runtime = match runtime {
                    Ok(r) => r,
                    Err(e) => return drop(tx.send(Err(e.to_string()))),
                };
                let started = runtime.block_on(async move {
                    let client = env.client().map_err(|e| e.to_string())?;
                    install(&client).await.map_err(|e| e.to_string())?;
                    if let Some(holder) = in_cluster_controller(env, &client, identity).await {
                        // Two controllers would both act: the suite uses the installed one.
                        eprintln!(
                            "using the controller running in the cluster (Lease {CONTROLLER_NAMESPACE}/{} held by {holder}); not starting {identity}",
                            controller::LEASE_NAME
                        );
                        return Ok(None);
                    }
                    let mut registry = prometheus_client::registry::Registry::default();
                    let settings = controller::Settings {
                        namespace: CONTROLLER_NAMESPACE.into(),
                        identity: identity.into(),
                        concurrency: 8,
                        lease_duration: std::time::Duration::from_secs(15),
                    };
                    let handle = controller::start(client, settings, &mut registry);
                    let mut leading = handle.leading.clone();
                    leading.wait_for(|l| *l).await.map_err(|e| e.to_string())?;
                    Ok::<_, String>(Some(handle))
                });
                let ok = started.is_ok();
                let _ = tx.send(started.map(drop));
                if ok {
                    runtime.block_on(std::future::pending::<()>());
                }
            });
            rx.recv()
                .map_err(|_| "the controller thread died".to_string())?
        })
        .clone()
        .map_err(|e| format!("starting the controller: {e}"))?;
    Ok(env)
}

/// A kubeconfig for the environment's API server (server and CA from its admin kubeconfig)
/// that authenticates with a fresh TokenRequest token of `service_account`.
pub async fn service_account_kubeconfig(
    env: &TestEnv,
    client: &Client,
    namespace: &str,
    service_account: &str,
) -> AnyResult<PathBuf> {
    let request = TokenRequest {
        spec: TokenRequestSpec {
            // Empty: the API server's own audience.
            audiences: Vec::new(),
            expiration_seconds: Some(3600),
            ..Default::default()
        },
        ..Default::default()
    };
    let token = Api::<ServiceAccount>::namespaced(client.clone(), namespace)
        .create_token_request(service_account, &PostParams::default(), &request)
        .await?
        .status
        .ok_or("TokenRequest without status")?
        .token;
    let admin: Value = serde_yaml::from_str(&std::fs::read_to_string(env.kubeconfig_path())?)?;
    let cluster = &admin["clusters"][0]["cluster"];
    let kubeconfig = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "cluster", "cluster": {
            "server": cluster["server"],
            "certificate-authority-data": cluster["certificate-authority-data"],
        }}],
        "users": [{"name": service_account, "user": {"token": token}}],
        "contexts": [{"name": service_account, "context": {
            "cluster": "cluster", "user": service_account, "namespace": namespace,
        }}],
        "current-context": service_account,
    });
    let path = env
        .dir()
        .join(format!("{namespace}-{service_account}.kubeconfig"));
    std::fs::write(&path, serde_yaml::to_string(&kubeconfig)?)?;
    Ok(path)
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> AnyResult<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// One `inplace-upgrade webhook` process (certificates from files in `cert_dir`, served on
/// `port`, its admin port free-picked); killed when dropped.
pub struct WebhookProcess {
    pub child: Child,
    pub admin: SocketAddr,
    pub log: PathBuf,
}

impl WebhookProcess {
    pub fn start(
        binary: &Path,
        kubeconfig: &Path,
        cert_dir: &Path,
        port: u16,
        log: PathBuf,
    ) -> AnyResult<Self> {
        let admin: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
        let child = Command::new(binary)
            .arg("webhook")
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--admin-addr", &admin.to_string()])
            .arg("--cert-dir")
            .arg(cert_dir)
            .args(["--log-level", "info"])
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .env("POD_NAMESPACE", CONTROLLER_NAMESPACE)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()?;
        Ok(Self { child, admin, log })
    }

    /// Until `/readyz` says 200: certificate loaded, caches synced.
    pub async fn await_ready(&mut self) -> AnyResult<()> {
        let deadline = std::time::Instant::now() + testenv::WAIT_LIMIT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Err(format!(
                    "the webhook exited ({status}): {}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                )
                .into());
            }
            if admin_get(self.admin, "/readyz").await.map(|(code, _)| code) == Some(200) {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                return Err(
                    format!("the webhook never became ready; see {}", self.log.display()).into(),
                );
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    pub fn signal(&self, signal: &str) -> AnyResult<()> {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .stderr(Stdio::null())
            .status()?;
        if !status.success() {
            return Err(format!("kill {signal} failed").into());
        }
        Ok(())
    }
}

impl Drop for WebhookProcess {
    fn drop(&mut self) {
        let _ = self.signal("-CONT");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `GET path` on a plain-HTTP admin port: the status code and the body.
pub async fn admin_get(admin: SocketAddr, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(admin).await.ok()?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.ok()?;
    let code = answer.split_whitespace().nth(1)?.parse().ok()?;
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Some((code, body.to_owned()))
}

/// Waits until a pod of `deployment` would get our readiness gate: the API server has loaded
/// the new configurations and the webhook's caches hold the ReplicaSet, the policy and a live
/// Lease (each arrives by its own watch, so a pod created at once could miss the mutation).
/// Probes with server-side dry-run creations, which run admission but store nothing.
pub async fn await_webhook_gates_pods_of(
    client: &Client,
    ns: &str,
    deployment: &Deployment,
) -> AnyResult<()> {
    await_webhook_mutates_pods_of(client, ns, deployment, "the readiness gate", |_| true).await
}

/// [`await_webhook_gates_pods_of`], until the gated dry-run pod also satisfies `also` (e.g.
/// carries the target image: the webhook's cache holds the workload's annotation too).
pub async fn await_webhook_mutates_pods_of(
    client: &Client,
    ns: &str,
    deployment: &Deployment,
    what: &str,
    also: impl Fn(&Pod) -> bool,
) -> AnyResult<()> {
    let replica_sets = testenv::wait_list(
        &Api::<ReplicaSet>::namespaced(client.clone(), ns),
        kube::runtime::watcher::Config::default(),
        "the Deployment's ReplicaSet",
        |rs: &[ReplicaSet]| !rs.is_empty(),
    )
    .await?;
    let rs = &replica_sets[0];
    let template = deployment
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .ok_or("Deployment without spec")?;
    let probe: Pod = obj(json!({
        "metadata": {
            "generateName": "webhook-probe-",
            "labels": template.metadata.and_then(|m| m.labels),
            "ownerReferences": [{
                "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": rs.name_any(),
                "uid": rs.uid(), "controller": true,
            }],
        },
        "spec": template.spec,
    }));
    let pods = Api::<Pod>::namespaced(client.clone(), ns);
    let dry_run = PostParams {
        dry_run: true,
        ..Default::default()
    };
    tokio::time::timeout(testenv::WAIT_LIMIT, async {
        loop {
            match pods.create(&dry_run, &probe).await {
                Ok(p) if has_gate(&p) && also(&p) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(e),
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    })
    .await
    .map_err(|_| {
        format!(
            "no dry-run pod of {ns}/{} got {what} within {:?}",
            deployment.name_any(),
            testenv::WAIT_LIMIT
        )
    })??;
    Ok(())
}

/// Runs a command; its stdout, or an error with the command, its status and its output.
pub fn run(mut command: Command) -> AnyResult<String> {
    let out = command.output().map_err(|e| format!("{command:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{command:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Our webhook configurations as deploy/ has them, named `name`, but calling
/// `https://127.0.0.1:port` (the API server cannot reach a Service here: no kube-proxy) and
/// only for `namespaces`; the policies webhook, which is cluster-wide, is left out so that
/// other tests' policies never reach this webhook.
pub async fn register_webhook(
    client: &Client,
    name: &str,
    namespaces: &[&str],
    port: u16,
    ca: Vec<u8>,
) -> AnyResult<()> {
    use inplace_upgrade::admission::configuration::{
        ConfigurationOptions, Endpoint, webhook_configurations,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
    let (mut mutating, mut validating) = webhook_configurations(&ConfigurationOptions {
        endpoint: Endpoint::Url(format!("https://127.0.0.1:{port}")),
        ca_bundle: Some(ca),
        own_namespace: CONTROLLER_NAMESPACE.into(),
        cert_manager_certificate: None,
    });
    let only: LabelSelector = obj(json!({"matchExpressions": [{
        "key": "kubernetes.io/metadata.name", "operator": "In", "values": namespaces,
    }]}));
    mutating.metadata.name = Some(name.into());
    for w in mutating.webhooks.iter_mut().flatten() {
        w.namespace_selector = Some(only.clone());
    }
    validating.metadata.name = Some(name.into());
    if let Some(webhooks) = validating.webhooks.as_mut() {
        webhooks.retain(|w| w.namespace_selector.is_some());
        for w in webhooks {
            w.namespace_selector = Some(only.clone());
        }
    }
    create_webhook_configurations(client, &mutating, &validating).await
}

/// Creates a pair of webhook configurations.
pub async fn create_webhook_configurations(
    client: &Client,
    mutating: &k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration,
    validating: &k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration,
) -> AnyResult<()> {
    use k8s_openapi::api::admissionregistration::v1::{
        MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
    };
    Api::<MutatingWebhookConfiguration>::all(client.clone())
        .create(&PostParams::default(), mutating)
        .await?;
    Api::<ValidatingWebhookConfiguration>::all(client.clone())
        .create(&PostParams::default(), validating)
        .await?;
    Ok(())
}

/// A tool the tests run, found by `$env_var` or else by a script of this repository that
/// provides it (a no-op when its cache is warm) and prints its path as the last line.
pub fn tool_path(env_var: &str, script: &str) -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os(env_var) {
        return Ok(PathBuf::from(p));
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join(script);
    let out = Command::new("bash")
        .arg(&script)
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    match stdout.lines().last().map(str::trim) {
        Some(p) if out.status.success() && !p.is_empty() => Ok(PathBuf::from(p)),
        _ => Err(format!(
            "{} failed ({}); its output is above",
            script.display(),
            out.status
        )),
    }
}

/// What a watch of every pod of a namespace showed of pre-pull before drain, in etcd order
/// (one etcd: resourceVersions of different objects are ordered).
#[derive(Default, Debug, Clone)]
pub struct PrePulls {
    /// Pre-pull pods seen: name → (node, image).
    pub pods: BTreeMap<String, (String, String)>,
    /// The first revision at which a pre-pull pod on each node showed its image pulled.
    pub pulled_at: BTreeMap<String, u64>,
    /// Per app pod: its node and the revision of its first drain.
    pub drained_at: BTreeMap<String, (String, u64)>,
    /// The first pre-pull pod as the API server stored it.
    pub first: Option<Pod>,
    /// Per node, the pre-pull container's state when its pod first showed the image pulled
    /// (`terminated <reason> <exit code>: <message>`, or `waiting`/`running`…).
    pub pulled_as: BTreeMap<String, String>,
}

/// Watches every pod of `ns` and records pre-pull pods and drains; returns once listed.
pub async fn watch_prepulls(client: &Client, ns: &str) -> AnyResult<Arc<Mutex<PrePulls>>> {
    let seen = Arc::new(Mutex::new(PrePulls::default()));
    let s = seen.clone();
    let (listed_tx, listed) = tokio::sync::oneshot::channel::<()>();
    let mut stream = watcher(
        Api::<Pod>::namespaced(client.clone(), ns),
        watcher::Config::default(),
    )
    .boxed();
    tokio::spawn(async move {
        let mut listed_tx = Some(listed_tx);
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => {
                    let mut o = s.lock().unwrap();
                    let node = p
                        .spec
                        .as_ref()
                        .and_then(|s| s.node_name.clone())
                        .unwrap_or_default();
                    if p.labels().contains_key(inplace_upgrade::prepull::LABEL) {
                        let image = p.spec.as_ref().map(|s| s.containers[0].image.clone());
                        o.pods.insert(
                            p.name_any(),
                            (node.clone(), image.flatten().unwrap_or_default()),
                        );
                        if inplace_upgrade::prepull::pull_state(&p)
                            == inplace_upgrade::prepull::PullState::Pulled
                            && !o.pulled_at.contains_key(&node)
                        {
                            o.pulled_at.insert(node.clone(), rv(&p));
                            let state = p
                                .status
                                .as_ref()
                                .and_then(|s| s.container_statuses.as_ref())
                                .and_then(|c| c.first())
                                .and_then(|c| c.state.clone())
                                .unwrap_or_default();
                            let said = match (&state.terminated, &state.waiting) {
                                (Some(t), _) => format!(
                                    "terminated {} {}: {}",
                                    t.reason.as_deref().unwrap_or_default(),
                                    t.exit_code,
                                    t.message.as_deref().unwrap_or_default()
                                ),
                                (None, Some(w)) => {
                                    format!("waiting {}", w.reason.as_deref().unwrap_or_default())
                                }
                                (None, None) => "running".to_string(),
                            };
                            o.pulled_as.insert(node, said);
                        }
                        if o.first.is_none() {
                            o.first = Some(p);
                        }
                    } else if gate(&p).is_some_and(|(s, r)| s == "False" && r == "Draining") {
                        o.drained_at.entry(p.name_any()).or_insert((node, rv(&p)));
                    }
                }
                Ok(watcher::Event::InitDone) => {
                    if let Some(tx) = listed_tx.take() {
                        let _ = tx.send(());
                    }
                }
                _ => {}
            }
        }
    });
    tokio::time::timeout(testenv::WAIT_LIMIT, listed)
        .await
        .map_err(|_| "the pods were not listed")?
        .map_err(|_| "the pod watch ended")?;
    Ok(seen)
}

/// No pre-pull pod is left in `ns`.
pub async fn await_no_prepull_pods(client: &Client, ns: &str) -> TestResult {
    let pods = Api::<Pod>::namespaced(client.clone(), ns);
    let selector = kube::api::ListParams::default().labels(inplace_upgrade::prepull::LABEL);
    let deadline = std::time::Instant::now() + testenv::WAIT_LIMIT;
    loop {
        let left = pods.list(&selector).await?;
        if left.items.is_empty() {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            let names: Vec<String> = left.items.iter().map(|p| p.name_any()).collect();
            return Err(format!("pre-pull pods left behind: {names:?}").into());
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}
