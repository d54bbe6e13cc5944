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
    /// kubelet's Warning Events about this pod (any container, any time; classification
    /// picks what concerns this container after the patch).
    pub events: &'a [ContainerEvent],
}

/// A kubelet Event about a pod, reduced to what classification reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerEvent {
    /// `involvedObject.fieldPath`: `spec.containers{name}` or `spec.initContainers{name}`.
    pub field_path: String,
    /// `Failed`, `InspectFailed`, `BackOff`, …
    pub reason: String,
    pub message: String,
    /// When it last happened (`series.lastObservedTime`, else `lastTimestamp`, else
    /// `eventTime`): kubelet updates one Event per repeated failure.
    pub last_seen: Timestamp,
}

/// Classify one container of a pod.
pub fn classify(pod: &Pod, expect: &Expectation<'_>, now: Timestamp) -> ContainerState {
    let mut state = classify_without_timeout(pod, expect);
    if matches!(
        state,
        ContainerState::NotRestarted | ContainerState::Restarting { .. }
    ) && let Some(failed) = failure_from_events(pod, expect)
    {
        state = failed;
    }
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
            // A pull failure that names another image is the previous spec's: kubelet has not
            // acted on this one yet. A real kubelet shows it for a second or so after a
            // rollback is patched over a failed pull (tests/e2e_real.rs).
            if about_new_image && !names_another_image(&message, expect.image) {
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
    if !runs_expected_image(pod, status, expect) {
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

/// A failure that only the pod's Events tell. kubelet shows no waiting reason for a native
/// sidecar whose old process exited 0 (it takes an init container that exited 0 for done)
/// while it keeps failing to start the new image; its Events do say it. An Event counts when:
/// - it is about this container (`involvedObject.fieldPath`) — the caller gives only Events of
///   this pod's UID;
/// - it happened in a later second than the patch (Event times have second precision; a
///   repeated failure updates the Event, so one in the patch's own second is seen at its
///   next repeat), so failures of an earlier attempt never count;
/// - kubelet has seen the patched spec: `status.observedGeneration` ≥ `metadata.generation`
///   where kubelet reports it (1.34+);
/// - it is a start failure: a pull or inspect failure that names the expected image
///   (`Failed to pull image "…"`, `InspectFailed`), `Error: ImagePullBackOff` once such a pull
///   failure is among them, or `Error: CreateContainerConfigError` / `CreateContainerError` /
///   `RunContainerError`. A restart back-off alone is not: a crashing new container shows its
///   reason in the status.
fn failure_from_events(pod: &Pod, expect: &Expectation<'_>) -> Option<ContainerState> {
    if kubelet_has_seen_spec(pod) == Some(false) {
        return None;
    }
    let baseline = expect.baseline;
    let field_path = match baseline.kind {
        ContainerKind::Container => format!("spec.containers{{{}}}", baseline.name),
        ContainerKind::NativeSidecar => format!("spec.initContainers{{{}}}", baseline.name),
    };
    let patch_second = expect.patched_at.as_second();
    let failures: Vec<(FailureReason, bool, &ContainerEvent)> = expect
        .events
        .iter()
        .filter(|e| e.field_path == field_path && e.last_seen.as_second() > patch_second)
        .filter_map(|e| {
            let names_image = mentions_image(&e.message, expect.image);
            let reason = match e.reason.as_str() {
                "Failed" if e.message.starts_with("Failed to pull image") => {
                    FailureReason::ErrImagePull
                }
                "Failed" => FailureReason::from_waiting_reason(e.message.strip_prefix("Error: ")?)?,
                "InspectFailed" => FailureReason::InvalidImageName,
                _ => return None,
            };
            Some((reason, names_image, e))
        })
        .collect();
    let pull_failed = failures
        .iter()
        .any(|(r, named, _)| *named && *r == FailureReason::ErrImagePull);
    let counts = |reason: FailureReason, named: bool| match reason {
        FailureReason::ErrImagePull | FailureReason::InvalidImageName => named,
        FailureReason::ImagePullBackOff => pull_failed,
        FailureReason::CreateContainerConfigError
        | FailureReason::CreateContainerError
        | FailureReason::RunContainerError => true,
        FailureReason::CrashLoopBackOff | FailureReason::ReadyTimeout => false,
    };
    // The most telling first: why it cannot start, not that kubelet backs off.
    let rank = |r: FailureReason| match r {
        FailureReason::InvalidImageName => 0,
        FailureReason::ErrImagePull => 1,
        FailureReason::CreateContainerConfigError => 2,
        FailureReason::CreateContainerError => 3,
        FailureReason::RunContainerError => 4,
        _ => 5,
    };
    let (reason, _, event) = failures
        .into_iter()
        .filter(|(r, named, _)| counts(*r, *named))
        .min_by_key(|(r, _, e)| (rank(*r), std::cmp::Reverse(e.last_seen)))?;
    Some(ContainerState::Failed {
        reason,
        message: format!(
            "container {:?}: {} (pod Event {} at {}: {})",
            baseline.name,
            reason.as_str(),
            event.reason,
            event.last_seen,
            event.message
        ),
    })
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

/// Whether kubelet reports having seen the pod's current spec (`status.observedGeneration` ≥
/// `metadata.generation`, kubelet 1.34+); `None` when it does not report it.
fn kubelet_has_seen_spec(pod: &Pod) -> Option<bool> {
    let observed = pod.status.as_ref()?.observed_generation?;
    Some(observed >= pod.metadata.generation?)
}

/// Whether a container restarted after the patch runs the expected image. The runtime's
/// `image` is only a name for what runs: containerd reports the first name it knows for the
/// image's content (an image that is also known on the node under another repository reads
/// as that one — seen on a real kubelet, tests/e2e_real.rs), CRI-O its first repo tag (after a
/// same-digest retag, the old tag). So, in order:
/// - content other than what ran at the patch (`imageID` changed) is the patched spec's image;
/// - a name of the expected image is it;
/// - any other name is an alias once kubelet reports that it has seen the patched spec;
/// - from a kubelet that does not report that (< 1.34), the lenient
///   [`status_image_consistent`].
fn runs_expected_image(pod: &Pod, status: &ContainerStatus, expect: &Expectation<'_>) -> bool {
    let content_changed = expect
        .baseline
        .image_id
        .as_deref()
        .is_some_and(|before| !status.image_id.is_empty() && status.image_id != before);
    if content_changed || same_image(&status.image, expect.image) {
        return true;
    }
    kubelet_has_seen_spec(pod)
        .unwrap_or_else(|| status_image_consistent(&status.image, expect.image))
}

/// Whether the runtime's `image` is consistent with the expected image, by its name alone.
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

/// Whether kubelet's message quotes an image (`image "…"`, `reference "…"`, as its pull errors
/// do) that is not `image`.
fn names_another_image(message: &str, image: &str) -> bool {
    ["image \"", "reference \""].iter().any(|prefix| {
        message.match_indices(prefix).any(|(i, p)| {
            let rest = &message[i + p.len()..];
            rest.split_once('"')
                .is_some_and(|(quoted, _)| !same_image(quoted, image))
        })
    })
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
            image_id: None,
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
            events: &[],
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
                    "a rollback patched over a failed pull: the old failure still shows",
                    true,
                    NEW,
                    Some(status(
                        "containerd://old",
                        2,
                        waiting(
                            "ErrImagePull",
                            &format!(
                                "rpc error: code = NotFound desc = failed to pull and unpack image \"{OLD}\": failed to resolve reference \"{OLD}\": not found"
                            ),
                        ),
                        false,
                    )),
                    1,
                    S::Restarting {
                        reason: "ErrImagePull".into(),
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
    fn a_restarted_container_runs_the_target_whatever_name_the_runtime_gives_it() {
        const ALIAS: &str = "docker.io/istio/proxyv2:1.24";
        let (old, new) = ("sha256:old-content", "sha256:new-content");
        // case, status image, its imageID, imageID at the patch, (generation, observed), upgraded
        type Case = (
            &'static str,
            &'static str,
            &'static str,
            Option<&'static str>,
            Option<(i64, i64)>,
            bool,
        );
        #[rustfmt::skip]
        let cases: [Case; 9] = [
            ("the expected name", NEW, old, Some(old), Some((2, 1)), true),
            ("an alias of new content", ALIAS, new, Some(old), None, true),
            ("an alias, kubelet saw the spec", ALIAS, old, Some(old), Some((2, 2)), true),
            ("an alias, spec not yet seen", ALIAS, old, Some(old), Some((2, 1)), false),
            // The old container crashed and kubelet restarted it before it saw the patch.
            ("the old name, spec not yet seen", OLD, old, Some(old), Some((2, 1)), false),
            // A same-digest retag, named by its first tag (CRI-O).
            ("the old name, spec seen", OLD, old, Some(old), Some((2, 2)), true),
            // No generation reported (kubelet < 1.34): the name alone decides, leniently.
            ("same repository, nothing else known", OLD, old, None, None, true),
            ("another repository, nothing else known", ALIAS, new, None, None, false),
            ("no imageID reported now", ALIAS, "", Some(old), Some((2, 1)), false),
        ];
        for (case, image, image_id, at_patch, generations, upgraded) in cases {
            let mut b = baseline(ContainerKind::NativeSidecar, true);
            b.image_id = at_patch.map(str::to_string);
            let expect = Expectation {
                baseline: &b,
                image: NEW,
                patched_at: ts(0),
                ready_timeout: Duration::from_secs(300),
                events: &[],
            };
            let mut st = status("containerd://new", 3, running(1), true);
            st.image = image;
            let mut p = pod(ContainerKind::NativeSidecar, NEW, Some(st));
            let status = p.status.as_mut().expect("status");
            status.init_container_statuses.as_mut().expect("statuses")[0].image_id =
                image_id.into();
            if let Some((generation, observed)) = generations {
                p.metadata.generation = Some(generation);
                p.status.as_mut().expect("status").observed_generation = Some(observed);
            }
            let state = classify(&p, &expect, ts(5));
            assert_eq!(
                state == ContainerState::Upgraded,
                upgraded,
                "{case}: {state:?}"
            );
        }
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
            events: &[],
        };
        let p = pod(
            ContainerKind::Container,
            NEW,
            Some(status("containerd://good-again", 8, running(3), true)),
        );
        assert_eq!(classify(&p, &expect, ts(10)), ContainerState::Upgraded);
    }

    fn event(field_path: &str, reason: &str, message: &str, at: i64) -> ContainerEvent {
        ContainerEvent {
            field_path: field_path.into(),
            reason: reason.into(),
            message: message.into(),
            last_seen: ts(at),
        }
    }

    /// A native sidecar whose old process exited 0 and whose new image cannot be pulled:
    /// kubelet shows it `terminated` (Completed, old containerID) with no waiting reason; the
    /// pod's Events decide (DESIGN §10).
    #[test]
    fn events_tell_a_failure_the_status_does_not() {
        const SIDECAR: &str = "spec.initContainers{istio-proxy}";
        let pull = format!(
            "Failed to pull image \"{NEW}\": rpc error: code = NotFound desc = failed to resolve reference: not found"
        );
        let other_image =
            "Failed to pull image \"registry.istio.io/testing/proxyv2:9\": not found".to_owned();
        let terminated_old = || {
            let mut st = status(
                "containerd://old",
                2,
                K8sState {
                    terminated: Some(ContainerStateTerminated {
                        exit_code: 0,
                        reason: Some("Completed".into()),
                        container_id: Some("containerd://old".into()),
                        ..ContainerStateTerminated::default()
                    }),
                    ..K8sState::default()
                },
                false,
            );
            st.image = OLD;
            st
        };
        // (case, events, observedGeneration vs generation 2, expected failure reason)
        type EventCase = (
            &'static str,
            Vec<ContainerEvent>,
            Option<i64>,
            Option<FailureReason>,
        );
        let cases: Vec<EventCase> = vec![
            ("no events", vec![], Some(2), None),
            (
                "a pull failure of the new image after the patch",
                vec![
                    event(SIDECAR, "Failed", &pull, 2),
                    event(SIDECAR, "Failed", "Error: ErrImagePull", 2),
                ],
                Some(2),
                Some(FailureReason::ErrImagePull),
            ),
            (
                "in the patch's own second: not yet (it repeats)",
                vec![event(SIDECAR, "Failed", &pull, 0)],
                Some(2),
                None,
            ),
            (
                "before the patch: an earlier attempt",
                vec![event(SIDECAR, "Failed", &pull, -30)],
                Some(2),
                None,
            ),
            (
                "another container's failure",
                vec![event("spec.containers{hello}", "Failed", &pull, 2)],
                Some(2),
                None,
            ),
            (
                "the same container kind but as a regular container path",
                vec![event("spec.containers{istio-proxy}", "Failed", &pull, 2)],
                Some(2),
                None,
            ),
            (
                "a pull failure of another image (a stale one during a rollback)",
                vec![
                    event(SIDECAR, "Failed", &other_image, 2),
                    event(SIDECAR, "Failed", "Error: ErrImagePull", 2),
                    event(SIDECAR, "Failed", "Error: ImagePullBackOff", 3),
                ],
                Some(2),
                None,
            ),
            (
                "kubelet has not seen the patched spec yet",
                vec![event(SIDECAR, "Failed", &pull, 2)],
                Some(1),
                None,
            ),
            (
                "no observedGeneration reported (kubelet < 1.34): time decides",
                vec![event(SIDECAR, "Failed", &pull, 2)],
                None,
                Some(FailureReason::ErrImagePull),
            ),
            (
                "image pull back-off with the pull failure: the pull failure is named",
                vec![
                    event(SIDECAR, "Failed", "Error: ImagePullBackOff", 9),
                    event(SIDECAR, "Failed", &pull, 2),
                ],
                Some(2),
                Some(FailureReason::ErrImagePull),
            ),
            (
                "a restart back-off alone is not a start failure",
                vec![event(
                    SIDECAR,
                    "BackOff",
                    "Back-off restarting failed container istio-proxy in pod p",
                    3,
                )],
                Some(2),
                None,
            ),
            (
                "a config error (no image in the message)",
                vec![event(
                    SIDECAR,
                    "Failed",
                    "Error: CreateContainerConfigError",
                    4,
                )],
                Some(2),
                Some(FailureReason::CreateContainerConfigError),
            ),
            (
                "an invalid name",
                vec![event(
                    SIDECAR,
                    "InspectFailed",
                    &format!("Failed to apply default image tag \"{NEW}\": invalid"),
                    2,
                )],
                Some(2),
                Some(FailureReason::InvalidImageName),
            ),
        ];
        for (case, events, observed, want) in cases {
            let b = baseline(ContainerKind::NativeSidecar, true);
            let expect = Expectation {
                baseline: &b,
                image: NEW,
                patched_at: "2026-01-01T00:00:00.400Z".parse().expect("timestamp"),
                ready_timeout: Duration::from_secs(300),
                events: &events,
            };
            let mut p = pod(ContainerKind::NativeSidecar, NEW, Some(terminated_old()));
            p.metadata.generation = Some(2);
            if let Some(s) = p.status.as_mut() {
                s.observed_generation = observed;
            }
            let got = classify(&p, &expect, ts(10));
            match (want, &got) {
                (None, ContainerState::Restarting { .. }) => {}
                (Some(w), ContainerState::Failed { reason, message }) => {
                    assert_eq!(*reason, w, "{case}: {message}");
                    assert!(message.contains("pod Event"), "{case}: {message}");
                }
                _ => panic!("{case}: expected {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn events_never_override_a_running_new_container() {
        let b = baseline(ContainerKind::NativeSidecar, true);
        let events = [event(
            "spec.initContainers{istio-proxy}",
            "Failed",
            &format!("Failed to pull image \"{NEW}\": transient"),
            2,
        )];
        let expect = Expectation {
            baseline: &b,
            image: NEW,
            patched_at: ts(0),
            ready_timeout: Duration::from_secs(300),
            events: &events,
        };
        let p = pod(
            ContainerKind::NativeSidecar,
            NEW,
            Some(status("containerd://new", 3, running(5), true)),
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
