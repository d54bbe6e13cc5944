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
    sync::{Arc, Mutex, RwLock},
    time::{Duration, SystemTime},
};

use rustls::{
    ServerConfig,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};

use crate::{Error, Result, WebhookMetrics, certs};

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
    not_after: SystemTime,
}

/// The last contents read from the files, valid or not, so an unchanged pair is neither
/// re-parsed nor re-reported.
#[derive(PartialEq, Eq)]
enum Seen {
    Contents { cert: Vec<u8>, key: Vec<u8> },
    Unreadable(String),
}

/// Holds the certificate being served and hands it to every new TLS handshake.
///
/// Connections already established keep the certificate they negotiated; only new
/// handshakes see a replacement, so a rotation never drops a connection.
pub struct CertificateStore {
    serving: RwLock<Option<Serving>>,
    seen: Mutex<Option<Seen>>,
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
            seen: Mutex::new(None),
            provider: Arc::new(rustls::crypto::ring::default_provider()),
            metrics,
        })
    }

    /// Whether a certificate is loaded, i.e. whether TLS handshakes can succeed.
    pub fn is_loaded(&self) -> bool {
        self.read_serving().is_some()
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
    /// `webhook_certificate_reloads_total{result="error"}`.
    pub fn load_pem(&self, cert_pem: &[u8], key_pem: &[u8]) -> Result<SystemTime> {
        match self.parse(cert_pem, key_pem) {
            Ok(serving) => {
                let not_after = serving.not_after;
                let expires = unix_seconds(not_after);
                if not_after <= SystemTime::now() {
                    tracing::warn!(
                        not_after = expires,
                        "loaded serving certificate has already expired; renew it"
                    );
                }
                *self.serving.write().unwrap_or_else(|e| e.into_inner()) = Some(serving);
                self.metrics.certificate_not_after.set(expires);
                self.metrics.record_reload("success");
                tracing::info!(not_after = expires, "serving certificate loaded");
                Ok(not_after)
            }
            Err(err) => {
                self.metrics.record_reload("error");
                tracing::warn!(
                    error = %err,
                    keeps_previous = self.is_loaded(),
                    "serving certificate rejected"
                );
                Err(err)
            }
        }
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
            let mut last = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            if last.as_ref() == Some(&seen) {
                return Ok(ReloadOutcome::Unchanged);
            }
            *last = Some(seen);
        }
        match read {
            Ok(Some((cert, key))) => self
                .load_pem(&cert, &key)
                .map(|not_after| ReloadOutcome::Loaded { not_after }),
            Ok(None) => Ok(ReloadOutcome::Unchanged),
            Err(err) => {
                self.metrics.record_reload("error");
                tracing::warn!(
                    error = %err,
                    keeps_previous = self.is_loaded(),
                    "cannot read serving certificate files"
                );
                Err(err)
            }
        }
    }

    /// Reloads `files` now and then every `interval` until `shutdown` completes. Errors are
    /// logged and counted; the previous certificate keeps being served.
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
                }
            }
        }
    }

    /// A rustls server configuration that resolves every handshake through this store.
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<ServerConfig>> {
        server_config(self.clone(), self.provider.clone())
    }

    fn parse(&self, cert_pem: &[u8], key_pem: &[u8]) -> Result<Serving> {
        let chain = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| Error::Pem {
                what: "the certificate".into(),
                source,
            })?;
        let leaf = chain.first().ok_or_else(|| Error::NoCertificate {
            what: "the certificate".into(),
        })?;
        let not_after = certs::inspect_der(leaf, "the serving certificate")?.not_after;
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|source| match source {
            rustls::pki_types::pem::Error::NoItemsFound => Error::NoPrivateKey {
                what: "the private key".into(),
            },
            source => Error::Pem {
                what: "the private key".into(),
                source,
            },
        })?;
        let key = CertifiedKey::from_der(chain, key, &self.provider).map_err(Error::KeyPair)?;
        Ok(Serving {
            key: Arc::new(key),
            not_after,
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

fn unix_seconds(time: SystemTime) -> i64 {
    match time.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_secs()).map_or(i64::MIN, |s| -s),
    }
}
