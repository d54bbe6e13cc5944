//! TLS plumbing shared by the transport tests: a test CA, a server over a real socket, a
//! rustls client, raw ClientHellos, kubelet's Secret volume swap, metric and RSS readers.

use std::{
    net::SocketAddr,
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use axum::Router;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode, client::conn::http1};
use hyper_util::rt::TokioIo;
use inplace_upgrade_webhook::{
    AdmissionRequest, AdmissionResponse, AdmissionRouter, CertificateStore, TlsServer,
    WebhookMetrics,
    certs::{self, CertificatePem, SubjectAltNames},
};
use prometheus_client::{encoding::text::encode, registry::Registry};
use rustls::{
    ClientConfig, RootCertStore, SupportedProtocolVersion,
    pki_types::{CertificateDer, ServerName, pem::PemObject},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::{Notify, oneshot},
    task::JoinHandle,
};
use tokio_rustls::TlsConnector;

use super::{fixture, recording_handler, review};

pub const HOST: &str = "inplace-upgrade-webhook.inplace-upgrade-system.svc";
pub const DAY: Duration = Duration::from_secs(24 * 60 * 60);

pub struct Pki {
    pub ca: CertificatePem,
}

impl Pki {
    pub fn new() -> Self {
        Self {
            ca: certs::generate_ca("test webhook CA", 30 * DAY).expect("CA"),
        }
    }

    pub fn serving(&self) -> CertificatePem {
        let names =
            SubjectAltNames::for_service("inplace-upgrade-webhook", "inplace-upgrade-system")
                .with_ip_address("127.0.0.1".parse().expect("ip"));
        certs::generate_serving_certificate(&self.ca, "inplace-upgrade-webhook", &names, DAY)
            .expect("serving certificate")
    }
}

pub fn der(pem: &CertificatePem) -> Vec<u8> {
    CertificateDer::from_pem_slice(pem.cert_pem.as_bytes())
        .expect("PEM")
        .to_vec()
}

pub struct Server {
    pub addr: SocketAddr,
    pub store: Arc<CertificateStore>,
    pub registry: Arc<Registry>,
    /// Notified when `/slow` has begun a request (servers made by [`Server::start`]).
    pub slow_started: Arc<Notify>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<inplace_upgrade_webhook::Result<()>>,
}

impl Server {
    /// A server with `/mutate-pods` (a recording handler), `/slow` (600 ms on a worker) and
    /// the routes of `extra`, with the default bounds.
    pub async fn start(store_setup: impl FnOnce(&Arc<CertificateStore>), extra: Router) -> Self {
        let slow_started = Arc::new(Notify::new());
        let started = slow_started.clone();
        let mut server = Self::start_with(
            store_setup,
            move |metrics| {
                let (_, handler) = recording_handler();
                AdmissionRouter::new(metrics)
                    .handler("/mutate-pods", handler)
                    .handler("/slow", move |req: &AdmissionRequest| {
                        started.notify_one();
                        // Blocks a worker on purpose: a request still in flight at shutdown.
                        std::thread::sleep(Duration::from_millis(600));
                        AdmissionResponse::from(req)
                    })
                    .into_router()
                    .merge(extra)
            },
            |server| server,
        )
        .await;
        server.slow_started = slow_started;
        server
    }

    /// A server whose router `routes` builds over the registered metrics, and whose
    /// [`TlsServer`] `configure` adjusts (bounds); shed requests are counted in the registry.
    pub async fn start_with(
        store_setup: impl FnOnce(&Arc<CertificateStore>),
        routes: impl FnOnce(WebhookMetrics) -> Router,
        configure: impl FnOnce(TlsServer) -> TlsServer,
    ) -> Self {
        let mut registry = Registry::default();
        let metrics = WebhookMetrics::new(&mut registry);
        let router = routes(metrics.clone());
        let store = CertificateStore::new(metrics.clone());
        store_setup(&store);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let server = TlsServer::new(listener, router, store.server_config().expect("config"))
            .metrics(metrics)
            .handshake_timeout(Duration::from_secs(2))
            .drain_timeout(Duration::from_secs(30));
        let task = tokio::spawn(configure(server).serve(async move {
            let _ = stopped.await;
        }));
        Self {
            addr,
            store,
            registry: Arc::new(registry),
            slow_started: Arc::new(Notify::new()),
            stop: Some(stop),
            task,
        }
    }

    pub fn metrics_text(&self) -> String {
        let mut text = String::new();
        encode(&mut text, &self.registry).expect("encode");
        text
    }

    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(20), self.task)
            .await
            .expect("server stops well within its 30 s drain timeout")
            .expect("server task")
            .expect("server result");
    }
}

pub fn client_config(
    pki: &Pki,
    versions: &[&'static SupportedProtocolVersion],
    alpn: &[&[u8]],
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pki.ca.cert_pem.as_bytes()) {
        roots
            .add(cert.expect("CA PEM"))
            .expect("CA is a valid root");
    }
    let mut config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(versions)
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    // Every connection does a full handshake, so it shows the certificate served now (a
    // resumed session reports the certificate of the session it resumes).
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

pub struct Connection {
    pub sender: http1::SendRequest<Full<Bytes>>,
    pub peer_certificate: Vec<u8>,
    pub version: rustls::ProtocolVersion,
    pub alpn: Option<Vec<u8>>,
}

pub async fn tls_connect(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    name: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(name.to_owned()).expect("server name");
    TlsConnector::from(config).connect(name, tcp).await
}

pub async fn connect(addr: SocketAddr, config: Arc<ClientConfig>) -> std::io::Result<Connection> {
    let tls = tls_connect(addr, config, HOST).await?;
    let (_, session) = tls.get_ref();
    let peer_certificate = session
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|cert| cert.to_vec())
        .unwrap_or_default();
    let version = session.protocol_version().expect("negotiated");
    let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
    let (sender, connection) = http1::handshake(TokioIo::new(tls))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(connection);
    Ok(Connection {
        sender,
        peer_certificate,
        version,
        alpn,
    })
}

pub fn pod_review_body(uid: &str) -> Bytes {
    let pod = fixture("native-sidecar.yaml.injected", "Pod");
    Bytes::from(serde_json::to_vec(&review(uid, "CREATE", &pod, None, false)).expect("json"))
}

pub fn admission_request(path: &str, body: Bytes) -> Request<Full<Bytes>> {
    Request::post(path)
        .header("host", HOST)
        .header("content-type", "application/json")
        .body(Full::new(body))
        .expect("request")
}

/// Sends one review on the connection and returns the status and the echoed uid.
pub async fn send(
    connection: &mut Connection,
    path: &str,
    uid: &str,
) -> Result<(StatusCode, String), String> {
    connection.sender.ready().await.map_err(|e| e.to_string())?;
    let response = connection
        .sender
        .send_request(admission_request(path, pod_review_body(uid)))
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    let value: serde_json::Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
    Ok((
        status,
        value["response"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    ))
}

pub fn loaded(pem: CertificatePem) -> impl FnOnce(&Arc<CertificateStore>) {
    move |store| {
        store
            .load_pem(pem.cert_pem.as_bytes(), pem.key_pem.as_bytes())
            .expect("certificate loads");
    }
}

/// Writes `pem` into a new timestamped directory and points `..data` at it with an atomic
/// rename, the way kubelet updates a Secret volume; returns the directory.
pub fn kubelet_write(dir: &Path, timestamp: &str, pem: &CertificatePem) -> std::path::PathBuf {
    let version = dir.join(timestamp);
    std::fs::create_dir(&version).expect("mkdir");
    std::fs::write(version.join("tls.crt"), &pem.cert_pem).expect("write crt");
    std::fs::write(version.join("tls.key"), &pem.key_pem).expect("write key");
    let staging = dir.join("..data_tmp");
    std::os::unix::fs::symlink(timestamp, &staging).expect("symlink");
    std::fs::rename(&staging, dir.join("..data")).expect("atomic swap");
    for file in ["tls.crt", "tls.key"] {
        let link = dir.join(file);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(Path::new("..data").join(file), &link).expect("symlink");
        }
    }
    version
}

pub async fn wait_until(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub fn metric_value(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0)
}

/// A ClientHello with the given legacy version and no `supported_versions` extension, which
/// is how a TLS 1.1 (or 1.2-only) client offers its version. ECDHE suites, P-256 and X25519.
pub fn client_hello(version: [u8; 2]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&version);
    body.extend_from_slice(&[7; 32]); // random
    body.push(0); // no session id
    let suites: [u8; 8] = [0xc0, 0x2b, 0xc0, 0x2f, 0xc0, 0x09, 0xc0, 0x13];
    body.extend_from_slice(&(suites.len() as u16).to_be_bytes());
    body.extend_from_slice(&suites);
    body.extend_from_slice(&[1, 0]); // null compression only
    let mut extensions = Vec::new();
    let mut extension = |kind: u16, data: &[u8]| {
        extensions.extend_from_slice(&kind.to_be_bytes());
        extensions.extend_from_slice(&(data.len() as u16).to_be_bytes());
        extensions.extend_from_slice(data);
    };
    extension(0x000a, &[0, 4, 0x00, 0x17, 0x00, 0x1d]); // supported_groups
    extension(0x000b, &[1, 0]); // ec_point_formats: uncompressed
    extension(0x000d, &[0, 4, 0x04, 0x03, 0x08, 0x04]); // signature_algorithms
    body.extend_from_slice(&(extensions.len() as u16).to_be_bytes());
    body.extend_from_slice(&extensions);

    let mut handshake = vec![1]; // ClientHello
    handshake.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    handshake.extend_from_slice(&body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend_from_slice(&(handshake.len() as u16).to_be_bytes());
    record.extend_from_slice(&handshake);
    record
}

/// Writes `bytes` and returns what the server answers before closing (or within 3 s).
pub async fn exchange_raw(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(bytes).await.expect("write");
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(3);
    while answer.len() < 64 * 1024 {
        let remaining = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(remaining, tcp.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => answer.extend_from_slice(&buffer[..n]),
        }
    }
    answer
}

/// This process's resident set size in KiB (Linux), 0 where unknown.
pub fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status.lines().find_map(|line| {
                line.strip_prefix("VmRSS:")?
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse()
                    .ok()
            })
        })
        .unwrap_or(0)
}

/// The 1-minute load average, for printing next to measured figures.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}
