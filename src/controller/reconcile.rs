//! One reconcile of one workload: read everything from the caches, let the pure planner decide,
//! make the writes it asks for, and record progress. It never waits: the next watch event for
//! the workload (a pod's container restarted, a pod left an EndpointSlice, a PDB changed) or
//! the planner's recheck time brings the next reconcile.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::{Resource, ResourceExt};

use super::Context;
use super::metrics::{ErrorLabels, ResultLabels};
use super::slots::SlotTurn;
use super::writes::is_conflict;
use crate::intent::{self, Intent, Observed, Subject};
use crate::patch::{
    DRAINING_REASON, NOT_UPGRADING_REASON, SERVING_REASON, finish_with_gate_patch,
    gate_condition_patch, kubernetes_time, rollback_patch, state_patch, upgrade_patch,
};
use crate::plan::inputs::disruption_budgets;
use crate::plan::{Action, DrainRecord, Plan, Step, Verdict, plan};
use crate::policy::InPlaceUpgradePolicySpec;
use crate::prepull::{PrePullPod, PullKey, PullState, prepull_pod, refusal_key};
use crate::state::Phase;
use crate::status::{WorkloadPhase, WorkloadStatus, progress};
use crate::workload::{WorkloadKey, WorkloadView};
use crate::{READINESS_GATE, STATE_ANNOTATION, STATUS_ANNOTATION};

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
#[tracing::instrument(skip_all, fields(workload = %key))]
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
                tracing::debug!(error = %e, "conflict");
                Duration::from_millis(200)
            } else {
                tracing::warn!(error = %e, "reconcile failed; retrying");
                Duration::from_secs(5)
            };
            ctx.queue.enqueue_after(key, after);
        }
    }
}

/// Message of the gate condition set True when we are done with a pod.
const UPGRADE_DONE: &str = "in-place upgrade done";

/// Reads the workload and what surrounds it from the caches (corrected by our own writes the
/// watches have not delivered yet), decides ([`intent::decide`]), plans, makes the writes the
/// plan asks for, and records the status; returns when to look again if nothing else asks.
pub(super) async fn reconcile_workload(
    ctx: &Context,
    key: &WorkloadKey,
) -> Result<Option<Duration>, ReconcileError> {
    let mut slot = SlotTurn::new(ctx, key);
    let Some(workload) = ctx.cache.workload(key) else {
        ctx.written.forget_status(key);
        ctx.written.forget_drains(Some(key));
        ctx.pulls.forget(key);
        slot.end(None);
        ctx.report.record(key, None);
        return Ok(None);
    };
    let namespace = ctx.cache.namespace(&key.namespace);
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
    let policies = ctx.cache.policies();
    let subject = Subject {
        workload: &workload,
        namespace: namespace.as_deref(),
        policies: &policies,
        controller_namespace: &ctx.settings.namespace,
        status: previous.as_ref(),
        now,
    };
    let intent = intent::decide(&subject, || sibling_statuses(ctx, key));
    if intent.asked.source.is_none()
        && intent.asked.invalid.is_none()
        && previous.is_none()
        && !pods.iter().any(ours)
    {
        slot.end(None);
        ctx.report.record(key, None);
        return Ok(None); // never annotated, nothing of ours on its pods: not our business
    }

    let budgets = disruption_budgets(
        ctx.cache.pdbs_in(&key.namespace).iter().map(|p| &**p),
        &pods,
    );
    let drains = ctx.written.drains(key, &pods);
    let endpoints_drained = ctx.cache.endpoints_drained(&key.namespace, &pods, &drains);
    let events = ctx.cache.pod_events(&pods);
    let (pulls, prepull_pods) = ctx.pulls.known(key, &ctx.cache.prepull_pods_of(key));
    let seen = Observed {
        pods: &pods,
        desired_replicas: workload.desired_replicas,
        disruption_budgets: &budgets,
        endpoints_drained: &endpoints_drained,
        drains: &drains,
        events: &events,
        pulls: &pulls,
    };
    let input = intent.plan_input(seen, now);
    let mut plan = plan(&input);
    let hold = hold_new_pods(&intent, &mut slot, &mut plan);

    let results = join_all(
        plan.steps
            .iter()
            .map(|step| execute(ctx, &workload, intent.spec, &pods, step, now)),
    )
    .await;
    for r in results {
        r?;
    }
    let status = progress(
        &intent.reported(hold.as_deref()),
        &plan,
        previous.as_ref(),
        now,
    );
    let status_due = record_status(
        ctx,
        &workload,
        &intent,
        cached_status,
        previous.as_ref(),
        &status,
    )
    .await?;
    clean_up_prepulls(ctx, key, &prepull_pods, &plan).await?;
    if plan.verdict == Verdict::Completed {
        ctx.pulls.forget(key);
    }
    let rolling = status.policy.as_deref();
    slot.end(rolling.filter(|_| status.phase == WorkloadPhase::Progressing));
    ctx.report.record(
        key,
        rolling
            .map(|p| (p, status.phase))
            .filter(|_| intent.asked.source.is_some()),
    );
    // Timed from now, not from this reconcile's start: a recheck due when a drain's grace
    // period ends must not come late by however long this reconcile took.
    let mut recheck = recheck_after(plan.recheck_at, Timestamp::now());
    if let Some(left) = status_due {
        // A progress-only change waits to be written: come back when it is due.
        recheck = Some(recheck.map_or(left, |r| r.min(left)));
    }
    Ok(recheck)
}

/// A pod we have touched: it has our state record or our readiness gate.
fn ours(pod: &Pod) -> bool {
    pod.annotations().contains_key(STATE_ANNOTATION)
        || pod
            .spec
            .as_ref()
            .and_then(|s| s.readiness_gates.as_ref())
            .is_some_and(|g| g.iter().any(|g| g.condition_type == READINESS_GATE))
}

/// The status records of the namespace's other workloads that remember failed targets (the
/// Namespace-wide failure memory), our own writes counting at once (`written`): a failure
/// recorded a moment ago in a sibling must stop this workload before the watch delivers it.
/// Every reconcile under a Namespace annotation reads them all: the annotation is read in
/// place and only the records that hold failed targets are parsed.
fn sibling_statuses(ctx: &Context, key: &WorkloadKey) -> Vec<WorkloadStatus> {
    ctx.cache
        .workloads_in(Some(&key.namespace))
        .iter()
        .filter(|other| *other != key)
        .filter_map(|other| {
            let cached = ctx.cache.workload_annotation(other, STATUS_ANNOTATION);
            ctx.written
                .freshest_status(other, cached.as_deref())
                .filter(|raw| raw.contains("failedTargets"))
                .and_then(|raw| WorkloadStatus::parse(&raw))
        })
        .collect()
}

/// The gates on starting new pods that only the controller can apply: the workload's own
/// rollout must be done, and a rollout slot under its policy ours. When either holds new pods
/// back, the plan keeps only its other steps, and the reason is returned for the status.
fn hold_new_pods(intent: &Intent<'_>, slot: &mut SlotTurn<'_>, plan: &mut Plan) -> Option<String> {
    if !plan.steps.iter().any(|s| s.action.starts_pod()) {
        return None;
    }
    let max = intent.spec.max_concurrent_workloads;
    let hold = match (&intent.hold, &intent.policy) {
        (Some(own_rollout), _) => Some(own_rollout.clone()),
        (None, Some(policy)) if !slot.may_start(policy, max) => Some(format!(
            "waiting for a rollout slot: policy {policy} allows {max} workload(s) at once"
        )),
        (None, _) => None,
    };
    if hold.is_some() {
        plan.hold_new_pods();
    }
    hold
}

/// Brings the workload's status annotation to `status`: written at once when the phase, the
/// message or the failure memory changed; when only progress did, after at most
/// `written::PROGRESS_DEBOUNCE` (it then returns how much longer it waits); cleared when
/// nothing is asked.
async fn record_status(
    ctx: &Context,
    workload: &WorkloadView,
    intent: &Intent<'_>,
    cached_status: Option<&str>,
    previous: Option<&WorkloadStatus>,
    status: &WorkloadStatus,
) -> Result<Option<Duration>, ReconcileError> {
    let key = &workload.key;
    if intent.asked.source.is_none() && intent.problem.is_none() {
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
    if previous == Some(status) {
        ctx.written.defer_progress(key, true, Instant::now());
        return Ok(None);
    }
    // Progress alone (pods starting, finishing) waits a moment to be written with what follows.
    let urgent = previous.is_none_or(|p| !p.only_progress_since(status));
    if let Some(left) = ctx.written.defer_progress(key, urgent, Instant::now()) {
        return Ok(Some(left));
    }
    write_status(ctx, workload, cached_status, previous, status).await?;
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
        tracing::info!(
            phase = status.phase.as_str(),
            message = status.message.as_deref(),
            "phase changed"
        );
        announce(ctx, workload, status);
    }
    Ok(())
}

fn recheck_after(at: Option<Timestamp>, now: Timestamp) -> Option<Duration> {
    at.map(|at| Duration::from_secs_f64(at.duration_since(now).as_secs_f64().max(0.0)))
}

/// Makes the write one step asks for, with the pod's record as the planner read it.
#[tracing::instrument(skip_all, fields(pod = %step.pod, step = step.action.name()))]
async fn execute(
    ctx: &Context,
    workload: &WorkloadView,
    policy: &InPlaceUpgradePolicySpec,
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
        Action::PrePull { node, images } => {
            let spec = match ctx.get_pod(ns, name).await {
                Ok(full) => full.spec.unwrap_or_default(),
                Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
                Err(source) => return Err(kube("reading")(source)),
            };
            for image in images {
                let key = PullKey {
                    node: node.clone(),
                    image: image.clone(),
                };
                let pod = prepull_pod(&PrePullPod {
                    workload,
                    key: &key,
                    for_pod: &spec,
                    timeout_seconds: policy.pre_pull.timeout_seconds,
                });
                create_prepull(ctx, &workload.key, key, &pod).await?;
            }
        }
        Action::Wait { reason } => {
            tracing::debug!(%reason, "waiting");
            return Ok(());
        }
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
                upgrade_patch(pod, step.state.as_ref(), targets, now).map_err(|source| {
                    ReconcileError::State {
                        pod: name.into(),
                        source,
                    }
                })?;
            let written = match ctx.patch_pod(ns, name, patch).await {
                Ok(written) => written,
                // Admission refused the image change (Pod Security checks it again, a
                // validating webhook or policy may deny it): asking again cannot help. The next
                // plan fails the target with the API server's words and undrains the pod. (A
                // failed `test` op is a conflict: re-read, not refused.)
                Err(kube::Error::Api(s))
                    if matches!(s.code, 400 | 403 | 422)
                        && !is_conflict(&kube::Error::Api(s.clone())) =>
                {
                    tracing::warn!(error = %s.message, "image patch refused");
                    for t in targets {
                        let refused = PullState::Refused {
                            reason: s.reason.clone(),
                            message: s.message.clone(),
                        };
                        ctx.pulls
                            .remember(&workload.key, refusal_key(&t.image), refused);
                    }
                    ctx.queue.enqueue(workload.key.clone());
                    return Ok(());
                }
                Err(source) => return Err(kube("upgrading")(source)),
            };
            // No Event here: the pod's one Event is `Upgraded` (or a warning), naming the
            // images, when it is done; the workload's status shows the pods in flight.
            ctx.written.remember(&workload.key, &written);
        }
        Action::Rollback { reason, message } => {
            let Some(state) = &step.state else {
                return Ok(());
            };
            let (patch, _) =
                rollback_patch(pod, state, reason, message, now).map_err(|source| {
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
            let Some(state) = &step.state else {
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
    tracing::debug!("written");
    Ok(())
}

/// Creates one pre-pull pod. One that exists already (an earlier reconcile made it, and the
/// cache has not shown it yet) is no error. A create the API server refuses for good (RBAC,
/// Pod Security, a quota, an invalid spec) is a failed pull: the rollout stops with the API
/// server's words rather than retrying forever; anything else is retried.
async fn create_prepull(
    ctx: &Context,
    workload: &WorkloadKey,
    key: PullKey,
    pod: &Pod,
) -> Result<(), ReconcileError> {
    match ctx.create_pod(pod).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(kube::Error::Api(s)) if matches!(s.code, 400 | 403 | 422) => {
            tracing::warn!(node = %key.node, image = %key.image, error = %s.message, "pre-pull pod refused");
            ctx.pulls.remember(
                workload,
                key,
                PullState::Failed {
                    reason: format!("pre-pull pod refused ({})", s.reason),
                    message: s.message.clone(),
                },
            );
            ctx.queue.enqueue(workload.clone());
            Ok(())
        }
        Err(source) => Err(ReconcileError::Kube {
            what: format!(
                "creating the pre-pull pod of {} on node {} for",
                key.image, key.node
            ),
            source,
        }),
    }
}

/// Deletes the workload's pre-pull pods that are done: their result is known (and now
/// remembered), or no pod waits for their pull any more (paused, failed, superseded).
async fn clean_up_prepulls(
    ctx: &Context,
    workload: &WorkloadKey,
    pods: &[super::pulls::SeenPrePull],
    plan: &Plan,
) -> Result<(), ReconcileError> {
    let done = pods.iter().filter(|p| {
        !p.terminating && (p.state != PullState::Pulling || !plan.pulls_wanted.contains(&p.key))
    });
    let results = join_all(done.map(|p| async move {
        tracing::debug!(pod = %p.name, node = %p.key.node, image = %p.key.image, "deleting pre-pull pod");
        ctx.delete_pod(&workload.namespace, &p.name)
            .await
            .map_err(|source| ReconcileError::Kube {
                what: format!("deleting pre-pull pod {}/{}", workload.namespace, p.name),
                source,
            })
    }))
    .await;
    results.into_iter().collect()
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
