//! Restarting kube-apiserver in place (same flags, port and etcd): objects survive, and the
//! simulated kubelet's watch reconnects on its own, so pods created or patched after the
//! restart are still run. Its own environment: a restart would disturb other tests.

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use testenv::{Options, TestEnv, wait_for};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn pod(name: &str, image: &str) -> Result<Pod, serde_json::Error> {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "app", "image": image}]},
    }))
}

fn ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn container_id(p: &Pod) -> Option<String> {
    p.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .first()?
        .container_id
        .clone()
}

#[tokio::test]
async fn a_restarted_apiserver_keeps_objects_and_the_kubelet_reconnects() -> TestResult {
    let env = TestEnv::start(Options::default()).await?;
    let ns = env.namespace("restart").await?;
    let client = env.client()?;
    let pods = Api::<Pod>::namespaced(client.clone(), &ns);
    pods.create(&PostParams::default(), &pod("before", "nginx:1")?)
        .await?;
    let before = wait_for(&pods, "before", "pod before Ready", ready).await?;

    for kill in [true, false] {
        let took = env.restart_apiserver(kill).await?;
        println!("kube-apiserver restart (SIGKILL: {kill}) ready again after {took:?}");
        // A client built before the restart still works: same port, same certificates.
        let again = pods.get("before").await?;
        assert_eq!(again.uid(), before.uid(), "the pod survived the restart");
    }

    // The kubelet's watch reconnected: it runs a new pod and restarts a patched container.
    pods.create(&PostParams::default(), &pod("after", "nginx:1")?)
        .await?;
    wait_for(&pods, "after", "pod after Ready", ready).await?;
    let old_id = container_id(&before).ok_or("pod before has no containerID")?;
    let patch: Value = json!({"spec": {"containers": [{"name": "app", "image": "nginx:2"}]}});
    pods.patch("before", &PatchParams::default(), &Patch::Strategic(&patch))
        .await?;
    wait_for(
        &pods,
        "before",
        "pod before restarted on nginx:2",
        |p: &Pod| ready(p) && container_id(p).is_some_and(|id| id != old_id),
    )
    .await?;
    Ok(())
}
