use std::path::PathBuf;

use axum::http::StatusCode;

/// Everything that can go wrong in the transport: a malformed review, a certificate that
/// cannot be loaded or generated, a socket that cannot be bound.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "unsupported Content-Type {content_type:?}: an AdmissionReview must be sent as application/json"
    )]
    UnsupportedContentType { content_type: String },

    #[error(
        "request body is larger than the {limit}-byte limit; the API server never sends an AdmissionReview this large"
    )]
    BodyTooLarge { limit: usize },

    #[error("cannot read the request body: {0}")]
    ReadBody(#[source] Box<dyn std::error::Error + Send + Sync>),

    #[error("request body is not valid JSON: {0}")]
    InvalidJson(#[source] serde_json::Error),

    #[error("request body is not an AdmissionReview: {0}")]
    NotAdmissionReview(#[source] serde_json::Error),

    #[error(
        "expected apiVersion admission.k8s.io/v1 and kind AdmissionReview, got apiVersion {api_version:?} kind {kind:?}; register the webhook with admissionReviewVersions: [v1]"
    )]
    WrongReviewType { api_version: String, kind: String },

    #[error("AdmissionReview has no request field: nothing to admit")]
    MissingRequest,

    #[error("no admission handler is registered for path {path:?}")]
    UnknownPath { path: String },

    #[error("admission handler panicked while reviewing request {uid}; see the process log")]
    HandlerPanicked { uid: String },

    #[error("cannot encode the AdmissionReview response: {0}")]
    EncodeResponse(#[source] serde_json::Error),

    #[error("cannot read {path}: {source}")]
    ReadFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{what} holds no PEM certificate (expected a \"-----BEGIN CERTIFICATE-----\" block)")]
    NoCertificate { what: String },

    #[error(
        "{what} holds no PEM private key (expected a PKCS#8, PKCS#1 or SEC1 \"-----BEGIN ... PRIVATE KEY-----\" block)"
    )]
    NoPrivateKey { what: String },

    #[error("{what} is not valid PEM: {source}")]
    Pem {
        what: String,
        #[source]
        source: rustls::pki_types::pem::Error,
    },

    #[error("{what} is not a valid X.509 certificate: {reason}")]
    ParseCertificate { what: String, reason: String },

    #[error(
        "the private key {key} does not fit the certificate {cert}, or its algorithm is unsupported: {source}; write a matching tls.crt/tls.key pair"
    )]
    KeyPair {
        cert: String,
        key: String,
        #[source]
        source: rustls::Error,
    },

    #[error("{what} expired at {not_after}; write a renewed certificate")]
    CertificateExpired { what: String, not_after: String },

    #[error(
        "{what} is not valid before {shown}; check the clocks of the issuer and of this node, or wait"
    )]
    CertificateNotYetValid {
        what: String,
        not_before: std::time::SystemTime,
        shown: String,
    },

    #[error(
        "{what} does not cover {name}, a name clients reach the webhook by (it covers {covered}); issue it for the webhook's Service names"
    )]
    CertificateMissingName {
        what: String,
        name: String,
        covered: String,
    },

    #[error(
        "a serving certificate needs at least one DNS name or IP address: clients verify the subjectAltName"
    )]
    NoSubjectAltNames,

    #[error("cannot generate a certificate: {0}")]
    Generate(#[source] rcgen::Error),

    #[error("cannot build the TLS configuration: {0}")]
    TlsConfig(#[source] rustls::Error),

    #[error("cannot listen on {address}: {source}")]
    Bind {
        address: String,
        #[source]
        source: std::io::Error,
    },

    #[error("server failed: {0}")]
    Serve(#[source] std::io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The HTTP status an admission request that failed with this error is answered with.
    pub fn status_code(&self) -> StatusCode {
        match self {
            Error::UnsupportedContentType { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Error::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Error::ReadBody(_)
            | Error::InvalidJson(_)
            | Error::NotAdmissionReview(_)
            | Error::WrongReviewType { .. }
            | Error::MissingRequest => StatusCode::BAD_REQUEST,
            Error::UnknownPath { .. } => StatusCode::NOT_FOUND,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A short, stable label for metrics and logs.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::UnsupportedContentType { .. } => "unsupported_content_type",
            Error::BodyTooLarge { .. } => "body_too_large",
            Error::ReadBody(_) => "read_body",
            Error::InvalidJson(_) => "invalid_json",
            Error::NotAdmissionReview(_) => "not_admission_review",
            Error::WrongReviewType { .. } => "wrong_review_type",
            Error::MissingRequest => "missing_request",
            Error::UnknownPath { .. } => "unknown_path",
            Error::HandlerPanicked { .. } => "handler_panicked",
            Error::EncodeResponse(_) => "encode_response",
            Error::ReadFile { .. } => "read_file",
            Error::NoCertificate { .. } => "no_certificate",
            Error::NoPrivateKey { .. } => "no_private_key",
            Error::Pem { .. } => "pem",
            Error::ParseCertificate { .. } => "parse_certificate",
            Error::KeyPair { .. } => "key_pair",
            Error::CertificateExpired { .. } => "certificate_expired",
            Error::CertificateNotYetValid { .. } => "certificate_not_yet_valid",
            Error::CertificateMissingName { .. } => "certificate_missing_name",
            Error::NoSubjectAltNames => "no_subject_alt_names",
            Error::Generate(_) => "generate",
            Error::TlsConfig(_) => "tls_config",
            Error::Bind { .. } => "bind",
            Error::Serve(_) => "serve",
        }
    }
}
