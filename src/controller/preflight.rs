//! What must exist before the controller starts: its namespace (the leader Lease lives there)
//! and the InPlaceUpgradePolicy CRD (its policy watch lists it). Without them the controller
//! would retry forever — no leader, a cache that never syncs, the webhook injecting no gate —
//! so `controller` checks once and stops with one line naming what is missing and the fix,
//! and `run` (the laptop mode, with the user's own credentials) creates what is missing.
//!
//! The checks use only what the controller's ClusterRole grants: `list` on namespaces (by
//! field selector, no `get`) and `list` on policies.

use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ListParams, ObjectMeta, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Api, Client};

use crate::policy::InPlaceUpgradePolicy;

/// The CRD's name.
pub const CRD_NAME: &str = "inplaceupgradepolicies.inplace-upgrade.io";

/// Something the controller needs is missing, or could not be checked or made.
#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error(
        "namespace {0:?} does not exist: the controller's leader Lease lives there; install deploy/ (kubectl apply -k deploy --server-side), create it (kubectl create namespace {0}), or give the controller another one (--namespace / POD_NAMESPACE)"
    )]
    NamespaceMissing(String),
    #[error(
        "the InPlaceUpgradePolicy CRD ({CRD_NAME}) is not installed: kubectl apply -f deploy/crds (or: inplace-upgrade crd | kubectl apply -f -)"
    )]
    CrdMissing,
    #[error("{action}: {source}")]
    Kube {
        action: String,
        #[source]
        source: kube::Error,
    },
    #[error("the CRD {CRD_NAME} was created but not Established within {0:?}")]
    CrdNotEstablished(Duration),
    #[error("waiting for the CRD {CRD_NAME} to be Established: {0}")]
    CrdWait(#[source] kube::runtime::wait::Error),
    #[error("the CRD this binary prints is not valid YAML: {0}")]
    CrdYaml(String),
}

fn kube_error(action: impl Into<String>) -> impl FnOnce(kube::Error) -> PreflightError {
    let action = action.into();
    move |source| PreflightError::Kube { action, source }
}

/// Whether the namespace exists (a list by name: the controller may list namespaces, not get
/// them).
async fn namespace_exists(client: &Client, namespace: &str) -> Result<bool, PreflightError> {
    let list = Api::<Namespace>::all(client.clone())
        .list_metadata(&ListParams::default().fields(&format!("metadata.name={namespace}")))
        .await
        .map_err(kube_error(format!(
            "cannot look for namespace {namespace:?}"
        )))?;
    Ok(!list.items.is_empty())
}

/// Whether the policy CRD is served (listing policies answers 404 when it is not).
async fn crd_installed(client: &Client) -> Result<bool, PreflightError> {
    match Api::<InPlaceUpgradePolicy>::all(client.clone())
        .list_metadata(&ListParams::default().limit(1))
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
        Err(e) => Err(kube_error("cannot list InPlaceUpgradePolicies")(e)),
    }
}

/// `controller`: fails with the first missing piece, naming it and the fix.
pub async fn check(client: &Client, namespace: &str) -> Result<(), PreflightError> {
    if !namespace_exists(client, namespace).await? {
        return Err(PreflightError::NamespaceMissing(namespace.to_owned()));
    }
    if !crd_installed(client).await? {
        return Err(PreflightError::CrdMissing);
    }
    Ok(())
}

/// What [`ensure`] created.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Created {
    pub namespace: bool,
    pub crd: bool,
}

/// `run`: creates the namespace and the CRD (this binary's, awaited until Established) when
/// missing; anything that exists is left as it is (an installed CRD is never overwritten).
pub async fn ensure(client: &Client, namespace: &str) -> Result<Created, PreflightError> {
    let mut created = Created::default();
    if !namespace_exists(client, namespace).await? {
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(namespace.to_owned()),
                ..Default::default()
            },
            ..Default::default()
        };
        match Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
        {
            Ok(_) => created.namespace = true,
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => {
                return Err(kube_error(format!(
                    "namespace {namespace:?} (the controller's leader Lease lives there) is missing and cannot be created"
                ))(e));
            }
        }
    }
    if !crd_installed(client).await? {
        let crd: CustomResourceDefinition = serde_yaml::from_str(
            &crate::policy::crd_yaml().map_err(|e| PreflightError::CrdYaml(e.to_string()))?,
        )
        .map_err(|e| PreflightError::CrdYaml(e.to_string()))?;
        let crds = Api::<CustomResourceDefinition>::all(client.clone());
        match crds.create(&PostParams::default(), &crd).await {
            Ok(_) => created.crd = true,
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => {
                return Err(kube_error(format!(
                    "the InPlaceUpgradePolicy CRD ({CRD_NAME}) is missing and cannot be created"
                ))(e));
            }
        }
        // A watch-driven wait; the limit only turns an API server that never establishes it
        // into an error instead of a stall.
        let limit = Duration::from_secs(60);
        tokio::time::timeout(
            limit,
            await_condition(crds, CRD_NAME, conditions::is_crd_established()),
        )
        .await
        .map_err(|_| PreflightError::CrdNotEstablished(limit))?
        .map_err(PreflightError::CrdWait)?;
    }
    Ok(created)
}
