//! Synchronisation for the engine. The lock lives in `lock.rs` and the staged-write gate in
//! `gate.rs`, both written against `atomic` and `backoff` from this module so
//! that the loom tests can compile them against loom.

pub(crate) mod atomic {
    #[allow(unused_imports)]
    pub(crate) use std::sync::atomic::{
        fence, AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering,
    };
}

#[allow(unused_imports)]
pub(crate) use atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize};

/// Makes `fn` items `const` (the loom build of lock.rs defines this without `const`).
macro_rules! maybe_const_fn {
    ($(#[$m:meta])* $vis:vis fn $($rest:tt)*) => { $(#[$m])* $vis const fn $($rest)* };
}
use maybe_const_fn;

/// One step of waiting for another thread: a spin hint for the first 64 steps, then a yield of
/// the CPU (the loom builds of `lock.rs` and `gate.rs` define this as a yield).
fn backoff(spins: &mut u32) {
    if *spins < 64 {
        *spins += 1;
        std::hint::spin_loop();
    } else {
        std::thread::yield_now();
    }
}

mod gate;
mod lock;
pub(crate) use gate::{RangeLocks, WriteGate};
#[allow(unused_imports)]
pub(crate) use lock::{Guard, Locked, RawLock};
