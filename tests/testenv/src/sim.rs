//! The simulated kubelet's per-pod state machine: pure, no I/O.
//!
//! [`PodSim::advance`] takes the latest Pod from the API and the current time, applies every
//! transition that is due (container starts, readiness, crashes, image-change restarts,
//! termination) and returns the Events kubelet would record; [`PodSim::status_patch`] renders
//! the kubelet-owned part of `status`; [`PodSim::next_deadline`] says when to call again.
//! The I/O loop in `kubelet.rs` does nothing else than feed it and write what it returns.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use k8s_openapi::api::core::v1::{Container, Pod};
use serde_json::{Value, json};

use crate::image::{ImageRef, Injected, exit_code_on_sigterm, injected};

/// Annotation prefix for per-pod overrides of [`Delays`], e.g.
/// `sim.inplace-upgrade.io/restart-delay-ms: "2000"`.
pub const ANNOTATION_PREFIX: &str = "sim.inplace-upgrade.io/";

/// How long the simulated runtime takes for each step. Every one can be overridden per pod by
/// an annotation `sim.inplace-upgrade.io/<name>-delay-ms` (milliseconds), where `<name>` is
/// `pull`, `restart`, `readiness`, `termination`, `crash`, `init` or `backoff`, and per
/// container by `sim.inplace-upgrade.io/<container>.<name>-delay-ms` (an app that takes 20 s
/// to become ready beside a proxy that takes 1 s).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delays {
    /// Image pull before a container's first start (`pull`).
    pub pull: Duration,
    /// From killing a container whose image changed (or whose back-off was reset by a spec
    /// change) to the new container running (`restart`).
    pub restart: Duration,
    /// From running to ready, for containers with a readinessProbe or startupProbe
    /// (`readiness`). Without a probe a container is ready as soon as it runs (kubelet's rule).
    pub readiness: Duration,
    /// Upper bound from deletion to containers stopped; `deletionGracePeriodSeconds` bounds
    /// it further (`termination`).
    pub termination: Duration,
    /// How long a `crashloop` container runs before it exits 1 (`crash`).
    pub crash: Duration,
    /// How long a run-to-completion init container runs (`init`).
    pub init: Duration,
    /// First back-off after a crash or failed pull; doubles each time up to 8× (`backoff`).
    pub backoff: Duration,
}

impl Default for Delays {
    fn default() -> Self {
        let ms = Duration::from_millis;
        Self {
            pull: ms(200),
            restart: ms(300),
            readiness: ms(300),
            termination: ms(200),
            crash: ms(300),
            init: ms(100),
            backoff: ms(500),
        }
    }
}

impl Delays {
    /// These delays with the pod's `sim.inplace-upgrade.io/*-delay-ms` annotations applied.
    /// Unparsable values are ignored (a pod must not break the simulated node).
    pub fn for_pod(&self, pod: &Pod) -> Self {
        self.overridden(pod, ANNOTATION_PREFIX)
    }

    /// These delays with the pod's `sim.inplace-upgrade.io/<container>.*-delay-ms`
    /// annotations applied (after [`for_pod`](Self::for_pod)'s).
    pub fn for_container(&self, pod: &Pod, container: &str) -> Self {
        self.overridden(pod, &format!("{ANNOTATION_PREFIX}{container}."))
    }

    fn overridden(&self, pod: &Pod, prefix: &str) -> Self {
        let mut d = *self;
        let Some(annotations) = pod.metadata.annotations.as_ref() else {
            return d;
        };
        for (key, value) in annotations {
            let Some(name) = key
                .strip_prefix(prefix)
                .and_then(|k| k.strip_suffix("-delay-ms"))
            else {
                continue;
            };
            let Ok(ms) = value.trim().parse::<u64>() else {
                continue;
            };
            let v = Duration::from_millis(ms);
            match name {
                "pull" => d.pull = v,
                "restart" => d.restart = v,
                "readiness" => d.readiness = v,
                "termination" => d.termination = v,
                "crash" => d.crash = v,
                "init" => d.init = v,
                "backoff" => d.backoff = v,
                _ => {}
            }
        }
        d
    }

    fn backoff(&self, failures: u32) -> Duration {
        self.backoff * 2u32.pow(failures.min(3))
    }
}

/// A point in time, on both clocks: the monotonic one for deadlines, the wall one for the
/// timestamps written into status.
#[derive(Clone, Copy, Debug)]
pub struct Now {
    pub mono: Instant,
    pub wall: DateTime<Utc>,
}

impl Now {
    pub fn current() -> Self {
        Self {
            mono: Instant::now(),
            wall: Utc::now(),
        }
    }
}

/// An Event the kubelet records about the pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimEvent {
    /// `Normal` or `Warning`.
    pub type_: &'static str,
    pub reason: &'static str,
    pub message: String,
    /// `spec.containers{name}` or `spec.initContainers{name}`.
    pub field_path: Option<String>,
}

/// What [`PodSim::advance`] asks the I/O loop to do besides writing status.
#[derive(Debug, Default)]
pub struct Outcome {
    pub events: Vec<SimEvent>,
    /// Containers are stopped after a graceful deletion: delete the pod with grace 0.
    pub delete: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Run-to-completion init container.
    Init,
    /// Native sidecar: init container with `restartPolicy: Always`.
    Sidecar,
    Regular,
}

#[derive(Clone, Debug)]
struct Terminated {
    exit_code: i32,
    reason: &'static str,
    /// The runtime's words, for a container that could not start.
    message: Option<String>,
    started_at: DateTime<Utc>,
    finished_at: DateTime<Utc>,
}

/// One container the runtime created.
#[derive(Clone, Debug)]
struct Instance {
    id: String,
    image: String,
    image_id: String,
    started_at: DateTime<Utc>,
    ready: bool,
    started: bool,
    terminated: Option<Terminated>,
}

impl Instance {
    fn running(&self) -> bool {
        self.terminated.is_none()
    }
}

/// What happens to a container next, and when.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    /// Waiting for earlier init containers.
    Idle,
    /// Pulls (if needed) and starts the spec image at the deadline.
    Start(Instant),
    /// `ErrImagePull` turns into `ImagePullBackOff` at the deadline.
    PullBackOff(Instant),
    /// After a failed pull of a container that has a killed predecessor: `CrashLoopBackOff` at
    /// the deadline (kubelet's restart back-off, fed by the old container's exit), then
    /// `ImagePullBackOff`.
    CrashBackOff(Instant),
    /// Becomes ready (and started) at the deadline.
    Ready(Instant),
    /// A `flapping` container turns not ready at the deadline (and ready again later).
    Unready(Instant),
    /// Exits 1 at the deadline.
    Crash(Instant),
    /// A crashed container in its restart back-off: its status says `terminated` until the
    /// deadline, when it says `CrashLoopBackOff` (kubelet's next sync of the pod) and restarts.
    CrashLoopShown(Instant),
    /// Exits 0 at the deadline (run-to-completion init container).
    Complete(Instant),
    /// Nothing scheduled.
    Done,
}

impl Step {
    fn deadline(self) -> Option<Instant> {
        match self {
            Step::Start(t)
            | Step::PullBackOff(t)
            | Step::CrashBackOff(t)
            | Step::Ready(t)
            | Step::Unready(t)
            | Step::Crash(t)
            | Step::CrashLoopShown(t)
            | Step::Complete(t) => Some(t),
            Step::Idle | Step::Done => None,
        }
    }
}

#[derive(Clone, Debug)]
struct ContainerSim {
    name: String,
    kind: Kind,
    /// The image of the current attempt: what is running, or being pulled.
    target: String,
    /// `command[0]`, if the spec sets one (immutable, like the rest of the spec but images).
    command: Option<String>,
    probed: bool,
    startup_probe: bool,
    instance: Option<Instance>,
    /// The instance before `instance`, once it terminated (`lastState`).
    previous: Option<(String, String, String, Terminated)>,
    restart_count: i32,
    step: Step,
    /// kubelet's "reason cache": the last start failure, shown as the waiting reason until a
    /// start succeeds or the spec changes.
    waiting: Option<(&'static str, String)>,
    failures: u32,
    /// The node had `target` when this attempt began: no pull (`already present on machine`).
    present: bool,
}

impl ContainerSim {
    fn new(c: &Container, kind: Kind) -> Self {
        Self {
            name: c.name.clone(),
            kind,
            target: c.image.clone().unwrap_or_default(),
            command: c.command.as_ref().and_then(|c| c.first().cloned()),
            probed: c.readiness_probe.is_some(),
            startup_probe: c.startup_probe.is_some(),
            instance: None,
            previous: None,
            restart_count: 0,
            step: Step::Idle,
            waiting: None,
            failures: 0,
            present: false,
        }
    }

    fn field_path(&self) -> String {
        match self.kind {
            Kind::Regular => format!("spec.containers{{{}}}", self.name),
            Kind::Init | Kind::Sidecar => format!("spec.initContainers{{{}}}", self.name),
        }
    }

    fn ready(&self) -> bool {
        self.instance.as_ref().is_some_and(|i| i.ready)
    }

    fn completed(&self) -> bool {
        self.instance
            .as_ref()
            .and_then(|i| i.terminated.as_ref())
            .is_some_and(|t| t.exit_code == 0)
    }

    /// Whether init containers after this one may start.
    fn lets_next_start(&self) -> bool {
        match self.kind {
            Kind::Init => self.completed(),
            Kind::Sidecar => self
                .instance
                .as_ref()
                .is_some_and(|i| i.running() && i.started),
            Kind::Regular => true,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Condition {
    status: bool,
    reason: Option<String>,
    message: Option<String>,
    last_transition: DateTime<Utc>,
}

/// The simulated kubelet's view of one pod.
#[derive(Clone, Debug)]
pub struct PodSim {
    uid: String,
    pod_ip: String,
    host_ip: String,
    start_time: Option<DateTime<Utc>>,
    containers: Vec<ContainerSim>,
    conditions: BTreeMap<&'static str, Condition>,
    initialized: bool,
    terminating: Option<Instant>,
    /// The termination delay outlasted the grace period: containers die by SIGKILL.
    killed: bool,
    terminated: bool,
    next_instance: u64,
    /// The node's images, when the node keeps them ([`PodSim::on_node_with_images`]).
    images: Option<NodeImages>,
}

/// The images a simulated node has pulled, shared by the pods on it. With it, a container
/// whose image is already on the node starts without a pull, as kubelet's default
/// `imagePullPolicy: IfNotPresent` does for a tagged image; without it every first start pulls.
pub type NodeImages = Arc<Mutex<BTreeSet<String>>>;

const OWNED_CONDITIONS: [&str; 4] = [
    "PodReadyToStartContainers",
    "Initialized",
    "ContainersReady",
    "Ready",
];

impl PodSim {
    pub fn new(pod: &Pod, pod_ip: String, host_ip: String) -> Self {
        let spec = pod.spec.as_ref();
        let mut containers = Vec::new();
        for c in spec
            .and_then(|s| s.init_containers.as_ref())
            .into_iter()
            .flatten()
        {
            let kind = if c.restart_policy.as_deref() == Some("Always") {
                Kind::Sidecar
            } else {
                Kind::Init
            };
            containers.push(ContainerSim::new(c, kind));
        }
        for c in spec.map(|s| s.containers.as_slice()).unwrap_or_default() {
            containers.push(ContainerSim::new(c, Kind::Regular));
        }
        Self {
            uid: pod.metadata.uid.clone().unwrap_or_default(),
            pod_ip,
            host_ip,
            start_time: None,
            containers,
            conditions: BTreeMap::new(),
            initialized: false,
            terminating: None,
            killed: false,
            terminated: false,
            next_instance: 0,
            images: None,
        }
    }

    /// The pod runs on a node that keeps the images it pulled (shared with its other pods).
    pub fn on_node_with_images(mut self, images: NodeImages) -> Self {
        self.images = Some(images);
        self
    }

    /// Whether the node already has `image` (always false when it keeps no images).
    fn has_image(&self, image: &str) -> bool {
        self.images
            .as_ref()
            .is_some_and(|i| i.lock().is_ok_and(|i| i.contains(image)))
    }

    pub fn pod_ip(&self) -> &str {
        &self.pod_ip
    }

    /// When [`advance`](Self::advance) has something to do next, if ever.
    pub fn next_deadline(&self) -> Option<Instant> {
        let steps = self.containers.iter().filter_map(|c| c.step.deadline());
        steps
            .chain(self.terminating.filter(|_| !self.terminated))
            .min()
    }

    /// Applies everything due at `now` for the pod as the API currently has it.
    pub fn advance(&mut self, pod: &Pod, delays: &Delays, now: Now) -> Outcome {
        let mut out = Outcome::default();
        if self.start_time.is_none() {
            self.start_time = Some(now.wall);
        }
        let pod_label = pod_label(pod);
        if pod.metadata.deletion_timestamp.is_some() && self.terminating.is_none() {
            let grace = pod
                .metadata
                .deletion_grace_period_seconds
                .map_or(delays.termination, |s| {
                    Duration::from_secs(s.max(0).unsigned_abs())
                });
            self.terminating = Some(now.mono + delays.termination.min(grace));
            self.killed = delays.termination > grace;
            for c in &mut self.containers {
                c.step = Step::Done;
                if c.instance.as_ref().is_some_and(Instance::running) {
                    out.events.push(event(
                        c,
                        "Normal",
                        "Killing",
                        format!("Stopping container {}", c.name),
                    ));
                }
            }
        }
        if let Some(at) = self.terminating {
            if !self.terminated && at <= now.mono {
                self.terminated = true;
                // As the real kubelet reports them: the image's exit code on SIGTERM (the test
                // images: 0 for Istio's proxy, 143 for the app), 137 when the grace period ran
                // out first. The pod's phase follows (Succeeded only if all exited 0).
                for c in &mut self.containers {
                    if let Some(i) = c.instance.as_mut().filter(|i| i.running()) {
                        let code = if self.killed {
                            137
                        } else {
                            crate::image::exit_code_on_sigterm(&i.image)
                        };
                        let reason = if code == 0 { "Completed" } else { "Error" };
                        terminate(i, code, reason, now.wall);
                    }
                }
                out.delete = true;
            }
            return out;
        }
        self.apply_spec_changes(pod, delays, now, &mut out);
        // Each pass may unblock the next init container; loop until nothing is due.
        loop {
            let mut changed = false;
            let mut may_start = true;
            let all_init_done = self
                .containers
                .iter()
                .filter(|c| c.kind != Kind::Regular)
                .all(ContainerSim::lets_next_start);
            if all_init_done {
                self.initialized = true;
            }
            for idx in 0..self.containers.len() {
                let allowed = match self.containers[idx].kind {
                    Kind::Init | Kind::Sidecar => may_start,
                    Kind::Regular => self.initialized,
                };
                changed |=
                    self.step_container(idx, allowed, pod, &pod_label, delays, now, &mut out);
                let c = &self.containers[idx];
                if c.kind != Kind::Regular && !c.lets_next_start() {
                    may_start = false;
                }
            }
            if !changed {
                break;
            }
        }
        out
    }

    /// A changed image restarts that container only; other spec changes are ignored.
    fn apply_spec_changes(&mut self, pod: &Pod, delays: &Delays, now: Now, out: &mut Outcome) {
        let Some(spec) = pod.spec.as_ref() else {
            return;
        };
        let keeps_images = self.images.is_some();
        let present: BTreeSet<String> = spec
            .init_containers
            .iter()
            .flatten()
            .chain(spec.containers.iter())
            .filter_map(|c| c.image.clone())
            .filter(|i| self.has_image(i))
            .collect();
        let images = spec
            .init_containers
            .iter()
            .flatten()
            .chain(spec.containers.iter())
            .map(|c| (c.name.as_str(), c.image.as_deref().unwrap_or_default()));
        for (name, image) in images {
            let Some(c) = self.containers.iter_mut().find(|c| c.name == name) else {
                continue;
            };
            if c.target == image {
                continue;
            }
            // kubelet never re-runs a run-to-completion init container that has completed.
            if c.kind == Kind::Init && c.completed() {
                continue;
            }
            c.target = image.to_owned();
            c.waiting = None;
            c.failures = 0;
            c.present = present.contains(image);
            let delays = &delays.for_container(pod, name);
            match c.step {
                Step::Idle => {}
                _ => {
                    if c.instance.as_ref().is_some_and(Instance::running) {
                        out.events.push(event(
                            c,
                            "Normal",
                            "Killing",
                            format!("Container {} definition changed, will be restarted", c.name),
                        ));
                    }
                    if let Some(i) = c.instance.as_mut().filter(|i| i.running()) {
                        let code = exit_code_on_sigterm(&i.image);
                        terminate(i, code, exit_reason(code), now.wall);
                    }
                    // `restart` is kill and start with the image at hand; a node that keeps
                    // its images adds the pull when the new image is not there yet.
                    let pull = if c.present {
                        Duration::ZERO
                    } else {
                        delays.pull
                    };
                    let wait = match (c.instance.is_some(), keeps_images) {
                        (true, false) => delays.restart,
                        (true, true) => delays.restart + pull,
                        (false, _) => pull,
                    };
                    c.step = Step::Start(now.mono + wait);
                }
            }
        }
    }

    /// Applies what is due for one container; true when something changed.
    #[allow(clippy::too_many_arguments)]
    fn step_container(
        &mut self,
        idx: usize,
        allowed: bool,
        pod: &Pod,
        pod_label: &str,
        delays: &Delays,
        now: Now,
        out: &mut Outcome,
    ) -> bool {
        let restart_on_failure =
            pod.spec.as_ref().and_then(|s| s.restart_policy.as_deref()) != Some("Never");
        let id = self.container_id(idx);
        let present = self.has_image(&self.containers[idx].target);
        let images = self.images.clone();
        let c = &mut self.containers[idx];
        let delays = &delays.for_container(pod, &c.name);
        match c.step {
            Step::Idle if allowed => {
                c.present = present;
                if present {
                    c.step = Step::Start(now.mono);
                } else {
                    out.events.push(event(
                        c,
                        "Normal",
                        "Pulling",
                        format!("Pulling image \"{}\"", c.target),
                    ));
                    c.step = Step::Start(now.mono + delays.pull);
                }
                true
            }
            Step::Start(at) if at <= now.mono => {
                let restart = restart_on_failure || c.kind == Kind::Sidecar;
                start(c, id, delays, now, restart, pod_label, out);
                // The pull succeeded unless the name was bad or the pull failed.
                let pulled = !matches!(c.waiting, Some(("ErrImagePull" | "InvalidImageName", _)));
                if let Some(images) = images.filter(|_| pulled)
                    && let Ok(mut images) = images.lock()
                {
                    images.insert(c.target.clone());
                }
                true
            }
            Step::PullBackOff(at) if at <= now.mono => {
                c.waiting = Some((
                    "ImagePullBackOff",
                    format!("Back-off pulling image \"{}\"", c.target),
                ));
                out.events.push(event(
                    c,
                    "Normal",
                    "BackOff",
                    format!("Back-off pulling image \"{}\"", c.target),
                ));
                out.events.push(event(
                    c,
                    "Warning",
                    "Failed",
                    "Error: ImagePullBackOff".to_owned(),
                ));
                c.step = Step::Start(now.mono + delays.backoff(c.failures));
                true
            }
            Step::CrashBackOff(at) if at <= now.mono => {
                let backoff = delays.backoff(c.failures.saturating_sub(1));
                restart_back_off(c, backoff, pod_label, out);
                c.step = Step::PullBackOff(now.mono + backoff);
                true
            }
            Step::Ready(at) if at <= now.mono => {
                if let Some(i) = c.instance.as_mut() {
                    i.ready = true;
                    i.started = true;
                }
                c.step = if injected(&c.target) == Injected::Flapping {
                    Step::Unready(now.mono + delays.readiness * 3)
                } else {
                    Step::Done
                };
                true
            }
            Step::Unready(at) if at <= now.mono => {
                if let Some(i) = c.instance.as_mut() {
                    i.ready = false;
                }
                c.step = Step::Ready(now.mono + delays.readiness);
                true
            }
            Step::Crash(at) if at <= now.mono => {
                if let Some(i) = c.instance.as_mut() {
                    terminate(i, 1, "Error", now.wall);
                }
                c.failures += 1;
                // Sidecars restart whatever the pod's restartPolicy (they have their own: Always).
                // As a real kubelet (1.35): the first exit of a container (per spec) restarts it
                // at once, its back-off starting there; at the next exit kubelet backs off (the
                // `BackOff` Event comes then) while the status keeps saying `terminated` until
                // it next syncs the pod — with nothing else to wake it, when the back-off ends.
                if !(restart_on_failure || c.kind == Kind::Sidecar) {
                    c.step = Step::Done;
                } else if c.failures == 1 {
                    c.step = Step::Start(now.mono + delays.restart);
                } else {
                    let backoff = delays.backoff(c.failures - 2);
                    out.events.push(back_off_event(c, pod_label));
                    c.step = Step::CrashLoopShown(now.mono + backoff);
                }
                true
            }
            Step::CrashLoopShown(at) if at <= now.mono => {
                let backoff = delays.backoff(c.failures - 2);
                c.waiting = Some(("CrashLoopBackOff", back_off_message(c, backoff, pod_label)));
                c.step = Step::Start(now.mono + delays.restart);
                true
            }
            Step::Complete(at) if at <= now.mono => {
                if let Some(i) = c.instance.as_mut() {
                    terminate(i, 0, "Completed", now.wall);
                    // kubelet reports a successfully completed init container as ready.
                    i.ready = true;
                }
                c.step = Step::Done;
                true
            }
            _ => false,
        }
    }

    fn container_id(&mut self, idx: usize) -> String {
        self.next_instance += 1;
        let seed = format!(
            "{}/{}/{}",
            self.uid, self.containers[idx].name, self.next_instance
        );
        let sum = ring::digest::digest(&ring::digest::SHA256, seed.as_bytes());
        format!("containerd://{}", crate::image::hex(sum.as_ref()))
    }

    /// The kubelet-owned part of the pod's status as a strategic-merge patch for
    /// `pods/status`: phase, the four kubelet conditions (merged by type, so conditions of
    /// other writers such as readiness gates are untouched), IPs, start time, container
    /// statuses. `metadata.uid` makes it a precondition, as kubelet does.
    pub fn status_patch(&mut self, pod: &Pod, now: Now) -> Value {
        self.update_conditions(pod, now);
        let has_init = self.containers.iter().any(|c| c.kind != Kind::Regular);
        let mut init_statuses = Vec::new();
        let mut statuses = Vec::new();
        for c in &self.containers {
            let s = container_status(c, has_init);
            if c.kind == Kind::Regular {
                statuses.push(s);
            } else {
                init_statuses.push(s);
            }
        }
        let conditions: Vec<Value> = OWNED_CONDITIONS
            .iter()
            .filter_map(|t| self.conditions.get(t).map(|c| (t, c)))
            .map(|(t, c)| {
                // Explicit nulls: in a strategic merge patch an absent field keeps the old
                // value, so a condition turning True would keep its old reason and message.
                json!({
                    "type": t,
                    "status": if c.status { "True" } else { "False" },
                    "lastProbeTime": null,
                    "lastTransitionTime": ts(c.last_transition),
                    "reason": c.reason,
                    "message": c.message,
                })
            })
            .collect();
        let mut status = json!({
            "phase": self.phase(pod),
            "conditions": conditions,
            "hostIP": self.host_ip,
            "hostIPs": [{"ip": self.host_ip}],
            "podIP": self.pod_ip,
            "podIPs": [{"ip": self.pod_ip}],
            "containerStatuses": statuses,
        });
        if let Some(t) = self.start_time {
            status["startTime"] = json!(ts(t));
        }
        if has_init {
            status["initContainerStatuses"] = json!(init_statuses);
        }
        if let Some(g) = pod.metadata.generation {
            status["observedGeneration"] = json!(g);
        }
        json!({"metadata": {"uid": self.uid}, "status": status})
    }

    fn phase(&self, pod: &Pod) -> &'static str {
        let regular: Vec<&ContainerSim> = self
            .containers
            .iter()
            .filter(|c| c.kind == Kind::Regular)
            .collect();
        let exits: Option<Vec<i32>> = regular
            .iter()
            .map(|c| {
                c.instance
                    .as_ref()
                    .and_then(|i| i.terminated.as_ref())
                    .map(|t| t.exit_code)
            })
            .collect();
        let never = pod.spec.as_ref().and_then(|s| s.restart_policy.as_deref()) == Some("Never");
        if let Some(exits) = exits.filter(|e| !e.is_empty()) {
            let pending_restart = regular.iter().any(|c| matches!(c.step, Step::Start(_)));
            if self.terminated || (never && !pending_restart) {
                return if exits.iter().all(|e| *e == 0) {
                    "Succeeded"
                } else {
                    "Failed"
                };
            }
        }
        if self.initialized && regular.iter().any(|c| c.instance.is_some()) {
            "Running"
        } else {
            "Pending"
        }
    }

    fn update_conditions(&mut self, pod: &Pod, now: Now) {
        let unready: Vec<&str> = self
            .containers
            .iter()
            .filter(|c| c.kind != Kind::Init && !c.ready())
            .map(|c| c.name.as_str())
            .collect();
        let incomplete: Vec<&str> = self
            .containers
            .iter()
            .filter(|c| c.kind != Kind::Regular && !c.lets_next_start())
            .map(|c| c.name.as_str())
            .collect();
        let containers_ready = unready.is_empty() && !self.terminated;
        let not_ready = || {
            let msg = format!("containers with unready status: [{}]", unready.join(" "));
            (Some("ContainersNotReady".to_owned()), Some(msg))
        };
        let gate_problem = pod
            .spec
            .as_ref()
            .and_then(|s| s.readiness_gates.as_ref())
            .into_iter()
            .flatten()
            .find_map(|g| {
                let t = &g.condition_type;
                let found = pod
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .and_then(|cs| cs.iter().find(|c| &c.type_ == t));
                match found {
                    None => Some(format!(
                        "corresponding condition of pod readiness gate \"{t}\" does not exist."
                    )),
                    Some(c) if c.status != "True" => Some(format!(
                        "the status of pod readiness gate \"{t}\" is not \"True\", but {}",
                        c.status
                    )),
                    Some(_) => None,
                }
            });
        let init = if self.initialized {
            (true, None, None)
        } else {
            let msg = format!(
                "containers with incomplete status: [{}]",
                incomplete.join(" ")
            );
            (
                false,
                Some("ContainersNotInitialized".to_owned()),
                Some(msg),
            )
        };
        let (cr_reason, cr_msg) = if containers_ready {
            (None, None)
        } else {
            not_ready()
        };
        let ready = match (&gate_problem, containers_ready) {
            (_, false) => (false, cr_reason.clone(), cr_msg.clone()),
            (Some(m), true) => (
                false,
                Some("ReadinessGatesNotReady".to_owned()),
                Some(m.clone()),
            ),
            (None, true) => (true, None, None),
        };
        let sandbox = !self.terminated;
        self.set_condition("PodReadyToStartContainers", (sandbox, None, None), now);
        self.set_condition("Initialized", init, now);
        self.set_condition(
            "ContainersReady",
            (containers_ready, cr_reason, cr_msg),
            now,
        );
        self.set_condition("Ready", ready, now);
    }

    /// `lastTransitionTime` moves only when the status flips.
    fn set_condition(
        &mut self,
        type_: &'static str,
        (status, reason, message): (bool, Option<String>, Option<String>),
        now: Now,
    ) {
        let last_transition = match self.conditions.get(type_) {
            Some(old) if old.status == status => old.last_transition,
            _ => now.wall,
        };
        self.conditions.insert(
            type_,
            Condition {
                status,
                reason,
                message,
                last_transition,
            },
        );
    }
}

/// Starts the container's target image now, or fails the way the image says.
/// Pulls (the image is known, or a `fail-pull` name fails) and starts the container: as
/// kubelet does, the pull comes first, then the runtime creates and starts the container,
/// which fails (`StartError`, exit code 128) when its command is a path the image lacks.
fn start(
    c: &mut ContainerSim,
    id: String,
    delays: &Delays,
    now: Now,
    restart: bool,
    pod_label: &str,
    out: &mut Outcome,
) {
    let image = c.target.clone();
    let parsed = match ImageRef::parse(&image) {
        Ok(p) => p,
        Err(e) => {
            c.waiting = Some((
                "InvalidImageName",
                format!("Failed to apply default image tag \"{image}\": {e}"),
            ));
            out.events.push(event(
                c,
                "Warning",
                "InspectFailed",
                format!("Failed to apply default image tag \"{image}\": {e}"),
            ));
            out.events.push(event(
                c,
                "Warning",
                "Failed",
                "Error: InvalidImageName".to_owned(),
            ));
            c.step = Step::Done;
            return;
        }
    };
    let injection = injected(&image);
    if injection == Injected::FailPull {
        let message = format!(
            "Failed to pull image \"{image}\": rpc error: code = NotFound desc = failed to pull and unpack image \"{image}\": not found"
        );
        out.events
            .push(event(c, "Warning", "Failed", message.clone()));
        out.events.push(event(
            c,
            "Warning",
            "Failed",
            "Error: ErrImagePull".to_owned(),
        ));
        c.waiting = Some(("ErrImagePull", message));
        c.failures += 1;
        let at = now.mono + delays.backoff(c.failures - 1);
        // kubelet kills the old container before it pulls; that container's exit feeds the
        // restart back-off, so the reasons cycle through CrashLoopBackOff too.
        c.step = if c.instance.as_ref().is_some_and(|i| !i.running()) {
            Step::CrashBackOff(at)
        } else {
            Step::PullBackOff(at)
        };
        return;
    }
    let pulled = if c.present {
        format!("Container image \"{image}\" already present on machine")
    } else {
        format!(
            "Successfully pulled image \"{image}\" in {}",
            human(delays.pull)
        )
    };
    out.events.push(event(c, "Normal", "Pulled", pulled));
    out.events.push(event(
        c,
        "Normal",
        "Created",
        format!("Created container: {}", c.name),
    ));
    if let Some(missing) = c
        .command
        .clone()
        .filter(|cmd| cmd.starts_with('/') && !crate::images::EXECUTABLES.contains(&cmd.as_str()))
    {
        start_error(
            c,
            id,
            parsed.image_id(),
            &missing,
            delays,
            now,
            restart,
            pod_label,
            out,
        );
        return;
    }
    out.events.push(event(
        c,
        "Normal",
        "Started",
        format!("Started container {}", c.name),
    ));
    let image_id = parsed.image_id();
    // containerd names the image a container runs by the first name it knows for that image,
    // fully qualified (`docker.io/library/nginx:1.25` for `nginx:1.25`); after a same-digest
    // retag that is the tag the container ran before, not the spec string (tests/contract.rs
    // `retag_…`, on the real kubelet). Status readers that compare names hang here as they do
    // there (OpenKruise's CloneSet does: docs/comparison.md).
    let image = match &c.instance {
        Some(old) if old.image_id == image_id => old.image.clone(),
        _ => parsed.normalised(),
    };
    if let Some(old) = c.instance.take() {
        if let Some(t) = old.terminated {
            c.previous = Some((old.id, old.image, old.image_id, t));
        }
        c.restart_count += 1;
    }
    let probed = c.probed || c.startup_probe;
    c.instance = Some(Instance {
        id,
        image,
        image_id,
        started_at: now.wall,
        ready: false,
        started: !c.startup_probe,
        terminated: None,
    });
    c.waiting = None;
    c.step = match (c.kind, injection) {
        (_, Injected::CrashLoop) => Step::Crash(now.mono + delays.crash),
        (Kind::Init, _) => Step::Complete(now.mono + delays.init),
        (_, Injected::NeverReady) => Step::Done,
        (_, Injected::Flapping) => Step::Ready(now.mono + delays.readiness),
        (_, _) if probed => Step::Ready(now.mono + delays.readiness),
        _ => {
            if let Some(i) = c.instance.as_mut() {
                i.ready = true;
            }
            Step::Done
        }
    };
}

/// The runtime could not exec the command (containerd 1.6 + runc, as a real node reports it):
/// a `Failed` Event, the container `terminated` (`StartError`, exit code 128, never started),
/// then kubelet's restart back-off unless the pod never restarts.
#[allow(clippy::too_many_arguments)]
fn start_error(
    c: &mut ContainerSim,
    id: String,
    image_id: String,
    missing: &str,
    delays: &Delays,
    now: Now,
    restart: bool,
    pod_label: &str,
    out: &mut Outcome,
) {
    let message = format!(
        "failed to create containerd task: failed to create shim task: OCI runtime create failed: runc create failed: unable to start container process: exec: \"{missing}\": stat {missing}: no such file or directory: unknown"
    );
    out.events
        .push(event(c, "Warning", "Failed", format!("Error: {message}")));
    if let Some(old) = c.instance.take() {
        if let Some(t) = old.terminated {
            c.previous = Some((old.id, old.image, old.image_id, t));
        }
        c.restart_count += 1;
    }
    c.instance = Some(Instance {
        id,
        image: c.target.clone(),
        image_id,
        started_at: DateTime::<Utc>::UNIX_EPOCH,
        ready: false,
        started: false,
        terminated: Some(Terminated {
            exit_code: 128,
            reason: "StartError",
            message: Some(message),
            started_at: DateTime::<Utc>::UNIX_EPOCH,
            finished_at: now.wall,
        }),
    });
    c.waiting = None;
    c.failures += 1;
    if restart {
        let backoff = delays.backoff(c.failures - 1);
        restart_back_off(c, backoff, pod_label, out);
        c.step = Step::Start(now.mono + backoff);
    } else {
        c.step = Step::Done;
    }
}

/// kubelet's restart back-off: waiting `CrashLoopBackOff` and a `BackOff` Warning Event.
fn restart_back_off(c: &mut ContainerSim, backoff: Duration, pod_label: &str, out: &mut Outcome) {
    c.waiting = Some(("CrashLoopBackOff", back_off_message(c, backoff, pod_label)));
    out.events.push(back_off_event(c, pod_label));
}

/// The waiting message of `CrashLoopBackOff`, as kubelet words it.
fn back_off_message(c: &ContainerSim, backoff: Duration, pod_label: &str) -> String {
    format!(
        "back-off {} restarting failed container={} pod={pod_label}",
        human(backoff),
        c.name
    )
}

/// kubelet's `BackOff` Warning Event for a container it will not restart yet.
fn back_off_event(c: &ContainerSim, pod_label: &str) -> SimEvent {
    event(
        c,
        "Warning",
        "BackOff",
        format!(
            "Back-off restarting failed container {} in pod {pod_label}",
            c.name
        ),
    )
}

/// kubelet's `terminated.reason` for an exit code.
fn exit_reason(code: i32) -> &'static str {
    if code == 0 { "Completed" } else { "Error" }
}

fn terminate(i: &mut Instance, exit_code: i32, reason: &'static str, at: DateTime<Utc>) {
    i.ready = false;
    i.started = false;
    i.terminated = Some(Terminated {
        exit_code,
        reason,
        message: None,
        started_at: i.started_at,
        finished_at: at,
    });
}

fn container_status(c: &ContainerSim, has_init: bool) -> Value {
    let default_waiting = if has_init {
        "PodInitializing"
    } else {
        "ContainerCreating"
    };
    let terminated = |id: &str, t: &Terminated| {
        let mut state = json!({"terminated": {
            "containerID": id,
            "exitCode": t.exit_code,
            "reason": t.reason,
            "startedAt": ts(t.started_at),
            "finishedAt": ts(t.finished_at),
        }});
        if let Some(m) = &t.message {
            state["terminated"]["message"] = json!(m);
        }
        state
    };
    let mut last_state = match &c.previous {
        Some((id, _, _, t)) => terminated(id, t),
        None => json!({}),
    };
    let (image, image_id, state) = match &c.instance {
        None => {
            let (reason, message) = c
                .waiting
                .clone()
                .unwrap_or((default_waiting, String::new()));
            let mut w = json!({"reason": reason});
            if !message.is_empty() {
                w["message"] = json!(message);
            }
            (c.target.clone(), String::new(), json!({"waiting": w}))
        }
        Some(i) => {
            let state = match (&i.terminated, &c.waiting) {
                (None, _) => json!({"running": {"startedAt": ts(i.started_at)}}),
                // kubelet assumes an init container that exited 0 is never restarted and
                // shows it terminated, without the reason it cannot start: a native sidecar
                // whose old process exited 0 on SIGTERM, patched to an image that cannot
                // start, stays `terminated` (Completed, old containerID); only the pod's
                // Events tell the failure.
                (Some(t), Some(_)) if c.kind != Kind::Regular && t.exit_code == 0 => {
                    terminated(&i.id, t)
                }
                (Some(t), Some((reason, message))) => {
                    // Like kubelet: the dead container becomes lastState, the failure the
                    // waiting reason.
                    last_state = terminated(&i.id, t);
                    json!({"waiting": {"reason": reason, "message": message}})
                }
                (Some(t), None) => terminated(&i.id, t),
            };
            (i.image.clone(), i.image_id.clone(), state)
        }
    };
    let mut s = json!({
        "name": c.name,
        "image": image,
        "imageID": image_id,
        "ready": c.ready(),
        "started": c.instance.as_ref().is_some_and(|i| i.running() && i.started),
        "restartCount": c.restart_count,
        "state": state,
        "lastState": last_state,
    });
    if let Some(i) = &c.instance {
        s["containerID"] = json!(i.id);
    }
    s
}

fn event(c: &ContainerSim, type_: &'static str, reason: &'static str, message: String) -> SimEvent {
    SimEvent {
        type_,
        reason,
        message,
        field_path: Some(c.field_path()),
    }
}

fn pod_label(pod: &Pod) -> String {
    format!(
        "{}_{}({})",
        pod.metadata.name.as_deref().unwrap_or_default(),
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.uid.as_deref().unwrap_or_default()
    )
}

/// Kubernetes timestamps are RFC 3339 with second precision.
pub fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn human(d: Duration) -> String {
    if d.as_millis().is_multiple_of(1000) {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Harness {
        sim: PodSim,
        pod: Pod,
        now: Now,
        delays: Delays,
        events: Vec<SimEvent>,
        status: Value,
        deleted: bool,
    }

    impl Harness {
        fn new(pod: Value) -> Self {
            Self::start(pod, None)
        }

        /// A pod on a node that keeps its images in `images`.
        fn on_node(pod: Value, images: &NodeImages) -> Self {
            Self::start(pod, Some(images.clone()))
        }

        fn start(pod: Value, images: Option<NodeImages>) -> Self {
            let pod: Pod = serde_json::from_value(pod).unwrap();
            let mut sim = PodSim::new(&pod, "10.128.0.7".into(), "172.20.0.2".into());
            if let Some(images) = images {
                sim = sim.on_node_with_images(images);
            }
            let mut h = Self {
                sim,
                pod,
                now: Now::current(),
                delays: Delays::default(),
                events: Vec::new(),
                status: Value::Null,
                deleted: false,
            };
            h.pass();
            h
        }

        /// Ticks until `f` holds and returns the simulated time it took.
        fn time_until(&mut self, what: &str, f: impl Fn(&Value) -> bool) -> Duration {
            let t0 = self.now.mono;
            self.until(what, f);
            self.now.mono - t0
        }

        fn pass(&mut self) {
            let out = self
                .sim
                .advance(&self.pod, &self.delays.for_pod(&self.pod), self.now);
            self.events.extend(out.events);
            self.deleted |= out.delete;
            self.status = self.sim.status_patch(&self.pod, self.now)["status"].clone();
        }

        /// Jumps the clock to the next deadline and advances; false when none is left.
        fn tick(&mut self) -> bool {
            let Some(d) = self.sim.next_deadline() else {
                return false;
            };
            let step = d.saturating_duration_since(self.now.mono);
            self.now = Now {
                mono: d,
                wall: self.now.wall + chrono::Duration::from_std(step).unwrap(),
            };
            self.pass();
            true
        }

        /// Ticks until `f` holds; panics (this is a test) after 50 steps.
        fn until(&mut self, what: &str, f: impl Fn(&Value) -> bool) {
            for _ in 0..50 {
                if f(&self.status) {
                    return;
                }
                if !self.tick() {
                    break;
                }
            }
            panic!("never reached: {what}; status {}", self.status);
        }

        fn set_image(&mut self, list: &str, idx: usize, image: &str) {
            let mut v = serde_json::to_value(&self.pod).unwrap();
            v["spec"][list][idx]["image"] = json!(image);
            self.pod = serde_json::from_value(v).unwrap();
            self.pass();
        }

        fn set_status_condition(&mut self, type_: &str, status: &str) {
            let mut v = serde_json::to_value(&self.pod).unwrap();
            v["status"] = json!({"conditions": [{"type": type_, "status": status}]});
            self.pod = serde_json::from_value(v).unwrap();
            self.pass();
        }

        fn condition(&self, type_: &str) -> Value {
            self.status["conditions"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["type"] == type_)
                .cloned()
                .unwrap()
        }

        fn reasons(&self) -> Vec<&'static str> {
            self.events.iter().map(|e| e.reason).collect()
        }
    }

    fn pod(spec: Value) -> Value {
        json!({"metadata": {"name": "p", "namespace": "ns", "uid": "u-1", "generation": 1}, "spec": spec})
    }

    fn app(name: &str, image: &str) -> Value {
        json!({"name": name, "image": image})
    }

    fn cs<'a>(status: &'a Value, list: &str, name: &str) -> &'a Value {
        status[list]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap()
    }

    fn ready(s: &Value) -> bool {
        s["conditions"].as_array().is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
    }

    #[test]
    fn container_without_probe_is_ready_once_running() {
        let mut h = Harness::new(pod(json!({"containers": [app("a", "nginx:1")]})));
        assert_eq!(h.status["phase"], "Pending");
        assert_eq!(
            cs(&h.status, "containerStatuses", "a")["state"]["waiting"]["reason"],
            "ContainerCreating"
        );
        h.until("Ready", ready);
        let c = cs(&h.status, "containerStatuses", "a");
        assert_eq!(h.status["phase"], "Running");
        assert_eq!(c["image"], "docker.io/library/nginx:1");
        // containerd's image ID of an image present without a repository digest.
        assert!(c["imageID"].as_str().unwrap().starts_with("sha256:"));
        assert!(
            c["containerID"]
                .as_str()
                .unwrap()
                .starts_with("containerd://")
        );
        assert_eq!(c["started"], true);
        assert_eq!(h.status["podIP"], "10.128.0.7");
        assert_eq!(h.status["observedGeneration"], 1);
        assert_eq!(h.reasons(), ["Pulling", "Pulled", "Created", "Started"]);
    }

    /// The pre-pull pod's container (src/prepull.rs): a command the image lacks. Pulled
    /// first, then the runtime fails to exec it: `StartError`, exit code 128, never started;
    /// with restartPolicy Never the pod fails; with Always kubelet backs off and retries.
    #[test]
    fn a_command_the_image_lacks_fails_to_start_after_the_pull() {
        let mut c = app("prepull", "registry.inplace.test/testapp:2.0");
        c["command"] = json!(["/.inplace-upgrade-prepull/does-not-exist"]);
        let mut h = Harness::new(pod(
            json!({"containers": [c.clone()], "restartPolicy": "Never"}),
        ));
        h.until("Failed", |s| s["phase"] == "Failed");
        let status = cs(&h.status, "containerStatuses", "prepull");
        let t = &status["state"]["terminated"];
        assert_eq!(
            (t["reason"].as_str(), t["exitCode"].as_i64()),
            (Some("StartError"), Some(128))
        );
        assert_eq!(t["startedAt"], "1970-01-01T00:00:00Z");
        assert!(
            t["message"]
                .as_str()
                .unwrap()
                .contains("no such file or directory")
        );
        assert!(status["imageID"].as_str().unwrap().starts_with("sha256:"));
        assert_eq!(status["started"], false);
        assert_eq!(h.reasons(), ["Pulling", "Pulled", "Created", "Failed"]);
        // The image's own entrypoint path exists: it starts.
        c["command"] = json!(["/usr/local/bin/testapp"]);
        let mut h = Harness::new(pod(
            json!({"containers": [c.clone()], "restartPolicy": "Never"}),
        ));
        h.until("Running", |s| s["phase"] == "Running");
        // Restarted with back-off under restartPolicy Always.
        c["command"] = json!(["/nope"]);
        let mut h = Harness::new(pod(json!({"containers": [c]})));
        h.until("CrashLoopBackOff", |s| {
            cs(s, "containerStatuses", "prepull")["state"]["waiting"]["reason"]
                == "CrashLoopBackOff"
        });
    }

    #[test]
    fn readiness_probe_delays_ready() {
        let mut c = app("a", "nginx:1");
        c["readinessProbe"] = json!({"httpGet": {"port": 80}});
        let mut h = Harness::new(pod(json!({"containers": [c]})));
        h.until("running", |s| {
            cs(s, "containerStatuses", "a")["state"]["running"].is_object()
        });
        assert_eq!(cs(&h.status, "containerStatuses", "a")["ready"], false);
        assert!(!ready(&h.status));
        h.until("Ready", ready);
    }

    #[test]
    fn ready_honours_readiness_gates_and_keeps_transition_times() {
        let mut p = pod(
            json!({"containers": [app("a", "nginx:1")], "readinessGates": [{"conditionType": "x.io/ready"}]}),
        );
        p["status"] = json!({});
        let mut h = Harness::new(p);
        h.until("ContainersReady", |s| {
            s["conditions"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["type"] == "ContainersReady" && c["status"] == "True")
        });
        let r = h.condition("Ready");
        assert_eq!(r["status"], "False");
        assert_eq!(r["reason"], "ReadinessGatesNotReady");
        assert!(
            r["message"].as_str().unwrap().contains("does not exist"),
            "{r}"
        );
        let containers_ready_since = h.condition("ContainersReady")["lastTransitionTime"].clone();

        h.now.wall += chrono::Duration::seconds(5);
        h.set_status_condition("x.io/ready", "False");
        assert!(
            h.condition("Ready")["message"]
                .as_str()
                .unwrap()
                .contains("but False")
        );
        h.now.wall += chrono::Duration::seconds(5);
        h.set_status_condition("x.io/ready", "True");
        assert!(ready(&h.status));
        // The patch clears the old reason and message (null deletes in a merge patch).
        assert_eq!(h.condition("Ready")["reason"], Value::Null);
        assert!(
            h.condition("Ready")
                .as_object()
                .unwrap()
                .contains_key("message")
        );
        let since = h.condition("Ready")["lastTransitionTime"].clone();
        assert_eq!(
            h.condition("ContainersReady")["lastTransitionTime"],
            containers_ready_since
        );
        // Never own the gate's condition.
        assert!(
            h.status["conditions"]
                .as_array()
                .unwrap()
                .iter()
                .all(|c| c["type"] != "x.io/ready")
        );

        h.now.wall += chrono::Duration::seconds(5);
        h.pass();
        assert_eq!(h.condition("Ready")["lastTransitionTime"], since);
        h.set_status_condition("x.io/ready", "False");
        assert!(!ready(&h.status));
        assert_ne!(h.condition("Ready")["lastTransitionTime"], since);
    }

    #[test]
    fn image_change_restarts_only_that_container() {
        let mut h = Harness::new(pod(
            json!({"containers": [app("a", "nginx:1"), app("b", "redis:7")]}),
        ));
        h.until("Ready", ready);
        let old_a = cs(&h.status, "containerStatuses", "a")["containerID"].clone();
        let old_b = cs(&h.status, "containerStatuses", "b")["containerID"].clone();
        h.events.clear();
        h.set_image("containers", 0, "nginx:2");
        let a = cs(&h.status, "containerStatuses", "a");
        assert_eq!(a["ready"], false);
        assert_eq!(a["state"]["terminated"]["containerID"], old_a);
        assert_eq!(h.reasons(), ["Killing"]);
        assert!(h.events[0].message.contains("definition changed"));
        assert!(!ready(&h.status));
        h.until("Ready again", ready);
        let a = cs(&h.status, "containerStatuses", "a");
        assert_ne!(a["containerID"], old_a);
        assert_eq!(a["image"], "docker.io/library/nginx:2");
        assert_eq!(a["restartCount"], 1);
        assert_eq!(a["lastState"]["terminated"]["containerID"], old_a);
        let b = cs(&h.status, "containerStatuses", "b");
        assert_eq!(b["containerID"], old_b);
        assert_eq!(b["restartCount"], 0);
        assert_eq!(h.status["podIP"], "10.128.0.7");
    }

    #[test]
    fn retagged_digest_keeps_image_id_but_restarts() {
        let mut h = Harness::new(pod(json!({"containers": [app("a", "proxy:1.0--d1")]})));
        h.until("Ready", ready);
        let before = cs(&h.status, "containerStatuses", "a").clone();
        h.set_image("containers", 0, "proxy:stable--d1");
        h.until("Ready again", ready);
        let after = cs(&h.status, "containerStatuses", "a");
        assert_eq!(after["imageID"], before["imageID"]);
        assert_ne!(after["containerID"], before["containerID"]);
        // The runtime's first name for the image, as containerd reports it: the old tag.
        assert_eq!(after["image"], "docker.io/library/proxy:1.0--d1");
    }

    #[test]
    fn init_containers_run_in_order_and_sidecars_keep_running() {
        let mut sidecar = app("istio-proxy", "proxyv2:1");
        sidecar["restartPolicy"] = json!("Always");
        sidecar["readinessProbe"] = json!({"httpGet": {"port": 15021}});
        let mut h = Harness::new(pod(json!({
            "initContainers": [app("istio-init", "proxyv2:1"), sidecar],
            "containers": [app("app", "nginx:1")],
        })));
        assert_eq!(
            cs(&h.status, "containerStatuses", "app")["state"]["waiting"]["reason"],
            "PodInitializing"
        );
        assert_eq!(h.condition("Initialized")["status"], "False");
        h.until("istio-init completed", |s| {
            cs(s, "initContainerStatuses", "istio-init")["state"]["terminated"]["reason"]
                == "Completed"
        });
        // The sidecar had not started while istio-init ran.
        let started: Vec<_> = h
            .events
            .iter()
            .filter(|e| e.reason == "Started")
            .map(|e| e.field_path.clone().unwrap())
            .collect();
        assert_eq!(started, ["spec.initContainers{istio-init}"]);
        h.until("Ready", ready);
        let init = cs(&h.status, "initContainerStatuses", "istio-init");
        assert_eq!(init["ready"], true);
        assert_eq!(init["state"]["terminated"]["exitCode"], 0);
        let proxy = cs(&h.status, "initContainerStatuses", "istio-proxy");
        assert!(proxy["state"]["running"].is_object());
        assert_eq!(proxy["ready"], true);
        assert_eq!(h.condition("Initialized")["status"], "True");

        let old = proxy["containerID"].clone();
        let app_id = cs(&h.status, "containerStatuses", "app")["containerID"].clone();
        let init_id = init["containerID"].clone();
        h.set_image("initContainers", 1, "proxyv2:2");
        assert!(
            !ready(&h.status),
            "a restarting sidecar makes the pod unready"
        );
        h.until("Ready again", ready);
        let proxy = cs(&h.status, "initContainerStatuses", "istio-proxy");
        assert_ne!(proxy["containerID"], old);
        assert_eq!(proxy["restartCount"], 1);
        assert_eq!(
            cs(&h.status, "containerStatuses", "app")["containerID"],
            app_id
        );
        assert_eq!(
            cs(&h.status, "initContainerStatuses", "istio-init")["containerID"],
            init_id
        );
    }

    #[test]
    fn fail_pull_alternates_err_image_pull_and_back_off() {
        let mut h = Harness::new(pod(json!({"containers": [app("a", "nginx:fail-pull")]})));
        let reason = |s: &Value| {
            cs(s, "containerStatuses", "a")["state"]["waiting"]["reason"]
                .as_str()
                .map(str::to_owned)
        };
        h.until("ErrImagePull", |s| {
            reason(s).as_deref() == Some("ErrImagePull")
        });
        h.until("ImagePullBackOff", |s| {
            reason(s).as_deref() == Some("ImagePullBackOff")
        });
        h.until("ErrImagePull again", |s| {
            reason(s).as_deref() == Some("ErrImagePull")
        });
        assert_eq!(h.status["phase"], "Pending");
        // A fixed image recovers without waiting for the back-off.
        h.set_image("containers", 0, "nginx:1");
        h.until("Ready", ready);
    }

    /// Every distinct waiting reason of `name` in order while ticking `steps` times.
    fn reasons_over(h: &mut Harness, list: &str, name: &str, steps: usize) -> Vec<String> {
        let mut seen: Vec<String> = Vec::new();
        for _ in 0..steps {
            let r = cs(&h.status, list, name)["state"]["waiting"]["reason"]
                .as_str()
                .map(str::to_owned);
            if let Some(r) = r
                && seen.last() != Some(&r)
            {
                seen.push(r);
            }
            if !h.tick() {
                break;
            }
        }
        seen
    }

    #[test]
    fn an_image_change_to_a_missing_image_cycles_through_crash_loop_back_off() {
        // The old container is killed first (exit 143: SIGTERM kills the app), then the pull
        // fails; that exit feeds kubelet's restart back-off.
        let mut h = Harness::new(pod(json!({"containers": [app("a", "nginx:1")]})));
        h.until("Ready", ready);
        let old = cs(&h.status, "containerStatuses", "a")["containerID"].clone();
        h.set_image("containers", 0, "nginx:2-fail-pull");
        let killed = &cs(&h.status, "containerStatuses", "a")["state"]["terminated"];
        assert_eq!(
            (killed["exitCode"].clone(), killed["reason"].clone()),
            (json!(143), json!("Error"))
        );
        let seen = reasons_over(&mut h, "containerStatuses", "a", 12);
        assert_eq!(
            seen[..4],
            [
                "ErrImagePull",
                "CrashLoopBackOff",
                "ImagePullBackOff",
                "ErrImagePull"
            ],
            "{seen:?}"
        );
        let a = cs(&h.status, "containerStatuses", "a");
        assert_eq!(a["lastState"]["terminated"]["containerID"], old);
        assert!(h.reasons().contains(&"BackOff") && h.reasons().contains(&"Failed"));
    }

    fn sidecar_pod(proxy: &str) -> Value {
        pod(json!({
            "initContainers": [{"name": "istio-proxy", "image": proxy, "restartPolicy": "Always"}],
            "containers": [app("app", "hello:1")],
        }))
    }

    #[test]
    fn a_native_sidecar_that_exited_0_shows_no_waiting_reason_only_events() {
        let mut h = Harness::new(sidecar_pod("registry.istio.io/testing/proxyv2:latest"));
        h.until("Ready", ready);
        let old = cs(&h.status, "initContainerStatuses", "istio-proxy")["containerID"].clone();
        h.events.clear();
        h.set_image(
            "initContainers",
            0,
            "registry.istio.io/testing/proxyv2:1.24.2-fail-pull",
        );
        let seen = reasons_over(&mut h, "initContainerStatuses", "istio-proxy", 12);
        assert!(seen.is_empty(), "no waiting reason ever: {seen:?}");
        let proxy = cs(&h.status, "initContainerStatuses", "istio-proxy");
        let t = &proxy["state"]["terminated"];
        assert_eq!(t["containerID"], old);
        assert_eq!(
            (t["exitCode"].clone(), t["reason"].clone()),
            (json!(0), json!("Completed"))
        );
        assert_eq!(
            (proxy["ready"].clone(), proxy["started"].clone()),
            (json!(false), json!(false))
        );
        // The Events say it, for that container.
        let failed: Vec<&SimEvent> = h.events.iter().filter(|e| e.reason == "Failed").collect();
        assert!(
            failed.iter().any(|e| e.message.contains("ErrImagePull")),
            "{failed:?}"
        );
        assert!(h.reasons().contains(&"BackOff"));
        assert!(
            h.events
                .iter()
                .filter(|e| e.reason != "Killing")
                .all(|e| { e.field_path.as_deref() == Some("spec.initContainers{istio-proxy}") })
        );
    }

    #[test]
    fn a_native_sidecar_that_exited_143_shows_the_reasons() {
        let mut h = Harness::new(sidecar_pod(
            "registry.istio.io/testing/proxyv2:latest-exit143",
        ));
        h.until("Ready", ready);
        h.set_image(
            "initContainers",
            0,
            "registry.istio.io/testing/proxyv2:1.24.2-fail-pull",
        );
        let seen = reasons_over(&mut h, "initContainerStatuses", "istio-proxy", 12);
        assert_eq!(
            seen[..3],
            ["ErrImagePull", "CrashLoopBackOff", "ImagePullBackOff"],
            "{seen:?}"
        );
    }

    #[test]
    fn crashloop_restarts_with_back_off() {
        let mut h = Harness::new(pod(json!({"containers": [app("a", "app:crashloop")]})));
        let c = |s: &Value| cs(s, "containerStatuses", "a").clone();
        h.until("CrashLoopBackOff", |s| {
            c(s)["state"]["waiting"]["reason"] == "CrashLoopBackOff"
        });
        assert_eq!(c(&h.status)["lastState"]["terminated"]["exitCode"], 1);
        assert_eq!(c(&h.status)["lastState"]["terminated"]["reason"], "Error");
        h.until("restartCount 2", |s| c(s)["restartCount"] == 2);
        assert!(h.reasons().contains(&"BackOff"));
        assert!(!ready(&h.status));
    }

    /// As a real kubelet showed it (an image patched to `testapp:2.0-crashloop`, no probes; a
    /// fresh pod counts one restart less): terminated (restartCount 1), restarted at once,
    /// terminated again (2) and so for the 10 s back-off, `CrashLoopBackOff` only at its end,
    /// then restarted (3).
    #[test]
    fn a_crash_loop_restarts_once_at_once_then_backs_off_still_terminated() {
        let mut h = Harness::new(pod(json!({"containers": [app("a", "app:crashloop")]})));
        let c = |s: &Value| cs(s, "containerStatuses", "a").clone();
        h.until("terminated", |s| c(s)["state"]["terminated"].is_object());
        assert_eq!(c(&h.status)["restartCount"], 0);
        h.until("restartCount 1", |s| c(s)["restartCount"] == 1);
        assert!(
            !h.reasons().contains(&"BackOff"),
            "the first restart is at once"
        );
        h.until("terminated again", |s| {
            c(s)["state"]["terminated"]["exitCode"] == 1 && c(s)["restartCount"] == 1
        });
        assert!(
            h.reasons().contains(&"BackOff"),
            "backing off from the second exit"
        );
        h.until("CrashLoopBackOff", |s| {
            c(s)["state"]["waiting"]["reason"] == "CrashLoopBackOff"
        });
        assert_eq!(c(&h.status)["restartCount"], 1);
        assert_eq!(c(&h.status)["lastState"]["terminated"]["exitCode"], 1);
        h.until("restartCount 2", |s| c(s)["restartCount"] == 2);
    }

    #[test]
    fn never_ready_runs_but_is_never_ready() {
        let mut h = Harness::new(pod(json!({"containers": [app("a", "app:never-ready")]})));
        h.until("running", |s| {
            cs(s, "containerStatuses", "a")["state"]["running"].is_object()
        });
        while h.tick() {}
        assert_eq!(cs(&h.status, "containerStatuses", "a")["ready"], false);
        assert!(!ready(&h.status));
        assert_eq!(h.status["phase"], "Running");
    }

    #[test]
    fn flapping_container_turns_ready_and_not_ready_in_turn() {
        let mut h = Harness::new(pod(json!({"containers": [app("a", "app:flapping")]})));
        let ready_a = |s: &Value| cs(s, "containerStatuses", "a")["ready"] == true;
        for round in 0..3 {
            h.until(&format!("ready, round {round}"), |s| ready_a(s) && ready(s));
            let id = cs(&h.status, "containerStatuses", "a")["containerID"].clone();
            h.until(&format!("not ready, round {round}"), |s| {
                !ready_a(s) && !ready(s)
            });
            let a = cs(&h.status, "containerStatuses", "a");
            assert_eq!(a["containerID"], id, "a readiness flip is not a restart");
            assert_eq!(a["restartCount"], 0);
            assert!(a["state"]["running"].is_object());
        }
    }

    #[test]
    fn invalid_reference_is_invalid_image_name() {
        let mut h = Harness::new(pod(json!({"containers": [app("a", "Not A Valid:ref")]})));
        h.until("InvalidImageName", |s| {
            cs(s, "containerStatuses", "a")["state"]["waiting"]["reason"] == "InvalidImageName"
        });
    }

    #[test]
    fn graceful_deletion_stops_containers_then_deletes() {
        // (image, grace seconds, exit code, phase): the image's exit on SIGTERM within the
        // grace period, 137 when the termination delay outlasts it.
        for (image, grace, code, phase) in [
            ("nginx:1", 30, 143, "Failed"),
            (
                "registry.inplace.test/testapp:1.0-exit0",
                30,
                0,
                "Succeeded",
            ),
            (
                "registry.istio.io/testing/proxyv2:1.24.2",
                30,
                0,
                "Succeeded",
            ),
            ("registry.istio.io/testing/proxyv2:1.24.2", 0, 137, "Failed"),
        ] {
            let mut h = Harness::new(pod(json!({"containers": [app("a", image)]})));
            h.until("Ready", ready);
            let mut v = serde_json::to_value(&h.pod).unwrap();
            v["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
            v["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
            h.pod = serde_json::from_value(v).unwrap();
            h.events.clear();
            h.pass();
            assert_eq!(h.reasons(), ["Killing"]);
            h.until("terminated", |s| {
                cs(s, "containerStatuses", "a")["state"]["terminated"].is_object()
            });
            assert!(h.deleted);
            let t = &cs(&h.status, "containerStatuses", "a")["state"]["terminated"];
            assert_eq!(t["exitCode"], code, "{image} grace {grace}");
            assert_eq!(h.status["phase"], phase, "{image} grace {grace}");
            assert!(!ready(&h.status));
        }
    }

    #[test]
    fn delays_come_from_annotations() {
        let p: Pod = serde_json::from_value(json!({"metadata": {"annotations": {
            "sim.inplace-upgrade.io/restart-delay-ms": "2500",
            "sim.inplace-upgrade.io/readiness-delay-ms": "oops",
        }}}))
        .unwrap();
        let d = Delays::default().for_pod(&p);
        assert_eq!(d.restart, Duration::from_millis(2500));
        assert_eq!(d.readiness, Delays::default().readiness);
    }

    fn runs(image: &'static str) -> impl Fn(&Value) -> bool {
        move |s: &Value| {
            let c = cs(s, "containerStatuses", "a");
            c["state"]["running"].is_object() && c["image"].as_str().unwrap().ends_with(image)
        }
    }

    #[test]
    fn a_node_that_keeps_images_pulls_each_image_once() {
        let images = NodeImages::default();
        let d = Delays::default();
        let mut first =
            Harness::on_node(pod(json!({"containers": [app("a", "nginx:1")]})), &images);
        assert_eq!(first.time_until("running", runs("nginx:1")), d.pull);
        assert!(first.reasons().contains(&"Pulling"));
        assert!(images.lock().unwrap().contains("nginx:1"));

        let mut second =
            Harness::on_node(pod(json!({"containers": [app("a", "nginx:1")]})), &images);
        assert_eq!(
            second.time_until("running", runs("nginx:1")),
            Duration::ZERO
        );
        assert!(!second.reasons().contains(&"Pulling"));
        assert!(second.events.iter().any(|e| e.reason == "Pulled"
            && e.message == "Container image \"nginx:1\" already present on machine"));

        // A failed pull leaves nothing on the node.
        let mut failed = Harness::on_node(
            pod(json!({"containers": [app("a", "nginx:fail-pull")]})),
            &images,
        );
        failed.until("ErrImagePull", |s| {
            cs(s, "containerStatuses", "a")["state"]["waiting"]["reason"] == "ErrImagePull"
        });
        assert!(!images.lock().unwrap().contains("nginx:fail-pull"));
    }

    #[test]
    fn an_image_change_pulls_only_what_the_node_lacks() {
        let images = NodeImages::default();
        let d = Delays::default();
        let mut h = Harness::on_node(pod(json!({"containers": [app("a", "nginx:1")]})), &images);
        h.until("running", runs("nginx:1"));
        h.set_image("containers", 0, "nginx:2");
        assert_eq!(
            h.time_until("nginx:2 runs", runs("nginx:2")),
            d.restart + d.pull
        );
        // nginx:1 is still on the node (kubelet's image GC is not simulated): going back
        // costs the restart only.
        h.set_image("containers", 0, "nginx:1");
        assert_eq!(h.time_until("nginx:1 runs", runs("nginx:1")), d.restart);

        // Without a node that keeps images, an image change takes `restart`, as before.
        let mut plain = Harness::new(pod(json!({"containers": [app("a", "nginx:1")]})));
        plain.until("running", runs("nginx:1"));
        plain.set_image("containers", 0, "nginx:2");
        assert_eq!(plain.time_until("nginx:2 runs", runs("nginx:2")), d.restart);
    }

    #[test]
    fn a_container_scoped_delay_overrides_the_pods() {
        let probe = json!({"httpGet": {"port": 80}});
        let mut slow = app("slow", "nginx:1");
        slow["readinessProbe"] = probe.clone();
        let mut fast = app("fast", "nginx:1");
        fast["readinessProbe"] = probe;
        let mut p = pod(json!({"containers": [slow, fast]}));
        p["metadata"]["annotations"] = json!({
            "sim.inplace-upgrade.io/readiness-delay-ms": "1000",
            "sim.inplace-upgrade.io/slow.readiness-delay-ms": "20000",
        });
        let mut h = Harness::new(p);
        let is_ready =
            |name: &'static str| move |s: &Value| cs(s, "containerStatuses", name)["ready"] == true;
        let pull = Delays::default().pull;
        assert_eq!(
            h.time_until("fast ready", is_ready("fast")),
            pull + Duration::from_secs(1)
        );
        assert!(!ready(&h.status));
        assert_eq!(
            h.time_until("slow ready", is_ready("slow")),
            Duration::from_secs(19)
        );
        assert!(ready(&h.status));
    }
}
