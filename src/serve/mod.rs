//! The edge: how the binary wires the process roles out of the library's parts. Nothing in
//! the core, `controller/`, `admission/` or `kubectl/` imports it.
//!
//! - [`certificates`]: the webhook's serving certificate in each mode — **given files**
//!   ([`CertificateSource::Files`]: `tls.crt`/`tls.key` from a directory, cert-manager's
//!   Secret mounted as a volume, re-read on an interval so kubelet's `..data` symlink swap is
//!   picked up without a restart) or **self-managed** ([`CertificateSource::SelfManaged`]: one
//!   CA and serving certificate in a Secret, created or renewed by whichever replica wins a
//!   resourceVersion-guarded write, served by every replica from the mounted Secret, with the
//!   caBundle applied to our webhook configurations);
//! - [`view`]: the webhook's live [`crate::admission::ClusterView`] over watched caches and
//!   the controller's Lease;
//! - [`local`]: `inplace-upgrade run`, the controller and the webhook in one process with a CA
//!   of its own, registered by URL so a local control plane calls it.

pub mod certificates;
pub mod local;
pub mod view;

use std::path::PathBuf;
use std::time::Duration;

pub use certificates::{
    CertificateSource, SecretCertificates, SelfManaged, ensure_secret, renew, start_certificates,
    write_secret_dir,
};
pub use local::{LocalOptions, LocalWebhook, parse_webhook_url, run_local, start_local};
pub use view::LiveView;

/// Field manager of the webhook configurations we apply.
pub const FIELD_MANAGER: &str = "inplace-upgrade-webhook";
/// CA lifetime for generated CAs.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Serving certificate lifetime for generated certificates.
pub const SERVING_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// Renew a serving certificate when less than this remains.
pub const SERVING_RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);
/// Renew the CA when less than this remains (more than a serving certificate's lifetime, so a
/// serving certificate never outlives its CA).
pub const CA_RENEW_BEFORE: Duration = Duration::from_secs(400 * 24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Transport(#[from] inplace_upgrade_webhook::Error),
    #[error("{action}: {source}")]
    Kube {
        action: String,
        #[source]
        source: kube::Error,
    },
    #[error(
        "--webhook-url {url:?} must be https://HOST:PORT (the API server only calls webhooks over TLS)"
    )]
    WebhookUrl { url: String },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Secret {secret}: key {key} is missing or not UTF-8 PEM")]
    SecretKey { secret: String, key: String },
    #[error(transparent)]
    Preflight(#[from] crate::controller::preflight::PreflightError),
}

fn kube_error(action: impl Into<String>) -> impl FnOnce(kube::Error) -> ServeError {
    let action = action.into();
    move |source| ServeError::Kube { action, source }
}
