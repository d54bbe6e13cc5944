//! Synchronous tables of what each watch delivered, and the indexes kept with them. Pure data
//! structures fed one watch event at a time (by a watch, or by hand in tests): no I/O, no
//! async, and every index always agrees with its table.
//!
//! A table files objects by namespace, then name, so "every X of a namespace" is a lookup, not
//! a scan. A re-list (the watch's `Init`, `InitApply`…, `InitDone`) is collected aside and
//! swapped in whole at its end: the indexes are rebuilt from it, and what changed across it —
//! an object added, changed (a new resourceVersion) or gone while the watch was down — is
//! reported like any other change, so nothing deleted meanwhile lingers in an index.

use std::collections::HashMap;
use std::sync::Arc;

use kube::runtime::watcher;

use super::lean::{CachedPod, CachedSlice, CachedWorkload, Decoded};
use crate::policy::InPlaceUpgradePolicy;

/// What a table keeps of one object, and the index kept alongside.
pub trait Kept: Sized {
    type Index: Default;
    /// Adds (`present`) or removes one object's entries.
    fn index(
        index: &mut Self::Index,
        namespace: &Arc<str>,
        name: &Arc<str>,
        object: &Self,
        present: bool,
    );
    fn resource_version(&self) -> Option<&str>;
}

/// One change, as the triggers see it.
#[derive(Debug)]
pub struct Change<T> {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
    pub old: Option<Arc<T>>,
    pub new: Option<Arc<T>>,
}

type Objects<T> = HashMap<Arc<str>, HashMap<Arc<str>, Arc<T>>>;

/// The objects of one kind, by namespace (`""` for cluster-scoped kinds) and name.
pub struct Table<T: Kept> {
    objects: Objects<T>,
    pub index: T::Index,
    /// A list in progress.
    listing: Option<Objects<T>>,
    /// Whether a first list has completed.
    pub listed: bool,
}

impl<T: Kept> Default for Table<T> {
    fn default() -> Self {
        Table {
            objects: HashMap::new(),
            index: T::Index::default(),
            listing: None,
            listed: false,
        }
    }
}

impl<T: Kept> Table<T> {
    pub fn get(&self, namespace: &str, name: &str) -> Option<&Arc<T>> {
        self.objects.get(namespace)?.get(name)
    }

    /// Every object of a namespace.
    pub fn in_namespace(&self, namespace: &str) -> impl Iterator<Item = (&Arc<str>, &Arc<T>)> {
        self.objects.get(namespace).into_iter().flatten()
    }

    /// Every object, with its namespace.
    pub fn all(&self) -> impl Iterator<Item = (&Arc<str>, &Arc<str>, &Arc<T>)> {
        self.objects
            .iter()
            .flat_map(|(ns, objects)| objects.iter().map(move |(name, o)| (ns, name, o)))
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.objects.values().map(HashMap::len).sum()
    }

    /// Applies one watch event; returns what changed.
    pub fn apply(&mut self, event: watcher::Event<Decoded<T>>) -> Vec<Change<T>> {
        match event {
            watcher::Event::Init => {
                self.listing = Some(HashMap::new());
                Vec::new()
            }
            watcher::Event::InitApply(object) if self.listing.is_some() => {
                let listing = self.listing.as_mut().expect("checked");
                let (namespace, name) =
                    key(&self.objects, object.filed.namespace, object.filed.name);
                listing
                    .entry(namespace)
                    .or_default()
                    .insert(name, Arc::new(object.kept));
                Vec::new()
            }
            watcher::Event::InitDone => {
                let listed = self.listing.take().unwrap_or_default();
                let before = std::mem::replace(&mut self.objects, listed);
                let mut index = T::Index::default();
                for (namespace, name, object) in self.all() {
                    T::index(&mut index, namespace, name, object, true);
                }
                self.index = index;
                self.listed = true;
                relisted(before, &self.objects)
            }
            watcher::Event::Apply(object) | watcher::Event::InitApply(object) => {
                let (namespace, name) =
                    key(&self.objects, object.filed.namespace, object.filed.name);
                let new = Arc::new(object.kept);
                let old = self
                    .objects
                    .entry(namespace.clone())
                    .or_default()
                    .insert(name.clone(), new.clone());
                if let Some(old) = &old {
                    T::index(&mut self.index, &namespace, &name, old, false);
                }
                T::index(&mut self.index, &namespace, &name, &new, true);
                vec![Change {
                    namespace,
                    name,
                    old,
                    new: Some(new),
                }]
            }
            watcher::Event::Delete(object) => {
                let (namespace, name) =
                    key(&self.objects, object.filed.namespace, object.filed.name);
                let old = match self.objects.get_mut(&namespace) {
                    Some(objects) => {
                        let old = objects.remove(&name);
                        if objects.is_empty() {
                            self.objects.remove(&namespace);
                        }
                        old
                    }
                    None => None,
                };
                if let Some(old) = &old {
                    T::index(&mut self.index, &namespace, &name, old, false);
                }
                // The watch's last word on the object when we never had it.
                let old = old.or_else(|| Some(Arc::new(object.kept)));
                vec![Change {
                    namespace,
                    name,
                    old,
                    new: None,
                }]
            }
        }
    }
}

/// The table's keys for an object, sharing the namespace's string with the objects already
/// filed there.
fn key<T>(objects: &Objects<T>, namespace: Option<String>, name: String) -> (Arc<str>, Arc<str>) {
    let namespace = namespace.unwrap_or_default();
    let namespace = match objects.get_key_value(namespace.as_str()) {
        Some((shared, _)) => shared.clone(),
        None => Arc::from(namespace),
    };
    (namespace, Arc::from(name))
}

/// What a re-list changed: objects added, changed (another resourceVersion) or gone.
fn relisted<T: Kept>(mut before: Objects<T>, now: &Objects<T>) -> Vec<Change<T>> {
    let mut changes = Vec::new();
    for (namespace, objects) in now {
        let mut old_objects = before.remove(namespace);
        for (name, new) in objects {
            let old = old_objects.as_mut().and_then(|o| o.remove(name));
            let same = old.as_ref().is_some_and(|o| {
                o.resource_version().is_some() && o.resource_version() == new.resource_version()
            });
            if !same {
                changes.push(Change {
                    namespace: namespace.clone(),
                    name: name.clone(),
                    old,
                    new: Some(new.clone()),
                });
            }
        }
        for (name, old) in old_objects.into_iter().flatten() {
            changes.push(Change {
                namespace: namespace.clone(),
                name,
                old: Some(old),
                new: None,
            });
        }
    }
    for (namespace, objects) in before {
        for (name, old) in objects {
            changes.push(Change {
                namespace: namespace.clone(),
                name,
                old: Some(old),
                new: None,
            });
        }
    }
    changes
}

/// The owner kind pre-pull pods are filed under, by the `<Kind>/<name>` of their workload.
pub const PREPULL_OWNER: &str = "PrePullFor";

/// Children by their controlling owner, per namespace: `"<kind>/<name>"` → child names.
#[derive(Default)]
pub struct Owners {
    children: HashMap<Arc<str>, HashMap<String, Vec<Arc<str>>>>,
}

impl Owners {
    fn set(
        &mut self,
        namespace: &Arc<str>,
        owner: Option<(&str, &str)>,
        child: &Arc<str>,
        present: bool,
    ) {
        let Some((kind, name)) = owner else { return };
        let owner = format!("{kind}/{name}");
        if present {
            let children = self
                .children
                .entry(namespace.clone())
                .or_default()
                .entry(owner)
                .or_default();
            if let Err(at) = children.binary_search(child) {
                children.insert(at, child.clone());
            }
        } else if let Some(owners) = self.children.get_mut(namespace) {
            if let Some(children) = owners.get_mut(&owner) {
                children.retain(|c| c != child);
                if children.is_empty() {
                    owners.remove(&owner);
                }
            }
            if owners.is_empty() {
                self.children.remove(namespace);
            }
        }
    }

    /// The children of `kind/name` in `namespace`, sorted by name.
    pub fn children_of(&self, namespace: &str, kind: &str, name: &str) -> &[Arc<str>] {
        self.children
            .get(namespace)
            .and_then(|owners| owners.get(&format!("{kind}/{name}")))
            .map_or(&[], Vec::as_slice)
    }
}

impl Kept for CachedPod {
    type Index = Owners;

    fn index(index: &mut Owners, namespace: &Arc<str>, name: &Arc<str>, pod: &Self, present: bool) {
        let owner = pod.owner().map(|o| (o.kind.as_str(), o.name.as_str()));
        index.set(namespace, owner, name, present);
        // A pre-pull pod has no controlling owner: it is filed under the workload it works for.
        let prepull = pod
            .annotation(crate::prepull::FOR_ANNOTATION)
            .map(|w| (PREPULL_OWNER, w));
        index.set(namespace, prepull, name, present);
    }

    fn resource_version(&self) -> Option<&str> {
        CachedPod::resource_version(self)
    }
}

impl Kept for CachedWorkload {
    type Index = Owners;

    fn index(index: &mut Owners, namespace: &Arc<str>, name: &Arc<str>, w: &Self, present: bool) {
        let owner = w.owner.as_ref().map(|o| (o.kind.as_str(), o.name.as_str()));
        index.set(namespace, owner, name, present);
    }

    fn resource_version(&self) -> Option<&str> {
        self.resource_version.as_deref()
    }
}

/// How many EndpointSlices of each namespace send traffic to each pod.
#[derive(Default)]
pub struct Serving {
    pods: HashMap<Arc<str>, HashMap<Arc<str>, u32>>,
}

impl Serving {
    /// Whether any EndpointSlice of the namespace lists the pod as ready or serving.
    pub fn serves(&self, namespace: &str, pod: &str) -> bool {
        self.pods
            .get(namespace)
            .is_some_and(|pods| pods.contains_key(pod))
    }
}

impl Kept for CachedSlice {
    type Index = Serving;

    fn index(index: &mut Serving, namespace: &Arc<str>, _: &Arc<str>, slice: &Self, present: bool) {
        let pods = index.pods.entry(namespace.clone()).or_default();
        for pod in &slice.serving {
            if present {
                *pods.entry(pod.clone()).or_default() += 1;
            } else if let Some(n) = pods.get_mut(pod) {
                *n -= 1;
                if *n == 0 {
                    pods.remove(pod);
                }
            }
        }
        if pods.is_empty() {
            index.pods.remove(namespace);
        }
    }

    fn resource_version(&self) -> Option<&str> {
        self.resource_version.as_deref()
    }
}

/// Kinds kept whole need no index of their own.
macro_rules! kept_whole {
    ($($kind:ty),*) => {$(
        impl Kept for $kind {
            type Index = ();
            fn index(_: &mut (), _: &Arc<str>, _: &Arc<str>, _: &Self, _: bool) {}
            fn resource_version(&self) -> Option<&str> {
                self.metadata.resource_version.as_deref()
            }
        }
    )*};
}

kept_whole!(
    k8s_openapi::api::core::v1::Namespace,
    k8s_openapi::api::policy::v1::PodDisruptionBudget,
    InPlaceUpgradePolicy
);

#[cfg(test)]
mod tests {
    use super::super::lean::Filed;
    use super::*;

    #[derive(Clone, Debug, PartialEq)]
    struct Thing {
        owner: Option<&'static str>,
        version: &'static str,
    }

    impl Kept for Thing {
        type Index = Owners;
        fn index(index: &mut Owners, ns: &Arc<str>, name: &Arc<str>, t: &Self, present: bool) {
            index.set(ns, t.owner.map(|o| ("Owner", o)), name, present);
        }
        fn resource_version(&self) -> Option<&str> {
            Some(self.version)
        }
    }

    fn thing(name: &str, owner: Option<&'static str>, version: &'static str) -> Decoded<Thing> {
        Decoded {
            filed: Filed {
                namespace: Some("ns".into()),
                name: name.into(),
                resource_version: Some(version.into()),
            },
            kept: Thing { owner, version },
        }
    }

    fn changed(changes: &[Change<Thing>]) -> Vec<(String, bool, bool)> {
        let mut out: Vec<_> = changes
            .iter()
            .map(|c| (c.name.to_string(), c.old.is_some(), c.new.is_some()))
            .collect();
        out.sort();
        out
    }

    fn children(t: &Table<Thing>, owner: &str) -> Vec<String> {
        t.index
            .children_of("ns", "Owner", owner)
            .iter()
            .map(|c| c.to_string())
            .collect()
    }

    #[test]
    fn applies_and_deletes_keep_the_index() {
        let mut t = Table::<Thing>::default();
        t.apply(watcher::Event::Apply(thing("a", Some("o1"), "1")));
        t.apply(watcher::Event::Apply(thing("b", Some("o1"), "1")));
        assert_eq!(children(&t, "o1"), ["a", "b"]);
        // An owner change moves the child.
        let c = t.apply(watcher::Event::Apply(thing("a", Some("o2"), "2")));
        assert_eq!(changed(&c), [("a".into(), true, true)]);
        assert_eq!(children(&t, "o1"), ["b"]);
        assert_eq!(children(&t, "o2"), ["a"]);
        let c = t.apply(watcher::Event::Delete(thing("b", Some("o1"), "3")));
        assert_eq!(changed(&c), [("b".into(), true, false)]);
        assert!(children(&t, "o1").is_empty());
        assert!(t.get("ns", "b").is_none());
        assert_eq!(t.len(), 1);
    }

    /// A re-list replaces the table whole: what vanished while the watch was down is gone
    /// from the index too, and reported; what did not change is not.
    #[test]
    fn a_relist_reports_what_changed_meanwhile_and_rebuilds_the_index() {
        let mut t = Table::<Thing>::default();
        assert!(!t.listed);
        t.apply(watcher::Event::Init);
        t.apply(watcher::Event::InitApply(thing("a", Some("o"), "1")));
        t.apply(watcher::Event::InitApply(thing("b", Some("o"), "1")));
        assert!(
            t.get("ns", "a").is_none(),
            "a list in progress is not visible"
        );
        let c = t.apply(watcher::Event::InitDone);
        assert!(t.listed);
        assert_eq!(
            changed(&c),
            [("a".into(), false, true), ("b".into(), false, true)]
        );
        assert_eq!(children(&t, "o"), ["a", "b"]);

        t.apply(watcher::Event::Init);
        t.apply(watcher::Event::InitApply(thing("a", Some("o"), "1")));
        t.apply(watcher::Event::InitApply(thing("c", Some("o"), "5")));
        // Until the list is done, the table shows the old state.
        assert!(t.get("ns", "b").is_some());
        let c = t.apply(watcher::Event::InitDone);
        assert_eq!(
            changed(&c),
            [("b".into(), true, false), ("c".into(), false, true)]
        );
        assert_eq!(children(&t, "o"), ["a", "c"]);
        assert!(t.get("ns", "b").is_none());
    }

    #[test]
    fn a_delete_of_an_unknown_object_is_still_reported() {
        let mut t = Table::<Thing>::default();
        let c = t.apply(watcher::Event::Delete(thing("x", None, "9")));
        assert_eq!(changed(&c), [("x".into(), true, false)]);
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn serving_counts_each_slice_once() {
        let slice = |pods: &[&str]| Decoded {
            filed: Filed::default(),
            kept: CachedSlice {
                serving: pods.iter().map(|p| Arc::from(*p)).collect(),
                not_serving: Vec::new(),
                resource_version: None,
            },
        };
        let named = |name: &str, mut s: Decoded<CachedSlice>| {
            s.filed.namespace = Some("ns".into());
            s.filed.name = name.into();
            s
        };
        let mut t = Table::<CachedSlice>::default();
        t.apply(watcher::Event::Apply(named("s1", slice(&["a", "b"]))));
        t.apply(watcher::Event::Apply(named("s2", slice(&["a"]))));
        assert!(t.index.serves("ns", "a") && t.index.serves("ns", "b"));
        t.apply(watcher::Event::Apply(named("s1", slice(&["b"]))));
        assert!(t.index.serves("ns", "a"), "s2 still serves a");
        t.apply(watcher::Event::Delete(named("s2", slice(&["a"]))));
        assert!(!t.index.serves("ns", "a"));
        assert!(t.index.serves("ns", "b"));
        assert!(!t.index.serves("other", "b"));
    }
}
