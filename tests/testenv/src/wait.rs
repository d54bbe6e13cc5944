//! Watch-driven waits with a generous limit whose failure says what was awaited and what was
//! last seen. No sleep-polling: every check runs on a watch event.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::time::Duration;

use futures::StreamExt;
use kube::api::Api;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{Error, Result};

/// How long a wait may take before it is a failure. Generous on purpose: these are not timing
/// assertions, only a bound on a hang, on a shared 2-core machine.
pub const WAIT_LIMIT: Duration = Duration::from_secs(120);

/// Waits until the object `name` exists and satisfies `condition`, and returns it.
pub async fn wait_for<K>(
    api: &Api<K>,
    name: &str,
    what: &str,
    condition: impl Fn(&K) -> bool,
) -> Result<K>
where
    K: Resource + Clone + DeserializeOwned + Serialize + Debug + Send + 'static,
    K::DynamicType: Default,
{
    wait_for_within(api, name, what, WAIT_LIMIT, condition).await
}

/// [`wait_for`] with another bound than [`WAIT_LIMIT`]: for benchmarks whose rollouts take
/// minutes by design (an app that needs 20 s to become Ready, one pod at a time).
pub async fn wait_for_within<K>(
    api: &Api<K>,
    name: &str,
    what: &str,
    limit: Duration,
    condition: impl Fn(&K) -> bool,
) -> Result<K>
where
    K: Resource + Clone + DeserializeOwned + Serialize + Debug + Send + 'static,
    K::DynamicType: Default,
{
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut last: Option<K> = None;
    let found = tokio::time::timeout(limit, async {
        let mut stream = watcher(api.clone(), config).boxed();
        while let Some(event) = stream.next().await {
            match event {
                Ok(watcher::Event::Apply(obj) | watcher::Event::InitApply(obj)) => {
                    if condition(&obj) {
                        return Some(obj);
                    }
                    last = Some(obj);
                }
                Ok(watcher::Event::Delete(_)) => last = None,
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "watch error while waiting; retrying"),
            }
        }
        None
    })
    .await;
    match found {
        Ok(Some(obj)) => Ok(obj),
        _ => Err(timeout(
            what,
            last.as_ref()
                .map(summary)
                .unwrap_or_else(|| format!("no object named {name}")),
        )),
    }
}

/// Waits until the object `name` no longer exists.
pub async fn wait_deleted<K>(api: &Api<K>, name: &str, what: &str) -> Result<()>
where
    K: Resource + Clone + DeserializeOwned + Serialize + Debug + Send + 'static,
    K::DynamicType: Default,
{
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut last: Option<K> = None;
    let gone = tokio::time::timeout(WAIT_LIMIT, async {
        let mut stream = watcher(api.clone(), config).boxed();
        let mut listed: Option<bool> = None;
        while let Some(event) = stream.next().await {
            match event {
                Ok(watcher::Event::Init) => listed = Some(false),
                Ok(watcher::Event::InitApply(obj)) => {
                    listed = Some(true);
                    last = Some(obj);
                }
                Ok(watcher::Event::InitDone) if listed == Some(false) => return true,
                Ok(watcher::Event::Delete(_)) => return true,
                Ok(watcher::Event::Apply(obj)) => last = Some(obj),
                _ => {}
            }
        }
        false
    })
    .await;
    match gone {
        Ok(true) => Ok(()),
        _ => Err(timeout(
            what,
            last.as_ref().map(summary).unwrap_or_default(),
        )),
    }
}

/// Waits until the set of objects the watch `config` selects (labels and/or fields) satisfies
/// `condition`, and returns that set (sorted by name).
pub async fn wait_list<K>(
    api: &Api<K>,
    config: watcher::Config,
    what: &str,
    condition: impl Fn(&[K]) -> bool,
) -> Result<Vec<K>>
where
    K: Resource + Clone + DeserializeOwned + Serialize + Debug + Send + 'static,
    K::DynamicType: Default,
{
    let selector = format!(
        "labels {:?} fields {:?}",
        config.label_selector, config.field_selector
    );
    let mut objects: BTreeMap<String, K> = BTreeMap::new();
    let found = tokio::time::timeout(WAIT_LIMIT, async {
        let mut stream = watcher(api.clone(), config).boxed();
        let mut initial: Option<BTreeMap<String, K>> = None;
        while let Some(event) = stream.next().await {
            match event {
                Ok(watcher::Event::Init) => {
                    initial = Some(BTreeMap::new());
                    continue;
                }
                Ok(watcher::Event::InitApply(obj)) => {
                    if let Some(m) = initial.as_mut() {
                        m.insert(obj.name_any(), obj);
                    }
                    continue;
                }
                Ok(watcher::Event::InitDone) => {
                    if let Some(m) = initial.take() {
                        objects = m;
                    }
                }
                Ok(watcher::Event::Apply(obj)) => {
                    objects.insert(obj.name_any(), obj);
                }
                Ok(watcher::Event::Delete(obj)) => {
                    objects.remove(&obj.name_any());
                }
                Err(e) => {
                    tracing::debug!(error = %e, "watch error while waiting; retrying");
                    continue;
                }
            }
            let list: Vec<K> = objects.values().cloned().collect();
            if condition(&list) {
                return Some(list);
            }
        }
        None
    })
    .await;
    match found {
        Ok(Some(list)) => Ok(list),
        _ => {
            let last: Vec<String> = objects.values().map(summary).collect();
            Err(timeout(
                what,
                format!(
                    "{} object(s) with {selector}: [{}]",
                    last.len(),
                    last.join(", ")
                ),
            ))
        }
    }
}

fn timeout(what: &str, last: String) -> Error {
    Error::Timeout {
        what: what.to_owned(),
        seconds: WAIT_LIMIT.as_secs(),
        last,
    }
}

/// A short rendering of an object for failure messages: its name and status (or the whole
/// object when it has none), without managedFields, cut at 4000 characters.
pub fn summary<K: Serialize + ResourceExt>(obj: &K) -> String {
    let mut v = serde_json::to_value(obj).unwrap_or_default();
    if let Some(meta) = v.get_mut("metadata").and_then(|m| m.as_object_mut()) {
        meta.remove("managedFields");
    }
    let body = match v.get("status") {
        Some(s) => format!("{} status {s}", obj.name_any()),
        None => v.to_string(),
    };
    let mut cut: String = body.chars().take(4000).collect();
    if cut.len() < body.len() {
        cut.push('…');
    }
    cut
}
