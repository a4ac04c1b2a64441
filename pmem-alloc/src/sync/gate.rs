//! The gate between staged writes on their fast path and transactions that hand out references
//! into the pool.
//!
//! A staged write changes its ranges in place after its commit fence. Safe code must never see
//! memory change under a reference that a running transaction handed out, so a staged write
//! either registers its ranges in the borrow table (the slow path, which refuses borrowed
//! ranges) or, while no transaction holds borrows, skips the table: the fast path. The gate
//! makes the fast path safe without a lock, with the store-buffering (Dekker) pattern:
//!
//! - a writer sets its lane's flag, then a sequentially consistent fence, then reads the
//!   number of borrowing transactions; if it is not zero, it clears its flag and takes the slow
//!   path;
//! - a transaction about to borrow for the first time increments that number, then a
//!   sequentially consistent fence, then waits until the flag of every lane that may be on the
//!   fast path is clear.
//!
//! The two fences are ordered one way or the other: either the writer's fence comes first, so
//! the transaction's wait sees the flag and waits for the in-place writes, or the
//! transaction's fence comes first, so the writer sees the borrower and registers. Fences
//! rather than sequentially consistent accesses: the model checker (loom) models such fences
//! exactly, so the proof in `tests/loom_gate.rs` is a proof of this code.
//!
//! This file is compiled twice: into the library (std atomics, via `super::atomic`) and into
//! the loom model test `tests/loom_gate.rs`.

use super::atomic::{fence, AtomicBool, AtomicU64, Ordering};

/// A flag in a cache line of its own (writers on different lanes do not share lines).
#[derive(Debug)]
#[repr(align(128))]
struct PaddedFlag(AtomicBool);

/// The per-pool gate: one fast-path flag per lane, and the number of transactions that borrow.
#[derive(Debug)]
pub(crate) struct WriteGate {
    fast: Box<[PaddedFlag]>,
    borrowers: AtomicU64,
}

impl Default for WriteGate {
    /// A gate for the most lanes a pool can have (64).
    fn default() -> WriteGate {
        WriteGate::new(64)
    }
}

impl WriteGate {
    /// A gate for `lanes` lanes (at most 64).
    pub(crate) fn new(lanes: usize) -> WriteGate {
        WriteGate {
            fast: (0..lanes.min(64))
                .map(|_| PaddedFlag(AtomicBool::new(false)))
                .collect(),
            borrowers: AtomicU64::new(0),
        }
    }

    /// A writer holding `lane` asks for the fast path. True: no transaction borrows, and none
    /// will hand out a reference before [`WriteGate::leave`]; the writer may write in place.
    /// False: a transaction borrows (or is starting to); the writer must register its ranges.
    pub(crate) fn enter(&self, lane: usize) -> bool {
        let Some(f) = self.fast.get(lane) else {
            return false;
        };
        f.0.store(true, Ordering::Relaxed);
        // Dekker: the flag is visible to a borrower whose fence comes after this one.
        fence(Ordering::SeqCst);
        // Acquire: a transaction that withdrew (release) finished reading through its
        // references before this writer writes.
        if self.borrowers.load(Ordering::Acquire) == 0 {
            return true;
        }
        f.0.store(false, Ordering::Relaxed);
        false
    }

    /// Ends a fast-path write begun by a successful [`WriteGate::enter`]: the in-place writes
    /// happen before the return of a borrower's wait that sees the flag clear.
    pub(crate) fn leave(&self, lane: usize) {
        if let Some(f) = self.fast.get(lane) {
            f.0.store(false, Ordering::Release);
        }
    }

    /// A transaction is about to borrow for the first time: counts it, then waits until no
    /// writer is on the fast path on any lane of `lanes()` (a mask of the lanes that may be;
    /// read after the fence). Later writers see the count and take the slow path.
    pub(crate) fn announce(&self, lanes: impl FnOnce() -> u64) {
        self.borrowers.fetch_add(1, Ordering::Relaxed);
        // Dekker: a writer whose fence comes after this one sees the count.
        fence(Ordering::SeqCst);
        let mut m = lanes();
        while m != 0 {
            let lane = m.trailing_zeros() as usize;
            m &= m - 1;
            let Some(f) = self.fast.get(lane) else {
                break;
            };
            let mut spins = 0u32;
            while f.0.load(Ordering::Acquire) {
                super::backoff(&mut spins);
            }
        }
    }

    /// The transaction that announced itself no longer borrows.
    pub(crate) fn withdraw(&self) {
        self.borrowers.fetch_sub(1, Ordering::Release);
    }
}

/// Striped locks over pool pages that serialise staged writes whose ranges share a page.
///
/// Two staged writes of the same bytes must not write them in place at the same time (a data
/// race, and a mix of both updates in memory), and they must reach memory in the order of
/// their sequence numbers, which is the order a replay after a crash applies them in. So a
/// staged write takes the locks of its pages before it takes its sequence number and holds them
/// until its in-place writes are done. A 4 KiB page maps to one of 64 stripes, and the stripes
/// are the bits of one word: a write takes all of its stripes with one compare-and-swap (no
/// deadlock, no lock order) and releases them with one atomic AND. Writes whose pages do not
/// share a stripe never wait for each other; an update of one object usually needs one stripe.
#[derive(Debug, Default)]
pub(crate) struct RangeLocks {
    held: AtomicU64,
}

impl RangeLocks {
    /// The stripes of the pages of `ranges` (address, length), as a bit mask.
    pub(crate) fn mask(ranges: impl Iterator<Item = (usize, usize)>) -> u64 {
        let mut m = 0u64;
        for (start, len) in ranges {
            if len == 0 {
                continue;
            }
            let (first, last) = (start >> 12, (start + len - 1) >> 12);
            if last - first >= 63 {
                return u64::MAX;
            }
            for page in first..=last {
                m |= 1 << Self::stripe(page);
            }
        }
        m
    }

    /// The stripe of page `page` (address / 4096).
    fn stripe(page: usize) -> u32 {
        ((page ^ (page >> 6) ^ (page >> 12) ^ (page >> 18)) & 63) as u32
    }

    /// Takes every stripe of `mask` at once, waiting while another write holds any of them.
    pub(crate) fn lock(&self, mask: u64) {
        let mut spins = 0u32;
        let mut cur = self.held.load(Ordering::Relaxed);
        loop {
            if cur & mask == 0 {
                match self.held.compare_exchange_weak(
                    cur,
                    cur | mask,
                    Ordering::Acquire,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => return,
                    Err(now) => {
                        cur = now;
                        continue;
                    }
                }
            }
            super::backoff(&mut spins);
            cur = self.held.load(Ordering::Relaxed);
        }
    }

    /// Releases the stripes of `mask` (taken by [`RangeLocks::lock`]).
    pub(crate) fn unlock(&self, mask: u64) {
        self.held.fetch_and(!mask, Ordering::Release);
    }
}
