//! The TLS server over real sockets: protocol versions, ALPN, certificate hot reload through
//! a kubelet-style `..data` symlink swap, graceful shutdown.

mod common;

use std::{
    net::SocketAddr,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use axum::Router;
use bytes::Bytes;
use common::{fixture, recording_handler, review};
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode, client::conn::http1};
use hyper_util::rt::{TokioExecutor, TokioIo};
use inplace_upgrade_webhook::{
    AdmissionRequest, AdmissionResponse, AdmissionRouter, CertificateFiles, CertificateStore,
    ReloadOutcome, TlsServer, WebhookMetrics,
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
    sync::oneshot,
    task::JoinHandle,
};
use tokio_rustls::TlsConnector;

const HOST: &str = "inplace-upgrade-webhook.inplace-upgrade-system.svc";
const DAY: Duration = Duration::from_secs(24 * 60 * 60);

struct Pki {
    ca: CertificatePem,
}

impl Pki {
    fn new() -> Self {
        Self {
            ca: certs::generate_ca("test webhook CA", 30 * DAY).expect("CA"),
        }
    }

    fn serving(&self) -> CertificatePem {
        let names =
            SubjectAltNames::for_service("inplace-upgrade-webhook", "inplace-upgrade-system")
                .with_ip_address("127.0.0.1".parse().expect("ip"));
        certs::generate_serving_certificate(&self.ca, "inplace-upgrade-webhook", &names, DAY)
            .expect("serving certificate")
    }
}

fn der(pem: &CertificatePem) -> Vec<u8> {
    CertificateDer::from_pem_slice(pem.cert_pem.as_bytes())
        .expect("PEM")
        .to_vec()
}

struct Server {
    addr: SocketAddr,
    store: Arc<CertificateStore>,
    registry: Arc<Registry>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<inplace_upgrade_webhook::Result<()>>,
}

impl Server {
    async fn start(store_setup: impl FnOnce(&Arc<CertificateStore>), extra: Router) -> Self {
        let mut registry = Registry::default();
        let metrics = WebhookMetrics::new(&mut registry);
        let (_, handler) = recording_handler();
        let router = AdmissionRouter::new(metrics.clone())
            .handler("/mutate-pods", handler)
            .handler("/slow", |req: &AdmissionRequest| {
                // Blocks a worker on purpose: a request still in flight at shutdown.
                std::thread::sleep(Duration::from_millis(600));
                AdmissionResponse::from(req)
            })
            .into_router()
            .merge(extra);
        let store = CertificateStore::new(metrics);
        store_setup(&store);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let server = TlsServer::new(listener, router, store.server_config().expect("config"))
            .handshake_timeout(Duration::from_secs(2))
            .drain_timeout(Duration::from_secs(30));
        let task = tokio::spawn(server.serve(async move {
            let _ = stopped.await;
        }));
        Self {
            addr,
            store,
            registry: Arc::new(registry),
            stop: Some(stop),
            task,
        }
    }

    fn metrics_text(&self) -> String {
        let mut text = String::new();
        encode(&mut text, &self.registry).expect("encode");
        text
    }

    async fn shutdown(mut self) {
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

fn client_config(
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

struct Connection {
    sender: http1::SendRequest<Full<Bytes>>,
    peer_certificate: Vec<u8>,
    version: rustls::ProtocolVersion,
    alpn: Option<Vec<u8>>,
}

async fn tls_connect(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    name: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(name.to_owned()).expect("server name");
    TlsConnector::from(config).connect(name, tcp).await
}

async fn connect(addr: SocketAddr, config: Arc<ClientConfig>) -> std::io::Result<Connection> {
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

fn pod_review_body(uid: &str) -> Bytes {
    let pod = fixture("native-sidecar.yaml.injected", "Pod");
    Bytes::from(serde_json::to_vec(&review(uid, "CREATE", &pod, None, false)).expect("json"))
}

fn admission_request(path: &str, body: Bytes) -> Request<Full<Bytes>> {
    Request::post(path)
        .header("host", HOST)
        .header("content-type", "application/json")
        .body(Full::new(body))
        .expect("request")
}

/// Sends one review on the connection and returns the status and the echoed uid.
async fn send(
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

fn loaded(pem: CertificatePem) -> impl FnOnce(&Arc<CertificateStore>) {
    move |store| {
        store
            .load_pem(pem.cert_pem.as_bytes(), pem.key_pem.as_bytes())
            .expect("certificate loads");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls13_and_tls12_handshakes_serve_reviews() {
    let pki = Pki::new();
    let serving = pki.serving();
    let server = Server::start(loaded(serving.clone()), Router::new()).await;
    for (version, expected) in [
        (&rustls::version::TLS13, rustls::ProtocolVersion::TLSv1_3),
        (&rustls::version::TLS12, rustls::ProtocolVersion::TLSv1_2),
    ] {
        let config = client_config(&pki, &[version], &[b"http/1.1"]);
        let mut connection = connect(server.addr, config).await.expect("handshake");
        assert_eq!(connection.version, expected);
        assert_eq!(connection.alpn.as_deref(), Some(&b"http/1.1"[..]));
        assert_eq!(connection.peer_certificate, der(&serving));
        // Keep-alive: several requests on one connection.
        for i in 0..3 {
            let uid = format!("uid-{expected:?}-{i}");
            assert_eq!(
                send(&mut connection, "/mutate-pods", &uid).await,
                Ok((StatusCode::OK, uid))
            );
        }
    }
    // The certificate also verifies for the IP SAN used in local mode.
    let config = client_config(&pki, &[&rustls::version::TLS13], &[]);
    tls_connect(server.addr, config, "127.0.0.1")
        .await
        .expect("IP SAN verifies");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alpn_h2_serves_reviews() {
    let pki = Pki::new();
    let server = Server::start(loaded(pki.serving()), Router::new()).await;
    let config = client_config(&pki, &[&rustls::version::TLS13], &[b"h2", b"http/1.1"]);
    let tls = tls_connect(server.addr, config, HOST)
        .await
        .expect("handshake");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .expect("h2 handshake");
    tokio::spawn(connection);
    // Concurrent streams on one HTTP/2 connection.
    let mut streams = Vec::new();
    for i in 0..4 {
        sender.ready().await.expect("ready");
        let request = Request::post(format!("https://{HOST}/mutate-pods"))
            .header("content-type", "application/json")
            .body(Full::new(pod_review_body(&format!("uid-h2-{i}"))))
            .expect("request");
        streams.push(sender.send_request(request));
    }
    for (i, stream) in streams.into_iter().enumerate() {
        let response = stream.await.expect("response");
        assert_eq!(response.status(), StatusCode::OK);
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        let value: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(value["response"]["uid"], format!("uid-h2-{i}"));
    }
    server.shutdown().await;
}

/// A ClientHello with the given legacy version and no `supported_versions` extension, which
/// is how a TLS 1.1 (or 1.2-only) client offers its version. ECDHE suites, P-256 and X25519.
fn client_hello(version: [u8; 2]) -> Vec<u8> {
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
async fn exchange_raw(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls11_and_plaintext_http_are_refused() {
    let pki = Pki::new();
    let server = Server::start(loaded(pki.serving()), Router::new()).await;

    // Control: the same hand-made hello offering TLS 1.2 gets a ServerHello...
    let answer = exchange_raw(server.addr, &client_hello([3, 3])).await;
    assert!(answer.len() > 5, "no answer to a TLS 1.2 hello");
    assert_eq!(
        answer[0], 0x16,
        "TLS 1.2 hello answered with a handshake record"
    );
    assert_eq!(answer[5], 2, "…starting with ServerHello");

    // ...while offering at most TLS 1.1 gets a protocol_version alert.
    let answer = exchange_raw(server.addr, &client_hello([3, 2])).await;
    assert!(answer.len() >= 7, "expected an alert, got {answer:?}");
    assert_eq!(answer[0], 0x15, "alert record, got {answer:?}");
    assert_eq!(answer[6], 70, "protocol_version alert, got {answer:?}");

    // Plain HTTP on the TLS port never gets an HTTP answer.
    let body = pod_review_body("uid-plain");
    let mut request = format!(
        "POST /mutate-pods HTTP/1.1\r\nhost: {HOST}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(&body);
    let answer = exchange_raw(server.addr, &request).await;
    assert!(
        !answer.starts_with(b"HTTP/"),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );
    assert!(answer.is_empty() || answer[0] == 0x15, "{answer:?}");

    // The server is unharmed.
    let config = client_config(&pki, &[&rustls::version::TLS13], &[]);
    let mut connection = connect(server.addr, config).await.expect("handshake");
    assert!(
        send(&mut connection, "/mutate-pods", "uid-after")
            .await
            .is_ok()
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_certificate_means_no_handshake_until_one_is_loaded() {
    let pki = Pki::new();
    let server = Server::start(|_| {}, Router::new()).await;
    assert!(!server.store.is_loaded());
    let config = client_config(&pki, &[&rustls::version::TLS13], &[]);
    assert!(connect(server.addr, config.clone()).await.is_err());
    let serving = pki.serving();
    server
        .store
        .load_pem(serving.cert_pem.as_bytes(), serving.key_pem.as_bytes())
        .expect("loads");
    let connection = connect(server.addr, config)
        .await
        .expect("handshake once loaded");
    assert_eq!(connection.peer_certificate, der(&serving));
    server.shutdown().await;
}

/// Writes `pem` into a new timestamped directory and points `..data` at it with an atomic
/// rename, the way kubelet updates a Secret volume; returns the directory.
fn kubelet_write(dir: &Path, timestamp: &str, pem: &CertificatePem) -> std::path::PathBuf {
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

async fn wait_until(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn metric_value(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symlink_swap_rotates_the_certificate_without_losing_a_request() {
    let pki = Pki::new();
    let (cert_a, cert_b) = (pki.serving(), pki.serving());
    let dir = tempfile::tempdir().expect("tempdir");
    let old_version = kubelet_write(dir.path(), "..2026_11_22_02_00_00.000000001", &cert_a);
    let files = CertificateFiles::in_dir(dir.path());

    let setup_files = files.clone();
    let server = Server::start(
        move |store| {
            assert!(matches!(
                store.reload_files(&setup_files),
                Ok(ReloadOutcome::Loaded { .. })
            ));
        },
        Router::new(),
    )
    .await;
    let (stop_polling, polling_stopped) = oneshot::channel::<()>();
    let poller = tokio::spawn(server.store.clone().poll_files(
        files.clone(),
        Duration::from_millis(50),
        async move {
            let _ = polling_stopped.await;
        },
    ));

    let config = client_config(
        &pki,
        &[&rustls::version::TLS13, &rustls::version::TLS12],
        &[],
    );
    let mut kept_alive = connect(server.addr, config.clone())
        .await
        .expect("handshake");
    assert_eq!(kept_alive.peer_certificate, der(&cert_a));
    assert!(
        send(&mut kept_alive, "/mutate-pods", "uid-keepalive-1")
            .await
            .is_ok()
    );

    // Load: each worker opens a connection, sends three requests on it, and starts over.
    let running = Arc::new(AtomicBool::new(true));
    let succeeded = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for worker in 0..3 {
        let (running, succeeded, config) = (running.clone(), succeeded.clone(), config.clone());
        let addr = server.addr;
        workers.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            let mut certificates = Vec::new();
            let mut n = 0;
            while running.load(Ordering::Relaxed) {
                let mut connection = match connect(addr, config.clone()).await {
                    Ok(connection) => connection,
                    Err(err) => {
                        failures.push(format!("connect: {err}"));
                        continue;
                    }
                };
                certificates.push(connection.peer_certificate.clone());
                for _ in 0..3 {
                    n += 1;
                    let uid = format!("uid-{worker}-{n}");
                    match send(&mut connection, "/mutate-pods", &uid).await {
                        Ok((StatusCode::OK, echoed)) if echoed == uid => {
                            succeeded.fetch_add(1, Ordering::Relaxed);
                        }
                        other => failures.push(format!("{uid}: {other:?}")),
                    }
                }
            }
            (failures, certificates)
        }));
    }

    // Conditions, not sleeps: a loaded CI machine is slow, never wrong.
    wait_until("load before the swap", || {
        succeeded.load(Ordering::Relaxed) >= 12
    })
    .await;
    let before_swap = succeeded.load(Ordering::Relaxed);
    kubelet_write(dir.path(), "..2026_11_22_03_00_00.000000002", &cert_b);
    std::fs::remove_dir_all(old_version).expect("kubelet removes the old version");

    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let connection = connect(server.addr, config.clone())
            .await
            .expect("handshake");
        if connection.peer_certificate == der(&cert_b) {
            break;
        }
        assert!(Instant::now() < deadline, "certificate B never served");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Three workers, three requests per connection: twelve more successes include at least
    // one connection opened after B was served.
    let after_swap = succeeded.load(Ordering::Relaxed);
    wait_until("load after the swap", || {
        succeeded.load(Ordering::Relaxed) >= after_swap + 12
    })
    .await;
    running.store(false, Ordering::Relaxed);
    let mut failures = Vec::new();
    let mut certificates = Vec::new();
    for worker in workers {
        let (f, c) = worker.await.expect("worker");
        failures.extend(f);
        certificates.extend(c);
    }
    let total = succeeded.load(Ordering::Relaxed);
    assert!(
        failures.is_empty(),
        "requests lost during rotation: {failures:?}"
    );
    assert!(total > before_swap, "{before_swap}/{total}");
    assert!(certificates.contains(&der(&cert_a)) && certificates.contains(&der(&cert_b)));

    // The connection opened before the swap still works, on the certificate it negotiated.
    assert_eq!(
        send(&mut kept_alive, "/mutate-pods", "uid-keepalive-2").await,
        Ok((StatusCode::OK, "uid-keepalive-2".into()))
    );
    assert_eq!(kept_alive.peer_certificate, der(&cert_a));

    let text = server.metrics_text();
    assert_eq!(
        metric_value(
            &text,
            r#"webhook_certificate_reloads_total{result="success"}"#
        ),
        2,
        "{text}"
    );
    assert_eq!(
        metric_value(
            &text,
            r#"webhook_certificate_reloads_total{result="error"}"#
        ),
        0,
        "{text}"
    );

    // A broken pair (certificate and key that do not match) keeps B in service.
    let other = pki.serving();
    let broken = CertificatePem {
        cert_pem: other.cert_pem.clone(),
        key_pem: cert_b.key_pem.clone(),
    };
    kubelet_write(dir.path(), "..2026_11_22_04_00_00.000000003", &broken);
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric_value(
        &server.metrics_text(),
        r#"webhook_certificate_reloads_total{result="error"}"#,
    ) == 0
    {
        assert!(Instant::now() < deadline, "the broken pair was never read");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let connection = connect(server.addr, config.clone())
        .await
        .expect("still serving");
    assert_eq!(connection.peer_certificate, der(&cert_b));
    let text = server.metrics_text();
    assert_eq!(
        metric_value(
            &text,
            r#"webhook_certificate_reloads_total{result="error"}"#
        ),
        1,
        "an unchanged broken pair is reported once: {text}"
    );
    let b_expiry = certs::inspect_pem(&cert_b.cert_pem)
        .expect("parses")
        .not_after;
    assert_eq!(server.store.not_after(), Some(b_expiry));

    let _ = stop_polling.send(());
    poller.await.expect("poller stops");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_in_flight_requests_and_closes_idle_connections() {
    let pki = Pki::new();
    let server = Server::start(loaded(pki.serving()), Router::new()).await;
    let config = client_config(&pki, &[&rustls::version::TLS13], &[]);
    let addr = server.addr;

    let mut idle = connect(addr, config.clone()).await.expect("handshake");
    assert!(send(&mut idle, "/mutate-pods", "uid-idle").await.is_ok());

    let mut busy = connect(addr, config.clone()).await.expect("handshake");
    let in_flight = tokio::spawn(async move { send(&mut busy, "/slow", "uid-slow").await });
    tokio::time::sleep(Duration::from_millis(150)).await;

    let started = Instant::now();
    server.shutdown().await;
    assert_eq!(
        in_flight.await.expect("task"),
        Ok((StatusCode::OK, "uid-slow".into())),
        "the in-flight request completes"
    );
    // Well under the 10 s drain timeout: the idle keep-alive connection did not hold it up.
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(send(&mut idle, "/mutate-pods", "uid-late").await.is_err());
    assert!(TcpStream::connect(addr).await.is_err(), "listener closed");
}

#[test]
fn missing_then_written_files_are_reported_once_then_loaded() {
    let mut registry = Registry::default();
    let store = CertificateStore::new(WebhookMetrics::new(&mut registry));
    let errors = |registry: &Registry| {
        let mut text = String::new();
        encode(&mut text, registry).expect("encode");
        metric_value(
            &text,
            r#"webhook_certificate_reloads_total{result="error"}"#,
        )
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let files = CertificateFiles::in_dir(dir.path());

    let err = store.reload_files(&files).expect_err("no files yet");
    assert!(err.to_string().contains("tls.crt"), "{err}");
    assert!(matches!(
        store.reload_files(&files),
        Ok(ReloadOutcome::Unchanged)
    ));
    assert_eq!(errors(&registry), 1, "the same failure is counted once");
    assert!(!store.is_loaded());

    let pki = Pki::new();
    let serving = pki.serving();
    kubelet_write(dir.path(), "..2026_11_22_01_00_00.000000001", &serving);
    let expected = certs::inspect_pem(&serving.cert_pem)
        .expect("parses")
        .not_after;
    assert_eq!(
        store.reload_files(&files).expect("loads"),
        ReloadOutcome::Loaded {
            not_after: expected
        }
    );
    assert!(matches!(
        store.reload_files(&files),
        Ok(ReloadOutcome::Unchanged)
    ));
    assert_eq!(store.not_after(), Some(expected));

    // Garbage handed in directly is refused and the served certificate stays.
    assert!(
        store
            .load_pem(b"garbage", serving.key_pem.as_bytes())
            .is_err()
    );
    assert!(store.load_pem(serving.cert_pem.as_bytes(), b"").is_err());
    assert_eq!(errors(&registry), 3);
    assert_eq!(
        store
            .current()
            .expect("still loaded")
            .end_entity_cert()
            .expect("leaf")
            .to_vec(),
        der(&serving)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_is_dropped_after_the_handshake_timeout() {
    let pki = Pki::new();
    let server = Server::start(loaded(pki.serving()), Router::new()).await;
    let mut tcp = TcpStream::connect(server.addr).await.expect("connect");
    let started = Instant::now();
    let mut buffer = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(20), tcp.read(&mut buffer))
        .await
        .expect("the server closes the connection well before 20 s");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    // The test server's handshake timeout is 2 s.
    assert!(
        started.elapsed() >= Duration::from_millis(1900),
        "{:?}",
        started.elapsed()
    );
    server.shutdown().await;
}
