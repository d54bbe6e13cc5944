//! One reconcile of one workload: read everything from the caches, let the pure planner decide,
//! make the writes it asks for, and record progress. It never waits: the next watch event for
//! the workload (a pod's container restarted, a pod left an EndpointSlice, a PDB changed) or
//! the planner's recheck time brings the next reconcile.

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use futures::future::join_all;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::{Resource, ResourceExt};

use super::Context;
use super::inputs::disruption_budgets;
use super::metrics::{ErrorLabels, ResultLabels};
use super::status::{FailedTargetRecord, WorkloadPhase, WorkloadStatus, failure_memory};
use super::workload::{WorkloadKey, WorkloadView};
use super::writes::is_conflict;
use crate::patch::{
    DRAINING_REASON, NOT_UPGRADING_REASON, SERVING_REASON, finish_with_gate_patch,
    gate_condition_patch, kubernetes_time, rollback_patch, state_patch, upgrade_patch,
};
use crate::plan::{Action, DrainRecord, PlanInput, Step, Verdict, plan};
use crate::policy::{InPlaceUpgradePolicySpec, Scope, governing_policy};
use crate::state::{Phase, PodUpgradeState};
use crate::target::{self, TargetSource, effective_targets};
use crate::{
    PAUSED_ANNOTATION, READINESS_GATE, RETRY_ANNOTATION, STATE_ANNOTATION, STATUS_ANNOTATION,
    TARGETS_ANNOTATION,
};

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("pod {pod} changed since it was read; planning again")]
    Conflict { pod: String },
    #[error("{what} failed: {source}")]
    Kube {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("cannot record the upgrade state of pod {pod}: {source}")]
    State {
        pod: String,
        #[source]
        source: crate::state::StateError,
    },
}

impl ReconcileError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            ReconcileError::Conflict { .. } => "conflict",
            ReconcileError::Kube { .. } => "kube",
            ReconcileError::State { .. } => "state",
        }
    }
}

/// Runs one reconcile and schedules the next one it needs.
pub async fn reconcile(ctx: Arc<Context>, key: WorkloadKey) {
    match reconcile_workload(&ctx, &key).await {
        Ok(Some(after)) => ctx.queue.enqueue_after(key, after),
        Ok(None) => {}
        Err(e) => {
            ctx.metrics
                .reconcile_errors
                .get_or_create(&ErrorLabels {
                    error: e.metric_label(),
                })
                .inc();
            // A conflict means our cache was behind: the watch event that fixes it is on its way.
            let after = if matches!(e, ReconcileError::Conflict { .. }) {
                tracing::debug!(workload = %key, error = %e, "conflict");
                Duration::from_millis(200)
            } else {
                tracing::warn!(workload = %key, error = %e, "reconcile failed; retrying");
                Duration::from_secs(5)
            };
            ctx.queue.enqueue_after(key, after);
        }
    }
}

/// Message of the gate condition set True when we are done with a pod.
const UPGRADE_DONE: &str = "in-place upgrade done";

/// The policy used when none governs: nothing new may start (no targets are passed), but
/// pods we were working on are finished and gated pods are released. Every field takes its
/// documented default.
static RELEASE_ONLY: LazyLock<InPlaceUpgradePolicySpec> = LazyLock::new(|| {
    serde_json::from_value(serde_json::json!({ "namespaceSelector": {} }))
        .expect("a policy spec with only namespaceSelector is valid (unit-tested)")
});

struct Asked {
    targets: Vec<crate::annotation::Target>,
    source: Option<TargetSource>,
    written: String,
    problem: Option<(WorkloadPhase, String)>,
}

async fn reconcile_workload(
    ctx: &Context,
    key: &WorkloadKey,
) -> Result<Option<Duration>, ReconcileError> {
    let Some(workload) = ctx.cache.workload(key) else {
        ctx.release_slot(key);
        ctx.written.forget_status(key);
        ctx.written.forget_drains(Some(key));
        ctx.report.record(key, None);
        return Ok(None);
    };
    let namespace = ctx.cache.namespace(&key.namespace);
    let empty = BTreeMap::new();
    let ns_labels = namespace.as_ref().map(|n| n.labels()).unwrap_or(&empty);
    let ns_annotations = namespace
        .as_ref()
        .map(|n| n.annotations())
        .unwrap_or(&empty);
    let cached_status = workload
        .annotations
        .get(STATUS_ANNOTATION)
        .map(String::as_str);
    let previous = ctx
        .written
        .freshest_status(key, cached_status)
        .and_then(|s| WorkloadStatus::parse(&s));
    // The cache, corrected by our own writes it has not delivered yet (see `written`).
    let pods: Vec<Pod> = ctx.written.freshest(key, ctx.cache.pods_of(key));
    let now = Timestamp::now();

    // What is asked, and whether we may act on it.
    let workload_value = workload
        .annotations
        .get(TARGETS_ANNOTATION)
        .map(String::as_str);
    let ns_value = ns_annotations.get(TARGETS_ANNOTATION).map(String::as_str);
    let mut asked = match effective_targets(workload_value, ns_value) {
        Ok(Some((source, targets))) => Asked {
            written: crate::annotation::render(&targets),
            targets,
            source: Some(source),
            problem: None,
        },
        Ok(None) => Asked {
            targets: vec![],
            source: None,
            written: String::new(),
            problem: None,
        },
        Err(e) => Asked {
            targets: vec![],
            source: None,
            written: workload_value.or(ns_value).unwrap_or_default().to_string(),
            problem: Some((WorkloadPhase::Invalid, e.to_string())),
        },
    };
    let ours = |p: &Pod| {
        p.annotations().contains_key(STATE_ANNOTATION)
            || p.spec
                .as_ref()
                .and_then(|s| s.readiness_gates.as_ref())
                .is_some_and(|g| g.iter().any(|g| g.condition_type == READINESS_GATE))
    };
    if asked.source.is_none()
        && asked.problem.is_none()
        && previous.is_none()
        && !pods.iter().any(ours)
    {
        ctx.release_slot(key);
        ctx.report.record(key, None);
        return Ok(None); // never annotated, nothing of ours on its pods: not our business
    }

    let policies = ctx.cache.policies();
    let scope = Scope {
        namespace: &key.namespace,
        namespace_labels: ns_labels,
        workload_labels: &workload.labels,
        controller_namespace: &ctx.settings.namespace,
    };
    let fallback = &*RELEASE_ONLY;
    let (spec, policy_name, mut paused) = match governing_policy(&policies, &scope) {
        Ok(Some(g)) => (&g.policy.spec, Some(g.policy.name_any()), g.paused()),
        Ok(None) => {
            if asked.source.is_some() && asked.problem.is_none() {
                asked.problem = Some((
                    WorkloadPhase::NoPolicy,
                    format!(
                        "no InPlaceUpgradePolicy enables namespace {:?} for this workload; nothing is upgraded",
                        key.namespace
                    ),
                ));
            }
            (fallback, None, false)
        }
        Err(e) => {
            asked
                .problem
                .get_or_insert((WorkloadPhase::Blocked, e.to_string()));
            (fallback, None, true)
        }
    };
    let paused_here =
        |a: &BTreeMap<String, String>| a.get(PAUSED_ANNOTATION).is_some_and(|v| v == "true");
    paused |= paused_here(&workload.annotations) || paused_here(ns_annotations);
    if asked.problem.is_some() {
        // Reported, never acted on: only pods already in flight are finished.
        asked.targets.clear();
    }

    // The workload's memory of failed targets, cleared by a new retry request. The retry
    // annotation holds the time of the request (RFC 3339, as `kubectl inplace retry` writes
    // it); any other value counts from when we first see it.
    // `kubectl inplace plan` reads the same memory through the same function.
    let retry = workload.annotations.get(RETRY_ANNOTATION).cloned();
    let (mut failed, retry_since) = failure_memory(previous.as_ref(), retry.as_deref(), now);
    if asked.source == Some(TargetSource::Namespace) {
        // A bad image must not spread: a target that failed under the Namespace annotation in
        // one workload is not started in the others either.
        // Every reconcile in such a namespace reads every other workload's status: read the
        // annotation in place and parse only the records that hold failed targets.
        for other in ctx
            .cache
            .workloads_in(Some(&key.namespace))
            .iter()
            .filter(|k| *k != key)
        {
            // Our own status writes count at once (`written`): a failure recorded a moment ago
            // in a sibling must stop this workload even before the watch delivers it.
            let cached = ctx.cache.workload_annotation(other, STATUS_ANNOTATION);
            if let Some(s) = ctx
                .written
                .freshest_status(other, cached.as_deref())
                .filter(|raw| raw.contains("failedTargets"))
                .and_then(|raw| WorkloadStatus::parse(&raw))
                && s.source == Some(TargetSource::Namespace)
            {
                failed.extend(s.failed());
            }
        }
    }

    let budgets = disruption_budgets(
        ctx.cache.pdbs_in(&key.namespace).iter().map(|p| &**p),
        &pods,
    );
    let drains = ctx.written.drains(key, &pods);
    let endpoints_drained = ctx.cache.endpoints_drained(&key.namespace, &pods, &drains);
    let events = ctx
        .events
        .of_pods(pods.iter().filter_map(|p| p.metadata.uid.as_deref()));
    let input = PlanInput {
        targets: &asked.targets,
        pods: &pods,
        policy: spec,
        desired_replicas: workload.desired_replicas,
        paused,
        failed_targets: &failed,
        retry_since,
        disruption_budgets: &budgets,
        endpoints_drained: &endpoints_drained,
        drains: &drains,
        events: &events,
        now,
    };
    let mut plan = plan(&input);

    // Gates on starting new pods that only the controller can see.
    let mut hold: Option<String> = None;
    let mut waiting_for_slot = false;
    if plan.steps.iter().any(|s| s.action.starts_upgrade()) {
        if !workload.settled {
            hold = Some(format!(
                "waiting for the {}'s own rollout to finish",
                key.kind.as_str()
            ));
        } else if let Some(policy) = &policy_name
            && !ctx.claim_slot(policy, key, spec.max_concurrent_workloads)
        {
            waiting_for_slot = true;
            hold = Some(format!(
                "waiting for a rollout slot: policy {policy} allows {} workload(s) at once",
                spec.max_concurrent_workloads
            ));
        }
    }
    if hold.is_some() {
        plan.steps.retain(|s| !s.action.starts_upgrade());
    }

    let results = join_all(
        plan.steps
            .iter()
            .map(|step| execute(ctx, &workload, &pods, step, now)),
    )
    .await;
    for r in results {
        r?;
    }
    // Progress record, written only when it changed.
    let status = progress(
        &asked,
        policy_name,
        &plan,
        hold,
        &pods,
        previous.as_ref(),
        (retry, retry_since),
        now,
    );
    let status_due =
        record_status(ctx, &workload, &asked, cached_status, previous, &status).await?;
    // Every reconcile ends holding a slot, waiting in line for one, or with neither (and then
    // its slot, if it had one, goes to the oldest waiter). Slots change hands only now that
    // the status saying why is written (and counts at once, through `written`): a waiter woken
    // by a failure sees the failure, under a Namespace annotation, before it could start the
    // same target, and nobody sees two workloads `Progressing` under a limit of one.
    match (status.phase, &status.policy) {
        (WorkloadPhase::Progressing, Some(policy)) => ctx.hold_slot(policy, key),
        _ if waiting_for_slot => {}
        _ => ctx.release_slot(key),
    }
    ctx.report.record(
        key,
        status
            .policy
            .as_deref()
            .map(|p| (p, status.phase))
            .filter(|_| asked.source.is_some()),
    );
    ctx.metrics
        .workloads_in_progress
        .set(i64::try_from(ctx.report.progressing()).unwrap_or(i64::MAX));
    // Timed from now, not from this reconcile's start: a recheck due when a drain's grace
    // period ends must not come late by however long this reconcile took.
    let mut recheck = recheck_after(plan.recheck_at, Timestamp::now());
    if let Some(left) = status_due {
        // A progress-only change waits to be written: come back when it is due.
        recheck = Some(recheck.map_or(left, |r| r.min(left)));
    }
    Ok(recheck)
}

/// Brings the workload's status annotation to `status`: written at once when the phase, the
/// message or the failure memory changed; when only progress did, after at most
/// `written::PROGRESS_DEBOUNCE` (it then returns how much longer it waits); cleared when
/// nothing is asked.
async fn record_status(
    ctx: &Context,
    workload: &WorkloadView,
    asked: &Asked,
    cached_status: Option<&str>,
    previous: Option<WorkloadStatus>,
    status: &WorkloadStatus,
) -> Result<Option<Duration>, ReconcileError> {
    let key = &workload.key;
    if asked.source.is_none() && asked.problem.is_none() {
        // Nothing asked (any more): no progress to report, and a stale record goes.
        if previous.is_some() {
            ctx.written.forget_status(key);
            ctx.annotate_workload(key, STATUS_ANNOTATION, None)
                .await
                .map_err(|source| ReconcileError::Kube {
                    what: format!("clearing the status of {key}"),
                    source,
                })?;
        }
        return Ok(None);
    }
    if previous.as_ref() == Some(status) {
        ctx.written.defer_progress(key, true, Instant::now());
        return Ok(None);
    }
    // Progress alone (pods starting, finishing) waits a moment to be written with what follows.
    let urgent = previous
        .as_ref()
        .is_none_or(|p| !p.only_progress_since(status));
    if let Some(left) = ctx.written.defer_progress(key, urgent, Instant::now()) {
        return Ok(Some(left));
    }
    write_status(ctx, workload, cached_status, previous.as_ref(), status).await?;
    Ok(None)
}

/// Writes the workload's status annotation, remembers it until the watch delivers it, and
/// announces a phase change with an Event.
async fn write_status(
    ctx: &Context,
    workload: &WorkloadView,
    cached_status: Option<&str>,
    previous: Option<&WorkloadStatus>,
    status: &WorkloadStatus,
) -> Result<(), ReconcileError> {
    let key = &workload.key;
    let raw = serde_json::to_string(status).unwrap_or_default();
    if let Err(source) = ctx
        .annotate_workload(key, STATUS_ANNOTATION, Some(&raw))
        .await
    {
        ctx.written.forget_status(key);
        return Err(ReconcileError::Kube {
            what: format!("recording the status of {key}"),
            source,
        });
    }
    ctx.written.remember_status(key, cached_status, &raw);
    if previous.map(|p| p.phase) != Some(status.phase) {
        announce(ctx, workload, status);
    }
    Ok(())
}

fn recheck_after(at: Option<Timestamp>, now: Timestamp) -> Option<Duration> {
    at.map(|at| Duration::from_secs_f64(at.duration_since(now).as_secs_f64().max(0.0)))
}

/// Makes the write one step asks for.
async fn execute(
    ctx: &Context,
    workload: &WorkloadView,
    pods: &[Pod],
    step: &Step,
    now: Timestamp,
) -> Result<(), ReconcileError> {
    let Some(pod) = pods
        .iter()
        .find(|p| p.metadata.name.as_deref() == Some(step.pod.as_str()))
    else {
        return Ok(());
    };
    let ns = &workload.key.namespace;
    let name = step.pod.as_str();
    let kube = |what: &str| {
        let what = format!("{what} pod {ns}/{name}");
        move |source: kube::Error| {
            if is_conflict(&source) {
                ReconcileError::Conflict {
                    pod: name.to_string(),
                }
            } else {
                ReconcileError::Kube { what, source }
            }
        }
    };
    // Our readiness-gate condition, through `pods/status`; the returned pod is remembered
    // until the watch delivers it.
    let set_gate = |ready: bool,
                    reason: &'static str,
                    message: &'static str,
                    what: &'static str,
                    at: Timestamp| async move {
        let written = ctx
            .patch_pod_status(ns, name, gate_condition_patch(ready, reason, message, at))
            .await
            .map_err(kube(what))?;
        ctx.written.remember(&workload.key, &written);
        Ok::<Pod, ReconcileError>(written)
    };
    match &step.action {
        Action::Wait { .. } => {}
        Action::Drain => {
            // The slices as they are before the drain: versions that cannot reflect it.
            let slices = ctx.cache.slices_listing(ns, name);
            // The condition says the second in which the write was sent (all a restarted
            // controller has to time the grace period from); we remember when it returned.
            let sent = Timestamp::now();
            let written = set_gate(
                false,
                DRAINING_REASON,
                "taken out of load balancing before an in-place upgrade",
                "draining",
                sent,
            )
            .await?;
            let record = DrainRecord {
                uid: written.metadata.uid,
                condition_time: kubernetes_time(sent),
                drained_at: Timestamp::now(),
                slices,
            };
            ctx.written.remember_drain(&workload.key, name, record);
        }
        Action::Undrain => {
            set_gate(true, SERVING_REASON, UPGRADE_DONE, "undraining", now).await?;
        }
        Action::MarkReady => {
            set_gate(
                true,
                NOT_UPGRADING_REASON,
                "no in-place upgrade in progress",
                "marking ready",
                now,
            )
            .await?;
        }
        Action::Patch { targets } => {
            let (patch, _) =
                upgrade_patch(pod, targets, now).map_err(|source| ReconcileError::State {
                    pod: name.into(),
                    source,
                })?;
            let written = ctx
                .patch_pod(ns, name, patch)
                .await
                .map_err(kube("upgrading"))?;
            // No Event here: the pod's one Event is `Upgraded` (or a warning), naming the
            // images, when it is done; the workload's status shows the pods in flight.
            ctx.written.remember(&workload.key, &written);
        }
        Action::Rollback { reason, message } => {
            let Some(state) = PodUpgradeState::from_pod(pod).ok().flatten() else {
                return Ok(());
            };
            let (patch, _) =
                rollback_patch(pod, &state, reason, message, now).map_err(|source| {
                    ReconcileError::State {
                        pod: name.into(),
                        source,
                    }
                })?;
            let written = ctx
                .patch_pod(ns, name, patch)
                .await
                .map_err(kube("rolling back"))?;
            ctx.written.remember(&workload.key, &written);
            let note = format!(
                "in-place upgrade failed ({reason}: {message}); rolling back to the previous image"
            );
            ctx.event(&pod.object_ref(&()), true, "RollingBack", note);
            ctx.metrics
                .pods_upgraded
                .get_or_create(&ResultLabels {
                    result: "rolled_back",
                })
                .inc();
        }
        Action::Finish {
            phase,
            reason,
            message,
            open_gate,
        } => {
            let Some(state) = PodUpgradeState::from_pod(pod).ok().flatten() else {
                return Ok(());
            };
            let done = state.finished(*phase, reason.clone(), message.clone(), now);
            let state_error = |source| ReconcileError::State {
                pod: name.into(),
                source,
            };
            let written = if *open_gate {
                // Back into load balancing and the record closed, in one `pods/status` write.
                let body = finish_with_gate_patch(&done, SERVING_REASON, UPGRADE_DONE, now)
                    .map_err(state_error)?;
                ctx.patch_pod_status(ns, name, body).await
            } else {
                let patch = state_patch(pod, &done).map_err(state_error)?;
                ctx.patch_pod(ns, name, patch).await
            }
            .map_err(kube("recording the result of"))?;
            ctx.written.remember(&workload.key, &written);
            match phase {
                Phase::Succeeded => {
                    let secs = now.duration_since(state.patched_at).as_secs_f64();
                    ctx.metrics.pod_upgrade_duration.observe(secs.max(0.0));
                    ctx.metrics
                        .pods_upgraded
                        .get_or_create(&ResultLabels {
                            result: "succeeded",
                        })
                        .inc();
                    let what: Vec<String> = done
                        .containers
                        .iter()
                        .map(|c| format!("{} {} -> {}", c.name, c.previous_image, c.target_image))
                        .collect();
                    ctx.event(
                        &pod.object_ref(&()),
                        false,
                        "Upgraded",
                        format!(
                            "in-place upgrade done: {}; every target runs and is Ready",
                            what.join(", ")
                        ),
                    );
                }
                Phase::Failed => {
                    ctx.metrics
                        .pods_upgraded
                        .get_or_create(&ResultLabels { result: "failed" })
                        .inc();
                    let note = format!(
                        "in-place upgrade failed: {}",
                        message.as_deref().unwrap_or_default()
                    );
                    ctx.event(&pod.object_ref(&()), true, "UpgradeFailed", note);
                }
                Phase::RolledBack => ctx.event(
                    &pod.object_ref(&()),
                    true,
                    "RolledBack",
                    "back on the previous image".into(),
                ),
                _ => {}
            }
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn progress(
    asked: &Asked,
    policy: Option<String>,
    plan: &crate::plan::Plan,
    hold: Option<String>,
    pods: &[Pod],
    previous: Option<&WorkloadStatus>,
    (retry, retry_since): (Option<String>, Option<Timestamp>),
    now: Timestamp,
) -> WorkloadStatus {
    let (mut total, mut upgraded, mut ungated) = (0u32, 0u32, 0u32);
    for pod in pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
    {
        let Some(spec) = pod.spec.as_ref() else {
            continue;
        };
        let Ok(resolved) = target::resolve(spec, &asked.targets) else {
            continue;
        };
        if resolved.resolved.is_empty() {
            continue;
        }
        total += 1;
        let active = PodUpgradeState::from_pod(pod)
            .ok()
            .flatten()
            .is_some_and(|s| s.phase.in_progress());
        if resolved.pending().next().is_none() && !active {
            upgraded += 1;
        }
        if !spec
            .readiness_gates
            .iter()
            .flatten()
            .any(|g| g.condition_type == READINESS_GATE)
        {
            ungated += 1;
        }
    }
    let current_pods = plan
        .steps
        .iter()
        .filter(|s| !matches!(s.action, Action::MarkReady | Action::Finish { .. }))
        .map(|s| s.pod.clone())
        .collect();
    let (mut phase, mut message) = match &plan.verdict {
        Verdict::Progressing => (WorkloadPhase::Progressing, None),
        Verdict::Completed => (WorkloadPhase::Completed, None),
        Verdict::Paused => (
            WorkloadPhase::Paused,
            Some("paused; resumes before the next pod".to_string()),
        ),
        Verdict::Blocked { reason } => (WorkloadPhase::Blocked, Some(reason.clone())),
        Verdict::Failed { pod, reason } => {
            (WorkloadPhase::Failed, Some(format!("pod {pod}: {reason}")))
        }
    };
    if let Some((p, m)) = &asked.problem {
        (phase, message) = (*p, Some(m.clone()));
    } else if let Some(h) = hold
        && phase == WorkloadPhase::Progressing
        && plan
            .steps
            .iter()
            .all(|s| matches!(s.action, Action::MarkReady | Action::Finish { .. }))
    {
        (phase, message) = (WorkloadPhase::Blocked, Some(h));
    }
    if ungated > 0 && phase == WorkloadPhase::Progressing {
        let note = format!(
            "{ungated} pod(s) have no {READINESS_GATE} readiness gate (created before the webhook): they are upgraded without being drained first"
        );
        message = Some(message.map_or(note.clone(), |m| format!("{m}; {note}")));
    }
    // Failure memory: what failed stays failed for this annotation until a retry.
    let mut failed_targets: Vec<FailedTargetRecord> = match previous {
        Some(p) if p.retry == retry && p.target == asked.written => p.failed_targets.clone(),
        _ => Vec::new(),
    };
    if let Verdict::Failed { pod, .. } = &plan.verdict
        && let Some(p) = pods
            .iter()
            .find(|p| p.metadata.name.as_deref() == Some(pod.as_str()))
        && let Some(state) = PodUpgradeState::from_pod(p).ok().flatten()
        // A failure known before the last retry request (its rollback, or its `Pause`, was
        // recorded by then) is forgiven, not remembered again — the planner's rule. A pod
        // still `Patched` is a fresh attempt failing now. (Comparing phases, not only times:
        // recorded times are truncated to the second.)
        && !retry_since.is_some_and(|r| state.phase != Phase::Patched && state.patched_at <= r)
    {
        for c in &state.containers {
            let record = FailedTargetRecord {
                container: c.name.clone(),
                image: c.target_image.clone(),
            };
            if !failed_targets.contains(&record) {
                failed_targets.push(record);
            }
        }
    }
    let last_transition_time = match previous {
        Some(p) if p.phase == phase => p.last_transition_time,
        _ => Some(now),
    };
    WorkloadStatus {
        phase,
        target: asked.written.clone(),
        source: asked.source,
        policy,
        upgraded,
        total,
        current_pods,
        ungated_pods: ungated,
        message,
        failed_targets,
        retry,
        retry_since,
        last_transition_time,
    }
}

/// An Event on the workload when its phase changes.
fn announce(ctx: &Context, workload: &WorkloadView, status: &WorkloadStatus) {
    let note = match status.phase {
        WorkloadPhase::Progressing => format!(
            "in-place upgrade to {} under policy {}",
            status.target,
            status.policy.as_deref().unwrap_or("?")
        ),
        WorkloadPhase::Completed => format!(
            "in-place upgrade to {} done: {}/{} pods",
            status.target, status.upgraded, status.total
        ),
        _ => status.message.clone().unwrap_or_default(),
    };
    let warning = matches!(
        status.phase,
        WorkloadPhase::Failed
            | WorkloadPhase::Invalid
            | WorkloadPhase::NoPolicy
            | WorkloadPhase::Blocked
    );
    let reason = status.phase.as_str();
    ctx.event(&workload.object_reference(), warning, reason, note);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_release_only_policy_takes_the_documented_defaults() {
        assert_eq!(RELEASE_ONLY.max_unavailable_pods(10).ok(), Some(1));
        assert_eq!(RELEASE_ONLY.on_failure, crate::policy::OnFailure::Rollback);
        assert!(RELEASE_ONLY.readiness_gate && !RELEASE_ONLY.paused);
    }
}
