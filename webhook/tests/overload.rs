//! Overload: a flood of AdmissionReviews beyond the server's bounds is shed at once with a
//! `503` the API server understands (an AdmissionReview naming the reason), nothing queues,
//! memory stays bounded, and the server serves normally once the flood is over.
//!
//! Behaviour, not timing: the bounds are filled by requests a handler holds until the test
//! releases them, so every flood request arrives while the server is provably full; each must
//! be answered 503 while the held ones are still held (queued ones would wait for the release
//! and deadlock the test instead). Figures are printed, never asserted.
//!
//! `WEBHOOK_FLOOD_REQUESTS` (default 400) sets the flood size.

mod common;

use std::{
    sync::{
        Arc, Condvar, Mutex,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use common::tls::*;
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode};
use inplace_upgrade_webhook::{
    AdmissionRequest, AdmissionResponse, AdmissionRouter, DEFAULT_BODY_LIMIT, TlsServer,
};
use tokio::{io::AsyncReadExt, net::TcpStream};

const MAX_IN_FLIGHT: usize = 16;
const MAX_LARGE_IN_FLIGHT: usize = 4;

/// Holds every `/hold` request until released, counting those held.
#[derive(Default)]
struct Latch {
    released: Mutex<bool>,
    opened: Condvar,
    held: AtomicUsize,
}

impl Latch {
    fn hold(&self) {
        self.held.fetch_add(1, Ordering::SeqCst);
        // Hands this worker's other tasks to another thread while it waits.
        tokio::task::block_in_place(|| {
            let mut released = self.released.lock().expect("latch");
            while !*released {
                released = self.opened.wait(released).expect("latch");
            }
        });
    }

    fn release(&self) {
        *self.released.lock().expect("latch") = true;
        self.opened.notify_all();
    }
}

/// Releases the latch when dropped, so a failing assertion ends the test instead of leaving
/// the held requests (and the runtime's shutdown) waiting forever.
struct ReleaseOnDrop(Arc<Latch>);

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        self.0.release();
    }
}

/// A review whose object carries `padding` extra bytes in an annotation.
fn padded_review(uid: &str, padding: usize) -> Bytes {
    let pod = common::fixture("native-sidecar.yaml.injected", "Pod");
    let mut review = common::review(uid, "CREATE", &pod, None, false);
    review["request"]["object"]["metadata"]["annotations"]["padding"] =
        serde_json::Value::String("x".repeat(padding));
    Bytes::from(serde_json::to_vec(&review).expect("json"))
}

/// One request on a fresh connection: the status and the AdmissionReview's status code.
async fn request_once(
    addr: std::net::SocketAddr,
    config: Arc<rustls::ClientConfig>,
    path: &str,
    body: Bytes,
) -> Result<(StatusCode, Option<u64>), String> {
    timed_request(addr, config, path, body)
        .await
        .map(|(status, code, _)| (status, code))
}

/// [`request_once`], with the time from sending the request to the end of the answer (the
/// TLS handshake before it excluded).
async fn timed_request(
    addr: std::net::SocketAddr,
    config: Arc<rustls::ClientConfig>,
    path: &str,
    body: Bytes,
) -> Result<(StatusCode, Option<u64>, Duration), String> {
    let mut connection = connect(addr, config).await.map_err(|e| e.to_string())?;
    connection.sender.ready().await.map_err(|e| e.to_string())?;
    let sent = Instant::now();
    let response = connection
        .sender
        .send_request(
            Request::post(path)
                .header("host", HOST)
                .header("content-type", "application/json")
                .body(Full::new(body))
                .map_err(|e| e.to_string())?,
        )
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    let elapsed = sent.elapsed();
    let value: serde_json::Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
    Ok((
        status,
        value["response"]["status"]["code"].as_u64(),
        elapsed,
    ))
}

fn metric(server: &Server, series: &str) -> u64 {
    metric_value(&server.metrics_text(), series)
}

fn median_and_p99(mut values: Vec<Duration>) -> (Duration, Duration) {
    values.sort();
    if values.is_empty() {
        return (Duration::ZERO, Duration::ZERO);
    }
    let at = |q: f64| values[((values.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.99))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_beyond_capacity_is_shed_at_once_with_503_and_the_server_recovers() {
    let flood: usize = std::env::var("WEBHOOK_FLOOD_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400);
    let pki = Pki::new();
    let latch = Arc::new(Latch::default());
    let _release = ReleaseOnDrop(latch.clone());
    let hold = latch.clone();
    let server = Server::start_with(
        loaded(pki.serving()),
        move |metrics| {
            let (_, handler) = common::recording_handler();
            AdmissionRouter::new(metrics)
                .handler("/mutate-pods", handler)
                .handler("/hold", move |req: &AdmissionRequest| {
                    hold.hold();
                    AdmissionResponse::from(req)
                })
                .into_router()
        },
        |server: TlsServer| {
            server
                .max_in_flight(MAX_IN_FLIGHT)
                .max_large_in_flight(MAX_LARGE_IN_FLIGHT)
                // 16 clients handshaking at once on a loaded 2-core machine can take seconds;
                // a handshake timing out would be a slow machine, not a request not shed.
                .handshake_timeout(Duration::from_secs(120))
        },
    )
    .await;
    let config = client_config(&pki, &[&rustls::version::TLS13], &[]);
    let addr = server.addr;
    let rss_before = rss_kib();

    // 1. Large bodies fill their own, smaller bound.
    let mut held = Vec::new();
    for i in 0..MAX_LARGE_IN_FLIGHT {
        let body = padded_review(&format!("uid-large-{i}"), 1024 * 1024);
        held.push(tokio::spawn(request_once(
            addr,
            config.clone(),
            "/hold",
            body,
        )));
    }
    wait_until("the large requests to be held", || {
        latch.held.load(Ordering::SeqCst) == MAX_LARGE_IN_FLIGHT
    })
    .await;
    let large = padded_review("uid-large-shed", 1024 * 1024);
    let shed_large = request_once(addr, config.clone(), "/mutate-pods", large).await;
    // The answer can race the upload of the unread body; what matters is that it is refused.
    assert!(
        matches!(
            shed_large,
            Ok((StatusCode::SERVICE_UNAVAILABLE, Some(503))) | Err(_)
        ),
        "{shed_large:?}"
    );
    assert_eq!(
        metric(
            &server,
            r#"webhook_admission_shed_total{reason="large_in_flight"}"#
        ),
        1
    );
    // Small reviews still pass while the large bound is full.
    assert_eq!(
        request_once(
            addr,
            config.clone(),
            "/mutate-pods",
            pod_review_body("uid-small")
        )
        .await,
        Ok((StatusCode::OK, None))
    );

    // 2. Small held requests fill the overall bound.
    for i in MAX_LARGE_IN_FLIGHT..MAX_IN_FLIGHT {
        let body = pod_review_body(&format!("uid-held-{i}"));
        held.push(tokio::spawn(request_once(
            addr,
            config.clone(),
            "/hold",
            body,
        )));
    }
    wait_until("every slot to be held", || {
        latch.held.load(Ordering::SeqCst) == MAX_IN_FLIGHT
    })
    .await;
    assert_eq!(
        metric(&server, "webhook_admission_in_flight"),
        MAX_IN_FLIGHT as u64
    );

    // 3. The flood: 16 clients, a new connection per request, all while the slots are held.
    let peak_rss = Arc::new(AtomicU64::new(rss_kib()));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (peak_rss, sampling) = (peak_rss.clone(), sampling.clone());
        std::thread::spawn(move || {
            while sampling.load(Ordering::Relaxed) {
                peak_rss.fetch_max(rss_kib(), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let started = Instant::now();
    let clients = 16;
    let mut tasks = Vec::new();
    for client in 0..clients {
        let config = config.clone();
        let count = flood / clients + usize::from(client < flood % clients);
        tasks.push(tokio::spawn(async move {
            let mut outcomes = Vec::new();
            for n in 0..count {
                let body = pod_review_body(&format!("uid-flood-{client}-{n}"));
                let sent = Instant::now();
                let outcome = timed_request(addr, config.clone(), "/mutate-pods", body).await;
                let with_handshake = sent.elapsed();
                outcomes.push(match outcome {
                    Ok((status, code, answer)) => (Ok((status, code)), answer, with_handshake),
                    Err(err) => (Err(err), Duration::ZERO, with_handshake),
                });
            }
            outcomes
        }));
    }
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.extend(task.await.expect("client"));
    }
    let flood_time = started.elapsed();
    sampling.store(false, Ordering::Relaxed);
    sampler.join().expect("sampler");
    // Still held: the flood was answered without waiting for capacity.
    assert_eq!(latch.held.load(Ordering::SeqCst), MAX_IN_FLIGHT);
    assert!(held.iter().all(|h| !h.is_finished()));
    let wrong: Vec<_> = outcomes
        .iter()
        .filter(|(o, _, _)| *o != Ok((StatusCode::SERVICE_UNAVAILABLE, Some(503))))
        .collect();
    assert!(
        wrong.is_empty(),
        "{} of {flood} flood requests were not shed with 503: {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );
    let shed = metric(
        &server,
        r#"webhook_admission_shed_total{reason="in_flight"}"#,
    );
    assert_eq!(shed, flood as u64);

    // 4. Release: the held requests complete normally.
    latch.release();
    for task in held {
        let outcome = task.await.expect("held request");
        assert_eq!(outcome, Ok((StatusCode::OK, None)));
    }
    wait_until("in-flight back to zero", || {
        metric(&server, "webhook_admission_in_flight") == 0
    })
    .await;

    // 5. Recovery: normal service, nothing more shed.
    for i in 0..20 {
        assert_eq!(
            request_once(
                addr,
                config.clone(),
                "/mutate-pods",
                pod_review_body(&format!("uid-after-{i}"))
            )
            .await,
            Ok((StatusCode::OK, None))
        );
    }
    assert_eq!(
        metric(
            &server,
            r#"webhook_admission_shed_total{reason="in_flight"}"#
        ),
        flood as u64
    );
    let rss_after = rss_kib();

    let (median, p99) = median_and_p99(outcomes.iter().map(|(_, d, _)| *d).collect());
    let (median_hs, p99_hs) = median_and_p99(outcomes.iter().map(|(_, _, d)| *d).collect());
    let bound = TlsServer::new(
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| {
                l.set_nonblocking(true)?;
                tokio::net::TcpListener::from_std(l)
            })
            .expect("listener"),
        axum::Router::new(),
        server.store.server_config().expect("config"),
    )
    .max_in_flight(MAX_IN_FLIGHT)
    .max_large_in_flight(MAX_LARGE_IN_FLIGHT)
    .body_memory_bound();
    eprintln!(
        "overload: bounds in_flight={MAX_IN_FLIGHT} large_in_flight={MAX_LARGE_IN_FLIGHT} \
         (body memory bound {} MiB; body limit {} MiB); flood {flood} requests from {clients} \
         clients, new TLS connection each, in {:.2} s; shed {shed} (503), answered 200 after \
         release {MAX_IN_FLIGHT}+20; 503 answer (request to response) median {:.2} ms p99 {:.2} ms, \
         with the TLS handshake median {:.2} ms p99 {:.2} ms; \
         process RSS before {} MiB, peak during flood {} MiB, after {} MiB; load average {}",
        bound / (1024 * 1024),
        DEFAULT_BODY_LIMIT / (1024 * 1024),
        flood_time.as_secs_f64(),
        median.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        median_hs.as_secs_f64() * 1e3,
        p99_hs.as_secs_f64() * 1e3,
        rss_before / 1024,
        peak_rss.load(Ordering::Relaxed) / 1024,
        rss_after / 1024,
        load_average(),
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_bound_are_closed_at_once_and_counted() {
    let pki = Pki::new();
    let server = Server::start_with(
        loaded(pki.serving()),
        |metrics| {
            let (_, handler) = common::recording_handler();
            AdmissionRouter::new(metrics)
                .handler("/mutate-pods", handler)
                .into_router()
        },
        |server: TlsServer| server.max_connections(3),
    )
    .await;
    let config = client_config(&pki, &[&rustls::version::TLS13], &[]);
    let mut open = Vec::new();
    for i in 0..3 {
        let mut connection = connect(server.addr, config.clone())
            .await
            .expect("handshake");
        let uid = format!("uid-open-{i}");
        assert_eq!(
            send(&mut connection, "/mutate-pods", &uid).await,
            Ok((StatusCode::OK, uid))
        );
        open.push(connection);
    }
    // The fourth is accepted by the kernel and closed by the server without a handshake.
    let mut tcp = TcpStream::connect(server.addr).await.expect("connect");
    let mut buffer = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(20), tcp.read(&mut buffer))
        .await
        .expect("closed well before the 2 s handshake timeout would matter");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert_eq!(
        metric(
            &server,
            r#"webhook_admission_shed_total{reason="connections"}"#
        ),
        1
    );
    // The open connections are unaffected; closing one makes room.
    let uid = "uid-still-open".to_owned();
    assert_eq!(
        send(&mut open[0], "/mutate-pods", &uid).await,
        Ok((StatusCode::OK, uid))
    );
    drop(open.pop());
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut connection = loop {
        match connect(server.addr, config.clone()).await {
            Ok(connection) => break connection,
            // The server notices the closed connection asynchronously.
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(err) => panic!("no room after closing a connection: {err}"),
        }
    };
    let uid = "uid-room".to_owned();
    assert_eq!(
        send(&mut connection, "/mutate-pods", &uid).await,
        Ok((StatusCode::OK, uid))
    );
    server.shutdown().await;
}
