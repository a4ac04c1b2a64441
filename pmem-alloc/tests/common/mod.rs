//! Shared by the crash-sweep tests (`crash_pool`, `crash_tx`, `crash_collections`) and the
//! process-kill test (`kill_pool`): the checksummed list node, reopening a crash image, the
//! report of a sweep, the heavy sweep over four seeds, and the run of a transactional workload
//! with the check that a crash image holds the state before or after the transaction in
//! progress.

// Every test binary compiles its own copy of this module and uses only part of it.
#![allow(dead_code)]

use pmem_alloc::pool::Pool;
use pmem_alloc::pptr::{PPtr, PSafe};
use pmem_alloc::sim::{Evictions, Recording, SimMedia, SweepReport};
use std::sync::Arc;

/// List node header of the allocator tests; `len` payload bytes follow, `sum` checks `id` and
/// `len` (each test has its own checksum).
#[repr(C)]
pub(crate) struct Node {
    pub(crate) next: PPtr<Node>,
    pub(crate) id: u64,
    pub(crate) len: u64,
    pub(crate) sum: u64,
}
// SAFETY: repr(C), PSafe fields.
unsafe impl PSafe for Node {}

/// Size of the [`Node`] header.
pub(crate) const HDR: usize = std::mem::size_of::<Node>();

/// A simulated pool on a copy of a crash image.
pub(crate) type SimPool = Pool<Arc<SimMedia>>;

/// Opens a crash image as a pool (on strict media: the checks record nothing to sweep).
pub(crate) fn open_image(bytes: &[u8]) -> Result<SimPool, String> {
    let media = Arc::new(SimMedia::from_image_strict(bytes));
    Pool::open_sim(media).map_err(|e| format!("open: {e}"))
}

/// Prints the first five failures of a sweep, each line starting with `prefix`.
pub(crate) fn print_failures(prefix: &str, r: &SweepReport) {
    for f in r.failures.iter().take(5) {
        eprintln!(
            "{prefix}crash point {} variant {}: {}",
            f.crash_point, f.variant, f.message
        );
    }
}

/// Prints the first five failures of the sweep of `seed`; returns the images checked and the
/// failures.
pub(crate) fn tally(seed: u64, r: &SweepReport) -> (usize, usize) {
    print_failures(&format!("seed {seed} "), r);
    (r.checked, r.failures.len())
}

/// A crash during recovery: `media` recorded an open that recovered something (rolled back or
/// replayed); every crash point of that open, with 20 random eviction variants each (eviction
/// seed `seed`), is opened again and must pass `verify` and the pool checker. Prints
/// `"{name}: N images over M crash points, K failures"` and asserts that nothing failed.
pub(crate) fn sweep_recovering_open(
    name: &str,
    media: &SimMedia,
    seed: u64,
    verify: impl Fn(&SimPool) -> Result<(), String>,
) {
    let rec = media.recording();
    assert!(
        rec.fences() >= 2,
        "the recovering open made no durable change"
    );
    let r = rec.sweep(Evictions::Random { seed, samples: 20 }, |img| {
        let mut pool = open_image(img.bytes)?;
        verify(&pool)?;
        pool.check().map_err(|e| format!("check: {e}"))?;
        Ok(())
    });
    print_failures("", &r);
    println!(
        "{name}: {} images over {} crash points, {} failures",
        r.checked,
        r.crash_points,
        r.failures.len()
    );
    assert!(r.failures.is_empty());
}

/// The quick sweep of every `cargo test` run: seed `seed` without evictions, then with three
/// random eviction variants per crash point (eviction seed `ev_seed`). Prints
/// `"{name}: N crash images checked, M failures"`, then asserts that nothing failed and that
/// the run without evictions had more than `min_points` crash points.
pub(crate) fn quick_sweep(
    name: &str,
    seed: u64,
    ev_seed: u64,
    min_points: usize,
    mut sweep: impl FnMut(u64, Evictions) -> (usize, usize),
) {
    let (c1, f1) = sweep(seed, Evictions::None);
    let (c2, f2) = sweep(
        seed,
        Evictions::Random {
            seed: ev_seed,
            samples: 3,
        },
    );
    println!(
        "{name}: {} crash images checked, {} failures",
        c1 + c2,
        f1 + f2
    );
    assert!(c1 > min_points, "only {c1} crash points");
    assert_eq!(f1 + f2, 0);
}

/// The heavy sweep: seeds 1 to 4, each without evictions and then with `samples` random
/// eviction variants per crash point (eviction seed `seed * seed_factor`). Prints
/// `"{name}: N crash images checked, M failures"`, then asserts that nothing failed and that
/// at least `min_images` images were checked.
pub(crate) fn heavy_sweep(
    name: &str,
    seed_factor: u64,
    samples: usize,
    min_images: usize,
    mut sweep: impl FnMut(u64, Evictions) -> (usize, usize),
) {
    let mut checked = 0;
    let mut failed = 0;
    for seed in 1..=4 {
        for ev in [
            Evictions::None,
            Evictions::Random {
                seed: seed * seed_factor,
                samples,
            },
        ] {
            let (c, f) = sweep(seed, ev);
            checked += c;
            failed += f;
        }
    }
    println!("{name}: {checked} crash images checked, {failed} failures");
    assert_eq!(failed, 0);
    assert!(checked >= min_images, "only {checked} crash images");
}

/// A recorded transactional workload.
pub(crate) struct Run<S> {
    /// The fences of the workload (setup excluded).
    pub(crate) rec: Recording,
    /// Fences completed after each attempt, and the state after it.
    pub(crate) after: Vec<(usize, S)>,
    /// The state before the first attempt.
    pub(crate) initial: S,
}

impl<S: PartialEq> Run<S> {
    /// Checks that `st`, found after a crash at `crash_point`, is the state after the last
    /// transaction completed before it, or after the one in progress (whose commit store may
    /// have been evicted early). Otherwise returns the transactions completed, the state after
    /// them and the state after the next one (if any).
    pub(crate) fn check_state(
        &self,
        crash_point: usize,
        st: &S,
    ) -> Result<(), (usize, &S, Option<&S>)> {
        let done = self
            .after
            .iter()
            .take_while(|(f, _)| *f <= crash_point)
            .count();
        let prev = if done == 0 {
            &self.initial
        } else {
            &self.after[done - 1].1
        };
        let next = self.after.get(done).map(|(_, s)| s);
        if st == prev || next.is_some_and(|s| st == s) {
            Ok(())
        } else {
            Err((done, prev, next))
        }
    }
}
