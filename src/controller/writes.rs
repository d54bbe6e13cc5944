//! Every write the controller makes, in one place: each is a single atomic request, counted in
//! the `api_writes` metric, under our field manager.

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use serde_json::json;

use super::Context;
use crate::FIELD_MANAGER;
use crate::workload::{WorkloadKey, WorkloadKind};

/// A JSON patch whose `test` op failed: someone else changed the pod since we read it.
pub fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409 || s.code == 422 && s.message.contains("test"))
}

fn params() -> PatchParams {
    PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    }
}

impl Context {
    /// Applies a JSON patch (`test` + `replace` + state annotation) to a pod.
    pub async fn patch_pod(
        &self,
        namespace: &str,
        name: &str,
        patch: json_patch::Patch,
    ) -> kube::Result<Pod> {
        self.metrics.write("patch", "pods");
        Api::<Pod>::namespaced(self.client.clone(), namespace)
            .patch(name, &params(), &Patch::<()>::Json(patch))
            .await
    }

    /// Patches `pods/status` with a strategic-merge body (conditions merge by `type`, so the
    /// kubelet's conditions are left alone).
    pub async fn patch_pod_status(
        &self,
        namespace: &str,
        name: &str,
        body: serde_json::Value,
    ) -> kube::Result<Pod> {
        self.metrics.write("patch", "pods/status");
        Api::<Pod>::namespaced(self.client.clone(), namespace)
            .patch_status(name, &params(), &Patch::Strategic(body))
            .await
    }

    /// Reads one pod from the API server: the rare read that the cache cannot answer (a
    /// pod's imagePullSecrets and tolerations, which it does not keep, for its pre-pull pod).
    pub async fn get_pod(&self, namespace: &str, name: &str) -> kube::Result<Pod> {
        Api::<Pod>::namespaced(self.client.clone(), namespace)
            .get(name)
            .await
    }

    /// Creates a pre-pull pod ([`crate::prepull`]).
    pub async fn create_pod(&self, pod: &Pod) -> kube::Result<Pod> {
        self.metrics.write("create", "pods");
        let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
        let params = kube::api::PostParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        };
        Api::<Pod>::namespaced(self.client.clone(), ns)
            .create(&params, pod)
            .await
    }

    /// Deletes a pre-pull pod at once (it runs nothing, so there is nothing to stop
    /// gracefully); one that is already gone is no error.
    pub async fn delete_pod(&self, namespace: &str, name: &str) -> kube::Result<()> {
        self.metrics.write("delete", "pods");
        let params = kube::api::DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        };
        match Api::<Pod>::namespaced(self.client.clone(), namespace)
            .delete(name, &params)
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Sets (or removes, with `None`) one annotation on a workload with a JSON merge patch.
    pub async fn annotate_workload(
        &self,
        key: &WorkloadKey,
        annotation: &str,
        value: Option<&str>,
    ) -> kube::Result<()> {
        self.metrics.write("patch", "workloads");
        let body = Patch::Merge(json!({ "metadata": { "annotations": { annotation: value } } }));
        let c = self.client.clone();
        let ns = &key.namespace;
        let p = params();
        match key.kind {
            WorkloadKind::Deployment => Api::<Deployment>::namespaced(c, ns)
                .patch(&key.name, &p, &body)
                .await
                .map(drop),
            WorkloadKind::StatefulSet => Api::<StatefulSet>::namespaced(c, ns)
                .patch(&key.name, &p, &body)
                .await
                .map(drop),
            WorkloadKind::DaemonSet => Api::<DaemonSet>::namespaced(c, ns)
                .patch(&key.name, &p, &body)
                .await
                .map(drop),
            WorkloadKind::ReplicaSet => Api::<ReplicaSet>::namespaced(c, ns)
                .patch(&key.name, &p, &body)
                .await
                .map(drop),
        }
    }

    /// Publishes an Event about `object` in the background: a reconcile never waits for it
    /// (the Event that a pod is upgraded must not hold back the drain of the next one; the
    /// drain follows the kubelet's Ready by a few milliseconds). A failure to publish is
    /// logged, never fatal; an Event still in flight when the process exits is lost.
    pub fn event(&self, object: &ObjectReference, warning: bool, reason: &str, note: String) {
        self.metrics.write("create", "events");
        let event = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.into(),
            note: Some(note),
            action: reason.into(),
            secondary: None,
        };
        let (recorder, object, reason) = (self.recorder.clone(), object.clone(), reason.to_owned());
        tokio::spawn(async move {
            if let Err(e) = recorder.publish(&event, &object).await {
                tracing::warn!(error = %e, reason, "could not publish Event");
            }
        });
    }
}
