//! Contract tests: the simulated kubelet's rules, checked against the real API server and
//! controllers AND against a real kubelet (containerd, runc, CNI) running the same pod specs.
//! Every other suite trusts these rules. Each test runs twice, in `simulated::` (the shared
//! environment's simulated nodes) and in `real::` (the shared real-node environment; skipped
//! with a printed reason when not root, a failure with `INPLACE_REAL_NODES=require`). One
//! namespace per test; every wait is watch-driven with a generous limit (no timed
//! assertions).
//!
//! The images are the test image set (`testenv::images`): the simulated kubelet derives from a
//! name what the real image does (`-crashloop`, `-never-ready`, `--` retags, `fail-pull` names
//! that exist nowhere). Where the two kinds of node differ, the test says so next to the
//! assertion that branches on [`Kind`].

use std::collections::BTreeSet;
use std::path::PathBuf;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{ContainerStatus, Event, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use testenv::{TestEnv, wait_deleted, wait_for, wait_list};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const GATE: &str = "inplace-upgrade.io/ready";

/// The app of the test image set: serves its version on 8080, `/ready` once ready, exits 143
/// on SIGTERM.
const APP_V1: &str = "registry.inplace.test/testapp:1.0";
const APP_V2: &str = "registry.inplace.test/testapp:2.0";
/// One image under two names (the part after `--` is the content).
const RETAG_A: &str = "registry.inplace.test/testapp:1.0--r1";
const RETAG_B: &str = "registry.inplace.test/testapp:stable--r1";

/// Which kind of node a test runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Simulated,
    Real,
}

impl Kind {
    fn env(self) -> Result<Option<&'static TestEnv>, Box<dyn std::error::Error>> {
        Ok(match self {
            Kind::Simulated => Some(TestEnv::shared()?),
            Kind::Real => TestEnv::shared_real()?,
        })
    }
}

/// A client and a fresh namespace on the environment of `kind`, with the ConfigMap
/// `istio-ca-root-cert` that Istio-injected pods mount (istiod publishes it; a real kubelet
/// does not start such a pod without it). `None`: real nodes are skipped here.
async fn setup(
    kind: Kind,
    prefix: &str,
) -> Result<Option<(Client, String)>, Box<dyn std::error::Error>> {
    let Some(env) = kind.env()? else {
        return Ok(None);
    };
    let ns = env.namespace(prefix).await?;
    let client = env.client()?;
    let cm: k8s_openapi::api::core::v1::ConfigMap = obj(json!({
        "metadata": {"name": "istio-ca-root-cert"},
        "data": {"root-cert.pem": "not a certificate: the test images do not read it"},
    }));
    Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &cm)
        .await?;
    Ok(Some((client, ns)))
}

/// Runs each named test against both kinds of node.
macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod simulated {
            $(#[tokio::test]
            async fn $name() -> super::TestResult {
                super::$name(super::Kind::Simulated).await
            })*
        }
        mod real {
            $(#[tokio::test]
            async fn $name() -> super::TestResult {
                super::$name(super::Kind::Real).await
            })*
        }
    };
}

contract!(
    deployment_pods_become_ready_and_appear_in_endpoint_slices,
    readiness_gate_takes_the_pod_out_of_endpoints_and_back,
    image_patch_restarts_only_that_container,
    native_sidecar_image_patch_restarts_only_the_sidecar,
    run_to_completion_init_container_completes_before_containers_start,
    failure_modes_show_kubelet_reasons,
    image_patch_to_a_failing_image_and_back,
    daemonset_pods_land_one_per_node,
    graceful_deletion_honours_grace_period_and_finalizers,
    ready_transition_time_is_stable_across_unrelated_status_writes,
    retag_to_the_same_digest_still_restarts_the_container,
    statefulset_and_pod_disruption_budget_controllers_run,
    a_pod_no_node_fits_is_unschedulable,
    a_native_sidecar_that_exited_0_shows_no_waiting_reason_but_events,
    a_native_sidecar_that_exited_143_cycles_through_the_waiting_reasons,
);

/// The app container with a readiness probe on its `/ready`.
fn app(name: &str, image: &str) -> Value {
    json!({"name": name, "image": image,
        "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080}, "periodSeconds": 1}})
}

/// A second app container in the same pod: it must listen elsewhere than 8080.
fn helper(name: &str, image: &str, port: u16) -> Value {
    json!({"name": name, "image": image, "env": [{"name": "TESTAPP_LISTEN", "value": port.to_string()}]})
}

/// `imageID` as each kind of node reports it: containerd's `sha256:<config digest>` for an
/// imported image — the real one on a real node, one derived from the name in the simulator.
fn assert_image_id(kind: Kind, image_id: &str, image: &str) -> TestResult {
    match kind {
        Kind::Real => {
            let set = testenv::test_images()?;
            let want = set
                .get(image)
                .ok_or(format!("{image} is not in the image set"))?;
            assert_eq!(image_id, want.id, "imageID of {image}");
        }
        Kind::Simulated => assert!(
            image_id.starts_with("sha256:") && image_id.len() == 71,
            "{image_id} for {image}"
        ),
    }
    Ok(())
}

fn obj<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).expect("test object literal matches its Kubernetes type")
}

fn condition(pod: &Pod, type_: &str) -> Option<(String, String)> {
    let c = pod
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)?;
    let ltt = serde_json::to_value(&c.last_transition_time)
        .ok()?
        .as_str()
        .unwrap_or_default()
        .to_owned();
    Some((c.status.clone(), ltt))
}

fn is_true(pod: &Pod, type_: &str) -> bool {
    condition(pod, type_).is_some_and(|(s, _)| s == "True")
}

fn status_of<'a>(pod: &'a Pod, name: &str) -> Option<&'a ContainerStatus> {
    let s = pod.status.as_ref()?;
    s.container_statuses
        .iter()
        .chain(s.init_container_statuses.iter())
        .flatten()
        .find(|c| c.name == name)
}

fn waiting_reason(pod: &Pod, name: &str) -> Option<String> {
    status_of(pod, name)?
        .state
        .as_ref()?
        .waiting
        .as_ref()?
        .reason
        .clone()
}

fn pod_ip(pod: &Pod) -> Option<String> {
    pod.status.as_ref()?.pod_ip.clone()
}

/// Ready endpoint addresses of the Service's EndpointSlices.
fn ready_addresses(slices: &[EndpointSlice]) -> BTreeSet<String> {
    slices
        .iter()
        .flat_map(|s| s.endpoints.iter())
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(false))
        .flat_map(|e| e.addresses.iter().cloned())
        .collect()
}

fn slices_of(service: &str) -> watcher::Config {
    watcher::Config::default().labels(&format!("kubernetes.io/service-name={service}"))
}

async fn create_service(client: &Client, ns: &str, name: &str) -> TestResult {
    let svc: Service = obj(json!({
        "metadata": {"name": name},
        "spec": {"selector": {"app": name}, "ports": [{"port": 80, "targetPort": 80}]},
    }));
    Api::<Service>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &svc)
        .await?;
    Ok(())
}

async fn create_pod(
    client: &Client,
    ns: &str,
    pod: Value,
) -> Result<Pod, Box<dyn std::error::Error>> {
    let pod: Pod = obj(pod);
    Ok(Api::<Pod>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &pod)
        .await?)
}

async fn await_ready(api: &Api<Pod>, name: &str) -> Result<Pod, testenv::Error> {
    wait_for(api, name, &format!("pod {name} Ready"), |p: &Pod| {
        is_true(p, "Ready")
    })
    .await
}

/// Sets the readiness-gate condition the way our controller will: a strategic-merge patch of
/// `pods/status` with that one condition.
async fn set_gate(api: &Api<Pod>, name: &str, status: &str) -> TestResult {
    let patch = json!({"status": {"conditions": [{"type": GATE, "status": status,
        "lastTransitionTime": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)}]}});
    api.patch_status(name, &PatchParams::default(), &Patch::Strategic(&patch))
        .await?;
    Ok(())
}

async fn patch_image(api: &Api<Pod>, name: &str, path: &str, old: &str, new: &str) -> TestResult {
    let patch: json_patch::Patch = obj(json!([
        {"op": "test", "path": path, "value": old},
        {"op": "replace", "path": path, "value": new},
    ]));
    api.patch(name, &PatchParams::default(), &Patch::<Value>::Json(patch))
        .await?;
    Ok(())
}

async fn deployment_pods_become_ready_and_appear_in_endpoint_slices(kind: Kind) -> TestResult {
    let Some((client, ns)) = setup(kind, "deploy").await? else {
        return Ok(());
    };
    create_service(&client, &ns, "web").await?;
    let deploy: Deployment = obj(json!({
        "metadata": {"name": "web"},
        "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [app("web", APP_V1)]}}},
    }));
    Api::<Deployment>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &deploy)
        .await?;
    let pods = wait_list(
        &Api::<Pod>::namespaced(client.clone(), &ns),
        watcher::Config::default().labels("app=web"),
        "3 Ready pods of Deployment web",
        |pods: &[Pod]| pods.len() == 3 && pods.iter().all(|p| is_true(p, "Ready")),
    )
    .await?;
    let ips: BTreeSet<String> = pods.iter().filter_map(pod_ip).collect();
    assert_eq!(ips.len(), 3, "pod IPs must be unique: {ips:?}");
    for p in &pods {
        let s = p.status.as_ref().ok_or("no status")?;
        assert_eq!(s.phase.as_deref(), Some("Running"));
        assert!(s.host_ip.is_some() && s.start_time.is_some());
        let c = status_of(p, "web").ok_or("no web status")?;
        assert!(c.ready && c.started == Some(true) && c.restart_count == 0);
        assert!(
            c.container_id
                .as_deref()
                .is_some_and(|id| id.starts_with("containerd://"))
        );
        assert_image_id(kind, &c.image_id, APP_V1)?;
    }
    wait_list(
        &Api::<EndpointSlice>::namespaced(client.clone(), &ns),
        slices_of("web"),
        &format!("EndpointSlices of Service web with ready addresses {ips:?}"),
        |slices: &[EndpointSlice]| ready_addresses(slices) == ips,
    )
    .await?;
    Ok(())
}

async fn readiness_gate_takes_the_pod_out_of_endpoints_and_back(kind: Kind) -> TestResult {
    let Some((client, ns)) = setup(kind, "gate").await? else {
        return Ok(());
    };
    create_service(&client, &ns, "gated").await?;
    let api = Api::<Pod>::namespaced(client.clone(), &ns);
    create_pod(
        &client,
        &ns,
        json!({"metadata": {"name": "gated", "labels": {"app": "gated"}},
            "spec": {"readinessGates": [{"conditionType": GATE}],
                "containers": [app("app", APP_V1)]}}),
    )
    .await?;
    let pod = wait_for(&api, "gated", "pod gated ContainersReady", |p: &Pod| {
        is_true(p, "ContainersReady")
    })
    .await?;
    assert!(
        !is_true(&pod, "Ready"),
        "a missing gate condition counts as False"
    );
    let ip = pod_ip(&pod).ok_or("no pod IP")?;
    let slices = Api::<EndpointSlice>::namespaced(client.clone(), &ns);

    set_gate(&api, "gated", "True").await?;
    await_ready(&api, "gated").await?;
    wait_list(
        &slices,
        slices_of("gated"),
        &format!("{ip} ready in EndpointSlices"),
        |s: &[EndpointSlice]| ready_addresses(s).contains(&ip),
    )
    .await?;

    set_gate(&api, "gated", "False").await?;
    wait_for(
        &api,
        "gated",
        "pod gated not Ready after gate False",
        |p: &Pod| !is_true(p, "Ready"),
    )
    .await?;
    wait_list(
        &slices,
        slices_of("gated"),
        &format!("{ip} out of ready endpoints"),
        |s: &[EndpointSlice]| !ready_addresses(s).contains(&ip),
    )
    .await?;
    // The kubelet recomputed Ready from the gate and must not have overwritten the gate.
    let pod = api.get("gated").await?;
    assert_eq!(condition(&pod, GATE).map(|c| c.0).as_deref(), Some("False"));
    assert!(is_true(&pod, "ContainersReady"));

    set_gate(&api, "gated", "True").await?;
    wait_list(
        &slices,
        slices_of("gated"),
        &format!("{ip} back in ready endpoints"),
        |s: &[EndpointSlice]| ready_addresses(s).contains(&ip),
    )
    .await?;
    // Ready again: the reason and message of the not-ready spell are gone, as kubelet does.
    let pod = await_ready(&api, "gated").await?;
    let ready = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .ok_or("no Ready condition")?;
    assert_eq!(
        (ready.reason.as_deref(), ready.message.as_deref()),
        (None, None),
        "{ready:?}"
    );
    Ok(())
}

async fn image_patch_restarts_only_that_container(kind: Kind) -> TestResult {
    let Some((client, ns)) = setup(kind, "restart").await? else {
        return Ok(());
    };
    let api = Api::<Pod>::namespaced(client.clone(), &ns);
    create_pod(
        &client,
        &ns,
        json!({"metadata": {"name": "two"}, "spec": {"containers": [
            app("app", APP_V1),
            helper("helper", APP_V1, 8081),
        ]}}),
    )
    .await?;
    let before = await_ready(&api, "two").await?;
    let app_before = status_of(&before, "app").ok_or("no app status")?.clone();
    let helper_before = status_of(&before, "helper")
        .ok_or("no helper status")?
        .clone();

    patch_image(&api, "two", "/spec/containers/0/image", APP_V1, APP_V2).await?;
    let old_id = app_before.container_id.clone();
    let after = wait_for(
        &api,
        "two",
        "container app restarted on the new image and Ready",
        |p: &Pod| {
            status_of(p, "app")
                .is_some_and(|c| c.container_id != old_id && c.ready && c.image == APP_V2)
                && is_true(p, "Ready")
        },
    )
    .await?;
    let app = status_of(&after, "app").ok_or("no app status")?;
    assert_eq!(app.restart_count, app_before.restart_count + 1);
    let last = app
        .last_state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .ok_or("no lastState.terminated")?;
    assert_eq!(
        last.container_id, old_id,
        "lastState must be the old container"
    );
    assert_ne!(app.image_id, app_before.image_id);
    let helper = status_of(&after, "helper").ok_or("no helper status")?;
    assert_eq!(
        helper.container_id, helper_before.container_id,
        "the other container must not restart"
    );
    assert_eq!(helper.restart_count, 0);
    assert_eq!(pod_ip(&after), pod_ip(&before));
    assert_eq!(after.metadata.uid, before.metadata.uid);
    assert_eq!(
        after.spec.as_ref().and_then(|s| s.node_name.clone()),
        before.spec.as_ref().and_then(|s| s.node_name.clone())
    );

    wait_list(
        &Api::<Event>::namespaced(client.clone(), &ns),
        watcher::Config::default().fields("involvedObject.name=two,reason=Killing"),
        "a Killing Event for container app",
        |evs: &[Event]| {
            evs.iter().any(|e| {
                e.message
                    .as_deref()
                    .is_some_and(|m| m.contains("definition changed"))
                    && e.involved_object.field_path.as_deref() == Some("spec.containers{app}")
            })
        },
    )
    .await?;
    Ok(())
}

fn fixture(name: &str) -> Result<PathBuf, Box<dyn std::error::Error>> {
    // CI has `shared/` next to the repository's clone.
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/fixtures/istio")
        .join(name);
    if !path.is_file() {
        return Err(format!(
            "fixture {} is missing (shared/ must sit next to the repository)",
            path.display()
        )
        .into());
    }
    Ok(path)
}

async fn native_sidecar_image_patch_restarts_only_the_sidecar(kind: Kind) -> TestResult {
    let Some((client, ns)) = setup(kind, "sidecar").await? else {
        return Ok(());
    };
    let api = Api::<Pod>::namespaced(client.clone(), &ns);
    let text = std::fs::read_to_string(fixture("native-sidecar.yaml.injected")?)?;
    let mut pod: Option<Value> = None;
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let v: Value = serde::Deserialize::deserialize(doc)?;
        if v["kind"] == "Pod" {
            pod = Some(v);
            break;
        }
    }
    let mut pod = pod.ok_or("the fixture has no Pod")?;
    // The fixture's other-sidecar is a second copy of the app on port 80 whose readiness the
    // proxy probes on port 3333 (ISTIO_KUBE_APP_PROBERS). Two processes cannot hold port 80 in
    // one pod on a real node, so it listens on 3333, where its probe looks.
    if let Some(sidecar) = pod["spec"]["initContainers"]
        .as_array_mut()
        .and_then(|ics| ics.iter_mut().find(|c| c["name"] == "other-sidecar"))
    {
        sidecar["env"] = json!([{"name": "TESTAPP_LISTEN", "value": "3333"}]);
    }
    let created = create_pod(&client, &ns, pod).await?;
    let name = created.name_any();
    let before = await_ready(&api, &name).await?;

    // istio-init ran to completion before istio-proxy started.
    let init = status_of(&before, "istio-init").ok_or("no istio-init status")?;
    let done = init
        .state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .ok_or("istio-init not terminated")?;
    assert_eq!(
        (done.exit_code, done.reason.as_deref()),
        (0, Some("Completed"))
    );
    let proxy = status_of(&before, "istio-proxy")
        .ok_or("no istio-proxy status")?
        .clone();
    let proxy_started = proxy
        .state
        .as_ref()
        .and_then(|s| s.running.as_ref())
        .and_then(|r| r.started_at.clone());
    assert!(proxy.ready && proxy.started == Some(true));
    assert!(
        done.finished_at
            .as_ref()
            .zip(proxy_started.as_ref())
            .is_some_and(|(f, s)| f.0 <= s.0)
    );
    let others: Vec<(String, Option<String>)> = ["istio-init", "other-sidecar", "hello"]
        .iter()
        .map(|n| {
            (
                n.to_string(),
                status_of(&before, n).and_then(|c| c.container_id.clone()),
            )
        })
        .collect();

    let idx = before
        .spec
        .as_ref()
        .and_then(|s| s.init_containers.as_ref())
        .and_then(|ics| ics.iter().position(|c| c.name == "istio-proxy"))
        .ok_or("no istio-proxy init container")?;
    let target = "registry.istio.io/testing/proxyv2:1.25.0";
    patch_image(
        &api,
        &name,
        &format!("/spec/initContainers/{idx}/image"),
        &proxy.image,
        target,
    )
    .await?;
    let old_id = proxy.container_id.clone();
    let after = wait_for(
        &api,
        &name,
        "istio-proxy restarted on the new image and pod Ready",
        |p: &Pod| {
            status_of(p, "istio-proxy")
                .is_some_and(|c| c.container_id != old_id && c.ready && c.image == target)
                && is_true(p, "Ready")
        },
    )
    .await?;
    let proxy_after = status_of(&after, "istio-proxy").ok_or("no istio-proxy status")?;
    assert_eq!(proxy_after.restart_count, proxy.restart_count + 1);
    for (n, id) in others {
        assert_eq!(
            status_of(&after, &n).and_then(|c| c.container_id.clone()),
            id,
            "{n} must not restart"
        );
    }
    assert_eq!(pod_ip(&after), pod_ip(&before));
    Ok(())
}

async fn run_to_completion_init_container_completes_before_containers_start(
    kind: Kind,
) -> TestResult {
    let Some((client, ns)) = setup(kind, "init").await? else {
        return Ok(());
    };
    let api = Api::<Pod>::namespaced(client.clone(), &ns);
    create_pod(
        &client,
        &ns,
        // Istio's init container stand-in: `istio-iptables …` exits 0 at once.
        json!({"metadata": {"name": "init"}, "spec": {
            "initContainers": [{"name": "setup", "image": "registry.istio.io/testing/proxyv2:1.24.2",
                "args": ["istio-iptables"]}],
            "containers": [app("app", APP_V1)]}}),
    )
    .await?;
    let pod = await_ready(&api, "init").await?;
    let setup = status_of(&pod, "setup").ok_or("no setup status")?;
    let t = setup
        .state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .ok_or("setup not terminated")?;
    assert_eq!((t.exit_code, t.reason.as_deref()), (0, Some("Completed")));
    let app_started = status_of(&pod, "app")
        .and_then(|c| c.state.as_ref()?.running.as_ref()?.started_at.clone())
        .ok_or("app not running")?;
    assert!(t.finished_at.as_ref().is_some_and(|f| f.0 <= app_started.0));
    assert!(is_true(&pod, "Initialized"));
    Ok(())
}

async fn failure_modes_show_kubelet_reasons(kind: Kind) -> TestResult {
    let Some((client, ns)) = setup(kind, "failures").await? else {
        return Ok(());
    };
    let api = Api::<Pod>::namespaced(client.clone(), &ns);
    let single = |name: &str, image: &str| json!({"metadata": {"name": name}, "spec": {"containers": [app("app", image)]}});
    // A tag that exists nowhere: the loopback registry answers 404 on a real node.
    create_pod(
        &client,
        &ns,
        single("pull", "registry.inplace.test/testapp:2.0-fail-pull"),
    )
    .await?;
    create_pod(
        &client,
        &ns,
        single("crash", "registry.inplace.test/testapp:2.0-crashloop"),
    )
    .await?;
    let mut probed = app("probed", APP_V1);
    probed["env"] = json!([{"name": "TESTAPP_LISTEN", "value": "8081"}]);
    probed["readinessProbe"]["httpGet"]["port"] = json!(8081);
    create_pod(
        &client,
        &ns,
        json!({"metadata": {"name": "never"}, "spec": {"containers": [
            app("app", "registry.inplace.test/testapp:2.0-never-ready"),
            probed,
        ]}}),
    )
    .await?;

    wait_for(&api, "pull", "pod pull waiting ErrImagePull", |p: &Pod| {
        waiting_reason(p, "app").as_deref() == Some("ErrImagePull")
    })
    .await?;
    wait_for(
        &api,
        "pull",
        "pod pull waiting ImagePullBackOff",
        |p: &Pod| waiting_reason(p, "app").as_deref() == Some("ImagePullBackOff"),
    )
    .await?;

    // A real kubelet's first back-off is 10 s: one restart is enough to show the cycle.
    let crash = wait_for(
        &api,
        "crash",
        "pod crash in CrashLoopBackOff after a restart",
        |p: &Pod| {
            waiting_reason(p, "app").as_deref() == Some("CrashLoopBackOff")
                && status_of(p, "app").is_some_and(|c| c.restart_count >= 1)
        },
    )
    .await?;
    let last = status_of(&crash, "app")
        .and_then(|c| c.last_state.as_ref()?.terminated.clone())
        .ok_or("no lastState")?;
    assert_eq!((last.exit_code, last.reason.as_deref()), (1, Some("Error")));
    assert!(!is_true(&crash, "Ready"));

    // Both containers started together; once the probed one is ready (after the readiness
    // delay), the never-ready one has had every chance and must still be unready.
    let never = wait_for(
        &api,
        "never",
        "container probed ready in pod never",
        |p: &Pod| status_of(p, "probed").is_some_and(|c| c.ready),
    )
    .await?;
    let app = status_of(&never, "app").ok_or("no app status")?;
    assert!(
        app.state
            .as_ref()
            .and_then(|s| s.running.as_ref())
            .is_some(),
        "never-ready runs"
    );
    assert!(!app.ready);
    assert!(!is_true(&never, "Ready"));
    Ok(())
}

async fn image_patch_to_a_failing_image_and_back(kind: Kind) -> TestResult {
    let Some((client, ns)) = setup(kind, "rollback").await? else {
        return Ok(());
    };
    let api = Api::<Pod>::namespaced(client.clone(), &ns);
    let missing = "registry.inplace.test/testapp:2.0-fail-pull";
    create_pod(
        &client,
        &ns,
        json!({"metadata": {"name": "p"}, "spec": {"containers": [app("app", APP_V1)]}}),
    )
    .await?;
    let before = await_ready(&api, "p").await?;
    let old_id = status_of(&before, "app").and_then(|c| c.container_id.clone());
    patch_image(&api, "p", "/spec/containers/0/image", APP_V1, missing).await?;
    let failing = wait_for(
        &api,
        "p",
        "container app waiting ImagePullBackOff",
        |p: &Pod| waiting_reason(p, "app").as_deref() == Some("ImagePullBackOff"),
    )
    .await?;
    let app = status_of(&failing, "app").ok_or("no app status")?;
    assert!(!app.ready);
    let last = app
        .last_state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .ok_or("no lastState.terminated")?;
    assert_eq!(last.container_id, old_id);
    patch_image(&api, "p", "/spec/containers/0/image", missing, APP_V1).await?;
    let back = wait_for(
        &api,
        "p",
        "container app back on the old image and Ready",
        |p: &Pod| {
            status_of(p, "app")
                .is_some_and(|c| c.ready && c.image == APP_V1 && c.container_id != old_id)
                && is_true(p, "Ready")
        },
    )
    .await?;
    assert_eq!(status_of(&back, "app").map(|c| c.restart_count), Some(1));
    assert_eq!(pod_ip(&back), pod_ip(&before));
    Ok(())
}

async fn daemonset_pods_land_one_per_node(kind: Kind) -> TestResult {
    let Some((client, ns)) = setup(kind, "daemonset").await? else {
        return Ok(());
    };
    let env = kind.env()?.ok_or("no environment")?;
    let ds: DaemonSet = obj(json!({
        "metadata": {"name": "agent"},
        "spec": {"selector": {"matchLabels": {"app": "agent"}},
            "template": {"metadata": {"labels": {"app": "agent"}},
                "spec": {"containers": [{"name": "agent", "image": APP_V1}]}}},
    }));
    Api::<DaemonSet>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &ds)
        .await?;
    let want: BTreeSet<String> = env.nodes().iter().cloned().collect();
    wait_list(
        &Api::<Pod>::namespaced(client.clone(), &ns),
        watcher::Config::default().labels("app=agent"),
        &format!("one Ready agent pod on each of {want:?}"),
        |pods: &[Pod]| {
            let nodes: Vec<String> = pods
                .iter()
                .filter_map(|p| p.spec.as_ref()?.node_name.clone())
                .collect();
            pods.len() == want.len()
                && nodes.iter().cloned().collect::<BTreeSet<_>>() == want
                && pods.iter().all(|p| is_true(p, "Ready"))
        },
    )
    .await?;
    wait_for(
        &Api::<DaemonSet>::namespaced(client.clone(), &ns),
        "agent",
        "DaemonSet agent status numberReady = nodes",
        |d: &DaemonSet| {
            d.status
                .as_ref()
                .is_some_and(|s| s.number_ready as usize == want.len())
        },
    )
    .await?;
    Ok(())
}

async fn graceful_deletion_honours_grace_period_and_finalizers(kind: Kind) -> TestResult {
    let Some((client, ns)) = setup(kind, "delete").await? else {
        return Ok(());
    };
    let api = Api::<Pod>::namespaced(client.clone(), &ns);
    // The termination delay (10 min: the simulator's annotation, the app's own drain on
    // SIGTERM) is far longer than the grace period (1 s) and the wait limit: the pod only
    // terminates in time if the grace period bounds it.
    let mut slow = app("app", APP_V1);
    slow["env"] = json!([{"name": "TESTAPP_TERM_DELAY_MS", "value": "600000"}]);
    create_pod(
        &client,
        &ns,
        json!({"metadata": {"name": "held", "finalizers": ["testenv.inplace-upgrade.io/hold"],
                "annotations": {"sim.inplace-upgrade.io/termination-delay-ms": "600000"}},
            "spec": {"terminationGracePeriodSeconds": 1, "containers": [slow]}}),
    )
    .await?;
    let before = await_ready(&api, "held").await?;
    api.delete("held", &DeleteParams::default()).await?;
    let stopped = wait_for(
        &api,
        "held",
        "pod held terminated and deleted with grace 0 by the kubelet",
        |p: &Pod| {
            status_of(p, "app")
                .is_some_and(|c| c.state.as_ref().is_some_and(|s| s.terminated.is_some()))
                && p.metadata.deletion_grace_period_seconds == Some(0)
        },
    )
    .await?;
    assert!(!is_true(&stopped, "Ready"));
    // The grace period ran out before the app's drain: SIGKILL, so the pod failed.
    let t = status_of(&stopped, "app")
        .and_then(|c| c.state.as_ref()?.terminated.clone())
        .ok_or("app not terminated")?;
    assert_eq!((t.exit_code, t.reason.as_deref()), (137, Some("Error")));
    assert_eq!(
        stopped.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Failed")
    );
    assert_eq!(stopped.metadata.uid, before.metadata.uid);
    // The finalizer keeps the object; removing it lets the API server delete it.
    api.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await?;
    wait_deleted(
        &api,
        "held",
        "pod held gone after its finalizer was removed",
    )
    .await?;
    Ok(())
}

async fn ready_transition_time_is_stable_across_unrelated_status_writes(kind: Kind) -> TestResult {
    let Some((client, ns)) = setup(kind, "ltt").await? else {
        return Ok(());
    };
    let api = Api::<Pod>::namespaced(client.clone(), &ns);
    create_pod(
        &client,
        &ns,
        json!({"metadata": {"name": "p"}, "spec": {"readinessGates": [{"conditionType": GATE}],
            "containers": [app("app", APP_V1)]}}),
    )
    .await?;
    wait_for(&api, "p", "pod p ContainersReady", |p: &Pod| {
        is_true(p, "ContainersReady")
    })
    .await?;
    set_gate(&api, "p", "True").await?;
    let ready = await_ready(&api, "p").await?;
    let (_, since) = condition(&ready, "Ready").ok_or("no Ready condition")?;
    // Timestamps have second precision: let a second pass so a rewrite would show.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;

    // Another writer's condition, then a spec change the kubelet acknowledges with
    // status.observedGeneration: the kubelet has recomputed status after both.
    let other =
        json!({"status": {"conditions": [{"type": "example.com/other", "status": "True"}]}});
    api.patch_status("p", &PatchParams::default(), &Patch::Strategic(&other))
        .await?;
    let bumped = api
        .patch(
            "p",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"activeDeadlineSeconds": 86400}})),
        )
        .await?;
    let generation = bumped
        .metadata
        .generation
        .ok_or("pods have no metadata.generation")?;
    let after = wait_for(
        &api,
        "p",
        "kubelet status for the new generation",
        |p: &Pod| p.status.as_ref().and_then(|s| s.observed_generation) == Some(generation),
    )
    .await?;
    assert_eq!(condition(&after, "Ready"), Some(("True".to_owned(), since)));
    assert_eq!(
        condition(&after, "example.com/other")
            .map(|c| c.0)
            .as_deref(),
        Some("True")
    );
    assert_eq!(
        condition(&after, GATE).map(|c| c.0).as_deref(),
        Some("True")
    );
    Ok(())
}

async fn retag_to_the_same_digest_still_restarts_the_container(kind: Kind) -> TestResult {
    let Some((client, ns)) = setup(kind, "retag").await? else {
        return Ok(());
    };
    let api = Api::<Pod>::namespaced(client.clone(), &ns);
    create_pod(
        &client,
        &ns,
        json!({"metadata": {"name": "p"}, "spec": {"containers": [app("app", RETAG_A)]}}),
    )
    .await?;
    let before = await_ready(&api, "p").await?;
    let old = status_of(&before, "app").ok_or("no app status")?.clone();
    patch_image(&api, "p", "/spec/containers/0/image", RETAG_A, RETAG_B).await?;
    let after = wait_for(
        &api,
        "p",
        "app restarted on the retagged image and Ready",
        |p: &Pod| {
            status_of(p, "app").is_some_and(|c| c.container_id != old.container_id && c.ready)
                && is_true(p, "Ready")
        },
    )
    .await?;
    let app = status_of(&after, "app").ok_or("no app status")?;
    assert_eq!(app.image_id, old.image_id, "a retag keeps the digest");
    // containerd reports the first name it knows for the image the container runs, which
    // after a same-digest retag is the old tag: `image` is not the spec string (the
    // simulator reports it the same way since OpenKruise's retag hang showed it matters).
    assert_eq!(app.image, RETAG_A, "{kind:?}");
    assert_eq!(app.restart_count, 1);
    Ok(())
}

async fn statefulset_and_pod_disruption_budget_controllers_run(kind: Kind) -> TestResult {
    let Some((client, ns)) = setup(kind, "sts").await? else {
        return Ok(());
    };
    let text = std::fs::read_to_string(fixture("statefulset.yaml.injected")?)?;
    let mut sts: Option<Value> = None;
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let v: Value = serde::Deserialize::deserialize(doc)?;
        if v["kind"] == "StatefulSet" {
            sts = Some(v);
            break;
        }
    }
    let sts: k8s_openapi::api::apps::v1::StatefulSet =
        obj(sts.ok_or("the fixture has no StatefulSet")?);
    let name = sts.name_any();
    let replicas = sts.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let selector = sts
        .spec
        .as_ref()
        .and_then(|s| s.selector.match_labels.clone())
        .ok_or("no selector")?;
    Api::<k8s_openapi::api::apps::v1::StatefulSet>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &sts)
        .await?;
    let pdb: k8s_openapi::api::policy::v1::PodDisruptionBudget = obj(json!({
        "metadata": {"name": name},
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector}},
    }));
    Api::<k8s_openapi::api::policy::v1::PodDisruptionBudget>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &pdb)
        .await?;
    wait_for(
        &Api::<k8s_openapi::api::apps::v1::StatefulSet>::namespaced(client.clone(), &ns),
        &name,
        &format!("StatefulSet {name} with {replicas} ready replicas"),
        |s: &k8s_openapi::api::apps::v1::StatefulSet| {
            s.status.as_ref().and_then(|st| st.ready_replicas) == Some(replicas)
        },
    )
    .await?;
    wait_for(
        &Api::<k8s_openapi::api::policy::v1::PodDisruptionBudget>::namespaced(client.clone(), &ns),
        &name,
        &format!("PodDisruptionBudget {name} counting {replicas} healthy pods"),
        |p: &k8s_openapi::api::policy::v1::PodDisruptionBudget| {
            p.status
                .as_ref()
                .is_some_and(|s| s.current_healthy == replicas && s.disruptions_allowed == 1)
        },
    )
    .await?;
    Ok(())
}

async fn a_pod_no_node_fits_is_unschedulable(kind: Kind) -> TestResult {
    let Some((client, ns)) = setup(kind, "unschedulable").await? else {
        return Ok(());
    };
    let api = Api::<Pod>::namespaced(client.clone(), &ns);
    create_pod(
        &client,
        &ns,
        json!({"metadata": {"name": "nowhere"}, "spec": {"nodeSelector": {"example.com/gpu": "true"},
            "containers": [app("app", APP_V1)]}}),
    )
    .await?;
    let pod = wait_for(
        &api,
        "nowhere",
        "pod nowhere PodScheduled=False",
        |p: &Pod| condition(p, "PodScheduled").is_some_and(|(s, _)| s == "False"),
    )
    .await?;
    assert!(
        pod.spec
            .as_ref()
            .and_then(|s| s.node_name.as_ref())
            .is_none()
    );
    let reason = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| {
            cs.iter()
                .find(|c| c.type_ == "PodScheduled")
                .and_then(|c| c.reason.clone())
        });
    assert_eq!(reason.as_deref(), Some("Unschedulable"));
    Ok(())
}

/// A pod with a native sidecar `istio-proxy` on `proxy` and an app container.
async fn sidecar_pod(
    client: &Client,
    ns: &str,
    name: &str,
    proxy: &str,
) -> Result<Pod, Box<dyn std::error::Error>> {
    create_pod(
        client,
        ns,
        json!({"metadata": {"name": name}, "spec": {
            // As Istio's injector runs it: `pilot-agent proxy sidecar …` (the test image's
            // proxy personality; without arguments a real container exits at once).
            "initContainers": [{"name": "istio-proxy", "image": proxy, "restartPolicy": "Always",
                "args": ["proxy", "sidecar"]}],
            "containers": [{"name": "app", "image": "fake.docker.io/google-samples/hello-go-gke:1.0"}],
        }}),
    )
    .await?;
    Ok(await_ready(&Api::<Pod>::namespaced(client.clone(), ns), name).await?)
}

/// kubelet (1.35, DESIGN §10): a native sidecar whose old process exited 0 on SIGTERM, patched
/// to an image that cannot be pulled, keeps `terminated` (Completed, old containerID) with no
/// waiting reason — kubelet treats an init container that exited 0 as done — while the pod's
/// Events for that container say `Failed` and `BackOff`.
async fn a_native_sidecar_that_exited_0_shows_no_waiting_reason_but_events(
    kind: Kind,
) -> TestResult {
    let Some((client, ns)) = setup(kind, "sidecar-exit0").await? else {
        return Ok(());
    };
    let api = Api::<Pod>::namespaced(client.clone(), &ns);
    let old = "registry.istio.io/testing/proxyv2:latest";
    let before = sidecar_pod(&client, &ns, "s", old).await?;
    let old_id = status_of(&before, "istio-proxy").and_then(|c| c.container_id.clone());
    let bad = "registry.istio.io/testing/proxyv2:1.24.2-fail-pull";
    patch_image(&api, "s", "/spec/initContainers/0/image", old, bad).await?;
    wait_list(
        &Api::<Event>::namespaced(client.clone(), &ns),
        watcher::Config::default().fields("involvedObject.name=s,type=Warning"),
        "Failed (ErrImagePull) and BackOff Events for spec.initContainers{istio-proxy}",
        |evs: &[Event]| {
            let of_proxy = |reason: &str| {
                evs.iter().any(|e| {
                    e.reason.as_deref() == Some(reason)
                        && e.involved_object.field_path.as_deref()
                            == Some("spec.initContainers{istio-proxy}")
                })
            };
            of_proxy("Failed") && of_proxy("BackOff")
        },
    )
    .await?;
    let pod = api.get("s").await?;
    let proxy = status_of(&pod, "istio-proxy").ok_or("no istio-proxy status")?;
    let state = proxy.state.as_ref().ok_or("no state")?;
    assert!(state.waiting.is_none(), "no waiting reason: {state:?}");
    let t = state.terminated.as_ref().ok_or("not terminated")?;
    assert_eq!((t.exit_code, t.reason.as_deref()), (0, Some("Completed")));
    assert_eq!(t.container_id, old_id, "the old container");
    assert!(!proxy.ready && proxy.started == Some(false));
    assert!(!is_true(&pod, "Ready"));
    Ok(())
}

/// The same with an old process that SIGTERM killed (exit 143): the waiting reasons show, and
/// cycle through CrashLoopBackOff (the killed container's exit feeds the restart back-off).
async fn a_native_sidecar_that_exited_143_cycles_through_the_waiting_reasons(
    kind: Kind,
) -> TestResult {
    let Some((client, ns)) = setup(kind, "sidecar-exit143").await? else {
        return Ok(());
    };
    let api = Api::<Pod>::namespaced(client.clone(), &ns);
    let old = "registry.istio.io/testing/proxyv2:latest-exit143";
    sidecar_pod(&client, &ns, "s", old).await?;
    let bad = "registry.istio.io/testing/proxyv2:1.24.2-fail-pull";
    patch_image(&api, "s", "/spec/initContainers/0/image", old, bad).await?;
    // All three show; the order is the interplay of kubelet's pull and crash back-offs. On the
    // real kubelet here ErrImagePull and ImagePullBackOff alternate from the start and the
    // first CrashLoopBackOff shows after about 90 s (the simulator's cycle is quicker), so the
    // watch may take two wait limits.
    let want = ["ErrImagePull", "CrashLoopBackOff", "ImagePullBackOff"];
    let seen = std::sync::Mutex::new(BTreeSet::new());
    let all_seen = |p: &Pod| {
        let Ok(mut seen) = seen.lock() else {
            return false;
        };
        if let Some(r) = waiting_reason(p, "istio-proxy") {
            seen.insert(r);
        }
        want.iter().all(|w| seen.contains(*w))
    };
    let what = "istio-proxy waiting ErrImagePull, CrashLoopBackOff and ImagePullBackOff";
    if wait_for(&api, "s", what, all_seen).await.is_err() {
        wait_for(&api, "s", what, all_seen).await?;
    }
    let pod = api.get("s").await?;
    let proxy = status_of(&pod, "istio-proxy").ok_or("no istio-proxy status")?;
    let last = proxy
        .last_state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .ok_or("no lastState.terminated")?;
    assert_eq!(
        (last.exit_code, last.reason.as_deref()),
        (143, Some("Error"))
    );
    Ok(())
}

/// Tests only a real kubelet can answer.
mod real_kubelet {
    use super::*;
    use k8s_openapi::jiff::Timestamp;
    use kube::api::LogParams;

    /// A `key=value` field of a testapp log line.
    fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{key}=")))
    }

    /// `(timestamp, line)` of each line of the previous instance's log.
    async fn previous_log(
        api: &Api<Pod>,
        pod: &str,
        container: &str,
    ) -> Result<Vec<(Timestamp, String)>, Box<dyn std::error::Error>> {
        let params = LogParams {
            container: Some(container.into()),
            previous: true,
            timestamps: true,
            ..LogParams::default()
        };
        let text = api.logs(pod, &params).await?;
        Ok(text
            .lines()
            .filter_map(|l| {
                let (ts, rest) = l.split_once(' ')?;
                Some((ts.parse().ok()?, rest.to_owned()))
            })
            .collect())
    }

    /// `kubectl exec` and `kubectl logs` reach the real kubelet through the API server (which
    /// dials the node's InternalIP with its client certificate; the kubelet authorizes it).
    #[tokio::test]
    async fn exec_and_logs_go_through_the_api_server() -> TestResult {
        let Some((client, ns)) = setup(Kind::Real, "exec").await? else {
            return Ok(());
        };
        let api = Api::<Pod>::namespaced(client.clone(), &ns);
        create_pod(
            &client,
            &ns,
            json!({"metadata": {"name": "p"}, "spec": {"containers": [app("app", APP_V1)]}}),
        )
        .await?;
        await_ready(&api, "p").await?;
        let env = TestEnv::shared_real()?.ok_or("no real environment")?;
        let out = env
            .kubectl()
            .args([
                "-n",
                &ns,
                "exec",
                "p",
                "--",
                "/usr/local/bin/testapp",
                "hook",
                "via-exec",
            ])
            .output()?;
        assert!(
            out.status.success(),
            "kubectl exec: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let log = api.logs("p", &LogParams::default()).await?;
        assert!(
            log.contains("event=start") && log.contains("via-exec"),
            "the exec'd hook wrote into the container's log: {log}"
        );
        Ok(())
    }

    /// Does kubelet run a container's preStop hook when an image change restarts it, and with
    /// which grace period? (DESIGN §9: it decides whether Istio's drain runs on an in-place
    /// proxy restart.) One pod, grace period 6 s, four containers patched at once:
    /// - a native sidecar and a regular container with an exec preStop hook: the hook runs
    ///   (its line is in the old instance's log), then SIGTERM;
    /// - a container that ignores SIGTERM for 10 min after an exec hook: SIGKILL (137) when
    ///   the pod's grace period has passed;
    /// - one with a 3 s `sleep` preStop that ignores SIGTERM: SIGTERM after the sleep, SIGKILL
    ///   when the grace period counted from the hook's start has passed (6 s, not 3 + 6).
    ///
    /// The measured intervals are printed (kubelet's log timestamps; `finishedAt` has second
    /// precision); the assertions are on order and exit codes only.
    #[tokio::test]
    async fn an_image_change_restart_runs_the_prestop_hook_within_the_grace_period() -> TestResult {
        let Some((client, ns)) = setup(Kind::Real, "prestop").await? else {
            return Ok(());
        };
        let api = Api::<Pod>::namespaced(client.clone(), &ns);
        let hook = |n: &str| json!({"preStop": {"exec": {"command": ["/usr/local/bin/testapp", "hook", format!("prestop-{n}")]}}});
        let env = |port: u16, drain_ms: u64| {
            json!([{"name": "TESTAPP_LISTEN", "value": port.to_string()},
                   {"name": "TESTAPP_TERM_DELAY_MS", "value": drain_ms.to_string()}])
        };
        create_pod(
            &client,
            &ns,
            json!({"metadata": {"name": "hooks"}, "spec": {
            "terminationGracePeriodSeconds": 6,
            "initContainers": [{"name": "proxy", "image": APP_V1, "restartPolicy": "Always",
                "env": env(9090, 0), "lifecycle": hook("proxy")}],
            "containers": [
                {"name": "app", "image": APP_V1, "env": env(8080, 0), "lifecycle": hook("app")},
                {"name": "stubborn", "image": APP_V1, "env": env(8081, 600_000),
                    "lifecycle": hook("stubborn")},
                {"name": "sleeper", "image": APP_V1, "env": env(8082, 600_000),
                    "lifecycle": {"preStop": {"sleep": {"seconds": 3}}}},
            ]}}),
        )
        .await?;
        await_ready(&api, "hooks").await?;
        let patch: json_patch::Patch = obj(json!([
            {"op": "replace", "path": "/spec/initContainers/0/image", "value": APP_V2},
            {"op": "replace", "path": "/spec/containers/0/image", "value": APP_V2},
            {"op": "replace", "path": "/spec/containers/1/image", "value": APP_V2},
            {"op": "replace", "path": "/spec/containers/2/image", "value": APP_V2},
        ]));
        api.patch(
            "hooks",
            &PatchParams::default(),
            &Patch::<Value>::Json(patch),
        )
        .await?;
        let after = wait_for(
            &api,
            "hooks",
            "all four containers restarted on the new image",
            |p: &Pod| {
                ["proxy", "app", "stubborn", "sleeper"].iter().all(|c| {
                    status_of(p, c).is_some_and(|s| {
                        s.restart_count == 1
                            && s.state.as_ref().is_some_and(|st| st.running.is_some())
                    })
                })
            },
        )
        .await?;
        let last = |c: &str| {
            status_of(&after, c)
                .and_then(|s| s.last_state.as_ref()?.terminated.clone())
                .ok_or(format!("{c} has no lastState.terminated"))
        };
        for c in ["proxy", "app", "stubborn"] {
            let log = previous_log(&api, "hooks", c).await?;
            let hook_at = log
                .iter()
                .position(|(_, l)| l.contains("event=hook") && l.contains(&format!("prestop-{c}")));
            let term_at = log.iter().position(|(_, l)| l.contains("event=sigterm"));
            assert!(
                matches!((hook_at, term_at), (Some(h), Some(t)) if h < t),
                "{c}: the preStop hook must run before SIGTERM; old log: {log:#?}"
            );
        }
        // Exits on SIGTERM (143) once the hook is done.
        assert_eq!(last("proxy")?.exit_code, 143);
        assert_eq!(last("app")?.exit_code, 143);
        // Ignores SIGTERM: killed when the grace period is over, not after its 10 min drain.
        let stubborn = last("stubborn")?;
        assert_eq!(stubborn.exit_code, 137);
        let sleeper = last("sleeper")?;
        assert_eq!(sleeper.exit_code, 137);
        let sleeper_log = previous_log(&api, "hooks", "sleeper").await?;
        let sleeper_term = sleeper_log
            .iter()
            .find(|(_, l)| l.contains("event=sigterm"))
            .map(|(t, _)| *t)
            .ok_or("the sleeper never got SIGTERM")?;
        assert_eq!(
            sleeper_log
                .iter()
                .find(|(_, l)| l.contains("event=sigterm"))
                .and_then(|(_, l)| field(l, "signal")),
            Some("SIGTERM")
        );
        let stubborn_log = previous_log(&api, "hooks", "stubborn").await?;
        let stubborn_hook = stubborn_log
            .iter()
            .find(|(_, l)| l.contains("event=hook"))
            .map(|(t, _)| *t)
            .ok_or("no hook line")?;
        let secs =
            |later: Timestamp, earlier: Timestamp| later.duration_since(earlier).as_secs_f64();
        let stubborn_end = stubborn.finished_at.ok_or("no finishedAt")?.0;
        let sleeper_end = sleeper.finished_at.ok_or("no finishedAt")?.0;
        // kubelet kills the changed containers one after another: the sleeper's hook starts
        // when the stubborn one is gone.
        println!(
            "preStop measured (grace 6 s): stubborn hook -> SIGKILL {:.1} s; sleeper: hook (3 s sleep) -> SIGTERM {:.1} s, SIGTERM -> SIGKILL {:.1} s (finishedAt has second precision)",
            secs(stubborn_end, stubborn_hook),
            secs(sleeper_term, stubborn_end),
            secs(sleeper_end, sleeper_term),
        );
        // kubelet's own account of the grace period left for SIGTERM after each hook.
        let env = TestEnv::shared_real()?.ok_or("no real environment")?;
        let log = std::fs::read_to_string(env.dir().join("logs/real-node-0-kubelet.log"))?;
        for line in log.lines().filter(|l| {
            l.contains("Killing container with a grace period")
                && l.contains(&format!("pod=\"{ns}/hooks\""))
        }) {
            println!(
                "kubelet: {} gracePeriod={}",
                field(line, "containerName").unwrap_or_default(),
                field(line, "gracePeriod").unwrap_or_default()
            );
        }
        Ok(())
    }
}
