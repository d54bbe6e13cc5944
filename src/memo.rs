//! A bounded, process-wide memory of pure computations that the webhook and the controller
//! repeat on the same few inputs per admission or reconcile (an image's grammar verdict, a
//! policy's compiled allowlist). Values are computed outside the lock (two callers may compute
//! the same one; both results are equal), and the memory is emptied when it reaches its bound,
//! so a stream of distinct inputs cannot grow it.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{LazyLock, Mutex, MutexGuard, PoisonError};

pub(crate) struct Memo<K, V> {
    bound: usize,
    entries: LazyLock<Mutex<HashMap<K, V>>>,
}

impl<K: Hash + Eq, V: Clone> Memo<K, V> {
    /// A memory of at most `bound` entries, for a `static`.
    pub(crate) const fn new(bound: usize) -> Self {
        Memo {
            bound,
            entries: LazyLock::new(Mutex::default),
        }
    }

    /// The value remembered for `key`, or the one `compute` gives, remembered when it is `Ok`.
    pub(crate) fn get_or_try<Q, E>(
        &self,
        key: &Q,
        compute: impl FnOnce() -> Result<V, E>,
    ) -> Result<V, E>
    where
        Q: Hash + Eq + ?Sized,
        K: Borrow<Q> + for<'a> From<&'a Q>,
    {
        if let Some(value) = self.lock().get(key) {
            return Ok(value.clone());
        }
        let value = compute()?;
        let mut entries = self.lock();
        if entries.len() >= self.bound {
            entries.clear();
        }
        entries.insert(K::from(key), value.clone());
        Ok(value)
    }

    // A panic while the lock was held cannot leave a wrong value: entries are inserted whole.
    fn lock(&self) -> MutexGuard<'_, HashMap<K, V>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn computes_once_per_key_and_forgets_everything_at_its_bound() {
        static MEMO: Memo<Box<str>, usize> = Memo::new(2);
        let calls = std::cell::Cell::new(0);
        let len = |s: &str| {
            MEMO.get_or_try(s, || {
                calls.set(calls.get() + 1);
                Ok::<_, ()>(s.len())
            })
        };
        assert_eq!((len("a"), len("a"), len("bb")), (Ok(1), Ok(1), Ok(2)));
        assert_eq!(calls.get(), 2);
        // Full: the third key empties the memory, so "a" is computed again.
        assert_eq!((len("ccc"), len("a")), (Ok(3), Ok(1)));
        assert_eq!(calls.get(), 4);
    }

    #[test]
    fn an_error_is_returned_and_not_remembered() {
        static MEMO: Memo<Vec<String>, u8> = Memo::new(8);
        let key = ["x".to_owned()];
        assert_eq!(MEMO.get_or_try(&key[..], || Err("bad")), Err("bad"));
        assert_eq!(MEMO.get_or_try(&key[..], || Ok::<_, &str>(7)), Ok(7));
        assert_eq!(MEMO.get_or_try(&key[..], || Err("not called")), Ok(7));
    }
}
