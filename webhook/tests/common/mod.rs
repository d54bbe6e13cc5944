//! Shared by the integration tests: real Istio fixtures turned into AdmissionReviews, and a
//! recording handler.
#![allow(dead_code)]

pub mod tls;

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use inplace_upgrade_webhook::{AdmissionRequest, AdmissionResponse};
use serde::Deserialize;
use serde_json::{Value, json};

pub const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/fixtures/istio");

/// Every document of every `*.yaml.injected` fixture, with the file it came from.
pub fn fixture_objects() -> Vec<(String, Value)> {
    let dir = Path::new(FIXTURES);
    let entries = std::fs::read_dir(dir).unwrap_or_else(|err| {
        panic!(
            "cannot read the Istio fixtures at {}: {err}; the repository must be cloned next to \
             `shared/` (see shared/fixtures/istio/README.md)",
            dir.display()
        )
    });
    let mut files: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.to_string_lossy().ends_with(".yaml.injected"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no *.yaml.injected in {}", dir.display());
    let mut objects = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file)
            .unwrap_or_else(|err| panic!("cannot read {}: {err}", file.display()));
        for document in serde_yaml::Deserializer::from_str(&text) {
            let value = Value::deserialize(document)
                .unwrap_or_else(|err| panic!("{} is not YAML: {err}", file.display()));
            if value.is_object() {
                let name = file.file_name().map(|n| n.to_string_lossy().into_owned());
                objects.push((name.unwrap_or_default(), value));
            }
        }
    }
    objects
}

/// The fixture object of `kind` in file `file`.
pub fn fixture(file: &str, kind: &str) -> Value {
    fixture_objects()
        .into_iter()
        .find(|(name, object)| name == file && object["kind"] == kind)
        .map(|(_, object)| object)
        .unwrap_or_else(|| panic!("no {kind} in fixture {file}"))
}

/// The Pod a workload's controller would create from its template.
pub fn pod_from_template(workload: &Value, namespace: &str) -> Value {
    let template = &workload["spec"]["template"];
    let name = workload["metadata"]["name"].as_str().unwrap_or("pod");
    let mut metadata = template["metadata"].clone();
    metadata["generateName"] = json!(format!("{name}-"));
    metadata["namespace"] = json!(namespace);
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": template["spec"]})
}

/// group, version, resource (plural) of a fixture kind.
pub fn gvr(kind: &str) -> (&'static str, &'static str, &'static str) {
    match kind {
        "Pod" => ("", "v1", "pods"),
        "Service" => ("", "v1", "services"),
        "Namespace" => ("", "v1", "namespaces"),
        "Deployment" => ("apps", "v1", "deployments"),
        "StatefulSet" => ("apps", "v1", "statefulsets"),
        "DaemonSet" => ("apps", "v1", "daemonsets"),
        "ReplicaSet" => ("apps", "v1", "replicasets"),
        other => panic!("add {other} to gvr()"),
    }
}

/// An AdmissionReview v1 the way kube-apiserver sends it.
pub fn review(
    uid: &str,
    operation: &str,
    object: &Value,
    old: Option<&Value>,
    dry_run: bool,
) -> Value {
    let kind = object["kind"].as_str().unwrap_or_default();
    let (group, version, resource) = gvr(kind);
    let namespace = object["metadata"]["namespace"]
        .as_str()
        .unwrap_or("default");
    let name = object["metadata"]["name"].as_str().unwrap_or("");
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": group, "version": version, "kind": kind},
            "resource": {"group": group, "version": version, "resource": resource},
            "requestKind": {"group": group, "version": version, "kind": kind},
            "requestResource": {"group": group, "version": version, "resource": resource},
            "name": name,
            "namespace": namespace,
            "operation": operation,
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller",
                         "groups": ["system:serviceaccounts", "system:authenticated"]},
            "object": object,
            "oldObject": old,
            "dryRun": dry_run,
            "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"},
        }
    })
}

/// What the recording handler saw of one request.
#[derive(Clone, Debug, PartialEq)]
pub struct Seen {
    pub uid: String,
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
    pub operation: String,
    pub dry_run: bool,
    pub object_name: Option<String>,
    pub containers: Vec<String>,
    pub init_containers: Vec<String>,
    pub object_bytes: usize,
}

pub type Log = Arc<Mutex<Vec<Seen>>>;

fn names(spec: &Value, field: &str) -> Vec<String> {
    spec[field]
        .as_array()
        .map(|list| {
            list.iter()
                .filter_map(|c| c["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// A handler that records each request and answers like a mutating webhook would: it adds
/// an annotation naming the uid, unless the object's name starts with `deny`, which it
/// denies; an object named `panic` makes it panic.
pub fn recording_handler() -> (
    Log,
    impl Fn(&AdmissionRequest) -> AdmissionResponse + Send + Sync + 'static,
) {
    let log: Log = Arc::default();
    let seen = log.clone();
    let handler = move |req: &AdmissionRequest| {
        let object = req.object.as_ref();
        let object_name = object.and_then(|o| o.metadata.name.clone());
        let spec = object.map(|o| o.data["spec"].clone()).unwrap_or_default();
        seen.lock().expect("log lock").push(Seen {
            uid: req.uid.clone(),
            kind: req.kind.kind.clone(),
            namespace: req.namespace.clone(),
            name: req.name.clone(),
            operation: format!("{:?}", req.operation),
            dry_run: req.dry_run,
            object_name: object_name.clone(),
            containers: names(&spec, "containers"),
            init_containers: names(&spec, "initContainers"),
            object_bytes: object
                .map(|o| serde_json::to_vec(o).map(|v| v.len()).unwrap_or(0))
                .unwrap_or(0),
        });
        let name = object_name.unwrap_or_default();
        if name == "panic" {
            panic!("test handler asked to panic");
        }
        if name.starts_with("deny") {
            return AdmissionResponse::from(req).deny(format!("{name} is not allowed"));
        }
        let patch: json_patch::Patch = serde_json::from_value(json!([
            {"op": "add", "path": "/metadata/annotations/reviewed-by-test", "value": req.uid}
        ]))
        .expect("static patch");
        let mut response = AdmissionResponse::from(req)
            .with_patch(patch)
            .expect("serializable patch");
        if req.dry_run {
            response.warnings = Some(vec!["dry run: nothing recorded".into()]);
        }
        response
    };
    (log, handler)
}
