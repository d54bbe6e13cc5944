//! The governed label: `inplace-upgrade.io/governed: "true"` on every Namespace that some
//! policy selects, and on no other, so that the pod webhook's `namespaceSelector` (which
//! matches the label) keeps every other namespace's pod creations away from the webhook.
//!
//! One writer, only while leading, woken by every Namespace and policy change. It writes with
//! server-side apply under a field manager of its own ([`NAMESPACE_FIELD_MANAGER`]) that owns
//! that one label: adding applies it, removing applies an empty set (SSA then removes what
//! this manager alone owned), and no other field of the Namespace — a GitOps tool's labels
//! and annotations above all — is ever claimed or touched. A ValidatingAdmissionPolicy bound
//! to the controller's ServiceAccount refuses any other Namespace change
//! ([`crate::admission::configuration::namespace_label_policy`]).
//!
//! What it means when things go wrong (README, "Which namespaces call the webhook"):
//! - someone removes the label by hand, or a tool replaces the Namespace without it: the watch
//!   event wakes the writer, which puts it back while a policy selects the namespace;
//! - a policy is deleted or stops selecting: the label comes off;
//! - the controller is down while a namespace becomes governed: no label yet, so new pods
//!   there are not sent to the webhook — exactly as if the webhook were down for them (no
//!   gate, template image); the controller, once back, labels the namespace and upgrades
//!   those pods in place like any pod born during a webhook outage;
//! - another field manager also sets the label: it keeps it; the webhook is then called there
//!   and answers "not governed" (a cost, never a wrong decision: the label only filters calls,
//!   the webhook still decides from the policies).

use std::collections::HashMap;

use k8s_openapi::api::core::v1::Namespace;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use super::Context;
use crate::cache::Cache;
use crate::policy::{InPlaceUpgradePolicy, governs_namespace};
use crate::{GOVERNED_LABEL, NAMESPACE_FIELD_MANAGER};

/// The label a namespace should have, when it does not have it: `Some(true)` to add it,
/// `Some(false)` to remove it, `None` when it is right.
pub fn label_change(
    namespace: &Namespace,
    policies: &[InPlaceUpgradePolicy],
    controller_namespace: &str,
) -> Option<bool> {
    let name = namespace.name_any();
    let labels = namespace.labels();
    let want = governs_namespace(policies, &name, labels, controller_namespace);
    let has = labels.get(GOVERNED_LABEL).is_some_and(|v| v == "true");
    (want != has).then_some(want)
}

/// The server-side apply body that sets (or, with `governed` false, gives up) the label.
fn apply_body(name: &str, governed: bool) -> serde_json::Value {
    let mut metadata = json!({ "name": name });
    if governed {
        metadata["labels"] = json!({ GOVERNED_LABEL: "true" });
    }
    json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": metadata })
}

/// Keeps the label right while this replica leads (runs until dropped).
pub async fn keep_governed_labels(ctx: &Context, cache: &Cache) {
    let api: Api<Namespace> = Api::all(ctx.client.clone());
    let mut changes = cache.governance_changes();
    // What was last written for each namespace, at which resourceVersion: a write the API
    // left without effect (another manager keeps the label) is not repeated until the
    // namespace changes again.
    let mut written: HashMap<String, (Option<String>, bool)> = HashMap::new();
    loop {
        changes.borrow_and_update();
        let policies = cache.policies();
        let mut namespaces = cache.namespaces();
        namespaces.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        written.retain(|name, _| {
            namespaces
                .iter()
                .any(|n| n.metadata.name.as_ref() == Some(name))
        });
        for namespace in namespaces {
            let Some(governed) = label_change(&namespace, &policies, &ctx.settings.namespace)
            else {
                continue;
            };
            let name = namespace.name_any();
            let version = (namespace.resource_version(), governed);
            if written.get(&name) == Some(&version) {
                continue;
            }
            ctx.metrics.write("patch", "namespaces");
            // Forced: the label is ours by name; a manager that also applied it shares it.
            let params = PatchParams::apply(NAMESPACE_FIELD_MANAGER).force();
            match api
                .patch(&name, &params, &Patch::Apply(apply_body(&name, governed)))
                .await
            {
                Ok(after) => {
                    if !governed && after.labels().contains_key(GOVERNED_LABEL) {
                        tracing::warn!(
                            namespace = %name,
                            "no policy selects this namespace, but another field manager keeps the label {GOVERNED_LABEL}: its pods still reach the webhook"
                        );
                    } else {
                        tracing::info!(namespace = %name, governed, "namespace label {GOVERNED_LABEL} set");
                    }
                    written.insert(name, version);
                }
                Err(e) => {
                    tracing::warn!(namespace = %name, error = %e, "cannot write the namespace label {GOVERNED_LABEL}")
                }
            }
        }
        if changes.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn namespace(name: &str, labels: serde_json::Value) -> Namespace {
        serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}}))
            .expect("namespace literal")
    }

    fn policy(selector: serde_json::Value) -> InPlaceUpgradePolicy {
        serde_json::from_value(json!({
            "apiVersion": "inplace-upgrade.io/v1alpha1", "kind": "InPlaceUpgradePolicy",
            "metadata": {"name": "p"}, "spec": {"namespaceSelector": selector},
        }))
        .expect("policy literal")
    }

    #[test]
    fn the_label_follows_the_policies() {
        let shop = policy(json!({"matchLabels": {"team": "shop"}}));
        let own = "inplace-upgrade-system";
        let cases = [
            // (namespace labels, policies, change)
            (json!({"team": "shop"}), vec![shop.clone()], Some(true)),
            (
                json!({"team": "shop", GOVERNED_LABEL: "true"}),
                vec![shop.clone()],
                None,
            ),
            (
                json!({"team": "bank", GOVERNED_LABEL: "true"}),
                vec![shop.clone()],
                Some(false),
            ),
            (
                json!({"team": "shop", GOVERNED_LABEL: "true"}),
                vec![],
                Some(false),
            ),
            (json!({"team": "bank"}), vec![shop.clone()], None),
            // A value that is not "true" is not the label (and is ours to correct).
            (
                json!({"team": "shop", GOVERNED_LABEL: "yes"}),
                vec![shop.clone()],
                Some(true),
            ),
            (json!({GOVERNED_LABEL: "yes"}), vec![], None),
        ];
        for (labels, policies, want) in cases {
            let ns = namespace("dev", labels.clone());
            assert_eq!(label_change(&ns, &policies, own), want, "{labels}");
        }
        let everywhere = [policy(json!({}))];
        assert_eq!(
            label_change(&namespace(own, json!({})), &everywhere, own),
            None
        );
        assert_eq!(
            label_change(&namespace("kube-system", json!({})), &everywhere, own),
            None
        );
    }

    #[test]
    fn the_apply_body_names_only_the_label() {
        assert_eq!(
            apply_body("dev", true),
            json!({"apiVersion": "v1", "kind": "Namespace",
                   "metadata": {"name": "dev", "labels": {GOVERNED_LABEL: "true"}}})
        );
        assert_eq!(
            apply_body("dev", false),
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "dev"}})
        );
    }
}
