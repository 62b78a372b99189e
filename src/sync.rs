//! Poison-tolerant locking of std's `Mutex` and `RwLock`.
//!
//! A panic while a lock was held poisons it; the data behind our locks stays
//! consistent at every await-free step (each holder changes it in one go), so
//! the guard is taken over instead of spreading the panic to every later user.
//! These helpers never hold a lock themselves: the caller's guard does.

use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Locks `mutex`, taking over the guard of a poisoned one.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Read-locks `rwlock`, taking over the guard of a poisoned one.
pub(crate) fn read<T>(rwlock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    rwlock
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Write-locks `rwlock`, taking over the guard of a poisoned one.
pub(crate) fn write<T>(rwlock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    rwlock
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
