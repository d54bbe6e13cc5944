//! kubelet's Warning Events about pods with an upgrade in flight, for [`crate::classify`]: a
//! native sidecar whose old process exited 0 shows no waiting reason while its new image cannot
//! start, and only its pod's Events say so (DESIGN §10).
//!
//! One watch on core/v1 Events with the field selector `involvedObject.kind=Pod,type=Warning`
//! (after the initial list, no LIST), decoded lean (the involved object, reason, message and
//! times; never managedFields). An Event is kept only while its pod (same UID) has an upgrade
//! or rollback in flight in the pod cache, indexed by pod UID; everything else is dropped on
//! arrival, and a pod's Events are forgotten once it is no longer in flight. So memory follows
//! the pods being upgraded, not the cluster's Events. Each kept Event queues its workload.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use serde::Deserialize;

use super::queue::Queue;
use crate::cache::Cache;
use crate::classify::ContainerEvent;
use crate::plan::PodEvents;

/// The field selector of the watch: Warning Events about pods (kubelet's failures).
pub const FIELD_SELECTOR: &str = "involvedObject.kind=Pod,type=Warning";

/// A core/v1 Event as the watch decodes it.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WatchedEvent {
    #[serde(deserialize_with = "lean_meta", default)]
    metadata: ObjectMeta,
    #[serde(default)]
    involved_object: Involved,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    last_timestamp: Option<Time>,
    #[serde(default)]
    event_time: Option<MicroTime>,
    #[serde(default)]
    series: Option<Series>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Involved {
    namespace: Option<String>,
    name: Option<String>,
    uid: Option<String>,
    field_path: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Series {
    last_observed_time: Option<MicroTime>,
}

/// Only the name, namespace and resourceVersion of an Event's metadata (the watch resumes from
/// the resourceVersion).
fn lean_meta<'de, D: serde::Deserializer<'de>>(d: D) -> Result<ObjectMeta, D::Error> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Meta {
        name: Option<String>,
        namespace: Option<String>,
        resource_version: Option<String>,
    }
    let m = Meta::deserialize(d)?;
    Ok(ObjectMeta {
        name: m.name,
        namespace: m.namespace,
        resource_version: m.resource_version,
        ..ObjectMeta::default()
    })
}

impl k8s_openapi::Resource for WatchedEvent {
    const API_VERSION: &'static str = "v1";
    const GROUP: &'static str = "";
    const KIND: &'static str = "Event";
    const VERSION: &'static str = "v1";
    const URL_PATH_SEGMENT: &'static str = "events";
    type Scope = k8s_openapi::NamespaceResourceScope;
}

impl k8s_openapi::Metadata for WatchedEvent {
    type Ty = ObjectMeta;
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl WatchedEvent {
    /// The Event as classification reads it; `None` without a container or a time.
    fn container_event(&self) -> Option<ContainerEvent> {
        let last_seen = self
            .series
            .as_ref()
            .and_then(|s| s.last_observed_time.as_ref().map(|t| t.0))
            .or(self.last_timestamp.as_ref().map(|t| t.0))
            .or(self.event_time.as_ref().map(|t| t.0))?;
        Some(ContainerEvent {
            field_path: self.involved_object.field_path.clone()?,
            reason: self.reason.clone().unwrap_or_default(),
            message: self.message.clone().unwrap_or_default(),
            last_seen,
        })
    }

    fn key(&self) -> String {
        format!(
            "{}/{}",
            self.metadata.namespace.as_deref().unwrap_or_default(),
            self.metadata.name.as_deref().unwrap_or_default()
        )
    }
}

/// Events of one pod: its namespace and name (to look it up in the pod cache) and its Events
/// by Event key (a repeated Event replaces itself).
#[derive(Default)]
struct PodEntry {
    namespace: String,
    name: String,
    events: HashMap<String, ContainerEvent>,
}

/// Kept Events by pod UID.
#[derive(Clone, Default)]
pub struct EventIndex {
    pods: Arc<RwLock<HashMap<String, PodEntry>>>,
}

impl EventIndex {
    /// The Events of these pods (by UID), for [`crate::plan::PlanInput::events`].
    pub fn of_pods<'a>(&self, uids: impl Iterator<Item = &'a str>) -> PodEvents {
        let pods = self.pods.read().unwrap_or_else(|e| e.into_inner());
        uids.filter_map(|uid| {
            let entry = pods.get(uid)?;
            Some((uid.to_owned(), entry.events.values().cloned().collect()))
        })
        .collect()
    }

    /// Number of pods with kept Events.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.pods.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Applies one watched Event: keeps it when `in_flight` says its pod has an upgrade in
    /// flight, and forgets every pod that no longer has one. True when it was kept.
    fn apply(
        &self,
        ev: &WatchedEvent,
        deleted: bool,
        in_flight: impl Fn(&str, &str, &str) -> bool,
    ) -> bool {
        let mut pods = self.pods.write().unwrap_or_else(|e| e.into_inner());
        pods.retain(|uid, e| in_flight(&e.namespace, &e.name, uid));
        let inv = &ev.involved_object;
        let (Some(ns), Some(name), Some(uid)) = (&inv.namespace, &inv.name, &inv.uid) else {
            return false;
        };
        if deleted {
            if let Some(entry) = pods.get_mut(uid) {
                entry.events.remove(&ev.key());
            }
            return false;
        }
        if !in_flight(ns, name, uid) {
            return false;
        }
        let Some(event) = ev.container_event() else {
            return false;
        };
        let entry = pods.entry(uid.clone()).or_insert_with(|| PodEntry {
            namespace: ns.clone(),
            name: name.clone(),
            events: HashMap::new(),
        });
        entry.events.insert(ev.key(), event);
        true
    }
}

/// The watch: feeds `index` (pods in flight as `cache` has them) and queues the workload of
/// every pod an Event was kept for.
pub fn drive(
    client: &Client,
    cache: Cache,
    index: EventIndex,
    queue: Queue,
) -> futures::future::BoxFuture<'static, ()> {
    let api: Api<WatchedEvent> = Api::all(client.clone());
    let stream = watcher(
        api,
        watcher::Config::default()
            .fields(FIELD_SELECTOR)
            .page_size(500),
    )
    .default_backoff();
    Box::pin(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            let (ev, deleted) = match event {
                Ok(watcher::Event::Apply(e) | watcher::Event::InitApply(e)) => (e, false),
                Ok(watcher::Event::Delete(e)) => (e, true),
                Ok(_) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, kind = "Event", "watch failed; retrying");
                    continue;
                }
            };
            let kept = index.apply(&ev, deleted, |ns, name, uid| {
                cache.pod_in_flight(ns, name, uid)
            });
            if kept
                && let (Some(ns), Some(name)) =
                    (&ev.involved_object.namespace, &ev.involved_object.name)
                && let Some(key) = cache.workload_of_pod_named(ns, name)
            {
                queue.enqueue(key);
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn wire(uid: &str, name: &str, reason: &str, at: &str) -> WatchedEvent {
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": name, "namespace": "shop", "resourceVersion": "7",
                "managedFields": [{"manager": "kubelet", "fieldsV1": {"f:count": {}}}]},
            "involvedObject": {"kind": "Pod", "namespace": "shop", "name": "web-0", "uid": uid,
                "fieldPath": "spec.initContainers{istio-proxy}"},
            "reason": reason, "message": "Failed to pull image \"x:1\": not found",
            "type": "Warning", "count": 3,
            "firstTimestamp": "2026-01-01T00:00:01Z", "lastTimestamp": at,
            "source": {"component": "kubelet", "host": "node-1"},
        }))
        .expect("an Event decodes")
    }

    #[test]
    fn a_kubelet_event_decodes_lean() {
        let e = wire("u1", "web-0.1", "Failed", "2026-01-01T00:00:09Z");
        assert!(e.metadata.managed_fields.is_none());
        assert_eq!(e.metadata.resource_version.as_deref(), Some("7"));
        let c = e.container_event().expect("a container event");
        assert_eq!(c.field_path, "spec.initContainers{istio-proxy}");
        assert_eq!(c.reason, "Failed");
        assert_eq!(c.last_seen.to_string(), "2026-01-01T00:00:09Z");
        // An events.k8s.io series wins over lastTimestamp.
        let mut s: WatchedEvent = serde_json::from_value(json!({
            "metadata": {"name": "e", "namespace": "shop"},
            "involvedObject": {"uid": "u", "fieldPath": "spec.containers{a}"},
            "eventTime": "2026-01-01T00:00:01.000000Z",
            "series": {"count": 4, "lastObservedTime": "2026-01-01T00:00:30.500000Z"},
        }))
        .expect("decodes");
        assert_eq!(
            s.container_event()
                .map(|c| c.last_seen.to_string())
                .as_deref(),
            Some("2026-01-01T00:00:30.5Z")
        );
        s.series = None;
        assert_eq!(
            s.container_event()
                .map(|c| c.last_seen.to_string())
                .as_deref(),
            Some("2026-01-01T00:00:01Z")
        );
    }

    #[test]
    fn only_pods_in_flight_keep_events_and_are_forgotten_after() {
        let index = EventIndex::default();
        let flying = std::cell::Cell::new(true);
        let in_flight = |_: &str, _: &str, uid: &str| uid == "u1" && flying.get();
        let e1 = wire("u1", "web-0.1", "Failed", "2026-01-01T00:00:09Z");
        assert!(index.apply(&e1, false, in_flight));
        // A repeat of the same Event replaces it.
        let e1b = wire("u1", "web-0.1", "Failed", "2026-01-01T00:00:19Z");
        assert!(index.apply(&e1b, false, in_flight));
        let got = index.of_pods(["u1", "u2"].into_iter());
        assert_eq!(got.len(), 1);
        assert_eq!(got["u1"].len(), 1);
        assert_eq!(got["u1"][0].last_seen.to_string(), "2026-01-01T00:00:19Z");
        // Another pod (not in flight) is dropped on arrival.
        assert!(!index.apply(
            &wire("u2", "web-1.1", "Failed", "2026-01-01T00:00:09Z"),
            false,
            in_flight
        ));
        assert_eq!(index.len(), 1);
        // A deleted Event is removed.
        index.apply(&e1b, true, in_flight);
        assert!(index.of_pods(["u1"].into_iter())["u1"].is_empty());
        // The upgrade finished: the next Event forgets the pod.
        assert!(index.apply(&e1, false, in_flight));
        flying.set(false);
        index.apply(
            &wire("u3", "x.1", "Failed", "2026-01-01T00:00:09Z"),
            false,
            in_flight,
        );
        assert!(index.is_empty());
    }
}
