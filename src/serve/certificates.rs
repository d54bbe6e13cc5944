//! The webhook's serving certificate: given files, or a self-managed CA and serving
//! certificate in a Secret (see the [module above](super)).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use inplace_upgrade_webhook::certs::{self, CertificatePem, Renewal, SubjectAltNames};
use inplace_upgrade_webhook::{CertificateFiles, CertificateStore};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, PostParams};

use super::{
    CA_RENEW_BEFORE, CA_VALIDITY, FIELD_MANAGER, SERVING_RENEW_BEFORE, SERVING_VALIDITY,
    ServeError, kube_error,
};
use crate::admission::configuration::{self, ConfigurationOptions, Endpoint};

/// Where the serving certificate comes from.
#[derive(Clone, Debug)]
pub enum CertificateSource {
    /// `tls.crt`/`tls.key` in a directory, re-read every `reload_interval`.
    Files {
        dir: PathBuf,
        reload_interval: Duration,
    },
    /// A Secret this process keeps valid (see the module doc), plus the configurations.
    SelfManaged(SelfManaged),
}

#[derive(Clone, Debug)]
pub struct SelfManaged {
    pub namespace: String,
    pub secret: String,
    /// The Service the API server dials; its DNS names go into the serving certificate.
    pub service: String,
    pub service_port: Option<i32>,
    /// How often the Secret's certificates are checked for renewal.
    pub check_interval: Duration,
    /// Where the Secret is mounted: what every replica serves.
    pub dir: PathBuf,
    /// How often the mounted files are re-read.
    pub reload_interval: Duration,
}

/// Starts keeping the certificate of `source` loaded in `store`, until `shutdown`.
pub async fn start_certificates(
    client: &kube::Client,
    source: &CertificateSource,
    store: Arc<CertificateStore>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let (dir, reload_interval) = match source {
        CertificateSource::Files {
            dir,
            reload_interval,
        } => (dir, *reload_interval),
        CertificateSource::SelfManaged(sm) => {
            // A certificate for other names would fail every API server call: refuse it.
            store.expect_names(SubjectAltNames::for_service(&sm.service, &sm.namespace));
            // Served at once from what was written or read, so the first replica does not wait
            // for kubelet to fill the mount; the mounted files then carry every renewal.
            let pair = ensure_secret(client, sm).await?;
            store.load_pem(
                pair.serving.cert_pem.as_bytes(),
                pair.serving.key_pem.as_bytes(),
            )?;
            apply_configurations(client, sm, &pair.ca_bundle).await?;
            tokio::spawn(keep_secret(client.clone(), sm.clone()));
            (&sm.dir, sm.reload_interval)
        }
    };
    let files = CertificateFiles::in_dir(dir);
    // A refusal is logged (error level, naming the file and the reason) and counted inside,
    // readiness stays false until a good pair arrives, and the poll below keeps trying.
    let _ = store.reload_files(&files);
    tokio::spawn(store.poll_files(files, reload_interval, shutdown));
    Ok(())
}

/// What the Secret holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretCertificates {
    pub ca: CertificatePem,
    /// `ca.crt`: the CA, plus the previous CA while it is still valid after a CA renewal, so
    /// replicas still serving the previous certificate keep being trusted.
    pub ca_bundle: String,
    pub serving: CertificatePem,
}

/// The pure part of self-management: given what the Secret holds now (if anything), what it
/// must hold (`None`: keep it as is).
pub fn renew(
    current: Option<&SecretCertificates>,
    names: &SubjectAltNames,
    now: SystemTime,
) -> Result<Option<SecretCertificates>, inplace_upgrade_webhook::Error> {
    let (ca, bundle) = match current {
        Some(c)
            if matches!(
                certs::check_ca(&c.ca, CA_RENEW_BEFORE, now),
                Renewal::NotNeeded { .. }
            ) =>
        {
            (c.ca.clone(), c.ca_bundle.clone())
        }
        previous => {
            let ca = certs::generate_ca("inplace-upgrade webhook CA", CA_VALIDITY)?;
            let mut bundle = ca.cert_pem.clone();
            if let Some(p) = previous
                && matches!(
                    certs::check_ca(&p.ca, Duration::ZERO, now),
                    Renewal::NotNeeded { .. }
                )
            {
                bundle.push_str(&p.ca.cert_pem);
            }
            (ca, bundle)
        }
    };
    if let Some(c) = current
        && c.ca == ca
        && matches!(
            certs::check_serving_certificate(
                &ca.cert_pem,
                &c.serving,
                names,
                SERVING_RENEW_BEFORE,
                now
            ),
            Renewal::NotNeeded { .. }
        )
    {
        return Ok(None);
    }
    let common_name = names
        .dns_names
        .first()
        .cloned()
        .unwrap_or_else(|| "inplace-upgrade-webhook".to_owned());
    let serving = certs::generate_serving_certificate(&ca, &common_name, names, SERVING_VALIDITY)?;
    Ok(Some(SecretCertificates {
        ca,
        ca_bundle: bundle,
        serving,
    }))
}

fn secret_data(secret: &Secret, name: &str) -> Result<SecretCertificates, ServeError> {
    let get = |key: &str| -> Result<String, ServeError> {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .and_then(|b| String::from_utf8(b.0.clone()).ok())
            .ok_or_else(|| ServeError::SecretKey {
                secret: name.to_owned(),
                key: key.to_owned(),
            })
    };
    Ok(SecretCertificates {
        ca: CertificatePem {
            cert_pem: get("ca.crt")?,
            key_pem: get("ca.key")?,
        },
        ca_bundle: get("ca.crt")?,
        serving: CertificatePem {
            cert_pem: get("tls.crt")?,
            key_pem: get("tls.key")?,
        },
    })
}

fn secret_object(sm: &SelfManaged, c: &SecretCertificates) -> Secret {
    let bytes = |s: &str| ByteString(s.as_bytes().to_vec());
    Secret {
        metadata: ObjectMeta {
            name: Some(sm.secret.clone()),
            namespace: Some(sm.namespace.clone()),
            ..ObjectMeta::default()
        },
        type_: Some("kubernetes.io/tls".to_owned()),
        data: Some(
            [
                ("ca.crt", bytes(&c.ca_bundle)),
                ("ca.key", bytes(&c.ca.key_pem)),
                ("tls.crt", bytes(&c.serving.cert_pem)),
                ("tls.key", bytes(&c.serving.key_pem)),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
        ),
        ..Secret::default()
    }
}

/// Makes the Secret hold a valid CA and serving certificate and returns what it holds.
///
/// Every write is guarded: `create` fails with 409 when another replica created it first, and
/// `replace` carries the resourceVersion read, so it fails with 409 when another replica
/// renewed in between. The loser re-reads and serves the winner's certificates: however many
/// replicas start at once, there is one CA.
pub async fn ensure_secret(
    client: &kube::Client,
    sm: &SelfManaged,
) -> Result<SecretCertificates, ServeError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), &sm.namespace);
    let names = SubjectAltNames::for_service(&sm.service, &sm.namespace);
    let what = format!("Secret {}/{}", sm.namespace, sm.secret);
    for _ in 0..5 {
        let existing = api
            .get_opt(&sm.secret)
            .await
            .map_err(kube_error(format!("cannot read {what}")))?;
        let current = existing.as_ref().and_then(|s| secret_data(s, &what).ok());
        let Some(next) = renew(current.as_ref(), &names, SystemTime::now())? else {
            if let Some(c) = current {
                return Ok(c);
            }
            continue;
        };
        let mut object = secret_object(sm, &next);
        let written = match existing {
            None => api.create(&PostParams::default(), &object).await,
            Some(old) => {
                object.metadata.resource_version = old.metadata.resource_version;
                api.replace(&sm.secret, &PostParams::default(), &object)
                    .await
            }
        };
        match written {
            Ok(_) => {
                tracing::info!(secret = %what, "wrote a new webhook serving certificate");
                return Ok(next);
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {
                tracing::info!(secret = %what, "another replica wrote the certificates first; using theirs");
            }
            Err(e) => return Err(kube_error(format!("cannot write {what}"))(e)),
        }
    }
    Err(ServeError::SecretKey {
        secret: what,
        key: "(conflicting writers: gave up after 5 attempts; check who else writes it)".into(),
    })
}

async fn apply_configurations(
    client: &kube::Client,
    sm: &SelfManaged,
    ca_bundle: &str,
) -> Result<(), ServeError> {
    let options = ConfigurationOptions {
        endpoint: Endpoint::Service {
            namespace: sm.namespace.clone(),
            name: sm.service.clone(),
            port: sm.service_port,
        },
        ca_bundle: Some(ca_bundle.as_bytes().to_vec()),
        own_namespace: sm.namespace.clone(),
        cert_manager_certificate: None,
    };
    configuration::apply(client, &options, FIELD_MANAGER)
        .await
        .map_err(kube_error("cannot apply the webhook configurations"))
}

/// Renews the Secret's certificates on an interval, and keeps the caBundle in step.
async fn keep_secret(client: kube::Client, sm: SelfManaged) {
    let mut ticker = tokio::time::interval(sm.check_interval);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        match ensure_secret(&client, &sm).await {
            Ok(pair) => {
                if let Err(e) = apply_configurations(&client, &sm, &pair.ca_bundle).await {
                    tracing::warn!(error = %e, "cannot update the caBundle; retrying");
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot renew the webhook certificates; retrying"),
        }
    }
}

/// Writes `files` into `dir` the way kubelet updates a mounted Secret: a new timestamped
/// directory, a `..data` symlink renamed over the old one atomically, and `name -> ..data/name`
/// symlinks. A reader by path sees either every old file or every new one.
pub fn write_secret_dir(dir: &Path, files: &[(&str, &str)]) -> Result<(), ServeError> {
    let err = |path: &Path| {
        let path = path.to_owned();
        move |source| ServeError::Write { path, source }
    };
    std::fs::create_dir_all(dir).map_err(err(dir))?;
    let stamp = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let version = format!("..{stamp}");
    let version_dir = dir.join(&version);
    std::fs::create_dir(&version_dir).map_err(err(&version_dir))?;
    for (name, contents) in files {
        let path = version_dir.join(name);
        std::fs::write(&path, contents).map_err(err(&path))?;
    }
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&version, &tmp).map_err(err(&tmp))?;
    let data = dir.join("..data");
    let previous = std::fs::read_link(&data).ok();
    std::fs::rename(&tmp, &data).map_err(err(&data))?;
    for (name, _) in files {
        let link = dir.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(Path::new("..data").join(name), &link)
                .map_err(err(&link))?;
        }
    }
    if let Some(previous) = previous.filter(|p| p != Path::new(&version)) {
        let _ = std::fs::remove_dir_all(dir.join(previous));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_managed_certificates_are_created_kept_and_renewed() {
        use inplace_upgrade_webhook::certs::{self, SubjectAltNames};
        use std::time::{Duration, SystemTime};
        let names =
            SubjectAltNames::for_service("inplace-upgrade-webhook", "inplace-upgrade-system");
        let now = SystemTime::now();
        let first = renew(None, &names, now).expect("generates").expect("new");
        assert!(
            renew(Some(&first), &names, now).expect("checks").is_none(),
            "valid: kept"
        );
        // A serving certificate close to expiry is renewed under the same CA.
        let later = now + SERVING_VALIDITY - Duration::from_secs(24 * 3600);
        let renewed = renew(Some(&first), &names, later)
            .expect("renews")
            .expect("new");
        assert_eq!(renewed.ca, first.ca);
        assert_ne!(renewed.serving, first.serving);
        // New names (a renamed Service) need a new serving certificate.
        let other = SubjectAltNames::for_service("renamed", "inplace-upgrade-system");
        assert!(renew(Some(&first), &other, now).expect("checks").is_some());
        // A CA close to expiry is replaced; the old one stays in the bundle while it is valid.
        let ca_end = now + CA_VALIDITY - CA_RENEW_BEFORE + Duration::from_secs(3600);
        let rotated = renew(Some(&first), &names, ca_end)
            .expect("renews")
            .expect("new");
        assert_ne!(rotated.ca, first.ca);
        assert!(rotated.ca_bundle.contains(&first.ca.cert_pem));
        assert!(matches!(
            certs::check_serving_certificate(
                &rotated.ca.cert_pem,
                &rotated.serving,
                &names,
                Duration::ZERO,
                now
            ),
            certs::Renewal::NotNeeded { .. }
        ));
    }

    #[test]
    fn the_secret_layout_is_swapped_atomically() {
        let dir =
            std::env::temp_dir().join(format!("inplace-upgrade-secret-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        write_secret_dir(&dir, &[("tls.crt", "one"), ("tls.key", "k1")]).expect("writes");
        assert_eq!(
            std::fs::read_to_string(dir.join("tls.crt")).expect("reads"),
            "one"
        );
        write_secret_dir(&dir, &[("tls.crt", "two"), ("tls.key", "k2")]).expect("writes");
        assert_eq!(
            std::fs::read_to_string(dir.join("tls.crt")).expect("reads"),
            "two"
        );
        assert!(
            std::fs::symlink_metadata(dir.join("tls.crt"))
                .expect("link")
                .file_type()
                .is_symlink()
        );
        let versions = std::fs::read_dir(&dir)
            .expect("lists")
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with("..1"))
            .count();
        assert_eq!(versions, 1, "the previous version is removed");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
