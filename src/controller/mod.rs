//! The controller: watches workloads, pods and everything that decides a rollout, and moves
//! every annotated workload to its target one pod at a time (or as the policy's budget
//! allows). All state lives in the API (the pod's state annotation, our readiness-gate
//! condition, the workload's status annotation), so a replica that takes over — after a crash
//! or a leader change — carries on from there.

mod events;
mod leader;
mod metrics;
mod namespaces;
pub mod preflight;
mod pulls;
mod queue;
mod reconcile;
mod report;
mod slots;
#[cfg(test)]
mod tests;
mod view;
mod writes;
mod written;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::Client;
use kube::runtime::events::{Recorder, Reporter};
use prometheus_client::registry::Registry;

use crate::cache::{Cache, Role};
use tokio::sync::watch;

use crate::status::{WorkloadPhase, WorkloadStatus};

pub use leader::{LeaseConfig, lease_is_live};
pub use metrics::Metrics;
pub use queue::Queue;
pub use view::ControllerView;

/// Name of the Lease the controller replicas elect a leader on; the webhook reads it to know
/// whether the controller is alive.
pub const LEASE_NAME: &str = "inplace-upgrade-controller";

#[derive(Clone, Debug)]
pub struct Settings {
    /// Namespace the controller runs in: its Lease lives there, and no policy reaches it.
    pub namespace: String,
    /// This replica's identity in the Lease and in Events (pod name in a cluster).
    pub identity: String,
    /// Workloads reconciled at once.
    pub concurrency: usize,
    /// How long the leader Lease stays valid without renewal: a dead leader's successor
    /// takes over after this long.
    pub lease_duration: Duration,
}

/// Shared by every reconcile.
pub struct Context {
    pub client: Client,
    /// What the reconciles read: the watched caches.
    pub cache: Arc<dyn ControllerView>,
    pub queue: Queue,
    pub recorder: Recorder,
    pub metrics: Metrics,
    pub settings: Settings,
    /// Workloads rolling, and waiting to, under each policy (`maxConcurrentWorkloads`).
    slots: Mutex<slots::Slots>,
    /// What each policy governs, for its status (and the rollout gauges at each scrape).
    report: Arc<report::PolicyReport>,
    /// Pods as our own last writes returned them, until the cache catches up.
    written: written::Written,
    /// The pre-pulls of target images, as their pods said (see [`pulls`]).
    pulls: pulls::KnownPulls,
}

impl Context {
    /// A context for reconciles that read `cache` and write through `client`.
    pub fn new(
        client: Client,
        cache: Arc<dyn ControllerView>,
        queue: Queue,
        metrics: Metrics,
        settings: Settings,
    ) -> Self {
        let reporter = Reporter {
            controller: "inplace-upgrade".into(),
            instance: Some(settings.identity.clone()),
        };
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            cache,
            queue,
            report: Arc::new(report::PolicyReport::new(
                metrics.workloads_in_progress.clone(),
            )),
            metrics,
            settings,
            slots: Mutex::default(),
            written: written::Written::default(),
            pulls: pulls::KnownPulls::default(),
        }
    }

    /// Changes the rollout slots under their lock and re-queues the workloads a freed slot may
    /// be due to now (see [`slots::SlotTurn`], the one user besides [`Self::restore_slots`]).
    fn with_slots(&self, change: impl FnOnce(&mut slots::Slots) -> slots::Wake) {
        let wake = change(&mut self.slots.lock().unwrap_or_else(|e| e.into_inner()));
        for key in wake {
            self.queue.enqueue(key);
        }
    }

    /// At the start of a term: the workloads whose status says they are rolling hold their
    /// slots, so a new workload cannot overtake them.
    fn restore_slots(&self) {
        self.with_slots(|slots| {
            slots.clear();
            Vec::new()
        });
        for key in self.cache.workloads_in(None) {
            let Some(w) = self.cache.workload(&key) else {
                continue;
            };
            let Some(status) = WorkloadStatus::of(&w) else {
                continue;
            };
            if let (WorkloadPhase::Progressing, Some(policy)) = (status.phase, &status.policy) {
                self.with_slots(|slots| slots.hold(policy, &key));
            }
        }
    }
}

/// Handles the caller keeps: readiness for `/readyz`, leadership for metrics and tests.
#[derive(Clone)]
pub struct Handle {
    pub leading: watch::Receiver<bool>,
    /// The controller's caches, for a webhook served from the same process.
    pub cache: Cache,
    stop: Arc<watch::Sender<bool>>,
    election: Arc<Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

impl Handle {
    /// Stops acting and releases the leader Lease (for a graceful shutdown: the next replica
    /// takes over at once).
    pub async fn step_down(&self) {
        self.stop.send_replace(true);
        let election = self
            .election
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(election) = election {
            let _ = election.await;
        }
    }

    /// True once every watch has finished its initial list.
    pub fn is_synced(&self) -> bool {
        self.cache.is_synced()
    }
}

/// Starts the controller's tasks on the current runtime and returns at once.
pub fn start(client: Client, settings: Settings, registry: &mut Registry) -> Handle {
    let metrics = Metrics::register(registry);
    let (queue, receiver) = Queue::new();
    let q = queue.clone();
    let cache = Cache::triggering(Role::Controller, move |key| q.enqueue(key));
    for driver in cache.watch(&client) {
        tokio::spawn(driver);
    }
    let events = events::EventIndex::default();
    tokio::spawn(events::drive(
        &client,
        cache.clone(),
        events.clone(),
        queue.clone(),
    ));
    let view = view::Watched {
        cache: cache.clone(),
        events,
    };
    let ctx = Arc::new(Context::new(
        client.clone(),
        Arc::new(view),
        queue.clone(),
        metrics.clone(),
        settings.clone(),
    ));
    registry
        .sub_registry_with_prefix("inplace_upgrade")
        .register_collector(Box::new(metrics::RolloutCollector {
            report: ctx.report.clone(),
            cache: cache.clone(),
        }));

    let (leading_tx, leading) = watch::channel(false);
    let lease = LeaseConfig::new(
        &settings.namespace,
        LEASE_NAME,
        &settings.identity,
        settings.lease_duration,
    );
    let (stop_tx, stop) = watch::channel(false);
    let stepping_down = stop.clone();
    let election = tokio::spawn(leader::run(client, lease, leading_tx, stop));

    let handle = Handle {
        leading: leading.clone(),
        cache: cache.clone(),
        stop: Arc::new(stop_tx),
        election: Arc::new(Mutex::new(Some(election))),
    };
    tokio::spawn(async move {
        cache.synced().await;
        tracing::info!("caches synced");
        lead_while_elected(ctx, &cache, receiver, leading, stepping_down).await;
    });
    handle
}

/// Reconciles only while this replica holds the Lease; losing it drops the work loop at once,
/// aborting every reconcile in flight (each step is a single atomic API write, so an aborted
/// reconcile leaves nothing half-done that the next leader cannot finish).
async fn lead_while_elected(
    ctx: Arc<Context>,
    cache: &Cache,
    mut receiver: queue::QueueReceiver,
    mut leading: watch::Receiver<bool>,
    stepping_down: watch::Receiver<bool>,
) {
    loop {
        if leading.wait_for(|l| *l).await.is_err() {
            return;
        }
        ctx.metrics.leader.set(1);
        tracing::info!(identity = %ctx.settings.identity, "became leader");
        ctx.restore_slots();
        ctx.written.forget_drains(None);
        // Every workload gets a look when leadership starts: the state in the API is the truth.
        for key in ctx.cache.workloads_in(None) {
            ctx.queue.enqueue(key);
        }
        let c = ctx.clone();
        let work = receiver.run(ctx.settings.concurrency, ctx.queue.clone(), move |key| {
            let c = c.clone();
            async move { reconcile::reconcile(c, key).await }
        });
        tokio::select! {
            _ = work => return,
            _ = report::write_policy_statuses(&ctx) => {}
            _ = namespaces::keep_governed_labels(&ctx, cache) => {}
            _ = leading.wait_for(|l| !*l) => {}
        }
        ctx.metrics.leader.set(0);
        if *stepping_down.borrow() {
            tracing::info!(identity = %ctx.settings.identity, "stepped down: stopped acting");
        } else {
            tracing::warn!(identity = %ctx.settings.identity, "lost leadership: stopped acting");
        }
    }
}
