//! The planner: from a workload's pods and its policy, the next step for each pod that needs
//! one, and a verdict for the workload. Pure and level-triggered: it reads only its input, so
//! calling it again on the same state gives the same plan, and a controller restarted at any
//! point resumes from what the API shows.
//!
//! Rules, in the order they apply:
//! - terminating pods are ignored;
//! - a pod with an upgrade in progress (state `Patched`/`RollingBack`) is classified: it waits,
//!   is undrained and finished when its containers are upgraded (or rolled back), is rolled
//!   back (or left, with `onFailure: Pause`) when they failed, and is re-patched toward the
//!   newest target when the annotation changed mid-rollout;
//! - a pod already at its targets (normalised comparison) needs nothing, except being undrained
//!   if we drained it, or marked ready if it is a new gated pod;
//! - a target that failed before (workload memory, or this pod's own `RolledBack`/`Failed`
//!   record for the same image) is not started again;
//! - a target the policy does not allow (container, image glob) blocks that pod;
//! - any failure, or a pause, stops the workload: no new pod is started and pods we drained
//!   but did not patch are undrained;
//! - otherwise new pods start, pods that are already not Ready first (they do not reduce
//!   availability, so they use no `maxUnavailable` room), never more in progress at once than
//!   `maxUnavailable`, never more unavailable pods than `maxUnavailable`, and a Ready pod only
//!   when every PodDisruptionBudget selecting it still allows a disruption (each start
//!   consumes one from each). A Ready gated pod is drained first; others are patched directly;
//! - new gated pods whose condition is missing and that are not started now are marked ready,
//!   so a pod never waits for its turn unready.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::{SignedDuration, Timestamp};

use crate::READINESS_GATE;
use crate::annotation::Target;
use crate::classify::{ContainerState, Expectation, classify};
use crate::image::same_image;
use crate::patch::DRAINING_REASON;
use crate::policy::{ImageAllowlist, InPlaceUpgradePolicySpec, OnFailure};
use crate::prepull::{PullKey, PullState, Pulls};
use crate::state::{Phase, PodUpgradeState};
use crate::target::{self, ResolvedTarget};

pub mod inputs;

/// A PodDisruptionBudget as the planner needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DisruptionBudget {
    pub name: String,
    /// `status.disruptionsAllowed`.
    pub disruptions_allowed: i32,
    /// Names of the workload's pods it selects.
    pub pods: BTreeSet<String>,
}

/// A drain this controller made, timed to the microsecond. The gate condition's
/// `lastTransitionTime` has one-second resolution: alone it says only that the drain happened
/// within that second, so a grace period timed from it must add a second to stay a minimum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrainRecord {
    /// The drained pod's UID: a record never applies to another pod of the same name.
    pub uid: Option<String>,
    /// The `lastTransitionTime` the drain wrote: the record applies only while the condition
    /// still shows that drain.
    pub condition_time: Timestamp,
    /// When the drain write had returned: the API server had persisted it by then.
    pub drained_at: Timestamp,
    /// The EndpointSlices (name → resourceVersion) that listed the pod, in any condition,
    /// when it was drained (read just before the write): those versions predate the drain,
    /// so they cannot show that it reached the load balancers (see
    /// [`crate::plan::inputs::endpoints_drained`]).
    pub slices: BTreeMap<String, String>,
}

impl DrainRecord {
    /// Whether `pod` still shows the drain this record is about: the same pod, its gate
    /// condition still False with our reason and the time the drain wrote.
    pub fn applies_to(&self, pod: &Pod) -> bool {
        self.uid == pod.metadata.uid
            && gate_condition(pod).is_some_and(|g| {
                !g.ready
                    && g.reason == Some(DRAINING_REASON)
                    && g.since == Some(self.condition_time)
            })
    }
}

/// A target that failed in a workload: it is not started again there (nor, under a Namespace
/// annotation, in the namespace's other workloads) until the annotation changes or the user
/// asks for a retry. The one record of it: the workload's status keeps it (`failedTargets`),
/// the planner and the webhook read it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FailedTarget {
    pub container: String,
    pub image: String,
    /// Why, when the failure left no pod record that says it (a pre-pull that failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl FailedTarget {
    /// Whether this is the record of `container` moving to `image` (images compared in
    /// docker's normalised form).
    pub fn is(&self, container: &str, image: &str) -> bool {
        self.container == container && same_image(&self.image, image)
    }
}

#[derive(Debug, Clone, Copy)]
pub struct PlanInput<'a> {
    /// The effective targets (see [`crate::target::effective_targets`]).
    pub targets: &'a [Target],
    /// The workload's pods (all of them, terminating ones included).
    pub pods: &'a [Pod],
    pub policy: &'a InPlaceUpgradePolicySpec,
    /// The workload's desired replicas (for a percentage `maxUnavailable`).
    pub desired_replicas: i32,
    /// Paused by annotation or by any matching policy.
    pub paused: bool,
    pub failed_targets: &'a [FailedTarget],
    /// When the user last asked for a retry (`inplace-upgrade.io/retry`): a pod's own failure
    /// record whose last patch (the rollback, or the failed upgrade under `onFailure: Pause`)
    /// came before it no longer blocks the same target. (The controller also
    /// clears `failed_targets` on a retry.)
    pub retry_since: Option<Timestamp>,
    pub disruption_budgets: &'a [DisruptionBudget],
    /// Pods whose IP is no longer ready in any EndpointSlice (the controller's view).
    pub endpoints_drained: &'a BTreeSet<String>,
    /// The drains this controller made, by pod name, to time grace periods to the
    /// microsecond. A drain without a record that applies (after a restart, or by another
    /// replica) is timed from its condition's `lastTransitionTime`, rounded up to the next
    /// second: a restart may lengthen a grace period, never shorten it.
    pub drains: &'a BTreeMap<String, DrainRecord>,
    /// kubelet's Warning Events of pods with an upgrade in flight, by pod UID (see
    /// [`crate::classify::ContainerEvent`]): how a native sidecar that shows no waiting reason
    /// is seen failing.
    pub events: &'a PodEvents,
    /// What is known of the pulls of target images onto the pods' nodes (pre-pull before
    /// drain, [`crate::prepull`]); empty for a dry run.
    pub pulls: &'a Pulls,
    /// The Istio revision guard ([`crate::istio`]): the labels of the workload's Namespace
    /// when it is on, `None` when the policy turns it off.
    pub istio_guard: Option<&'a BTreeMap<String, String>>,
    pub now: Timestamp,
}

/// Events by pod UID.
pub type PodEvents = std::collections::HashMap<String, Vec<crate::classify::ContainerEvent>>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Create a pre-pull pod on `node` for each of `images` (none of which is known on the
    /// node yet): the pod is drained or patched once every target image is pulled there.
    PrePull { node: String, images: Vec<String> },
    /// Set the readiness gate condition False (reason `Draining`).
    Drain,
    /// Apply [`crate::patch::upgrade_patch`] for these targets.
    Patch { targets: Vec<ResolvedTarget> },
    /// Nothing to write; the reason says what we wait for.
    Wait { reason: String },
    /// Set the readiness gate condition True.
    Undrain,
    /// Apply [`crate::patch::rollback_patch`].
    Rollback { reason: String, message: String },
    /// Record a terminal phase in the state annotation ([`crate::patch::state_patch`]);
    /// with `open_gate`, set the readiness gate condition True in the same write (a pod
    /// whose upgrade or rollback is done and that we drained: one write instead of two).
    Finish {
        phase: Phase,
        reason: Option<String>,
        message: Option<String>,
        open_gate: bool,
    },
    /// Set the readiness gate condition True on a new pod that has none.
    MarkReady,
}

impl Action {
    /// Whether this step takes a pod into an upgrade (costs availability).
    pub fn starts_upgrade(&self) -> bool {
        matches!(self, Action::Drain | Action::Patch { .. })
    }

    /// Whether this step is the first of a new pod's upgrade: its pre-pull, or the drain or
    /// patch that follows it. Held back together when no rollout slot is free.
    pub fn starts_pod(&self) -> bool {
        self.starts_upgrade() || matches!(self, Action::PrePull { .. })
    }

    /// The step's name, for logs and traces.
    pub fn name(&self) -> &'static str {
        match self {
            Action::PrePull { .. } => "pre-pull",
            Action::Drain => "drain",
            Action::Patch { .. } => "patch",
            Action::Wait { .. } => "wait",
            Action::Undrain => "undrain",
            Action::Rollback { .. } => "rollback",
            Action::Finish { .. } => "finish",
            Action::MarkReady => "mark-ready",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub pod: String,
    pub action: Action,
    /// The pod's state annotation as the planner read it (`None`: none, or one it does not
    /// read: malformed or newer), so that executing the step does not parse it again.
    pub state: Option<PodUpgradeState>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Progressing,
    /// Every pod runs its targets and nothing is in progress.
    Completed,
    /// Pods need an upgrade that cannot start (policy, resolution, PodDisruptionBudget).
    Blocked {
        reason: String,
    },
    /// An upgrade failed; nothing new starts.
    Failed {
        pod: String,
        reason: String,
    },
    Paused,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// At most one step per pod, ordered by pod name.
    pub steps: Vec<Step>,
    pub verdict: Verdict,
    /// When to plan again if nothing changes before (a drain grace period or a ready timeout
    /// runs out).
    pub recheck_at: Option<Timestamp>,
    /// The pods the targets apply to, as the workload's status counts them.
    pub counts: Counts,
    /// With a `Failed` verdict: the targets the failing pod's record shows failed, for the
    /// workload's memory (none when that failure was forgiven by a retry request).
    pub failed_targets: Vec<FailedTarget>,
    /// The pulls this plan waits for or starts: a pre-pull pod for any other pull (its result
    /// known, or no pod waiting for it) is deleted.
    pub pulls_wanted: BTreeSet<PullKey>,
    /// Pods that need an upgrade the policy or the Istio revision guard holds back, with why
    /// (the `Blocked` verdict joins these once nothing else moves).
    pub held: BTreeMap<String, String>,
}

impl Plan {
    /// Drops the steps that would take new pods into an upgrade: they are held back (the
    /// workload's own rollout is not done, or no rollout slot is free); every other step, for
    /// pods in flight or to release, stands.
    pub fn hold_new_pods(&mut self) {
        self.steps.retain(|s| !s.action.starts_pod());
        self.pulls_wanted.clear();
    }
}

/// The workload's pods as its status counts them: those (not terminating) the targets apply
/// to, those of them that run every target with no upgrade in flight, and those without our
/// readiness gate (they cannot be drained).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub targeted: u32,
    pub upgraded: u32,
    pub ungated: u32,
}

/// Our readiness-gate condition as the planner reads it.
pub(crate) struct Gate<'p> {
    pub(crate) ready: bool,
    pub(crate) reason: Option<&'p str>,
    pub(crate) since: Option<Timestamp>,
}

/// A pod that may start an upgrade, waiting for a rollout slot.
struct Candidate<'p> {
    name: &'p str,
    node: Option<&'p str>,
    pending: Vec<ResolvedTarget>,
    ready: bool,
    gated: bool,
    gate_missing: bool,
}

/// Our readiness gate on one pod, as the steps that open it need it.
#[derive(Clone, Copy)]
struct GateState {
    gated: bool,
    /// Gated, and the condition was never written (a new pod).
    missing: bool,
    /// Gated, and the condition is not True. Only we write it: any gate that is not True
    /// when we are done with the pod is set True (Undrain), or created True (MarkReady).
    not_true: bool,
    /// The condition is False with our `Draining` reason.
    drained_by_us: bool,
}

impl GateState {
    fn of(pod: &Pod, gated: bool) -> Self {
        let gate = gate_condition(pod);
        GateState {
            gated,
            missing: gated && gate.is_none(),
            not_true: gated && !gate.as_ref().is_some_and(|g| g.ready),
            drained_by_us: gate
                .as_ref()
                .is_some_and(|g| !g.ready && g.reason == Some(DRAINING_REASON)),
        }
    }

    /// Whether the gate must be opened when we are done with the pod.
    fn to_open(self) -> bool {
        self.not_true || self.drained_by_us
    }

    /// The step that opens the gate, when it must be opened.
    fn open(self) -> Option<Action> {
        let open = if self.missing {
            Action::MarkReady
        } else {
            Action::Undrain
        };
        self.to_open().then_some(open)
    }
}

/// The planner's state while it walks a workload's pods once, in name order, then decides
/// which of them start.
struct Planner<'a> {
    input: &'a PlanInput<'a>,
    ready_timeout: Duration,
    /// `maxUnavailable` as a pod count and the image allowlist; `None` when the policy's
    /// values are unusable (the workload is then blocked).
    limits: Option<(usize, ImageAllowlist)>,
    steps: Vec<Step>,
    recheck_at: Option<Timestamp>,
    pulls_wanted: BTreeSet<PullKey>,
    /// Why pods cannot go on (the `Blocked` verdict's reasons).
    blocked: Vec<String>,
    held: BTreeMap<String, String>,
    /// The first failure found: the pod, why, and what to remember as failed.
    failure: Option<(String, String, Vec<FailedTarget>)>,
    /// Pods taken by an upgrade (a record in progress, or drained by us).
    in_progress: usize,
    /// Pods not available: not Ready, or taken by an upgrade.
    unavailable: usize,
    /// Pods that still need an upgrade (in progress included).
    pending_pods: usize,
    counts: Counts,
    /// In-flight pods whose annotation moved on: patched again toward the newer targets.
    replans: Vec<(&'a str, Vec<ResolvedTarget>)>,
    /// Pods we drained and have not patched yet, with whether their drain is done.
    drained: Vec<(&'a str, Vec<ResolvedTarget>, bool)>,
    candidates: Vec<Candidate<'a>>,
    /// Every record read, handed to the steps at the end (execution does not parse them again).
    states: HashMap<&'a str, PodUpgradeState>,
}

pub fn plan(input: &PlanInput<'_>) -> Plan {
    let mut p = Planner::new(input);
    let mut pods: Vec<(&str, &Pod)> = input
        .pods
        .iter()
        .filter_map(|pod| pod.metadata.name.as_deref().map(|n| (n, pod)))
        .collect();
    pods.sort_by_key(|(name, _)| *name);
    let mut seen = HashSet::new();
    for (name, pod) in pods {
        // A duplicated name would get two steps; the first copy wins.
        if seen.insert(name) && pod.metadata.deletion_timestamp.is_none() {
            p.visit(name, pod);
        }
    }
    let stop = input.paused || p.failure.is_some() || p.limits.is_none();
    p.go_on(stop);
    let (started, pdb_blocked) = if stop {
        (0, BTreeSet::new())
    } else {
        p.start_pods()
    };
    for c in std::mem::take(&mut p.candidates) {
        if c.gate_missing {
            p.step(c.name, Action::MarkReady);
        }
    }
    p.finish(started, pdb_blocked)
}

impl<'a> Planner<'a> {
    fn new(input: &'a PlanInput<'a>) -> Self {
        let policy = input.policy;
        let mut blocked = Vec::new();
        let limits = match (
            policy.max_unavailable_pods(input.desired_replicas),
            policy.image_allowlist(),
        ) {
            (Ok(max), Ok(allow)) => Some((usize::try_from(max).unwrap_or(usize::MAX), allow)),
            (Err(e), _) | (_, Err(e)) => {
                blocked.push(e.to_string());
                None
            }
        };
        Planner {
            input,
            ready_timeout: Duration::from_secs(
                u64::try_from(policy.ready_timeout_seconds)
                    .unwrap_or(1)
                    .max(1),
            ),
            limits,
            steps: Vec::new(),
            recheck_at: None,
            pulls_wanted: BTreeSet::new(),
            blocked,
            held: BTreeMap::new(),
            failure: None,
            in_progress: 0,
            unavailable: 0,
            pending_pods: 0,
            counts: Counts::default(),
            replans: Vec::new(),
            drained: Vec::new(),
            candidates: Vec::new(),
            states: HashMap::new(),
        }
    }

    fn step(&mut self, pod: &str, action: Action) {
        self.steps.push(Step {
            pod: pod.to_string(),
            action,
            state: None,
        });
    }

    fn recheck(&mut self, at: Option<Timestamp>) {
        if let Some(at) = at.filter(|at| *at > self.input.now) {
            self.recheck_at = Some(self.recheck_at.map_or(at, |r| r.min(at)));
        }
    }

    /// Remembers the first failure of the workload.
    fn fail(&mut self, pod: &str, reason: String, remember: Vec<FailedTarget>) {
        if self.failure.is_none() {
            self.failure = Some((pod.to_string(), reason, remember));
        }
    }

    /// Remembers the first failure of the workload, found on a pod with this record.
    fn fail_pod(&mut self, pod: &str, state: Option<&PodUpgradeState>, reason: String) {
        if self.failure.is_none() {
            let remember = failed_targets(state, self.input.retry_since);
            self.fail(pod, reason, remember);
        }
    }

    /// A pod that no longer needs us: undrain what we drained, admit a new gated pod.
    fn release(&mut self, pod: &str, gate: GateState) {
        if let Some(open) = gate.open() {
            self.step(pod, open);
        }
    }

    /// One live pod: counted, and followed if its upgrade is in flight, or else weighed as a
    /// pod that may start.
    fn visit(&mut self, name: &'a str, pod: &'a Pod) {
        let Some(spec) = pod.spec.as_ref() else {
            return;
        };
        let gated = spec
            .readiness_gates
            .iter()
            .flatten()
            .any(|g| g.condition_type == READINESS_GATE);
        let gate = GateState::of(pod, gated);
        // A malformed or newer record is foreign: re-derive from the pod itself.
        let state = PodUpgradeState::from_pod(pod).ok().flatten();
        let active = state.as_ref().filter(|s| s.phase.in_progress());
        let ready = pod_ready(pod);
        if !ready || gate.drained_by_us || active.is_some() {
            self.unavailable += 1;
        }
        if gate.drained_by_us || active.is_some() {
            self.in_progress += 1;
        }
        let resolved = target::resolve(spec, self.input.targets);
        if let Ok(r) = &resolved
            && !r.resolved.is_empty()
        {
            self.counts.targeted += 1;
            self.counts.upgraded += u32::from(active.is_none() && r.pending().next().is_none());
            self.counts.ungated += u32::from(!gated);
        }
        if let Some(st) = active {
            self.pending_pods += 1;
            self.follow(name, pod, st, gate);
        } else {
            match resolved {
                Ok(resolved) => {
                    let pending = resolved.pending().cloned().collect();
                    self.weigh(name, pod, state.as_ref(), pending, gate, ready);
                }
                Err(e) => {
                    self.blocked.push(format!("pod {name}: {e}"));
                    self.release(name, gate);
                }
            }
        }
        if let Some(state) = state {
            self.states.insert(name, state);
        }
    }

    /// A pod whose upgrade is in flight: finished, rolled back, re-planned or waited for, by
    /// what its containers show.
    fn follow(&mut self, name: &'a str, pod: &Pod, st: &PodUpgradeState, gate: GateState) {
        let input = self.input;
        let events = pod
            .metadata
            .uid
            .as_ref()
            .and_then(|uid| input.events.get(uid))
            .map_or(&[][..], Vec::as_slice);
        let states = st.containers.iter().map(|c| {
            let expect = Expectation {
                baseline: c,
                image: c.expected_image(st.phase),
                patched_at: st.patched_at,
                ready_timeout: self.ready_timeout,
                events,
            };
            classify(pod, &expect, input.now)
        });
        let newer = || {
            pod.spec
                .as_ref()
                .map(|spec| newer_targets(spec, input.targets))
                .unwrap_or_default()
        };
        // Only a pod that ends well (upgraded, or back on its old image) has its gate opened;
        // a failed or superseded one is left as it is.
        let finish = |phase: Phase, reason: Option<String>, message: Option<String>| {
            let open_gate = matches!(phase, Phase::Succeeded | Phase::RolledBack) && gate.to_open();
            Action::Finish {
                phase,
                reason,
                message,
                open_gate,
            }
        };
        match (st.phase, ContainerState::worst(states)) {
            (_, ContainerState::Superseded { spec_image }) => {
                // Not ours any more: what happens to the pod next is planned afresh.
                let message = format!(
                    "the image was changed to {spec_image:?} by someone else during the upgrade"
                );
                let action = finish(Phase::Superseded, Some("Superseded".into()), Some(message));
                self.step(name, action);
            }
            (Phase::Patched, ContainerState::Upgraded) => match newer() {
                newer if newer.is_empty() => self.step(name, finish(Phase::Succeeded, None, None)),
                newer => self.replans.push((name, newer)),
            },
            (_, ContainerState::Upgraded) => {
                self.fail_pod(name, Some(st), rolled_back_reason(st));
                self.step(name, finish(Phase::RolledBack, None, None));
            }
            (Phase::Patched, ContainerState::Failed { reason, message }) => {
                let why = format!("{}: {message}", reason.as_str());
                self.fail_pod(name, Some(st), why);
                let reason = reason.as_str();
                let action = match input.policy.on_failure {
                    // An emergency stop changes no image, not even back: the rollback happens
                    // when the workload is unpaused.
                    OnFailure::Rollback if input.paused => Action::Wait {
                        reason: format!(
                            "failed ({reason}); the rollback waits until the workload is unpaused"
                        ),
                    },
                    OnFailure::Rollback => Action::Rollback {
                        reason: reason.into(),
                        message,
                    },
                    OnFailure::Pause => finish(Phase::Failed, Some(reason.into()), Some(message)),
                };
                self.step(name, action);
            }
            (_, ContainerState::Failed { reason, message }) => {
                let message = format!("the rollback failed too: {}: {message}", reason.as_str());
                self.fail_pod(name, Some(st), message.clone());
                let action = finish(Phase::Failed, Some("RollbackFailed".into()), Some(message));
                self.step(name, action);
            }
            (phase, waiting) => {
                let newer = if phase == Phase::Patched {
                    newer()
                } else {
                    Vec::new()
                };
                if newer.is_empty() {
                    let reason = waiting.describe();
                    self.step(name, Action::Wait { reason });
                    self.recheck(timeout_at(st.patched_at, self.ready_timeout));
                } else {
                    self.replans.push((name, newer));
                }
            }
        }
    }

    /// A pod with no upgrade in flight: released when it needs nothing or may not go on,
    /// followed through its drain, or else a candidate to start.
    fn weigh(
        &mut self,
        name: &'a str,
        pod: &'a Pod,
        state: Option<&PodUpgradeState>,
        pending: Vec<ResolvedTarget>,
        gate: GateState,
        ready: bool,
    ) {
        let input = self.input;
        if pending.is_empty() {
            self.release(name, gate);
            return;
        }
        self.pending_pods += 1;
        if let Some(why) = known_failure(&pending, input, state) {
            self.fail_pod(name, state, why);
            self.release(name, gate);
            return;
        }
        let denial = self
            .limits
            .as_ref()
            .and_then(|(_, allow)| policy_denial(&pending, input.policy, allow))
            .or_else(|| {
                let containers = pending.iter().map(|t| t.location.name.as_str());
                input
                    .istio_guard
                    .and_then(|ns_labels| crate::istio::check(pod, ns_labels, containers))
                    .map(|m| m.to_string())
            });
        if let Some(why) = denial {
            self.blocked.push(format!("pod {name}: {why}"));
            self.held.insert(name.to_string(), why);
            self.release(name, gate);
            return;
        }
        let node = pod.spec.as_ref().and_then(|s| s.node_name.as_deref());
        // Also for a pod we drained: it is undrained, never left waiting for a patch that the
        // API server refuses each time.
        let refused = patch_refusal(input, &pending).or_else(|| {
            if gate.drained_by_us {
                None
            } else {
                pull_failure(input, node, &pending)
            }
        });
        if let Some((why, remember)) = refused {
            self.fail(name, why, remember);
            self.release(name, gate);
            return;
        }
        if gate.drained_by_us {
            let since = gate_condition(pod).and_then(|g| g.since);
            let record = input.drains.get(name).filter(|r| r.applies_to(pod));
            let (done, next) = drain_done(input, name, drain_time(since, record));
            self.recheck(next);
            self.drained.push((name, pending, done));
            return;
        }
        self.candidates.push(Candidate {
            name,
            node,
            pending,
            ready,
            gated: gate.gated,
            gate_missing: gate.missing,
        });
    }

    /// Pods already taken go on (re-patched toward a newer target, patched once drained), or
    /// are let go when the workload stops.
    fn go_on(&mut self, stop: bool) {
        for (name, newer) in std::mem::take(&mut self.replans) {
            let action = if stop {
                Action::Wait {
                    reason: "the annotation changed; the new target waits until the workload may continue".into(),
                }
            } else {
                Action::Patch { targets: newer }
            };
            self.step(name, action);
        }
        for (name, pending, done) in std::mem::take(&mut self.drained) {
            let action = if stop {
                Action::Undrain
            } else if done {
                Action::Patch { targets: pending }
            } else {
                Action::Wait {
                    reason: "draining: waiting for the grace period and the EndpointSlices".into(),
                }
            };
            self.step(name, action);
        }
    }

    /// Starts the candidates the budgets allow: not Ready pods first, never more in progress
    /// than `maxUnavailable`, never more unavailable, and a Ready pod only while every
    /// PodDisruptionBudget selecting it allows a disruption. Returns how many started and the
    /// budgets that held a pod back; the candidates left stay in `self.candidates`.
    fn start_pods(&mut self) -> (usize, BTreeSet<String>) {
        let input = self.input;
        let Some(max) = self.limits.as_ref().map(|(max, _)| *max) else {
            return (0, BTreeSet::new());
        };
        let mut slots = max.saturating_sub(self.in_progress);
        let mut room = max.saturating_sub(self.unavailable);
        let mut pdb_left: Vec<i32> = input
            .disruption_budgets
            .iter()
            .map(|b| b.disruptions_allowed)
            .collect();
        let mut pdb_blocked = BTreeSet::new();
        let mut started = 0;
        let mut candidates = std::mem::take(&mut self.candidates);
        // Not Ready pods first; the sort is stable, so by name within each group.
        candidates.sort_by_key(|c| c.ready);
        for c in candidates {
            if slots == 0 || (c.ready && room == 0) {
                self.candidates.push(c);
                continue;
            }
            if c.ready {
                let selecting: Vec<usize> = input
                    .disruption_budgets
                    .iter()
                    .enumerate()
                    .filter(|(_, b)| b.pods.contains(c.name))
                    .map(|(i, _)| i)
                    .collect();
                let exhausted: Vec<&String> = selecting
                    .iter()
                    .filter(|&&i| pdb_left[i] <= 0)
                    .map(|&i| &input.disruption_budgets[i].name)
                    .collect();
                if !exhausted.is_empty() {
                    pdb_blocked.extend(exhausted.into_iter().cloned());
                    self.candidates.push(c);
                    continue;
                }
                for i in selecting {
                    pdb_left[i] -= 1;
                }
                room -= 1;
            }
            slots -= 1;
            started += 1;
            let action = if let Some(pull) = self.pre_pull(c.node, &c.pending) {
                pull
            } else if c.ready && c.gated {
                Action::Drain
            } else {
                Action::Patch { targets: c.pending }
            };
            self.step(c.name, action);
        }
        (started, pdb_blocked)
    }

    /// Before a pod on `node` starts: what its target images still need there (a pre-pull
    /// pod, or waiting for one), or `None` when every one is on the node (or pre-pull is off,
    /// or the pod has no node: nothing to pull onto).
    fn pre_pull(&mut self, node: Option<&str>, pending: &[ResolvedTarget]) -> Option<Action> {
        let node = node.filter(|_| self.input.policy.pre_pull.enabled)?;
        let mut missing: Vec<String> = Vec::new();
        let mut pulling: Vec<&str> = Vec::new();
        for t in pending {
            let key = PullKey {
                node: node.to_string(),
                image: t.image.clone(),
            };
            match self.input.pulls.get(&key) {
                Some(PullState::Pulled) => continue,
                Some(PullState::Pulling) => pulling.push(&t.image),
                // Failures stop the workload before any pod starts (`pull_failure`,
                // `patch_refusal`).
                Some(PullState::Failed { .. } | PullState::Refused { .. }) | None => {
                    if !missing.contains(&t.image) {
                        missing.push(t.image.clone());
                    }
                }
            }
            self.pulls_wanted.insert(key);
        }
        if !missing.is_empty() {
            Some(Action::PrePull {
                node: node.to_string(),
                images: missing,
            })
        } else if !pulling.is_empty() {
            Some(Action::Wait {
                reason: format!("pulling {} onto node {node}", pulling.join(", ")),
            })
        } else {
            None
        }
    }

    /// The verdict, and the plan with each step carrying its pod's parsed record.
    fn finish(mut self, started: usize, pdb_blocked: BTreeSet<String>) -> Plan {
        let mut failed_targets = Vec::new();
        let verdict = if self.input.paused {
            Verdict::Paused
        } else if let Some((pod, reason, remember)) = self.failure {
            failed_targets = remember;
            Verdict::Failed { pod, reason }
        } else if self.limits.is_none() {
            Verdict::Blocked {
                reason: self.blocked.join("; "),
            }
        } else if self.pending_pods == 0 && self.blocked.is_empty() {
            Verdict::Completed
        } else if started == 0
            && self.in_progress == 0
            && (!self.blocked.is_empty() || !pdb_blocked.is_empty())
        {
            let mut reasons = self.blocked;
            if !pdb_blocked.is_empty() {
                reasons.push(format!(
                    "PodDisruptionBudget {} allows no disruption now",
                    pdb_blocked.into_iter().collect::<Vec<_>>().join(", ")
                ));
            }
            Verdict::Blocked {
                reason: reasons.join("; "),
            }
        } else {
            Verdict::Progressing
        };
        self.steps.sort_by(|a, b| a.pod.cmp(&b.pod));
        for step in &mut self.steps {
            step.state = self.states.remove(step.pod.as_str());
        }
        Plan {
            steps: self.steps,
            verdict,
            recheck_at: self.recheck_at,
            counts: self.counts,
            failed_targets,
            pulls_wanted: self.pulls_wanted,
            held: self.held,
        }
    }
}

/// What a failing pod's record says failed, for the workload's memory. A failure known before
/// the last retry request (its rollback, or its `Pause`, was recorded by then) is forgiven, not
/// remembered again — as [`known_failure`] forgives it. A pod still `Patched` is a fresh attempt
/// failing now. (Phases are compared, not only times: recorded times are truncated to the
/// second.)
fn failed_targets(
    state: Option<&PodUpgradeState>,
    retry_since: Option<Timestamp>,
) -> Vec<FailedTarget> {
    let Some(state) = state else {
        return Vec::new();
    };
    if retry_since.is_some_and(|r| state.phase != Phase::Patched && state.patched_at <= r) {
        return Vec::new();
    }
    state
        .containers
        .iter()
        .map(|c| FailedTarget {
            container: c.name.clone(),
            image: c.target_image.clone(),
            message: None,
        })
        .collect()
}

fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .is_some_and(|c| c.status == "True")
}

/// Our readiness gate's condition on `pod`, if it has one.
pub(crate) fn gate_condition(pod: &Pod) -> Option<Gate<'_>> {
    let c = pod
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == READINESS_GATE)?;
    Some(Gate {
        ready: c.status == "True",
        reason: c.reason.as_deref(),
        since: c.last_transition_time.as_ref().map(|t| t.0),
    })
}

/// Targets that differ from what an in-progress pod's spec now asks for: the annotation
/// changed mid-rollout. Errors resolve to "no newer target" (the pod finishes what it does).
fn newer_targets(
    spec: &k8s_openapi::api::core::v1::PodSpec,
    targets: &[Target],
) -> Vec<ResolvedTarget> {
    target::resolve(spec, targets)
        .map(|r| r.pending().cloned().collect())
        .unwrap_or_default()
}

fn rolled_back_reason(st: &PodUpgradeState) -> String {
    format!(
        "rolled back after {}: {}",
        st.reason.as_deref().unwrap_or("a failure"),
        st.message.as_deref().unwrap_or("")
    )
}

fn known_failure(
    pending: &[ResolvedTarget],
    input: &PlanInput<'_>,
    state: Option<&PodUpgradeState>,
) -> Option<String> {
    let failed = input.failed_targets;
    // The failure was known from the moment its rollback (the record's last patch) started:
    // a retry asked after that forgives it, even if the rollback finished later.
    let retried = |s: &PodUpgradeState| input.retry_since.is_some_and(|r| s.patched_at <= r);
    for t in pending {
        let name = &t.location.name;
        if let Some(f) = failed.iter().find(|f| f.is(name, &t.image)) {
            let why = f
                .message
                .as_deref()
                .map(|m| format!(" ({m})"))
                .unwrap_or_default();
            return Some(format!(
                "target {name}={} failed before{why}; change the annotation or ask for a retry",
                t.image
            ));
        }
        if let Some(st) = state.filter(|s| s.phase.target_failed() && !retried(s))
            && let Some(c) = st.container(name)
            && same_image(&c.target_image, &t.image)
        {
            return Some(format!(
                "target {name}={} failed on this pod ({}); change the annotation or ask for a retry",
                t.image,
                st.reason.as_deref().unwrap_or("no reason recorded")
            ));
        }
    }
    None
}

/// A pull of one of the pod's target images onto its node that failed: the reason for the
/// workload, and the failed targets to remember (with kubelet's message, which no pod record
/// keeps).
fn pull_failure(
    input: &PlanInput<'_>,
    node: Option<&str>,
    pending: &[ResolvedTarget],
) -> Option<(String, Vec<FailedTarget>)> {
    let node = node.filter(|_| input.policy.pre_pull.enabled)?;
    pending.iter().find_map(|t| {
        let key = PullKey {
            node: node.to_string(),
            image: t.image.clone(),
        };
        let Some(PullState::Failed { reason, message }) = input.pulls.get(&key) else {
            return None;
        };
        let why = format!(
            "pre-pull of {} onto node {node} failed, no pod was drained: {reason}: {message}",
            t.image
        );
        let failed = failed_with_image(pending, &t.image, &why);
        Some((why, failed))
    })
}

/// The pending targets that move to `image`, remembered as failed with `why`: one failed pull
/// or refused patch of an image fails every container that was to run it.
fn failed_with_image(pending: &[ResolvedTarget], image: &str, why: &str) -> Vec<FailedTarget> {
    pending
        .iter()
        .filter(|o| o.image == image)
        .map(|o| FailedTarget {
            container: o.location.name.clone(),
            image: o.image.clone(),
            message: Some(why.to_string()),
        })
        .collect()
}

/// An image patch of one of the pod's targets that the API server refused (admission, e.g. Pod
/// Security): the reason for the workload, and the failed targets to remember.
fn patch_refusal(
    input: &PlanInput<'_>,
    pending: &[ResolvedTarget],
) -> Option<(String, Vec<FailedTarget>)> {
    pending.iter().find_map(|t| {
        let Some(PullState::Refused { reason, message }) =
            input.pulls.get(&crate::prepull::refusal_key(&t.image))
        else {
            return None;
        };
        let why = format!(
            "the API server refused to patch {} into the pod ({reason}): {message}",
            t.image
        );
        let failed = failed_with_image(pending, &t.image, &why);
        Some((why, failed))
    })
}

fn policy_denial(
    pending: &[ResolvedTarget],
    policy: &InPlaceUpgradePolicySpec,
    allow: &ImageAllowlist,
) -> Option<String> {
    pending
        .iter()
        .find_map(|t| policy.check_target(allow, &t.location.name, &t.image).err())
        .map(|e| e.to_string())
}

fn timeout_at(start: Timestamp, timeout: Duration) -> Option<Timestamp> {
    let timeout = SignedDuration::try_from(timeout).ok()?;
    start
        .checked_add(timeout)
        .ok()?
        .checked_add(SignedDuration::from_secs(1))
        .ok()
}

/// When a drain happened, as closely as we know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DrainTime {
    earliest: Timestamp,
    latest: Timestamp,
}

/// Our record times the drain exactly. Without one, the condition's `lastTransitionTime`
/// (the second in which the drain write was sent, truncated) says only that it happened
/// within that second. `None` when the condition has no time at all.
fn drain_time(since: Option<Timestamp>, record: Option<&DrainRecord>) -> Option<DrainTime> {
    let since = since?;
    Some(match record {
        // Never before the second the condition names (a clock that stepped back).
        Some(r) => {
            let at = r.drained_at.max(since);
            DrainTime {
                earliest: at,
                latest: at,
            }
        }
        None => DrainTime {
            earliest: since,
            latest: since
                .checked_add(SignedDuration::from_secs(1))
                .unwrap_or(since),
        },
    })
}

/// Whether a drain may proceed to the patch, and when to look again. The grace period is a
/// minimum, so it counts from the latest moment the drain may have happened; the timeout on
/// the EndpointSlice wait is an upper bound, so it counts from the earliest.
fn drain_done(
    input: &PlanInput<'_>,
    name: &str,
    drained: Option<DrainTime>,
) -> (bool, Option<Timestamp>) {
    let drain = &input.policy.drain;
    // We always set lastTransitionTime; without it the drain cannot be timed, so do not hold
    // the pod drained forever.
    let Some(drained) = drained else {
        return (true, None);
    };
    let after = |from: Timestamp, secs: i64| from.checked_add(SignedDuration::from_secs(secs)).ok();
    if drain.grace_period_seconds > 0
        && let Some(until) = after(drained.latest, drain.grace_period_seconds)
        && input.now < until
    {
        return (false, Some(until));
    }
    let timeout_at = after(drained.earliest, drain.timeout_seconds);
    let endpoints_ok = !drain.wait_for_endpoints
        || input.endpoints_drained.contains(name)
        || timeout_at.is_none_or(|t| input.now >= t);
    if endpoints_ok {
        (true, None)
    } else {
        (false, timeout_at)
    }
}

#[cfg(test)]
mod tests;
