//! Which InPlaceUpgradePolicy watch events matter to workloads. Our own status writes (every
//! rollout step changes `status.rollingWorkloads`) must not re-queue every workload: only a
//! policy that appears, goes, or has its spec edited (a new `metadata.generation`, or a new
//! object under the same name) changes what governs, and only in the namespaces its
//! `namespaceSelector` selected before or selects now.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::ResourceExt;

use crate::policy::{InPlaceUpgradePolicy, selector_matches};

/// What each policy looked like when it last changed what governs.
#[derive(Default)]
pub struct PolicyWatch {
    seen: HashMap<String, Seen>,
}

struct Seen {
    uid: Option<String>,
    generation: Option<i64>,
    selector: LabelSelector,
}

/// The namespaces a policy change concerns.
#[derive(Debug, PartialEq)]
pub struct Affected(Vec<LabelSelector>);

impl Affected {
    /// True when a workload in a namespace with these labels may be governed differently now.
    /// A selector that cannot be evaluated concerns every namespace (the policy's problem
    /// blocks them all).
    pub fn namespace(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0
            .iter()
            .any(|s| selector_matches(s, labels).unwrap_or(true))
    }
}

impl PolicyWatch {
    /// The namespaces to re-queue for this event, or `None` when it changes nothing that
    /// governs (a status write). The first event of each policy after a start counts as a
    /// change, so a restarted controller reacts to what it has not seen.
    pub fn change(&mut self, policy: &InPlaceUpgradePolicy, deleted: bool) -> Option<Affected> {
        let name = policy.name_any();
        let selector = policy.spec.namespace_selector.clone();
        let before = if deleted {
            self.seen.remove(&name)
        } else {
            let now = Seen {
                uid: policy.uid(),
                generation: policy.metadata.generation,
                selector: selector.clone(),
            };
            match self.seen.insert(name, now) {
                Some(b) if b.uid == policy.uid() && b.generation == policy.metadata.generation => {
                    return None;
                }
                b => b,
            }
        };
        Some(Affected(
            before
                .map(|b| b.selector)
                .into_iter()
                .chain([selector])
                .collect(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(uid: &str, generation: i64, team: &str, rolling: &[&str]) -> InPlaceUpgradePolicy {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "inplace-upgrade.io/v1alpha1", "kind": "InPlaceUpgradePolicy",
            "metadata": {"name": "sidecars", "uid": uid, "generation": generation},
            "spec": {"namespaceSelector": {"matchLabels": {"team": team}}},
            "status": {"rollingWorkloads": rolling},
        }))
        .expect("policy literal")
    }

    fn labels(team: &str) -> BTreeMap<String, String> {
        BTreeMap::from([("team".to_string(), team.to_string())])
    }

    #[test]
    fn status_writes_are_ignored_and_spec_edits_reach_old_and_new_namespaces() {
        let mut w = PolicyWatch::default();
        let first = w.change(&policy("u1", 1, "shop", &[]), false);
        let first = first.expect("the first event after a start counts");
        assert!(first.namespace(&labels("shop")) && !first.namespace(&labels("bank")));
        assert_eq!(
            w.change(&policy("u1", 1, "shop", &["shop/Deployment/a"]), false),
            None
        );
        assert_eq!(w.change(&policy("u1", 1, "shop", &[]), false), None);
        let edit = w
            .change(&policy("u1", 2, "bank", &[]), false)
            .expect("spec edit");
        assert!(
            edit.namespace(&labels("shop")),
            "the namespaces it governed before"
        );
        assert!(edit.namespace(&labels("bank")), "and those it governs now");
        assert!(!edit.namespace(&labels("ops")));
        let gone = w
            .change(&policy("u1", 2, "bank", &[]), true)
            .expect("deletion");
        assert!(gone.namespace(&labels("bank")));
        let back = w
            .change(&policy("u2", 1, "ops", &[]), false)
            .expect("re-created");
        assert!(back.namespace(&labels("ops")) && !back.namespace(&labels("bank")));
        // Re-created under the same name at the same generation: a new object all the same.
        assert!(w.change(&policy("u3", 1, "ops", &[]), false).is_some());
    }

    #[test]
    fn a_selector_that_cannot_be_evaluated_concerns_every_namespace() {
        let mut p = policy("u1", 1, "shop", &[]);
        p.spec.namespace_selector = serde_json::from_value(serde_json::json!({
            "matchExpressions": [{"key": "team", "operator": "Sideways"}]
        }))
        .expect("selector literal");
        let affected = PolicyWatch::default().change(&p, false).expect("first");
        assert!(affected.namespace(&labels("anything")));
    }
}
