//! The Istio revision guard: an image-only move of Istio's injected proxy is right within one
//! Istio revision (an in-place istiod upgrade) and wrong across revisions. The proxy's
//! environment is frozen at injection (`CA_ADDR` names the revision's istiod, `PROXY_CONFIG`),
//! so a pod injected by revision `1-24` whose namespace now asks for `1-25` needs re-injection
//! (a new pod), not a new image.
//!
//! What a pod was injected with: Istio's injector writes `sidecar.istio.io/status` (JSON) on
//! every pod it injects, naming the containers it added (`containers`, `initContainers`) and
//! its own revision (`revision`, `"default"` for an istiod installed without a revision name).
//! Only those containers are guarded: a target on the app container is never held back.
//!
//! What the pod's namespace now asks, by the selectors of Istio's injector webhooks
//! (`rev.namespace.`, `rev.object.`, `namespace.` and `object.sidecar-injector.istio.io` in
//! `istio-discovery/templates/revision-tags-mwc.yaml`), evaluated on the pod's own labels (its
//! template's: a replacement pod would carry them):
//! 1. pod label `sidecar.istio.io/inject=false`: no injection (it opts out under every rule);
//! 2. Namespace label `istio-injection`: `enabled` asks for the default revision, any other
//!    value for no injection; it wins over the Namespace's `istio.io/rev`;
//! 3. Namespace label `istio.io/rev=R`: revision R (the pod's `istio.io/rev` is then ignored);
//! 4. neither Namespace label: pod label `istio.io/rev=R` asks for R, else pod label
//!    `sidecar.istio.io/inject=true` for the default revision;
//! 5. no label at all: nothing is asked, and the guard has nothing to compare with (pods
//!    injected by hand with `istioctl kube-inject` live there): it lets the pod through.
//!    (Istio's `enableNamespacesByDefault` would inject the default revision there; it is an
//!    install option the guard cannot see.)
//!
//! Pod labels do not override the Namespace's revision (Istio's `rev.object` webhook requires
//! the Namespace to have neither label); only the pod's opt-out does.
//!
//! "The default revision" is identified by its name as the injector records it: `default`.
//! Revision tags (a `default` tag, or `istio.io/rev=prod-stable`, pointing at a named revision
//! such as `1-25-0`) are aliases that only the injector's MutatingWebhookConfigurations
//! resolve; the guard compares names and does not read them, so a pod injected through a tag
//! (its status records the revision, not the tag) shows as a mismatch and is held back: the
//! guard fails safe, and says both names so an operator can judge and turn it off
//! (`istioRevisionGuard: false` on the policy).
//!
//! Input is untrusted (anyone who can create a pod writes the annotation): an absent annotation
//! means "not injected by Istio" (nothing to guard), a malformed one or one without a revision
//! holds back every target of the pod (which containers Istio added cannot be told), with the
//! parse error in the reason.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::core::v1::Pod;
use serde::{Deserialize, Serialize};

/// Written by Istio's injector on every pod it injects.
pub const STATUS_ANNOTATION: &str = "sidecar.istio.io/status";
/// Revision label, on Namespaces and pods.
pub const REVISION_LABEL: &str = "istio.io/rev";
/// The legacy Namespace label (`enabled` / `disabled`).
pub const INJECTION_LABEL: &str = "istio-injection";
/// The pod's opt-in/opt-out label.
pub const INJECT_LABEL: &str = "sidecar.istio.io/inject";
/// The name Istio records for the revision of an istiod installed without one, and the
/// revision `istio-injection=enabled` asks for.
pub const DEFAULT_REVISION: &str = "default";
/// The reason the guard gives, first in every message it writes (status, Events, `plan`).
pub const REASON: &str = "IstioRevisionMismatch";

/// What Istio's injector recorded on a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Injected {
    /// The containers and init containers the injector added (`istio-init`, `istio-proxy`).
    pub containers: Vec<String>,
    /// The injector's revision.
    pub revision: String,
}

/// Why `sidecar.istio.io/status` cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StatusError {
    #[error("annotation {STATUS_ANNOTATION} is not the injector's JSON: {0}")]
    Malformed(String),
    #[error("annotation {STATUS_ANNOTATION} names no revision")]
    NoRevision,
}

/// What the guard reads of the injector's record (it also lists volumes and pull secrets).
#[derive(Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
struct Status {
    // `null` in the injector's output when it added none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    init_containers: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    containers: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    revision: Option<String>,
}

/// The injector's record as the controller's cache keeps it: only what the guard reads,
/// re-serialised (about a quarter of the injector's text). A record that does not parse is
/// kept as it is, so that it stays unreadable, with the same error.
pub fn lean_status(raw: String) -> String {
    serde_json::from_str::<Status>(&raw)
        .ok()
        .and_then(|s| serde_json::to_string(&s).ok())
        .unwrap_or(raw)
}

/// The injector's record in `annotations`: `Ok(None)` when there is none (not injected).
pub fn injected(annotations: &BTreeMap<String, String>) -> Result<Option<Injected>, StatusError> {
    let Some(raw) = annotations.get(STATUS_ANNOTATION) else {
        return Ok(None);
    };
    let status: Status =
        serde_json::from_str(raw).map_err(|e| StatusError::Malformed(e.to_string()))?;
    let revision = status
        .revision
        .filter(|r| !r.is_empty())
        .ok_or(StatusError::NoRevision)?;
    let containers = status
        .init_containers
        .into_iter()
        .flatten()
        .chain(status.containers.into_iter().flatten())
        .collect();
    Ok(Some(Injected {
        containers,
        revision,
    }))
}

/// What a new pod with these labels, in a Namespace with these, would be injected with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Asked {
    /// This revision; `via` says which label asked (for the message).
    Revision { name: String, via: &'static str },
    /// No injection at all: a new pod would have no proxy.
    NotInjected { via: &'static str },
    /// No Istio label on the Namespace or the pod: nothing to compare with.
    Nothing,
}

/// The revision asked for by the Namespace's and the pod's labels (Istio's webhook selectors,
/// in the order of the module's documentation).
pub fn asked(
    namespace_labels: &BTreeMap<String, String>,
    pod_labels: &BTreeMap<String, String>,
) -> Asked {
    let label = |labels: &BTreeMap<String, String>, key: &str| labels.get(key).cloned();
    if label(pod_labels, INJECT_LABEL).as_deref() == Some("false") {
        return Asked::NotInjected {
            via: "pod label sidecar.istio.io/inject=false",
        };
    }
    if let Some(value) = label(namespace_labels, INJECTION_LABEL) {
        return if value == "enabled" {
            Asked::Revision {
                name: DEFAULT_REVISION.into(),
                via: "Namespace label istio-injection=enabled",
            }
        } else {
            Asked::NotInjected {
                via: "Namespace label istio-injection",
            }
        };
    }
    if let Some(name) = label(namespace_labels, REVISION_LABEL) {
        return Asked::Revision {
            name,
            via: "Namespace label istio.io/rev",
        };
    }
    if let Some(name) = label(pod_labels, REVISION_LABEL) {
        return Asked::Revision {
            name,
            via: "pod label istio.io/rev",
        };
    }
    if label(pod_labels, INJECT_LABEL).as_deref() == Some("true") {
        return Asked::Revision {
            name: DEFAULT_REVISION.into(),
            via: "pod label sidecar.istio.io/inject=true",
        };
    }
    Asked::Nothing
}

/// Why a pod's targets are held back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mismatch {
    /// The injected container would move to a new image but its namespace asks for another
    /// revision (or none).
    Revision {
        container: String,
        injected: String,
        asked: Asked,
    },
    /// The injector's record cannot be read: which containers it added is unknown.
    Unreadable {
        container: String,
        error: StatusError,
    },
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const FIX: &str = "re-inject the pod (e.g. kubectl rollout restart) or set istioRevisionGuard: false on the policy";
        match self {
            Mismatch::Revision {
                container,
                injected,
                asked: Asked::Revision { name, via },
            } => write!(
                f,
                "{REASON}: {container} was injected by Istio revision {injected:?} but the {via} asks for {name:?}: an image-only change keeps the old revision's proxy configuration, so {FIX}"
            ),
            Mismatch::Revision {
                container,
                injected,
                asked: Asked::NotInjected { via },
            } => write!(
                f,
                "{REASON}: {container} was injected by Istio revision {injected:?} but a new pod would not be injected ({via}), so {FIX}"
            ),
            Mismatch::Revision {
                container,
                injected,
                asked: Asked::Nothing,
            } => write!(
                f,
                "{REASON}: {container} was injected by Istio revision {injected:?} and no label asks for a revision, so {FIX}"
            ),
            Mismatch::Unreadable { container, error } => {
                write!(f, "{REASON}: {container}: {error}, so {FIX}")
            }
        }
    }
}

/// The guard on one pod: `Some` when changing `containers` (the targets pending on it) in place
/// would move Istio's injected proxy across revisions. `namespace_labels` are the labels of the
/// pod's Namespace now.
pub fn check<'c>(
    pod: &Pod,
    namespace_labels: &BTreeMap<String, String>,
    mut containers: impl Iterator<Item = &'c str>,
) -> Option<Mismatch> {
    let empty = BTreeMap::new();
    let annotations = pod.metadata.annotations.as_ref().unwrap_or(&empty);
    let injected = match injected(annotations) {
        Ok(Some(i)) => i,
        Ok(None) => return None,
        Err(error) => {
            return containers.next().map(|c| Mismatch::Unreadable {
                container: c.to_string(),
                error,
            });
        }
    };
    let container = containers.find(|c| injected.containers.iter().any(|i| i == c))?;
    let asked = asked(
        namespace_labels,
        pod.metadata.labels.as_ref().unwrap_or(&empty),
    );
    match &asked {
        Asked::Nothing => None,
        Asked::Revision { name, .. } if *name == injected.revision => None,
        _ => Some(Mismatch::Revision {
            container: container.to_string(),
            injected: injected.revision,
            asked,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{fixture_files, fixture_pods};

    fn istio_fixture_pods() -> Vec<(String, Pod)> {
        fixture_files()
            .into_iter()
            .flat_map(|f| fixture_pods(&f).into_iter().map(move |p| (f.clone(), p)))
            .collect()
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn status(json: &str) -> BTreeMap<String, String> {
        labels(&[(STATUS_ANNOTATION, json)])
    }

    #[test]
    fn reads_the_injectors_record() {
        let native = r#"{"initContainers":["istio-init","istio-proxy"],"containers":null,"volumes":["istio-envoy"],"imagePullSecrets":null,"revision":"default"}"#;
        let regular =
            r#"{"initContainers":["istio-init"],"containers":["istio-proxy"],"revision":"1-25-0"}"#;
        type Case = (
            &'static str,
            BTreeMap<String, String>,
            Result<Option<Injected>, StatusError>,
        );
        let cases: &[Case] = &[
            ("absent: not injected", BTreeMap::new(), Ok(None)),
            (
                "native sidecar",
                status(native),
                Ok(Some(Injected {
                    containers: vec!["istio-init".into(), "istio-proxy".into()],
                    revision: "default".into(),
                })),
            ),
            (
                "regular container, named revision",
                status(regular),
                Ok(Some(Injected {
                    containers: vec!["istio-init".into(), "istio-proxy".into()],
                    revision: "1-25-0".into(),
                })),
            ),
            (
                "no revision field",
                status(r#"{"containers":["istio-proxy"]}"#),
                Err(StatusError::NoRevision),
            ),
            (
                "empty revision",
                status(r#"{"containers":["istio-proxy"],"revision":""}"#),
                Err(StatusError::NoRevision),
            ),
        ];
        for (name, annotations, want) in cases {
            assert_eq!(&injected(annotations), want, "{name}");
        }
        for bad in ["", "not json", r#"{"revision":1}"#, r#"{"containers":"x"}"#] {
            assert!(
                matches!(injected(&status(bad)), Err(StatusError::Malformed(_))),
                "{bad:?} is malformed"
            );
        }
        // serde reads a JSON array as a struct's fields in order: an empty one has none.
        assert_eq!(injected(&status("[]")), Err(StatusError::NoRevision));
    }

    /// The cache's lean record reads as the injector's own, for every fixture and every
    /// broken shape.
    #[test]
    fn the_lean_record_reads_as_the_original() {
        let mut records: Vec<String> = istio_fixture_pods()
            .into_iter()
            .filter_map(|(_, p)| p.metadata.annotations?.remove(STATUS_ANNOTATION))
            .collect();
        assert!(records.len() >= 9);
        records.extend(
            [
                "",
                "{",
                "[]",
                r#"{"containers":["istio-proxy"]}"#,
                r#"{"revision":1}"#,
            ]
            .map(String::from),
        );
        for raw in records {
            let lean = lean_status(raw.clone());
            assert!(lean.len() <= raw.len(), "{raw:?} → {lean:?}");
            assert_eq!(injected(&status(&lean)), injected(&status(&raw)), "{raw:?}");
        }
    }

    #[test]
    fn asks_as_istios_injector_webhooks_select() {
        let rev = |name: &str, via| Asked::Revision {
            name: name.into(),
            via,
        };
        type Labels = &'static [(&'static str, &'static str)];
        let cases: &[(&str, Labels, Labels, Asked)] = &[
            (
                "istio-injection=enabled: the default revision",
                &[("istio-injection", "enabled")],
                &[],
                rev("default", "Namespace label istio-injection=enabled"),
            ),
            (
                "istio-injection wins over the Namespace's istio.io/rev",
                &[("istio-injection", "enabled"), ("istio.io/rev", "canary")],
                &[],
                rev("default", "Namespace label istio-injection=enabled"),
            ),
            (
                "istio-injection=disabled: none, whatever the revision labels",
                &[("istio-injection", "disabled"), ("istio.io/rev", "canary")],
                &[("istio.io/rev", "canary")],
                Asked::NotInjected {
                    via: "Namespace label istio-injection",
                },
            ),
            (
                "Namespace istio.io/rev",
                &[("istio.io/rev", "1-25-0")],
                &[],
                rev("1-25-0", "Namespace label istio.io/rev"),
            ),
            (
                "the Namespace's revision wins over the pod's",
                &[("istio.io/rev", "1-25-0")],
                &[("istio.io/rev", "1-24-0")],
                rev("1-25-0", "Namespace label istio.io/rev"),
            ),
            (
                "the pod's opt-out wins over the Namespace",
                &[("istio.io/rev", "1-25-0")],
                &[("sidecar.istio.io/inject", "false")],
                Asked::NotInjected {
                    via: "pod label sidecar.istio.io/inject=false",
                },
            ),
            (
                "no Namespace label: the pod's revision",
                &[],
                &[
                    ("istio.io/rev", "canary"),
                    ("sidecar.istio.io/inject", "true"),
                ],
                rev("canary", "pod label istio.io/rev"),
            ),
            (
                "no Namespace label: the pod's opt-in, the default revision",
                &[],
                &[("sidecar.istio.io/inject", "true")],
                rev("default", "pod label sidecar.istio.io/inject=true"),
            ),
            (
                "no label anywhere",
                &[("team", "a")],
                &[("app", "x")],
                Asked::Nothing,
            ),
        ];
        for (name, ns, pod, want) in cases {
            assert_eq!(&asked(&labels(ns), &labels(pod)), want, "{name}");
        }
    }

    /// Every injected pod of the Istio fixtures (revision `default`, native sidecars and
    /// regular containers): held back only across revisions, and only for the injected proxy.
    #[test]
    fn guards_the_fixtures_proxy_only_across_revisions() {
        let pods = istio_fixture_pods();
        assert!(pods.len() >= 9, "fixtures: {}", pods.len());
        for (file, pod) in &pods {
            let same = labels(&[("istio-injection", "enabled")]);
            let same_rev = labels(&[("istio.io/rev", "default")]);
            let moved = labels(&[("istio.io/rev", "canary")]);
            let dropped = labels(&[("istio-injection", "disabled")]);
            let unlabelled = labels(&[("team", "a")]);
            let proxy = || ["istio-proxy"].into_iter();
            assert_eq!(check(pod, &same, proxy()), None, "{file}: same revision");
            assert_eq!(
                check(pod, &same_rev, proxy()),
                None,
                "{file}: same revision"
            );
            let m = check(pod, &moved, proxy()).expect("across revisions");
            assert_eq!(
                m,
                Mismatch::Revision {
                    container: "istio-proxy".into(),
                    injected: "default".into(),
                    asked: Asked::Revision {
                        name: "canary".into(),
                        via: "Namespace label istio.io/rev"
                    },
                },
                "{file}"
            );
            let message = m.to_string();
            assert!(message.starts_with("IstioRevisionMismatch: istio-proxy was injected by Istio revision \"default\" but the Namespace label istio.io/rev asks for \"canary\""), "{message}");
            assert!(message.contains("istioRevisionGuard: false"), "{message}");
            // "; " separates a Blocked verdict's reasons (kubectl inplace plan splits on it).
            assert!(!message.contains("; "), "{message}");
            assert!(
                matches!(
                    check(pod, &dropped, proxy()),
                    Some(Mismatch::Revision {
                        asked: Asked::NotInjected { .. },
                        ..
                    })
                ),
                "{file}: injection turned off"
            );
            // Injected by hand (kube-inject) in a namespace that asks nothing: let through.
            assert_eq!(
                check(pod, &unlabelled, proxy()),
                None,
                "{file}: nothing asked"
            );
            // The app container is never Istio's.
            let app = pod.spec.as_ref().unwrap().containers[0].name.clone();
            assert_ne!(app, "istio-proxy", "{file}");
            assert_eq!(
                check(pod, &moved, [app.as_str()].into_iter()),
                None,
                "{file}"
            );
            // A target list that includes the proxy is held back for the proxy.
            assert!(
                check(pod, &moved, [app.as_str(), "istio-proxy"].into_iter()).is_some(),
                "{file}"
            );
        }
    }

    #[test]
    fn a_pod_without_istio_or_with_a_broken_record() {
        let (_, mut pod) = istio_fixture_pods().remove(0);
        let moved = labels(&[("istio.io/rev", "canary")]);
        let annotations = pod.metadata.annotations.get_or_insert_default();
        annotations.remove(STATUS_ANNOTATION);
        assert_eq!(check(&pod, &moved, ["istio-proxy"].into_iter()), None);
        pod.metadata
            .annotations
            .get_or_insert_default()
            .insert(STATUS_ANNOTATION.into(), "{".into());
        let m = check(&pod, &moved, ["hello"].into_iter()).expect("unreadable");
        assert!(
            matches!(&m, Mismatch::Unreadable { container, error: StatusError::Malformed(_) } if container == "hello")
        );
        assert!(m.to_string().starts_with("IstioRevisionMismatch: hello: annotation sidecar.istio.io/status is not the injector's JSON"), "{m}");
        // No pending target: nothing to hold back.
        assert_eq!(check(&pod, &moved, std::iter::empty()), None);
    }
}
