//! Restart safety and HA, with the controller out of process: two replicas elect a leader on
//! the Lease; the leader is SIGKILLed at points across a rollout (a pod drained, a pod patched
//! and restarting, a pod just finished) and replaced; the rollout still completes, no pod is
//! left drained or half-patched, and never more than maxUnavailable pods are unavailable. A
//! SIGTERM makes the leader release the Lease to the standby.
//!
//! This suite has its own control plane (one per test binary), so its controllers never meet
//! the in-process one of `e2e_controller`.

mod common;

use std::collections::BTreeSet;

use common::*;
use inplace_upgrade::TARGETS_ANNOTATION;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, PostParams};
use kube::runtime::watcher;
use serde_json::{Value, json};
use testenv::{TestEnv, wait_list};

#[derive(Clone, Copy, Debug)]
enum KillPoint {
    /// A pod's gate is False (drained) and its image not yet patched.
    Drained,
    /// A pod is patched and its container restarting.
    Patched,
    /// One more pod finished since the last kill.
    Finished,
}

fn at_kill_point(
    point: KillPoint,
    pods: &[Pod],
    finished_before: &BTreeSet<String>,
) -> Option<String> {
    pods.iter()
        .find(|p| match point {
            KillPoint::Drained => {
                gate(p).is_some_and(|(s, r)| s == "False" && r == "Draining")
                    && state_phase(p).is_none()
            }
            KillPoint::Patched => state_phase(p).as_deref() == Some("Patched") && !is_ready(p),
            KillPoint::Finished => {
                state_phase(p).as_deref() == Some("Succeeded")
                    && !finished_before.contains(&p.name_any())
            }
        })
        .map(|p| p.name_any())
}

#[tokio::test]
async fn sigkilled_leaders_never_leave_a_pod_drained_and_the_rollout_completes() -> TestResult {
    let env = TestEnv::shared()?;
    let client = env.client()?;
    install(&client).await?;
    let ns = env.namespace("chaos").await?;
    create_policy(
        &client,
        &ns,
        json!({"drain": {"gracePeriodSeconds": 1, "timeoutSeconds": 60}}),
    )
    .await?;
    let deployments = Api::<Deployment>::namespaced(client.clone(), &ns);
    let mut d: Value = serde_json::to_value(hello_deployment(
        "hello-old-version.yaml.injected",
        5,
        true,
    )?)?;
    d["spec"]["template"]["metadata"]["annotations"]["sim.inplace-upgrade.io/restart-delay-ms"] =
        json!("1500");
    deployments
        .create(&PostParams::default(), &serde_json::from_value(d)?)
        .await?;

    let mut replicas = vec![
        Replica::start(env, "replica-a")?,
        Replica::start(env, "replica-b")?,
    ];
    let first = await_holder(&client, &["replica-a", "replica-b"]).await?;
    // The leader admits the gated pods (condition True), so the Deployment becomes ready.
    await_deployment_ready(&deployments, "hello", 5).await?;
    let seen = observe(&client, &ns, "hello", "istio-proxy").await?;
    let target = "istio-proxy=proxyv2:1.24.2";
    annotate(&deployments, "hello", TARGETS_ANNOTATION, target).await?;

    let pods = Api::<Pod>::namespaced(client.clone(), &ns);
    let plan = [
        KillPoint::Drained,
        KillPoint::Patched,
        KillPoint::Finished,
        KillPoint::Patched,
        KillPoint::Drained,
    ];
    let mut kills = Vec::new();
    let mut leader = first;
    let mut finished: BTreeSet<String> = BTreeSet::new();
    for (i, point) in plan.into_iter().enumerate() {
        let snapshot = wait_list(
            &pods,
            watcher::Config::default().labels("app=hello"),
            &format!("kill point {point:?}"),
            |ps: &[Pod]| {
                let done = ps
                    .iter()
                    .filter(|p| state_phase(p).as_deref() == Some("Succeeded"))
                    .count()
                    == ps.len();
                done || at_kill_point(point, ps, &finished).is_some()
            },
        )
        .await?;
        let Some(pod) = at_kill_point(point, &snapshot, &finished) else {
            break;
        }; // rollout done
        let victim = replicas
            .iter_mut()
            .find(|r| r.identity == leader)
            .ok_or("the leader is not one of ours")?;
        victim.kill();
        kills.push(format!("{point:?} at pod {pod}: killed {leader}"));
        finished = snapshot
            .iter()
            .filter(|p| state_phase(p).as_deref() == Some("Succeeded"))
            .map(|p| p.name_any())
            .collect();
        let replacement = format!("replica-{i}");
        replicas.retain(|r| r.identity != leader);
        replicas.push(Replica::start(env, &replacement)?);
        let live: Vec<&str> = replicas.iter().map(|r| r.identity.as_str()).collect();
        leader = await_holder(&client, &live).await?;
    }
    println!("kill points: {kills:#?}");
    assert!(
        kills.len() >= 3,
        "at least three kill points were hit: {kills:?}"
    );

    let done = await_phase(&deployments, "hello", target, "Completed").await;
    if let Err(e) = done {
        let logs: Vec<String> = replicas
            .iter()
            .map(|r| format!("--- {}:\n{}", r.identity, r.log_tail()))
            .collect();
        return Err(format!("{e}\n{}", logs.join("\n")).into());
    }
    await_deployment_ready(&deployments, "hello", 5).await?;
    for pod in pods_by_name(&client, &ns, "hello").await?.values() {
        let name = pod.name_any();
        assert_eq!(
            spec_image(pod, "istio-proxy").as_deref(),
            Some(NEW_PROXY),
            "{name}"
        );
        assert_eq!(
            state_phase(pod).as_deref(),
            Some("Succeeded"),
            "{name} finished"
        );
        assert_eq!(
            gate(pod).map(|g| g.0).as_deref(),
            Some("True"),
            "{name} is not left drained"
        );
        assert!(is_ready(pod), "{name}");
    }
    let max = seen.lock().map(|o| o.max_not_ready).unwrap_or(usize::MAX);
    assert!(
        max <= 1,
        "never more than maxUnavailable=1 pod unavailable across the kills, saw {max}"
    );

    // Exactly one live replica leads, by the Lease and by its own metric.
    let holder_now = holder(&client).await.ok_or("no leader")?;
    let mut leaders = Vec::new();
    for r in &replicas {
        if r.leader_metric()?.as_deref() == Some("1") {
            leaders.push(r.identity.clone());
        }
    }
    assert_eq!(
        leaders,
        std::slice::from_ref(&holder_now),
        "one acting leader"
    );

    // SIGTERM: the leader releases the Lease and the standby takes it.
    let leader_replica = replicas
        .iter_mut()
        .find(|r| r.identity == holder_now)
        .ok_or("leader not found")?;
    let status = leader_replica.terminate()?;
    assert!(status.success(), "graceful exit: {status}");
    let others: Vec<&str> = replicas
        .iter()
        .map(|r| r.identity.as_str())
        .filter(|i| *i != holder_now)
        .collect();
    let successor = await_holder(&client, &others).await?;
    println!("SIGTERM on {holder_now}: {successor} took over");
    Ok(())
}
