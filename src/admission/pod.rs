//! The parts of a Pod that the pod mutation reads, decoded straight from the review.
//!
//! A full `k8s_openapi` [`Pod`] decode allocates every probe, env var, volume and security
//! context of every container (most of a 6 KB Istio-injected pod) only for the mutation to read
//! names and images. [`AdmittedPod`] keeps what the decision and the patch need: the metadata
//! that finds the owning workload (name, generateName, namespace, labels, ownerReferences),
//! every container and init container **in order** with its name, image and restartPolicy (the
//! JSON patch indexes into those arrays), and the readiness gates. Every other field is skipped
//! by serde without being allocated.
//!
//! It decodes what `k8s_openapi` would (same leniency on `null` and missing fields, same check
//! of `apiVersion`/`kind`) on the fields it reads; a pod that only one of the two would refuse
//! differs in a field the mutation never reads.

use std::borrow::Cow;
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, PodReadinessGate};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::{NamespaceResourceScope, Resource as _};
use serde::de::{Error as _, MapAccess, Visitor, value::MapAccessDeserializer};
use serde::{Deserialize, Deserializer};

use crate::target::{ContainerRef, PodContainers};

/// A Pod as the mutation reads it (see the module doc for what is kept).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AdmittedPod {
    /// Only `name`, `generateName`, `namespace`, `labels` and `ownerReferences` are read;
    /// every other field is left empty.
    pub metadata: ObjectMeta,
    pub spec: Option<AdmittedPodSpec>,
}

/// The containers and readiness gates of a pod spec.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdmittedPodSpec {
    /// Every container, in the pod's order.
    #[serde(default, deserialize_with = "null_as_default")]
    pub containers: Vec<AdmittedContainer>,
    /// Every init container, in the pod's order (`None` when the pod has none).
    #[serde(default)]
    pub init_containers: Option<Vec<AdmittedContainer>>,
    #[serde(default)]
    pub readiness_gates: Option<Vec<PodReadinessGate>>,
}

/// One container (or init container) of the pod: what locating and patching it needs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdmittedContainer {
    #[serde(default, deserialize_with = "null_as_default")]
    pub name: String,
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default)]
    pub restart_policy: Option<String>,
}

/// The metadata fields read, decoded without the rest (annotations, managedFields, …).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AdmittedMeta {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    generate_name: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    owner_references: Option<Vec<OwnerReference>>,
}

impl From<AdmittedMeta> for ObjectMeta {
    fn from(meta: AdmittedMeta) -> Self {
        ObjectMeta {
            name: meta.name,
            generate_name: meta.generate_name,
            namespace: meta.namespace,
            labels: meta.labels,
            owner_references: meta.owner_references,
            ..ObjectMeta::default()
        }
    }
}

/// The pod as it is on the wire, before the checks `k8s_openapi` makes.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WirePod {
    #[serde(default)]
    api_version: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    metadata: Option<AdmittedMeta>,
    #[serde(default)]
    spec: Option<AdmittedPodSpec>,
}

impl<'de> Deserialize<'de> for AdmittedPod {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // A map only: serde's derive would also read a JSON array as the struct's fields.
        let pod = deserializer.deserialize_map(PodVisitor)?;
        // As `k8s_openapi`'s Pod: the type fields may be absent, but not another type's.
        if let Some(api_version) = pod.api_version.filter(|v| v != Pod::API_VERSION) {
            return Err(D::Error::invalid_value(
                serde::de::Unexpected::Str(&api_version),
                &Pod::API_VERSION,
            ));
        }
        if let Some(kind) = pod.kind.filter(|k| k != Pod::KIND) {
            return Err(D::Error::invalid_value(
                serde::de::Unexpected::Str(&kind),
                &Pod::KIND,
            ));
        }
        Ok(AdmittedPod {
            metadata: pod.metadata.map(ObjectMeta::from).unwrap_or_default(),
            spec: pod.spec,
        })
    }
}

struct PodVisitor;

impl<'de> Visitor<'de> for PodVisitor {
    type Value = WirePod;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a Pod object")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<WirePod, A::Error> {
        WirePod::deserialize(MapAccessDeserializer::new(map))
    }
}

/// `null` reads as the default, as `k8s_openapi` reads its required fields.
fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Option::<T>::deserialize(deserializer).map(Option::unwrap_or_default)
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

impl PodContainers for AdmittedPodSpec {
    fn containers(&self) -> impl Iterator<Item = ContainerRef<'_>> {
        self.containers.iter().map(AdmittedContainer::as_ref)
    }
    fn init_containers(&self) -> impl Iterator<Item = ContainerRef<'_>> {
        self.init_containers
            .iter()
            .flatten()
            .map(AdmittedContainer::as_ref)
    }
}

impl AdmittedContainer {
    fn as_ref(&self) -> ContainerRef<'_> {
        ContainerRef {
            name: &self.name,
            image: self.image.as_deref(),
            restart_policy: self.restart_policy.as_deref(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
