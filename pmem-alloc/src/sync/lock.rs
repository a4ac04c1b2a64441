//! The allocation-free lock of the engine: usable inside a `GlobalAlloc`, takeable in a `fork`
//! prepare handler and releasable in the parent and child handlers, never poisoned.
//!
//! This file is compiled twice: into the library (std atomics, via `super::atomic`) and into the
//! loom model test `tests/loom_lock.rs` (loom atomics), so the models check this very code.

use super::atomic::{AtomicBool, Ordering};
use std::cell::UnsafeCell;

/// A test-and-test-and-set lock with bounded spinning, then `yield`.
#[derive(Debug)]
pub(crate) struct RawLock {
    locked: AtomicBool,
}

impl RawLock {
    // `const` in the library, plain under loom (whose atomics have no const constructor).
    super::maybe_const_fn! {
        pub(crate) fn new() -> Self {
            RawLock {
                locked: AtomicBool::new(false),
            }
        }
    }

    #[inline]
    pub(crate) fn lock(&self) {
        if self
            .locked
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
        {
            return;
        }
        self.lock_slow();
    }

    #[cold]
    fn lock_slow(&self) {
        let mut spins = 0u32;
        loop {
            while self.locked.load(Ordering::Relaxed) {
                super::backoff(&mut spins);
            }
            if self
                .locked
                .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                return;
            }
        }
    }

    /// # Safety
    /// The caller must hold the lock (or, in a fork child handler, the parent's prepare
    /// handler must have taken it).
    #[inline]
    pub(crate) unsafe fn unlock(&self) {
        self.locked.store(false, Ordering::Release);
    }
}

/// Data protected by a [`RawLock`].
#[derive(Debug)]
pub(crate) struct Locked<T> {
    lock: RawLock,
    data: UnsafeCell<T>,
}

// SAFETY: access to `data` is serialised by `lock`.
unsafe impl<T: Send> Sync for Locked<T> {}
// SAFETY: moving the lock moves the data with it.
unsafe impl<T: Send> Send for Locked<T> {}

impl<T> Locked<T> {
    super::maybe_const_fn! {
        /// A lock usable in a `static`.
        pub(crate) fn new_const(v: T) -> Self {
            Locked {
                lock: RawLock::new(),
                data: UnsafeCell::new(v),
            }
        }
    }

    pub(crate) fn new(v: T) -> Self {
        Locked {
            lock: RawLock::new(),
            data: UnsafeCell::new(v),
        }
    }

    #[inline]
    pub(crate) fn lock(&self) -> Guard<'_, T> {
        self.lock.lock();
        Guard { l: self }
    }

    /// The data, for fork handlers that hold the raw lock.
    pub(crate) fn data_ptr(&self) -> *mut T {
        self.data.get()
    }

    /// The raw lock, for fork handlers.
    #[allow(dead_code)]
    pub(crate) fn raw(&self) -> &RawLock {
        &self.lock
    }
}

/// Holds a [`Locked`] until dropped.
pub(crate) struct Guard<'a, T> {
    l: &'a Locked<T>,
}

impl<T> std::ops::Deref for Guard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard proves the lock is held, so no other reference exists.
        unsafe { &*self.l.data.get() }
    }
}

impl<T> std::ops::DerefMut for Guard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as above; `&mut self` makes this the only access through the guard.
        unsafe { &mut *self.l.data.get() }
    }
}

impl<T> Drop for Guard<'_, T> {
    fn drop(&mut self) {
        // SAFETY: the guard was created by taking the lock.
        unsafe { self.l.lock.unlock() }
    }
}
