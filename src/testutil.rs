//! Test support: the Istio-injected fixtures as `Pod`s.

use std::path::PathBuf;

use k8s_openapi::api::core::v1::Pod;
use serde::Deserialize;

/// `<repo>/../shared/fixtures/istio`, where CI and the development machines keep the fixtures.
pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/fixtures/istio"
    ))
}

/// Every pod in a fixture file: `Pod` documents as they are, and one pod (named after the
/// workload) from each Deployment/StatefulSet/DaemonSet template.
pub fn fixture_pods(file: &str) -> Vec<Pod> {
    let path = fixtures_dir().join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read fixture {}: {e}; the Istio fixtures must be at <repo>/../shared/fixtures/istio",
            path.display()
        )
    });
    let mut pods = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let value = serde_yaml::Value::deserialize(doc).expect("fixture is YAML");
        let kind = value
            .get("kind")
            .and_then(|k| k.as_str())
            .unwrap_or_default();
        match kind {
            "Pod" => pods.push(serde_yaml::from_value(value).expect("fixture pod")),
            "Deployment" | "StatefulSet" | "DaemonSet" => {
                let name = value["metadata"]["name"]
                    .as_str()
                    .unwrap_or("pod")
                    .to_string();
                let template = value["spec"]["template"].clone();
                let mut pod: Pod = serde_yaml::from_value(template).expect("fixture template");
                pod.metadata.name = Some(format!("{name}-0"));
                pods.push(pod);
            }
            _ => {}
        }
    }
    assert!(!pods.is_empty(), "no pods in fixture {}", path.display());
    pods
}

/// Every fixture file name.
pub fn fixture_files() -> Vec<String> {
    let dir = fixtures_dir();
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml.injected"))
        .collect();
    files.sort();
    files
}
