//! Policy validation on arbitrary JSON: policies, a workload's scope and an image. No panic;
//! `maxUnavailable` is at least one pod; the allowlist admits only images that parse; the
//! governing policy is one that matches, does not depend on the order policies are listed, and
//! every policy named as pausing is paused.
#![no_main]

use std::collections::BTreeMap;

use inplace_upgrade::policy::{InPlaceUpgradePolicy, Scope, governing_policy, selector_matches};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::ResourceExt;
use libfuzzer_sys::fuzz_target;
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Input {
    #[serde(default)]
    policies: Vec<InPlaceUpgradePolicy>,
    #[serde(default)]
    namespace: String,
    #[serde(default)]
    namespace_labels: BTreeMap<String, String>,
    #[serde(default)]
    workload_labels: BTreeMap<String, String>,
    #[serde(default)]
    desired_replicas: i32,
    #[serde(default)]
    image: String,
}

fuzz_target!(|data: &[u8]| {
    let Ok(input) = serde_json::from_slice::<Input>(data) else {
        return;
    };
    for policy in &input.policies {
        let spec = &policy.spec;
        if let Ok(n) = spec.max_unavailable_pods(input.desired_replicas) {
            assert!(
                n >= 1,
                "maxUnavailable {:?} gave {n} pods",
                spec.max_unavailable
            );
        }
        if let Ok(allow) = spec.image_allowlist()
            && allow.check(&input.image).is_ok()
            && !spec.allowed_images.is_empty()
        {
            assert!(
                inplace_upgrade::image::ImageRef::parse(&input.image).is_ok(),
                "{:?} allowed {:?}, which is not an image reference",
                spec.allowed_images,
                input.image
            );
        }
        assert_eq!(
            selector_matches(&LabelSelector::default(), &input.workload_labels),
            Ok(true),
            "an empty selector matches everything"
        );
    }
    let scope = Scope {
        namespace: &input.namespace,
        namespace_labels: &input.namespace_labels,
        workload_labels: &input.workload_labels,
        controller_namespace: "inplace-upgrade-system",
    };
    let forward = governing_policy(&input.policies, &scope);
    let mut reversed = input.policies.clone();
    reversed.reverse();
    let backward = governing_policy(&reversed, &scope);
    match (&forward, &backward) {
        (Ok(f), Ok(b)) => {
            let name = |g: &Option<inplace_upgrade::policy::Governance<'_>>| {
                g.as_ref().map(|g| g.policy.name_any())
            };
            assert_eq!(
                name(f),
                name(b),
                "the governing policy depends on list order"
            );
            if let Some(g) = f {
                assert_eq!(
                    g.paused_by,
                    b.as_ref().map(|b| b.paused_by.clone()).unwrap_or_default()
                );
                for paused in &g.paused_by {
                    assert!(
                        input
                            .policies
                            .iter()
                            .any(|p| p.name_any() == *paused && p.spec.paused),
                        "{paused} is named as pausing but is not paused"
                    );
                }
                let top = input
                    .policies
                    .iter()
                    .filter(|p| p.spec.priority > g.policy.spec.priority)
                    .filter(|p| {
                        governing_policy(std::slice::from_ref(*p), &scope)
                            .is_ok_and(|m| m.is_some())
                    })
                    .map(|p| p.name_any())
                    .next();
                assert_eq!(
                    top, None,
                    "a matching policy with a higher priority was passed over"
                );
            }
        }
        (Err(_), Err(_)) => {}
        _ => panic!("an invalid selector is an error in one order and not the other"),
    }
});
