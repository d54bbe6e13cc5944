//! Where a patched container is, from the pod's status and the baseline recorded at the patch.
//!
//! We never decide by comparing tag strings or by `imageID`: retagging the same digest keeps
//! `imageID`, and good→bad→good returns to an `imageID` seen before. The proof that the
//! container runs the new spec is a **new containerID** that started after the patch (its
//! `restartCount` went up, or `state.running.startedAt` is at or after the patch time), while
//! the spec at the recorded index still asks for the expected image — kubelet only ever starts
//! containers from the current spec.

use std::time::Duration;

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use k8s_openapi::jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::image::{ImageRef, same_image};
use crate::state::ContainerBaseline;
use crate::target::ContainerKind;

/// Why an upgrade (or rollback) of a container failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FailureReason {
    ErrImagePull,
    ImagePullBackOff,
    InvalidImageName,
    CrashLoopBackOff,
    CreateContainerError,
    CreateContainerConfigError,
    RunContainerError,
    /// Not running the new image and Ready within `readyTimeoutSeconds`.
    ReadyTimeout,
}

impl FailureReason {
    /// The kubelet waiting reasons that mean the container will not come up by itself.
    pub fn from_waiting_reason(reason: &str) -> Option<Self> {
        Some(match reason {
            "ErrImagePull" => FailureReason::ErrImagePull,
            "ImagePullBackOff" => FailureReason::ImagePullBackOff,
            "InvalidImageName" => FailureReason::InvalidImageName,
            "CrashLoopBackOff" => FailureReason::CrashLoopBackOff,
            "CreateContainerError" => FailureReason::CreateContainerError,
            "CreateContainerConfigError" => FailureReason::CreateContainerConfigError,
            "RunContainerError" => FailureReason::RunContainerError,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::ErrImagePull => "ErrImagePull",
            FailureReason::ImagePullBackOff => "ImagePullBackOff",
            FailureReason::InvalidImageName => "InvalidImageName",
            FailureReason::CrashLoopBackOff => "CrashLoopBackOff",
            FailureReason::CreateContainerError => "CreateContainerError",
            FailureReason::CreateContainerConfigError => "CreateContainerConfigError",
            FailureReason::RunContainerError => "RunContainerError",
            FailureReason::ReadyTimeout => "ReadyTimeout",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerState {
    /// The container from before the patch is still the one reported (or no status yet).
    NotRestarted,
    /// Between the old container and a running new one (killed, pulling, creating, or the
    /// runtime reports an image we cannot match yet).
    Restarting { reason: String },
    /// The new container runs but is not Ready.
    RunningNotReady,
    /// A new container runs the expected image and is Ready.
    Upgraded,
    /// The spec no longer asks for the expected image at the recorded place: someone else
    /// changed the pod.
    Superseded { spec_image: String },
    Failed {
        reason: FailureReason,
        message: String,
    },
}

impl ContainerState {
    /// Order used to combine several containers of one pod: the worst state wins.
    fn severity(&self) -> u8 {
        match self {
            ContainerState::Upgraded => 0,
            ContainerState::RunningNotReady => 1,
            ContainerState::Restarting { .. } => 2,
            ContainerState::NotRestarted => 3,
            ContainerState::Superseded { .. } => 4,
            ContainerState::Failed { .. } => 5,
        }
    }

    /// The state of a pod given its containers' states: the worst one (`Upgraded` for none).
    pub fn worst(states: impl IntoIterator<Item = ContainerState>) -> ContainerState {
        states
            .into_iter()
            .max_by_key(ContainerState::severity)
            .unwrap_or(ContainerState::Upgraded)
    }
}

/// What to classify against.
#[derive(Debug, Clone, Copy)]
pub struct Expectation<'a> {
    pub baseline: &'a ContainerBaseline,
    /// The image the spec should ask for and the new container should run.
    pub image: &'a str,
    /// When the patch (upgrade or rollback) was applied.
    pub patched_at: Timestamp,
    pub ready_timeout: Duration,
}

/// Classify one container of a pod.
pub fn classify(pod: &Pod, expect: &Expectation<'_>, now: Timestamp) -> ContainerState {
    let state = classify_without_timeout(pod, expect);
    match state {
        ContainerState::NotRestarted
        | ContainerState::Restarting { .. }
        | ContainerState::RunningNotReady
            if timed_out(expect, now) =>
        {
            ContainerState::Failed {
                reason: FailureReason::ReadyTimeout,
                message: format!(
                    "container {:?} did not run {:?} and become Ready within {}s of the patch (last seen: {})",
                    expect.baseline.name,
                    expect.image,
                    expect.ready_timeout.as_secs(),
                    state.describe()
                ),
            }
        }
        other => other,
    }
}

fn timed_out(expect: &Expectation<'_>, now: Timestamp) -> bool {
    let elapsed = now.duration_since(expect.patched_at);
    elapsed.is_positive() && elapsed.unsigned_abs() > expect.ready_timeout
}

impl ContainerState {
    /// A short human description, for Wait reasons and failure messages.
    pub fn describe(&self) -> String {
        match self {
            ContainerState::NotRestarted => "the old container is still running".into(),
            ContainerState::Restarting { reason } => format!("restarting: {reason}"),
            ContainerState::RunningNotReady => "running but not Ready".into(),
            ContainerState::Upgraded => "upgraded".into(),
            ContainerState::Superseded { spec_image } => format!("spec changed to {spec_image:?}"),
            ContainerState::Failed { reason, message } => format!("{}: {message}", reason.as_str()),
        }
    }
}

fn classify_without_timeout(pod: &Pod, expect: &Expectation<'_>) -> ContainerState {
    let baseline = expect.baseline;
    let spec_image = spec_image_at(pod, baseline);
    match &spec_image {
        Some(image) if same_image(image, expect.image) => {}
        other => {
            return ContainerState::Superseded {
                spec_image: other
                    .clone()
                    .unwrap_or_else(|| format!("<no container {:?} at that index>", baseline.name)),
            };
        }
    }
    let Some(status) = container_status(pod, baseline.kind, &baseline.name) else {
        // Status lags behind (or the pod is being recreated): nothing has happened yet as far
        // as we can tell.
        return ContainerState::NotRestarted;
    };
    let new_instance =
        status.container_id.is_some() && status.container_id != baseline.container_id;
    let restarted = status.restart_count > baseline.restart_count;
    let current = status.state.as_ref();

    if let Some(waiting) = current.and_then(|s| s.waiting.as_ref()) {
        let reason = waiting.reason.clone().unwrap_or_default();
        let message = waiting.message.clone().unwrap_or_default();
        if let Some(failure) = FailureReason::from_waiting_reason(&reason) {
            // A container that was already failing before the patch keeps its old waiting
            // reason until kubelet acts on the new spec: only count it when something new
            // happened, or when the message is about the expected image.
            let about_new_image = baseline.was_running
                || new_instance
                || restarted
                || mentions_image(&message, expect.image);
            if about_new_image {
                return ContainerState::Failed {
                    reason: failure,
                    message: format!("container {:?}: {reason}: {message}", baseline.name),
                };
            }
        }
        return ContainerState::Restarting {
            reason: if reason.is_empty() {
                "waiting".into()
            } else {
                reason
            },
        };
    }
    if let Some(terminated) = current.and_then(|s| s.terminated.as_ref()) {
        return ContainerState::Restarting {
            reason: format!(
                "terminated ({})",
                terminated.reason.as_deref().unwrap_or("no reason")
            ),
        };
    }
    let Some(running) = current.and_then(|s| s.running.as_ref()) else {
        return if new_instance {
            ContainerState::Restarting {
                reason: "no state reported".into(),
            }
        } else {
            ContainerState::NotRestarted
        };
    };
    let started_after_patch = running
        .started_at
        .as_ref()
        .is_some_and(|t| t.0 >= expect.patched_at);
    if !new_instance || !(restarted || started_after_patch) {
        return ContainerState::NotRestarted;
    }
    if !status_image_consistent(&status.image, expect.image) {
        return ContainerState::Restarting {
            reason: format!(
                "the runtime reports image {:?}, expected {:?}",
                status.image, expect.image
            ),
        };
    }
    if status.ready {
        ContainerState::Upgraded
    } else {
        ContainerState::RunningNotReady
    }
}

/// The image the spec asks for at the recorded place, if the container there has the
/// recorded name.
fn spec_image_at(pod: &Pod, baseline: &ContainerBaseline) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    let list = match baseline.kind {
        ContainerKind::Container => Some(&spec.containers),
        ContainerKind::NativeSidecar => spec.init_containers.as_ref(),
    }?;
    let container = list.get(baseline.index)?;
    (container.name == baseline.name).then(|| container.image.clone().unwrap_or_default())
}

/// The status of a container (`initContainerStatuses` for native sidecars).
pub fn container_status<'p>(
    pod: &'p Pod,
    kind: ContainerKind,
    name: &str,
) -> Option<&'p ContainerStatus> {
    let status = pod.status.as_ref()?;
    let list = match kind {
        ContainerKind::Container => status.container_statuses.as_ref(),
        ContainerKind::NativeSidecar => status.init_container_statuses.as_ref(),
    }?;
    list.iter().find(|s| s.name == name)
}

/// Whether the runtime's `image` is consistent with the expected image.
///
/// Runtimes report different forms: the spec string, docker's normalised name, a
/// `repo@sha256:` digest reference, a bare `sha256:` image ID, or (CRI-O) the image's first
/// repo tag, which after a same-digest retag can be the *old* tag. So the same repository
/// (any tag) or the same digest is consistent, and a form we cannot relate (an image ID,
/// anything unparsable) is not held against the container. Only a different repository with
/// no digest in common is inconsistent.
pub fn status_image_consistent(status_image: &str, expected: &str) -> bool {
    if status_image.is_empty() || status_image.starts_with("sha256:") {
        return true;
    }
    match (ImageRef::parse(status_image), ImageRef::parse(expected)) {
        (Ok(status), Ok(expected)) => {
            status.same_repository(&expected)
                || (status.digest().is_some() && status.digest() == expected.digest())
        }
        _ => true,
    }
}

fn mentions_image(message: &str, image: &str) -> bool {
    if message.contains(&format!("\"{image}\"")) {
        return true;
    }
    ImageRef::parse(image).is_ok_and(|r| message.contains(&format!("\"{}\"", r.normalized())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        Container, ContainerState as K8sState, ContainerStateRunning, ContainerStateTerminated,
        ContainerStateWaiting, PodSpec, PodStatus,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    const OLD: &str = "registry.istio.io/testing/proxyv2:1.23";
    const NEW: &str = "registry.istio.io/testing/proxyv2:1.24";
    const T0: &str = "2026-01-01T00:00:00Z";

    fn ts(offset_secs: i64) -> Timestamp {
        let t0: Timestamp = T0.parse().expect("timestamp");
        t0.checked_add(k8s_openapi::jiff::SignedDuration::from_secs(offset_secs))
            .expect("in range")
    }

    fn baseline(kind: ContainerKind, was_running: bool) -> ContainerBaseline {
        ContainerBaseline {
            name: "istio-proxy".into(),
            kind,
            index: 0,
            previous_image: OLD.into(),
            target_image: NEW.into(),
            container_id: Some("containerd://old".into()),
            restart_count: 2,
            was_running,
        }
    }

    fn running(started: i64) -> K8sState {
        K8sState {
            running: Some(ContainerStateRunning {
                started_at: Some(Time(ts(started))),
            }),
            ..K8sState::default()
        }
    }

    fn waiting(reason: &str, message: &str) -> K8sState {
        K8sState {
            waiting: Some(ContainerStateWaiting {
                reason: Some(reason.into()),
                message: Some(message.into()),
            }),
            ..K8sState::default()
        }
    }

    struct Status {
        id: Option<&'static str>,
        restarts: i32,
        state: K8sState,
        ready: bool,
        image: &'static str,
    }

    fn status(id: &'static str, restarts: i32, state: K8sState, ready: bool) -> Status {
        Status {
            id: Some(id),
            restarts,
            state,
            ready,
            image: NEW,
        }
    }

    fn pod(kind: ContainerKind, spec_image: &str, st: Option<Status>) -> Pod {
        let container = Container {
            name: "istio-proxy".into(),
            image: Some(spec_image.into()),
            restart_policy: (kind == ContainerKind::NativeSidecar).then(|| "Always".into()),
            ..Container::default()
        };
        let statuses = st.map(|s| {
            vec![ContainerStatus {
                name: "istio-proxy".into(),
                container_id: s.id.map(str::to_string),
                restart_count: s.restarts,
                state: Some(s.state),
                ready: s.ready,
                image: s.image.into(),
                image_id: "sha256:same-digest-every-time".into(),
                ..ContainerStatus::default()
            }]
        });
        let (spec, status) = match kind {
            ContainerKind::Container => (
                PodSpec {
                    containers: vec![container],
                    ..PodSpec::default()
                },
                PodStatus {
                    container_statuses: statuses,
                    ..PodStatus::default()
                },
            ),
            ContainerKind::NativeSidecar => (
                PodSpec {
                    containers: vec![],
                    init_containers: Some(vec![container]),
                    ..PodSpec::default()
                },
                PodStatus {
                    init_container_statuses: statuses,
                    ..PodStatus::default()
                },
            ),
        };
        Pod {
            spec: Some(spec),
            status: Some(status),
            ..Pod::default()
        }
    }

    fn run(
        kind: ContainerKind,
        was_running: bool,
        spec_image: &str,
        st: Option<Status>,
        now: i64,
    ) -> ContainerState {
        let b = baseline(kind, was_running);
        let expect = Expectation {
            baseline: &b,
            image: NEW,
            patched_at: ts(0),
            ready_timeout: Duration::from_secs(300),
        };
        classify(&pod(kind, spec_image, st), &expect, ts(now))
    }

    /// name, was running at the patch, spec image, status, seconds after the patch, expected.
    type Case = (
        &'static str,
        bool,
        &'static str,
        Option<Status>,
        i64,
        ContainerState,
    );

    #[test]
    fn every_container_state() {
        use ContainerState as S;
        for kind in [ContainerKind::Container, ContainerKind::NativeSidecar] {
            let cases: Vec<Case> = vec![
                ("no status yet", true, NEW, None, 10, S::NotRestarted),
                (
                    "old container still running",
                    true,
                    NEW,
                    Some(status("containerd://old", 2, running(-100), true)),
                    10,
                    S::NotRestarted,
                ),
                (
                    "killed, creating",
                    true,
                    NEW,
                    Some(status(
                        "containerd://old",
                        2,
                        waiting("ContainerCreating", ""),
                        false,
                    )),
                    10,
                    S::Restarting {
                        reason: "ContainerCreating".into(),
                    },
                ),
                (
                    "old one terminated",
                    true,
                    NEW,
                    Some(status(
                        "containerd://old",
                        2,
                        K8sState {
                            terminated: Some(ContainerStateTerminated {
                                exit_code: 137,
                                reason: Some("Killed".into()),
                                ..Default::default()
                            }),
                            ..Default::default()
                        },
                        false,
                    )),
                    10,
                    S::Restarting {
                        reason: "terminated (Killed)".into(),
                    },
                ),
                (
                    "new, running, not ready",
                    true,
                    NEW,
                    Some(status("containerd://new", 3, running(5), false)),
                    10,
                    S::RunningNotReady,
                ),
                (
                    "new, running, ready",
                    true,
                    NEW,
                    Some(status("containerd://new", 3, running(5), true)),
                    10,
                    S::Upgraded,
                ),
                (
                    "new id, restartCount up, clock skew on startedAt",
                    true,
                    NEW,
                    Some(status("containerd://new", 3, running(-2), true)),
                    10,
                    S::Upgraded,
                ),
                (
                    "new id, startedAt after patch, restartCount not up",
                    true,
                    NEW,
                    Some(status("containerd://new", 2, running(1), true)),
                    10,
                    S::Upgraded,
                ),
                (
                    "new id, started in the patch's second, restartCount not up",
                    true,
                    NEW,
                    Some(status("containerd://new", 2, running(0), true)),
                    10,
                    S::Upgraded,
                ),
                (
                    "new id but neither signal",
                    true,
                    NEW,
                    Some(status("containerd://new", 2, running(-50), true)),
                    10,
                    S::NotRestarted,
                ),
                (
                    "someone else changed the spec",
                    true,
                    "nginx:1",
                    Some(status("containerd://new", 3, running(5), true)),
                    10,
                    S::Superseded {
                        spec_image: "nginx:1".into(),
                    },
                ),
                (
                    "pull error of the new image",
                    true,
                    NEW,
                    Some(status(
                        "containerd://old",
                        2,
                        waiting("ErrImagePull", "boom"),
                        false,
                    )),
                    10,
                    S::Failed {
                        reason: FailureReason::ErrImagePull,
                        message: "container \"istio-proxy\": ErrImagePull: boom".into(),
                    },
                ),
                (
                    "pull backoff",
                    true,
                    NEW,
                    Some(status(
                        "containerd://old",
                        2,
                        waiting("ImagePullBackOff", "Back-off"),
                        false,
                    )),
                    10,
                    S::Failed {
                        reason: FailureReason::ImagePullBackOff,
                        message: "container \"istio-proxy\": ImagePullBackOff: Back-off".into(),
                    },
                ),
                (
                    "invalid name",
                    true,
                    NEW,
                    Some(status(
                        "containerd://old",
                        2,
                        waiting("InvalidImageName", "x"),
                        false,
                    )),
                    10,
                    S::Failed {
                        reason: FailureReason::InvalidImageName,
                        message: "container \"istio-proxy\": InvalidImageName: x".into(),
                    },
                ),
                (
                    "crash loop of the new container",
                    false,
                    NEW,
                    Some(status(
                        "containerd://new",
                        5,
                        waiting("CrashLoopBackOff", "back-off"),
                        false,
                    )),
                    10,
                    S::Failed {
                        reason: FailureReason::CrashLoopBackOff,
                        message: "container \"istio-proxy\": CrashLoopBackOff: back-off".into(),
                    },
                ),
                (
                    "create error",
                    true,
                    NEW,
                    Some(status(
                        "containerd://old",
                        2,
                        waiting("CreateContainerError", "x"),
                        false,
                    )),
                    10,
                    S::Failed {
                        reason: FailureReason::CreateContainerError,
                        message: "container \"istio-proxy\": CreateContainerError: x".into(),
                    },
                ),
                (
                    "config error",
                    true,
                    NEW,
                    Some(status(
                        "containerd://old",
                        2,
                        waiting("CreateContainerConfigError", "x"),
                        false,
                    )),
                    10,
                    S::Failed {
                        reason: FailureReason::CreateContainerConfigError,
                        message: "container \"istio-proxy\": CreateContainerConfigError: x".into(),
                    },
                ),
                (
                    "run error",
                    true,
                    NEW,
                    Some(status(
                        "containerd://old",
                        2,
                        waiting("RunContainerError", "x"),
                        false,
                    )),
                    10,
                    S::Failed {
                        reason: FailureReason::RunContainerError,
                        message: "container \"istio-proxy\": RunContainerError: x".into(),
                    },
                ),
                (
                    "was crash looping before the patch: old reason is not a failure yet",
                    false,
                    NEW,
                    Some(status(
                        "containerd://old",
                        2,
                        waiting("CrashLoopBackOff", "back-off restarting failed container"),
                        false,
                    )),
                    10,
                    S::Restarting {
                        reason: "CrashLoopBackOff".into(),
                    },
                ),
                (
                    "was failing before, now the new image fails to pull",
                    false,
                    NEW,
                    Some(status(
                        "containerd://old",
                        2,
                        waiting(
                            "ImagePullBackOff",
                            &format!("Back-off pulling image \"{NEW}\""),
                        ),
                        false,
                    )),
                    10,
                    S::Failed {
                        reason: FailureReason::ImagePullBackOff,
                        message: format!(
                            "container \"istio-proxy\": ImagePullBackOff: Back-off pulling image \"{NEW}\""
                        ),
                    },
                ),
                (
                    "runtime reports another repository",
                    true,
                    NEW,
                    Some(Status {
                        image: "docker.io/library/other:1",
                        ..status("containerd://new", 3, running(5), true)
                    }),
                    10,
                    S::Restarting {
                        reason: format!(
                            "the runtime reports image \"docker.io/library/other:1\", expected \"{NEW}\""
                        ),
                    },
                ),
                (
                    "runtime reports an image ID",
                    true,
                    NEW,
                    Some(Status {
                        image: "sha256:0123",
                        ..status("containerd://new", 3, running(5), true)
                    }),
                    10,
                    S::Upgraded,
                ),
                (
                    "CRI-O reports the old tag of a retagged digest",
                    true,
                    NEW,
                    Some(Status {
                        image: OLD,
                        ..status("containerd://new", 3, running(5), true)
                    }),
                    10,
                    S::Upgraded,
                ),
                (
                    "no container ID at all",
                    true,
                    NEW,
                    Some(Status {
                        id: None,
                        ..status("x", 2, K8sState::default(), false)
                    }),
                    10,
                    S::NotRestarted,
                ),
            ];
            for (name, was_running, spec_image, st, now, expected) in cases {
                assert_eq!(
                    run(kind, was_running, spec_image, st, now),
                    expected,
                    "{kind:?}: {name}"
                );
            }
        }
    }

    #[test]
    fn ready_timeout() {
        let kind = ContainerKind::Container;
        let state = run(
            kind,
            true,
            NEW,
            Some(status("containerd://new", 3, running(5), false)),
            301,
        );
        assert_eq!(
            state,
            ContainerState::Failed {
                reason: FailureReason::ReadyTimeout,
                message: format!(
                    "container \"istio-proxy\" did not run \"{NEW}\" and become Ready within 300s of the patch (last seen: running but not Ready)"
                ),
            }
        );
        assert!(matches!(
            run(kind, true, NEW, None, 301),
            ContainerState::Failed {
                reason: FailureReason::ReadyTimeout,
                ..
            }
        ));
        // At the limit it is not yet a failure; an upgraded container never times out.
        assert_eq!(
            run(
                kind,
                true,
                NEW,
                Some(status("containerd://new", 3, running(5), false)),
                300
            ),
            ContainerState::RunningNotReady
        );
        assert_eq!(
            run(
                kind,
                true,
                NEW,
                Some(status("containerd://new", 3, running(5), true)),
                10_000
            ),
            ContainerState::Upgraded
        );
    }

    #[test]
    fn retag_of_the_same_digest_completes() {
        // Same imageID before and after (the fixture always reports the same one): the new
        // containerID is what counts.
        let state = run(
            ContainerKind::NativeSidecar,
            true,
            NEW,
            Some(status("containerd://retagged", 3, running(1), true)),
            5,
        );
        assert_eq!(state, ContainerState::Upgraded);
    }

    #[test]
    fn good_bad_good_completes() {
        // good (old) -> bad: rolled back to OLD; then OLD -> good again. The rollback baseline
        // holds the failed container's ID, the final attempt a fresh one: both complete by
        // containerID, whatever imageID says.
        let mut b = baseline(ContainerKind::Container, false);
        b.container_id = Some("containerd://bad-attempt".into());
        b.restart_count = 7;
        let expect = Expectation {
            baseline: &b,
            image: NEW,
            patched_at: ts(0),
            ready_timeout: Duration::from_secs(300),
        };
        let p = pod(
            ContainerKind::Container,
            NEW,
            Some(status("containerd://good-again", 8, running(3), true)),
        );
        assert_eq!(classify(&p, &expect, ts(10)), ContainerState::Upgraded);
    }

    #[test]
    fn worst_state_wins() {
        use ContainerState as S;
        assert_eq!(S::worst([]), S::Upgraded);
        assert_eq!(
            S::worst([S::Upgraded, S::RunningNotReady]),
            S::RunningNotReady
        );
        assert_eq!(
            S::worst([
                S::NotRestarted,
                S::Failed {
                    reason: FailureReason::ReadyTimeout,
                    message: String::new()
                },
                S::Upgraded
            ]),
            S::Failed {
                reason: FailureReason::ReadyTimeout,
                message: String::new()
            }
        );
    }

    #[test]
    fn status_image_forms() {
        assert!(status_image_consistent(NEW, NEW));
        assert!(status_image_consistent(
            "docker.io/library/nginx:1",
            "nginx:1"
        ));
        assert!(status_image_consistent("sha256:abc", "nginx:1"));
        assert!(status_image_consistent("", "nginx:1"));
        let d = format!("sha256:{}", "c".repeat(64));
        assert!(status_image_consistent(
            &format!("docker.io/library/nginx@{d}"),
            "nginx:1"
        ));
        assert!(status_image_consistent(
            &format!("mirror.local/nginx@{d}"),
            &format!("nginx@{d}")
        ));
        assert!(!status_image_consistent("quay.io/other:1", "nginx:1"));
    }
}
