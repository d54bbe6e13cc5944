//! The TLS server over real sockets: protocol versions, ALPN, certificate hot reload through
//! a kubelet-style `..data` symlink swap, graceful shutdown.

mod common;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use axum::Router;
use common::tls::*;
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use inplace_upgrade_webhook::{
    AdminRouter, CertificateFiles, CertificateStore, ReloadOutcome, WebhookMetrics,
    certs::{self, CertificatePem},
};
use prometheus_client::{encoding::text::encode, registry::Registry};
use tokio::{
    io::AsyncReadExt,
    net::{TcpListener, TcpStream},
    sync::oneshot,
};

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
    // Shut down only once the handler has the request: a condition, not a sleep.
    server.slow_started.notified().await;

    let started = Instant::now();
    server.shutdown().await;
    assert_eq!(
        in_flight.await.expect("task"),
        Ok((StatusCode::OK, "uid-slow".into())),
        "the in-flight request completes"
    );
    // Well under the 30 s drain timeout, which an idle keep-alive connection left open would
    // have used up whole.
    assert!(
        started.elapsed() < Duration::from_secs(15),
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

/// `openssl s_client` against `addr` with `flags`; its stdout and stderr together.
fn openssl_s_client(addr: std::net::SocketAddr, flags: &[&str]) -> Option<(bool, String)> {
    let output = std::process::Command::new("openssl")
        .arg("s_client")
        .arg("-connect")
        .arg(addr.to_string())
        .args(flags)
        .stdin(std::process::Stdio::null())
        .output()
        .ok()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Some((output.status.success(), text))
}

/// An HTTP/1.0 GET in plain text; the whole answer.
async fn plaintext_get(addr: std::net::SocketAddr, path: &str) -> Vec<u8> {
    exchange_raw(
        addr,
        format!("GET {path} HTTP/1.0\r\nhost: localhost\r\n\r\n").as_bytes(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_tls12_and_tls13_on_the_admission_port_and_plaintext_only_on_the_admin_port() {
    let pki = Pki::new();
    let server = Server::start(loaded(pki.serving()), Router::new()).await;

    // TLS 1.0 and SSL 3.0 hellos get a protocol_version alert, like TLS 1.1.
    for version in [[3, 1], [3, 0]] {
        let answer = exchange_raw(server.addr, &client_hello(version)).await;
        assert!(
            answer.len() >= 7,
            "{version:?}: expected an alert, got {answer:?}"
        );
        assert_eq!(answer[0], 0x15, "{version:?}: alert record, got {answer:?}");
        assert_eq!(
            answer[6], 70,
            "{version:?}: protocol_version alert, got {answer:?}"
        );
    }

    // A real TLS stack agrees: openssl (when installed) completes TLS 1.2 and 1.3 handshakes,
    // and for 1.1 and 1.0, even with its own floor lowered, gets an alert and no certificate
    // (rustls answers openssl's 1.1 hello with handshake_failure: no suite in common).
    if openssl_s_client(server.addr, &["-help"]).is_some() {
        for flag in ["-tls1_2", "-tls1_3"] {
            let (ok, text) = openssl_s_client(server.addr, &[flag]).expect("openssl runs");
            assert!(ok && text.contains("BEGIN CERTIFICATE"), "{flag}: {text}");
        }
        for flag in ["-tls1_1", "-tls1"] {
            let (ok, text) =
                openssl_s_client(server.addr, &[flag, "-cipher", "DEFAULT@SECLEVEL=0"])
                    .expect("openssl runs");
            assert!(!ok, "{flag} must fail: {text}");
            assert!(!text.contains("BEGIN CERTIFICATE"), "{flag}: {text}");
            let alert = text
                .lines()
                .find(|l| l.contains("alert"))
                .unwrap_or_else(|| panic!("{flag}: the server sent no alert: {text}"));
            assert!(text.contains("Cipher is (NONE)"), "{flag}: {text}");
            eprintln!("openssl {flag}: {alert}");
        }
    } else {
        eprintln!("openssl not installed: the hand-built hellos above are the proof");
    }

    // The admin port serves plain HTTP; the admission port never answers plain HTTP, and
    // does not serve the admin paths over TLS either.
    let store = server.store.clone();
    let admin = AdminRouter::new(server.registry.clone(), move || store.is_loaded()).into_router();
    let admin_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let admin_addr = admin_listener.local_addr().expect("addr");
    tokio::spawn(inplace_upgrade_webhook::serve_admin(
        admin_listener,
        admin,
        std::future::pending(),
    ));
    for path in ["/healthz", "/readyz", "/metrics"] {
        let answer = plaintext_get(admin_addr, path).await;
        assert!(
            answer.starts_with(b"HTTP/1.0 200") || answer.starts_with(b"HTTP/1.1 200"),
            "admin {path}: {:?}",
            String::from_utf8_lossy(&answer)
        );
        let answer = plaintext_get(server.addr, path).await;
        assert!(
            answer.is_empty() || answer[0] == 0x15,
            "admission port answered plain HTTP on {path}: {:?}",
            String::from_utf8_lossy(&answer)
        );
    }
    // A TLS hello on the admin port gets no ServerHello: it is not a TLS port.
    let answer = exchange_raw(admin_addr, &client_hello([3, 3])).await;
    assert!(answer.first() != Some(&0x16), "{answer:?}");
    let config = client_config(&pki, &[&rustls::version::TLS13], &[]);
    let mut connection = connect(server.addr, config).await.expect("handshake");
    connection.sender.ready().await.expect("ready");
    let response = connection
        .sender
        .send_request(
            Request::get("/metrics")
                .header("host", HOST)
                .body(Full::new(bytes::Bytes::new()))
                .expect("request"),
        )
        .await
        .expect("response");
    assert_ne!(
        response.status(),
        StatusCode::OK,
        "metrics over the admission port"
    );
    server.shutdown().await;
}
