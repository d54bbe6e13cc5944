//! Controller reaction and cost: a gated 20-replica Deployment (Istio's `hello` fixture, a
//! Service in front) upgraded in place by the controller running as its own process.
//!
//! Prints, from kube-apiserver's audit log (see `support`) and a pod watch:
//! - reaction: from the watch event in which pod k's restarted container is Ready on the new
//!   image to the controller's first write to pod k+1 (its drain), and to pod k+1's image
//!   patch (after the drain's endpoint wait and grace period);
//! - total rollout time against the floor N × (restart + readiness + drain grace);
//! - the controller's API requests per upgraded pod by verb and resource, and its LIST calls
//!   after the initial sync;
//! - the controller's RSS and CPU.
//!
//! - per pod, when it was drained, patched and seen Ready, and where the rollout's time went
//!   against the floor.
//!
//! Knobs (environment): BENCH_REPLICAS (20), BENCH_RESTART_MS (1000), BENCH_GRACE_S (1),
//! BENCH_COMPARE (other controllers measured in the same control plane, each rollout in a
//! namespace and with a controller of its own, right before this build: `label=TOKENS;…`,
//! each token a binary path — e.g. main's build — or a `KEY=VALUE` for its environment),
//! BENCH_ROUNDS (1: how many times to alternate them).
//! Run: `cargo bench -p inplace-upgrade --bench rollout`.

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::watcher;
use serde_json::json;
use support::*;

const TARGET: &str = "istio-proxy=proxyv2:1.24.2";
const NEW_TAG: &str = ":1.24.2";

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("rollout bench: {e}");
        std::process::exit(1);
    }
}

async fn run() -> AnyResult<()> {
    let replicas = knob("BENCH_REPLICAS", 20) as i32;
    let restart = Duration::from_millis(knob("BENCH_RESTART_MS", 1000));
    let grace = knob("BENCH_GRACE_S", 1);
    let rounds = knob("BENCH_ROUNDS", 1).max(1);
    let compare = variants(&std::env::var("BENCH_COMPARE").unwrap_or_default())?;
    let mut options = testenv::Options::default();
    options.kubelet.delays.restart = restart;
    let delays = options.kubelet.delays;
    stamp("rollout bench start");
    let bench = Bench::start(options, true).await?;
    common::install(&bench.client).await?;
    let setup = Setup {
        replicas,
        restart,
        readiness: delays.readiness,
        grace,
    };
    let mut samples = Vec::new();
    for round in 1..=rounds {
        // The variants first, then the build under test, alternating round by round.
        for variant in compare.iter().map(Some).chain([None]) {
            let label = variant.map_or("this build".to_string(), |v| v.label.clone());
            println!();
            println!("## Controller reaction and cost (in-place rollout): {label}, round {round}");
            samples.push((label, rollout(&bench, &setup, variant).await?));
        }
    }
    if samples.len() > 1 {
        println!();
        println!(
            "## Summary (floor N x (restart + readiness + grace); target <= 1.05 x floor + 1 s)"
        );
        println!(
            "{:<12} {:>9} {:>9} {:>7} {:>9} {:>11} {:>16}  load before / after",
            "controller",
            "total s",
            "floor s",
            "ratio",
            "target s",
            "writes/pod",
            "Ready->patch ms"
        );
        for (label, s) in &samples {
            println!(
                "{label:<12} {:>9.2} {:>9.2} {:>7.3} {:>9.2} {:>11.2} {:>16.0}  {} / {}",
                s.total,
                s.floor,
                s.total / s.floor,
                1.05 * s.floor + 1.0,
                s.writes_per_pod,
                s.ready_to_patch_median,
                s.load_before,
                s.load_after
            );
        }
    }
    stamp("rollout bench end");
    Ok(())
}

struct Setup {
    replicas: i32,
    restart: Duration,
    readiness: Duration,
    grace: u64,
}

/// What the summary compares across controllers and rounds.
struct Sample {
    total: f64,
    floor: f64,
    /// Without Events and Lease renewals.
    writes_per_pod: f64,
    ready_to_patch_median: f64,
    load_before: String,
    load_after: String,
}

/// One rollout in a namespace of its own, with a controller of its own (the build under test,
/// or `variant`), stopped (its Lease released) at the end.
async fn rollout(bench: &Bench, setup: &Setup, variant: Option<&Variant>) -> AnyResult<Sample> {
    let Setup {
        replicas,
        restart,
        readiness,
        grace,
    } = *setup;
    let client = bench.client.clone();
    let tag = variant.map_or("this", |v| v.label.as_str());
    let mut controller = bench
        .spawn_controller(&format!("controller-{tag}.log"), variant)
        .await?;
    let sync = controller.await_synced(Duration::from_secs(600)).await?;
    let after_sync = bench.audit.mark();

    let ns = bench.env.namespace("rollout").await?;
    common::create_policy(
        &client,
        &ns,
        json!({"drain": {"gracePeriodSeconds": grace, "timeoutSeconds": 60}, "maxUnavailable": 1}),
    )
    .await?;
    common::create_service(&client, &ns, "hello").await?;
    let deployments = common::deploy_hello(&client, &ns, replicas, true).await?;

    // When each pod's restarted istio-proxy was first seen Ready on the new image.
    let ready_at: Arc<Mutex<BTreeMap<String, Timestamp>>> = Arc::default();
    let seen = ready_at.clone();
    let pods = Api::<Pod>::namespaced(client.clone(), &ns);
    let watch = tokio::spawn(async move {
        let mut stream = watcher(pods, watcher::Config::default()).boxed();
        while let Some(ev) = stream.next().await {
            let Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) = ev else {
                continue;
            };
            let at = Timestamp::now();
            if common::status_of(&p, "istio-proxy")
                .is_some_and(|c| c.ready && c.image.ends_with(NEW_TAG))
            {
                seen.lock().unwrap().entry(p.name_any()).or_insert(at);
            }
        }
    });

    // Quiet before the rollout: what the controller does when nothing changes.
    let rss_before = controller.rss_mib();
    let cpu_before = controller.cpu_seconds();
    let mark = bench.audit.mark();
    let load_before = load_average();
    stamp("rollout start");
    let started = Instant::now();
    let t0 = Timestamp::now();
    common::annotate(
        &deployments,
        "hello",
        inplace_upgrade::TARGETS_ANNOTATION,
        TARGET,
    )
    .await?;
    common::await_phase(&deployments, "hello", TARGET, "Completed").await?;
    let total = started.elapsed();
    let t_end = Timestamp::now();
    let load_after = load_average();
    stamp("rollout end");
    let cpu = controller.cpu_seconds() - cpu_before;
    let rss_after = controller.rss_mib();
    // Let trailing requests (the last pod's admit, status) reach the log.
    tokio::time::sleep(Duration::from_secs(2)).await;
    watch.abort();
    let events = bench.audit.since(mark)?;
    // The controller's requests about this rollout: its namespace, its policy, the Lease.
    let ours: Vec<&AuditEvent> = events
        .iter()
        .filter(|e| e.actor() == Actor::Controller)
        .filter(|e| {
            e.namespace() == ns
                || e.resource() == "leases"
                || (e.resource() == "inplaceupgradepolicies" && e.name() == ns)
        })
        .collect();

    // Per pod: the controller's writes to it, in order.
    let mut writes: BTreeMap<String, Vec<&AuditEvent>> = BTreeMap::new();
    for e in ours
        .iter()
        .filter(|e| e.is_write() && e.resource() == "pods" && e.namespace() == ns)
    {
        writes.entry(e.name().to_string()).or_default().push(e);
    }
    let mut order: Vec<(&String, Timestamp)> = writes
        .iter()
        .filter_map(|(n, w)| w.first().map(|e| (n, e.request_received_timestamp)))
        .collect();
    order.sort_by_key(|(_, t)| *t);
    let ready_at = ready_at.lock().unwrap().clone();
    let image_patch = |name: &str| {
        writes.get(name).and_then(|w| {
            w.iter()
                .find(|e| e.verb == "patch" && e.subresource().is_empty())
                .map(|e| e.request_received_timestamp)
        })
    };
    let first_after = |name: &str, t: Timestamp| {
        writes.get(name).and_then(|w| {
            w.iter()
                .find(|e| e.request_received_timestamp >= t)
                .map(|e| e.request_received_timestamp)
        })
    };
    let (mut to_drain, mut to_patch, mut to_admit) = (Vec::new(), Vec::new(), Vec::new());
    for pair in order.windows(2) {
        let (this, next) = (pair[0].0, pair[1]);
        let Some(ready) = ready_at.get(this.as_str()) else {
            continue;
        };
        to_drain.push(ms_between(*ready, next.1));
        if let Some(p) = image_patch(next.0) {
            to_patch.push(ms_between(*ready, p));
        }
        if let Some(a) = first_after(this, *ready) {
            to_admit.push(ms_between(*ready, a));
        }
    }
    // Where the time between a pod's admit and the next pod's drain goes: the kubelet's
    // status write that makes the pod Ready, then the EndpointSlice controller's write.
    let after = |actor: Actor, resource: &str, name: Option<&str>, t: Timestamp| {
        events
            .iter()
            .filter(|e| {
                e.actor() == actor
                    && e.is_write()
                    && e.resource() == resource
                    && e.namespace() == ns
                    && name.is_none_or(|n| e.name() == n)
                    && e.request_received_timestamp > t
            })
            .map(|e| e.request_received_timestamp)
            .next()
    };
    let (mut admit_to_kubelet, mut kubelet_to_slice, mut slice_to_drain) =
        (Vec::new(), Vec::new(), Vec::new());
    for pair in order.windows(2) {
        let (this, next) = (pair[0].0, pair[1].1);
        let Some(admit) = ready_at
            .get(this.as_str())
            .and_then(|r| first_after(this, *r))
        else {
            continue;
        };
        let Some(kubelet) = after(Actor::Kubelet, "pods", Some(this), admit) else {
            continue;
        };
        admit_to_kubelet.push(ms_between(admit, kubelet));
        if let Some(slice) = after(Actor::ControllerManager, "endpointslices", None, kubelet) {
            kubelet_to_slice.push(ms_between(kubelet, slice));
            slice_to_drain.push(ms_between(slice, next));
        }
    }
    let upgraded = ready_at.len().max(1);
    let floor = (restart + readiness + Duration::from_secs(grace)) * replicas as u32;
    let floor_brief = (restart + Duration::from_secs(grace)) * replicas as u32;

    println!(
        "replicas {replicas}, restart delay {} ms, readiness delay {} ms (istio-proxy has a probe), drain grace {grace} s, maxUnavailable 1; controller sync {:.0} ms",
        restart.as_millis(),
        readiness.as_millis(),
        ms(sync)
    );
    println!(
        "pods upgraded: {} (container Ready on {NEW_TAG} seen); first pod drained {:.0} ms after the annotation",
        ready_at.len(),
        order.first().map_or(f64::NAN, |(_, t)| ms_between(t0, *t))
    );
    let line = |what: &str, v: &[f64]| {
        println!(
            "{what:<58} n={:>2}  median {:>8.1} ms  p99 {:>8.1} ms  min {:>7.1}  max {:>7.1}",
            v.len(),
            percentile(v, 50.0),
            percentile(v, 99.0),
            percentile(v, 0.0),
            percentile(v, 100.0)
        )
    };
    line(
        "container Ready (watch) -> next pod's drain write",
        &to_drain,
    );
    line(
        "container Ready (watch) -> this pod's admit write",
        &to_admit,
    );
    line(
        "container Ready (watch) -> next pod's image patch",
        &to_patch,
    );
    line(
        "  admit write -> kubelet's pods/status write (pod Ready)",
        &admit_to_kubelet,
    );
    line(
        "  kubelet's write -> EndpointSlice controller's write",
        &kubelet_to_slice,
    );
    line(
        "  EndpointSlice write -> next pod's drain write",
        &slice_to_drain,
    );
    print_timeline(
        &order,
        &image_patch,
        &ready_at,
        (t0, t_end),
        Duration::from_secs(grace),
        restart + readiness,
    );
    println!(
        "total rollout {:.2} s; floor N x (restart + readiness + grace) {:.2} s -> ratio {:.3} (target <= 1.05 x floor + 1 s = {:.2} s); N x (restart + grace) {:.2} s -> ratio {:.2}",
        total.as_secs_f64(),
        floor.as_secs_f64(),
        total.as_secs_f64() / floor.as_secs_f64(),
        1.05 * floor.as_secs_f64() + 1.0,
        floor_brief.as_secs_f64(),
        total.as_secs_f64() / floor_brief.as_secs_f64()
    );
    println!("controller requests during the rollout, per upgraded pod ({upgraded}):");
    for (what, n) in by_what(ours.iter().copied()) {
        println!(
            "  {what:<40} {n:>5}  {:>6.2}/pod",
            n as f64 / upgraded as f64
        );
    }
    let writes_all = ours.iter().filter(|e| e.is_write()).count();
    let writes_no_events = ours
        .iter()
        .filter(|e| e.is_write() && e.resource() != "events" && e.resource() != "leases")
        .count();
    let writes_per_pod = writes_no_events as f64 / upgraded as f64;
    println!(
        "controller writes per upgraded pod: {:.2} (without Events and Lease renewals: {writes_per_pod:.2}; DESIGN target <= 4)",
        writes_all as f64 / upgraded as f64,
    );
    let all_after_sync = bench.audit.since(after_sync)?;
    let lists: Vec<String> = all_after_sync
        .iter()
        .filter(|e| e.actor() == Actor::Controller && e.verb == "list")
        .map(AuditEvent::what)
        .collect();
    println!(
        "controller LIST calls after the initial sync: {} {:?} (target 0)",
        lists.len(),
        lists
    );
    let others = by_actor_writes(events.iter().filter(|e| e.namespace() == ns));
    println!("all writes in the rollout's namespace by actor: {others:?}");
    println!(
        "controller RSS {rss_before:.1} MiB before, {rss_after:.1} MiB after (peak {:.1}); CPU {cpu:.2} s over the rollout ({:.1} ms per pod)",
        controller.peak_rss_mib(),
        cpu * 1000.0 / upgraded as f64
    );
    controller.stop();
    // The next rollout starts in a cluster without this one's pods.
    let namespaces = Api::<Namespace>::all(client.clone());
    namespaces.delete(&ns, &Default::default()).await?;
    testenv::wait_deleted(&namespaces, &ns, "the rollout's namespace").await?;
    Ok(Sample {
        total: total.as_secs_f64(),
        floor: floor.as_secs_f64(),
        writes_per_pod,
        ready_to_patch_median: percentile(&to_patch, 50.0),
        load_before,
        load_after,
    })
}

/// Per pod, in the order they were upgraded: when the controller drained it, patched its
/// image, and when its restarted container was seen Ready; then where the whole rollout's time
/// went against the floor (the segments add up to the total).
fn print_timeline(
    order: &[(&String, Timestamp)],
    image_patch: &dyn Fn(&str) -> Option<Timestamp>,
    ready_at: &BTreeMap<String, Timestamp>,
    (t0, t_end): (Timestamp, Timestamp),
    grace: Duration,
    restart: Duration,
) {
    println!(
        "per pod (ms from the annotation; drain -> patch, patch -> Ready, Ready -> next drain):"
    );
    let (mut waits, mut restarts, mut handoffs) = (Vec::new(), Vec::new(), Vec::new());
    for (i, (name, drain)) in order.iter().enumerate() {
        let patch = image_patch(name.as_str());
        let ready = ready_at.get(name.as_str()).copied();
        let next = order.get(i + 1).map(|(_, t)| *t);
        let span = |a: Option<Timestamp>, b: Option<Timestamp>| match (a, b) {
            (Some(a), Some(b)) => ms_between(a, b),
            _ => f64::NAN,
        };
        let (wait, up, handoff) = (
            span(Some(*drain), patch),
            span(patch, ready),
            span(ready, next),
        );
        waits.push(wait);
        restarts.push(up);
        if next.is_some() {
            handoffs.push(handoff);
        }
        println!(
            "  {:<28} drain {:>8.0}  patch {:>8.0} (+{wait:>6.0})  Ready {:>8.0} (+{up:>6.0})  next drain +{handoff:>5.0}",
            name,
            ms_between(t0, *drain),
            span(Some(t0), patch),
            span(Some(t0), ready),
        );
    }
    let sum = |v: &[f64]| v.iter().sum::<f64>();
    let n = order.len() as f64;
    let start = order.first().map_or(f64::NAN, |(_, t)| ms_between(t0, *t));
    let last_ready = order
        .last()
        .and_then(|(name, _)| ready_at.get(name.as_str()));
    let end = last_ready.map_or(f64::NAN, |r| ms_between(*r, t_end));
    println!(
        "where the time went (ms): annotation -> first drain {start:.0}; drain -> patch {:.0} (grace {:.0}, over it {:.0}); patch -> Ready {:.0} (restart + readiness {:.0}, over it {:.0}); Ready -> next drain {:.0}; last Ready -> Completed seen {end:.0}",
        sum(&waits),
        n * ms(grace),
        sum(&waits) - n * ms(grace),
        sum(&restarts),
        n * ms(restart),
        sum(&restarts) - n * ms(restart),
        sum(&handoffs),
    );
}

fn by_actor_writes<'a>(events: impl Iterator<Item = &'a AuditEvent>) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for e in events.filter(|e| e.is_write()) {
        *m.entry(format!("{:?}", e.actor())).or_insert(0) += 1;
    }
    m
}
