//! `TYPE/NAME` arguments and reading workloads, their pods and their Namespace from the API.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, ListParams};
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use kube::{Client, ResourceExt};

use super::KubectlError;
use crate::workload::{WorkloadKind, WorkloadView, deployment_settled};

/// What a `TYPE/NAME` argument names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResourceKind {
    Workload(WorkloadKind),
    Namespace,
}

impl ResourceKind {
    /// The Kubernetes kind (`Deployment`, `Namespace`).
    pub fn kind(self) -> &'static str {
        match self {
            ResourceKind::Workload(k) => k.as_str(),
            ResourceKind::Namespace => "Namespace",
        }
    }

    pub fn api_resource(self) -> ApiResource {
        let (group, plural) = match self {
            ResourceKind::Workload(WorkloadKind::Deployment) => ("apps", "deployments"),
            ResourceKind::Workload(WorkloadKind::StatefulSet) => ("apps", "statefulsets"),
            ResourceKind::Workload(WorkloadKind::DaemonSet) => ("apps", "daemonsets"),
            ResourceKind::Workload(WorkloadKind::ReplicaSet) => ("apps", "replicasets"),
            ResourceKind::Namespace => ("", "namespaces"),
        };
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, "v1", self.kind()), plural)
    }
}

/// A `TYPE/NAME` argument, e.g. `deploy/hello`, `statefulset.apps/db`, `ns/shop`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceRef {
    pub kind: ResourceKind,
    pub name: String,
}

impl fmt::Display for ResourceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind.kind().to_lowercase(), self.name)
    }
}

const TYPES: &str =
    "deployment (deploy), statefulset (sts), daemonset (ds), replicaset (rs) or namespace (ns)";

impl FromStr for ResourceRef {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let Some((kind, name)) = s.split_once('/') else {
            return Err(format!(
                "{s:?} is not TYPE/NAME: give e.g. deploy/{s}; TYPE is {TYPES}"
            ));
        };
        let kind = match kind.to_ascii_lowercase().trim_end_matches(".apps") {
            "deploy" | "deployment" | "deployments" => {
                ResourceKind::Workload(WorkloadKind::Deployment)
            }
            "sts" | "statefulset" | "statefulsets" => {
                ResourceKind::Workload(WorkloadKind::StatefulSet)
            }
            "ds" | "daemonset" | "daemonsets" => ResourceKind::Workload(WorkloadKind::DaemonSet),
            "rs" | "replicaset" | "replicasets" => ResourceKind::Workload(WorkloadKind::ReplicaSet),
            "ns" | "namespace" | "namespaces" => ResourceKind::Namespace,
            _ => {
                return Err(format!(
                    "unknown resource type {kind:?} in {s:?}: TYPE is {TYPES}"
                ));
            }
        };
        // A DNS-1123 subdomain, as every one of these kinds requires.
        let valid = !name.is_empty()
            && name.len() <= 253
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
            && name.starts_with(|c: char| c.is_ascii_alphanumeric())
            && name.ends_with(|c: char| c.is_ascii_alphanumeric());
        if !valid {
            return Err(format!(
                "{name:?} in {s:?} is not a valid name (lowercase letters, digits, '-' and '.')"
            ));
        }
        Ok(ResourceRef {
            kind,
            name: name.to_string(),
        })
    }
}

impl ResourceRef {
    /// The workload kind, or a usage error for a Namespace where a workload is needed.
    pub fn workload_kind(&self, command: &str) -> Result<WorkloadKind, KubectlError> {
        match self.kind {
            ResourceKind::Workload(k) => Ok(k),
            ResourceKind::Namespace => Err(KubectlError::Usage(format!(
                "{command} takes a workload (deployment, statefulset, daemonset or replicaset), not {self}"
            ))),
        }
    }
}

/// Maps an API error about `what` (e.g. `deployment/hello in namespace "shop"`) to one line.
pub fn api_error(what: &str, e: kube::Error) -> KubectlError {
    match e {
        kube::Error::Api(s) if s.code == 404 => KubectlError::NotFound(format!("{what} not found")),
        kube::Error::Api(s) if s.code == 403 => KubectlError::Forbidden(format!(
            "{}; ask a cluster admin for that RBAC right",
            one_line(&s.message)
        )),
        kube::Error::Api(s) if s.code == 401 => KubectlError::Forbidden(format!(
            "the API server refused the kubeconfig's credentials ({}); log in again",
            one_line(&s.message)
        )),
        e => KubectlError::Unavailable(format!("{what}: {}", one_line(&e.to_string()))),
    }
}

pub fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A workload as the API shows it.
pub struct Workload {
    pub view: WorkloadView,
    pub object: DynamicObject,
}

fn typed<K: serde::de::DeserializeOwned>(o: &DynamicObject) -> Result<K, KubectlError> {
    serde_json::to_value(o)
        .and_then(serde_json::from_value)
        .map_err(|e| KubectlError::Unavailable(format!("cannot read {}: {e}", o.name_any())))
}

pub async fn get_object(
    client: &Client,
    namespace: &str,
    resource: &ResourceRef,
) -> Result<DynamicObject, KubectlError> {
    let ar = resource.kind.api_resource();
    let (api, what) = match resource.kind {
        ResourceKind::Namespace => (
            Api::<DynamicObject>::all_with(client.clone(), &ar),
            resource.to_string(),
        ),
        ResourceKind::Workload(_) => (
            Api::<DynamicObject>::namespaced_with(client.clone(), namespace, &ar),
            format!("{resource} in namespace {namespace:?}"),
        ),
    };
    api.get(&resource.name)
        .await
        .map_err(|e| api_error(&what, e))
}

pub async fn get_workload(
    client: &Client,
    namespace: &str,
    resource: &ResourceRef,
    command: &str,
) -> Result<Workload, KubectlError> {
    let kind = resource.workload_kind(command)?;
    let object = get_object(client, namespace, resource).await?;
    let view = match kind {
        WorkloadKind::Deployment => {
            let d: Deployment = typed(&object)?;
            let mut view = WorkloadView::from_deployment(&d);
            let replica_sets = owned_replica_sets(client, namespace, &view.uid).await?;
            view.settled = deployment_settled(&d, &replica_sets.iter().collect::<Vec<_>>());
            view
        }
        WorkloadKind::StatefulSet => {
            WorkloadView::from_stateful_set(&typed::<StatefulSet>(&object)?)
        }
        WorkloadKind::DaemonSet => WorkloadView::from_daemon_set(&typed::<DaemonSet>(&object)?),
        WorkloadKind::ReplicaSet => {
            let rs: ReplicaSet = typed(&object)?;
            if let Some(owner) = crate::workload::controller_of(rs.owner_references()) {
                return Err(KubectlError::Usage(format!(
                    "{resource} is controlled by {}/{}: name that instead",
                    owner.kind.to_lowercase(),
                    owner.name
                )));
            }
            WorkloadView::from_replica_set(&rs)
        }
    };
    Ok(Workload { view, object })
}

async fn owned_replica_sets(
    client: &Client,
    namespace: &str,
    owner_uid: &str,
) -> Result<Vec<ReplicaSet>, KubectlError> {
    let list = Api::<ReplicaSet>::namespaced(client.clone(), namespace)
        .list(&ListParams::default())
        .await
        .map_err(|e| api_error(&format!("replicasets in namespace {namespace:?}"), e))?;
    Ok(list
        .items
        .into_iter()
        .filter(|rs| controlled_by(rs.owner_references(), owner_uid))
        .collect())
}

fn controlled_by(
    owners: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference],
    uid: &str,
) -> bool {
    crate::workload::controller_of(owners).is_some_and(|o| o.uid == uid)
}

/// The workload's pods (terminating ones included, as the planner wants them), by name.
pub async fn pods_of(client: &Client, workload: &WorkloadView) -> Result<Vec<Pod>, KubectlError> {
    let namespace = &workload.key.namespace;
    let owners: BTreeSet<String> = match workload.key.kind {
        WorkloadKind::Deployment => owned_replica_sets(client, namespace, &workload.uid)
            .await?
            .iter()
            .filter_map(|rs| rs.uid())
            .collect(),
        _ => BTreeSet::from([workload.uid.clone()]),
    };
    let list = Api::<Pod>::namespaced(client.clone(), namespace)
        .list(&ListParams::default())
        .await
        .map_err(|e| api_error(&format!("pods in namespace {namespace:?}"), e))?;
    let mut pods: Vec<Pod> = list
        .items
        .into_iter()
        .filter(|p| {
            crate::workload::controller_of(p.owner_references())
                .is_some_and(|o| owners.contains(&o.uid))
        })
        .collect();
    pods.sort_by_key(|p| p.name_any());
    Ok(pods)
}

/// The Namespace, or `None` when it cannot be read (a user with rights in one namespace only
/// often cannot read Namespace objects): its name label is then all that is known.
pub async fn namespace(client: &Client, name: &str) -> Option<Namespace> {
    Api::<Namespace>::all(client.clone()).get(name).await.ok()
}

/// Every workload of its own (a ReplicaSet a Deployment controls is not one) in a namespace,
/// or in the cluster.
pub async fn list_workloads(
    client: &Client,
    namespace: Option<&str>,
) -> Result<Vec<WorkloadView>, KubectlError> {
    fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        match namespace {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        }
    }
    let where_ = match namespace {
        Some(ns) => format!("in namespace {ns:?}"),
        None => "in any namespace".to_string(),
    };
    let lp = ListParams::default();
    let err = |what: &str| {
        let what = format!("{what} {where_}");
        move |e| api_error(&what, e)
    };
    let mut views = Vec::new();
    let deployments = api::<Deployment>(client, namespace)
        .list(&lp)
        .await
        .map_err(err("deployments"))?;
    let replica_sets = api::<ReplicaSet>(client, namespace)
        .list(&lp)
        .await
        .map_err(err("replicasets"))?;
    for d in &deployments.items {
        let mut view = WorkloadView::from_deployment(d);
        let owned: Vec<&ReplicaSet> = replica_sets
            .items
            .iter()
            .filter(|rs| controlled_by(rs.owner_references(), &view.uid))
            .collect();
        view.settled = deployment_settled(d, &owned);
        views.push(view);
    }
    for s in api::<StatefulSet>(client, namespace)
        .list(&lp)
        .await
        .map_err(err("statefulsets"))?
        .items
    {
        views.push(WorkloadView::from_stateful_set(&s));
    }
    for d in api::<DaemonSet>(client, namespace)
        .list(&lp)
        .await
        .map_err(err("daemonsets"))?
        .items
    {
        views.push(WorkloadView::from_daemon_set(&d));
    }
    for rs in &replica_sets.items {
        if crate::workload::controller_of(rs.owner_references()).is_none() {
            views.push(WorkloadView::from_replica_set(rs));
        }
    }
    views.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(views)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_name_arguments_follow_kubectl() {
        let cases = [
            ("deploy/hello", "deployment/hello"),
            ("deployment/hello", "deployment/hello"),
            ("deployments.apps/hello", "deployment/hello"),
            ("Deployment/hello", "deployment/hello"),
            ("sts/db-0.x", "statefulset/db-0.x"),
            ("ds/agent", "daemonset/agent"),
            ("rs/r1", "replicaset/r1"),
            ("ns/shop", "namespace/shop"),
        ];
        for (input, shown) in cases {
            let r: ResourceRef = input.parse().unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(r.to_string(), shown, "{input}");
        }
        let errors = [
            (
                "hello",
                "\"hello\" is not TYPE/NAME: give e.g. deploy/hello; TYPE is deployment (deploy), statefulset (sts), daemonset (ds), replicaset (rs) or namespace (ns)",
            ),
            (
                "pod/x",
                "unknown resource type \"pod\" in \"pod/x\": TYPE is deployment (deploy), statefulset (sts), daemonset (ds), replicaset (rs) or namespace (ns)",
            ),
            (
                "deploy/",
                "\"\" in \"deploy/\" is not a valid name (lowercase letters, digits, '-' and '.')",
            ),
            (
                "deploy/Hello",
                "\"Hello\" in \"deploy/Hello\" is not a valid name (lowercase letters, digits, '-' and '.')",
            ),
            (
                "deploy/a/b",
                "\"a/b\" in \"deploy/a/b\" is not a valid name (lowercase letters, digits, '-' and '.')",
            ),
            (
                "deploy/-a",
                "\"-a\" in \"deploy/-a\" is not a valid name (lowercase letters, digits, '-' and '.')",
            ),
        ];
        for (input, message) in errors {
            assert_eq!(input.parse::<ResourceRef>().expect_err(input), message);
        }
        let ns: ResourceRef = "ns/a".parse().expect("parses");
        assert!(matches!(
            ns.workload_kind("plan"),
            Err(KubectlError::Usage(_))
        ));
    }
}
