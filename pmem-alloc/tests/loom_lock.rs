//! loom models of the engine's cross-thread structures. The lock source (`src/sync/lock.rs`) is
//! compiled here against loom's atomics, so loom explores every interleaving of the real code.
//!
//! Run: `RUSTFLAGS="--cfg loom" cargo test -p pmem-alloc --release --test loom_lock`
//! (tools/test-all.sh does, in its own target directory). Without `--cfg loom` this file is empty.
#![cfg(loom)]
#![allow(dead_code, unreachable_pub)]

mod atomic {
    pub(crate) use loom::sync::atomic::{AtomicBool, Ordering};
}
macro_rules! maybe_const_fn {
    ($(#[$m:meta])* $vis:vis fn $($rest:tt)*) => { $(#[$m])* $vis fn $($rest)* };
}
use maybe_const_fn;
/// Under loom every wait step is a yield (loom must see the thread give way).
fn backoff(_spins: &mut u32) {
    loom::thread::yield_now();
}
fn model<F: Fn() + Sync + Send + 'static>(f: F) {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(3);
    b.check(f);
}
#[path = "../src/sync/lock.rs"]
mod lock;

use lock::Locked;
use loom::sync::Arc;

/// Mutual exclusion and visibility: increments under the lock are never lost.
#[test]
fn lock_excludes_and_publishes() {
    model(|| {
        let l = Arc::new(Locked::new(0u32));
        let hs: Vec<_> = (0..2)
            .map(|_| {
                let l = l.clone();
                loom::thread::spawn(move || {
                    let mut g = l.lock();
                    let v = *g;
                    loom::thread::yield_now();
                    *g = v + 1;
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        assert_eq!(*l.lock(), 2);
    });
}

/// The remote-free pattern of the engine: a block allocated by one thread (taken from a bin) is
/// freed by another thread (returned to the bin under its lock) and can be taken again; a block
/// is never held by two owners.
#[test]
fn remote_free_through_a_bin_never_duplicates_a_block() {
    model(|| {
        // the bin: free block ids and a taken bitmap, as in a run
        let bin = Arc::new(Locked::new((vec![1u8, 2], [false; 3])));
        let take = |b: &Locked<(Vec<u8>, [bool; 3])>| {
            let mut g = b.lock();
            let x = g.0.pop()?;
            assert!(!g.1[x as usize], "block {x} handed out twice");
            g.1[x as usize] = true;
            Some(x)
        };
        let give = |b: &Locked<(Vec<u8>, [bool; 3])>, x: u8| {
            let mut g = b.lock();
            assert!(g.1[x as usize], "double free of {x}");
            g.1[x as usize] = false;
            g.0.push(x);
        };
        let a = take(&bin).unwrap();
        let (b1, b2) = (bin.clone(), bin.clone());
        // thread 1 frees the block thread 0 allocated (remote free) ...
        let t1 = loom::thread::spawn(move || give(&b1, a));
        // ... while thread 2 allocates concurrently
        let t2 = loom::thread::spawn(move || {
            let x = take(&b2);
            if let Some(x) = x {
                give(&b2, x);
            }
        });
        t1.join().unwrap();
        t2.join().unwrap();
        let g = bin.lock();
        assert_eq!(g.0.len(), 2);
        assert!(g.1.iter().all(|t| !t));
    });
}
