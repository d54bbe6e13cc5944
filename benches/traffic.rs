//! Zero lost requests, measured with real traffic on a real node (issue 16).
//!
//! One real node (kubelet + containerd on this host, the test images imported) with
//! kube-proxy (iptables mode) on the host, the controller as its own process. The app: a
//! Deployment of `BENCH_REPLICAS` (3) pods, each the app (`testapp:1.0` on 8080, readiness
//! `/ready`) behind a forwarding sidecar (a native sidecar running `testapp forward`: inbound
//! 15006 → the app, outbound 15001 → another Service, as Istio's redirect sends an app's
//! calls through its proxy), and a Service whose port 80 goes to the sidecar's 15006. The app
//! calls the upstream Service through its sidecar every 20 ms and logs when those calls start
//! failing and succeed again.
//!
//! A load generator in this program sends `GET /` to the Service's ClusterIP from the host at
//! a steady `BENCH_RPS` (100/s), one new connection per request (1 s to connect, 2 s in all),
//! from 1 s before each method starts until 2 s after it is done. Methods, in turn, each on a
//! fresh copy of the app in its own namespace:
//! - **in place**: the controller moves the sidecar to `testapp:2.0` (gated pods, the
//!   default policy: drain waits for the EndpointSlices and at least 5 s, one pod at a time);
//! - **in place, no grace**: the same with `drain.gracePeriodSeconds: 0` (the patch follows as
//!   soon as the EndpointSlices say the pod is not ready): what kube-proxy's lag costs;
//! - **`kubectl rollout restart`** with maxSurge 25%, maxUnavailable 0;
//! - **the hand loop**: per old pod, scale +1, wait for all Ready, delete the old pod,
//!   scale −1, wait;
//! - **`kubectl delete pods --all`**, then wait until all replicas are Ready again.
//!
//! Per method: requests sent, failed by kind (connection refused, reset, closed without an
//! answer, 5xx, timeout), p50/p99 latency of the answered ones, wall time (trigger to done),
//! pods created, pod IPs changed, app containers restarted (a new pod's app counts: it is a
//! fresh process of the app). For in place, the outbound window: from the app's first failed
//! to its first successful call through the restarting sidecar, per pod.
//!
//! Root only (real nodes); one environment per host may run kube-proxy: when another holds
//! it, this waits and retries (up to `BENCH_KUBE_PROXY_WAIT_S`, 900). No packet leaves the
//! machine: the load goes to a Service IP that kube-proxy maps to pods on the local bridge
//! (testenv routes the Service range into a port-less bridge first).
//!
//! Run: `sudo cargo bench -p inplace-upgrade --bench traffic`.

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Event, Pod, Service};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, LogParams, Patch, PatchParams, PostParams};
use serde_json::json;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const APP: &str = "registry.inplace.test/testapp:1.0";
const SIDECAR_OLD: &str = "registry.inplace.test/testapp:1.0";
const SIDECAR_NEW: &str = "registry.inplace.test/testapp:2.0";
const NAME: &str = "web";

#[tokio::main]
async fn main() {
    match testenv::real_nodes_wanted() {
        Ok(true) => {}
        Ok(false) => {
            eprintln!("traffic bench: needs real nodes (root); nothing measured");
            return;
        }
        Err(e) => {
            eprintln!("traffic bench: {e}");
            std::process::exit(1);
        }
    }
    if let Err(e) = run().await {
        eprintln!("traffic bench: {e}");
        std::process::exit(1);
    }
}

/// What one request ended as.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    Ok,
    Refused,
    Reset,
    /// The connection closed before a status line (the sidecar could not reach the app).
    Closed,
    Status5xx,
    Timeout,
    Other,
}

#[derive(Default)]
struct Load {
    /// (sent at, since the stream's start; outcome; latency)
    results: Vec<(Duration, Outcome, Duration)>,
}

impl Load {
    fn count(&self, o: Outcome) -> usize {
        self.results.iter().filter(|r| r.1 == o).count()
    }
}

struct Measured {
    name: String,
    load: Load,
    /// From the stream's start to the trigger.
    lead: Duration,
    wall: Duration,
    created: usize,
    ips_changed: usize,
    app_restarts: usize,
    /// Per pod: the outages of the app's outbound calls (in place only).
    outbound: Vec<(String, Vec<Window>)>,
    /// kube-proxy's network programming latency over the method (EndpointSlice change to
    /// iptables rules): (changes, mean s, the histogram bucket holding the slowest).
    programming: Option<(f64, f64, String)>,
    /// Pulled Events of the sidecar: (image already present, pulled).
    sidecar_pulls: (usize, usize),
}

async fn run() -> AnyResult<()> {
    let replicas = knob("BENCH_REPLICAS", 3) as i32;
    let rps = knob("BENCH_RPS", 100).max(1);
    let mut options = testenv::Options {
        real_nodes: 1,
        ..testenv::Options::default()
    };
    options.kubelet.nodes = 0;
    options.real.kube_proxy = true;
    // The test image set built for this checkout's testapp, in a directory of this run: the
    // shared default directory holds whichever worktree's testapp built it last.
    let images_dir = tempfile::Builder::new()
        .prefix("inplace-traffic-images-")
        .tempdir()?;
    let images = testenv::images::build(images_dir.path())?;
    options.real.images = vec![images.bundle.clone()];
    stamp("traffic bench start");
    let bench = start_with_kube_proxy(options).await?;
    let client = bench.client.clone();
    common::install(&client).await?;
    let (_controller, _) = bench.start_controller("controller.log").await?;

    // The upstream the apps call through their sidecars: a plain app behind a Service.
    let up_ns = bench.env.namespace("upstream").await?;
    deploy(&client, &up_ns, "upstream", 1, None, false).await?;
    let upstream_ip = cluster_ip(&client, &up_ns, "upstream").await?;

    let mut results = Vec::new();
    for method in [
        Method::InPlace { grace: None },
        Method::InPlace { grace: Some(0) },
        Method::RolloutRestart,
        Method::HandLoop,
        Method::DeleteAll,
    ] {
        let r = measure_method(&bench, method, replicas, rps, &upstream_ip).await?;
        print_one(&r);
        results.push(r);
    }

    println!();
    println!(
        "## Traffic through a Service during a sidecar upgrade ({replicas} replicas, 1 real node, kube-proxy iptables, {rps} req/s from the host)"
    );
    println!(
        "| method | sent | failed | refused | reset | closed | 5xx | timeout/other | p50 ms | p99 ms | wall s | pods created | IPs changed | app restarts | kube-proxy lag: changes, mean ms, slowest ≤ s |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in &results {
        let ok: Vec<f64> = r
            .load
            .results
            .iter()
            .filter(|x| x.1 == Outcome::Ok)
            .map(|x| ms(x.2))
            .collect();
        let failed = r.load.results.len() - ok.len();
        let lag = r.programming.as_ref().map_or_else(
            || "-".to_owned(),
            |(n, mean, slowest)| format!("{n}, {:.0}, {slowest}", mean * 1000.0),
        );
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {:.1} | {:.1} | {:.1} | {} | {} | {} | {lag} |",
            r.name,
            r.load.results.len(),
            failed,
            r.load.count(Outcome::Refused),
            r.load.count(Outcome::Reset),
            r.load.count(Outcome::Closed),
            r.load.count(Outcome::Status5xx),
            r.load.count(Outcome::Timeout) + r.load.count(Outcome::Other),
            percentile(&ok, 50.0),
            percentile(&ok, 99.0),
            r.wall.as_secs_f64(),
            r.created,
            r.ips_changed,
            r.app_restarts,
        );
    }
    println!();
    println!(
        "## The app's outbound calls through its restarting sidecar (first failed to first successful call, every 20 ms)"
    );
    println!(
        "| method | pods | windows ms | median ms | max ms | failed calls | sidecar image already on the node |"
    );
    println!("|---|---|---|---|---|---|---|");
    for r in results.iter().filter(|r| !r.outbound.is_empty()) {
        let windows: Vec<f64> = r
            .outbound
            .iter()
            .flat_map(|(_, w)| w.iter().map(|w| w.ms as f64))
            .collect();
        let failed: u64 = r
            .outbound
            .iter()
            .flat_map(|(_, w)| w.iter().map(|w| w.failed))
            .sum();
        println!(
            "| {} | {} | {:?} | {:.0} | {:.0} | {} | {} of {} pulls |",
            r.name,
            r.outbound.len(),
            windows,
            percentile(&windows, 50.0),
            percentile(&windows, 100.0),
            failed,
            r.sidecar_pulls.0,
            r.sidecar_pulls.1,
        );
    }
    stamp("traffic bench end");
    Ok(())
}

/// [`Bench::start`], waiting while another environment on this host runs kube-proxy.
async fn start_with_kube_proxy(options: testenv::Options) -> AnyResult<Bench> {
    let limit = Duration::from_secs(knob("BENCH_KUBE_PROXY_WAIT_S", 900));
    let started = Instant::now();
    loop {
        match Bench::start(options.clone(), false).await {
            Ok(b) => return Ok(b),
            Err(e) if e.to_string().contains("kube-proxy already runs") => {
                if started.elapsed() > limit {
                    return Err(format!("gave up after {limit:?}: {e}").into());
                }
                eprintln!("{e}; retrying in 20 s");
                tokio::time::sleep(Duration::from_secs(20)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Method {
    /// `grace`: the policy's drain grace (None: the default).
    InPlace {
        grace: Option<i64>,
    },
    RolloutRestart,
    HandLoop,
    DeleteAll,
}

impl Method {
    fn name(self) -> String {
        match self {
            Method::InPlace { grace: None } => {
                "in place (sidecar only; default drain: endpoints + 5 s grace)".into()
            }
            Method::InPlace { grace: Some(g) } => {
                format!("in place, drain grace {g} s (endpoints only)")
            }
            Method::RolloutRestart => {
                "kubectl rollout restart (maxSurge 25%, maxUnavailable 0)".into()
            }
            Method::HandLoop => "hand loop (scale +1, wait, delete old, scale -1)".into(),
            Method::DeleteAll => "kubectl delete pods --all".into(),
        }
    }
}

async fn measure_method(
    bench: &Bench,
    method: Method,
    replicas: i32,
    rps: u64,
    upstream: &str,
) -> AnyResult<Measured> {
    let client = bench.client.clone();
    let in_place = matches!(method, Method::InPlace { .. });
    let ns = bench.env.namespace("traffic").await?;
    if let Method::InPlace { grace } = method {
        let drain = match grace {
            // The product's defaults, not the test suites' fast ones.
            None => {
                json!({"gracePeriodSeconds": 5, "timeoutSeconds": 60, "waitForEndpoints": true})
            }
            Some(g) => {
                json!({"gracePeriodSeconds": g, "timeoutSeconds": 60, "waitForEndpoints": true})
            }
        };
        common::create_policy(&client, &ns, json!({"drain": drain})).await?;
    }
    let deployments = deploy(&client, &ns, NAME, replicas, Some(upstream), in_place).await?;
    let ip = cluster_ip(&client, &ns, NAME).await?;
    let target: SocketAddr = format!("{ip}:80").parse()?;
    let pods = Api::<Pod>::namespaced(client.clone(), &ns);
    let before = pods.list(&ListParams::default()).await?.items;
    // The Service answers before the clock starts (kube-proxy has the endpoints).
    await_answers(target).await?;

    let node_ip = bench
        .env
        .real_node_ip(&bench.env.real_nodes()[0])
        .ok_or("no real node IP")?
        .to_owned();
    let programming_before = programming_histogram(&node_ip).await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(generate(target, rps, stop.clone()));
    let lead = Duration::from_secs(1);
    tokio::time::sleep(lead).await;
    stamp(&format!("{}: start", method.name()));
    let started = Instant::now();
    let kubectl = |args: &[&str]| -> AnyResult<()> {
        let out = bench.env.kubectl().args(args).args(["-n", &ns]).output()?;
        if !out.status.success() {
            return Err(format!(
                "kubectl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            )
            .into());
        }
        Ok(())
    };
    let mut outbound_since = None;
    match method {
        Method::InPlace { .. } => {
            let target = format!("proxy={SIDECAR_NEW}");
            outbound_since = Some(unix_ms());
            common::annotate(
                &deployments,
                NAME,
                inplace_upgrade::TARGETS_ANNOTATION,
                &target,
            )
            .await?;
            common::await_phase(&deployments, NAME, &target, "Completed").await?;
            // Every replica Ready again (the phase follows the last pod's undrain).
            all_ready(&deployments, replicas).await?;
        }
        Method::RolloutRestart => {
            let generation = deployments
                .get(NAME)
                .await?
                .metadata
                .generation
                .unwrap_or(0);
            kubectl(&["rollout", "restart", &format!("deployment/{NAME}")])?;
            testenv::wait_for(
                &deployments,
                NAME,
                "rollout restart done",
                |d: &Deployment| {
                    let s = d.status.clone().unwrap_or_default();
                    d.metadata.generation > Some(generation)
                        && s.observed_generation >= d.metadata.generation
                        && s.updated_replicas == Some(replicas)
                        && s.ready_replicas == Some(replicas)
                        && s.replicas == Some(replicas)
                },
            )
            .await?;
        }
        Method::HandLoop => {
            let old: Vec<String> = before.iter().map(|p| p.name_any()).collect();
            for name in old {
                scale(&deployments, replicas + 1).await?;
                all_ready(&deployments, replicas + 1).await?;
                pods.delete(&name, &DeleteParams::default()).await?;
                scale(&deployments, replicas).await?;
                testenv::wait_deleted(&pods, &name, "the old pod gone").await?;
                all_ready(&deployments, replicas).await?;
            }
        }
        Method::DeleteAll => {
            kubectl(&["delete", "pods", "--all"])?;
            all_ready(&deployments, replicas).await?;
        }
    }
    let wall = started.elapsed();
    stamp(&format!(
        "{}: done in {:.1} s",
        method.name(),
        wall.as_secs_f64()
    ));
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let load = load.await?;
    let programming = match (programming_before, programming_histogram(&node_ip).await) {
        (Ok(b), Ok(a)) => histogram_delta(&b, &a),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("kube-proxy metrics: {e}");
            None
        }
    };

    let after: Vec<Pod> = pods
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect();
    let uids = |ps: &[Pod]| -> BTreeSet<String> { ps.iter().filter_map(|p| p.uid()).collect() };
    let ips = |ps: &[Pod]| -> BTreeSet<String> {
        ps.iter()
            .filter_map(|p| p.status.as_ref()?.pod_ip.clone())
            .collect()
    };
    let before_uids = uids(&before);
    // Pods created during the method, the hand loop's surge pods included whether they are
    // gone or not: every pod kube-scheduler placed (its Scheduled Event) that was not there
    // before.
    let events = Api::<Event>::namespaced(client.clone(), &ns)
        .list(&ListParams::default())
        .await?
        .items;
    let scheduled: BTreeSet<String> = events
        .iter()
        .filter(|e| e.reason.as_deref() == Some("Scheduled"))
        .filter_map(|e| e.involved_object.uid.clone())
        .collect();
    let created = scheduled.difference(&before_uids).count();
    let restarts_in_kept: i32 = after
        .iter()
        .filter(|p| before_uids.contains(&p.uid().unwrap_or_default()))
        .map(|p| {
            let now = app_restarts(p);
            let was = before
                .iter()
                .find(|b| b.uid() == p.uid())
                .map_or(0, app_restarts);
            now - was
        })
        .sum();
    let sidecar_pulls = events
        .iter()
        .filter(|e| {
            e.reason.as_deref() == Some("Pulled")
                && e.involved_object.field_path.as_deref() == Some("spec.initContainers{proxy}")
                && e.message
                    .as_deref()
                    .is_some_and(|m| m.contains(SIDECAR_NEW))
        })
        .fold((0, 0), |(present, all), e| {
            let already = e
                .message
                .as_deref()
                .is_some_and(|m| m.contains("already present"));
            (present + usize::from(already), all + 1)
        });
    let mut outbound = Vec::new();
    if let Some(since) = outbound_since {
        for p in &after {
            let log = pods
                .logs(
                    &p.name_any(),
                    &LogParams {
                        container: Some("app".into()),
                        ..LogParams::default()
                    },
                )
                .await?;
            outbound.push((p.name_any(), outbound_windows(&log, since)));
        }
    }
    let measured = Measured {
        name: method.name(),
        load,
        lead,
        wall,
        created,
        ips_changed: ips(&before).difference(&ips(&after)).count(),
        app_restarts: created + restarts_in_kept.max(0) as usize,
        outbound,
        programming,
        sidecar_pulls,
    };
    // Free the node for the next method.
    kubectl(&[
        "delete",
        "deployment",
        NAME,
        "--cascade=foreground",
        "--wait=true",
    ])?;
    Ok(measured)
}

fn print_one(r: &Measured) {
    let failures: Vec<String> = r
        .load
        .results
        .iter()
        .filter(|x| x.1 != Outcome::Ok)
        .map(|x| format!("{:?}@{:.2}s", x.1, x.0.as_secs_f64() - r.lead.as_secs_f64()))
        .collect();
    println!(
        "# {}: {} sent, {} failed{}",
        r.name,
        r.load.results.len(),
        failures.len(),
        if failures.is_empty() {
            String::new()
        } else {
            format!(
                " (time from the trigger; first 20: {})",
                failures
                    .iter()
                    .take(20)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(" ")
            )
        }
    );
    for (pod, windows) in &r.outbound {
        let outages: Vec<String> = windows
            .iter()
            .map(|w| {
                format!(
                    "from {:.2} s after the trigger ({}): {} ms, {} calls failed",
                    w.down_at as f64 / 1000.0,
                    w.error,
                    w.ms,
                    w.failed
                )
            })
            .collect();
        println!("#   {pod}: outbound outages: {}", outages.join("; "));
    }
    if let Some((changes, mean, slowest)) = &r.programming {
        println!(
            "#   kube-proxy network programming: {changes} changes, mean {:.0} ms, slowest in bucket le={slowest} s",
            mean * 1000.0
        );
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// One outage of the app's outbound calls, from its log.
struct Window {
    /// The first failed call, ms after the trigger.
    down_at: i64,
    /// Why it failed (`refused`, `status 503`, …).
    error: String,
    /// From the first failed to the first successful call.
    ms: u64,
    failed: u64,
}

/// Every outage in an app's log (testapp `--outbound`: an `event=outbound-down at_ms=… error=…`
/// line, then `event=outbound-up at_ms=… window_ms=N failed=K`) that began after `since`
/// (Unix ms): one that began earlier (the pod's own start) is not the method's.
fn outbound_windows(log: &str, since: u64) -> Vec<Window> {
    let field = |l: &str, k: &str| -> Option<String> {
        let rest = &l[l.find(k)? + k.len()..];
        Some(match rest.strip_prefix('"') {
            Some(quoted) => quoted.split('"').next()?.to_string(),
            None => rest.split_whitespace().next()?.to_string(),
        })
    };
    let number = |l: &str, k: &str| field(l, k).and_then(|v| v.parse::<u64>().ok());
    let mut out = Vec::new();
    let mut down: Option<(u64, String)> = None;
    for l in log.lines() {
        if l.contains("event=outbound-down") {
            down = number(l, " at_ms=").map(|at| (at, field(l, " error=").unwrap_or_default()));
        } else if l.contains("event=outbound-up")
            && let (Some((at, error)), Some(ms), Some(failed)) =
                (down.take(), number(l, " window_ms="), number(l, " failed="))
            && at >= since
        {
            out.push(Window {
                down_at: at as i64 - since as i64,
                error,
                ms,
                failed,
            });
        }
    }
    out
}

fn app_restarts(p: &Pod) -> i32 {
    common::status_of(p, "app").map_or(0, |s| s.restart_count)
}

/// kube-proxy's `kubeproxy_network_programming_duration_seconds` histogram (from an
/// EndpointSlice change, as its last-change-trigger-time says, to the iptables rules that
/// apply it): `(le, cumulative count)` per bucket, then `("sum", s)` and `("count", n)`.
async fn programming_histogram(node_ip: &str) -> AnyResult<Vec<(String, f64)>> {
    let addr: SocketAddr = format!("{node_ip}:10249").parse()?;
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: kube-proxy\r\n\r\n")
        .await?;
    let mut body = String::new();
    s.read_to_string(&mut body).await?;
    let name = "kubeproxy_network_programming_duration_seconds";
    let mut out = Vec::new();
    for l in body.lines().filter(|l| l.starts_with(name)) {
        let Some((key, value)) = l.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        if let Some(le) = key.split("le=\"").nth(1).and_then(|r| r.split('"').next()) {
            out.push((le.to_owned(), value));
        } else if key.starts_with(&format!("{name}_sum")) {
            out.push(("sum".into(), value));
        } else if key.starts_with(&format!("{name}_count")) {
            out.push(("count".into(), value));
        }
    }
    Ok(out)
}

/// What happened between two scrapes: (changes, mean seconds, the lowest bucket bound that
/// holds every change).
fn histogram_delta(
    before: &[(String, f64)],
    after: &[(String, f64)],
) -> Option<(f64, f64, String)> {
    let get =
        |h: &[(String, f64)], k: &str| h.iter().find(|(key, _)| key == k).map_or(0.0, |(_, v)| *v);
    let count = get(after, "count") - get(before, "count");
    if count <= 0.0 {
        return None;
    }
    let mean = (get(after, "sum") - get(before, "sum")) / count;
    let slowest = after
        .iter()
        .filter(|(k, _)| k != "sum" && k != "count")
        .find(|(k, v)| v - get(before, k) >= count)
        .map_or_else(|| "+Inf".to_owned(), |(k, _)| k.clone());
    Some((count, mean, slowest))
}

/// The app Deployment (or the upstream): the app, and with `upstream` the forwarding sidecar
/// in front of it; a Service `name` on port 80 (to the sidecar's 15006, or to the app).
async fn deploy(
    client: &kube::Client,
    ns: &str,
    name: &str,
    replicas: i32,
    upstream: Option<&str>,
    gated: bool,
) -> AnyResult<Api<Deployment>> {
    let probe =
        |port: u16| json!({"httpGet": {"path": "/ready", "port": port}, "periodSeconds": 1});
    let mut pod = json!({
        "containers": [{
            "name": "app",
            "image": APP,
            "readinessProbe": probe(8080),
        }],
    });
    if let Some(up) = upstream {
        pod["containers"][0]["args"] = json!(["--outbound", "127.0.0.1:15001"]);
        // The sidecar (a native sidecar, as Istio injects it): inbound 15006 → the app,
        // outbound 15001 → the upstream Service; ready when the app answers through it.
        pod["initContainers"] = json!([{
            "name": "proxy",
            "image": SIDECAR_OLD,
            "restartPolicy": "Always",
            "args": ["forward", "--listen", "15006,15001", "--to", format!("8080,{up}:80")],
            "readinessProbe": probe(15006),
        }]);
    }
    if gated {
        pod["readinessGates"] = json!([{"conditionType": "inplace-upgrade.io/ready"}]);
    }
    let d: Deployment = common::obj(json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "strategy": {"type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 0}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": pod},
        },
    }));
    let api = Api::<Deployment>::namespaced(client.clone(), ns);
    api.create(&PostParams::default(), &d).await?;
    let target_port = if upstream.is_some() { 15006 } else { 8080 };
    let svc: Service = common::obj(json!({
        "metadata": {"name": name},
        "spec": {"selector": {"app": name}, "ports": [{"port": 80, "targetPort": target_port}]},
    }));
    Api::<Service>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &svc)
        .await?;
    common::await_deployment_ready(&api, name, replicas).await?;
    Ok(api)
}

async fn cluster_ip(client: &kube::Client, ns: &str, name: &str) -> AnyResult<String> {
    Ok(Api::<Service>::namespaced(client.clone(), ns)
        .get(name)
        .await?
        .spec
        .and_then(|s| s.cluster_ip)
        .ok_or("the Service has no ClusterIP")?)
}

/// Waits (up to 30 s) until `target` answers ten requests in a row: kube-proxy has the
/// Service's endpoints.
async fn await_answers(target: SocketAddr) -> AnyResult<()> {
    let started = Instant::now();
    let mut in_a_row = 0;
    while in_a_row < 10 {
        if request(target).await.0 == Outcome::Ok {
            in_a_row += 1;
        } else {
            in_a_row = 0;
            if started.elapsed() > Duration::from_secs(30) {
                return Err(format!("{target} does not answer after 30 s").into());
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// The load: one request every `1/rps` seconds until `stop` (or 10 minutes, a bound), each
/// on its own connection and task.
async fn generate(target: SocketAddr, rps: u64, stop: Arc<AtomicBool>) -> Load {
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rps));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut tasks = Vec::new();
    while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(600) {
        tick.tick().await;
        let at = started.elapsed();
        tasks.push(tokio::spawn(async move {
            let (outcome, latency) = request(target).await;
            (at, outcome, latency)
        }));
    }
    let mut load = Load::default();
    for t in tasks {
        // A request task does not panic; if one did, it counts as a failure of kind Other.
        load.results.push(
            t.await
                .unwrap_or((Duration::ZERO, Outcome::Other, Duration::ZERO)),
        );
    }
    load
}

/// `GET /` over a new connection: the outcome and the time to the end of the answer.
async fn request(target: SocketAddr) -> (Outcome, Duration) {
    let started = Instant::now();
    let outcome = match tokio::time::timeout(Duration::from_secs(2), exchange(target)).await {
        Err(_) => Outcome::Timeout,
        Ok(Ok(status)) if status >= 500 => Outcome::Status5xx,
        Ok(Ok(0)) => Outcome::Closed,
        Ok(Ok(_)) => Outcome::Ok,
        Ok(Err(e)) => match e.kind() {
            std::io::ErrorKind::ConnectionRefused => Outcome::Refused,
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe => Outcome::Reset,
            std::io::ErrorKind::TimedOut => Outcome::Timeout,
            std::io::ErrorKind::UnexpectedEof => Outcome::Closed,
            _ => Outcome::Other,
        },
    };
    (outcome, started.elapsed())
}

/// The status code of the answer; 0 when the connection closed before a status line.
async fn exchange(target: SocketAddr) -> std::io::Result<u16> {
    let mut s = tokio::time::timeout(
        Duration::from_secs(1),
        tokio::net::TcpStream::connect(target),
    )
    .await
    .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    s.write_all(b"GET / HTTP/1.0\r\nHost: web\r\n\r\n").await?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).await?;
    let head = String::from_utf8_lossy(&answer[..answer.len().min(64)]).into_owned();
    Ok(head
        .strip_prefix("HTTP/1.")
        .and_then(|r| r.get(2..5))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0))
}

async fn scale(api: &Api<Deployment>, replicas: i32) -> AnyResult<()> {
    let patch = json!({"spec": {"replicas": replicas}});
    api.patch(NAME, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

async fn all_ready(api: &Api<Deployment>, replicas: i32) -> AnyResult<()> {
    testenv::wait_for(api, NAME, &format!("{replicas} Ready"), |d: &Deployment| {
        let s = d.status.clone().unwrap_or_default();
        s.replicas == Some(replicas)
            && s.ready_replicas == Some(replicas)
            && s.updated_replicas == Some(replicas)
    })
    .await?;
    Ok(())
}
