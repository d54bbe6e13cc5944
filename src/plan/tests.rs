use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{
    Container, ContainerState as K8sState, ContainerStateRunning, ContainerStateWaiting,
    ContainerStatus, Pod, PodCondition, PodReadinessGate, PodSpec, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use proptest::prelude::*;

use super::*;
use crate::annotation;
use crate::patch::{NOT_UPGRADING_REASON, SERVING_REASON};
use crate::state::{ContainerBaseline, STATE_VERSION};
use crate::target::ContainerKind;
use crate::{READINESS_GATE, STATE_ANNOTATION};

const OLD: &str = "nginx:1";
const NEW: &str = "nginx:2";

fn ts(offset: i64) -> Timestamp {
    let t0: Timestamp = "2026-01-01T00:00:00Z".parse().expect("timestamp");
    t0.checked_add(SignedDuration::from_secs(offset))
        .expect("in range")
}

/// The app container's status.
#[derive(Debug, Clone)]
struct Ctr {
    id: String,
    restarts: i32,
    running: bool,
    ready: bool,
    started: i64,
    waiting: Option<&'static str>,
}

impl Ctr {
    fn up(id: &str, restarts: i32, started: i64) -> Self {
        Ctr {
            id: id.into(),
            restarts,
            running: true,
            ready: true,
            started,
            waiting: None,
        }
    }
}

#[derive(Debug, Clone)]
struct P {
    name: String,
    image: String,
    ready: bool,
    gated: bool,
    /// (status True?, reason, lastTransitionTime offset)
    gate: Option<(bool, &'static str, i64)>,
    state: Option<String>,
    terminating: bool,
    ctr: Ctr,
}

fn p(name: &str, image: &str, ready: bool) -> P {
    P {
        name: name.into(),
        image: image.into(),
        ready,
        gated: false,
        gate: None,
        state: None,
        terminating: false,
        ctr: Ctr {
            ready,
            ..Ctr::up(&format!("containerd://{name}-1"), 0, -1000)
        },
    }
}

fn patched_state(phase: Phase, patched_at: i64, id: &str, restarts: i32) -> String {
    PodUpgradeState {
        version: STATE_VERSION,
        phase,
        patched_at: ts(patched_at),
        finished_at: None,
        containers: vec![ContainerBaseline {
            name: "app".into(),
            kind: ContainerKind::Container,
            index: 0,
            previous_image: OLD.into(),
            target_image: NEW.into(),
            container_id: Some(id.into()),
            restart_count: restarts,
            image_id: None,
            was_running: true,
        }],
        readiness_gate: true,
        reason: (phase == Phase::RollingBack || phase.target_failed())
            .then(|| "CrashLoopBackOff".into()),
        message: None,
    }
    .to_json()
    .expect("json")
}

/// A record patched at `patched_at` and finished in `phase` at `finished_at`.
fn finished_state(phase: Phase, patched_at: i64, finished_at: i64) -> String {
    let from = if phase == Phase::RolledBack {
        Phase::RollingBack
    } else {
        Phase::Patched
    };
    PodUpgradeState::parse(&patched_state(from, patched_at, "x", 0))
        .expect("state")
        .finished(phase, None, None, ts(finished_at))
        .to_json()
        .expect("json")
}

/// Pod `name` patched to the new image 10 s ago, whose new container crash-loops.
fn crash_looping(name: &str) -> P {
    let mut failing = p(name, NEW, false);
    failing.state = Some(patched_state(
        Phase::Patched,
        -10,
        &format!("containerd://{name}-1"),
        0,
    ));
    failing.ctr = Ctr {
        waiting: Some("CrashLoopBackOff"),
        running: false,
        ready: false,
        ..Ctr::up(&format!("containerd://{name}-3"), 2, -5)
    };
    failing
}

fn build(p: &P) -> Pod {
    let mut pod = Pod::default();
    pod.metadata.name = Some(p.name.clone());
    if p.terminating {
        pod.metadata.deletion_timestamp = Some(Time(ts(-1)));
    }
    if let Some(state) = &p.state {
        pod.metadata.annotations = Some([(STATE_ANNOTATION.to_string(), state.clone())].into());
    }
    pod.spec = Some(PodSpec {
        containers: vec![Container {
            name: "app".into(),
            image: Some(p.image.clone()),
            ..Container::default()
        }],
        readiness_gates: p.gated.then(|| {
            vec![PodReadinessGate {
                condition_type: READINESS_GATE.into(),
            }]
        }),
        ..PodSpec::default()
    });
    let mut conditions = vec![PodCondition {
        type_: "Ready".into(),
        status: if p.ready { "True" } else { "False" }.into(),
        ..PodCondition::default()
    }];
    if let Some((status, reason, since)) = p.gate {
        conditions.push(PodCondition {
            type_: READINESS_GATE.into(),
            status: if status { "True" } else { "False" }.into(),
            reason: Some(reason.into()),
            last_transition_time: Some(Time(ts(since))),
            ..PodCondition::default()
        });
    }
    let c = &p.ctr;
    pod.status = Some(PodStatus {
        conditions: Some(conditions),
        container_statuses: Some(vec![ContainerStatus {
            name: "app".into(),
            container_id: Some(c.id.clone()),
            restart_count: c.restarts,
            ready: c.ready,
            image: p.image.clone(),
            image_id: "sha256:whatever".into(),
            state: Some(match c.waiting {
                Some(reason) => K8sState {
                    waiting: Some(ContainerStateWaiting {
                        reason: Some(reason.into()),
                        message: Some("back-off".into()),
                    }),
                    ..K8sState::default()
                },
                None if c.running => K8sState {
                    running: Some(ContainerStateRunning {
                        started_at: Some(Time(ts(c.started))),
                    }),
                    ..K8sState::default()
                },
                None => K8sState::default(),
            }),
            ..ContainerStatus::default()
        }]),
        ..PodStatus::default()
    });
    pod
}

struct World {
    targets: Vec<annotation::Target>,
    pods: Vec<Pod>,
    policy: InPlaceUpgradePolicySpec,
    desired: i32,
    paused: bool,
    failed: Vec<FailedTarget>,
    retry_since: Option<Timestamp>,
    pdbs: Vec<DisruptionBudget>,
    drained: BTreeSet<String>,
    drains: BTreeMap<String, DrainRecord>,
    events: crate::plan::PodEvents,
    pulls: crate::prepull::Pulls,
    istio_guard: Option<BTreeMap<String, String>>,
    now: Timestamp,
}

impl World {
    fn new(pods: &[P]) -> Self {
        World {
            targets: annotation::parse(&format!("app={NEW}")).expect("valid"),
            pods: pods.iter().map(build).collect(),
            policy: serde_yaml::from_str("namespaceSelector: {}").expect("policy"),
            desired: i32::try_from(pods.len()).expect("small"),
            paused: false,
            failed: Vec::new(),
            retry_since: None,
            pdbs: Vec::new(),
            drained: BTreeSet::new(),
            drains: BTreeMap::new(),
            events: Default::default(),
            pulls: Default::default(),
            istio_guard: None,
            now: ts(0),
        }
    }

    fn max_unavailable(mut self, n: i32) -> Self {
        self.policy.max_unavailable =
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(n);
        self
    }

    fn plan(&self) -> Plan {
        plan(&PlanInput {
            targets: &self.targets,
            pods: &self.pods,
            policy: &self.policy,
            desired_replicas: self.desired,
            paused: self.paused,
            failed_targets: &self.failed,
            retry_since: self.retry_since,
            disruption_budgets: &self.pdbs,
            endpoints_drained: &self.drained,
            drains: &self.drains,
            events: &self.events,
            pulls: &self.pulls,
            istio_guard: self.istio_guard.as_ref(),
            now: self.now,
        })
    }
}

fn summary(plan: &Plan) -> Vec<(String, String)> {
    plan.steps
        .iter()
        .map(|s| {
            let a = match &s.action {
                Action::PrePull { node, images } => format!("PrePull {node} {}", images.join(",")),
                Action::Drain => "Drain".to_string(),
                Action::Patch { targets } => format!(
                    "Patch {}",
                    targets
                        .iter()
                        .map(|t| format!("{}={}", t.location.name, t.image))
                        .collect::<Vec<_>>()
                        .join(",")
                ),
                Action::Wait { .. } => "Wait".into(),
                Action::Undrain => "Undrain".into(),
                Action::Rollback { reason, .. } => format!("Rollback {reason}"),
                Action::Finish {
                    phase,
                    open_gate: true,
                    ..
                } => format!("Undrain+Finish {phase:?}"),
                Action::Finish { phase, .. } => format!("Finish {phase:?}"),
                Action::MarkReady => "MarkReady".into(),
            };
            (s.pod.clone(), a)
        })
        .collect()
}

fn s(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

const PATCH: &str = "Patch app=nginx:2";

/// name, pods, maxUnavailable, expected steps, expected verdict.
type BudgetCase<'a> = (&'a str, &'a [P], i32, Vec<(String, String)>, Verdict);

#[test]
fn budget_table() {
    let five_ready: Vec<P> = ["a", "b", "c", "d", "e"]
        .iter()
        .map(|n| p(n, OLD, true))
        .collect();
    let mut one_down = five_ready.clone();
    one_down[2].ready = false;
    one_down[2].ctr.ready = false;
    let mut three_down = five_ready.clone();
    for i in [1, 3, 4] {
        three_down[i].ready = false;
    }
    let mut some_done = five_ready.clone();
    some_done[0].image = NEW.into();
    some_done[1].image = "docker.io/library/nginx:2".into();
    let mut terminating = five_ready.clone();
    terminating[0].terminating = true;
    let room_bound = [
        p("a", NEW, false),
        p("b", OLD, true),
        p("c", OLD, true),
        p("d", OLD, true),
    ];
    let all_new: Vec<P> = ["a", "b"].iter().map(|n| p(n, NEW, true)).collect();

    let cases: Vec<BudgetCase<'_>> = vec![
        (
            "one at a time",
            &five_ready,
            1,
            s(&[("a", PATCH)]),
            Verdict::Progressing,
        ),
        (
            "two at a time",
            &five_ready,
            2,
            s(&[("a", PATCH), ("b", PATCH)]),
            Verdict::Progressing,
        ),
        (
            "more room than pods",
            &five_ready[..2],
            5,
            s(&[("a", PATCH), ("b", PATCH)]),
            Verdict::Progressing,
        ),
        (
            "unavailable pod first, no budget left for a Ready one",
            &one_down,
            1,
            s(&[("c", PATCH)]),
            Verdict::Progressing,
        ),
        (
            "unavailable pod does not consume the budget twice",
            &one_down,
            2,
            s(&[("a", PATCH), ("c", PATCH)]),
            Verdict::Progressing,
        ),
        (
            "three unavailable, max 2: two of them, no Ready pod",
            &three_down,
            2,
            s(&[("b", PATCH), ("d", PATCH)]),
            Verdict::Progressing,
        ),
        (
            "three unavailable, max 4: all three and one Ready pod",
            &three_down,
            4,
            s(&[("a", PATCH), ("b", PATCH), ("d", PATCH), ("e", PATCH)]),
            Verdict::Progressing,
        ),
        (
            "already upgraded pods are skipped (normalised)",
            &some_done,
            1,
            s(&[("c", PATCH)]),
            Verdict::Progressing,
        ),
        (
            "terminating pods are skipped",
            &terminating,
            1,
            s(&[("b", PATCH)]),
            Verdict::Progressing,
        ),
        (
            "everything at target",
            &all_new,
            1,
            s(&[]),
            Verdict::Completed,
        ),
        (
            "an unavailable pod that needs nothing still uses room",
            &room_bound,
            2,
            s(&[("b", PATCH)]),
            Verdict::Progressing,
        ),
    ];
    for (name, pods, max, expected, verdict) in cases {
        let world = World::new(pods).max_unavailable(max);
        let plan = world.plan();
        assert_eq!(summary(&plan), expected, "{name}");
        assert_eq!(plan.verdict, verdict, "{name}");
        assert_eq!(
            world.plan(),
            plan,
            "{name}: planning again gives the same plan"
        );
    }
}

#[test]
fn percentage_max_unavailable() {
    let pods: Vec<P> = (0..10).map(|i| p(&format!("p{i}"), OLD, true)).collect();
    let mut world = World::new(&pods);
    world.policy.max_unavailable =
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String("25%".into());
    assert_eq!(world.plan().steps.len(), 2);
    world.policy.max_unavailable =
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String("5%".into());
    assert_eq!(world.plan().steps.len(), 1, "never 0");
    world.policy.max_unavailable =
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String("0%".into());
    let plan = world.plan();
    assert!(plan.steps.is_empty());
    assert!(
        matches!(plan.verdict, Verdict::Blocked { .. }),
        "{:?}",
        plan.verdict
    );
}

#[test]
fn pod_disruption_budgets() {
    let pods: Vec<P> = ["a", "b", "c"].iter().map(|n| p(n, OLD, true)).collect();
    let all: BTreeSet<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
    let mut world = World::new(&pods).max_unavailable(3);
    world.pdbs = vec![DisruptionBudget {
        name: "web".into(),
        disruptions_allowed: 0,
        pods: all.clone(),
    }];
    let plan = world.plan();
    assert!(plan.steps.is_empty());
    assert_eq!(
        plan.verdict,
        Verdict::Blocked {
            reason: "PodDisruptionBudget web allows no disruption now".into()
        }
    );
    world.pdbs[0].disruptions_allowed = 1;
    assert_eq!(summary(&world.plan()), s(&[("a", PATCH)]));
    // Two budgets: each start consumes one from every budget selecting the pod.
    world.pdbs = vec![
        DisruptionBudget {
            name: "all".into(),
            disruptions_allowed: 2,
            pods: all.clone(),
        },
        DisruptionBudget {
            name: "a-only".into(),
            disruptions_allowed: 0,
            pods: ["a".to_string()].into(),
        },
    ];
    assert_eq!(summary(&world.plan()), s(&[("b", PATCH), ("c", PATCH)]));
    // A pod that is already not Ready consumes no disruption.
    let mut world = World::new(&[p("a", OLD, false), p("b", OLD, true)]).max_unavailable(2);
    world.pdbs = vec![DisruptionBudget {
        name: "web".into(),
        disruptions_allowed: 0,
        pods: ["a".to_string(), "b".to_string()].into(),
    }];
    assert_eq!(summary(&world.plan()), s(&[("a", PATCH)]));
}

fn gated(mut pod: P) -> P {
    pod.gated = true;
    if pod.gate.is_none() {
        pod.gate = Some((true, NOT_UPGRADING_REASON, -5000));
    }
    pod
}

#[test]
fn drain_then_patch() {
    let a = gated(p("a", OLD, true));
    let world = World::new(&[a.clone(), gated(p("b", OLD, true))]);
    assert_eq!(summary(&world.plan()), s(&[("a", "Drain")]));
    // Drained 2s ago: the 5s grace period is not over (it ends 1s late: the condition's
    // time is truncated to the second).
    let mut drained = a.clone();
    drained.gate = Some((false, DRAINING_REASON, -2));
    drained.ready = false;
    let mut world = World::new(&[drained.clone(), gated(p("b", OLD, true))]);
    let plan = world.plan();
    assert_eq!(
        summary(&plan),
        s(&[("a", "Wait")]),
        "and b waits for the budget"
    );
    assert_eq!(plan.recheck_at, Some(ts(4)));
    // Grace over, endpoints still listing the pod: wait up to the timeout (60s).
    world.now = ts(10);
    let plan = world.plan();
    assert_eq!(summary(&plan), s(&[("a", "Wait")]));
    assert_eq!(plan.recheck_at, Some(ts(58)));
    world.drained.insert("a".into());
    assert_eq!(summary(&world.plan()), s(&[("a", PATCH)]));
    world.drained.clear();
    world.now = ts(58);
    assert_eq!(
        summary(&world.plan()),
        s(&[("a", PATCH)]),
        "timeout reached"
    );
    // Without waitForEndpoints only the grace period counts.
    let mut world = World::new(&[drained]);
    world.policy.drain.wait_for_endpoints = false;
    world.now = ts(3);
    assert_eq!(
        summary(&world.plan()),
        s(&[("a", "Wait")]),
        "5s after a drain in the second -2.x: not yet"
    );
    world.now = ts(4);
    assert_eq!(summary(&world.plan()), s(&[("a", PATCH)]));
}

/// `ts(0)` plus `us` microseconds.
fn at_us(us: i64) -> Timestamp {
    ts(0)
        .checked_add(SignedDuration::from_micros(us))
        .expect("in range")
}

/// One boundary of the drain timing, pod `a` drained by us with its condition's time `ts(0)`:
/// name; the grace period (s; timeout 60 s); our record (same pod UID?, the condition time it
/// wrote in s, the µs its write returned at); endpoints drained?; now (µs); `None`: patched
/// now, `Some(t)`: waits, planning again at `t` µs.
type DrainCase<'a> = (
    &'a str,
    i64,
    Option<(bool, i64, i64)>,
    bool,
    i64,
    Option<i64>,
);

#[test]
fn drain_grace_is_a_true_minimum_to_the_microsecond() {
    const S: i64 = 1_000_000;
    #[rustfmt::skip]
    let cases: [DrainCase; 17] = [
        ("record: 1 µs before the grace ends", 1, Some((true, 0, 400_000)), true, 1_399_999, Some(1_400_000)),
        ("record: the grace ends now", 1, Some((true, 0, 400_000)), true, 1_400_000, None),
        ("record late in the second: not rounded up", 1, Some((true, 0, 999_999)), true, 1_999_998, Some(1_999_999)),
        ("record late in the second: done", 1, Some((true, 0, 999_999)), true, 1_999_999, None),
        ("record early in the second: a second sooner than without", 1, Some((true, 0, 1_000)), true, S + 1_000, None),
        ("no record (a restart): the condition's second, rounded up", 1, None, true, 2 * S - 1, Some(2 * S)),
        ("no record: done", 1, None, true, 2 * S, None),
        ("a record of an earlier drain (another condition time)", 1, Some((true, -1, -500_000)), true, 1_500_000, Some(2 * S)),
        ("a record of another pod of the same name", 1, Some((false, 0, 100_000)), true, 1_500_000, Some(2 * S)),
        ("a record before its own second (a clock stepped back)", 1, Some((true, 0, -300_000)), true, S - 1, Some(S)),
        ("grace 0: the endpoints alone decide", 0, Some((true, 0, 400_000)), true, 0, None),
        ("grace 0 without a record", 0, None, true, 0, None),
        ("grace over, endpoints still list the pod: the timeout, from the record", 1, Some((true, 0, 400_000)), false, 1_400_000, Some(60 * S + 400_000)),
        ("the timeout 1 µs ahead", 1, Some((true, 0, 400_000)), false, 60 * S + 399_999, Some(60 * S + 400_000)),
        ("the timeout reached", 1, Some((true, 0, 400_000)), false, 60 * S + 400_000, None),
        // An upper bound: from the earliest the drain can have been, the condition's time.
        ("no record: the timeout from the condition's second", 1, None, false, 60 * S - 1, Some(60 * S)),
        ("no record: the timeout reached", 1, None, false, 60 * S, None),
    ];
    for (name, grace, record, endpoints_drained, now_us, wait_until_us) in cases {
        let mut a = gated(p("a", OLD, false));
        a.gate = Some((false, DRAINING_REASON, 0));
        let mut world = World::new(&[a]);
        world.pods[0].metadata.uid = Some("uid-a".into());
        world.policy.drain.grace_period_seconds = grace;
        if endpoints_drained {
            world.drained.insert("a".into());
        }
        if let Some((same_pod, condition_time, drained_at)) = record {
            let uid = if same_pod {
                "uid-a"
            } else {
                "uid-of-an-older-a"
            };
            world.drains.insert(
                "a".into(),
                DrainRecord {
                    uid: Some(uid.into()),
                    condition_time: ts(condition_time),
                    drained_at: at_us(drained_at),
                    slices: BTreeMap::new(),
                },
            );
        }
        world.now = at_us(now_us);
        let plan = world.plan();
        match wait_until_us {
            None => assert_eq!(summary(&plan), s(&[("a", PATCH)]), "{name}"),
            Some(until) => {
                assert_eq!(summary(&plan), s(&[("a", "Wait")]), "{name}");
                assert_eq!(plan.recheck_at, Some(at_us(until)), "{name}");
            }
        }
    }
}

#[test]
fn a_drain_record_applies_only_while_the_pod_shows_that_drain() {
    let record = DrainRecord {
        uid: Some("uid-a".into()),
        condition_time: ts(0),
        drained_at: at_us(300_000),
        slices: BTreeMap::new(),
    };
    let pod = |gate: Option<(bool, &'static str, i64)>, uid: &str| {
        let mut a = gated(p("a", OLD, false));
        a.gate = gate;
        let mut pod = build(&a);
        pod.metadata.uid = Some(uid.into());
        pod
    };
    assert!(record.applies_to(&pod(Some((false, DRAINING_REASON, 0)), "uid-a")));
    for (why, other) in [
        ("undrained", pod(Some((true, SERVING_REASON, 0)), "uid-a")),
        (
            "drained again later",
            pod(Some((false, DRAINING_REASON, 1)), "uid-a"),
        ),
        (
            "another pod of that name",
            pod(Some((false, DRAINING_REASON, 0)), "uid-b"),
        ),
        ("no condition", pod(None, "uid-a")),
    ] {
        assert!(!record.applies_to(&other), "{why}");
    }
}

#[test]
fn in_progress_pods_wait_finish_and_count_against_the_budget() {
    let mut waiting = gated(p("a", NEW, false));
    waiting.gate = Some((false, DRAINING_REASON, -30));
    waiting.state = Some(patched_state(Phase::Patched, -10, "containerd://a-1", 0));
    let world = World::new(&[waiting.clone(), gated(p("b", OLD, true))]);
    let plan = world.plan();
    assert_eq!(summary(&plan), s(&[("a", "Wait")]));
    assert_eq!(plan.verdict, Verdict::Progressing);
    assert_eq!(
        plan.recheck_at,
        Some(ts(291)),
        "ready timeout of 300s after the patch"
    );

    let mut upgraded = waiting.clone();
    upgraded.ctr = Ctr::up("containerd://a-2", 1, -5);
    let world = World::new(&[upgraded.clone(), gated(p("b", OLD, true))]);
    assert_eq!(
        summary(&world.plan()),
        s(&[("a", "Undrain+Finish Succeeded")]),
        "the gate opens in the same write that records success"
    );

    upgraded.gate = Some((true, SERVING_REASON, -1));
    upgraded.ready = true;
    let world = World::new(&[upgraded.clone(), gated(p("b", OLD, true))]);
    assert_eq!(summary(&world.plan()), s(&[("a", "Finish Succeeded")]));

    let mut done = upgraded.clone();
    done.state = Some(patched_state(Phase::Succeeded, -10, "containerd://a-1", 0));
    let world = World::new(&[done, gated(p("b", OLD, true))]);
    assert_eq!(summary(&world.plan()), s(&[("b", "Drain")]));
}

#[test]
fn failure_rolls_back_and_stops_the_workload() {
    let failing = crash_looping("a");
    let others = [p("b", OLD, true), p("c", OLD, false)];
    let mut pods = vec![failing.clone()];
    pods.extend(others.iter().cloned());
    let world = World::new(&pods).max_unavailable(3);
    let plan = world.plan();
    assert_eq!(summary(&plan), s(&[("a", "Rollback CrashLoopBackOff")]));
    assert_eq!(
        plan.verdict,
        Verdict::Failed {
            pod: "a".into(),
            reason: "CrashLoopBackOff: container \"app\": CrashLoopBackOff: back-off".into()
        }
    );
    let mut world = World::new(&pods).max_unavailable(3);
    world.policy.on_failure = OnFailure::Pause;
    assert_eq!(summary(&world.plan()), s(&[("a", "Finish Failed")]));

    // Rolled back and Ready again: finish as RolledBack; the workload stays Failed.
    let mut rolled = p("a", OLD, true);
    rolled.state = Some(patched_state(
        Phase::RollingBack,
        -10,
        "containerd://a-3",
        2,
    ));
    rolled.ctr = Ctr::up("containerd://a-4", 3, -5);
    let mut pods = vec![rolled.clone()];
    pods.extend(others.iter().cloned());
    let plan = World::new(&pods).max_unavailable(3).plan();
    assert_eq!(summary(&plan), s(&[("a", "Finish RolledBack")]));
    assert!(matches!(plan.verdict, Verdict::Failed { .. }));

    // After that, the same target is not retried on any pod.
    let mut after = rolled;
    after.state = Some(patched_state(Phase::RolledBack, -10, "containerd://a-3", 2));
    let mut pods = vec![after];
    pods.extend(others.iter().cloned());
    let plan = World::new(&pods).max_unavailable(3).plan();
    assert_eq!(summary(&plan), s(&[]));
    assert!(matches!(plan.verdict, Verdict::Failed { ref pod, .. } if pod == "a"));
}

#[test]
fn paused_failure_waits_for_unpause_to_roll_back() {
    let mut failing = p("a", NEW, false);
    failing.state = Some(patched_state(Phase::Patched, -10, "containerd://a-1", 0));
    failing.ctr = Ctr {
        waiting: Some("ImagePullBackOff"),
        running: false,
        ready: false,
        ..Ctr::up("containerd://a-1", 0, -50)
    };
    let mut world = World::new(&[failing]);
    world.paused = true;
    let plan = world.plan();
    assert_eq!(summary(&plan), s(&[("a", "Wait")]));
    assert_eq!(plan.verdict, Verdict::Paused);
    world.paused = false;
    assert_eq!(
        summary(&world.plan()),
        s(&[("a", "Rollback ImagePullBackOff")])
    );
}

#[test]
fn retry_lifts_a_pods_own_failure_record() {
    let mut rolled = p("a", OLD, true);
    rolled.state = Some(finished_state(Phase::RolledBack, -100, -50));
    let mut world = World::new(&[rolled]);
    assert_eq!(summary(&world.plan()), s(&[]));
    world.retry_since = Some(ts(-120));
    assert_eq!(
        summary(&world.plan()),
        s(&[]),
        "a retry older than the failed attempt does not count"
    );
    // Asked while the rollback (patched at -100) was still finishing: the user saw the
    // failure, so the retry counts once the rollback is done.
    world.retry_since = Some(ts(-60));
    assert_eq!(summary(&world.plan()), s(&[("a", PATCH)]));
    world.retry_since = Some(ts(-10));
    assert_eq!(summary(&world.plan()), s(&[("a", PATCH)]));
}

#[test]
fn a_new_pod_patched_directly_is_admitted_when_upgraded() {
    let mut pod = gated(p("a", NEW, false));
    pod.gate = None;
    pod.state = Some(patched_state(Phase::Patched, -10, "containerd://a-1", 0));
    pod.ctr = Ctr::up("containerd://a-2", 1, -5);
    // The gate condition is created True in the write that records success.
    assert_eq!(
        summary(&World::new(&[pod]).plan()),
        s(&[("a", "Undrain+Finish Succeeded")])
    );
}

#[test]
fn failed_targets_memory_blocks_every_pod() {
    let mut world = World::new(&[p("a", OLD, true), gated(p("b", OLD, true))]);
    world.failed = vec![FailedTarget {
        container: "app".into(),
        image: "docker.io/library/nginx:2".into(),
        message: None,
    }];
    let plan = world.plan();
    assert_eq!(summary(&plan), s(&[]));
    assert!(matches!(plan.verdict, Verdict::Failed { .. }));
    // A different target is allowed again.
    world.targets = annotation::parse("app=nginx:3").expect("valid");
    assert_eq!(summary(&world.plan()), s(&[("a", "Patch app=nginx:3")]));
}

/// Execution writes from what the planner read: each step carries the pod's parsed record,
/// and the status counts come with the plan.
#[test]
fn steps_carry_the_record_read_and_the_plan_counts_the_pods() {
    let failing = crash_looping("a");
    let mut done = p("b", NEW, true);
    done.state = Some(finished_state(Phase::Succeeded, -100, -50));
    let ungated_old = p("c", OLD, true);
    let gone = P {
        terminating: true,
        ..p("d", OLD, true)
    };
    let new_pod = gated(p("e", OLD, true));
    let world = World::new(&[failing.clone(), done, ungated_old, gone, new_pod]).max_unavailable(3);
    let plan = world.plan();
    assert_eq!(summary(&plan), s(&[("a", "Rollback CrashLoopBackOff")]));
    let rollback = &plan.steps[0];
    assert_eq!(
        rollback.state,
        failing
            .state
            .as_deref()
            .map(|j| PodUpgradeState::parse(j).expect("state"))
    );
    // a (in flight), b (done), c, e; d terminates.
    assert_eq!(
        plan.counts,
        Counts {
            targeted: 4,
            upgraded: 1,
            ungated: 3,
        }
    );
    // The failing pod's record is what the workload remembers.
    assert_eq!(
        plan.failed_targets,
        [FailedTarget {
            container: "app".into(),
            image: NEW.into(),
            message: None,
        }]
    );
    // Paused, the failure is not a verdict and nothing is remembered yet.
    let mut world = world;
    world.paused = true;
    assert!(world.plan().failed_targets.is_empty());
}

/// A failure known before the last retry request is forgiven: not remembered again.
#[test]
fn a_failure_from_before_the_retry_is_not_remembered_again() {
    let mut rolled = p("a", OLD, true);
    rolled.state = Some(finished_state(Phase::RolledBack, -100, -50));
    let mut world = World::new(&[rolled]);
    let plan = world.plan();
    assert!(matches!(plan.verdict, Verdict::Failed { .. }));
    assert_eq!(plan.failed_targets.len(), 1);
    world.retry_since = Some(ts(-120));
    assert_eq!(
        world.plan().failed_targets.len(),
        1,
        "a retry older than the attempt"
    );
    world.retry_since = Some(ts(-60));
    assert!(world.plan().failed_targets.is_empty());
}

#[test]
fn pause_stops_starts_but_never_leaves_pods_drained() {
    let mut drained = gated(p("a", OLD, false));
    drained.gate = Some((false, DRAINING_REASON, -100));
    let mut new_pod = gated(p("b", NEW, false));
    new_pod.gate = None;
    let mut world = World::new(&[drained, new_pod, p("c", OLD, true)]);
    world.paused = true;
    let plan = world.plan();
    assert_eq!(summary(&plan), s(&[("a", "Undrain"), ("b", "MarkReady")]));
    assert_eq!(plan.verdict, Verdict::Paused);
}

#[test]
fn new_gated_pods_are_marked_ready() {
    let mut new_at_target = gated(p("a", NEW, false));
    new_at_target.gate = None;
    let mut new_old = gated(p("b", OLD, false));
    new_old.gate = None;
    let mut new_old2 = gated(p("c", OLD, false));
    new_old2.gate = None;
    let world = World::new(&[new_at_target, new_old, new_old2]);
    // b is patched (not Ready: no drain needed); c waits for its turn, admitted meanwhile.
    assert_eq!(
        summary(&world.plan()),
        s(&[("a", "MarkReady"), ("b", PATCH), ("c", "MarkReady")])
    );
}

#[test]
fn policy_denials_block() {
    let mut world = World::new(&[p("a", OLD, true)]);
    world.policy.containers = vec!["istio-proxy".into()];
    let plan = world.plan();
    assert!(plan.steps.is_empty());
    assert_eq!(
        plan.verdict,
        Verdict::Blocked {
            reason: "pod a: container \"app\" may not be changed in place: it is not in the governing policy's containers [\"istio-proxy\"]".into()
        }
    );
    let mut world = World::new(&[p("a", OLD, true)]);
    world.policy.allowed_images = vec!["docker.io/library/nginx:1.*".into()];
    let plan = world.plan();
    assert!(
        matches!(plan.verdict, Verdict::Blocked { ref reason } if reason.contains("allowedImages")),
        "{:?}",
        plan.verdict
    );
    // A run-to-completion init container target blocks with the reason.
    let mut world = World::new(&[p("a", OLD, true)]);
    if let Some(spec) = world.pods[0].spec.as_mut() {
        spec.init_containers = Some(vec![Container {
            name: "init".into(),
            image: Some("busybox".into()),
            ..Container::default()
        }]);
    }
    world.targets = annotation::parse("init=busybox:2").expect("valid");
    assert!(
        matches!(world.plan().verdict, Verdict::Blocked { ref reason } if reason.contains("run-to-completion"))
    );
}

#[test]
fn annotation_change_mid_rollout_replans_toward_the_newest_target() {
    let mut waiting = p("a", NEW, false);
    waiting.state = Some(patched_state(Phase::Patched, -10, "containerd://a-1", 0));
    let mut world = World::new(&[waiting, p("b", OLD, true)]);
    world.targets = annotation::parse("app=nginx:3").expect("valid");
    assert_eq!(summary(&world.plan()), s(&[("a", "Patch app=nginx:3")]));
}

#[test]
fn someone_else_changing_the_image_supersedes_our_record() {
    let mut changed = p("a", "nginx:9", true);
    changed.state = Some(patched_state(Phase::Patched, -10, "containerd://a-1", 0));
    let world = World::new(&[changed]);
    assert_eq!(summary(&world.plan()), s(&[("a", "Finish Superseded")]));
}

#[test]
fn malformed_state_is_foreign_and_re_derived() {
    let mut odd = p("a", OLD, true);
    odd.state = Some("{not json".into());
    assert_eq!(summary(&World::new(&[odd]).plan()), s(&[("a", PATCH)]));
}

#[test]
fn ready_timeout_fails_the_pod() {
    let mut slow = p("a", NEW, false);
    slow.state = Some(patched_state(Phase::Patched, -400, "containerd://a-1", 0));
    slow.ctr = Ctr {
        ready: false,
        ..Ctr::up("containerd://a-2", 1, -390)
    };
    let plan = World::new(&[slow]).plan();
    assert_eq!(summary(&plan), s(&[("a", "Rollback ReadyTimeout")]));
}

// ---- properties ----

fn arb_pod(i: usize) -> impl Strategy<Value = P> {
    // Weighted toward plain pods that are candidates, so budgets are actually exercised.
    (
        prop::bool::weighted(0.3), // image at target
        prop::bool::weighted(0.7), // ready
        prop::bool::weighted(0.1), // terminating
        any::<bool>(),             // gated
        prop_oneof![4 => Just(0u8), 3 => Just(1u8), 1 => Just(2u8), 1 => Just(3u8)],
        prop_oneof![12 => Just(0u8), 2 => Just(1u8), 1 => Just(2u8), 2 => Just(3u8), 1 => Just(4u8), 1 => Just(5u8), 1 => Just(6u8)],
        prop_oneof![4 => Just(0u8), 2 => Just(1u8), 1 => Just(2u8), 1 => Just(3u8)],
        -400i64..10, // times
    )
        .prop_map(move |(at_target, ready, terminating, gated, gate, state, ctr, t)| {
            let name = format!("pod-{i}");
                let mut pod = p(&name, if at_target { NEW } else { OLD }, ready);
                pod.terminating = terminating;
                pod.gated = gated;
                pod.gate = match gate {
                    0 => None,
                    1 => Some((true, SERVING_REASON, t)),
                    2 => Some((false, DRAINING_REASON, t)),
                    _ => Some((false, "SomethingElse", t)),
                };
                pod.state = match state {
                    0 => None,
                    1 => Some(patched_state(
                        Phase::Patched,
                        t,
                        &format!("containerd://{name}-1"),
                        0,
                    )),
                    2 => Some(patched_state(
                        Phase::RollingBack,
                        t,
                        &format!("containerd://{name}-1"),
                        0,
                    )),
                    3 => Some(patched_state(Phase::Succeeded, t, "x", 0)),
                    4 => Some(patched_state(Phase::RolledBack, t, "x", 0)),
                    5 => Some("garbage".into()),
                    _ => Some(patched_state(Phase::Failed, t, "x", 0)),
                };
                pod.ctr = match ctr {
                    0 => pod.ctr.clone(),
                    1 => Ctr::up(&format!("containerd://{name}-2"), 1, t + 1),
                    2 => Ctr {
                        waiting: Some("ImagePullBackOff"),
                        running: false,
                        ready: false,
                        ..Ctr::up(&format!("containerd://{name}-1"), 0, t)
                    },
                    _ => Ctr {
                        ready: false,
                        ..Ctr::up(&format!("containerd://{name}-2"), 1, t + 1)
                    },
                };
                pod
            },
        )
}

/// pods, maxUnavailable, PodDisruptionBudgets (allowed, membership per pod), paused.
type ArbWorld = (Vec<P>, i32, Vec<(i32, Vec<bool>)>, bool);

fn arb_world() -> impl Strategy<Value = ArbWorld> {
    (0usize..10).prop_flat_map(|n| {
        let pods: Vec<_> = (0..n).map(arb_pod).collect();
        (
            pods,
            1i32..5,
            proptest::collection::vec(
                (-1i32..3, proptest::collection::vec(any::<bool>(), n)),
                0..3,
            ),
            prop::bool::weighted(0.2),
        )
    })
}

fn in_progress_or_unavailable(pod: &Pod) -> (bool, bool) {
    let ready = pod_ready(pod);
    let drained =
        gate_condition(pod).is_some_and(|g| !g.ready && g.reason == Some(DRAINING_REASON));
    let active = PodUpgradeState::from_pod(pod)
        .ok()
        .flatten()
        .is_some_and(|s| s.phase.in_progress());
    (drained || active, !ready || drained || active)
}

proptest! {
    // The repository's top level is fixed, so no proptest-regressions/ directory: a failing
        // case found here becomes a table test.
        #![proptest_config(ProptestConfig {
            cases: 1500,
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

    #[test]
    fn plans_respect_every_budget((pods, max, pdbs, paused) in arb_world()) {
        let mut world = World::new(&pods).max_unavailable(max);
        world.paused = paused;
        world.now = ts(20);
        world.pdbs = pdbs
            .iter()
            .enumerate()
            .map(|(i, (allowed, members))| DisruptionBudget {
                name: format!("pdb-{i}"),
                disruptions_allowed: *allowed,
                pods: members
                    .iter()
                    .enumerate()
                    .filter(|(_, m)| **m)
                    .map(|(j, _)| format!("pod-{j}"))
                    .collect(),
            })
            .collect();
        let plan = world.plan();
        prop_assert_eq!(&world.plan(), &plan, "planning is deterministic");

        let max = usize::try_from(max).unwrap_or(0);
        let mut names = BTreeSet::new();
        let live: Vec<&Pod> = world.pods.iter().filter(|p| p.metadata.deletion_timestamp.is_none()).collect();
        let mut in_progress = BTreeSet::new();
        let mut unavailable = BTreeSet::new();
        for pod in &live {
            let name = pod.metadata.name.clone().unwrap_or_default();
            let (active, down) = in_progress_or_unavailable(pod);
            if active { in_progress.insert(name.clone()); }
            if down { unavailable.insert(name); }
        }
        let mut started_ready = BTreeSet::new();
        for step in &plan.steps {
            prop_assert!(names.insert(step.pod.clone()), "pod {} got two steps", step.pod);
            let pod = world.pods.iter().find(|p| p.metadata.name.as_deref() == Some(&step.pod));
            prop_assert!(pod.is_some_and(|p| p.metadata.deletion_timestamp.is_none()), "step for a terminating or unknown pod");
            if step.action.starts_upgrade() {
                prop_assert!(!paused, "nothing starts while paused");
                if !unavailable.contains(&step.pod) {
                    started_ready.insert(step.pod.clone());
                }
                in_progress.insert(step.pod.clone());
            }
            if matches!(step.action, Action::Rollback { .. }) {
                prop_assert!(!paused);
            }
        }
        let unavailable_before = unavailable.len();
        let in_progress_before = live.iter().filter(|p| in_progress_or_unavailable(p).0).count();
        prop_assert!(
            unavailable_before + started_ready.len() <= max.max(unavailable_before),
            "unavailable {} + started Ready {} > maxUnavailable {}", unavailable_before, started_ready.len(), max
        );
        prop_assert!(
            in_progress.len() <= max.max(in_progress_before),
            "in progress {} > maxUnavailable {} (was {})", in_progress.len(), max, in_progress_before
        );
        for pdb in &world.pdbs {
            let used = started_ready.iter().filter(|p| pdb.pods.contains(*p)).count();
            prop_assert!(
                used <= usize::try_from(pdb.disruptions_allowed.max(0)).unwrap_or(0),
                "{} disruptions of {} with {} allowed", used, pdb.name, pdb.disruptions_allowed
            );
        }
    }

    #[test]
    fn planning_arbitrary_pods_never_panics(pod_json in proptest::collection::vec(any::<u8>(), 0..64), n in 0usize..4) {
        // Pods built from arbitrary bytes where they parse at all, plus odd annotation values.
        let mut pods = Vec::new();
        if let Ok(pod) = serde_json::from_slice::<Pod>(&pod_json) {
            pods.push(pod);
        }
        for i in 0..n {
            let mut pod = build(&p(&format!("x{i}"), OLD, i % 2 == 0));
            pod.metadata.annotations = Some([(STATE_ANNOTATION.to_string(), String::from_utf8_lossy(&pod_json).into_owned())].into());
            pods.push(pod);
        }
        let mut world = World::new(&[]);
        world.pods = pods;
        let _ = world.plan();
    }
}

/// Pods on nodes: `(pod, node)`.
fn on_nodes(world: &mut World, nodes: &[(&str, &str)]) {
    for pod in &mut world.pods {
        let name = pod.metadata.name.clone().unwrap_or_default();
        if let Some((_, node)) = nodes.iter().find(|(p, _)| *p == name) {
            pod.spec.as_mut().expect("spec").node_name = Some(node.to_string());
        }
    }
}

fn pull(node: &str) -> crate::prepull::PullKey {
    crate::prepull::PullKey {
        node: node.into(),
        image: NEW.into(),
    }
}

#[test]
fn the_image_is_pulled_onto_the_node_before_the_drain() {
    use crate::prepull::PullState;
    let mut world = World::new(&[gated(p("a", OLD, true)), gated(p("b", OLD, true))]);
    on_nodes(&mut world, &[("a", "n1"), ("b", "n1")]);
    let plan = world.plan();
    assert_eq!(summary(&plan), s(&[("a", "PrePull n1 nginx:2")]));
    assert_eq!(plan.pulls_wanted, [pull("n1")].into());
    assert_eq!(plan.verdict, Verdict::Progressing);
    world.pulls.insert(pull("n1"), PullState::Pulling);
    let plan = world.plan();
    assert_eq!(
        summary(&plan),
        s(&[("a", "Wait")]),
        "b waits for the budget"
    );
    assert_eq!(
        plan.pulls_wanted,
        [pull("n1")].into(),
        "the pull in flight is kept"
    );
    world.pulls.insert(pull("n1"), PullState::Pulled);
    let plan = world.plan();
    assert_eq!(summary(&plan), s(&[("a", "Drain")]));
    assert!(plan.pulls_wanted.is_empty(), "the done pull's pod goes");
    // Another pod on the same node reuses the pull; one on another node pulls there.
    let mut world = World::new(&[gated(p("c", OLD, true)), gated(p("d", OLD, true))]);
    on_nodes(&mut world, &[("c", "n1"), ("d", "n2")]);
    world.policy.max_unavailable =
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(2);
    world.pulls.insert(pull("n1"), PullState::Pulled);
    assert_eq!(
        summary(&world.plan()),
        s(&[("c", "Drain"), ("d", "PrePull n2 nginx:2")])
    );
}

#[test]
fn pre_pull_covers_pods_patched_without_a_drain_and_skips_pods_without_a_node() {
    let mut world = World::new(&[p("a", OLD, false), p("b", OLD, true)]);
    world.policy.max_unavailable =
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(2);
    on_nodes(&mut world, &[("a", "n1")]);
    assert_eq!(
        summary(&world.plan()),
        s(&[("a", "PrePull n1 nginx:2"), ("b", PATCH)]),
        "a not-Ready pod pulls first too; an unscheduled one has no node to pull onto"
    );
}

#[test]
fn a_failed_pull_stops_the_workload_before_any_drain() {
    use crate::prepull::PullState;
    let mut world = World::new(&[gated(p("a", OLD, true)), gated(p("b", OLD, true))]);
    on_nodes(&mut world, &[("a", "n1"), ("b", "n2")]);
    world.pulls.insert(
        pull("n1"),
        PullState::Failed {
            reason: "ErrImagePull".into(),
            message: "failed to resolve reference \"nginx:2\": not found".into(),
        },
    );
    let plan = world.plan();
    assert_eq!(summary(&plan), s(&[]), "nothing drained, nothing pulled");
    let Verdict::Failed { pod, reason } = &plan.verdict else {
        panic!("{:?}", plan.verdict)
    };
    assert_eq!(pod, "a");
    assert!(
        reason.contains("nginx:2") && reason.contains("n1") && reason.contains("not found"),
        "{reason}"
    );
    assert_eq!(plan.failed_targets.len(), 1);
    assert_eq!(plan.failed_targets[0].image, NEW);
    assert!(plan.failed_targets[0].message.is_some());
    assert!(plan.pulls_wanted.is_empty());
    // The memory of it stops the next reconcile the same way, with the same words.
    world.pulls.clear();
    world.failed = plan.failed_targets.clone();
    let again = world.plan();
    assert_eq!(summary(&again), s(&[]));
    let Verdict::Failed { reason, .. } = &again.verdict else {
        panic!("{:?}", again.verdict)
    };
    assert!(reason.contains("not found"), "{reason}");
    // A pod drained before the failure was seen is undrained.
    let mut drained = gated(p("b", OLD, false));
    drained.gate = Some((false, DRAINING_REASON, -2));
    let mut world = World::new(&[gated(p("a", OLD, true)), drained]);
    on_nodes(&mut world, &[("a", "n1"), ("b", "n2")]);
    world.pulls.insert(
        pull("n1"),
        PullState::Failed {
            reason: "ErrImagePull".into(),
            message: "not found".into(),
        },
    );
    assert_eq!(summary(&world.plan()), s(&[("b", "Undrain")]));
}

#[test]
fn pre_pull_off_drains_at_once_and_a_denied_image_is_never_pulled() {
    let mut world = World::new(&[gated(p("a", OLD, true))]);
    on_nodes(&mut world, &[("a", "n1")]);
    world.policy.pre_pull.enabled = false;
    assert_eq!(summary(&world.plan()), s(&[("a", "Drain")]));
    world.policy.pre_pull.enabled = true;
    world.policy.allowed_images = vec!["docker.io/library/nginx:1".into()];
    let plan = world.plan();
    assert_eq!(
        summary(&plan),
        s(&[]),
        "the allowlist is checked before any pull"
    );
    assert!(
        matches!(plan.verdict, Verdict::Blocked { .. }),
        "{:?}",
        plan.verdict
    );
    assert!(plan.pulls_wanted.is_empty());
}

#[test]
fn held_pods_pull_nothing() {
    let mut world = World::new(&[gated(p("a", OLD, true))]);
    on_nodes(&mut world, &[("a", "n1")]);
    let mut plan = world.plan();
    plan.hold_new_pods();
    assert!(plan.steps.is_empty() && plan.pulls_wanted.is_empty());
}

/// The Istio revision guard (crate::istio) in the planner: a pod whose injected container
/// (here `app`, as its `sidecar.istio.io/status` says) was injected by another revision than
/// its Namespace asks for is held back with the reason, the others roll; alone it blocks the
/// workload; with the guard off (the policy's `istioRevisionGuard: false`) it rolls too.
#[test]
fn istio_revision_guard_holds_pods_injected_by_another_revision() {
    let injected_by = |pod: &mut Pod, revision: &str| {
        pod.metadata.annotations.get_or_insert_default().insert(
            crate::istio::STATUS_ANNOTATION.into(),
            format!(r#"{{"initContainers":null,"containers":["app"],"revision":"{revision}"}}"#),
        );
    };
    let pods: Vec<P> = ["a", "b", "c"].iter().map(|n| p(n, OLD, true)).collect();
    let mut world = World::new(&pods).max_unavailable(3);
    injected_by(&mut world.pods[0], "canary");
    injected_by(&mut world.pods[1], "default");
    // c: not injected by Istio, nothing to guard.
    world.istio_guard = Some(BTreeMap::from([("istio.io/rev".into(), "canary".into())]));
    let plan = world.plan();
    assert_eq!(
        summary(&plan),
        s(&[
            ("a", &format!("Patch app={NEW}")),
            ("c", &format!("Patch app={NEW}"))
        ])
    );
    assert_eq!(plan.verdict, Verdict::Progressing);
    let why = plan.held.get("b").expect("b is held");
    assert!(
        why.starts_with("IstioRevisionMismatch: app was injected by Istio revision \"default\" but the Namespace label istio.io/rev asks for \"canary\""),
        "{why}"
    );

    // Alone, the held pod blocks the workload, with the reason.
    world.pods.remove(2);
    world.pods.remove(0);
    let plan = world.plan();
    assert!(plan.steps.is_empty(), "{:?}", plan.steps);
    assert_eq!(
        plan.verdict,
        Verdict::Blocked {
            reason: format!("pod b: {why}")
        }
    );
    // Back within one revision: it rolls.
    world.istio_guard = Some(BTreeMap::from([(
        "istio-injection".into(),
        "enabled".into(),
    )]));
    assert_eq!(
        summary(&world.plan()),
        s(&[("b", &format!("Patch app={NEW}"))])
    );
    // Guard off: it rolls across revisions too.
    world.istio_guard = None;
    assert_eq!(
        summary(&world.plan()),
        s(&[("b", &format!("Patch app={NEW}"))])
    );
    assert!(world.plan().held.is_empty());
}

/// An image patch the API server refused (Pod Security admission checks an image change
/// again): the workload fails with the API server's words, the pod that was drained for it is
/// undrained, and no other pod starts — on any node, with or without pre-pull.
#[test]
fn a_refused_image_patch_fails_the_workload_and_undrains_the_pod() {
    use crate::prepull::{PullState, refusal_key};
    let mut drained = gated(p("a", OLD, false));
    drained.gate = Some((false, DRAINING_REASON, -2));
    let mut world = World::new(&[drained, gated(p("b", OLD, true))]);
    on_nodes(&mut world, &[("a", "n1"), ("b", "n2")]);
    world.policy.pre_pull.enabled = false;
    world.pulls.insert(
        refusal_key(NEW),
        PullState::Refused {
            reason: "Forbidden".into(),
            message: "violates PodSecurity \"restricted:latest\"".into(),
        },
    );
    let plan = world.plan();
    assert_eq!(summary(&plan), s(&[("a", "Undrain")]), "b never starts");
    let Verdict::Failed { pod, reason } = &plan.verdict else {
        panic!("{:?}", plan.verdict)
    };
    assert_eq!(pod, "a");
    assert!(
        reason.contains(NEW) && reason.contains("Forbidden") && reason.contains("PodSecurity"),
        "{reason}"
    );
    assert_eq!(plan.failed_targets.len(), 1);
    assert_eq!(plan.failed_targets[0].image, NEW);
    // Remembered in the status from then on: the next plan stops the same way.
    world.pulls.clear();
    world.failed = plan.failed_targets.clone();
    let again = world.plan();
    assert_eq!(summary(&again), s(&[("a", "Undrain")]));
    assert!(
        matches!(again.verdict, Verdict::Failed { .. }),
        "{:?}",
        again.verdict
    );
}
