//! Chaos during rollouts, with the controller out of process on the real control plane and the
//! simulated kubelet:
//!
//! - seeded SIGKILLs of the leader (two replicas all the time) at points chosen by the seed
//!   among: a pod drained, a pod patched and restarting, a pod just finished, between two pods,
//!   and a pod rolling back from a failing target. Rollouts follow one another (a new target
//!   per wave, every pod upgraded each time) until every kill point is spent;
//! - kube-apiserver restarted in place (same port, same etcd; once SIGKILLed, once SIGTERMed)
//!   mid-rollout while the simulated kubelet is slow (4 s per container restart), beside a
//!   workload whose app container flaps between Ready and not Ready.
//!
//! After each rollout: it completed (or, for a failing target, stopped `Failed` with the pod
//! rolled back), no pod is left drained or half-patched (state `Patched`/`RollingBack`), and a
//! watcher saw never more than `maxUnavailable` pods unavailable at once (for the flapping
//! workload, whose pods go unready on their own: never more than `maxUnavailable` pods held
//! by the controller, drained or patched and unfinished). See docs/reliability.md.
//!
//! Short form by default. Long form: `INPLACE_CHAOS_KILLS=25 INPLACE_CHAOS_SEED=7
//! INPLACE_CHAOS_REPLICAS=10 cargo test -p inplace-upgrade --test e2e_chaos -- --nocapture`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use common::*;
use futures::StreamExt;
use inplace_upgrade::TARGETS_ANNOTATION;
use inplace_upgrade::controller::LEASE_NAME;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use testenv::{TestEnv, wait_for, wait_list};

const REPOSITORY: &str = "registry.istio.io/testing/proxyv2";
const OLD_PROXY: &str = "registry.istio.io/testing/proxyv2:latest";

/// Two controller replicas, the leader replaced by a fresh one after each kill.
struct Pair {
    replicas: Vec<Replica>,
    started: usize,
}

impl Pair {
    fn start(env: &TestEnv, prefix: &str) -> AnyResult<Pair> {
        Ok(Pair {
            replicas: vec![
                Replica::start(env, &format!("{prefix}-0"))?,
                Replica::start(env, &format!("{prefix}-1"))?,
            ],
            started: 2,
        })
    }

    fn identities(&self) -> Vec<String> {
        self.replicas.iter().map(|r| r.identity.clone()).collect()
    }

    async fn leader(&self, client: &Client) -> AnyResult<String> {
        let among = self.identities();
        let api = Api::<Lease>::namespaced(client.clone(), CONTROLLER_NAMESPACE);
        let lease = wait_for(
            &api,
            LEASE_NAME,
            &format!("a leader among {among:?}"),
            |l: &Lease| {
                l.spec
                    .as_ref()
                    .and_then(|s| s.holder_identity.as_ref())
                    .is_some_and(|h| among.contains(h))
            },
        )
        .await?;
        Ok(lease
            .spec
            .and_then(|s| s.holder_identity)
            .unwrap_or_default())
    }

    /// SIGKILLs the current leader, starts a replacement, and returns (killed, new leader).
    async fn kill_leader(
        &mut self,
        env: &TestEnv,
        client: &Client,
        prefix: &str,
    ) -> AnyResult<(String, String)> {
        let leader = self.leader(client).await?;
        if let Some(victim) = self.replicas.iter_mut().find(|r| r.identity == leader) {
            victim.kill();
        }
        self.replicas.retain(|r| r.identity != leader);
        let replacement = format!("{prefix}-{}", self.started);
        self.started += 1;
        self.replicas.push(Replica::start(env, &replacement)?);
        let next = self.leader(client).await?;
        Ok((leader, next))
    }

    fn logs(&self) -> String {
        self.replicas
            .iter()
            .map(|r| format!("--- {}:\n{}", r.identity, r.log_tail()))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// SplitMix64: a few lines, no dependency, the same sequence for the same seed everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % u64::try_from(n).unwrap_or(1)).unwrap_or(0)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KillPoint {
    /// A pod's gate is False (drained) and its image not yet patched.
    Drained,
    /// A pod is patched to the wave's target and its container restarting.
    Patched,
    /// One more pod finished since the last kill.
    Finished,
    /// Nothing drained or in progress, some pods done and some not.
    BetweenPods,
    /// A pod is being patched back from a failing target.
    RollingBack,
}

const KILL_POINTS: [KillPoint; 5] = [
    KillPoint::Drained,
    KillPoint::Patched,
    KillPoint::Finished,
    KillPoint::BetweenPods,
    KillPoint::RollingBack,
];

fn point_key(point: KillPoint) -> &'static str {
    match point {
        KillPoint::Drained => "Drained",
        KillPoint::Patched => "Patched",
        KillPoint::Finished => "Finished",
        KillPoint::BetweenPods => "BetweenPods",
        KillPoint::RollingBack => "RollingBack",
    }
}

fn env_number(name: &str, default: u64) -> AnyResult<u64> {
    match std::env::var(name) {
        Ok(v) => Ok(v
            .parse()
            .map_err(|e| format!("{name}={v:?} is not a number: {e}"))?),
        Err(_) => Ok(default),
    }
}

fn drained(pod: &Pod) -> bool {
    gate(pod).is_some_and(|(s, _)| s == "False")
}

fn in_progress(pod: &Pod) -> bool {
    matches!(state_phase(pod).as_deref(), Some("Patched" | "RollingBack"))
}

/// One rollout: the annotation written and the image it resolves to on our pods.
struct Wave {
    annotation: String,
    image: String,
    failing: bool,
}

impl Wave {
    fn new(n: usize, failing: bool) -> Wave {
        let tag = if failing {
            format!("fail-pull-{n}")
        } else {
            format!("1.30.{n}")
        };
        Wave {
            annotation: format!("istio-proxy=proxyv2:{tag}"),
            image: format!("{REPOSITORY}:{tag}"),
            failing,
        }
    }

    fn at_target(&self, pod: &Pod) -> bool {
        spec_image(pod, "istio-proxy").as_deref() == Some(self.image.as_str())
    }

    fn succeeded(&self, pod: &Pod) -> bool {
        self.at_target(pod) && state_phase(pod).as_deref() == Some("Succeeded")
    }

    /// The wave is over as far as the pods show: every pod upgraded, or (failing target) a
    /// pod rolled back and nothing in progress.
    fn over(&self, pods: &[Pod]) -> bool {
        if self.failing {
            pods.iter()
                .any(|p| state_phase(p).as_deref() == Some("RolledBack"))
                && !pods.iter().any(|p| in_progress(p) || drained(p))
        } else {
            !pods.is_empty() && pods.iter().all(|p| self.succeeded(p) && !drained(p))
        }
    }

    /// Where `point` is reached in `pods`, skipping pods already used for that point in
    /// this wave (a pod stays drained across a failover; killing twice on it says nothing new).
    fn at_kill_point(
        &self,
        point: KillPoint,
        pods: &[Pod],
        used: &BTreeSet<String>,
    ) -> Option<String> {
        if point == KillPoint::BetweenPods {
            let done = pods.iter().filter(|p| self.succeeded(p)).count();
            let quiet = !pods.iter().any(|p| drained(p) || in_progress(p));
            return (quiet && done > 0 && done < pods.len() && !self.failing)
                .then(|| format!("{done} of {} pods done", pods.len()))
                .filter(|at| !used.contains(at));
        }
        pods.iter()
            .filter(|p| !used.contains(&p.name_any()))
            .find(|p| match point {
                KillPoint::Drained => {
                    gate(p).is_some_and(|(s, r)| s == "False" && r == "Draining")
                        && !self.at_target(p)
                }
                KillPoint::Patched => {
                    self.at_target(p)
                        && state_phase(p).as_deref() == Some("Patched")
                        && !is_ready(p)
                }
                KillPoint::Finished => self.succeeded(p),
                KillPoint::RollingBack => state_phase(p).as_deref() == Some("RollingBack"),
                KillPoint::BetweenPods => false,
            })
            .map(|p| p.name_any())
    }
}

/// After a wave: the documented end state, checked on every pod.
async fn check_wave_end(
    client: &Client,
    ns: &str,
    app: &str,
    wave: &Wave,
    previous_image: &str,
    replicas: i32,
    flapping: bool,
) -> AnyResult<String> {
    let deployments = &Api::<Deployment>::namespaced(client.clone(), ns);
    let phase = if wave.failing { "Failed" } else { "Completed" };
    await_phase(deployments, app, &wave.annotation, phase).await?;
    // `Failed` is reported when the failure is seen; the rollback finishes after it.
    let api = Api::<Pod>::namespaced(client.clone(), ns);
    wait_list(
        &api,
        watcher::Config::default().labels(&format!("app={app}")),
        &format!(
            "the pods of {app} settled on {} (nothing drained or in progress)",
            wave.annotation
        ),
        |ps: &[Pod]| wave.over(ps),
    )
    .await?;
    if !flapping {
        await_deployment_ready(deployments, app, replicas).await?;
    }
    let pods = pods_by_name(client, ns, app).await?;
    let mut rolled_back = 0;
    for (name, pod) in &pods {
        assert!(!drained(pod), "{name} is left drained: {:?}", gate(pod));
        assert!(
            !in_progress(pod),
            "{name} is left half-patched: {:?}",
            state_phase(pod)
        );
        assert!(flapping || is_ready(pod), "{name} is Ready");
        let image = spec_image(pod, "istio-proxy").unwrap_or_default();
        if wave.failing {
            assert_eq!(
                image, previous_image,
                "{name}: a failing target leaves every pod on the previous image"
            );
            if state_phase(pod).as_deref() == Some("RolledBack") {
                rolled_back += 1;
            }
        } else {
            assert_eq!(image, wave.image, "{name} runs the target");
            assert_eq!(state_phase(pod).as_deref(), Some("Succeeded"), "{name}");
        }
    }
    if wave.failing {
        assert_eq!(
            rolled_back, 1,
            "exactly one pod tried the failing target and was rolled back"
        );
        Ok(format!(
            "Failed, 1 pod rolled back, {} untouched",
            pods.len() - 1
        ))
    } else {
        Ok(format!("Completed, {} pods on {}", pods.len(), wave.image))
    }
}

/// What a watch of one app's pods saw: the most pods not Ready at once (terminating pods
/// aside), and the most pods held by the controller at once (drained, or patched and not yet
/// finished). Unlike `common::observe`, the watch backs off while the API server is down
/// instead of spinning, and relists when it is back.
#[derive(Default, Debug, Clone, Copy)]
struct Seen {
    max_not_ready: usize,
    max_held: usize,
}

fn watch_pods(client: &Client, ns: &str, app: &str) -> Arc<Mutex<Seen>> {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let stream = watcher(
        Api::<Pod>::namespaced(client.clone(), ns),
        watcher::Config::default().labels(&format!("app={app}")),
    )
    .default_backoff();
    let out = seen.clone();
    tokio::spawn(async move {
        let mut stream = stream.boxed();
        let mut not_ready: BTreeSet<String> = BTreeSet::new();
        let mut held: BTreeSet<String> = BTreeSet::new();
        // A re-list (after the API server restarts) is one snapshot: it is built aside and
        // swapped in at InitDone, so a half-listed mix of old and new states never counts.
        let mut relist: Option<(BTreeSet<String>, BTreeSet<String>)> = None;
        while let Some(event) = stream.next().await {
            let pod = match event {
                Ok(watcher::Event::Init) => {
                    relist = Some(Default::default());
                    continue;
                }
                Ok(watcher::Event::InitDone) => {
                    if let Some((n, h)) = relist.take() {
                        (not_ready, held) = (n, h);
                    }
                    None
                }
                Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => Some(p),
                Ok(watcher::Event::Delete(p)) => {
                    not_ready.remove(&p.name_any());
                    held.remove(&p.name_any());
                    continue;
                }
                Err(_) => continue,
            };
            if let Some(pod) = pod {
                let live = pod.metadata.deletion_timestamp.is_none();
                let (n, h) = match relist.as_mut() {
                    Some((n, h)) => (n, h),
                    None => (&mut not_ready, &mut held),
                };
                for (set, member) in [
                    (n, live && !is_ready(&pod)),
                    (h, live && (drained(&pod) || in_progress(&pod))),
                ] {
                    if member {
                        set.insert(pod.name_any());
                    } else {
                        set.remove(&pod.name_any());
                    }
                }
                if relist.is_some() {
                    continue;
                }
            }
            if let Ok(mut s) = out.lock() {
                s.max_not_ready = s.max_not_ready.max(not_ready.len());
                s.max_held = s.max_held.max(held.len());
            }
        }
    });
    seen
}

/// The Istio-injected `hello` Deployment as `app` (name and `app` label), gated, with the
/// simulated kubelet's restart delay; `flapping`: its `hello` container's readiness flips.
async fn create_app(
    client: &Client,
    ns: &str,
    app: &str,
    replicas: i32,
    restart_delay_ms: u32,
    flapping: bool,
) -> AnyResult<Api<Deployment>> {
    let deployments = Api::<Deployment>::namespaced(client.clone(), ns);
    let mut d: Value = serde_json::to_value(hello_deployment(
        "hello-old-version.yaml.injected",
        replicas,
        true,
    )?)?;
    d["metadata"]["name"] = json!(app);
    d["metadata"]["labels"]["app"] = json!(app);
    d["spec"]["selector"]["matchLabels"]["app"] = json!(app);
    let template = &mut d["spec"]["template"];
    template["metadata"]["labels"]["app"] = json!(app);
    template["metadata"]["annotations"]["sim.inplace-upgrade.io/restart-delay-ms"] =
        json!(restart_delay_ms.to_string());
    if flapping {
        let containers = template["spec"]["containers"]
            .as_array_mut()
            .ok_or("the fixture has no containers")?;
        for c in containers.iter_mut().filter(|c| c["name"] == "hello") {
            c["image"] = json!("fake.docker.io/google-samples/hello-go-gke:flapping");
        }
    }
    deployments
        .create(&PostParams::default(), &serde_json::from_value(d)?)
        .await?;
    Ok(deployments)
}

/// Waits until `replicas` pods of `app` exist with our readiness gate admitted (True): the
/// rollout can start. (A flapping app is never reliably all Ready at once.)
async fn await_admitted(client: &Client, ns: &str, app: &str, replicas: i32) -> AnyResult<()> {
    let want = usize::try_from(replicas)?;
    wait_list(
        &Api::<Pod>::namespaced(client.clone(), ns),
        watcher::Config::default().labels(&format!("app={app}")),
        &format!("{replicas} pods of {app} admitted"),
        |ps: &[Pod]| {
            ps.len() == want && ps.iter().all(|p| gate(p).is_some_and(|(s, _)| s == "True"))
        },
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn seeded_sigkills_of_the_leader_never_leave_a_pod_drained_or_exceed_the_budget() -> TestResult
{
    if !TestEnv::shared()?.simulator_only(
        "seeded_sigkills_of_the_leader_never_leave_a_pod_drained_or_exceed_the_budget",
        "its restarts are slowed by sim.inplace-upgrade.io/restart-delay-ms so kills land mid-restart",
    ) {
        return Ok(());
    }
    let kills_wanted = usize::try_from(env_number("INPLACE_CHAOS_KILLS", 4)?)?;
    let seed = env_number("INPLACE_CHAOS_SEED", 1)?;
    let replicas = i32::try_from(env_number("INPLACE_CHAOS_REPLICAS", 4)?)?;
    let mut rng = Rng(seed);
    let plan: Vec<KillPoint> = (0..kills_wanted)
        .map(|_| KILL_POINTS[rng.below(KILL_POINTS.len())])
        .collect();
    println!("chaos seed {seed}: {kills_wanted} kill points over {replicas} replicas: {plan:?}");

    let env = TestEnv::shared()?;
    let client = env.client()?;
    install(&client).await?;
    let ns = env.namespace("chaos-kill").await?;
    // Pre-pull off: the kill points are the per-pod steps, and a failing wave must reach a
    // rollback (pre-pull would stop its missing image before any patch).
    create_policy(
        &client,
        &ns,
        json!({"drain": {"gracePeriodSeconds": 1, "timeoutSeconds": 60}, "prePull": {"enabled": false}}),
    )
    .await?;
    let deployments = create_app(&client, &ns, "hello", replicas, 1000, false).await?;
    let mut pair = Pair::start(env, "kill")?;
    pair.leader(&client).await?;
    await_deployment_ready(&deployments, "hello", replicas).await?;
    let seen = watch_pods(&client, &ns, "hello");
    let pods = Api::<Pod>::namespaced(client.clone(), &ns);

    let mut plan = plan.into_iter().peekable();
    let mut log: Vec<String> = Vec::new();
    let mut kills = 0usize;
    let mut previous_image = OLD_PROXY.to_string();
    let mut wave_number = 0usize;
    // A failing wave whose rollback window was missed is retried a bounded number of times.
    let mut missed_rollbacks = 0;
    while plan.peek().is_some() {
        wave_number += 1;
        let failing = plan.peek() == Some(&KillPoint::RollingBack);
        let wave = Wave::new(wave_number, failing);
        annotate(&deployments, "hello", TARGETS_ANNOTATION, &wave.annotation).await?;
        println!("wave {wave_number}: {}", wave.annotation);
        // Pods used per kill point in this wave; for `Finished`, every pod done at the last kill.
        let mut used: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
        while let Some(&point) = plan.peek() {
            // A failing wave offers only the rollback kill point; a good wave all others.
            if (point == KillPoint::RollingBack) != failing {
                break;
            }
            let empty = BTreeSet::new();
            let used_for = |p: KillPoint| used.get(point_key(p)).unwrap_or(&empty);
            let snapshot = wait_list(
                &pods,
                watcher::Config::default().labels("app=hello"),
                &format!("kill point {point:?} in wave {wave_number}"),
                |ps: &[Pod]| {
                    wave.over(ps) || wave.at_kill_point(point, ps, used_for(point)).is_some()
                },
            )
            .await?;
            let Some(at) = wave.at_kill_point(point, &snapshot, used_for(point)) else {
                if failing {
                    missed_rollbacks += 1;
                    log.push(format!(
                        "wave {wave_number}: {point:?} window missed (rollback finished first)"
                    ));
                    if missed_rollbacks >= 3 {
                        plan.next(); // give up on this point; it is not counted as a kill
                    }
                }
                break; // this wave is over; the next one continues the plan
            };
            let (killed, next) = pair.kill_leader(env, &client, "kill").await?;
            kills += 1;
            plan.next();
            let line = format!(
                "kill {kills}: wave {wave_number} {point:?} at {at}: SIGKILL {killed}, {next} leads"
            );
            println!("{line}");
            log.push(line);
            used.entry(point_key(point)).or_default().insert(at);
            used.insert(
                point_key(KillPoint::Finished),
                snapshot
                    .iter()
                    .filter(|p| wave.succeeded(p))
                    .map(|p| p.name_any())
                    .collect(),
            );
        }
        let outcome = check_wave_end(
            &client,
            &ns,
            "hello",
            &wave,
            &previous_image,
            replicas,
            false,
        )
        .await;
        let outcome = match outcome {
            Ok(o) => o,
            Err(e) => return Err(format!("wave {wave_number}: {e}\n{}", pair.logs()).into()),
        };
        println!("wave {wave_number} outcome: {outcome}");
        log.push(format!(
            "wave {wave_number} ({}): {outcome}",
            wave.annotation
        ));
        if !wave.failing {
            previous_image = wave.image.clone();
        }
    }

    let max = seen.lock().map(|s| s.max_not_ready).unwrap_or(usize::MAX);
    println!(
        "chaos seed {seed}: {kills} kill points survived over {wave_number} rollouts, max pods unavailable at once {max} (maxUnavailable 1)\n{}",
        log.join("\n")
    );
    assert!(
        kills + 2 >= kills_wanted,
        "at most two rollback windows may be missed: {kills} of {kills_wanted} kills\n{}",
        log.join("\n")
    );
    assert!(
        max <= 1,
        "never more than maxUnavailable=1 pod unavailable across the kills, saw {max}"
    );
    Ok(())
}

#[tokio::test]
async fn apiserver_restarts_mid_rollout_with_a_slow_kubelet_and_the_rollout_completes() -> TestResult
{
    // Its own control plane: restarting the shared one would disturb the other test.
    let env = TestEnv::start(testenv::Options::default()).await?;
    let client = env.client()?;
    install(&client).await?;
    let ns = env.namespace("chaos-apiserver").await?;
    // A slow kubelet: each container restart takes 4 s; the ready timeout is well above that,
    // so the controller must wait, not give up.
    create_policy(&client, &ns, json!({"readyTimeoutSeconds": 30})).await?;
    let replicas = 4;
    let deployments = create_app(&client, &ns, "hello", replicas, 4000, false).await?;
    // Beside it, a workload whose app container flaps between Ready and not Ready.
    create_app(&client, &ns, "flappy", replicas, 300, true).await?;
    let pair = Pair::start(&env, "api")?;
    pair.leader(&client).await?;
    await_deployment_ready(&deployments, "hello", replicas).await?;
    await_admitted(&client, &ns, "flappy", replicas).await?;
    let seen = watch_pods(&client, &ns, "hello");
    let seen_flappy = watch_pods(&client, &ns, "flappy");
    let pods = Api::<Pod>::namespaced(client.clone(), &ns);
    let wave = Wave::new(1, false);
    annotate(&deployments, "hello", TARGETS_ANNOTATION, &wave.annotation).await?;
    annotate(&deployments, "flappy", TARGETS_ANNOTATION, &wave.annotation).await?;

    let mut log = Vec::new();
    for (i, kill) in [true, false].into_iter().enumerate() {
        // Restart while pod number i+1 of hello is patched and its container restarting.
        let snapshot = wait_list(
            &pods,
            watcher::Config::default().labels("app=hello"),
            &format!("{} pod(s) patched", i + 1),
            |ps: &[Pod]| ps.iter().filter(|p| wave.at_target(p)).count() > i,
        )
        .await?;
        let patched: Vec<String> = snapshot
            .iter()
            .filter(|p| wave.at_target(p))
            .map(|p| p.name_any())
            .collect();
        let took = env.restart_apiserver(kill).await?;
        let line = format!(
            "kube-apiserver {} with {patched:?} patched; ready again after {took:.1?}",
            if kill {
                "SIGKILLed"
            } else {
                "SIGTERMed (SIGKILL after 10 s)"
            }
        );
        println!("{line}");
        log.push(line);
    }
    for (app, flapping) in [("hello", false), ("flappy", true)] {
        let outcome = check_wave_end(&client, &ns, app, &wave, OLD_PROXY, replicas, flapping).await;
        match outcome {
            Ok(o) => log.push(format!("{app}: {o}")),
            Err(e) => return Err(format!("{app}: {e}\n{}", pair.logs()).into()),
        }
    }
    let hello = seen.lock().map(|s| *s).unwrap_or_default();
    let flappy = seen_flappy.lock().map(|s| *s).unwrap_or_default();
    println!(
        "{}\nacross 2 kube-apiserver restarts: hello max unavailable {}, max held by the controller {}; flappy max not Ready {} (its own flapping), max held by the controller {}",
        log.join("\n"),
        hello.max_not_ready,
        hello.max_held,
        flappy.max_not_ready,
        flappy.max_held
    );
    assert!(
        hello.max_not_ready <= 1,
        "never more than maxUnavailable=1 pod of hello unavailable, saw {hello:?}"
    );
    assert!(
        hello.max_held <= 1 && flappy.max_held <= 1,
        "the controller never held more than maxUnavailable=1 pod of a workload: hello {hello:?}, flappy {flappy:?}"
    );
    Ok(())
}
