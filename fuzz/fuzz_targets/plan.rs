//! The planner on arbitrary pods: a workload of up to eight pods built from the fuzzer's
//! choices (images old/new/failing/unparsable, container states and waiting reasons, readiness
//! gate conditions, upgrade records in every phase or garbage, terminating pods) and a policy.
//! Pods are consistent with kubelet's rule (Ready = every container ready and the gate True),
//! the rest is arbitrary.
//!
//! Pods may carry Istio's `sidecar.istio.io/status` (the injector's record, or garbage) and
//! Istio labels, and the Namespace Istio labels, for the revision guard.
//!
//! Invariants: no panic; the same input gives the same plan (level-triggered); at most one
//! step per pod, ordered by name, only for pods of the input; a paused workload starts no
//! upgrade; starting upgrades never takes more pods out of service than `maxUnavailable`; a
//! `Completed` verdict comes with no upgrade or rollback step; a pod the revision guard holds
//! back gets no step that starts an upgrade, and one whose record is unreadable is held back;
//! with pre-pull on, a pod starts only once its pending images are pulled onto its node, and
//! never with an image whose patch the API server refused.
#![no_main]

use std::collections::{BTreeMap, BTreeSet};

use inplace_upgrade::annotation::Target;
use inplace_upgrade::istio;
use inplace_upgrade::plan::{Action, PlanInput, PodEvents, Verdict, plan};
use inplace_upgrade::policy::InPlaceUpgradePolicySpec;
use inplace_upgrade::prepull::{self, PullKey, PullState, Pulls};
use inplace_upgrade::state::PodUpgradeState;
use inplace_upgrade::{READINESS_GATE, STATE_ANNOTATION};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};

const IMAGES: &[&str] = &[
    "docker.io/istio/proxyv2:1.23.0",
    "docker.io/istio/proxyv2:1.24.2",
    "proxyv2:1.24.2",
    "docker.io/istio/proxyv2:fail-pull",
    "docker.io/istio/proxyv2@sha256:0000000000000000000000000000000000000000000000000000000000000000",
    "nginx:1",
    "nginx:2",
    "NOT/valid:image",
];
const ANNOTATIONS: &[&str] = &[
    "istio-proxy=proxyv2:1.24.2",
    "istio-proxy=:1.24.2",
    "istio-proxy=docker.io/istio/proxyv2:fail-pull",
    "istio-proxy=proxyv2:1.24.2,app=nginx:2",
    "app=nginx:2",
    "istio-proxy=@sha256:0000000000000000000000000000000000000000000000000000000000000000",
    "sidecar=proxyv2:1.24.2",
];
const WAITING: &[&str] = &[
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "CrashLoopBackOff",
    "CreateContainerError",
    "ContainerCreating",
    "PodInitializing",
];
const PHASES: &[&str] = &[
    "Patched",
    "RollingBack",
    "Succeeded",
    "RolledBack",
    "Failed",
    "Superseded",
];
const TIMES: &[&str] = &[
    "2026-01-01T00:00:00Z",
    "2026-01-01T00:05:00Z",
    "2026-01-01T00:09:59Z",
    "2026-01-01T00:10:00Z",
    "2026-01-01T00:20:00Z",
];
const NOW: &str = "2026-01-01T00:10:00Z";
const ISTIO_STATUS: &[&str] = &[
    r#"{"initContainers":["istio-init","istio-proxy"],"containers":null,"volumes":["istio-envoy"],"imagePullSecrets":null,"revision":"default"}"#,
    r#"{"initContainers":["istio-init"],"containers":["istio-proxy"],"revision":"canary"}"#,
    r#"{"initContainers":null,"containers":["istio-proxy","app"],"revision":"1-25-0"}"#,
    r#"{"containers":["istio-proxy"]}"#,
    r#"{"containers":["istio-proxy"],"revision":""}"#,
    r#"{"containers":"istio-proxy","revision":"default"}"#,
];
const ISTIO_LABELS: &[(&str, &str)] = &[
    ("istio.io/rev", "default"),
    ("istio.io/rev", "canary"),
    ("istio-injection", "enabled"),
    ("istio-injection", "disabled"),
    ("sidecar.istio.io/inject", "true"),
    ("sidecar.istio.io/inject", "false"),
    ("app", "x"),
];

fn istio_labels(u: &mut Unstructured<'_>) -> Result<BTreeMap<String, String>> {
    let mut labels = BTreeMap::new();
    for _ in 0..u.int_in_range(0..=2)? {
        let (k, v) = *u.choose(ISTIO_LABELS)?;
        labels.insert(k.to_string(), v.to_string());
    }
    Ok(labels)
}

fn pick<'a>(u: &mut Unstructured<'_>, from: &[&'a str]) -> Result<&'a str> {
    u.choose(from).copied()
}

fn container_status(u: &mut Unstructured<'_>, name: &str, image: &str) -> Result<(Value, bool)> {
    let ready = u.arbitrary::<bool>()?;
    let state = match u.int_in_range(0..=2)? {
        0 => json!({"running": {"startedAt": pick(u, TIMES)?}}),
        1 => json!({"waiting": {"reason": pick(u, WAITING)?}}),
        _ => json!({"terminated": {"exitCode": u.int_in_range(0..=2)?, "reason": "Error"}}),
    };
    let ready = ready && state.get("running").is_some();
    let shown = if u.arbitrary::<bool>()? {
        image
    } else {
        pick(u, IMAGES)?
    };
    Ok((
        json!({
            "name": name,
            "image": shown,
            "imageID": "",
            "containerID": format!("containerd://{}", u.int_in_range(0..=5u8)?),
            "restartCount": u.int_in_range(0..=3)?,
            "ready": ready,
            "started": ready,
            "state": state,
        }),
        ready,
    ))
}

fn state_record(u: &mut Unstructured<'_>, sidecar: bool) -> Result<String> {
    if u.ratio(1, 8)? {
        let len = u.int_in_range(0..=24)?;
        return Ok(String::from_utf8_lossy(u.bytes(len)?).into_owned());
    }
    Ok(json!({
        "version": u.int_in_range(0..=2)?,
        "phase": pick(u, PHASES)?,
        "patchedAt": pick(u, TIMES)?,
        "containers": [{
            "name": "istio-proxy",
            "kind": if sidecar { "nativeSidecar" } else { "container" },
            "index": if sidecar { 0 } else { 1 },
            "previousImage": pick(u, IMAGES)?,
            "targetImage": pick(u, IMAGES)?,
            "containerId": format!("containerd://{}", u.int_in_range(0..=5u8)?),
            "restartCount": u.int_in_range(0..=3)?,
            "wasRunning": u.arbitrary::<bool>()?,
        }],
        "readinessGate": u.arbitrary::<bool>()?,
    })
    .to_string())
}

fn pod(u: &mut Unstructured<'_>, i: usize) -> Result<Pod> {
    let sidecar = u.arbitrary::<bool>()?;
    let gated = u.arbitrary::<bool>()?;
    let proxy_image = pick(u, IMAGES)?;
    let app_image = pick(u, &["nginx:1", "nginx:2"])?;
    let proxy = json!({"name": "istio-proxy", "image": proxy_image});
    let app = json!({"name": "app", "image": app_image});
    let mut spec = if sidecar {
        let mut p = proxy.clone();
        p["restartPolicy"] = json!("Always");
        json!({"initContainers": [p], "containers": [app]})
    } else {
        json!({"containers": [app, proxy]})
    };
    if gated {
        spec["readinessGates"] = json!([{"conditionType": READINESS_GATE}]);
    }
    let (proxy_status, proxy_ready) = container_status(u, "istio-proxy", proxy_image)?;
    let (app_status, app_ready) = container_status(u, "app", app_image)?;
    let mut conditions = Vec::new();
    let mut gate_true = !gated;
    if u.arbitrary::<bool>()? {
        let status = u.arbitrary::<bool>()?;
        gate_true |= status;
        let reason = pick(u, &["Draining", "Serving", "NotUpgrading", ""])?;
        conditions.push(json!({
            "type": READINESS_GATE,
            "status": if status { "True" } else { "False" },
            "reason": reason,
            "lastTransitionTime": pick(u, TIMES)?,
        }));
    }
    let ready = proxy_ready && app_ready && gate_true;
    conditions.push(json!({"type": "Ready", "status": if ready { "True" } else { "False" }}));
    let mut status = json!({"podIP": format!("10.0.0.{i}"), "conditions": conditions});
    if sidecar {
        status["initContainerStatuses"] = json!([proxy_status]);
        status["containerStatuses"] = json!([app_status]);
    } else {
        status["containerStatuses"] = json!([app_status, proxy_status]);
    }
    let node = pick(u, &["node-a", "node-b", ""])?;
    if !node.is_empty() {
        spec["nodeName"] = json!(node);
    }
    let mut metadata = json!({"name": format!("pod-{i}"), "uid": format!("uid-{i}"),
                              "labels": istio_labels(u)?, "annotations": {}});
    if u.ratio(1, 3)? {
        metadata["annotations"][STATE_ANNOTATION] = json!(state_record(u, sidecar)?);
    }
    if u.ratio(1, 2)? {
        let record = if u.ratio(1, 6)? {
            let len = u.int_in_range(0..=32)?;
            String::from_utf8_lossy(u.bytes(len)?).into_owned()
        } else {
            pick(u, ISTIO_STATUS)?.to_string()
        };
        metadata["annotations"][istio::STATUS_ANNOTATION] = json!(record);
    }
    if u.ratio(1, 10)? {
        metadata["deletionTimestamp"] = json!(pick(u, TIMES)?);
    }
    Ok(
        serde_json::from_value(json!({"metadata": metadata, "spec": spec, "status": status}))
            .unwrap_or_default(),
    )
}

/// Name, Ready, gate condition, upgrade record phase, spec image and container readiness.
fn summary(p: &Pod) -> String {
    let conditions = p
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let condition = |t: &str| {
        conditions
            .iter()
            .find(|c| c.type_ == t)
            .map(|c| format!("{}/{}", c.status, c.reason.clone().unwrap_or_default()))
    };
    let containers: Vec<String> = p
        .status
        .as_ref()
        .map(|s| {
            s.container_statuses
                .iter()
                .chain(s.init_container_statuses.iter())
                .flatten()
                .map(|c| format!("{} ready={}", c.name, c.ready))
                .collect()
        })
        .unwrap_or_default();
    let images: Vec<String> = p
        .spec
        .as_ref()
        .map(|s| {
            s.containers
                .iter()
                .chain(s.init_containers.iter().flatten())
                .map(|c| format!("{}={}", c.name, c.image.clone().unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default();
    format!(
        "{} ready={:?} gate={:?} terminating={} state={:?} images={images:?} containers={containers:?}",
        p.metadata.name.clone().unwrap_or_default(),
        condition("Ready"),
        condition(READINESS_GATE),
        p.metadata.deletion_timestamp.is_some(),
        PodUpgradeState::from_pod(p)
            .map(|s| s.map(|s| s.phase))
            .map_err(|e| e.to_string()),
    )
}

/// What is known of the pulls of the pods' pending target images, on their nodes and as a
/// refusal of the patch (any state, or nothing).
fn pulls(u: &mut Unstructured<'_>, pods: &[Pod], targets: &[Target]) -> Result<Pulls> {
    let mut pulls = Pulls::new();
    for p in pods {
        let Some(spec) = p.spec.as_ref() else {
            continue;
        };
        let Ok(resolved) = inplace_upgrade::target::resolve(spec, targets) else {
            continue;
        };
        let node = spec.node_name.clone().unwrap_or_default();
        for t in resolved.pending() {
            for key in [
                PullKey {
                    node: node.clone(),
                    image: t.image.clone(),
                },
                prepull::refusal_key(&t.image),
            ] {
                let failure = |reason: &str| (reason.to_string(), "fuzzed".to_string());
                let state = match u.int_in_range(0..=5)? {
                    0 => PullState::Pulling,
                    1 => PullState::Pulled,
                    2 => {
                        let (reason, message) = failure("ErrImagePull");
                        PullState::Failed { reason, message }
                    }
                    3 if u.ratio(1, 4)? => {
                        let (reason, message) = failure("Forbidden");
                        PullState::Refused { reason, message }
                    }
                    _ => continue,
                };
                pulls.insert(key, state);
            }
        }
    }
    Ok(pulls)
}

fn run(data: &[u8]) -> Result<()> {
    let mut u = Unstructured::new(data);
    let annotation = if u.ratio(1, 10)? {
        let len = u.int_in_range(0..=40)?;
        String::from_utf8_lossy(u.bytes(len)?).into_owned()
    } else {
        pick(&mut u, ANNOTATIONS)?.to_string()
    };
    let Ok(targets) = inplace_upgrade::annotation::parse(&annotation) else {
        return Ok(());
    };
    let max_unavailable = match u.int_in_range(0..=4)? {
        0 => json!("50%"),
        1 => json!("0"),
        n => json!(n - 1),
    };
    let policy: InPlaceUpgradePolicySpec = match serde_json::from_value(json!({
        "namespaceSelector": {},
        "maxUnavailable": max_unavailable,
        "onFailure": pick(&mut u, &["Rollback", "Pause"])?,
        "readyTimeoutSeconds": u.int_in_range(1..=600)?,
        "drain": {"gracePeriodSeconds": u.int_in_range(0..=30)?, "timeoutSeconds": 60,
                  "waitForEndpoints": u.arbitrary::<bool>()?},
        "allowedImages": if u.ratio(1, 4)? { json!(["docker.io/istio/**"]) } else { json!([]) },
        "prePull": {"enabled": u.arbitrary::<bool>()?},
    })) {
        Ok(p) => p,
        Err(_) => return Ok(()),
    };
    let count = u.int_in_range(0..=8)?;
    let pods = (0..count)
        .map(|i| pod(&mut u, i))
        .collect::<Result<Vec<_>>>()?;
    let drained: BTreeSet<String> = pods
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .filter(|_| u.arbitrary::<bool>().unwrap_or(false))
        .collect();
    let desired_replicas = i32::try_from(count).unwrap_or(0);
    let paused = u.ratio(1, 6)?;
    let now: Timestamp = NOW.parse().expect("a valid timestamp literal");
    let namespace_labels = istio_labels(&mut u)?;
    let guard = u.arbitrary::<bool>()?;
    let pulls = pulls(&mut u, &pods, &targets)?;
    let input = PlanInput {
        targets: &targets,
        pods: &pods,
        policy: &policy,
        desired_replicas,
        paused,
        failed_targets: &[],
        retry_since: None,
        disruption_budgets: &[],
        endpoints_drained: &drained,
        drains: &BTreeMap::new(),
        events: &PodEvents::new(),
        istio_guard: guard.then_some(&namespace_labels),
        pulls: &pulls,
        now,
    };
    let out = plan(&input);
    assert_eq!(out, plan(&input), "the same input planned twice differs");

    let names: BTreeSet<&str> = pods
        .iter()
        .filter_map(|p| p.metadata.name.as_deref())
        .collect();
    for pair in out.steps.windows(2) {
        assert!(
            pair[0].pod < pair[1].pod,
            "two steps for {} or out of order",
            pair[1].pod
        );
    }
    let find = |name: &str| {
        pods.iter()
            .find(|p| p.metadata.name.as_deref() == Some(name))
    };
    let recorded = |p: &Pod| {
        PodUpgradeState::from_pod(p)
            .ok()
            .flatten()
            .is_some_and(|s| s.phase.in_progress())
    };
    // Taken by an earlier plan: an upgrade record in progress, or our drain (the gate
    // condition False/Draining), which that plan counted against the budget.
    let in_progress = |p: &Pod| {
        let drained = p
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| {
                c.iter().any(|c| {
                    c.type_ == READINESS_GATE
                        && c.status == "False"
                        && c.reason.as_deref() == Some("Draining")
                })
            });
        drained || recorded(p)
    };
    let live = |p: &&Pod| p.metadata.deletion_timestamp.is_none();
    let ready = |p: &Pod| {
        p.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
    };
    let mut ready_started = 0usize;
    for step in &out.steps {
        assert!(
            names.contains(step.pod.as_str()),
            "a step for unknown pod {}",
            step.pod
        );
        let Some(p) = find(&step.pod) else { continue };
        if step.action.starts_upgrade() && !recorded(p) {
            // A pause undrains what was drained but not patched; it patches nothing new.
            assert!(!paused, "paused, yet {step:?}");
        }
        if step.action.starts_upgrade() && !in_progress(p) {
            assert!(
                p.metadata.deletion_timestamp.is_none(),
                "terminating pod started: {step:?}"
            );
            if ready(p) {
                ready_started += 1;
            }
        }
        if step.action.starts_upgrade() && !in_progress(p) {
            // Pre-pull before drain: a pod starts only with each pending image on its node,
            // and never with a patch the API server refused.
            let spec = p.spec.as_ref();
            let pending: Vec<String> = spec
                .and_then(|spec| inplace_upgrade::target::resolve(spec, &targets).ok())
                .map(|r| r.pending().map(|t| t.image.clone()).collect())
                .unwrap_or_default();
            let node = spec.and_then(|s| s.node_name.clone());
            for image in &pending {
                assert!(
                    !matches!(
                        pulls.get(&prepull::refusal_key(image)),
                        Some(PullState::Refused { .. })
                    ),
                    "{image} was refused, yet {step:?}"
                );
                if let Some(node) = node.clone().filter(|_| policy.pre_pull.enabled) {
                    let key = PullKey {
                        node,
                        image: image.clone(),
                    };
                    assert_eq!(
                        pulls.get(&key),
                        Some(&PullState::Pulled),
                        "{image} not pulled onto the node, yet {step:?}"
                    );
                }
            }
        }
        if step.action.starts_upgrade() && !in_progress(p) && guard {
            let pending: Vec<String> = p
                .spec
                .as_ref()
                .and_then(|spec| inplace_upgrade::target::resolve(spec, &targets).ok())
                .map(|r| r.pending().map(|t| t.location.name.clone()).collect())
                .unwrap_or_default();
            assert!(
                istio::check(p, &namespace_labels, pending.iter().map(String::as_str)).is_none(),
                "the revision guard holds {} back, yet {step:?}",
                step.pod
            );
        }
        if out.verdict == Verdict::Completed {
            assert!(
                !step.action.starts_upgrade() && !matches!(step.action, Action::Rollback { .. }),
                "Completed with {step:?}"
            );
        }
    }
    if ready_started > 0 {
        let limit = policy
            .max_unavailable_pods(desired_replicas)
            .expect("a valid maxUnavailable when upgrades start");
        // A pod this plan undrains or marks ready becomes available again when its
        // containers are ready; the others stay unavailable.
        let becomes_ready = |p: &Pod| {
            let containers_ready = p.status.as_ref().is_some_and(|s| {
                s.container_statuses
                    .iter()
                    .chain(s.init_container_statuses.iter())
                    .flatten()
                    .all(|c| c.ready)
            });
            containers_ready
                && out.steps.iter().any(|s| {
                    p.metadata.name.as_deref() == Some(s.pod.as_str())
                        && matches!(s.action, Action::Undrain | Action::MarkReady)
                })
        };
        let unavailable = pods
            .iter()
            .filter(live)
            .filter(|&p| !ready(p) && !becomes_ready(p))
            .count();
        assert!(
            unavailable + ready_started <= usize::try_from(limit).unwrap_or(usize::MAX),
            "{unavailable} pods unavailable and {ready_started} Ready pods started with maxUnavailable {limit}: {:?}\npods: {:#?}",
            out.steps,
            pods.iter().map(summary).collect::<Vec<_>>()
        );
    }
    for (pod, why) in &out.held {
        assert!(names.contains(pod.as_str()), "held unknown pod {pod}");
        assert!(!why.is_empty(), "{pod} held without a reason");
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(data);
});
