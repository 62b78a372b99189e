//! The one way this crate takes a `Mutex`: a panic while a lock was held
//! does not make the data unusable (every critical section here leaves its
//! data consistent between statements), so a poisoned lock is taken anyway
//! rather than turning one panic into a cascade.

use std::sync::{Mutex, MutexGuard};

/// Locks `mutex`, ignoring poisoning.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
