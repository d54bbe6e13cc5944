//! Bad serving certificates are reported, never silently served: an expired, not yet valid,
//! key-mismatched or wrong-name certificate is refused with an error log naming the problem
//! and the file, `webhook_certificate_errors_total{reason}` counts it, and `/readyz` is false
//! while no good certificate is served. A bad file never replaces a good loaded one.

mod common;

use std::{
    io::Write,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use axum::{body::Body, http::Request};
use common::tls::*;
use inplace_upgrade_webhook::{
    AdminRouter, CertificateFiles, CertificateStore, ReloadOutcome, WebhookMetrics,
    certs::{CertificatePem, SubjectAltNames},
};
use prometheus_client::{encoding::text::encode, registry::Registry};
use tower::ServiceExt;

const HOUR: Duration = Duration::from_secs(3600);

fn service_names() -> SubjectAltNames {
    SubjectAltNames::for_service("inplace-upgrade-webhook", "inplace-upgrade-system")
}

/// A serving certificate signed by `ca` for `names`, valid from `not_before` to `not_after`.
fn serving_with(
    ca: &CertificatePem,
    names: &[&str],
    not_before: SystemTime,
    not_after: SystemTime,
) -> CertificatePem {
    let ca_key = rcgen::KeyPair::from_pem(&ca.key_pem).expect("CA key");
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key).expect("issuer");
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params =
        rcgen::CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
            .expect("params");
    params.not_before = not_before.into();
    params.not_after = not_after.into();
    let cert = params.signed_by(&key, &issuer).expect("sign");
    CertificatePem {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

fn good(pki: &Pki) -> CertificatePem {
    let now = SystemTime::now();
    let names = service_names();
    let names: Vec<&str> = names.dns_names.iter().map(String::as_str).collect();
    serving_with(&pki.ca, &names, now - HOUR, now + 24 * HOUR)
}

/// Each bad case: its name, the certificate, the metric reason, words the error must hold.
fn bad_cases(pki: &Pki) -> Vec<(&'static str, CertificatePem, &'static str, &'static str)> {
    let now = SystemTime::now();
    let names = service_names();
    let names: Vec<&str> = names.dns_names.iter().map(String::as_str).collect();
    let other = good(pki);
    vec![
        (
            "expired",
            serving_with(&pki.ca, &names, now - 48 * HOUR, now - 24 * HOUR),
            "expired",
            "expired at",
        ),
        (
            "not yet valid",
            serving_with(&pki.ca, &names, now + 24 * HOUR, now + 48 * HOUR),
            "not_yet_valid",
            "is not valid before",
        ),
        (
            "key mismatched",
            CertificatePem {
                cert_pem: good(pki).cert_pem,
                key_pem: other.key_pem,
            },
            "key_mismatch",
            "does not fit the certificate",
        ),
        (
            "wrong DNS name",
            serving_with(
                &pki.ca,
                &["someone-else.example.svc"],
                now - HOUR,
                now + 24 * HOUR,
            ),
            "missing_name",
            "does not cover inplace-upgrade-webhook",
        ),
    ]
}

/// Log lines written while `f` runs on this thread.
fn captured<T>(f: impl FnOnce() -> T) -> (T, String) {
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);
    impl Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("buffer").extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buffer = Buffer::default();
    let writer = buffer.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let out = tracing::subscriber::with_default(subscriber, f);
    let text = String::from_utf8_lossy(&buffer.0.lock().expect("buffer")).into_owned();
    (out, text)
}

struct Subject {
    store: Arc<CertificateStore>,
    registry: Arc<Registry>,
    dir: tempfile::TempDir,
    files: CertificateFiles,
}

impl Subject {
    fn new() -> Self {
        let mut registry = Registry::default();
        let store = CertificateStore::new(WebhookMetrics::new(&mut registry));
        store.expect_names(service_names());
        let dir = tempfile::tempdir().expect("tempdir");
        let files = CertificateFiles::in_dir(dir.path());
        Self {
            store,
            registry: Arc::new(registry),
            dir,
            files,
        }
    }

    fn write(&self, version: &str, pem: &CertificatePem) {
        kubelet_write(self.dir.path(), version, pem);
    }

    fn errors(&self, reason: &str) -> u64 {
        let mut text = String::new();
        encode(&mut text, &self.registry).expect("encode");
        metric_value(
            &text,
            &format!("webhook_certificate_errors_total{{reason=\"{reason}\"}}"),
        )
    }

    fn metric(&self, series: &str) -> u64 {
        let mut text = String::new();
        encode(&mut text, &self.registry).expect("encode");
        metric_value(&text, series)
    }

    /// The admin port's `/readyz` status, readiness being "a valid certificate is served".
    fn readyz(&self) -> u16 {
        let store = self.store.clone();
        let admin =
            AdminRouter::new(self.registry.clone(), move || store.is_loaded()).into_router();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            admin
                .oneshot(
                    Request::get("/readyz")
                        .body(Body::empty())
                        .expect("request"),
                )
                .await
                .expect("infallible")
                .status()
                .as_u16()
        })
    }

    fn served(&self) -> Option<Vec<u8>> {
        self.store
            .current()
            .and_then(|key| key.end_entity_cert().ok().map(|c| c.to_vec()))
    }
}

#[test]
fn at_start_up_only_a_bad_certificate_means_not_ready_and_the_reason_logged() {
    let pki = Pki::new();
    for (case, pem, reason, words) in bad_cases(&pki) {
        let subject = Subject::new();
        subject.write("..v1", &pem);
        let (result, log) = captured(|| subject.store.reload_files(&subject.files));
        let err = result.expect_err(case).to_string();
        let crt = subject.files.cert.display().to_string();
        assert!(err.contains(words), "{case}: {err}");
        assert!(
            err.contains(&crt),
            "{case}: the error names the file: {err}"
        );
        assert!(log.contains("ERROR"), "{case}: {log}");
        assert!(
            log.contains(&format!("reason=\"{reason}\""))
                || log.contains(&format!("reason={reason}")),
            "{case}: {log}"
        );
        assert!(log.contains(&crt), "{case}: the log names the file: {log}");
        assert!(!subject.store.is_loaded(), "{case}");
        assert_eq!(subject.served(), None, "{case}: nothing served");
        assert_eq!(subject.readyz(), 503, "{case}");
        assert_eq!(subject.errors(reason), 1, "{case}");
        // Reported once, not on every poll.
        assert!(matches!(
            subject.store.reload_files(&subject.files),
            Ok(ReloadOutcome::Unchanged)
        ));
        assert_eq!(subject.errors(reason), 1, "{case}");
        // A good pair arriving later is served at once.
        subject.write("..v2", &good(&pki));
        assert!(matches!(
            subject.store.reload_files(&subject.files),
            Ok(ReloadOutcome::Loaded { .. })
        ));
        assert_eq!(subject.readyz(), 200, "{case}");
        assert_eq!(subject.metric("webhook_certificate_valid"), 1, "{case}");
        eprintln!(
            "start-up, {case}: refused, readyz 503, errors{{reason={reason}}} 1; log: {}",
            log.lines().next().unwrap_or_default()
        );
    }
}

#[test]
fn a_bad_new_certificate_never_replaces_the_good_one_served() {
    let pki = Pki::new();
    for (case, pem, reason, words) in bad_cases(&pki) {
        let subject = Subject::new();
        let serving = good(&pki);
        subject.write("..v1", &serving);
        assert!(matches!(
            subject.store.reload_files(&subject.files),
            Ok(ReloadOutcome::Loaded { .. })
        ));
        let before = subject.served();
        assert!(before.is_some());
        subject.write("..v2", &pem);
        let (result, log) = captured(|| subject.store.reload_files(&subject.files));
        let err = result.expect_err(case).to_string();
        assert!(err.contains(words), "{case}: {err}");
        assert!(
            log.contains("ERROR") && log.contains("keeps_previous=true"),
            "{case}: {log}"
        );
        assert!(
            log.contains(&subject.files.cert.display().to_string()),
            "{case}: {log}"
        );
        assert_eq!(
            subject.served(),
            before,
            "{case}: the good certificate is still served"
        );
        assert!(subject.store.is_loaded(), "{case}");
        assert_eq!(
            subject.readyz(),
            200,
            "{case}: still serving a good certificate"
        );
        assert_eq!(subject.errors(reason), 1, "{case}");
        assert_eq!(
            subject.metric(r#"webhook_certificate_reloads_total{result="error"}"#),
            1,
            "{case}"
        );
    }
}

#[test]
fn a_certificate_not_yet_valid_is_loaded_once_its_time_comes() {
    let pki = Pki::new();
    let subject = Subject::new();
    let names = service_names();
    let names: Vec<&str> = names.dns_names.iter().map(String::as_str).collect();
    let now = SystemTime::now();
    // X.509 times have whole seconds: two seconds ahead is surely in the future.
    let soon = serving_with(
        &pki.ca,
        &names,
        now + Duration::from_secs(2),
        now + 24 * HOUR,
    );
    subject.write("..v1", &soon);
    assert!(subject.store.reload_files(&subject.files).is_err());
    assert_eq!(subject.readyz(), 503);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match subject.store.reload_files(&subject.files) {
            Ok(ReloadOutcome::Loaded { .. }) => break,
            Ok(ReloadOutcome::Unchanged) => {}
            Err(err) => panic!("re-reported instead of waiting: {err}"),
        }
        assert!(Instant::now() < deadline, "never loaded");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(subject.readyz(), 200);
    assert_eq!(subject.errors("not_yet_valid"), 1, "reported once");
}

#[test]
fn a_served_certificate_that_expires_turns_readiness_false_and_is_reported_once() {
    let pki = Pki::new();
    let subject = Subject::new();
    let names = service_names();
    let names: Vec<&str> = names.dns_names.iter().map(String::as_str).collect();
    let now = SystemTime::now();
    let short = serving_with(&pki.ca, &names, now - HOUR, now + Duration::from_secs(2));
    subject
        .store
        .load_pem(short.cert_pem.as_bytes(), short.key_pem.as_bytes())
        .expect("valid now");
    assert!(subject.store.check_expiry());
    assert_eq!(subject.readyz(), 200);
    let deadline = Instant::now() + Duration::from_secs(60);
    let log = loop {
        let (valid, log) = captured(|| subject.store.check_expiry());
        if !valid {
            break log;
        }
        assert!(Instant::now() < deadline, "never expired");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(log.contains("ERROR") && log.contains("expired"), "{log}");
    assert_eq!(subject.readyz(), 503);
    assert_eq!(subject.metric("webhook_certificate_valid"), 0);
    assert!(!subject.store.check_expiry());
    assert_eq!(subject.errors("expired"), 1, "reported once");
    // Still the certificate handed to handshakes (nothing better exists), but not ready.
    assert!(subject.served().is_some());
}
