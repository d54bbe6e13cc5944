//! Leader election on a `coordination.k8s.io/v1` Lease, the way client-go does it: a
//! candidate takes the Lease only when its record has not changed for a whole lease duration
//! *as observed locally* (immune to clock skew between nodes), every write is guarded by
//! resourceVersion, and a leader that cannot renew within the renew deadline steps down on its
//! own, before anyone else may take over — so two replicas never act at once.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tokio::sync::watch;
use tokio::time::Instant;

#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    /// How long a Lease record stays valid without renewal.
    pub lease_duration: Duration,
    /// A leader that has not renewed for this long stops acting (must be < lease_duration).
    pub renew_deadline: Duration,
    /// Pause between attempts to acquire or renew.
    pub retry_period: Duration,
}

impl LeaseConfig {
    /// client-go's proportions: renew within 2/3 of the lease duration, retry every 2/15 of it
    /// (15 s, 10 s, 2 s by default).
    pub fn new(
        namespace: impl Into<String>,
        name: impl Into<String>,
        identity: impl Into<String>,
        lease_duration: Duration,
    ) -> Self {
        LeaseConfig {
            namespace: namespace.into(),
            name: name.into(),
            identity: identity.into(),
            lease_duration,
            renew_deadline: lease_duration * 2 / 3,
            retry_period: lease_duration * 2 / 15,
        }
    }
}

/// Runs the election until `stop` turns true, publishing `true` while this replica leads. On
/// stop, a leader releases the Lease so a successor takes over at once instead of after a
/// whole lease duration.
pub async fn run(
    client: Client,
    config: LeaseConfig,
    leading: watch::Sender<bool>,
    mut stop: watch::Receiver<bool>,
) {
    let api: Api<Lease> = Api::namespaced(client, &config.namespace);
    let mut observed: Option<(LeaseSpec, Instant)> = None;
    let mut last_renewal: Option<Instant> = None;
    loop {
        // A hung request must not keep us leading past the renew deadline.
        let budget = last_renewal.map_or(config.renew_deadline, |t| {
            config.renew_deadline.saturating_sub(t.elapsed())
        });
        let attempt =
            tokio::time::timeout(budget, try_acquire_or_renew(&api, &config, &mut observed)).await;
        match attempt {
            Ok(Ok(true)) => {
                last_renewal = Some(Instant::now());
                leading.send_if_modified(|l| !std::mem::replace(l, true));
            }
            Ok(Ok(false)) => {
                last_renewal = None;
                leading.send_if_modified(|l| std::mem::replace(l, false));
            }
            failed => {
                let error = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => "timed out".to_string(),
                };
                tracing::warn!(%error, lease = %config.name, "could not acquire or renew the leader Lease");
                if last_renewal.is_some_and(|t| t.elapsed() >= config.renew_deadline) {
                    tracing::error!(lease = %config.name, "renew deadline passed: stepping down");
                    last_renewal = None;
                    leading.send_if_modified(|l| std::mem::replace(l, false));
                }
            }
        }
        let stop_asked = async {
            if stop.wait_for(|s| *s).await.is_ok() {
                return true;
            }
            // Nobody can ask any more: run for the life of the process.
            std::future::pending().await
        };
        let stopping = tokio::select! {
            _ = tokio::time::sleep(config.retry_period) => false,
            stopping = stop_asked => stopping,
        };
        if stopping {
            if leading.send_replace(false)
                && let Err(e) = release(&api, &config).await
            {
                tracing::warn!(error = %e, lease = %config.name, "could not release the leader Lease");
            }
            return;
        }
    }
}

/// Gives the Lease up (client-go's ReleaseOnCancel): empty holder, 1 s duration.
async fn release(api: &Api<Lease>, config: &LeaseConfig) -> Result<(), kube::Error> {
    let Some(mut lease) = api.get_opt(&config.name).await? else {
        return Ok(());
    };
    let Some(spec) = lease.spec.as_mut() else {
        return Ok(());
    };
    if spec.holder_identity.as_deref() != Some(config.identity.as_str()) {
        return Ok(());
    }
    spec.holder_identity = None;
    spec.lease_duration_seconds = Some(1);
    spec.renew_time = Some(now());
    api.replace(&config.name, &PostParams::default(), &lease)
        .await?;
    tracing::info!(lease = %config.name, "released the leader Lease");
    Ok(())
}

fn now() -> MicroTime {
    MicroTime(Timestamp::now())
}

async fn try_acquire_or_renew(
    api: &Api<Lease>,
    config: &LeaseConfig,
    observed: &mut Option<(LeaseSpec, Instant)>,
) -> Result<bool, kube::Error> {
    let duration_secs = i32::try_from(config.lease_duration.as_secs()).unwrap_or(i32::MAX);
    let Some(mut lease) = api.get_opt(&config.name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(config.name.clone()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(config.identity.clone()),
                lease_duration_seconds: Some(duration_secs),
                acquire_time: Some(now()),
                renew_time: Some(now()),
                lease_transitions: Some(0),
                ..Default::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        };
    };
    let spec = lease.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.clone().unwrap_or_default();
    let i_hold = holder == config.identity;
    if observed.as_ref().map(|(s, _)| s) != Some(&spec) {
        *observed = Some((spec.clone(), Instant::now()));
    }
    let record_duration =
        Duration::from_secs(spec.lease_duration_seconds.unwrap_or(duration_secs).max(1) as u64);
    let expired = holder.is_empty()
        || observed
            .as_ref()
            .is_some_and(|(_, seen)| seen.elapsed() >= record_duration);
    if !i_hold && !expired {
        return Ok(false);
    }
    let mut new_spec = spec.clone();
    new_spec.holder_identity = Some(config.identity.clone());
    new_spec.lease_duration_seconds = Some(duration_secs);
    new_spec.renew_time = Some(now());
    if !i_hold {
        new_spec.acquire_time = Some(now());
        new_spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    }
    lease.spec = Some(new_spec.clone());
    // `replace` carries the resourceVersion we read: a concurrent writer makes it fail (409).
    match api
        .replace(&config.name, &PostParams::default(), &lease)
        .await
    {
        Ok(_) => {
            *observed = Some((new_spec, Instant::now()));
            Ok(true)
        }
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Whether a Lease shows a live holder at `now` (for the webhook: no readiness gate is
/// injected while the controller is down, so an outage cannot keep new pods unready).
pub fn lease_is_live(lease: &Lease, now: Timestamp) -> bool {
    let Some(spec) = &lease.spec else {
        return false;
    };
    if spec
        .holder_identity
        .as_deref()
        .unwrap_or_default()
        .is_empty()
    {
        return false;
    }
    let (Some(renew), Some(secs)) = (&spec.renew_time, spec.lease_duration_seconds) else {
        return false;
    };
    renew
        .0
        .checked_add(SignedDuration::from_secs(i64::from(secs)))
        .is_ok_and(|expiry| expiry > now)
}
