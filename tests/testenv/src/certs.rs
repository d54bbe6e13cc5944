//! The environment's PKI: one CA, the API server's serving certificate, a cluster-admin client
//! certificate (`O=system:masters`), the service-account signing key, and for real nodes the
//! API server's client certificate towards kubelets and one kubelet client certificate per
//! node (`CN=system:node:<name>`, `O=system:nodes`, what the Node authorizer expects).

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

use crate::{Error, Result};

/// Paths of the PEM files written under `<dir>/pki`.
#[derive(Clone, Debug)]
pub(crate) struct Pki {
    pub ca_cert: PathBuf,
    pub serving_cert: PathBuf,
    pub serving_key: PathBuf,
    pub admin_cert: PathBuf,
    pub admin_key: PathBuf,
    pub service_account_key: PathBuf,
    pub service_account_pub: PathBuf,
    pub ca_pem: String,
    pub admin_cert_pem: String,
    pub admin_key_pem: String,
    /// The API server's client certificate towards kubelets (`--kubelet-client-certificate`).
    pub kubelet_client_cert: PathBuf,
    pub kubelet_client_key: PathBuf,
    /// Per real node: (node name, client certificate PEM, key PEM).
    pub nodes: Vec<(String, String, String)>,
}

/// Names the serving certificate must carry: how clients outside and inside the cluster reach
/// the API server (10.96.0.1 is the `kubernetes` Service in the default service range).
const SERVING_NAMES: [&str; 7] = [
    "127.0.0.1",
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
    "10.96.0.1",
];

/// Generates the PKI under `<dir>/pki`, with a kubelet client certificate for each of
/// `real_nodes` and the API server's serving certificate also valid for `api_host` (where it
/// listens).
pub(crate) fn generate(dir: &Path, real_nodes: &[String], api_host: &str) -> Result<Pki> {
    let pki = dir.join("pki");
    std::fs::create_dir_all(&pki).map_err(|e| Error::io(format!("create {}", pki.display()), e))?;
    let cert_err = |what: &str| {
        let what = what.to_owned();
        move |e: rcgen::Error| Error::Certificate(format!("{what}: {e}"))
    };

    let mut ca_params =
        CertificateParams::new(Vec::<String>::new()).map_err(cert_err("CA parameters"))?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "inplace-upgrade testenv CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate().map_err(cert_err("CA key"))?;
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key).map_err(cert_err("CA certificate"))?;

    let mut serving_names: Vec<String> = SERVING_NAMES.iter().map(|s| (*s).to_owned()).collect();
    if !serving_names.iter().any(|n| n == api_host) {
        serving_names.push(api_host.to_owned());
    }
    let mut serving =
        CertificateParams::new(serving_names).map_err(cert_err("serving parameters"))?;
    serving
        .distinguished_name
        .push(DnType::CommonName, "kube-apiserver");
    serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    serving.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    let serving_key = KeyPair::generate().map_err(cert_err("serving key"))?;
    let serving_cert = serving
        .signed_by(&serving_key, &ca)
        .map_err(cert_err("serving certificate"))?;

    let client = |cn: &str, org: &str| -> Result<(String, String)> {
        let mut params =
            CertificateParams::new(Vec::<String>::new()).map_err(cert_err("client parameters"))?;
        params.distinguished_name.push(DnType::CommonName, cn);
        params
            .distinguished_name
            .push(DnType::OrganizationName, org);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let key = KeyPair::generate().map_err(cert_err("client key"))?;
        let cert = params
            .signed_by(&key, &ca)
            .map_err(cert_err(&format!("client certificate {cn}")))?;
        Ok((cert.pem(), key.serialize_pem()))
    };
    let (admin_cert_pem, admin_key_pem) = client("kubernetes-admin", "system:masters")?;
    // kubelets authorize the API server's requests (logs, exec) with a SubjectAccessReview.
    let (kubelet_client_pem, kubelet_client_key_pem) =
        client("kube-apiserver-kubelet-client", "system:masters")?;
    let nodes = real_nodes
        .iter()
        .map(|n| {
            let (cert, key) = client(&format!("system:node:{n}"), "system:nodes")?;
            Ok((n.clone(), cert, key))
        })
        .collect::<Result<Vec<_>>>()?;

    let sa_key = KeyPair::generate().map_err(cert_err("service-account key"))?;

    let out = Pki {
        ca_cert: pki.join("ca.crt"),
        serving_cert: pki.join("apiserver.crt"),
        serving_key: pki.join("apiserver.key"),
        admin_cert: pki.join("admin.crt"),
        admin_key: pki.join("admin.key"),
        service_account_key: pki.join("sa.key"),
        service_account_pub: pki.join("sa.pub"),
        ca_pem: ca.pem(),
        admin_cert_pem,
        admin_key_pem,
        kubelet_client_cert: pki.join("apiserver-kubelet-client.crt"),
        kubelet_client_key: pki.join("apiserver-kubelet-client.key"),
        nodes,
    };
    let files = [
        (&out.ca_cert, out.ca_pem.clone()),
        (&out.serving_cert, serving_cert.pem()),
        (&out.serving_key, serving_key.serialize_pem()),
        (&out.admin_cert, out.admin_cert_pem.clone()),
        (&out.admin_key, out.admin_key_pem.clone()),
        (&out.service_account_key, sa_key.serialize_pem()),
        (&out.service_account_pub, sa_key.public_key_pem()),
        (&out.kubelet_client_cert, kubelet_client_pem),
        (&out.kubelet_client_key, kubelet_client_key_pem),
    ];
    for (path, pem) in files {
        std::fs::write(path, pem).map_err(|e| Error::io(format!("write {}", path.display()), e))?;
    }
    Ok(out)
}
