//! Rollout slots under each policy's `maxConcurrentWorkloads`, and the workloads waiting for
//! one. A held workload has nothing else to wake it (its pods do not change while it waits),
//! so whenever a slot frees the oldest waiters are handed back to be reconciled: they get the
//! slot in the order they asked for it.

use std::collections::{BTreeSet, HashMap, VecDeque};

use super::Context;
use crate::workload::WorkloadKey;

/// One reconcile's dealings with the rollout slots, from its first look at the workload to the
/// status it writes: every slot rule of a reconcile is here. [`SlotTurn::may_start`] says
/// whether new pods may start (it claims, or keeps, a slot, or takes a place in line), and
/// [`SlotTurn::end`] settles the slot once the status that says why is written. A turn dropped
/// without `end` (the reconcile failed) leaves the slots as they are; the retry settles them.
pub struct SlotTurn<'c> {
    ctx: &'c Context,
    key: &'c WorkloadKey,
    waiting: bool,
}

impl<'c> SlotTurn<'c> {
    pub fn new(ctx: &'c Context, key: &'c WorkloadKey) -> Self {
        SlotTurn {
            ctx,
            key,
            waiting: false,
        }
    }

    /// Whether the workload may start pods under `policy`, which lets `max` workloads roll at
    /// once: it takes (or keeps) a slot; when none is free, or older waiters come first, it
    /// waits in line and a freed slot re-queues it.
    pub fn may_start(&mut self, policy: &str, max: i32) -> bool {
        let max = usize::try_from(max).unwrap_or(1);
        let mut granted = false;
        self.ctx.with_slots(|slots| {
            let (g, wake) = slots.claim(policy, self.key, max);
            granted = g;
            wake
        });
        self.waiting = !granted;
        granted
    }

    /// Ends the turn, once the status is written: a workload rolling under a policy
    /// (`rolling_under`) holds its slot, whatever the limit; one waiting in line keeps its
    /// place; any other frees its slot, if it had one, for the oldest waiter. Slots change
    /// hands only now that the status saying why is written (and counts at once, through
    /// `written`): a waiter woken by a failure sees the failure, under a Namespace annotation,
    /// before it could start the same target, and nobody sees two workloads `Progressing`
    /// under a limit of one.
    pub fn end(self, rolling_under: Option<&str>) {
        match rolling_under {
            Some(policy) => self.ctx.with_slots(|slots| slots.hold(policy, self.key)),
            None if self.waiting => {}
            None => self.ctx.with_slots(|slots| slots.release(self.key)),
        }
    }
}

#[derive(Default)]
struct PolicySlots {
    /// The policy's `maxConcurrentWorkloads` as last claimed with.
    max: usize,
    holders: BTreeSet<WorkloadKey>,
    /// Oldest first.
    waiters: VecDeque<WorkloadKey>,
}

impl PolicySlots {
    fn free(&self) -> usize {
        self.max.max(1).saturating_sub(self.holders.len())
    }

    /// The waiters that would get the free slots now.
    fn due(&self) -> impl Iterator<Item = &WorkloadKey> {
        self.waiters.iter().take(self.free())
    }
}

#[derive(Default)]
pub struct Slots {
    policies: HashMap<String, PolicySlots>,
}

/// Workloads to reconcile again because a slot may be theirs now.
pub type Wake = Vec<WorkloadKey>;

impl Slots {
    /// Takes (or keeps) a slot under `policy` for `key`. False when `max` workloads already
    /// roll under it, or when older waiters come first: `key` then waits in line.
    pub fn claim(&mut self, policy: &str, key: &WorkloadKey, max: usize) -> (bool, Wake) {
        let mut wake = self.leave_others(policy, key);
        let slots = self.policies.entry(policy.to_string()).or_default();
        slots.max = max;
        if slots.holders.contains(key) {
            return (true, wake);
        }
        let position = slots.waiters.iter().position(|k| k == key);
        if position.unwrap_or(slots.waiters.len()) < slots.free() {
            if let Some(i) = position {
                slots.waiters.remove(i);
            }
            slots.holders.insert(key.clone());
            return (true, wake);
        }
        if position.is_none() {
            slots.waiters.push_back(key.clone());
        }
        // Older waiters ahead of us get the free slots: make sure they hear of them.
        wake.extend(slots.due().cloned());
        (false, wake)
    }

    /// Keeps a slot for a workload that is rolling, whatever the limit (it started before a
    /// restart or before the limit was lowered).
    pub fn hold(&mut self, policy: &str, key: &WorkloadKey) -> Wake {
        let wake = self.leave_others(policy, key);
        let slots = self.policies.entry(policy.to_string()).or_default();
        slots.waiters.retain(|k| k != key);
        slots.holders.insert(key.clone());
        wake
    }

    /// `key` neither rolls nor waits any more: its slot, if any, goes to the oldest waiter.
    pub fn release(&mut self, key: &WorkloadKey) -> Wake {
        self.leave_others("", key)
    }

    /// Forgets everything (a new term rebuilds the slots from the workloads' statuses).
    pub fn clear(&mut self) {
        self.policies.clear();
    }

    /// Removes `key` from every policy but `policy`, returning the waiters a freed slot is due to.
    fn leave_others(&mut self, policy: &str, key: &WorkloadKey) -> Wake {
        let mut wake = Vec::new();
        for (_, slots) in self.policies.iter_mut().filter(|(p, _)| *p != policy) {
            slots.waiters.retain(|k| k != key);
            if slots.holders.remove(key) {
                wake.extend(slots.due().cloned());
            }
        }
        self.policies
            .retain(|_, s| !s.holders.is_empty() || !s.waiters.is_empty());
        wake
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> WorkloadKey {
        WorkloadKey::test_deployment(name)
    }

    #[test]
    fn a_released_slot_wakes_the_oldest_waiter_and_goes_to_it() {
        let mut s = Slots::default();
        assert_eq!(s.claim("p", &key("a"), 1), (true, vec![]));
        assert_eq!(s.claim("p", &key("b"), 1), (false, vec![]));
        assert_eq!(s.claim("p", &key("c"), 1), (false, vec![]));
        assert_eq!(s.claim("p", &key("a"), 1), (true, vec![]), "kept");
        // The holder finishes: the oldest waiter is told, and a younger one cannot overtake.
        assert_eq!(s.release(&key("a")), vec![key("b")]);
        assert_eq!(s.claim("p", &key("c"), 1), (false, vec![key("b")]));
        assert_eq!(s.claim("p", &key("b"), 1), (true, vec![]));
        assert_eq!(s.release(&key("b")), vec![key("c")]);
        assert_eq!(s.claim("p", &key("c"), 1), (true, vec![]));
        assert_eq!(s.release(&key("c")), vec![]);
        assert!(s.policies.is_empty(), "nothing left behind");
    }

    #[test]
    fn a_waiter_that_gives_up_or_moves_policy_frees_its_place() {
        let mut s = Slots::default();
        assert!(s.claim("p", &key("a"), 1).0);
        assert!(!s.claim("p", &key("b"), 1).0);
        assert!(!s.claim("p", &key("c"), 1).0);
        // b no longer needs a slot (annotation removed, deleted, paused ...).
        assert_eq!(s.release(&key("b")), vec![]);
        assert_eq!(s.release(&key("a")), vec![key("c")]);
        // The holder moves to another policy: its old slot goes to the next waiter.
        assert!(s.claim("p", &key("c"), 1).0);
        assert!(!s.claim("p", &key("d"), 1).0);
        assert_eq!(s.claim("q", &key("c"), 1), (true, vec![key("d")]));
        assert_eq!(s.hold("q", &key("c")), vec![]);
    }

    #[test]
    fn a_wider_limit_lets_the_oldest_waiters_in_and_hold_ignores_the_limit() {
        let mut s = Slots::default();
        assert!(s.claim("p", &key("a"), 1).0);
        assert!(!s.claim("p", &key("b"), 1).0);
        assert!(!s.claim("p", &key("c"), 1).0);
        // The limit was raised to 2: the next claim (c's) points at b, which is ahead.
        assert_eq!(s.claim("p", &key("c"), 2), (false, vec![key("b")]));
        assert!(s.claim("p", &key("b"), 2).0);
        assert!(!s.claim("p", &key("c"), 2).0);
        assert_eq!(s.hold("p", &key("c")), vec![]);
        assert_eq!(s.policies["p"].holders.len(), 3);
        assert!(s.policies["p"].waiters.is_empty());
    }
}
