//! Allocator comparison: pmem-alloc's volatile heap and persistent pool against real peers
//! (glibc, jemalloc, mimalloc, memkind's PMEM kind, PMDK's libpmemobj), side by side in one
//! process.
//!
//! - [`AllocPeer`]: the trait every peer implements (`name`, `alloc`, `free`); a new peer is
//!   one small impl plus one line in [`peers::open`].
//! - [`peers`]: the implementations. Peer libraries are loaded with
//!   `dlopen(RTLD_NOW | RTLD_LOCAL)` ([`dl`]) and called through non-standard entry points, so
//!   none of them replaces the process's `malloc` (glibc stays the process allocator and is a
//!   peer itself).
//! - [`workloads`]: the throughput workloads (pairs, batches, random mix, threadtest, larson,
//!   sh6bench, cache-scratch) on a small pool of persistent worker threads, and the interleaved
//!   trial driver.
//! - [`space`]: metadata overhead, usable fraction and footprint after fragmentation (each run in
//!   a fresh child process).
//! - [`recovery`]: open-to-first-allocation times after an unclean exit (a SIGKILLed child) and
//!   after a clean close, pmem-alloc against libpmemobj.
//! - [`report`]: the Markdown report with target ratios and its SVG plot.
//!
//! # Why `job` is a trait method
//! The registry hands out `Arc<dyn AllocPeer>`. The measurement loops are built by the provided
//! method [`AllocPeer::job`], whose body is compiled once per implementing type: inside the
//! loops `alloc` and `free` are direct (inlinable) calls, and only a whole run is dispatched
//! through the vtable.

pub mod dl;
pub mod peers;
pub mod recovery;
pub mod report;
pub mod rng;
pub mod space;
pub mod workloads;

use std::sync::Arc;

/// Whether a peer's memory survives a restart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum PeerKind {
    /// A DRAM allocator (the process's glibc, jemalloc, mimalloc).
    Dram,
    /// Volatile memory from a PMEM-style file (memkind PMEM kind, pmem-alloc's volatile heap).
    VolatilePmem,
    /// A persistent heap (libpmemobj, pmem-alloc's pool).
    Persistent,
}

/// An allocator under test. Thread-safe: every method may be called from any thread, and a
/// block may be freed by another thread than the one that allocated it.
pub trait AllocPeer: Send + Sync + 'static {
    /// Short name used in tables (`jemalloc`, `pmem-alloc pool`, ...).
    fn name(&self) -> &str;

    /// What kind of memory it hands out.
    fn kind(&self) -> PeerKind;

    /// Allocates `size` bytes (at least 8-byte aligned); null when out of memory.
    fn alloc(&self, size: usize) -> *mut u8;

    /// Frees a block.
    ///
    /// # Safety
    /// `p` must come from [`AllocPeer::alloc`] of this peer with the same `size`, and must not
    /// have been freed since.
    unsafe fn free(&self, p: *mut u8, size: usize);

    /// Builds a run of workload `w` on `threads` threads repeating its unit `reps` times. The
    /// body is compiled per implementing type (see the module documentation).
    fn job(
        self: Arc<Self>,
        w: workloads::Workload,
        threads: usize,
        reps: u64,
    ) -> Arc<dyn workloads::Job> {
        workloads::make_job(self, w, threads, reps)
    }
}
