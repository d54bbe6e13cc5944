//! The per-pod record kept in the `inplace-upgrade.io/state` annotation: the baseline every
//! later decision reads. Everything the controller needs to resume after a crash is here or
//! in the readiness gate condition.
//!
//! Draining is not a phase: a drain is the readiness gate condition set False with reason
//! `Draining`, and its `lastTransitionTime` is when it started, to the second (the controller
//! that drained keeps the exact time in memory: [`crate::plan::DrainRecord`]). That
//! saves a write per pod, and a pod drained by a controller that then died is still visible
//! as such.

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::STATE_ANNOTATION;
use crate::target::ContainerKind;

/// The state format written by this version. Unknown fields are ignored when reading, so a
/// newer minor addition does not make a record unreadable; a higher version is refused.
pub const STATE_VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    /// The image patch is applied; waiting for the new containers to be Ready.
    Patched,
    /// The upgrade failed and the previous images are patched back; waiting for them.
    RollingBack,
    /// Every container runs its target and is Ready.
    Succeeded,
    /// The upgrade failed and the previous images run again.
    RolledBack,
    /// The upgrade failed and the pod was left as it is (`onFailure: Pause`, or the rollback
    /// itself failed).
    Failed,
    /// Someone else changed the image while we waited; we stopped tracking this pod.
    Superseded,
}

impl Phase {
    /// Whether the controller still has work to do on the pod.
    pub fn in_progress(self) -> bool {
        matches!(self, Phase::Patched | Phase::RollingBack)
    }

    /// Whether the recorded target failed on this pod.
    pub fn target_failed(self) -> bool {
        matches!(self, Phase::RolledBack | Phase::Failed)
    }
}

/// One changed container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerBaseline {
    pub name: String,
    pub kind: ContainerKind,
    /// Index in `containers` / `initContainers`.
    pub index: usize,
    /// The last image known to run before this upgrade (the rollback target).
    pub previous_image: String,
    /// The resolved target image.
    pub target_image: String,
    /// `containerID` when the last patch (upgrade or rollback) was applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    /// `restartCount` when the last patch was applied.
    #[serde(default)]
    pub restart_count: i32,
    /// `imageID` when the last patch was applied: what ran then. A restarted container running
    /// other content runs the patched spec's image, whatever name the runtime reports for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_id: Option<String>,
    /// Whether the container was running when the last patch was applied. A container that was
    /// already failing (e.g. in CrashLoopBackOff) keeps its old waiting reason for a moment
    /// after the patch, which must not count as a failure of the new image.
    #[serde(default)]
    pub was_running: bool,
}

impl ContainerBaseline {
    /// The image the container should run in `phase`.
    pub fn expected_image(&self, phase: Phase) -> &str {
        match phase {
            Phase::RollingBack | Phase::RolledBack => &self.previous_image,
            _ => &self.target_image,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodUpgradeState {
    pub version: u32,
    pub phase: Phase,
    /// When the last patch (upgrade or rollback) was applied.
    pub patched_at: Timestamp,
    /// When a terminal phase was reached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Timestamp>,
    pub containers: Vec<ContainerBaseline>,
    /// Whether the pod has our readiness gate (and so was drained through it).
    #[serde(default)]
    pub readiness_gate: bool,
    /// Machine-readable failure reason (e.g. `ImagePullBackOff`, `ReadyTimeout`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(
        "annotation {STATE_ANNOTATION} is not a valid upgrade record: {0}; remove it to let the controller re-derive the pod's state"
    )]
    Malformed(#[source] serde_json::Error),
    #[error(
        "annotation {STATE_ANNOTATION} has version {0}, this controller understands up to {STATE_VERSION}; upgrade the controller"
    )]
    UnsupportedVersion(u32),
    #[error("cannot serialise the upgrade record: {0}")]
    Serialize(#[source] serde_json::Error),
}

impl PodUpgradeState {
    /// The pod's record, `Ok(None)` when it has none.
    pub fn from_pod(pod: &Pod) -> Result<Option<Self>, StateError> {
        let Some(raw) = pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(STATE_ANNOTATION))
        else {
            return Ok(None);
        };
        Self::parse(raw).map(Some)
    }

    pub fn parse(raw: &str) -> Result<Self, StateError> {
        let state: PodUpgradeState = serde_json::from_str(raw).map_err(StateError::Malformed)?;
        if state.version > STATE_VERSION {
            return Err(StateError::UnsupportedVersion(state.version));
        }
        Ok(state)
    }

    pub fn to_json(&self) -> Result<String, StateError> {
        serde_json::to_string(self).map_err(StateError::Serialize)
    }

    pub fn container(&self, name: &str) -> Option<&ContainerBaseline> {
        self.containers.iter().find(|c| c.name == name)
    }

    /// The record moved to a terminal phase.
    pub fn finished(
        &self,
        phase: Phase,
        reason: Option<String>,
        message: Option<String>,
        now: Timestamp,
    ) -> Self {
        PodUpgradeState {
            phase,
            finished_at: Some(now),
            reason: reason.or_else(|| self.reason.clone()),
            message: message.or_else(|| self.message.clone()),
            ..self.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn sample() -> PodUpgradeState {
        PodUpgradeState {
            version: STATE_VERSION,
            phase: Phase::Patched,
            patched_at: "2026-01-01T00:00:00Z".parse().expect("timestamp"),
            finished_at: None,
            containers: vec![ContainerBaseline {
                name: "istio-proxy".into(),
                kind: ContainerKind::NativeSidecar,
                index: 1,
                previous_image: "proxyv2:1".into(),
                target_image: "proxyv2:2".into(),
                container_id: Some("containerd://abc".into()),
                restart_count: 0,
                image_id: None,
                was_running: true,
            }],
            readiness_gate: true,
            reason: None,
            message: None,
        }
    }

    fn pod_with(value: &str) -> Pod {
        let mut pod = Pod::default();
        pod.metadata.annotations = Some(BTreeMap::from([(
            STATE_ANNOTATION.to_string(),
            value.to_string(),
        )]));
        pod
    }

    #[test]
    fn round_trips_and_is_forward_tolerant() {
        let state = sample();
        let json = state.to_json().expect("serialises");
        assert!(json.contains("\"kind\":\"nativeSidecar\""), "{json}");
        assert!(
            json.contains("\"patchedAt\":\"2026-01-01T00:00:00Z\""),
            "{json}"
        );
        assert_eq!(PodUpgradeState::parse(&json).expect("parses"), state);
        let mut value: serde_json::Value = serde_json::from_str(&json).expect("json");
        value["someFutureField"] = serde_json::json!({"x": 1});
        assert_eq!(
            PodUpgradeState::parse(&value.to_string()).expect("unknown fields ignored"),
            state
        );
        assert_eq!(
            PodUpgradeState::from_pod(&pod_with(&json)).expect("ok"),
            Some(state)
        );
        assert!(
            PodUpgradeState::from_pod(&Pod::default())
                .expect("ok")
                .is_none()
        );
    }

    #[test]
    fn malformed_records_are_typed_errors() {
        let mut newer = serde_json::to_value(sample()).expect("json");
        newer["version"] = serde_json::json!(2);
        let cases = [
            "",
            "{",
            "null",
            "[]",
            "{\"version\":1}",
            "{\"version\":1,\"phase\":\"Exploded\",\"patchedAt\":\"2026-01-01T00:00:00Z\",\"containers\":[]}",
            "{\"version\":1,\"phase\":\"Patched\",\"patchedAt\":\"yesterday\",\"containers\":[]}",
        ];
        for raw in cases {
            let err = PodUpgradeState::from_pod(&pod_with(raw)).expect_err(raw);
            assert!(matches!(err, StateError::Malformed(_)), "{raw}: {err}");
            assert!(err.to_string().contains("remove it"), "{err}");
        }
        assert!(matches!(
            PodUpgradeState::parse(&newer.to_string()),
            Err(StateError::UnsupportedVersion(2))
        ));
    }

    #[test]
    fn expected_image_follows_the_phase() {
        let state = sample();
        let c = &state.containers[0];
        assert_eq!(c.expected_image(Phase::Patched), "proxyv2:2");
        assert_eq!(c.expected_image(Phase::RollingBack), "proxyv2:1");
        let done = state.finished(Phase::Succeeded, None, None, state.patched_at);
        assert_eq!(done.phase, Phase::Succeeded);
        assert_eq!(done.finished_at, Some(state.patched_at));
        assert!(!done.phase.in_progress());
        assert!(Phase::RolledBack.target_failed());
    }
}
