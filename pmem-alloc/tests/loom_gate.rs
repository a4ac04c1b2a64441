//! loom model of the gate between staged writes on their fast path and transactions that hand
//! out references (`src/sync/gate.rs`, compiled here against loom's atomics, so loom explores
//! every interleaving of the real code).
//!
//! The properties: memory that a staged write changes in place on its fast path is never read
//! through a reference that a transaction handed out while the write is in progress, and two
//! staged writes of the same bytes never write them at the same time (`RangeLocks`). The data
//! is a `loom::cell::UnsafeCell`: loom fails the model on any two accesses to it, one a write,
//! that are not ordered by happens-before. The lane bookkeeping (`busy`, `pending`) follows the lane table:
//! a writer reserves its lane before it enters the gate and publishes it in `pending` after it
//! leaves.
//!
//! Run: `RUSTFLAGS="--cfg loom" cargo test -p pmem-alloc --release --test loom_gate`
//! (tools/test-all.sh does, in its own target directory). Without `--cfg loom` this file is empty.
#![cfg(loom)]
#![allow(dead_code, unreachable_pub)]

mod atomic {
    pub(crate) use loom::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
}
/// Under loom every wait step is a yield (loom must see the thread give way).
fn backoff(_spins: &mut u32) {
    loom::thread::yield_now();
}
#[path = "../src/sync/gate.rs"]
mod gate;

use atomic::{AtomicU64, Ordering};
use gate::{RangeLocks, WriteGate};
use loom::cell::UnsafeCell;
use loom::sync::Arc;

fn model<F: Fn() + Sync + Send + 'static>(f: F) {
    model_bounded(3, f);
}

/// A model with at most `preemptions` preemptions per execution (three threads that spin need a
/// lower bound to finish in reasonable time).
fn model_bounded<F: Fn() + Sync + Send + 'static>(preemptions: usize, f: F) {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(preemptions);
    b.max_branches = 100_000;
    b.check(f);
}

/// A pool as the gate sees it: the lanes' bits and one object staged writes change.
struct Shared {
    gate: WriteGate,
    ranges: RangeLocks,
    busy: AtomicU64,
    pending: AtomicU64,
    data: UnsafeCell<u64>,
    /// Staged writes that took the fast path / the slow path.
    fast: AtomicU64,
    slow: AtomicU64,
}

// SAFETY: `data` is only accessed under the gate's protocol, which this model checks.
unsafe impl Sync for Shared {}

impl Shared {
    fn new(lanes: usize) -> Arc<Shared> {
        Arc::new(Shared {
            gate: WriteGate::new(lanes),
            ranges: RangeLocks::default(),
            busy: AtomicU64::new(0),
            pending: AtomicU64::new(0),
            data: UnsafeCell::new(0),
            fast: AtomicU64::new(0),
            slow: AtomicU64::new(0),
        })
    }

    /// A staged write on `lane`: on the fast path it writes in place; on the slow path the
    /// real code registers its ranges in the borrow table, which refuses them while borrowed,
    /// so the model writes nothing.
    fn staged_write(&self, lane: usize) {
        self.busy.fetch_or(1 << lane, Ordering::AcqRel);
        // the object's 8 bytes at a pool address (any: the stripe is what matters)
        let stripes = RangeLocks::mask([(0x1000usize, 8usize)].into_iter());
        self.ranges.lock(stripes);
        if self.gate.enter(lane) {
            // SAFETY: checked by loom: no reference is out while the gate is entered.
            self.data.with_mut(|p| unsafe { *p += 1 });
            self.gate.leave(lane);
            self.fast.fetch_add(1, Ordering::Relaxed);
        } else {
            self.slow.fetch_add(1, Ordering::Relaxed);
        }
        self.ranges.unlock(stripes);
        self.pending.fetch_or(1 << lane, Ordering::Release);
    }

    /// A transaction hands out a reference to the object, reads it twice, and ends.
    fn transaction_reads(&self) {
        self.gate
            .announce(|| self.busy.load(Ordering::Relaxed) & !self.pending.load(Ordering::Acquire));
        self.data.with(|p| {
            // SAFETY: checked by loom: no fast-path write overlaps the reference.
            let a = unsafe { *p };
            loom::thread::yield_now();
            // SAFETY: as above.
            let b = unsafe { *p };
            assert_eq!(a, b, "the object changed under a handed-out reference");
        });
        self.gate.withdraw();
    }
}

/// One staged writer against one borrowing transaction: every interleaving either lets the
/// write finish before the reference is handed out, or sends the write to the slow path.
#[test]
fn a_fast_write_never_overlaps_a_handed_out_reference() {
    model(|| {
        let s = Shared::new(2);
        let w = {
            let s = s.clone();
            loom::thread::spawn(move || s.staged_write(0))
        };
        s.transaction_reads();
        w.join().unwrap();
        assert_eq!(
            s.fast.load(Ordering::Relaxed) + s.slow.load(Ordering::Relaxed),
            1
        );
    });
}

/// Two writers on different lanes against one transaction.
#[test]
fn two_lanes_against_one_transaction() {
    model_bounded(2, || {
        let s = Shared::new(2);
        let ws: Vec<_> = (0..2)
            .map(|lane| {
                let s = s.clone();
                loom::thread::spawn(move || s.staged_write(lane))
            })
            .collect();
        s.transaction_reads();
        for w in ws {
            w.join().unwrap();
        }
    });
}

/// Once the transaction has withdrawn, writers take the fast path again, and without any
/// transaction every write is fast: the gate does not send writers to the slow path for
/// nothing.
#[test]
fn writers_are_fast_when_nobody_borrows() {
    model(|| {
        let s = Shared::new(2);
        s.transaction_reads();
        let w = {
            let s = s.clone();
            loom::thread::spawn(move || s.staged_write(1))
        };
        s.staged_write(0);
        w.join().unwrap();
        assert_eq!(s.fast.load(Ordering::Relaxed), 2);
        assert_eq!(s.slow.load(Ordering::Relaxed), 0);
        s.data.with(|p| {
            // SAFETY: both writers joined.
            assert_eq!(unsafe { *p }, 2);
        });
    });
}
