//! The serving certificate: loaded from PEM, swapped atomically on rotation, resolved per TLS
//! handshake.
//!
//! Rotation is detected by re-reading the files on an interval and comparing their contents.
//! Kubelet updates a mounted Secret by atomically renaming a new `..data` symlink over the old
//! one; `tls.crt` itself is a symlink into `..data` whose inode never changes, so a file
//! watch misses the swap while a re-read by path sees the new contents.

use std::{
    future::Future,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, SystemTime},
};

use rustls::{
    ServerConfig,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};

use crate::{Error, Result, WebhookMetrics, certs, certs::SubjectAltNames};

/// Where the serving certificate chain and its private key live, in PEM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl CertificateFiles {
    pub fn new(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        Self {
            cert: cert.into(),
            key: key.into(),
        }
    }

    /// `tls.crt` and `tls.key` in `dir`: the layout of a mounted `kubernetes.io/tls` Secret.
    pub fn in_dir(dir: impl AsRef<Path>) -> Self {
        let dir = dir.as_ref();
        Self::new(dir.join("tls.crt"), dir.join("tls.key"))
    }
}

/// What a reload did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// The files hold what was last seen; nothing was parsed.
    Unchanged,
    /// A new certificate is being served; it expires at `not_after`.
    Loaded { not_after: SystemTime },
}

struct Serving {
    key: Arc<CertifiedKey>,
    not_before: SystemTime,
    not_after: SystemTime,
}

impl Serving {
    fn valid_at(&self, now: SystemTime) -> bool {
        self.not_before <= now && now < self.not_after
    }
}

/// The last contents read from the files, valid or not, so an unchanged pair is neither
/// re-parsed nor re-reported.
#[derive(PartialEq, Eq)]
enum Seen {
    Contents { cert: Vec<u8>, key: Vec<u8> },
    Unreadable(String),
}

/// What the last read found, and when an unchanged but refused pair is worth reading again
/// (a certificate that is not valid yet becomes valid without changing).
struct LastRead {
    seen: Seen,
    retry_at: Option<SystemTime>,
}

/// Holds the certificate being served and hands it to every new TLS handshake.
///
/// A certificate is refused, and the one served before stays, when it cannot be parsed, its
/// key does not match, it is expired or not yet valid, or it does not cover the names set
/// with [`CertificateStore::expect_names`]. Every refusal is logged at error level with the
/// reason and the file, and counted in `webhook_certificate_errors_total{reason}`.
///
/// Connections already established keep the certificate they negotiated; only new
/// handshakes see a replacement, so a rotation never drops a connection.
pub struct CertificateStore {
    serving: RwLock<Option<Serving>>,
    last_read: Mutex<Option<LastRead>>,
    expected_names: RwLock<Option<SubjectAltNames>>,
    /// The served certificate's expiry was already reported (once per certificate).
    expiry_reported: AtomicBool,
    provider: Arc<CryptoProvider>,
    metrics: WebhookMetrics,
}

impl std::fmt::Debug for CertificateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateStore")
            .field("not_after", &self.not_after())
            .finish_non_exhaustive()
    }
}

impl CertificateStore {
    /// An empty store: handshakes fail until a certificate is loaded.
    pub fn new(metrics: WebhookMetrics) -> Arc<Self> {
        Arc::new(Self {
            serving: RwLock::new(None),
            last_read: Mutex::new(None),
            expected_names: RwLock::new(None),
            expiry_reported: AtomicBool::new(false),
            provider: Arc::new(rustls::crypto::ring::default_provider()),
            metrics,
        })
    }

    /// Refuses, from now on, certificates that do not cover every name in `names` (the names
    /// the API server dials). Without it any name is accepted: with cert-manager the names are
    /// the Certificate's business.
    pub fn expect_names(&self, names: SubjectAltNames) {
        *self
            .expected_names
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Some(names);
    }

    /// Whether a certificate is loaded and within its validity period now, i.e. whether
    /// clients that trust its CA can complete a handshake: what readiness should report.
    pub fn is_loaded(&self) -> bool {
        self.read_serving()
            .as_ref()
            .is_some_and(|serving| serving.valid_at(SystemTime::now()))
    }

    /// When the served certificate expires, if one is loaded.
    pub fn not_after(&self) -> Option<SystemTime> {
        self.read_serving()
            .as_ref()
            .map(|serving| serving.not_after)
    }

    /// The certificate chain and key currently handed to new handshakes.
    pub fn current(&self) -> Option<Arc<CertifiedKey>> {
        self.read_serving()
            .as_ref()
            .map(|serving| serving.key.clone())
    }

    /// Parses a PEM chain (leaf first) and its private key and serves them from now on.
    ///
    /// On error the previous certificate stays in place and the error is counted in
    /// `webhook_certificate_reloads_total{result="error"}` and
    /// `webhook_certificate_errors_total{reason}`.
    pub fn load_pem(&self, cert_pem: &[u8], key_pem: &[u8]) -> Result<SystemTime> {
        self.load(
            cert_pem,
            key_pem,
            "the serving certificate",
            "its private key",
        )
    }

    fn load(
        &self,
        cert_pem: &[u8],
        key_pem: &[u8],
        cert_what: &str,
        key_what: &str,
    ) -> Result<SystemTime> {
        match self.parse(cert_pem, key_pem, cert_what, key_what) {
            Ok(serving) => {
                let not_after = serving.not_after;
                let expires = unix_seconds(not_after);
                *self.serving.write().unwrap_or_else(|e| e.into_inner()) = Some(serving);
                self.expiry_reported.store(false, Ordering::Relaxed);
                self.metrics.certificate_not_after.set(expires);
                self.metrics.certificate_valid.set(1);
                self.metrics.record_reload("success");
                tracing::info!(
                    certificate = cert_what,
                    not_after = %display_time(not_after),
                    "serving certificate loaded"
                );
                Ok(not_after)
            }
            Err(err) => {
                self.report_refusal(&err, cert_what, key_what);
                Err(err)
            }
        }
    }

    fn report_refusal(&self, err: &Error, cert_what: &str, key_what: &str) {
        let reason = certificate_error_reason(err);
        self.metrics.record_reload("error");
        self.metrics.record_certificate_error(reason);
        let keeps_previous = self.is_loaded();
        tracing::error!(
            error = %err,
            reason,
            certificate = cert_what,
            key = key_what,
            keeps_previous,
            "serving certificate refused; {}",
            if keeps_previous {
                "the previous certificate is still served"
            } else {
                "no valid certificate is served: TLS handshakes fail and readiness is false"
            }
        );
    }

    /// Re-reads `files` and loads them if their contents changed since the last call.
    ///
    /// A read that straddles a rotation (certificate read before the swap, key after) is
    /// detected by reading the certificate twice, and is retried on the next call instead of
    /// being reported as a mismatched pair.
    pub fn reload_files(&self, files: &CertificateFiles) -> Result<ReloadOutcome> {
        let read = read_pair(files);
        let seen = match &read {
            Ok(Some((cert, key))) => Seen::Contents {
                cert: cert.clone(),
                key: key.clone(),
            },
            Ok(None) => return Ok(ReloadOutcome::Unchanged),
            Err(err) => Seen::Unreadable(err.to_string()),
        };
        {
            let mut last = self.last_read.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(last) = last.as_ref()
                && last.seen == seen
                && last.retry_at.is_none_or(|at| at > SystemTime::now())
            {
                return Ok(ReloadOutcome::Unchanged);
            }
            *last = Some(LastRead {
                seen,
                retry_at: None,
            });
        }
        let (cert_what, key_what) = (
            files.cert.display().to_string(),
            files.key.display().to_string(),
        );
        match read {
            Ok(Some((cert, key))) => {
                let loaded = self.load(&cert, &key, &cert_what, &key_what);
                if let Err(Error::CertificateNotYetValid { not_before, .. }) = &loaded
                    && let Some(last) = self
                        .last_read
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .as_mut()
                {
                    last.retry_at = Some(*not_before);
                }
                loaded.map(|not_after| ReloadOutcome::Loaded { not_after })
            }
            Ok(None) => Ok(ReloadOutcome::Unchanged),
            Err(err) => {
                self.report_refusal(&err, &cert_what, &key_what);
                Err(err)
            }
        }
    }

    /// Reports, once, that the served certificate has expired (it was valid when loaded):
    /// an error log, `webhook_certificate_errors_total{reason="expired"}`,
    /// `webhook_certificate_valid` 0; readiness turns false by itself. Returns whether the
    /// served certificate is valid now.
    pub fn check_expiry(&self) -> bool {
        let now = SystemTime::now();
        let expired = match self.read_serving().as_ref() {
            None => return false,
            Some(serving) if serving.valid_at(now) => None,
            Some(serving) => Some(serving.not_after),
        };
        let Some(not_after) = expired else {
            self.metrics.certificate_valid.set(1);
            return true;
        };
        self.metrics.certificate_valid.set(0);
        if !self.expiry_reported.swap(true, Ordering::Relaxed) {
            self.metrics.record_certificate_error("expired");
            tracing::error!(
                not_after = %display_time(not_after),
                reason = "expired",
                "the served certificate has expired: API servers refuse it and readiness is false; write a renewed certificate"
            );
        }
        false
    }

    /// Reloads `files` now and then every `interval` until `shutdown` completes, and checks
    /// that the served certificate has not expired meanwhile. Errors are logged and counted;
    /// the previous certificate keeps being served.
    pub async fn poll_files(
        self: Arc<Self>,
        files: CertificateFiles,
        interval: Duration,
        shutdown: impl Future<Output = ()>,
    ) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => return,
                _ = ticker.tick() => {
                    // Already logged and counted inside.
                    let _ = self.reload_files(&files);
                    self.check_expiry();
                }
            }
        }
    }

    /// A rustls server configuration that resolves every handshake through this store.
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<ServerConfig>> {
        server_config(self.clone(), self.provider.clone())
    }

    fn parse(
        &self,
        cert_pem: &[u8],
        key_pem: &[u8],
        cert_what: &str,
        key_what: &str,
    ) -> Result<Serving> {
        let chain = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| Error::Pem {
                what: cert_what.into(),
                source,
            })?;
        let leaf = chain.first().ok_or_else(|| Error::NoCertificate {
            what: cert_what.into(),
        })?;
        let info = certs::inspect_der(leaf, cert_what)?;
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|source| match source {
            rustls::pki_types::pem::Error::NoItemsFound => Error::NoPrivateKey {
                what: key_what.into(),
            },
            source => Error::Pem {
                what: key_what.into(),
                source,
            },
        })?;
        let key = CertifiedKey::from_der(chain, key, &self.provider).map_err(|source| {
            Error::KeyPair {
                cert: cert_what.into(),
                key: key_what.into(),
                source,
            }
        })?;
        let now = SystemTime::now();
        if info.not_before > now {
            return Err(Error::CertificateNotYetValid {
                what: cert_what.into(),
                not_before: info.not_before,
                shown: display_time(info.not_before),
            });
        }
        if info.not_after <= now {
            return Err(Error::CertificateExpired {
                what: cert_what.into(),
                not_after: display_time(info.not_after),
            });
        }
        if let Some(expected) = self
            .expected_names
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            && let Some(missing) = missing_name(&info.subject_alt_names, expected)
        {
            return Err(Error::CertificateMissingName {
                what: cert_what.into(),
                name: missing,
                covered: describe_names(&info.subject_alt_names),
            });
        }
        Ok(Serving {
            key: Arc::new(key),
            not_before: info.not_before,
            not_after: info.not_after,
        })
    }

    fn read_serving(&self) -> std::sync::RwLockReadGuard<'_, Option<Serving>> {
        self.serving.read().unwrap_or_else(|e| e.into_inner())
    }
}

impl ResolvesServerCert for CertificateStore {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current()
    }
}

/// A TLS server configuration for the webhook: TLS 1.3 and 1.2 only, ALPN `h2` and
/// `http/1.1`, the certificate chosen by `resolver` at each handshake.
pub fn server_config(
    resolver: Arc<dyn ResolvesServerCert>,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<ServerConfig>> {
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(Error::TlsConfig)?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Reads the certificate, the key, then the certificate again; `None` when the two
/// certificate reads differ, i.e. a rotation happened in between.
fn read_pair(files: &CertificateFiles) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| Error::ReadFile {
            path: path.to_owned(),
            source,
        })
    };
    let cert = read(&files.cert)?;
    let key = read(&files.key)?;
    if read(&files.cert)? != cert {
        return Ok(None);
    }
    Ok(Some((cert, key)))
}

/// The reason label of `webhook_certificate_errors_total` for a refused certificate.
fn certificate_error_reason(err: &Error) -> &'static str {
    match err {
        Error::CertificateExpired { .. } => "expired",
        Error::CertificateNotYetValid { .. } => "not_yet_valid",
        Error::CertificateMissingName { .. } => "missing_name",
        Error::KeyPair {
            source: rustls::Error::InconsistentKeys(_),
            ..
        } => "key_mismatch",
        Error::ReadFile { .. } => "unreadable",
        _ => "invalid",
    }
}

/// The first expected name the certificate does not cover (DNS names case-insensitively).
fn missing_name(covered: &SubjectAltNames, expected: &SubjectAltNames) -> Option<String> {
    let dns = expected.dns_names.iter().find(|name| {
        !covered
            .dns_names
            .iter()
            .any(|have| have.eq_ignore_ascii_case(name))
    });
    if let Some(name) = dns {
        return Some(name.clone());
    }
    expected
        .ip_addresses
        .iter()
        .find(|ip| !covered.ip_addresses.contains(ip))
        .map(ToString::to_string)
}

fn describe_names(names: &SubjectAltNames) -> String {
    let all: Vec<String> = names
        .dns_names
        .iter()
        .cloned()
        .chain(names.ip_addresses.iter().map(ToString::to_string))
        .collect();
    if all.is_empty() {
        "no names".to_owned()
    } else {
        all.join(", ")
    }
}

/// RFC 3339, for logs and messages read by people.
pub(crate) fn display_time(time: SystemTime) -> String {
    k8s_openapi::jiff::Timestamp::try_from(time)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| format!("{} (Unix seconds)", unix_seconds(time)))
}

fn unix_seconds(time: SystemTime) -> i64 {
    match time.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_secs()).map_or(i64::MIN, |s| -s),
    }
}
