//! Certificate rotation under load: clients send without pause (keep-alive connections and a
//! new connection per request) while the certificate files are swapped N times the way
//! kubelet updates a Secret volume (a new timestamped directory, `..data` renamed over the old
//! link, the old directory removed). Not one request may fail; the requests served around
//! each swap are printed.
//!
//! `WEBHOOK_ROTATIONS` (default 10) sets N.

mod common;

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use axum::Router;
use common::tls::*;
use hyper::StatusCode;
use inplace_upgrade_webhook::{CertificateFiles, ReloadOutcome};
use tokio::sync::oneshot;

#[derive(Default)]
struct Tally {
    served: AtomicUsize,
    failures: Mutex<Vec<String>>,
    /// Requests served on connections opened before the first swap.
    on_first_connections: AtomicUsize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n_symlink_swaps_under_load_lose_no_request() {
    let rotations: usize = std::env::var("WEBHOOK_ROTATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let pki = Pki::new();
    let certificates: Vec<_> = (0..=rotations).map(|_| pki.serving()).collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut version = kubelet_write(dir.path(), "..version_0", &certificates[0]);
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
        files,
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
    let addr = server.addr;
    let running = Arc::new(AtomicBool::new(true));
    let first_swap_done = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let mut workers = Vec::new();
    // Two clients keep one connection alive (reconnecting only if it breaks), two open a new
    // connection, and so a new handshake, for every request.
    for worker in 0..4 {
        let keep_alive = worker < 2;
        let (running, tally, config, first_swap_done) = (
            running.clone(),
            tally.clone(),
            config.clone(),
            first_swap_done.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut connection = None;
            let mut opened_before_swap = false;
            let mut n = 0;
            while running.load(Ordering::Relaxed) {
                if connection.is_none() {
                    match connect(addr, config.clone()).await {
                        Ok(c) => {
                            opened_before_swap = !first_swap_done.load(Ordering::SeqCst);
                            connection = Some(c);
                        }
                        Err(err) => {
                            tally
                                .failures
                                .lock()
                                .expect("tally")
                                .push(format!("connect: {err}"));
                            continue;
                        }
                    }
                }
                let Some(c) = connection.as_mut() else {
                    continue;
                };
                n += 1;
                let uid = format!("uid-{worker}-{n}");
                match send(c, "/mutate-pods", &uid).await {
                    Ok((StatusCode::OK, echoed)) if echoed == uid => {
                        tally.served.fetch_add(1, Ordering::Relaxed);
                        if keep_alive && opened_before_swap {
                            tally.on_first_connections.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    other => {
                        tally
                            .failures
                            .lock()
                            .expect("tally")
                            .push(format!("{uid}: {other:?}"));
                        connection = None;
                        continue;
                    }
                }
                if !keep_alive {
                    connection = None;
                }
            }
        }));
    }

    wait_until("load before the first swap", || {
        tally.served.load(Ordering::Relaxed) >= 20
    })
    .await;
    let started = Instant::now();
    let mut per_swap = Vec::new();
    for (swap, certificate) in certificates.iter().enumerate().skip(1) {
        let at_swap = tally.served.load(Ordering::Relaxed);
        let previous = version;
        version = kubelet_write(
            dir.path(),
            &format!("..version_{swap}"),
            &certificates[swap],
        );
        std::fs::remove_dir_all(previous).expect("kubelet removes the old version");
        first_swap_done.store(true, Ordering::SeqCst);
        // A new handshake shows the new certificate...
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let connection = connect(addr, config.clone()).await.expect("handshake");
            if connection.peer_certificate == der(certificate) {
                break;
            }
            assert!(Instant::now() < deadline, "certificate {swap} never served");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // ...and the load goes on past it before the next swap.
        wait_until("load after the swap", || {
            tally.served.load(Ordering::Relaxed) >= at_swap + 50
        })
        .await;
        per_swap.push(tally.served.load(Ordering::Relaxed) - at_swap);
    }
    let elapsed = started.elapsed();
    running.store(false, Ordering::Relaxed);
    for worker in workers {
        worker.await.expect("worker");
    }
    let failures = tally.failures.lock().expect("tally").clone();
    let served = tally.served.load(Ordering::Relaxed);
    assert!(
        failures.is_empty(),
        "{} requests failed during {rotations} rotations: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    let on_first = tally.on_first_connections.load(Ordering::Relaxed);
    assert!(
        on_first > 0,
        "no keep-alive connection outlived a swap: the test did not exercise that case"
    );
    let text = server.metrics_text();
    assert_eq!(
        metric_value(
            &text,
            r#"webhook_certificate_reloads_total{result="success"}"#
        ),
        rotations as u64 + 1,
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
    eprintln!(
        "rotation: {rotations} swaps in {:.1} s, {served} requests served, 0 failed; requests \
         served from each swap to the next: {per_swap:?}; {on_first} served on keep-alive \
         connections opened before the first swap; load average {}",
        elapsed.as_secs_f64(),
        load_average()
    );
    let _ = stop_polling.send(());
    poller.await.expect("poller stops");
    server.shutdown().await;
}
