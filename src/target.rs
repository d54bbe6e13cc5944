//! Which containers of a pod an annotation targets, and where they are in the pod spec.

use k8s_openapi::api::core::v1::PodSpec;
use serde::{Deserialize, Serialize};

use crate::annotation::{self, AnnotationError, Target};
use crate::image::ImageError;

/// Where the effective targets came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TargetSource {
    Workload,
    Namespace,
}

/// The targets that apply to a workload.
///
/// Rule: the workload's own `inplace-upgrade` annotation, when present, **replaces** its
/// Namespace's annotation entirely (it is not merged per container): what the workload owner
/// wrote is the whole truth for that workload, and removing a container from it never brings
/// back a Namespace-wide target by surprise. Without a workload annotation the Namespace's
/// applies. `None` means neither is set.
pub fn effective_targets(
    workload_annotation: Option<&str>,
    namespace_annotation: Option<&str>,
) -> Result<Option<(TargetSource, Vec<Target>)>, AnnotationError> {
    match (workload_annotation, namespace_annotation) {
        (Some(value), _) => Ok(Some((TargetSource::Workload, annotation::parse(value)?))),
        (None, Some(value)) => Ok(Some((TargetSource::Namespace, annotation::parse(value)?))),
        (None, None) => Ok(None),
    }
}

/// `containers` or a native sidecar in `initContainers` (`restartPolicy: Always`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ContainerKind {
    Container,
    NativeSidecar,
}

impl ContainerKind {
    /// The pod spec field holding this kind of container.
    pub fn spec_field(self) -> &'static str {
        match self {
            ContainerKind::Container => "containers",
            ContainerKind::NativeSidecar => "initContainers",
        }
    }
}

/// A container found in a pod spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerLocation {
    pub name: String,
    pub kind: ContainerKind,
    /// Index in `containers` or `initContainers`.
    pub index: usize,
    /// The image in the spec (empty when unset, which the API server does not allow).
    pub image: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error(
        "container {container:?} is a run-to-completion init container (in initContainers without restartPolicy: Always): it has already finished and Kubernetes never runs it again, so changing its image in place has no effect; target the long-running container instead (e.g. istio-proxy, not istio-init)"
    )]
    RunToCompletionInit { container: String },
    #[error("container {container:?}: {source}")]
    Image {
        container: String,
        #[source]
        source: ImageError,
    },
}

/// One container of a pod spec as [`locate`] reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContainerRef<'a> {
    pub name: &'a str,
    pub image: Option<&'a str>,
    pub restart_policy: Option<&'a str>,
}

/// What locating a target reads of a pod spec: its containers and init containers, each in
/// the spec's order (the index is what a JSON patch addresses). Implemented by the full
/// [`PodSpec`] and by the admission webhook's partial pod decode.
pub trait PodContainers {
    fn containers(&self) -> impl Iterator<Item = ContainerRef<'_>>;
    fn init_containers(&self) -> impl Iterator<Item = ContainerRef<'_>>;
}

impl PodContainers for PodSpec {
    fn containers(&self) -> impl Iterator<Item = ContainerRef<'_>> {
        self.containers.iter().map(|c| ContainerRef {
            name: &c.name,
            image: c.image.as_deref(),
            restart_policy: c.restart_policy.as_deref(),
        })
    }
    fn init_containers(&self) -> impl Iterator<Item = ContainerRef<'_>> {
        self.init_containers.iter().flatten().map(|c| ContainerRef {
            name: &c.name,
            image: c.image.as_deref(),
            restart_policy: c.restart_policy.as_deref(),
        })
    }
}

/// Find a container by name. `Ok(None)` means the pod has no such container: the target does
/// not apply to this pod (a Namespace annotation applies only to pods that have the
/// container), which is not an error.
pub fn locate(
    spec: &impl PodContainers,
    container: &str,
) -> Result<Option<ContainerLocation>, TargetError> {
    let found = |kind, index, c: ContainerRef<'_>| ContainerLocation {
        name: c.name.to_owned(),
        kind,
        index,
        image: c.image.unwrap_or_default().to_owned(),
    };
    if let Some((index, c)) = spec
        .containers()
        .enumerate()
        .find(|(_, c)| c.name == container)
    {
        return Ok(Some(found(ContainerKind::Container, index, c)));
    }
    match spec
        .init_containers()
        .enumerate()
        .find(|(_, c)| c.name == container)
    {
        Some((index, c)) if c.restart_policy == Some("Always") => {
            Ok(Some(found(ContainerKind::NativeSidecar, index, c)))
        }
        Some(_) => Err(TargetError::RunToCompletionInit {
            container: container.into(),
        }),
        None => Ok(None),
    }
}

/// A target resolved against one pod: where the container is, what it runs and what it
/// should run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedTarget {
    pub location: ContainerLocation,
    /// The resolved image (see [`crate::image::ImageSpec::resolve`]).
    pub image: String,
}

impl ResolvedTarget {
    /// Whether the spec already asks for the target image (normalised comparison).
    pub fn is_current(&self) -> bool {
        crate::image::same_image(&self.location.image, &self.image)
    }
}

/// Every target resolved against a pod spec, in annotation order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodTargets {
    pub resolved: Vec<ResolvedTarget>,
    /// Targeted containers this pod does not have.
    pub not_applicable: Vec<String>,
}

impl PodTargets {
    /// The targets whose container does not run the target image yet.
    pub fn pending(&self) -> impl Iterator<Item = &ResolvedTarget> {
        self.resolved.iter().filter(|t| !t.is_current())
    }
}

/// Resolve every target against a pod spec.
pub fn resolve(spec: &impl PodContainers, targets: &[Target]) -> Result<PodTargets, TargetError> {
    let mut out = PodTargets::default();
    for target in targets {
        match locate(spec, &target.container)? {
            Some(location) => {
                let image =
                    target
                        .image
                        .resolve(&location.image)
                        .map_err(|source| TargetError::Image {
                            container: target.container.clone(),
                            source,
                        })?;
                out.resolved.push(ResolvedTarget { location, image });
            }
            None => out.not_applicable.push(target.container.clone()),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Container;

    fn container(name: &str, image: &str, restart_policy: Option<&str>) -> Container {
        Container {
            name: name.into(),
            image: Some(image.into()),
            restart_policy: restart_policy.map(str::to_string),
            ..Container::default()
        }
    }

    fn istio_native_spec() -> PodSpec {
        PodSpec {
            containers: vec![container("app", "nginx:1", None)],
            init_containers: Some(vec![
                container(
                    "istio-init",
                    "registry.istio.io/testing/proxyv2:latest",
                    None,
                ),
                container(
                    "istio-proxy",
                    "registry.istio.io/testing/proxyv2:latest",
                    Some("Always"),
                ),
            ]),
            ..PodSpec::default()
        }
    }

    #[test]
    fn workload_annotation_replaces_namespace_annotation() {
        let (source, targets) = effective_targets(Some("app=nginx:2"), Some("istio-proxy=:1.24"))
            .expect("valid")
            .expect("some");
        assert_eq!(source, TargetSource::Workload);
        assert_eq!(annotation::render(&targets), "app=nginx:2");
        let (source, targets) = effective_targets(None, Some("istio-proxy=:1.24"))
            .expect("valid")
            .expect("some");
        assert_eq!(source, TargetSource::Namespace);
        assert_eq!(annotation::render(&targets), "istio-proxy=:1.24");
        assert_eq!(effective_targets(None, None), Ok(None));
        assert!(effective_targets(Some("bad"), Some("app=nginx")).is_err());
    }

    #[test]
    fn locates_containers_and_native_sidecars() {
        let spec = istio_native_spec();
        let app = locate(&spec, "app").expect("ok").expect("found");
        assert_eq!((app.kind, app.index), (ContainerKind::Container, 0));
        let proxy = locate(&spec, "istio-proxy").expect("ok").expect("found");
        assert_eq!((proxy.kind, proxy.index), (ContainerKind::NativeSidecar, 1));
        assert_eq!(proxy.kind.spec_field(), "initContainers");
        assert_eq!(locate(&spec, "missing"), Ok(None));
        let err = locate(&spec, "istio-init").expect_err("init container");
        assert!(
            err.to_string().contains("run-to-completion init container"),
            "{err}"
        );
        assert!(err.to_string().contains("\"istio-init\""), "{err}");
    }

    #[test]
    fn resolves_targets_per_pod() {
        let spec = istio_native_spec();
        let targets = annotation::parse("istio-proxy=proxyv2:1.24.2, missing=x:1, app=nginx:1")
            .expect("valid");
        let resolved = resolve(&spec, &targets).expect("resolves");
        assert_eq!(resolved.not_applicable, vec!["missing".to_string()]);
        assert_eq!(resolved.resolved.len(), 2);
        assert_eq!(
            resolved.resolved[0].image,
            "registry.istio.io/testing/proxyv2:1.24.2"
        );
        // app is already at nginx:1 (normalised comparison), so only the proxy is pending.
        let pending: Vec<_> = resolved
            .pending()
            .map(|t| t.location.name.as_str())
            .collect();
        assert_eq!(pending, vec!["istio-proxy"]);
        let err = resolve(&spec, &annotation::parse("istio-init=:2").expect("valid"))
            .expect_err("init container");
        assert!(matches!(err, TargetError::RunToCompletionInit { .. }));
    }
}
