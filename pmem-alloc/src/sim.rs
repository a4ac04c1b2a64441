//! The crash simulator: a persistence backend that keeps a shadow *durable image* of a region.
//!
//! The code under test writes to ordinary memory (the *live* region, [`SimMedia::base`]) and
//! persists through [`SimMedia`]'s [`Persist`] implementation, exactly as it would on real
//! persistent memory. The simulator models the media as docs/format.md states it:
//!
//! - `flush(range)` snapshots each overlapping 64-byte line into the *calling thread's* pending
//!   set (a store to the line after the flush is not covered by it);
//! - `drain()` makes the calling thread's pending lines durable, in one step, and counts a
//!   *fence*;
//! - nothing else ever reaches the durable image, except, in crash images built with
//!   [`Evictions`], any subset of the lines that were dirty (or flushed but not yet fenced) at
//!   the crash instant, as cache evictions would.
//!
//! A crash point `k` is the instant after exactly `k` fences, before fence `k + 1`. A recording
//! of `N` fences has `N + 1` crash points. [`Recording::sweep`] builds the media image at every
//! crash point (optionally with eviction variants) and hands it to a checker, which typically
//! reopens it with [`SimMedia::from_image`] and runs recovery and a consistency check.
//!
//! # Examples
//! ```
//! use pmem_alloc::persist::Persist;
//! use pmem_alloc::sim::{Evictions, SimMedia};
//! let media = SimMedia::new(4096);
//! let p = media.base();
//! // SAFETY: (doc example) the region is 4096 bytes of writable memory owned by `media`.
//! unsafe {
//!     p.write(1);            // store, never flushed
//!     p.add(64).write(2);
//!     media.persist(p.add(64), 1);
//! }
//! let rec = media.recording();
//! assert_eq!(rec.fences(), 1);
//! let report = rec.sweep(Evictions::None, |img| {
//!     // after the fence, byte 64 is durable; byte 0 never is (no eviction modelled here)
//!     if img.crash_point == 1 && img.bytes[64] != 2 { return Err("lost".into()); }
//!     if img.bytes[0] != 0 { return Err("unflushed store survived".into()); }
//!     Ok(())
//! });
//! assert_eq!(report.checked, 2);
//! assert!(report.failures.is_empty());
//! ```

use crate::flush::FLUSH_ALIGN;
use crate::map::Mapping;
use crate::persist::Persist;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::sync::Mutex;
use std::thread::ThreadId;

type Line = [u8; FLUSH_ALIGN];

/// A line index and its contents.
#[derive(Clone, Debug)]
struct LineImage {
    index: u32,
    data: Line,
}

#[derive(Clone, Debug, Default)]
struct FenceRecord {
    /// Lines made durable by this fence (the fencing thread's pending flushes).
    applied: Vec<LineImage>,
    /// Eviction candidates at the crash point just before this fence: every line whose live
    /// contents differed from the durable image, plus every flushed-but-unfenced snapshot.
    candidates: Vec<LineImage>,
}

#[derive(Debug)]
struct State {
    durable: Vec<u8>,
    initial: Vec<u8>,
    pending: HashMap<ThreadId, Vec<LineImage>>,
    fences: Vec<FenceRecord>,
    foreign_flushes: u64,
}

/// Simulated persistent media. See the module documentation.
#[derive(Debug)]
pub struct SimMedia {
    live: Mapping,
    len: usize,
    track_evictions: bool,
    state: Mutex<State>,
}

impl SimMedia {
    /// A zero-filled region of `len` bytes (rounded up to a page), durable image all zero,
    /// eviction tracking on.
    pub fn new(len: usize) -> SimMedia {
        Self::build(len, None, true)
    }

    /// A region whose live *and* durable contents are `image` (a crash image to reopen).
    pub fn from_image(image: &[u8]) -> SimMedia {
        Self::build(image.len(), Some(image), true)
    }

    /// Like [`SimMedia::from_image`] without eviction tracking (cheap fences: for reopening
    /// crash images when the recovery itself is not being swept).
    pub fn from_image_strict(image: &[u8]) -> SimMedia {
        Self::build(image.len(), Some(image), false)
    }

    /// Like [`SimMedia::new`] without eviction tracking: fences are cheaper (no diff of the
    /// region), and crash images can only be built with [`Evictions::None`].
    pub fn new_strict(len: usize) -> SimMedia {
        Self::build(len, None, false)
    }

    fn build(len: usize, image: Option<&[u8]>, track_evictions: bool) -> SimMedia {
        let live =
            Mapping::anonymous(len.max(FLUSH_ALIGN)).expect("anonymous mapping for the simulator");
        let len = live.len();
        let mut durable = vec![0u8; len];
        if let Some(img) = image {
            durable[..img.len()].copy_from_slice(img);
            live.write_at(0, img).expect("image fits the region");
        }
        SimMedia {
            live,
            len,
            track_evictions,
            state: Mutex::new(State {
                initial: durable.clone(),
                durable,
                pending: HashMap::new(),
                fences: Vec::new(),
                foreign_flushes: 0,
            }),
        }
    }

    /// Base of the live region (page aligned; 2 MiB aligned from 2 MiB on).
    pub fn base(&self) -> *mut u8 {
        self.live.as_ptr()
    }

    /// Size of the region.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the region is empty (never).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent data (every update is a push or a
        // copy), so poisoning is ignored.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn live_line(&self, index: u32) -> Line {
        let mut l = [0u8; FLUSH_ALIGN];
        self.live
            .read_at(index as usize * FLUSH_ALIGN, &mut l)
            .expect("line index inside the region");
        l
    }

    /// Forgets the fences so far: the current durable image becomes crash point 0. Use it after
    /// a setup phase that is not under test.
    pub fn reset_recording(&self) {
        let mut s = self.lock();
        s.initial = s.durable.clone();
        s.fences.clear();
    }

    /// Number of fences recorded so far.
    pub fn fences(&self) -> usize {
        self.lock().fences.len()
    }

    /// Flushes that named memory outside the region (ignored; a non-zero count usually means
    /// the code under test persists the wrong address).
    pub fn foreign_flushes(&self) -> u64 {
        self.lock().foreign_flushes
    }

    /// The current durable image (what would survive a crash right now, without evictions).
    pub fn durable_image(&self) -> Vec<u8> {
        self.lock().durable.clone()
    }

    fn candidates(&self, s: &State) -> Vec<LineImage> {
        let mut out = Vec::new();
        for p in s.pending.values() {
            out.extend(p.iter().cloned());
        }
        let lines = self.len / FLUSH_ALIGN;
        let mut l = [0u8; FLUSH_ALIGN];
        for i in 0..lines {
            let off = i * FLUSH_ALIGN;
            self.live.read_at(off, &mut l).expect("in bounds");
            if l[..] != s.durable[off..off + FLUSH_ALIGN] {
                out.push(LineImage {
                    index: i as u32,
                    data: l,
                });
            }
        }
        out
    }

    /// Everything recorded so far, with the eviction candidates of the final crash point.
    pub fn recording(&self) -> Recording {
        let s = self.lock();
        let final_candidates = if self.track_evictions {
            self.candidates(&s)
        } else {
            Vec::new()
        };
        Recording {
            initial: s.initial.clone(),
            fences: s.fences.clone(),
            final_candidates,
            track_evictions: self.track_evictions,
        }
    }
}

impl Persist for SimMedia {
    unsafe fn flush(&self, addr: *const u8, len: usize) {
        if len == 0 {
            return;
        }
        let base = self.base() as usize;
        let a = addr as usize;
        let mut s = self.lock();
        if a < base || a + len > base + self.len {
            s.foreign_flushes += 1;
            return;
        }
        let first = (a - base) / FLUSH_ALIGN;
        let last = (a - base + len - 1) / FLUSH_ALIGN;
        let lines: Vec<LineImage> = (first..=last)
            .map(|i| LineImage {
                index: i as u32,
                data: self.live_line(i as u32),
            })
            .collect();
        s.pending
            .entry(std::thread::current().id())
            .or_default()
            .extend(lines);
    }

    fn drain(&self) {
        let mut s = self.lock();
        let candidates = if self.track_evictions {
            self.candidates(&s)
        } else {
            Vec::new()
        };
        let applied = s
            .pending
            .remove(&std::thread::current().id())
            .unwrap_or_default();
        for l in &applied {
            let off = l.index as usize * FLUSH_ALIGN;
            s.durable[off..off + FLUSH_ALIGN].copy_from_slice(&l.data);
        }
        s.fences.push(FenceRecord {
            applied,
            candidates,
        });
    }

    fn is_durable(&self) -> bool {
        true
    }
}

/// Which extra lines a crash image may contain beyond the fenced ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Evictions {
    /// Only flushed-and-fenced lines: one image per crash point.
    None,
    /// Per crash point, `samples` images, each with every candidate line (dirty or flushed but
    /// not fenced) included with probability 1/2. Deterministic for a given `seed`.
    Random {
        /// RNG seed.
        seed: u64,
        /// Images per crash point (in addition to the no-eviction image).
        samples: usize,
    },
    /// Every subset of the candidate lines when there are at most `max_candidates` of them
    /// (2^n images), else `fallback_samples` random subsets.
    Exhaustive {
        /// Largest candidate set enumerated completely.
        max_candidates: usize,
        /// Random subsets tried above that.
        fallback_samples: usize,
        /// RNG seed for the fallback.
        seed: u64,
    },
}

/// One crash image handed to a checker.
#[derive(Debug)]
pub struct CrashImage<'a> {
    /// Fences completed before the crash.
    pub crash_point: usize,
    /// 0 for the image without evictions, then 1.. for eviction variants.
    pub variant: usize,
    /// Number of evicted lines included.
    pub evicted_lines: usize,
    /// The media contents.
    pub bytes: &'a [u8],
}

/// A failure found by [`Recording::sweep`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SweepFailure {
    /// Crash point (fences completed).
    pub crash_point: usize,
    /// Image variant (0 = no evictions).
    pub variant: usize,
    /// The checker's message.
    pub message: String,
}

/// What a sweep checked.
#[derive(Clone, Debug, Default)]
pub struct SweepReport {
    /// Images checked.
    pub checked: usize,
    /// Crash points visited.
    pub crash_points: usize,
    /// Failed images.
    pub failures: Vec<SweepFailure>,
}

impl SweepReport {
    /// Crash points with at least one failure, in order, without duplicates.
    pub fn failing_points(&self) -> Vec<usize> {
        let mut v: Vec<usize> = self.failures.iter().map(|f| f.crash_point).collect();
        v.dedup();
        v
    }
}

/// A recorded run: the initial image and every fence. Cheap to keep; images are built on
/// demand.
#[derive(Clone, Debug)]
pub struct Recording {
    initial: Vec<u8>,
    fences: Vec<FenceRecord>,
    final_candidates: Vec<LineImage>,
    track_evictions: bool,
}

impl Recording {
    /// Fences recorded.
    pub fn fences(&self) -> usize {
        self.fences.len()
    }

    /// Crash points (`fences() + 1`).
    pub fn crash_points(&self) -> usize {
        self.fences.len() + 1
    }

    /// The durable image at crash point `k` without evictions.
    pub fn image_at(&self, k: usize) -> Vec<u8> {
        let mut img = self.initial.clone();
        for f in &self.fences[..k.min(self.fences.len())] {
            apply(&mut img, &f.applied);
        }
        img
    }

    fn candidates_at(&self, k: usize) -> &[LineImage] {
        if k < self.fences.len() {
            &self.fences[k].candidates
        } else {
            &self.final_candidates
        }
    }

    /// Builds the image at every crash point (and its eviction variants) and calls `check` on
    /// each. A checker error is recorded as a failure; sweeping continues.
    ///
    /// # Panics
    /// If evictions are requested from a recording made without eviction tracking
    /// ([`SimMedia::new_strict`]): that is a bug in the test, not a runtime condition.
    pub fn sweep<F>(&self, evictions: Evictions, mut check: F) -> SweepReport
    where
        F: FnMut(&CrashImage<'_>) -> Result<(), String>,
    {
        assert!(
            self.track_evictions || evictions == Evictions::None,
            "eviction variants need a SimMedia with eviction tracking"
        );
        let mut report = SweepReport::default();
        let mut durable = self.initial.clone();
        let mut scratch = Vec::with_capacity(durable.len());
        let mut rng = match evictions {
            Evictions::Random { seed, .. } | Evictions::Exhaustive { seed, .. } => {
                StdRng::seed_from_u64(seed)
            }
            Evictions::None => StdRng::seed_from_u64(0),
        };
        for k in 0..self.crash_points() {
            if k > 0 {
                apply(&mut durable, &self.fences[k - 1].applied);
            }
            report.crash_points += 1;
            let mut run =
                |variant: usize, evicted: usize, bytes: &[u8], report: &mut SweepReport| {
                    report.checked += 1;
                    let img = CrashImage {
                        crash_point: k,
                        variant,
                        evicted_lines: evicted,
                        bytes,
                    };
                    if let Err(message) = check(&img) {
                        report.failures.push(SweepFailure {
                            crash_point: k,
                            variant,
                            message,
                        });
                    }
                };
            run(0, 0, &durable, &mut report);
            let cands = self.candidates_at(k);
            if cands.is_empty() {
                continue;
            }
            let subsets: Vec<Vec<bool>> = match evictions {
                Evictions::None => Vec::new(),
                Evictions::Random { samples, .. } => (0..samples)
                    .map(|_| cands.iter().map(|_| rng.gen_bool(0.5)).collect())
                    .collect(),
                Evictions::Exhaustive {
                    max_candidates,
                    fallback_samples,
                    ..
                } => {
                    if cands.len() <= max_candidates.min(20) {
                        (1u64..(1u64 << cands.len()))
                            .map(|m| (0..cands.len()).map(|i| m & (1 << i) != 0).collect())
                            .collect()
                    } else {
                        (0..fallback_samples)
                            .map(|_| cands.iter().map(|_| rng.gen_bool(0.5)).collect())
                            .collect()
                    }
                }
            };
            for (v, mask) in subsets.iter().enumerate() {
                scratch.clear();
                scratch.extend_from_slice(&durable);
                let mut n = 0;
                for (c, &take) in cands.iter().zip(mask) {
                    if take {
                        let off = c.index as usize * FLUSH_ALIGN;
                        scratch[off..off + FLUSH_ALIGN].copy_from_slice(&c.data);
                        n += 1;
                    }
                }
                run(v + 1, n, &scratch, &mut report);
            }
        }
        report
    }
}

fn apply(img: &mut [u8], lines: &[LineImage]) {
    for l in lines {
        let off = l.index as usize * FLUSH_ALIGN;
        img[off..off + FLUSH_ALIGN].copy_from_slice(&l.data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flush_snapshot_does_not_cover_later_stores() {
        let m = SimMedia::new_strict(4096);
        let p = m.base();
        // SAFETY: inside the 4096-byte region.
        unsafe {
            p.write(1);
            m.flush(p, 1);
            p.write(2); // after the flush: not covered
            m.drain();
        }
        assert_eq!(m.durable_image()[0], 1);
        // SAFETY: as above.
        unsafe { m.persist(p, 1) };
        assert_eq!(m.durable_image()[0], 2);
        assert_eq!(m.fences(), 2);
    }

    #[test]
    fn fences_only_drain_the_calling_threads_flushes() {
        let m = std::sync::Arc::new(SimMedia::new_strict(4096));
        let p = m.base() as usize;
        let m2 = m.clone();
        std::thread::spawn(move || {
            // SAFETY: inside the region.
            unsafe {
                (p as *mut u8).write(9);
                m2.flush(p as *const u8, 1);
            }
        })
        .join()
        .unwrap();
        m.drain(); // another thread's fence
        assert_eq!(m.durable_image()[0], 0);
    }

    #[test]
    fn foreign_flushes_are_counted_not_applied() {
        let m = SimMedia::new_strict(4096);
        let x = [1u8; 8];
        m.persist_bytes(&x);
        assert_eq!(m.foreign_flushes(), 1);
    }

    #[test]
    fn exhaustive_evictions_enumerate_all_subsets() {
        let m = SimMedia::new(4096);
        let p = m.base();
        // SAFETY: inside the region.
        unsafe {
            p.write(1);
            p.add(64).write(1);
            p.add(128).write(1);
        }
        let rec = m.recording();
        let mut seen = std::collections::HashSet::new();
        let r = rec.sweep(
            Evictions::Exhaustive {
                max_candidates: 8,
                fallback_samples: 0,
                seed: 1,
            },
            |img| {
                seen.insert((img.bytes[0], img.bytes[64], img.bytes[128]));
                Ok(())
            },
        );
        assert_eq!(r.checked, 8);
        assert_eq!(seen.len(), 8);
    }
}
