//! The parts of a Pod that the pod mutation reads, decoded straight from the review.
//!
//! A full `k8s_openapi` [`Pod`] decode allocates every probe, env var, volume and security
//! context of every container (most of a 6 KB Istio-injected pod) only for the mutation to read
//! names and images. [`AdmittedPod`] keeps what the decision and the patch need: the metadata
//! that finds the owning workload (name, generateName, namespace, labels, ownerReferences;
//! annotations too, so a pod with a malformed annotation is still reported unreadable),
//! every container and init container **in order** with its name, image and restartPolicy (the
//! JSON patch indexes into those arrays), and the readiness gates. Every other field is skipped
//! by serde without being allocated.
//!
//! It decodes what `k8s_openapi` would on the fields it reads (same leniency on `null` and
//! missing fields, a field given twice keeps its last value, same check of `apiVersion`/`kind`);
//! a pod that only one of the two would refuse differs in a field the mutation never reads.
//! The spec is read as the controller's cache reads it ([`crate::cache::lean`]).

use std::borrow::Cow;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::{NamespaceResourceScope, Resource as _};
use serde::de::{Error as _, Unexpected};
use serde::{Deserialize, Deserializer};

pub use crate::cache::lean::{LeanContainer, LeanPodSpec};
use crate::cache::lean::{WirePodMeta, WireSpec, wire_struct};

/// A Pod as the mutation reads it (see the module doc for what is kept).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AdmittedPod {
    /// Only `name`, `generateName`, `namespace`, `labels`, `annotations` and
    /// `ownerReferences` are read; every other field is left empty.
    pub metadata: ObjectMeta,
    pub spec: Option<LeanPodSpec>,
}

wire_struct!(WirePod, "a Pod object", {
    api_version: String = "apiVersion",
    kind: String = "kind",
    metadata: WirePodMeta = "metadata",
    spec: WireSpec = "spec",
});

impl From<WirePodMeta> for ObjectMeta {
    fn from(meta: WirePodMeta) -> Self {
        ObjectMeta {
            name: meta.name,
            generate_name: meta.generate_name,
            namespace: meta.namespace,
            labels: meta.labels,
            annotations: meta.annotations,
            owner_references: meta.owner_references,
            ..ObjectMeta::default()
        }
    }
}

impl<'de> Deserialize<'de> for AdmittedPod {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let pod = WirePod::deserialize(deserializer)?;
        // As `k8s_openapi`'s Pod: the type fields may be absent, but not another type's.
        if let Some(api_version) = pod.api_version.filter(|v| v != Pod::API_VERSION) {
            return Err(D::Error::invalid_value(
                Unexpected::Str(&api_version),
                &Pod::API_VERSION,
            ));
        }
        if let Some(kind) = pod.kind.filter(|k| k != Pod::KIND) {
            return Err(D::Error::invalid_value(Unexpected::Str(&kind), &Pod::KIND));
        }
        Ok(AdmittedPod {
            metadata: pod.metadata.map(ObjectMeta::from).unwrap_or_default(),
            spec: pod.spec.map(LeanPodSpec::from),
        })
    }
}

impl kube::Resource for AdmittedPod {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        Cow::Borrowed(Pod::KIND)
    }
    fn group(_: &()) -> Cow<'_, str> {
        Cow::Borrowed(Pod::GROUP)
    }
    fn version(_: &()) -> Cow<'_, str> {
        Cow::Borrowed(Pod::VERSION)
    }
    fn plural(_: &()) -> Cow<'_, str> {
        Cow::Borrowed(Pod::URL_PATH_SEGMENT)
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::{ContainerRef, PodContainers};
    use crate::testutil::{fixture_files, fixture_pods};
    use kube::ResourceExt;

    /// Every Istio-injected fixture pod reads the same through both decoders: metadata the
    /// mutation reads, every container in order, readiness gates.
    #[test]
    fn reads_what_the_full_pod_decode_reads() {
        let mut pods = 0;
        for file in fixture_files() {
            for full in fixture_pods(&file) {
                let json = serde_json::to_vec(&full).expect("serializes");
                let partial: AdmittedPod = serde_json::from_slice(&json).expect(&file);
                assert_eq!(partial.metadata.name, full.metadata.name, "{file}");
                assert_eq!(partial.labels(), full.labels(), "{file}");
                assert_eq!(
                    partial.owner_references(),
                    full.owner_references(),
                    "{file}"
                );
                let (spec, full_spec) = (partial.spec.expect("spec"), full.spec.expect("spec"));
                let same = |a: Vec<ContainerRef<'_>>, b: Vec<ContainerRef<'_>>| {
                    assert_eq!(a, b, "{file}");
                    a.len()
                };
                let n = same(
                    spec.containers().collect(),
                    full_spec.containers().collect(),
                ) + same(
                    spec.init_containers().collect(),
                    full_spec.init_containers().collect(),
                );
                assert!(n > 1, "{file}: the containers were not read");
                assert_eq!(spec.readiness_gates, full_spec.readiness_gates, "{file}");
                pods += 1;
            }
        }
        assert!(pods > 0, "no fixture pod found");
    }

    #[test]
    fn reads_nulls_and_absences_as_k8s_openapi_does() {
        let pod: AdmittedPod = serde_json::from_str(
            r#"{"metadata":null,"spec":{"containers":null,"initContainers":[{"name":null,"image":"a"}],
                "volumes":[{"name":"v","emptyDir":{}}],"readinessGates":[{"conditionType":"x"}]}}"#,
        )
        .expect("lenient like k8s_openapi");
        let spec = pod.spec.expect("spec");
        assert!(spec.containers.is_empty());
        assert_eq!(spec.init_containers().next().map(|c| c.name), Some(""));
        assert_eq!(spec.readiness_gates.map(|g| g.len()), Some(1));
        let full: Pod = serde_json::from_str(
            r#"{"metadata":null,"spec":{"containers":null,"initContainers":[{"name":null,"image":"a"}]}}"#,
        )
        .expect("k8s_openapi is lenient too");
        assert!(full.spec.expect("spec").containers.is_empty());
    }

    #[test]
    fn a_field_given_twice_keeps_its_last_value_as_in_k8s_openapi() {
        let body = r#"{"metadata":{"name":"a","name":"b"},"spec":{"containers":[
            {"name":"c","image":"x:1","image":"x:2"}],"containers":[
            {"name":"d","image":"y:1","restartPolicy":"Never","image":"y:2"}]}}"#;
        let pod: AdmittedPod = serde_json::from_str(body).expect("reads");
        let full: Pod = serde_json::from_str(body).expect("k8s_openapi reads it");
        assert_eq!(pod.metadata.name.as_deref(), Some("b"));
        assert_eq!(pod.metadata.name, full.metadata.name);
        let (spec, full_spec) = (pod.spec.expect("spec"), full.spec.expect("spec"));
        let read: Vec<_> = spec.containers().collect();
        assert_eq!(read, full_spec.containers().collect::<Vec<_>>());
        assert_eq!(
            read,
            vec![ContainerRef {
                name: "d",
                image: Some("y:2"),
                restart_policy: Some("Never"),
            }]
        );
    }

    #[test]
    fn refuses_what_is_not_a_pod_or_has_the_wrong_shape_where_read() {
        for (body, expected) in [
            (r#"{"apiVersion":"apps/v1","kind":"Pod"}"#, "apps/v1"),
            (r#"{"apiVersion":"v1","kind":"Service"}"#, "Service"),
            (r#"{"spec":{"containers":7}}"#, "integer `7`"),
            (r#"{"spec":{"containers":[{"image":3}]}}"#, "integer `3`"),
            (r#"{"metadata":{"labels":{"a":1}}}"#, "integer `1`"),
            (r#"[]"#, "expected a Pod object"),
        ] {
            let err = serde_json::from_str::<AdmittedPod>(body).expect_err(body);
            assert!(err.to_string().contains(expected), "{body}: {err}");
            serde_json::from_str::<Pod>(body).expect_err("k8s_openapi refuses it too");
        }
    }
}
