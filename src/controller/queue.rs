//! The work queue: deduplicated, delayable reconcile requests for workloads, run with bounded
//! concurrency and never two reconciles of the same workload at once.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::time::Duration;

use futures::StreamExt;
use kube::runtime::scheduler::{ScheduleRequest, scheduler};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::workload::WorkloadKey;

/// Sends reconcile requests; cheap to clone.
#[derive(Clone)]
pub struct Queue {
    tx: mpsc::UnboundedSender<ScheduleRequest<WorkloadKey>>,
}

impl Queue {
    pub fn new() -> (Queue, QueueReceiver) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Queue { tx }, QueueReceiver { rx })
    }

    /// Reconcile `key` as soon as possible.
    pub fn enqueue(&self, key: WorkloadKey) {
        self.enqueue_after(key, Duration::ZERO);
    }

    /// Reconcile `key` after `delay` (an earlier request for the same key wins).
    pub fn enqueue_after(&self, key: WorkloadKey, delay: Duration) {
        // The receiver lives as long as the controller; a send after shutdown is moot.
        let _ = self.tx.send(ScheduleRequest {
            message: key,
            run_at: Instant::now() + delay,
        });
    }
}

pub struct QueueReceiver {
    rx: mpsc::UnboundedReceiver<ScheduleRequest<WorkloadKey>>,
}

impl QueueReceiver {
    /// Runs `reconcile` for every due key, at most `concurrency` at once and one per key at a
    /// time; a key requested while its reconcile runs is run again right after. Runs until
    /// dropped (losing the leader Lease drops it, which aborts every reconcile in flight and
    /// forgets the requests scheduled in that term; the next term re-enqueues every workload).
    pub async fn run<F, Fut>(&mut self, concurrency: usize, queue: Queue, reconcile: F)
    where
        F: Fn(WorkloadKey) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let rx = &mut self.rx;
        let mut due = std::pin::pin!(scheduler(futures::stream::poll_fn(|cx| rx.poll_recv(cx))));
        let mut running: HashMap<tokio::task::Id, WorkloadKey> = HashMap::new();
        let mut again: HashSet<WorkloadKey> = HashSet::new();
        let mut tasks: JoinSet<()> = JoinSet::new();
        loop {
            tokio::select! {
                Some(done) = tasks.join_next_with_id(), if !tasks.is_empty() => {
                    let id = match done {
                        Ok((id, ())) => id,
                        Err(e) => {
                            tracing::error!(error = %e, "reconcile task failed");
                            e.id()
                        }
                    };
                    if let Some(key) = running.remove(&id)
                        && again.remove(&key)
                    {
                        queue.enqueue(key);
                    }
                }
                next = due.next(), if tasks.len() < concurrency => {
                    let Some(key) = next else { break };
                    if running.values().any(|k| k == &key) {
                        again.insert(key);
                        continue;
                    }
                    let handle = tasks.spawn(reconcile(key.clone()));
                    running.insert(handle.id(), key);
                }
            }
        }
    }
}
