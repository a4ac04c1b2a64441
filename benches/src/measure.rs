//! Workloads, the per-operation measurement loop and the interleaving trial driver.
//!
//! A [`Workload`] is a fixed, deterministic sequence of offsets into a peer's region; every
//! peer replays exactly the same sequence (in the `compare` binary, on the same shared file),
//! so the access patterns are identical. For `persist`, the range is written immediately before each
//! call (outside the timed window) so that the flush has dirty lines to write back.

use crate::peer::PersistPeer;
use crate::timer::{self, Timer};
use pmem_alloc::flush::FLUSH_ALIGN;
use pmem_alloc::map::Mapping;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{compiler_fence, Ordering};
use std::sync::Arc;

/// The operations measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// `persist(addr, len)` of lines written just before.
    Persist,
    /// `memcpy_persist(dst, src, len)` from a DRAM source.
    MemcpyPersist,
    /// `memset_persist(dst, byte, len)`.
    MemsetPersist,
    /// The writes of [`Op::Persist`] without the persist (its baseline).
    Dirty,
}

impl Op {
    /// Stable name, as in result files.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Persist => "persist",
            Op::MemcpyPersist => "memcpy_persist",
            Op::MemsetPersist => "memset_persist",
            Op::Dirty => "dirty",
        }
    }

    /// Whether results are reported as bandwidth (GB/s) rather than latency.
    pub fn is_bandwidth(self) -> bool {
        matches!(self, Op::MemcpyPersist | Op::MemsetPersist)
    }
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Bytes over which `persist` rotates (the lines are re-dirtied before each call).
pub const PERSIST_WORKING_SET: usize = 1 << 20;
/// Bytes over which copy/fill destinations rotate (larger than the last-level cache slice a
/// VM usually sees, so destinations are mostly cold, as for a real pool).
pub const COPY_WORKING_SET: usize = 64 << 20;

/// A page-aligned DRAM source buffer for copies, filled with a non-trivial pattern.
#[derive(Debug)]
pub struct Source {
    map: Mapping,
}

impl Source {
    /// Allocates and fills `len` bytes.
    pub fn new(len: usize) -> Source {
        let map = Mapping::anonymous(len.max(1)).expect("anonymous mapping for the copy source");
        for i in (0..map.len()).step_by(8) {
            let v = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15).to_le_bytes();
            map.write_at(i, &v).expect("in bounds");
        }
        Source { map }
    }

    /// Base address.
    pub fn as_ptr(&self) -> *const u8 {
        self.map.as_ptr()
    }

    /// Length.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the buffer is empty (never).
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// One operation at one size over a fixed rotation of offsets.
#[derive(Clone, Debug)]
pub struct Workload {
    /// The operation.
    pub op: Op,
    /// Bytes per operation.
    pub size: usize,
    offsets: Vec<usize>,
    region_needed: usize,
    src: Option<Arc<Source>>,
}

fn round_up(x: usize, a: usize) -> usize {
    x.div_ceil(a) * a
}

/// A deterministic permutation of `0..n` (xorshift64 Fisher-Yates, fixed seed), so that the
/// rotation does not walk memory sequentially and every run sees the same order.
fn permutation(n: usize, seed: u64) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    let mut s = seed | 1;
    for i in (1..n).rev() {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        let j = (s % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
    v
}

impl Workload {
    /// `persist` of `size` bytes: slots one (rounded-up) line-multiple apart over
    /// [`PERSIST_WORKING_SET`] (8..4096 slots). Ranges shorter than a line sit at varying
    /// offsets inside their line without crossing it.
    pub fn persist(size: usize) -> Workload {
        assert!(size > 0);
        let stride = round_up(size.max(FLUSH_ALIGN), FLUSH_ALIGN);
        let slots = (PERSIST_WORKING_SET / stride).clamp(8, 4096);
        let per_line = if size < FLUSH_ALIGN {
            FLUSH_ALIGN / size
        } else {
            1
        };
        let offsets = permutation(slots, 0x5eed_0001 ^ size as u64)
            .into_iter()
            .map(|s| s * stride + (s % per_line) * size.min(FLUSH_ALIGN))
            .collect();
        Workload {
            op: Op::Persist,
            size,
            offsets,
            region_needed: slots * stride,
            src: None,
        }
    }

    /// `memcpy_persist` of `size` bytes from `src` (at least `size` long) to line-aligned
    /// destinations rotating over [`COPY_WORKING_SET`] (2..1024 slots).
    pub fn memcpy(size: usize, src: Arc<Source>) -> Workload {
        assert!(src.len() >= size);
        let mut w = Self::copy_like(Op::MemcpyPersist, size);
        w.src = Some(src);
        w
    }

    /// `memset_persist` of `size` bytes, destinations as for [`Workload::memcpy`].
    pub fn memset(size: usize) -> Workload {
        Self::copy_like(Op::MemsetPersist, size)
    }

    fn copy_like(op: Op, size: usize) -> Workload {
        assert!(size > 0);
        let stride = round_up(size, FLUSH_ALIGN);
        let slots = (COPY_WORKING_SET / stride).clamp(2, 1024);
        let offsets = permutation(slots, 0x5eed_0002 ^ size as u64)
            .into_iter()
            .map(|s| s * stride)
            .collect();
        Workload {
            op,
            size,
            offsets,
            region_needed: slots * stride,
            src: None,
        }
    }

    /// The same rotation with the persist left out: the baseline of [`Op::Persist`].
    pub fn dirty_only(&self) -> Workload {
        Workload {
            op: Op::Dirty,
            ..self.clone()
        }
    }

    /// Bytes of region a peer needs for this workload.
    pub fn region_needed(&self) -> usize {
        self.region_needed
    }

    /// Number of distinct offsets in the rotation.
    pub fn slots(&self) -> usize {
        self.offsets.len()
    }

    /// A batch length giving roughly `target_bytes` of work per trial (at least `min`,
    /// at most `max` operations).
    pub fn batch_len(&self, target_bytes: usize, min: usize, max: usize) -> usize {
        (target_bytes / self.size).clamp(min, max)
    }
}

/// The measurement loop shared by every peer (called through
/// [`PersistPeer::run_batch`], so `P` is the concrete peer type and its operations are
/// direct calls). Runs `n` operations back to back inside one timed window and returns its
/// net ticks.
///
/// One window around the whole batch, not one per operation: a flush instruction retires long
/// before its write-back is done, and the fence that ends a persist does not wait for it
/// everywhere (it does not on the AMD machine of BENCHMARKS.md), so the cost of a persist
/// partly lands on the *following* stores. Only a back-to-back loop charges it.
///
/// [`Op::Persist`] writes each range right before persisting it; [`Op::Dirty`] runs the same
/// loop without the persist, so that `persist - dirty` is the time the persist adds.
///
/// # Panics
/// If the peer's region is smaller than [`Workload::region_needed`].
pub fn run_batch<P: PersistPeer + ?Sized>(
    peer: &P,
    w: &Workload,
    cursor: usize,
    n: usize,
    timer: &Timer,
) -> u64 {
    assert!(
        w.region_needed <= peer.region_len(),
        "{}: region of {} bytes is smaller than the {} the workload needs",
        peer.name(),
        peer.region_len(),
        w.region_needed
    );
    let base = peer.base();
    let slots = w.offsets.len();
    // The slot of operation `i`, and the byte it writes.
    let at = |i: usize| {
        let k = cursor + i;
        // SAFETY: every offset + size is at most `region_needed`, checked above against the
        // peer's region length.
        (unsafe { base.add(w.offsets[k % slots]) }, (k as u8) | 1)
    };
    compiler_fence(Ordering::SeqCst);
    let t0 = timer::start();
    match w.op {
        Op::Persist => {
            for i in 0..n {
                let (dst, byte) = at(i);
                // SAFETY: `dst..dst+size` is inside the region (see `at`) and writable.
                unsafe {
                    std::ptr::write_bytes(dst, byte, w.size);
                    peer.persist(dst, w.size);
                }
            }
        }
        Op::Dirty => {
            for i in 0..n {
                let (dst, byte) = at(i);
                // SAFETY: as above.
                unsafe { std::ptr::write_bytes(dst, byte, w.size) };
                // Same loop shape as `Persist`, and the stores cannot be merged across
                // iterations.
                compiler_fence(Ordering::SeqCst);
            }
        }
        Op::MemcpyPersist => {
            let src = w
                .src
                .as_ref()
                .expect("memcpy workload has a source")
                .as_ptr();
            for i in 0..n {
                let (dst, _) = at(i);
                // SAFETY: the destination is inside the region; the source is a separate
                // anonymous mapping of at least `size` bytes (checked in `Workload::memcpy`).
                unsafe { peer.memcpy_persist(dst, src, w.size) };
            }
        }
        Op::MemsetPersist => {
            for i in 0..n {
                let (dst, byte) = at(i);
                // SAFETY: the destination is inside the region.
                unsafe { peer.memset_persist(dst, byte, w.size) };
            }
        }
    }
    let t1 = timer::stop();
    compiler_fence(Ordering::SeqCst);
    timer.net(t1.wrapping_sub(t0))
}

/// Involuntary context switches of the calling thread so far (0 where unknown).
pub fn involuntary_switches() -> u64 {
    // SAFETY: `ru` is a plain output struct, fully written by getrusage on success.
    unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_THREAD, &mut ru) == 0 {
            ru.ru_nivcsw as u64
        } else {
            0
        }
    }
}

/// Runs `f` until it completes without the thread being preempted (no involuntary context
/// switch during the call), at most `1 + max_retries` times; returns the last result and the
/// number of reruns. On a shared machine this drops trials in which another process ran on
/// our CPU, which would otherwise charge its time to whichever peer was running.
pub fn undisturbed<T>(max_retries: u32, mut f: impl FnMut() -> T) -> (T, u32) {
    let mut retries = 0;
    loop {
        let before = involuntary_switches();
        let v = f();
        if involuntary_switches() == before || retries >= max_retries {
            return (v, retries);
        }
        retries += 1;
    }
}

/// Runs `warmup` discarded rounds and then `trials` measured rounds over `n` contenders,
/// alternating the order every round (0,1,..,n-1 then n-1,..,0), so slow drifts of a noisy
/// machine hit every contender alike. `trial(i)` runs one trial of contender `i` and returns
/// its value. Result: `values[i][t]`.
pub fn interleave<T, F: FnMut(usize) -> T>(
    n: usize,
    warmup: usize,
    trials: usize,
    mut trial: F,
) -> Vec<Vec<T>> {
    let mut values: Vec<Vec<T>> = (0..n).map(|_| Vec::with_capacity(trials)).collect();
    for round in 0..warmup + trials {
        let order: Vec<usize> = if round % 2 == 0 {
            (0..n).collect()
        } else {
            (0..n).rev().collect()
        };
        for i in order {
            let v = trial(i);
            if round >= warmup {
                values[i].push(v);
            }
        }
    }
    values
}

/// The `q`-quantile (0..=1) of `v`, linearly interpolated; NaN for an empty slice.
pub fn quantile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let pos = q.clamp(0.0, 1.0) * (s.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    s[lo] + (s[hi] - s[lo]) * (pos - lo as f64)
}

/// The median of `v`.
pub fn median(v: &[f64]) -> f64 {
    quantile(v, 0.5)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutation_is_a_permutation() {
        let mut p = permutation(1000, 7);
        p.sort_unstable();
        assert_eq!(p, (0..1000).collect::<Vec<_>>());
    }

    #[test]
    fn persist_offsets_stay_inside_their_line_and_region() {
        for size in [1, 8, 24, 64, 100, 256, 4096, 65536] {
            let w = Workload::persist(size);
            for &o in &w.offsets {
                assert!(o + size <= w.region_needed());
                if size <= 64 {
                    assert_eq!(o / 64, (o + size - 1) / 64, "size {size} offset {o}");
                } else {
                    assert_eq!(o % 64, 0);
                }
            }
        }
    }

    #[test]
    fn interleave_alternates_order_and_drops_warmup() {
        let mut log = Vec::new();
        let v = interleave(2, 1, 3, |i| {
            log.push(i);
            i as f64
        });
        assert_eq!(log, vec![0, 1, 1, 0, 0, 1, 1, 0]);
        assert_eq!(v, vec![vec![0.0; 3], vec![1.0; 3]]);
    }

    /// The loop really performs the operations it times, at the offsets of the rotation.
    #[test]
    fn batches_write_what_they_claim() {
        use crate::peer::{OursPeer, PersistPeer};
        let flush = pmem_alloc::flush::CpuFeatures::get().best_method();
        let map = Mapping::anonymous(4 << 20).unwrap();
        let peer = OursPeer::with_mapping(map, flush).unwrap();
        let timer = Timer::calibrate(std::time::Duration::from_millis(1));
        let src = Arc::new(Source::new(4096));
        let read = |off: usize, len: usize| {
            // SAFETY: the offsets come from workloads whose region fits the 4 MiB mapping.
            unsafe { std::slice::from_raw_parts(peer.base().add(off), len) }.to_vec()
        };

        let w = Workload::memcpy(4096, src.clone());
        assert!(w.region_needed() <= peer.region_len());
        peer.run_batch(&w, 5, 3, &timer);
        // SAFETY: the source mapping is 4096 bytes long.
        let want = unsafe { std::slice::from_raw_parts(src.as_ptr(), 4096) };
        for k in 5..8 {
            assert_eq!(read(w.offsets[k % w.slots()], 4096), want);
        }

        let w = Workload::memset(1000);
        peer.run_batch(&w, 0, 3, &timer);
        for k in 0..3 {
            assert!(read(w.offsets[k], 1000).iter().all(|&b| b == (k as u8) | 1));
        }

        let w = Workload::persist(24);
        peer.run_batch(&w, 7, 2, &timer);
        for k in 7..9 {
            assert!(read(w.offsets[k], 24).iter().all(|&b| b == (k as u8) | 1));
        }
    }

    #[test]
    fn quantiles() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(quantile(&[0.0, 10.0], 0.25), 2.5);
        assert!(median(&[]).is_nan());
    }
}
