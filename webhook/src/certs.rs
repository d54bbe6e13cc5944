//! Certificates for development and for self-managed in-cluster mode: one CA, and serving
//! certificates it signs, all in PEM.
//!
//! The API server verifies the webhook against the `caBundle` of its configuration, so all
//! replicas must present certificates from the same CA (per-replica self-signed
//! certificates make every other replica fail verification). A leader creates the CA once,
//! stores it, and renews the serving certificate when [`check_serving_certificate`] says so.

use std::{
    net::IpAddr,
    sync::Arc,
    time::{Duration, SystemTime},
};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::{
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    sign::CertifiedKey,
};
use x509_parser::{certificate::X509Certificate, extensions::GeneralName};

use crate::{Error, Result};

/// Certificates are back-dated by this much so that a peer whose clock runs slightly behind
/// does not see a certificate from the future.
const CLOCK_SKEW: Duration = Duration::from_secs(60 * 60);

/// A certificate and its private key, both PEM. The key is secret: store it in a Secret or
/// a git-ignored file, never in the repository.
#[derive(Clone, PartialEq, Eq)]
pub struct CertificatePem {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for CertificatePem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificatePem")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// The names a serving certificate must cover.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SubjectAltNames {
    pub dns_names: Vec<String>,
    pub ip_addresses: Vec<IpAddr>,
}

impl SubjectAltNames {
    /// The DNS names by which the API server may reach a Service: `svc.ns.svc` (what it
    /// dials for a `service` webhook reference) and the other forms, for humans and tools.
    pub fn for_service(service: &str, namespace: &str) -> Self {
        Self {
            dns_names: vec![
                service.to_owned(),
                format!("{service}.{namespace}"),
                format!("{service}.{namespace}.svc"),
                format!("{service}.{namespace}.svc.cluster.local"),
            ],
            ip_addresses: Vec::new(),
        }
    }

    pub fn with_dns_name(mut self, name: impl Into<String>) -> Self {
        self.dns_names.push(name.into());
        self
    }

    pub fn with_ip_address(mut self, ip: IpAddr) -> Self {
        self.ip_addresses.push(ip);
        self
    }
}

/// What a certificate says about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateInfo {
    pub subject: String,
    pub issuer: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    pub is_ca: bool,
    pub subject_alt_names: SubjectAltNames,
}

/// Generates a CA: a new ECDSA P-256 key and a self-signed certificate that may sign
/// serving certificates (path length 0), valid for `valid_for` from now.
pub fn generate_ca(common_name: &str, valid_for: Duration) -> Result<CertificatePem> {
    let key = KeyPair::generate().map_err(Error::Generate)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    set_validity(&mut params, valid_for);
    let cert = params.self_signed(&key).map_err(Error::Generate)?;
    Ok(CertificatePem {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Generates a serving certificate for `names`, signed by `ca`, with a new key, valid for
/// `valid_for` from now. Choose `valid_for` within the CA's own lifetime:
/// [`check_serving_certificate`] asks for renewal when the CA expires too.
pub fn generate_serving_certificate(
    ca: &CertificatePem,
    common_name: &str,
    names: &SubjectAltNames,
    valid_for: Duration,
) -> Result<CertificatePem> {
    if names.dns_names.is_empty() && names.ip_addresses.is_empty() {
        return Err(Error::NoSubjectAltNames);
    }
    let ca_key = KeyPair::from_pem(&ca.key_pem).map_err(Error::Generate)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key).map_err(Error::Generate)?;
    let key = KeyPair::generate().map_err(Error::Generate)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.subject_alt_names = names
        .dns_names
        .iter()
        .map(|name| {
            rcgen::string::Ia5String::try_from(name.as_str())
                .map(SanType::DnsName)
                .map_err(Error::Generate)
        })
        .chain(
            names
                .ip_addresses
                .iter()
                .map(|ip| Ok(SanType::IpAddress(*ip))),
        )
        .collect::<Result<_>>()?;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, valid_for);
    let cert = params.signed_by(&key, &issuer).map_err(Error::Generate)?;
    Ok(CertificatePem {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

fn set_validity(params: &mut CertificateParams, valid_for: Duration) {
    let now = SystemTime::now();
    params.not_before = (now - CLOCK_SKEW).into();
    params.not_after = (now + valid_for).into();
}

/// Reads the first certificate of a PEM bundle.
pub fn inspect_pem(cert_pem: &str) -> Result<CertificateInfo> {
    let der = first_certificate(cert_pem, "the certificate")?;
    inspect_der(&der, "the certificate")
}

pub(crate) fn inspect_der(der: &CertificateDer<'_>, what: &str) -> Result<CertificateInfo> {
    let cert = parse_der(der, what)?;
    info(&cert, what)
}

fn first_certificate(cert_pem: &str, what: &str) -> Result<CertificateDer<'static>> {
    match CertificateDer::pem_slice_iter(cert_pem.as_bytes()).next() {
        Some(Ok(der)) => Ok(der),
        Some(Err(source)) => Err(Error::Pem {
            what: what.into(),
            source,
        }),
        None => Err(Error::NoCertificate { what: what.into() }),
    }
}

fn parse_der<'a>(der: &'a CertificateDer<'_>, what: &str) -> Result<X509Certificate<'a>> {
    match x509_parser::parse_x509_certificate(der) {
        Ok((_, cert)) => Ok(cert),
        Err(err) => Err(Error::ParseCertificate {
            what: what.into(),
            reason: err.to_string(),
        }),
    }
}

fn info(cert: &X509Certificate<'_>, what: &str) -> Result<CertificateInfo> {
    let mut names = SubjectAltNames::default();
    let san = cert
        .subject_alternative_name()
        .map_err(|err| Error::ParseCertificate {
            what: what.into(),
            reason: format!("bad subjectAltName extension: {err}"),
        })?;
    for name in san.iter().flat_map(|ext| ext.value.general_names.iter()) {
        match name {
            GeneralName::DNSName(dns) => names.dns_names.push((*dns).to_owned()),
            GeneralName::IPAddress(bytes) => {
                if let Ok(octets) = <[u8; 4]>::try_from(*bytes) {
                    names.ip_addresses.push(IpAddr::from(octets));
                } else if let Ok(octets) = <[u8; 16]>::try_from(*bytes) {
                    names.ip_addresses.push(IpAddr::from(octets));
                }
            }
            _ => {}
        }
    }
    Ok(CertificateInfo {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        not_before: system_time(cert.validity().not_before.timestamp()),
        not_after: system_time(cert.validity().not_after.timestamp()),
        is_ca: cert.is_ca(),
        subject_alt_names: names,
    })
}

fn system_time(unix_seconds: i64) -> SystemTime {
    let magnitude = Duration::from_secs(unix_seconds.unsigned_abs());
    if unix_seconds >= 0 {
        SystemTime::UNIX_EPOCH + magnitude
    } else {
        SystemTime::UNIX_EPOCH - magnitude
    }
}

/// Whether a certificate can keep being used, and if not, why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Renewal {
    /// Good for at least the requested time.
    NotNeeded { not_after: SystemTime },
    /// Replace it.
    Needed(RenewalReason),
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RenewalReason {
    #[error("cannot be read: {0}")]
    Unreadable(String),
    #[error("the private key does not match the certificate")]
    KeyMismatch,
    #[error("the CA certificate is not a CA (basicConstraints CA:FALSE or absent)")]
    NotCa,
    #[error("not signed by the CA")]
    NotSignedByCa,
    #[error("does not cover the name {0}")]
    MissingSubjectAltName(String),
    #[error("not valid yet")]
    NotYetValid,
    #[error("expires too soon (or has expired)")]
    ExpiresSoon { not_after: SystemTime },
}

/// Whether the CA pair is usable to sign for at least `min_remaining` after `now`.
pub fn check_ca(ca: &CertificatePem, min_remaining: Duration, now: SystemTime) -> Renewal {
    let check = || -> Result<Renewal, RenewalReason> {
        let der = first_certificate(&ca.cert_pem, "the CA certificate").map_err(unreadable)?;
        let cert = parse_der(&der, "the CA certificate").map_err(unreadable)?;
        if !cert.is_ca() {
            return Err(RenewalReason::NotCa);
        }
        check_key(&der, &ca.key_pem)?;
        validity(&cert, min_remaining, now)
    };
    check().unwrap_or_else(Renewal::Needed)
}

/// Whether `serving` chains to the CA in `ca_cert_pem`, its key matches, it covers every
/// name in `names`, and it stays valid for at least `min_remaining` after `now`.
pub fn check_serving_certificate(
    ca_cert_pem: &str,
    serving: &CertificatePem,
    names: &SubjectAltNames,
    min_remaining: Duration,
    now: SystemTime,
) -> Renewal {
    let check = || -> Result<Renewal, RenewalReason> {
        let ca_der = first_certificate(ca_cert_pem, "the CA certificate").map_err(unreadable)?;
        let ca = parse_der(&ca_der, "the CA certificate").map_err(unreadable)?;
        let der =
            first_certificate(&serving.cert_pem, "the serving certificate").map_err(unreadable)?;
        let cert = parse_der(&der, "the serving certificate").map_err(unreadable)?;
        if cert.issuer().as_raw() != ca.subject().as_raw()
            || cert.verify_signature(Some(ca.public_key())).is_err()
        {
            return Err(RenewalReason::NotSignedByCa);
        }
        check_key(&der, &serving.key_pem)?;
        let covered = info(&cert, "the serving certificate")
            .map_err(unreadable)?
            .subject_alt_names;
        for dns in &names.dns_names {
            if !covered
                .dns_names
                .iter()
                .any(|have| have.eq_ignore_ascii_case(dns))
            {
                return Err(RenewalReason::MissingSubjectAltName(dns.clone()));
            }
        }
        for ip in &names.ip_addresses {
            if !covered.ip_addresses.contains(ip) {
                return Err(RenewalReason::MissingSubjectAltName(ip.to_string()));
            }
        }
        // A serving certificate is only as good as its CA.
        if let Renewal::Needed(reason) = validity(&ca, min_remaining, now)? {
            return Err(reason);
        }
        validity(&cert, min_remaining, now)
    };
    check().unwrap_or_else(Renewal::Needed)
}

fn unreadable(err: Error) -> RenewalReason {
    RenewalReason::Unreadable(err.to_string())
}

fn check_key(cert: &CertificateDer<'static>, key_pem: &str) -> Result<(), RenewalReason> {
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|err| RenewalReason::Unreadable(format!("the private key: {err}")))?;
    let provider: Arc<CryptoProvider> = Arc::new(rustls::crypto::ring::default_provider());
    match CertifiedKey::from_der(vec![cert.clone()], key, &provider) {
        Ok(_) => Ok(()),
        Err(rustls::Error::InconsistentKeys(_)) => Err(RenewalReason::KeyMismatch),
        Err(err) => Err(RenewalReason::Unreadable(format!("the private key: {err}"))),
    }
}

fn validity(
    cert: &X509Certificate<'_>,
    min_remaining: Duration,
    now: SystemTime,
) -> Result<Renewal, RenewalReason> {
    let not_before = system_time(cert.validity().not_before.timestamp());
    let not_after = system_time(cert.validity().not_after.timestamp());
    if not_before > now {
        return Err(RenewalReason::NotYetValid);
    }
    if not_after < now + min_remaining {
        return Err(RenewalReason::ExpiresSoon { not_after });
    }
    Ok(Renewal::NotNeeded { not_after })
}
