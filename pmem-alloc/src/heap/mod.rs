//! The allocator engine, generic over the persistence policy.
//!
//! One engine serves the persistent heap (policy [`crate::persist::Hardware`] or the crash
//! simulator), the volatile heap ([`crate::persist::NoPersist`]) and the crash tests.
//!
//! # Structure
//! - The region is divided into 4 KiB *pages*, grouped into *zones*; every zone is tiled by
//!   *extents* (free, run, large, metadata) described by a **persistent page map**: one 8-byte
//!   entry at each extent's head page ([`crate::layout::PageEntry`]). The page map is the only
//!   allocator state that is kept durable while the heap runs.
//! - A *run* holds blocks of one size class; which blocks are taken is a **volatile bitmap**
//!   (32 bytes per page, in DRAM). It is written to the pool only at a clean close.
//! - Each thread has a *cache* (per heap) of free blocks per class: allocation pops, free
//!   pushes, with no lock, no atomic read-modify-write, no flush and no fence. Caches refill
//!   from and flush to the per-class *bins* (one lock each) in batches; a block freed by a
//!   thread other than the one that took it goes back to the bin in a batch (see "Runs per
//!   thread and remote frees"). Each class has `SHARDS` (8) bins: a thread refills from the
//!   shard of its id, and a block goes back to the shard of its run, so threads do not contend
//!   for one lock per class. A batch going back is gathered per run and bitmap word.
//! - Large allocations (> 32 KiB) take page extents from the extent allocator (one lock).
//!
//! # Runs per thread and remote frees
//! Every page of a run records (volatile, relaxed atomics) the thread whose cache last took
//! blocks from it, its *owner*. A cache refill prefers a partial run that it owns, nobody owns
//! or an exited thread owned (looking at a few at the head of the bin's list) and otherwise
//! starts a new run, so that live threads do not take blocks from the same run. A free by a
//! thread that does not own the block's run is *remote*: the block is not pushed onto that
//! thread's cache (where its next allocation would hand it straight back) but into a small
//! per-class buffer that goes back to the bin when full. Both keep two threads' blocks out of
//! one cache line (false sharing: the `cache-scratch` benchmark, where a thread frees an object
//! allocated next to another thread's live one and then allocates in a loop). The owner is
//! only a placement hint: a stale one costs a trip through the buffer, never correctness.
//!
//! # Durability invariant (see docs/format.md)
//! At every instant the durable page map of each zone is a valid tiling, and every block handed
//! out lies in an extent whose durable head entry describes it as handed out. Extent splits write
//! the tail entry, then the allocated head, then the leading free part, each persisted before the
//! next; merges are a single 8-byte store. Block-level allocation state is never persisted at run
//! time: after a crash, the `recovery` module rebuilds it by a reachability scan from the root.
//!
//! # Locks
//! Order: bin lock, then extent lock; the thread registry lock is outermost. At most one bin
//! lock is held at a time (a shard out of memory takes from the others one after the other).
//! No lock is held while calling user code, and nothing here allocates from the global
//! allocator.

mod tcache;

pub(crate) use tcache::{
    current_tid, in_fork_child, register_fork_region, unregister_fork_region, MAX_THREADS,
};

use crate::layout::{ExtentKind, PageEntry};
use crate::persist::Persist;
use crate::size_class::{
    self, class_size, run_blocks, run_pages, BITMAP_BYTES_PER_PAGE, MAX_SMALL, NCLASSES, PAGE,
    PAGE_SHIFT,
};
use crate::sync::{AtomicU32, AtomicU64, AtomicUsize, Locked};
use std::ptr;
use std::sync::atomic::Ordering;
use tcache::TCache;

/// "No page" in the volatile lists.
const NIL: u32 = u32::MAX;
/// Bitmap words per page.
const BM_WORDS: usize = BITMAP_BYTES_PER_PAGE / 8;
/// Most zones a heap can have.
pub(crate) const MAX_ZONES: usize = 64;

/// Volatile per-page metadata (DRAM). Only some fields are meaningful per page; see each field.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct PageMeta {
    /// Head page of the extent containing this page: set on every page of runs, on the head of
    /// large extents, on head and tail of free extents.
    pub(crate) head: u32,
    /// Extent length in pages (head page; tail page of free extents too).
    pub(crate) len: u32,
    /// `ExtentKind as u8`, 0 = not part of the heap.
    pub(crate) kind: u8,
    /// Size class of a run.
    pub(crate) class: u8,
    /// `F_*` flags.
    pub(crate) flags: u8,
    /// The bin shard whose lists hold a run (head page; see [`SHARDS`]).
    pub(crate) shard: u8,
    /// Free blocks in a run (blocks in thread caches count as taken).
    pub(crate) nfree: u32,
    /// List links: free-extent bins or a bin's partial-run list.
    next: u32,
    prev: u32,
    _pad: [u32; 2],
}
const _: () = assert!(std::mem::size_of::<PageMeta>() == 32);

/// A free extent known to be zero-filled (fresh from the file system or hole-punched).
pub(crate) const F_ZERO: u8 = 1;
/// A run in its bin's partial list.
const F_PARTIAL: u8 = 2;
/// Recovery mark on a large extent.
pub(crate) const F_MARK: u8 = 4;

/// One zone as the engine sees it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Zone {
    /// First page (pool-relative).
    pub(crate) start: usize,
    /// Pages, metadata included.
    pub(crate) npages: usize,
    /// Metadata pages at the start (never allocated).
    pub(crate) meta_pages: usize,
    /// Page map of the zone, indexed by zone-relative page.
    pub(crate) pmap: *mut u64,
    /// Persistent bitmap area (32 bytes per zone page), or null for volatile heaps.
    pub(crate) pbitmap: *mut u8,
}

struct ExtentState {
    zones: [Option<Zone>; MAX_ZONES],
    nzones: usize,
    /// Heads of free extents, per size bin.
    bins: [u32; EXT_BINS],
    nonempty: u128,
    free_pages: usize,
    large_pages: usize,
    run_pages: usize,
    /// Pages in free extents not known to be zero (hole-punching candidates).
    dirty_free: usize,
    /// Dirty pages left after the last bulk punch (extents too small to punch).
    dirty_floor: usize,
}

// SAFETY: the raw pointers in `zones` point into mappings owned by the heap, which outlives the
// state; access is serialised by the extent lock.
unsafe impl Send for ExtentState {}

const EXT_EXACT: usize = 64;
const EXT_BINS: usize = EXT_EXACT + 27;

fn ext_bin(len: usize) -> usize {
    if len <= EXT_EXACT {
        len - 1
    } else {
        let k = usize::BITS - 1 - len.leading_zeros(); // >= 6
        (EXT_EXACT + (k as usize - 6)).min(EXT_BINS - 1)
    }
}

#[derive(Debug)]
struct Bin {
    /// Head page of the first run with free blocks.
    partial: u32,
    /// Runs of this class.
    runs: usize,
    /// Blocks currently out of runs (in use, or in thread caches).
    blocks_out: u64,
}

/// Bin shards per size class. A thread takes blocks from (and creates runs in) the shard of
/// its id, so the cache refills and flushes of different threads do not contend for one lock;
/// blocks go back to the shard of their run. A shard out of runs and out of extents takes from
/// the others before an allocation fails.
pub(crate) const SHARDS: usize = 8;

/// The shard of thread id `owner` (0, no cache: shard 0).
#[inline]
fn shard_of(owner: u32) -> usize {
    owner as usize % SHARDS
}

/// Cache-padded wrapper (false sharing between bins).
#[repr(align(128))]
#[derive(Debug)]
struct Padded<T>(T);

/// Heap statistics (see [`HeapCore::stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeapStats {
    /// Bytes of the region covered by the heap (mapped).
    pub mapped: u64,
    /// Bytes in blocks handed out to the application (small blocks by class size, large by
    /// pages), thread-cached blocks excluded.
    pub in_use: u64,
    /// Bytes in free blocks sitting in thread caches.
    pub cached: u64,
    /// Bytes in free pages.
    pub free: u64,
    /// Pages in runs.
    pub run_pages: u64,
    /// Pages in large allocations.
    pub large_pages: u64,
    /// Metadata pages (page maps and bitmaps in the pool).
    pub meta_pages: u64,
}

impl std::fmt::Display for HeapStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mib = |b: u64| b as f64 / (1 << 20) as f64;
        write!(
            f,
            "mapped {:.1} MiB, in use {:.1} MiB, thread-cached {:.1} MiB, free {:.1} MiB \
             ({} run pages, {} large pages, {} metadata pages)",
            mib(self.mapped),
            mib(self.in_use),
            mib(self.cached),
            mib(self.free),
            self.run_pages,
            self.large_pages,
            self.meta_pages
        )
    }
}

/// Errors found by [`HeapCore::check`] or while rebuilding from the page map.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HeapCorruption {
    /// A page-map entry is invalid.
    #[error("zone {zone}: page {page}: {error}")]
    Entry {
        /// Zone index.
        zone: usize,
        /// Page (pool-relative).
        page: usize,
        /// The decoding error.
        error: crate::layout::EntryError,
    },
    /// The tiling is broken (an extent runs past its zone, metadata in the wrong place, ...).
    #[error("zone {zone}: page {page}: {what}")]
    Tiling {
        /// Zone index.
        zone: usize,
        /// Page.
        page: usize,
        /// What is wrong.
        what: &'static str,
    },
    /// Volatile state disagrees with the page map or with itself.
    #[error("page {page}: {what}")]
    State {
        /// Page.
        page: usize,
        /// What is wrong.
        what: String,
    },
}

/// Private anonymous memory for volatile metadata (copy-on-write across fork), reserved up
/// front and faulted in lazily.
#[derive(Debug)]
pub(crate) struct AnonRegion {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: plain memory owned by this value.
unsafe impl Send for AnonRegion {}
// SAFETY: access is synchronised by its users (the heap's locks and thread ownership).
unsafe impl Sync for AnonRegion {}

impl AnonRegion {
    pub(crate) fn new(len: usize) -> std::io::Result<AnonRegion> {
        let len = len.max(1).next_multiple_of(PAGE);
        let ptr = crate::sys::anon_private(len)?;
        Ok(AnonRegion { ptr, len })
    }
    pub(crate) fn ptr(&self) -> *mut u8 {
        self.ptr
    }
}

impl Drop for AnonRegion {
    fn drop(&mut self) {
        // SAFETY: the region is ours; the heap that used it is gone.
        let _ = unsafe { crate::sys::munmap(self.ptr, self.len) };
    }
}

/// The engine. Lives at a fixed address (it is never moved after `init`), because thread caches
/// and the thread registry refer to it by address.
pub struct HeapCore<P: Persist> {
    base: *mut u8,
    max_pages: usize,
    persist: P,
    meta: AnonRegion,
    bitmaps: AnonRegion,
    tcaches: AnonRegion,
    /// Per page of a run: the id of the thread whose cache last took blocks from it (0: none).
    /// A hint (module docs, "Runs per thread and remote frees").
    owners: AnonRegion,
    touched: [AtomicU64; MAX_THREADS / 64],
    extents: Locked<ExtentState>,
    /// `NCLASSES * SHARDS` bins (`Padded<Locked<Bin>>`, initialised in `new`): class `c`,
    /// shard `s` at `c * SHARDS + s` (see [`SHARDS`]). In a mapping of its own, like the other
    /// tables, so that creating a heap does not allocate from the global allocator.
    bins: AnonRegion,
    /// Per class: completely free runs kept over all shards (0 or 1; changed under the lock of
    /// the shard that keeps or reuses the run), so sharding does not multiply the memory held
    /// in empty runs.
    empty_kept: [AtomicU32; NCLASSES],
    large_live: AtomicUsize,
    registered: std::sync::atomic::AtomicBool,
    /// Punch holes into free extents of at least this many pages (0 = never).
    punch_pages: usize,
    file_fd: i32,
}

// SAFETY: all shared state is behind locks or atomics; raw pointers point into mappings owned
// by the heap's owner, which outlives the core.
unsafe impl<P: Persist> Send for HeapCore<P> {}
// SAFETY: as above.
unsafe impl<P: Persist> Sync for HeapCore<P> {}

impl<P: Persist> std::fmt::Debug for HeapCore<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeapCore")
            .field("base", &self.base)
            .field("max_pages", &self.max_pages)
            .field("persist", &self.persist)
            .finish_non_exhaustive()
    }
}

/// Options of the engine.
#[derive(Clone, Copy, Debug)]
pub(crate) struct CoreOptions {
    /// Punch holes into free extents of at least this many bytes (volatile file heaps).
    pub(crate) punch_bytes: usize,
    /// File descriptor for hole punching (-1 = none: use MADV_DONTNEED on anonymous memory).
    pub(crate) fd: i32,
}

impl<P: Persist + 'static> HeapCore<P> {
    /// Creates an engine for the region `base..base + max_pages * PAGE` with no zones yet.
    ///
    /// # Safety
    /// `base` must be page aligned and the first `max_pages` pages must stay mapped (as far as
    /// zones are added) for the life of the core. The core must not be moved once a thread has
    /// used it (it is pinned in a `Box` or a static by its owners).
    pub(crate) unsafe fn new(
        base: *mut u8,
        max_pages: usize,
        persist: P,
        opts: CoreOptions,
    ) -> std::io::Result<Self> {
        let meta = AnonRegion::new(max_pages * std::mem::size_of::<PageMeta>())?;
        let bitmaps = AnonRegion::new(max_pages * BITMAP_BYTES_PER_PAGE)?;
        let tcaches = AnonRegion::new(MAX_THREADS * std::mem::size_of::<TCache>())?;
        let owners = AnonRegion::new(max_pages * std::mem::size_of::<AtomicU32>())?;
        let bins = AnonRegion::new(NCLASSES * SHARDS * std::mem::size_of::<Padded<Locked<Bin>>>())?;
        for i in 0..NCLASSES * SHARDS {
            let bin = Padded(Locked::new(Bin {
                partial: NIL,
                runs: 0,
                blocks_out: 0,
            }));
            // SAFETY: the mapping holds `NCLASSES * SHARDS` entries, page aligned (so aligned
            // for the padded type); nothing else refers to it yet.
            unsafe { bins.ptr().cast::<Padded<Locked<Bin>>>().add(i).write(bin) };
        }
        Ok(HeapCore {
            base,
            max_pages,
            persist,
            meta,
            bitmaps,
            tcaches,
            owners,
            touched: std::array::from_fn(|_| AtomicU64::new(0)),
            extents: Locked::new(ExtentState {
                zones: [None; MAX_ZONES],
                nzones: 0,
                bins: [NIL; EXT_BINS],
                nonempty: 0,
                free_pages: 0,
                large_pages: 0,
                run_pages: 0,
                dirty_free: 0,
                dirty_floor: 0,
            }),
            bins,
            empty_kept: std::array::from_fn(|_| AtomicU32::new(0)),
            large_live: AtomicUsize::new(0),
            registered: std::sync::atomic::AtomicBool::new(false),
            punch_pages: if opts.punch_bytes == 0 {
                0
            } else {
                opts.punch_bytes.div_ceil(PAGE)
            },
            file_fd: opts.fd,
        })
    }

    /// Base address of the region.
    pub fn base(&self) -> *mut u8 {
        self.base
    }

    /// The persistence policy.
    pub fn persister(&self) -> &P {
        &self.persist
    }

    /// The zones, in order.
    pub(crate) fn zones(&self) -> Vec<Zone> {
        let ex = self.extents.lock();
        ex.zones[..ex.nzones].iter().flatten().copied().collect()
    }

    /// Whether `p` points into a zone of this heap.
    #[inline]
    pub fn contains(&self, p: *const u8) -> bool {
        let off = (p as usize).wrapping_sub(self.base as usize);
        off < self.max_pages * PAGE && {
            // SAFETY: `off / PAGE < max_pages`, inside the metadata reservation.
            let m = unsafe { &*self.meta_at(off >> PAGE_SHIFT) };
            m.kind != 0
        }
    }

    #[inline]
    fn meta_at(&self, page: usize) -> *mut PageMeta {
        debug_assert!(page < self.max_pages);
        // SAFETY: the reservation holds `max_pages` entries.
        unsafe { self.meta.ptr().cast::<PageMeta>().add(page) }
    }

    /// # Safety
    /// `page < max_pages`, and the caller holds the lock that protects the fields it touches
    /// (or runs single-threaded during open).
    #[inline]
    #[allow(clippy::mut_from_ref)]
    unsafe fn pm(&self, page: usize) -> &mut PageMeta {
        // SAFETY: forwarded from the caller.
        unsafe { &mut *self.meta_at(page) }
    }

    #[inline]
    fn bitmap_words(&self, page: usize) -> *mut u64 {
        // SAFETY: the reservation holds BM_WORDS words per page for `max_pages` pages.
        unsafe { self.bitmaps.ptr().cast::<u64>().add(page * BM_WORDS) }
    }

    /// The owner hint of `page` (see the `owners` field).
    #[inline]
    fn owner(&self, page: usize) -> &AtomicU32 {
        debug_assert!(page < self.max_pages);
        // SAFETY: the reservation holds one word per page for `max_pages` pages; zeroed memory
        // is a valid AtomicU32 (0: no owner); it is only accessed atomically.
        unsafe { &*self.owners.ptr().cast::<AtomicU32>().add(page) }
    }

    #[inline]
    fn page_of(&self, p: *const u8) -> usize {
        (p as usize - self.base as usize) >> PAGE_SHIFT
    }

    #[inline]
    fn page_ptr(&self, page: usize) -> *mut u8 {
        self.base.wrapping_add(page << PAGE_SHIFT)
    }

    // ------------------------------------------------------------------ zones and page map

    /// Adds a zone whose page map is already initialised with a valid tiling (or a fresh zone,
    /// when `init_tiling` is true: the metadata extent and one free extent are written and
    /// persisted). Free extents of the zone are *not* entered into the bins: call `rebuild`.
    ///
    /// # Safety
    /// `zone.pmap` must point to `zone.npages` writable words that stay valid for the core's
    /// life; the zone's pages must be mapped and not overlap other zones.
    pub(crate) unsafe fn add_zone(&self, zone: Zone, init_tiling: bool) {
        let mut ex = self.extents.lock();
        if init_tiling {
            let usable = zone.npages - zone.meta_pages;
            // Ordering: the free extent's head first, then the metadata head that makes the
            // walk reach it (a zone is only in use once the pool's state slot names it).
            // SAFETY: the caller vouches for the page map.
            unsafe {
                if usable > 0 {
                    self.pmap_store(&zone, zone.meta_pages, ExtentKind::Free, 0, usable);
                }
                if zone.meta_pages > 0 {
                    self.pmap_store(&zone, 0, ExtentKind::Meta, 0, zone.meta_pages);
                }
            }
        }
        let n = ex.nzones;
        assert!(n < MAX_ZONES, "too many zones");
        ex.zones[n] = Some(zone);
        ex.nzones += 1;
    }

    /// Enters the free extent of every zone added with `init_tiling` into the bins, as known-zero
    /// memory (fresh files and anonymous memory read as zeros). Allocation-free: usable while a
    /// global allocator initialises.
    pub(crate) fn init_fresh(&self) {
        let mut ex = self.extents.lock();
        for i in 0..ex.nzones {
            let Some(z) = ex.zones[i] else { continue };
            let usable = z.npages - z.meta_pages;
            // SAFETY: lock held; the zone's pages are inside the reservation.
            unsafe {
                if z.meta_pages > 0 {
                    let m = self.pm(z.start);
                    m.kind = ExtentKind::Meta as u8;
                    m.head = z.start as u32;
                    m.len = z.meta_pages as u32;
                    let t = self.pm(z.start + z.meta_pages - 1);
                    t.kind = ExtentKind::Meta as u8;
                    t.head = z.start as u32;
                }
                if usable > 0 {
                    self.bin_insert(&mut ex, z.start + z.meta_pages, usable, 0);
                }
            }
        }
    }

    /// Enters the free extent of zone `index` (just added with `init_tiling`) into the bins.
    pub(crate) fn add_free_zone(&self, index: usize) {
        let mut ex = self.extents.lock();
        let Some(z) = ex.zones.get(index).copied().flatten() else {
            return;
        };
        // SAFETY: lock held; the zone's pages are inside the reservation and in no bin.
        unsafe {
            let m = self.pm(z.start);
            m.kind = ExtentKind::Meta as u8;
            m.head = z.start as u32;
            m.len = z.meta_pages as u32;
            let t = self.pm(z.start + z.meta_pages - 1);
            t.kind = ExtentKind::Meta as u8;
            t.head = z.start as u32;
            self.bin_insert(&mut ex, z.start + z.meta_pages, z.npages - z.meta_pages, 0);
        }
    }

    /// Extends the last zone in place (volatile heaps: the page map covers the reservation).
    /// The new pages become a free extent, merged with a free extent before them.
    pub(crate) fn extend_last_zone(&self, new_npages: usize) -> bool {
        let mut ex = self.extents.lock();
        let Some(Some(z)) = ex.nzones.checked_sub(1).map(|i| ex.zones[i]) else {
            return false;
        };
        if new_npages <= z.npages || z.start + new_npages > self.max_pages {
            return false;
        }
        let first = z.start + z.npages;
        let add = new_npages - z.npages;
        let i = ex.nzones - 1;
        ex.zones[i] = Some(Zone {
            npages: new_npages,
            ..z
        });
        // SAFETY: the new pages are inside the reservation; we hold the extent lock.
        unsafe { self.free_extent_locked(&mut ex, first, add, true) };
        true
    }

    fn zone_of(ex: &ExtentState, page: usize) -> Option<(usize, Zone)> {
        ex.zones[..ex.nzones].iter().enumerate().find_map(|(i, z)| {
            z.filter(|z| page >= z.start && page < z.start + z.npages)
                .map(|z| (i, z))
        })
    }

    /// Writes and persists one page-map entry.
    ///
    /// # Safety
    /// `rel < zone.npages`; the zone's page map is valid; the extent lock is held (or the heap
    /// is being opened single-threaded).
    unsafe fn pmap_store(&self, zone: &Zone, rel: usize, kind: ExtentKind, class: u8, len: usize) {
        let e = PageEntry {
            kind,
            class,
            len: len as u32,
        }
        .encode();
        // SAFETY: forwarded; 8-byte aligned word inside the zone's page map. The store is a
        // single aligned 8-byte write, failure-atomic on the media.
        unsafe {
            let w = zone.pmap.add(rel);
            (*(w as *const AtomicU64)).store(e.to_le(), Ordering::Release);
            self.persist.persist(w.cast(), 8);
        }
    }

    fn pmap_set(&self, ex: &ExtentState, page: usize, kind: ExtentKind, class: u8, len: usize) {
        let (_, z) = Self::zone_of(ex, page).expect("page inside a zone");
        // SAFETY: `page` is inside zone `z`; the caller holds the extent lock (`ex`).
        unsafe { self.pmap_store(&z, page - z.start, kind, class, len) }
    }

    // ------------------------------------------------------------------ extent allocator

    /// Enters a free extent into its bin. `dirty` is the length of its *dirty prefix*: pages
    /// `page..page + dirty` may hold old data, the rest is known to be zero. (Freed runs and
    /// blocks sit at the front of the free space they merge into, and allocation takes from the
    /// front, so a prefix tracks dirtiness exactly under splits and merges.)
    ///
    /// # Safety
    /// Extent lock held (`ex`), `page..page+len` a free extent not in any bin.
    unsafe fn bin_insert(&self, ex: &mut ExtentState, page: usize, len: usize, dirty: usize) {
        let dirty = dirty.min(len);
        let b = ext_bin(len);
        // SAFETY: pages inside the reservation; lock held.
        unsafe {
            let m = self.pm(page);
            m.kind = ExtentKind::Free as u8;
            m.head = page as u32;
            m.len = len as u32;
            m.class = 0;
            m.flags = 0;
            m.nfree = dirty as u32;
            m.prev = NIL;
            m.next = ex.bins[b];
            if ex.bins[b] != NIL {
                self.pm(ex.bins[b] as usize).prev = page as u32;
            }
            let t = self.pm(page + len - 1);
            t.kind = ExtentKind::Free as u8;
            t.head = page as u32;
            t.len = len as u32;
        }
        ex.bins[b] = page as u32;
        ex.nonempty |= 1 << b;
        ex.free_pages += len;
        ex.dirty_free += dirty;
    }

    /// # Safety
    /// Extent lock held, `page` the head of a free extent in its bin.
    unsafe fn bin_remove(&self, ex: &mut ExtentState, page: usize) {
        // SAFETY: as above.
        unsafe {
            let (len, next, prev, dirty) = {
                let m = self.pm(page);
                (m.len as usize, m.next, m.prev, m.nfree as usize)
            };
            ex.dirty_free -= dirty;
            let b = ext_bin(len);
            if prev != NIL {
                self.pm(prev as usize).next = next;
            } else {
                ex.bins[b] = next;
                if next == NIL {
                    ex.nonempty &= !(1 << b);
                }
            }
            if next != NIL {
                self.pm(next as usize).prev = prev;
            }
            ex.free_pages -= len;
        }
    }

    /// Marks `head..head+len` as an allocated extent in the volatile metadata: the head page
    /// carries kind, class and length; the last page names the head, so that a neighbour being
    /// freed never mistakes this extent for a free one (free-extent merging reads the page before
    /// it). Every path that creates or resizes an allocated extent goes through here.
    ///
    /// # Safety
    /// Extent lock held (or single-threaded open); the pages are inside the reservation.
    unsafe fn mark_taken(&self, head: usize, len: usize, kind: ExtentKind, class: u8) {
        // SAFETY: forwarded from the caller.
        unsafe {
            let t = self.pm(head + len - 1);
            t.kind = kind as u8;
            t.head = head as u32;
            let m = self.pm(head);
            m.kind = kind as u8;
            m.class = class;
            m.len = len as u32;
            m.head = head as u32;
        }
    }

    /// Allocates `n` pages aligned to `align` pages as an extent of `kind`, persisting the page
    /// map in the split order of the durability invariant. Returns the head page.
    fn alloc_extent(&self, n: usize, align: usize, kind: ExtentKind, class: u8) -> Option<usize> {
        let mut ex = self.extents.lock();
        let mut b = ext_bin(n);
        loop {
            let mask = ex.nonempty & (!0u128 << b);
            if mask == 0 {
                return None;
            }
            b = mask.trailing_zeros() as usize;
            let mut cur = ex.bins[b];
            while cur != NIL {
                let p = cur as usize;
                // SAFETY: `p` is a free-extent head in a bin; lock held.
                let (len, next, dirty) = unsafe {
                    let m = self.pm(p);
                    (m.len as usize, m.next, m.nfree as usize)
                };
                let a = p.next_multiple_of(align.max(1));
                if a + n <= p + len {
                    // SAFETY: lock held; the pieces lie within the free extent.
                    unsafe { self.bin_remove(&mut ex, p) };
                    let tail = p + len - (a + n);
                    // Ordering (durability invariant): tail head, allocated head, leading part.
                    if tail > 0 {
                        self.pmap_set(&ex, a + n, ExtentKind::Free, 0, tail);
                    }
                    self.pmap_set(&ex, a, kind, class, n);
                    if a > p {
                        self.pmap_set(&ex, p, ExtentKind::Free, 0, a - p);
                    }
                    // SAFETY: lock held; the pieces are no longer in any bin.
                    unsafe {
                        if tail > 0 {
                            self.bin_insert(&mut ex, a + n, tail, dirty.saturating_sub(a + n - p));
                        }
                        if a > p {
                            self.bin_insert(&mut ex, p, a - p, dirty);
                        }
                        let zero = dirty <= a - p;
                        self.mark_taken(a, n, kind, class);
                        let m = self.pm(a);
                        m.flags = if zero { F_ZERO } else { 0 };
                        m.next = NIL;
                        m.prev = NIL;
                    }
                    match kind {
                        ExtentKind::Run => ex.run_pages += n,
                        ExtentKind::Large => ex.large_pages += n,
                        _ => {}
                    }
                    return Some(a);
                }
                cur = next;
            }
            b += 1;
            if b >= EXT_BINS {
                return None;
            }
        }
    }

    /// Frees the extent at `page` (a run or large extent), merging with free neighbours inside
    /// the same zone. One durable store: the merged head.
    fn free_extent(&self, page: usize) {
        let mut ex = self.extents.lock();
        // SAFETY: `page` is the head of an allocated extent; lock held.
        unsafe {
            let (len, kind) = {
                let m = self.pm(page);
                (m.len as usize, m.kind)
            };
            match kind {
                k if k == ExtentKind::Run as u8 => ex.run_pages -= len,
                k if k == ExtentKind::Large as u8 => ex.large_pages -= len,
                _ => {}
            }
            self.free_extent_locked(&mut ex, page, len, false);
        }
    }

    /// # Safety
    /// Extent lock held; `page..page+len` is an extent being freed, not in any bin.
    unsafe fn free_extent_locked(&self, ex: &mut ExtentState, page: usize, len: usize, zero: bool) {
        let (zi, z) = Self::zone_of(ex, page).expect("extent inside a zone");
        let _ = zi;
        let zone_lo = z.start + z.meta_pages;
        let zone_hi = z.start + z.npages;
        let (mut start, mut n) = (page, len);
        // dirty prefix of the extent being built
        let mut dirty = if zero { 0 } else { len };
        // SAFETY: neighbours are inside the zone (checked) and the lock is held.
        unsafe {
            let nx = page + len;
            if nx < zone_hi
                && self.pm(nx).kind == ExtentKind::Free as u8
                && self.pm(nx).head == nx as u32
            {
                let nl = self.pm(nx).len as usize;
                let nd = self.pm(nx).nfree as usize;
                if nd > 0 {
                    dirty = len + nd;
                }
                self.bin_remove(ex, nx);
                n += nl;
            }
            if page > zone_lo {
                let t = self.pm(page - 1);
                if t.kind == ExtentKind::Free as u8 {
                    let ph = t.head as usize;
                    let h = self.pm(ph);
                    if h.kind == ExtentKind::Free as u8 && ph + h.len as usize == page {
                        let pl = h.len as usize;
                        dirty = if dirty > 0 {
                            pl + dirty
                        } else {
                            h.nfree as usize
                        };
                        self.bin_remove(ex, ph);
                        start = ph;
                        n += pl;
                    }
                }
            }
        }
        // The single durable store of a free: the merged head.
        self.pmap_set(ex, start, ExtentKind::Free, 0, n);
        // SAFETY: lock held; the merged extent is in no bin.
        unsafe {
            // clear stale run/large markers on the old head so `contains` and lookups see free
            self.pm(page).kind = ExtentKind::Free as u8;
            self.bin_insert(ex, start, n, dirty);
        }
        if self.punch_pages > 0 && ex.dirty_free >= ex.dirty_floor + self.punch_budget(ex) {
            self.punch_dirty(ex);
        }
    }

    /// Dirty free pages tolerated before a bulk punch: the punch threshold, or 1/16 of the
    /// mapped pages if that is more (so the syscalls are amortised over many frees).
    fn punch_budget(&self, ex: &ExtentState) -> usize {
        let mapped: usize = ex.zones[..ex.nzones]
            .iter()
            .flatten()
            .map(|z| z.npages)
            .sum();
        self.punch_pages.max(mapped / 16)
    }

    /// Returns the dirty prefix of every free extent (when at least 16 pages) to the file system
    /// (or kernel); it reads back as zeros. Smaller prefixes stay (a syscall each would cost more
    /// than they hold).
    fn punch_dirty(&self, ex: &mut ExtentState) {
        let mut left = 0;
        for b in 0..EXT_BINS {
            let mut cur = ex.bins[b];
            while cur != NIL {
                // SAFETY: bin lists link free-extent heads; the extent lock is held (`ex`).
                let m = unsafe { self.pm(cur as usize) };
                let next = m.next;
                let d = m.nfree as usize;
                if d >= 16 {
                    self.punch(cur as usize, d);
                    m.nfree = 0;
                    ex.dirty_free -= d;
                } else {
                    left += d;
                }
                cur = next;
            }
        }
        ex.dirty_floor = left;
    }

    /// Returns the pages to the file system (volatile file heaps) or to the kernel (anonymous):
    /// they read back as zeros afterwards.
    fn punch(&self, page: usize, n: usize) {
        let addr = self.page_ptr(page);
        let len = n * PAGE;
        if self.file_fd >= 0 {
            // SAFETY: the range is a free extent of our file; nobody references it.
            let _ = unsafe {
                crate::sys::punch_hole(
                    self.file_fd,
                    (addr as usize - self.base as usize) as u64,
                    len as u64,
                )
            };
        } else {
            // SAFETY: as above, for private anonymous memory.
            let _ = unsafe { crate::sys::madvise(addr, len, libc::MADV_DONTNEED) };
        }
    }

    // ------------------------------------------------------------------ runs and bins

    /// The bin of class `c`, shard `s`.
    #[inline]
    fn bin(&self, c: usize, s: usize) -> &Locked<Bin> {
        debug_assert!(c < NCLASSES && s < SHARDS);
        // SAFETY: `new` initialised `NCLASSES * SHARDS` bins in this mapping, which lives as
        // long as the heap; they are only used through shared references (each behind its
        // lock).
        unsafe {
            &(*self
                .bins
                .ptr()
                .cast::<Padded<Locked<Bin>>>()
                .add(c * SHARDS + s))
            .0
        }
    }

    /// Every bin, class by class (the fork handlers take and release them all).
    fn all_bins(&self) -> impl Iterator<Item = &Locked<Bin>> {
        (0..NCLASSES * SHARDS).map(|i| self.bin(i / SHARDS, i % SHARDS))
    }

    /// Takes up to `want` blocks of class `c` from the bins into `out`, creating runs as needed.
    /// Returns the number taken (0 = out of memory).
    /// `owner` (the taking thread's id, 0 for none) chooses the shard and becomes the owner hint
    /// of every run taken from. Out of extents, the other shards' partial runs are used.
    fn take_blocks(&self, c: usize, out: &mut [*mut u8], want: usize, owner: u32) -> usize {
        let home = shard_of(owner);
        let mut got = self.take_from(c, home, &mut out[..want], owner, true);
        for s in (0..SHARDS).filter(|&s| s != home) {
            if got == want {
                break;
            }
            got += self.take_from(c, s, &mut out[got..want], owner, false);
        }
        got
    }

    /// Takes up to `out.len()` blocks from the bin of class `c`, shard `s`; with `create`, new
    /// runs are made as needed (else only the shard's partial runs are used).
    fn take_from(
        &self,
        c: usize,
        s: usize,
        out: &mut [*mut u8],
        owner: u32,
        create: bool,
    ) -> usize {
        let want = out.len();
        let size = class_size(c);
        let mut got = 0;
        let mut bin = self.bin(c, s).lock();
        while got < want {
            let picked = if create {
                self.pick_partial(&bin, owner)
            } else {
                (bin.partial != NIL).then_some(bin.partial as usize)
            };
            let (r, fresh) = match picked {
                Some(r) => (r, false),
                None if !create => break,
                None => match self.alloc_extent(run_pages(c), 1, ExtentKind::Run, c as u8) {
                    Some(r) => {
                        self.init_run(r, c, s);
                        bin.runs += 1;
                        self.partial_push(&mut bin, r);
                        (r, true)
                    }
                    // out of extents: share a run another thread takes from
                    None if bin.partial != NIL => (bin.partial as usize, false),
                    None => break,
                },
            };
            // SAFETY: `r` is a run head of class `c` in this shard; bin lock held.
            let m = unsafe { self.pm(r) };
            if m.nfree as usize == run_blocks(c) && !fresh {
                // a kept empty run is in use again
                self.empty_kept[c].fetch_sub(1, Ordering::Relaxed);
            }
            if self.owner(r).load(Ordering::Relaxed) != owner {
                for pg in r..r + run_pages(c) {
                    self.owner(pg).store(owner, Ordering::Relaxed);
                }
            }
            let words = self.bitmap_words(r);
            let nwords = (run_blocks(c)).div_ceil(64);
            let run_base = self.page_ptr(r);
            let mut w = 0;
            while w < nwords && got < want {
                // SAFETY: `w` indexes the run's bitmap (4 words per page of the run).
                let word = unsafe { &mut *words.add(w) };
                if *word == 0 && want - got >= 64 {
                    // 64 free blocks in a row (bits past the run's last block are set, so a
                    // zero word is 64 real blocks): no bit scanning
                    let first = run_base.wrapping_add(w * 64 * size);
                    for (i, o) in out[got..got + 64].iter_mut().enumerate() {
                        *o = first.wrapping_add(i * size);
                    }
                    *word = u64::MAX;
                    got += 64;
                    m.nfree -= 64;
                    w += 1;
                    continue;
                }
                while *word != u64::MAX && got < want {
                    let bit = (!*word).trailing_zeros() as usize;
                    *word |= 1 << bit;
                    out[got] = run_base.wrapping_add((w * 64 + bit) * size);
                    got += 1;
                    m.nfree -= 1;
                }
                w += 1;
            }
            if m.nfree == 0 || w >= nwords && got < want {
                // (the second case only after metadata corruption: a count that promised free
                // blocks the bitmap does not have; never loop on it)
                debug_assert!(m.nfree == 0, "run {r}: nfree {} but no free bit", m.nfree);
                m.nfree = 0;
                self.partial_remove(&mut bin, r);
            }
        }
        bin.blocks_out += got as u64;
        got
    }

    /// The partial run a cache refill of thread `owner` takes from: the first (of a few at the
    /// head of the list) that no other thread takes from, so that threads do not share runs
    /// (their blocks would share cache lines, and their frees would be remote); `None` when
    /// there is none (the caller creates a run, or shares one when out of memory).
    fn pick_partial(&self, bin: &Bin, owner: u32) -> Option<usize> {
        const LOOK: usize = 8;
        let mut r = bin.partial;
        if owner == 0 {
            return (r != NIL).then_some(r as usize);
        }
        for _ in 0..LOOK {
            if r == NIL {
                return None;
            }
            let o = self.owner(r as usize).load(Ordering::Relaxed);
            if o == owner || o == 0 || !tcache::tid_live(o) {
                return Some(r as usize);
            }
            // SAFETY: bin lock held; `r` is in this bin's partial list.
            r = unsafe { self.pm(r as usize).next };
        }
        None
    }

    fn init_run(&self, r: usize, c: usize, shard: usize) {
        let np = run_pages(c);
        let nb = run_blocks(c);
        let words = self.bitmap_words(r);
        // SAFETY: the run's pages are ours (just allocated); no other thread knows them yet.
        unsafe {
            for i in 0..np {
                let m = self.pm(r + i);
                m.head = r as u32;
                m.kind = ExtentKind::Run as u8;
                m.class = c as u8;
            }
            let m = self.pm(r);
            m.nfree = nb as u32;
            m.len = np as u32;
            m.shard = shard as u8;
            for w in 0..np * BM_WORDS {
                // bits past the last block are permanently "taken"
                let first = w * 64;
                *words.add(w) = if first >= nb {
                    u64::MAX
                } else if first + 64 > nb {
                    !0u64 << (nb - first)
                } else {
                    0
                };
            }
        }
    }

    fn partial_push(&self, bin: &mut Bin, r: usize) {
        // SAFETY: bin lock held; `r` is a run head of this bin.
        unsafe {
            let m = self.pm(r);
            if m.flags & F_PARTIAL != 0 {
                return;
            }
            m.flags |= F_PARTIAL;
            m.prev = NIL;
            m.next = bin.partial;
            if bin.partial != NIL {
                self.pm(bin.partial as usize).prev = r as u32;
            }
        }
        bin.partial = r as u32;
    }

    fn partial_remove(&self, bin: &mut Bin, r: usize) {
        // SAFETY: bin lock held; `r` is in this bin's partial list.
        unsafe {
            let m = self.pm(r);
            if m.flags & F_PARTIAL == 0 {
                return;
            }
            m.flags &= !F_PARTIAL;
            let (next, prev) = (m.next, m.prev);
            if prev != NIL {
                self.pm(prev as usize).next = next;
            } else {
                bin.partial = next;
            }
            if next != NIL {
                self.pm(next as usize).prev = prev;
            }
        }
    }

    /// Returns blocks of class `c` to their runs; releases runs that become empty (keeping one
    /// per class over all shards). Each block goes back under the lock of its run's shard. Consecutive blocks of
    /// one run (the usual case: caches hand blocks back in the order they took them) are
    /// gathered first: one write per bitmap word and one count update per run, instead of a
    /// chain of read-modify-writes of the same words per block.
    fn return_blocks(&self, c: usize, blocks: &[*mut u8]) {
        let run_bytes = run_pages(c) * PAGE;
        // the run being gathered: head page, base address, blocks gathered, and the bitmap
        // word being gathered (index, bits)
        let mut r = usize::MAX;
        let mut rbase = 0usize;
        let mut k = 0u32;
        let (mut wi, mut wbits) = (usize::MAX, 0u64);
        let mut held: Option<(usize, crate::sync::Guard<'_, Bin>)> = None;
        let mut n_held = 0u64;
        for &b in blocks {
            if (b as usize).wrapping_sub(rbase) >= run_bytes {
                if let Some((_, bin)) = held.as_mut() {
                    self.clear_bits(r, wi, wbits);
                    self.blocks_back(bin, c, r, k);
                }
                (k, wi, wbits) = (0, usize::MAX, 0);
                // SAFETY: `b` is a taken block of a run of this heap, so its run cannot be
                // released meanwhile: the head and shard of its pages are stable (read through
                // the raw pointer, without a reference to metadata others may be updating).
                let (head, shard) = unsafe {
                    let h = (*self.meta_at(self.page_of(b))).head as usize;
                    (h, (*self.meta_at(h)).shard as usize)
                };
                r = head;
                rbase = self.page_ptr(r) as usize;
                if held.as_ref().map(|h| h.0) != Some(shard) {
                    if let Some((_, mut g)) = held.take() {
                        g.blocks_out -= n_held;
                    }
                    n_held = 0;
                    held = Some((shard, self.bin(c, shard).lock()));
                }
            }
            let idx = size_class::block_index(c, b as usize - rbase);
            if idx / 64 != wi {
                self.clear_bits(r, wi, wbits);
                (wi, wbits) = (idx / 64, 0);
            }
            debug_assert!(wbits & (1 << (idx % 64)) == 0, "double free of {b:p}");
            wbits |= 1 << (idx % 64);
            k += 1;
            n_held += 1;
        }
        if let Some((_, mut g)) = held {
            self.clear_bits(r, wi, wbits);
            self.blocks_back(&mut g, c, r, k);
            g.blocks_out -= n_held;
        }
    }

    /// Marks the blocks `bits` of bitmap word `wi` of run `r` free (nothing when `bits` is 0).
    /// The lock of the run's shard must be held.
    #[inline]
    fn clear_bits(&self, r: usize, wi: usize, bits: u64) {
        if bits == 0 {
            return;
        }
        // SAFETY: `wi` indexes the bitmap of run `r` (a block index / 64); the run's shard lock
        // is held by the caller.
        let word = unsafe { &mut *self.bitmap_words(r).add(wi) };
        debug_assert!(*word & bits == bits, "double free in run {r}");
        *word &= !bits;
    }

    /// Counts `k` blocks back into run `r` of class `c` (its bits already cleared): the run
    /// joins its bin's partial list if it was full, and is released if it is now empty and its
    /// class keeps an empty run already.
    fn blocks_back(&self, bin: &mut Bin, c: usize, r: usize, k: u32) {
        if k == 0 {
            return;
        }
        let nb = run_blocks(c) as u32;
        // SAFETY: `r` is a run head of class `c`; its shard's lock is held.
        let m = unsafe { self.pm(r) };
        let was = m.nfree;
        m.nfree += k;
        debug_assert!(m.nfree <= nb, "run {r}: more blocks back than it has");
        if was == 0 {
            self.partial_push(bin, r);
        }
        if m.nfree == nb {
            for pg in r..r + run_pages(c) {
                self.owner(pg).store(0, Ordering::Relaxed);
            }
            // keep one empty run per class (over all shards), release the others
            let keep = self.empty_kept[c]
                .compare_exchange(0, 1, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok();
            if !keep {
                self.partial_remove(bin, r);
                bin.runs -= 1;
                self.free_extent(r);
            }
        }
    }

    // ------------------------------------------------------------------ public allocation API

    /// Allocates `size` bytes aligned to `align` (a power of two). Null when out of memory.
    #[inline]
    pub fn alloc(&self, size: usize, align: usize) -> *mut u8 {
        match size_class::class_for_layout(size, align) {
            // SAFETY: the size-class table only yields classes below NCLASSES.
            Some(c) => unsafe { self.alloc_class(c) },
            None => self.alloc_large(size.max(1), align),
        }
    }

    /// Allocates a block of class `c` from the thread's cache (refilled when empty).
    ///
    /// # Safety
    /// `c < NCLASSES`.
    #[inline]
    unsafe fn alloc_class(&self, c: usize) -> *mut u8 {
        let tid = current_tid();
        if let Some(tc) = self.tcache(tid) {
            // SAFETY: `c < NCLASSES` (this function's contract).
            if let Some(p) = unsafe { tc.pop(c) } {
                return p;
            }
            return self.refill(tc, c, tid);
        }
        self.alloc_uncached(c)
    }

    /// An allocation by a thread without a cache (out of thread ids, or exiting): one block
    /// straight from the bin.
    #[cold]
    #[inline(never)]
    fn alloc_uncached(&self, c: usize) -> *mut u8 {
        let mut one = [ptr::null_mut(); 1];
        if self.take_blocks(c, &mut one, 1, 0) == 1 {
            one[0]
        } else {
            ptr::null_mut()
        }
    }

    /// Refills an empty cache with half its capacity.
    #[cold]
    fn refill(&self, tc: &TCache, c: usize, tid: u32) -> *mut u8 {
        self.mark_used(tid);
        let want = tc.capacity(c) / 2;
        tc.refill_with(c, want, |out| {
            let n = out.len();
            self.take_blocks(c, out, n, tid)
        })
        .unwrap_or(ptr::null_mut())
    }

    fn alloc_large(&self, size: usize, align: usize) -> *mut u8 {
        let n = size.div_ceil(PAGE);
        let a = align.div_ceil(PAGE).max(1);
        match self.alloc_extent(n, a, ExtentKind::Large, 0) {
            Some(p) => {
                self.large_live.fetch_add(1, Ordering::Relaxed);
                self.page_ptr(p)
            }
            None => ptr::null_mut(),
        }
    }

    /// Like [`HeapCore::alloc`], zero-filled. Memory known to be zero (fresh or hole-punched
    /// extents) is not written again.
    pub fn alloc_zeroed(&self, size: usize, align: usize) -> *mut u8 {
        match size_class::class_for_layout(size, align) {
            Some(c) => {
                // SAFETY: the size-class table only yields classes below NCLASSES.
                let p = unsafe { self.alloc_class(c) };
                if !p.is_null() {
                    // SAFETY: `p` is a fresh block of at least `size` bytes.
                    unsafe { ptr::write_bytes(p, 0, size) };
                }
                p
            }
            None => {
                let p = self.alloc_large(size.max(1), align);
                if !p.is_null() {
                    let page = self.page_of(p);
                    // SAFETY: the extent is ours until returned; reading its flags is fine.
                    let zero = unsafe { self.pm(page).flags & F_ZERO != 0 };
                    if !zero {
                        // SAFETY: fresh extent of at least `size` bytes.
                        unsafe { ptr::write_bytes(p, 0, size) };
                    }
                    // SAFETY: as above.
                    unsafe { self.pm(page).flags &= !F_ZERO };
                }
                p
            }
        }
    }

    /// Frees a block given its layout (the size and alignment it was allocated with).
    ///
    /// # Safety
    /// `p` must have been returned by this heap for the same `size`/`align` and not freed.
    #[inline]
    pub unsafe fn free_sized(&self, p: *mut u8, size: usize, align: usize) {
        match size_class::class_for_layout(size, align) {
            // SAFETY: the size-class table only yields classes below NCLASSES; `p` is a live
            // block of that class (the caller's contract).
            Some(c) => unsafe { self.free_class(p, c) },
            None => self.free_large(p),
        }
    }

    /// Frees a block without knowing its size.
    ///
    /// # Safety
    /// `p` must have been returned by this heap and not freed.
    #[inline]
    pub unsafe fn free(&self, p: *mut u8) {
        let page = self.page_of(p);
        // SAFETY: `p` is a live block of this heap, so its page metadata is initialised.
        let m = unsafe { &*self.meta_at(page) };
        if m.kind == ExtentKind::Run as u8 {
            debug_assert!((m.class as usize) < NCLASSES);
            // SAFETY: run pages carry a class below NCLASSES (set by `init_run`, or decoded from
            // a validated page map at open); `p` is a live block of it (the caller's contract).
            unsafe { self.free_class(p, m.class as usize) }
        } else {
            self.free_large(p)
        }
    }

    /// Frees a small block into the calling thread's cache when the thread owns its run, else
    /// into its remote buffer (module docs, "Runs per thread and remote frees").
    ///
    /// # Safety
    /// `c < NCLASSES` and `p` is a live block of class `c` of this heap.
    #[inline]
    unsafe fn free_class(&self, p: *mut u8, c: usize) {
        let tid = current_tid();
        if let Some(tc) = self.tcache(tid) {
            let owned = self.owner(self.page_of(p)).load(Ordering::Relaxed) == tid;
            // SAFETY: `c < NCLASSES` (this function's contract).
            if owned && unsafe { tc.push(c, p) } {
                return;
            }
            // SAFETY: forwarded contract.
            unsafe { self.free_slow(tc, c, p, tid) };
            return;
        }
        self.free_uncached(c, p);
    }

    /// A free by a thread without a cache: the block goes straight back to its bin.
    #[cold]
    #[inline(never)]
    fn free_uncached(&self, c: usize, p: *mut u8) {
        self.return_blocks(c, &[p]);
    }

    /// A free that is remote or finds the cache full. A full cache grows if it may, else
    /// returns its older half. A remote block goes to the thread's remote buffer, which goes
    /// back to the bin when full.
    ///
    /// # Safety
    /// As [`HeapCore::free_class`].
    #[cold]
    #[inline(never)]
    unsafe fn free_slow(&self, tc: &TCache, c: usize, p: *mut u8, tid: u32) {
        self.mark_used(tid);
        if self.owner(self.page_of(p)).load(Ordering::Relaxed) != tid {
            if !tc.push_remote(c, p) {
                tc.drain_remote_with(c, |blocks| self.return_blocks(c, blocks));
                let pushed = tc.push_remote(c, p);
                debug_assert!(pushed);
            }
            return;
        }
        if !tc.grow(c) {
            let half = tc.capacity(c) / 2;
            tc.drain_with(c, half, |blocks| self.return_blocks(c, blocks));
        }
        // SAFETY: `c < NCLASSES` (this function's contract).
        let pushed = unsafe { tc.push(c, p) };
        debug_assert!(pushed);
    }

    fn free_large(&self, p: *mut u8) {
        self.large_live.fetch_sub(1, Ordering::Relaxed);
        self.free_extent(self.page_of(p));
    }

    /// The usable size of a live block (its class size, or its pages).
    ///
    /// # Safety
    /// `p` must be a live block of this heap.
    pub unsafe fn usable_size(&self, p: *const u8) -> usize {
        // SAFETY: live block: metadata initialised.
        let m = unsafe { &*self.meta_at(self.page_of(p)) };
        if m.kind == ExtentKind::Run as u8 {
            class_size(m.class as usize)
        } else {
            m.len as usize * PAGE
        }
    }

    /// Resizes in place when the new size fits the block (same class, or a large extent that
    /// can grow into a free neighbour or shrink). Returns false when the caller must move it.
    ///
    /// # Safety
    /// `p` must be a live block of this heap allocated with alignment `align`.
    pub unsafe fn resize_in_place(&self, p: *mut u8, new_size: usize, align: usize) -> bool {
        // SAFETY: forwarded.
        let old = unsafe { self.usable_size(p) };
        let page = self.page_of(p);
        // SAFETY: live block.
        let kind = unsafe { (*self.meta_at(page)).kind };
        if kind == ExtentKind::Run as u8 {
            return match size_class::class_for_layout(new_size.max(1), align) {
                Some(c) => class_size(c) == old,
                None => false,
            };
        }
        if new_size <= MAX_SMALL {
            return false;
        }
        let want = new_size.div_ceil(PAGE);
        let have = old / PAGE;
        if want == have {
            return true;
        }
        let mut ex = self.extents.lock();
        if want < have {
            // shrink: the tail becomes free. Ordering: tail head (free), then the new length.
            self.pmap_set(&ex, page + want, ExtentKind::Free, 0, have - want);
            self.pmap_set(&ex, page, ExtentKind::Large, 0, want);
            // SAFETY: lock held; the tail is ours.
            unsafe {
                self.mark_taken(page, want, ExtentKind::Large, 0);
                ex.large_pages -= have - want;
                self.free_extent_locked(&mut ex, page + want, have - want, false);
            }
            return true;
        }
        // grow into the next extent if it is free, in the same zone, and large enough
        let nx = page + have;
        let Some((_, z)) = Self::zone_of(&ex, page) else {
            return false;
        };
        if nx >= z.start + z.npages {
            return false;
        }
        // SAFETY: lock held; `nx` inside the zone.
        let (nk, nh, nl, nd) = unsafe {
            let m = self.pm(nx);
            (m.kind, m.head, m.len as usize, m.nfree as usize)
        };
        if nk != ExtentKind::Free as u8 || nh != nx as u32 || have + nl < want {
            return false;
        }
        // SAFETY: lock held.
        unsafe { self.bin_remove(&mut ex, nx) };
        let rest = have + nl - want;
        // Ordering: the remainder's head, then the grown extent's head.
        if rest > 0 {
            self.pmap_set(&ex, page + want, ExtentKind::Free, 0, rest);
        }
        self.pmap_set(&ex, page, ExtentKind::Large, 0, want);
        // SAFETY: lock held.
        unsafe {
            self.mark_taken(page, want, ExtentKind::Large, 0);
            // the absorbed free head is now an interior page
            self.pm(nx).kind = ExtentKind::Large as u8;
            if rest > 0 {
                self.bin_insert(&mut ex, page + want, rest, nd.saturating_sub(want - have));
            }
        }
        ex.large_pages += want - have;
        true
    }

    // ------------------------------------------------------------------ thread caches

    #[inline]
    fn tcache(&self, tid: u32) -> Option<&TCache> {
        if tid as usize >= MAX_THREADS || tid == 0 {
            return None;
        }
        // SAFETY: slot `tid` of the tcache reservation; zero-initialised memory is an empty
        // cache; only the thread that owns `tid` uses it (and flushes run when it cannot).
        Some(unsafe { &*self.tcaches.ptr().cast::<TCache>().add(tid as usize) })
    }

    /// Marks thread `tid`'s cache as used (for flushes and statistics) and registers the heap
    /// for thread-exit flushes. Called from the slow paths only: a cache that was never used
    /// has capacity 0 and count 0 in every class, so its first pop goes to [`HeapCore::refill`]
    /// and its first push to [`HeapCore::free_slow`], before it can hold any block.
    #[inline]
    fn mark_used(&self, tid: u32) {
        let t = tid as usize;
        if self.touched[t / 64].load(Ordering::Relaxed) & (1 << (t % 64)) == 0 {
            self.touch_tcache(t);
        }
    }

    #[cold]
    fn touch_tcache(&self, t: usize) {
        self.touched[t / 64].fetch_or(1 << (t % 64), Ordering::Relaxed);
        self.register();
    }

    /// Enters the heap into the process registry (thread-exit flushes, fork handlers). Idempotent.
    /// The heap must not move afterwards (it is boxed by its owners).
    pub(crate) fn register(&self) {
        if !self.registered.swap(true, Ordering::AcqRel) {
            tcache::register_heap(self as *const Self as usize, Self::VTABLE);
        }
    }

    /// Flushes thread `tid`'s cache back to the bins.
    fn flush_tid(&self, tid: u32) {
        let t = tid as usize;
        if t >= MAX_THREADS || self.touched[t / 64].load(Ordering::Relaxed) & (1 << (t % 64)) == 0 {
            return;
        }
        // SAFETY: as in `tcache`; the owner is exiting (or the heap is closing, quiescent).
        let tc = unsafe { &*self.tcaches.ptr().cast::<TCache>().add(t) };
        for c in 0..NCLASSES {
            tc.drain_with(c, tcache::MAX_CAP, |blocks| self.return_blocks(c, blocks));
            tc.drain_remote_with(c, |blocks| self.return_blocks(c, blocks));
        }
    }

    const VTABLE: &'static tcache::HeapVTable = &tcache::HeapVTable {
        flush: Self::flush_tid_erased,
        lock_all: Self::lock_all_erased,
        unlock_all: Self::unlock_all_erased,
    };

    /// # Safety
    /// `heap` is a live registered heap; paired with `unlock_all_erased` (fork handlers).
    unsafe fn lock_all_erased(heap: usize) {
        // SAFETY: forwarded.
        let h = unsafe { &*(heap as *const Self) };
        for b in h.all_bins() {
            b.raw().lock();
        }
        h.extents.raw().lock();
    }

    /// # Safety
    /// The locks were taken by `lock_all_erased` in this process (before fork).
    unsafe fn unlock_all_erased(heap: usize) {
        // SAFETY: forwarded.
        unsafe {
            let h = &*(heap as *const Self);
            h.extents.raw().unlock();
            for b in h.all_bins() {
                b.raw().unlock();
            }
        }
    }

    /// # Safety
    /// `heap` is the address of a live, registered `HeapCore<P>`.
    unsafe fn flush_tid_erased(heap: usize, tid: u32) {
        // SAFETY: forwarded from the registry, which only holds live heaps.
        unsafe { (*(heap as *const Self)).flush_tid(tid) }
    }

    /// Returns every thread cache to the bins. Callers must ensure no thread allocates from the
    /// heap concurrently (close, checks, tests). Threads that have finished their work may still
    /// be exiting (a scoped or joined thread runs its thread-local destructors after the join
    /// returns), and an exiting thread flushes its own cache: both flushes run under the thread
    /// registry's lock, so a cache is never drained twice at once.
    pub fn flush_all_caches(&self) {
        tcache::with_registry_locked(|| {
            for t in 1..MAX_THREADS {
                self.flush_tid(t as u32);
            }
        });
    }

    /// Unregisters from the thread registry (before drop).
    pub(crate) fn unregister(&self) {
        if self.registered.swap(false, Ordering::AcqRel) {
            tcache::unregister_heap(self as *const Self as usize);
        }
    }

    // ------------------------------------------------------------------ statistics

    /// Current statistics (cheap: a few locks, no walk).
    pub fn stats(&self) -> HeapStats {
        let mut s = HeapStats::default();
        let mut small_out = 0u64;
        for c in 0..NCLASSES {
            for sh in 0..SHARDS {
                small_out += self.bin(c, sh).lock().blocks_out * class_size(c) as u64;
            }
        }
        let mut cached = 0u64;
        for w in 0..MAX_THREADS / 64 {
            let mut bits = self.touched[w].load(Ordering::Relaxed);
            while bits != 0 {
                let t = w * 64 + bits.trailing_zeros() as usize;
                bits &= bits - 1;
                // SAFETY: touched slots are initialised caches; counts are atomics.
                let tc = unsafe { &*self.tcaches.ptr().cast::<TCache>().add(t) };
                cached += tc.cached_bytes();
            }
        }
        let ex = self.extents.lock();
        let mut meta = 0;
        let mut mapped = 0;
        for z in ex.zones[..ex.nzones].iter().flatten() {
            meta += z.meta_pages as u64;
            mapped += (z.npages * PAGE) as u64;
        }
        s.mapped = mapped;
        s.free = (ex.free_pages * PAGE) as u64;
        s.run_pages = ex.run_pages as u64;
        s.large_pages = ex.large_pages as u64;
        s.meta_pages = meta;
        s.cached = cached;
        s.in_use = small_out.saturating_sub(cached) + (ex.large_pages * PAGE) as u64;
        s
    }

    /// Per-class and free-space detail for tools (`pma-pool info`). Takes every lock in turn;
    /// thread-cached blocks count as in use.
    pub fn detail(&self) -> HeapDetail {
        let mut d = HeapDetail::default();
        for c in 0..NCLASSES {
            let (mut runs, mut blocks_out) = (0, 0);
            for sh in 0..SHARDS {
                let b = self.bin(c, sh).lock();
                runs += b.runs;
                blocks_out += b.blocks_out;
            }
            if runs > 0 || blocks_out > 0 {
                d.classes.push(ClassDetail {
                    size: class_size(c),
                    runs,
                    blocks_out,
                    capacity: (runs * run_blocks(c)) as u64,
                });
            }
        }
        let ex = self.extents.lock();
        for b in 0..EXT_BINS {
            let mut cur = ex.bins[b];
            while cur != NIL {
                // SAFETY: bin lists link free-extent heads; lock held.
                let m = unsafe { &*self.meta_at(cur as usize) };
                d.free_extents += 1;
                d.largest_free_pages = d.largest_free_pages.max(m.len as usize);
                cur = m.next;
            }
        }
        d.free_pages = ex.free_pages;
        d.large_pages = ex.large_pages;
        d.large_allocations = self.large_live.load(Ordering::Relaxed);
        d
    }

    // ------------------------------------------------------------------ open / recovery support

    /// Decodes and validates every zone's durable page map: each head entry, in address order,
    /// with the tiling checks (no extent past its zone, the metadata extent exactly at the zone
    /// start, run lengths matching their class). Reads only.
    fn durable_tiling(ex: &ExtentState) -> Result<Vec<(usize, PageEntry)>, HeapCorruption> {
        let mut out = Vec::new();
        for (zi, z) in ex.zones[..ex.nzones].iter().flatten().enumerate() {
            let mut rel = 0;
            while rel < z.npages {
                // SAFETY: `rel < npages` words of the zone's page map.
                let w = u64::from_le(unsafe {
                    (*(z.pmap.add(rel) as *const AtomicU64)).load(Ordering::Acquire)
                });
                let page = z.start + rel;
                let bad = |what| {
                    Err(HeapCorruption::Tiling {
                        zone: zi,
                        page,
                        what,
                    })
                };
                let e = PageEntry::decode(w).map_err(|error| HeapCorruption::Entry {
                    zone: zi,
                    page,
                    error,
                })?;
                let len = e.len as usize;
                if rel + len > z.npages {
                    return bad("extent runs past the end of its zone");
                }
                if (rel == 0) != (e.kind == ExtentKind::Meta) && z.meta_pages > 0 {
                    return bad("metadata extent misplaced");
                }
                if e.kind == ExtentKind::Meta && len != z.meta_pages {
                    return bad("metadata extent has the wrong length");
                }
                if e.kind == ExtentKind::Run && len != run_pages(e.class as usize) {
                    return bad("run length does not match its class");
                }
                out.push((page, e));
                rel += len;
            }
        }
        Ok(out)
    }

    /// Walks every zone's durable page map and rebuilds the volatile page metadata. Returns the
    /// extents (head, len, kind, class) in address order. Bins are not touched.
    pub(crate) fn walk(&self) -> Result<Vec<(usize, usize, ExtentKind, u8)>, HeapCorruption> {
        let ex = self.extents.lock();
        let tiles = Self::durable_tiling(&ex)?;
        let mut out = Vec::with_capacity(tiles.len());
        for (page, e) in tiles {
            let len = e.len as usize;
            // SAFETY: pages inside the reservation; open is single-threaded.
            unsafe {
                match e.kind {
                    ExtentKind::Run | ExtentKind::Large | ExtentKind::Meta => {
                        for i in 0..len {
                            let m = self.pm(page + i);
                            m.head = page as u32;
                            m.kind = e.kind as u8;
                            m.class = e.class;
                            m.flags = 0;
                        }
                    }
                    ExtentKind::Free => {
                        let m = self.pm(page);
                        m.kind = e.kind as u8;
                        m.head = page as u32;
                        m.flags = 0;
                    }
                }
                self.pm(page).len = len as u32;
            }
            out.push((page, len, e.kind, e.class));
        }
        Ok(out)
    }

    /// For recovery: the block containing pool offset `off`, if it lies in a run block or a large
    /// extent. Returns (block start page-relative pointer, block size, run head or large head,
    /// block index within the run or `usize::MAX` for large).
    pub(crate) fn block_at(&self, off: usize) -> Option<(*mut u8, usize, usize, usize)> {
        let page = off >> PAGE_SHIFT;
        if page >= self.max_pages {
            return None;
        }
        // SAFETY: inside the reservation; recovery is single-threaded.
        let m = unsafe { &*self.meta_at(page) };
        if m.kind == ExtentKind::Run as u8 {
            let head = m.head as usize;
            let c = m.class as usize;
            let size = class_size(c);
            let idx = (off - head * PAGE) / size;
            if idx >= run_blocks(c) {
                return None;
            }
            Some((
                self.page_ptr(head).wrapping_add(idx * size),
                size,
                head,
                idx,
            ))
        } else if m.kind == ExtentKind::Large as u8 {
            let head = m.head as usize;
            // SAFETY: as above.
            let h = unsafe { &*self.meta_at(head) };
            Some((self.page_ptr(head), h.len as usize * PAGE, head, usize::MAX))
        } else {
            None
        }
    }

    /// For recovery: marks a block; returns true if it was not marked before.
    pub(crate) fn mark(&self, head: usize, idx: usize) -> bool {
        // SAFETY: recovery is single-threaded; `head` is a run or large head from `block_at`.
        unsafe {
            if idx == usize::MAX {
                let m = self.pm(head);
                let was = m.flags & F_MARK != 0;
                m.flags |= F_MARK;
                !was
            } else {
                let w = &mut *self.bitmap_words(head).add(idx / 64);
                let was = *w & (1 << (idx % 64)) != 0;
                *w |= 1 << (idx % 64);
                !was
            }
        }
    }

    /// Clears every volatile bitmap word of the runs in `extents` (before a recovery mark).
    pub(crate) fn clear_marks(&self, extents: &[(usize, usize, ExtentKind, u8)]) {
        for &(p, len, k, _) in extents {
            if k == ExtentKind::Run {
                // SAFETY: the run's bitmap words; single-threaded open.
                unsafe { ptr::write_bytes(self.bitmap_words(p), 0, len * BM_WORDS) };
            }
            // SAFETY: as above.
            unsafe { self.pm(p).flags &= !F_MARK };
        }
    }

    /// Loads the run bitmaps saved at the last clean close from the zones' persistent areas.
    pub(crate) fn load_bitmaps(&self) {
        let ex = self.extents.lock();
        for z in ex.zones[..ex.nzones].iter().flatten() {
            if z.pbitmap.is_null() {
                continue;
            }
            // SAFETY: the persistent area holds 32 bytes per zone page; the volatile bitmaps
            // hold the same per pool page.
            unsafe {
                ptr::copy_nonoverlapping(
                    z.pbitmap,
                    self.bitmap_words(z.start).cast::<u8>(),
                    z.npages * BITMAP_BYTES_PER_PAGE,
                )
            };
        }
    }

    /// Saves the run bitmaps into the zones' persistent areas and persists them (clean close).
    /// Thread caches must have been flushed first.
    pub(crate) fn save_bitmaps(&self) {
        let ex = self.extents.lock();
        for z in ex.zones[..ex.nzones].iter().flatten() {
            if z.pbitmap.is_null() {
                continue;
            }
            // SAFETY: as in `load_bitmaps`; the area is inside the mapped zone metadata.
            unsafe {
                self.persist.memcpy_nodrain(
                    z.pbitmap,
                    self.bitmap_words(z.start).cast::<u8>(),
                    z.npages * BITMAP_BYTES_PER_PAGE,
                )
            };
        }
        self.persist.drain();
    }

    /// After `walk` and either `load_bitmaps` (clean) or a recovery mark (marks = taken):
    /// computes free counts, frees empty runs and (after recovery) unmarked large extents,
    /// merges adjacent free extents (persisting merged heads) and fills the bins.
    pub(crate) fn rebuild(
        &self,
        extents: &[(usize, usize, ExtentKind, u8)],
        recovered: bool,
    ) -> RebuildReport {
        let mut rep = RebuildReport::default();
        let mut ex = self.extents.lock();
        ex.free_pages = 0;
        ex.run_pages = 0;
        ex.large_pages = 0;
        // The free extent being built: (head, len, whether its durable head must be written:
        // true when it merges several extents or contains a run/large being freed).
        let mut pending_free: Option<(usize, usize, bool)> = None;
        let flush_free = |this: &Self,
                          ex: &mut ExtentState,
                          f: Option<(usize, usize, bool)>,
                          rep: &mut RebuildReport| {
            if let Some((p, n, dirty)) = f {
                if dirty {
                    this.pmap_set(ex, p, ExtentKind::Free, 0, n);
                    rep.merged += 1;
                }
                // SAFETY: single-threaded open; the pages form one free extent in no bin.
                unsafe { this.bin_insert(ex, p, n, n) };
            }
        };
        let mut zone_end = 0;
        for &(p, len, kind, class) in extents {
            // a new zone boundary ends any pending free extent
            if let Some((_, z)) = Self::zone_of(&ex, p) {
                if z.start + z.npages != zone_end {
                    flush_free(self, &mut ex, pending_free.take(), &mut rep);
                    zone_end = z.start + z.npages;
                }
            }
            let free_it = match kind {
                ExtentKind::Meta => {
                    flush_free(self, &mut ex, pending_free.take(), &mut rep);
                    continue;
                }
                ExtentKind::Free => true,
                ExtentKind::Run => {
                    let c = class as usize;
                    let nb = run_blocks(c);
                    let words = self.bitmap_words(p);
                    let mut taken = 0usize;
                    for w in 0..nb.div_ceil(64) {
                        let valid = if (w + 1) * 64 <= nb {
                            u64::MAX
                        } else {
                            (1u64 << (nb - w * 64)) - 1
                        };
                        // SAFETY: run bitmap words; single-threaded.
                        taken += unsafe { (*words.add(w) & valid).count_ones() } as usize;
                    }
                    rep.live_blocks += taken;
                    if taken == 0 {
                        rep.freed_runs += 1;
                        true
                    } else {
                        // normalise the bitmap tail and enter the run into its bin
                        let mut saved = [0u64; 4096 / 64];
                        for (w, v) in saved.iter_mut().enumerate().take(nb.div_ceil(64)) {
                            // SAFETY: as above.
                            *v = unsafe { *words.add(w) };
                        }
                        // runs found at open are spread over the shards
                        let shard = (p / run_pages(c)) % SHARDS;
                        self.init_run(p, c, shard);
                        for (w, v) in saved.iter().enumerate().take(nb.div_ceil(64)) {
                            // SAFETY: as above.
                            unsafe { *words.add(w) |= *v };
                        }
                        // SAFETY: as above.
                        unsafe { self.pm(p).nfree = (nb - taken) as u32 };
                        ex.run_pages += len;
                        let mut bin = self.bin(c, shard).lock();
                        bin.runs += 1;
                        bin.blocks_out += taken as u64;
                        if taken < nb {
                            self.partial_push(&mut bin, p);
                        }
                        false
                    }
                }
                ExtentKind::Large => {
                    // SAFETY: single-threaded.
                    let marked = unsafe { self.pm(p).flags & F_MARK != 0 };
                    if recovered && !marked {
                        rep.freed_large += 1;
                        true
                    } else {
                        rep.live_blocks += 1;
                        ex.large_pages += len;
                        self.large_live.fetch_add(1, Ordering::Relaxed);
                        // SAFETY: single-threaded.
                        unsafe { self.pm(p).flags &= !F_MARK };
                        false
                    }
                }
            };
            if free_it {
                let was_free = kind == ExtentKind::Free;
                pending_free = match pending_free {
                    Some((fp, fl, _)) if fp + fl == p => Some((fp, fl + len, true)),
                    other => {
                        flush_free(self, &mut ex, other, &mut rep);
                        Some((p, len, !was_free))
                    }
                };
                // SAFETY: single-threaded; pages no longer a run/large.
                unsafe {
                    for i in 0..len {
                        let m = self.pm(p + i);
                        if m.kind != ExtentKind::Free as u8 {
                            m.kind = ExtentKind::Free as u8;
                        }
                    }
                }
            } else {
                flush_free(self, &mut ex, pending_free.take(), &mut rep);
            }
        }
        flush_free(self, &mut ex, pending_free.take(), &mut rep);
        rep
    }

    /// Full consistency check of the engine state against the durable page map. The heap must
    /// be quiescent (no concurrent allocation); thread caches are flushed first.
    pub fn check(&self) -> Result<CheckReport, HeapCorruption> {
        self.flush_all_caches();
        // re-read the durable page map without disturbing volatile state
        let ex_list = Self::durable_tiling(&self.extents.lock())?;
        let mut rep = CheckReport::default();
        let ex = self.extents.lock();
        let mut prev_free_end = usize::MAX;
        let mut free_pages = 0;
        for &(p, e) in &ex_list {
            // SAFETY: quiescent heap; reading metadata.
            let m = unsafe { &*self.meta_at(p) };
            let bad = |what: String| Err(HeapCorruption::State { page: p, what });
            if m.kind != e.kind as u8 {
                return bad(format!(
                    "volatile kind {} but page map says {:?}",
                    m.kind, e.kind
                ));
            }
            if m.len != e.len {
                return bad(format!(
                    "volatile length {} but page map says {}",
                    m.len, e.len
                ));
            }
            rep.extents += 1;
            match e.kind {
                ExtentKind::Free => {
                    if prev_free_end == p {
                        return bad("two adjacent free extents were not merged".into());
                    }
                    prev_free_end = p + e.len as usize;
                    free_pages += e.len as usize;
                    rep.free_pages += e.len as usize;
                    // SAFETY: tail metadata of the free extent.
                    let t = unsafe { &*self.meta_at(p + e.len as usize - 1) };
                    if t.head as usize != p {
                        return bad("free extent tail does not point at its head".into());
                    }
                }
                ExtentKind::Run => {
                    prev_free_end = usize::MAX;
                    let c = e.class as usize;
                    if m.class as usize != c {
                        return bad("run class mismatch".into());
                    }
                    let nb = run_blocks(c);
                    let words = self.bitmap_words(p);
                    let mut taken = 0;
                    for w in 0..(e.len as usize * BM_WORDS) {
                        // SAFETY: run bitmap words.
                        let v = unsafe { *words.add(w) };
                        let first = w * 64;
                        let tail_mask = if first >= nb {
                            u64::MAX
                        } else if first + 64 > nb {
                            !0u64 << (nb - first)
                        } else {
                            0
                        };
                        if v & tail_mask != tail_mask {
                            return bad("bits past the last block are not set".into());
                        }
                        taken += (v & !tail_mask).count_ones() as usize;
                    }
                    if m.nfree as usize != nb - taken {
                        return bad(format!(
                            "run nfree {} but bitmap has {} free",
                            m.nfree,
                            nb - taken
                        ));
                    }
                    if (m.flags & F_PARTIAL != 0) != (m.nfree > 0) {
                        return bad(
                            "run partial-list membership disagrees with its free count".into()
                        );
                    }
                    for i in 0..e.len as usize {
                        // SAFETY: run pages.
                        let pm = unsafe { &*self.meta_at(p + i) };
                        if pm.head as usize != p || pm.kind != ExtentKind::Run as u8 {
                            return bad(format!("run page {} does not point at its head", p + i));
                        }
                    }
                    rep.run_blocks_live += taken;
                    rep.runs += 1;
                }
                ExtentKind::Large => {
                    prev_free_end = usize::MAX;
                    rep.large += 1;
                }
                ExtentKind::Meta => prev_free_end = usize::MAX,
            }
        }
        if free_pages != ex.free_pages {
            return Err(HeapCorruption::State {
                page: 0,
                what: format!(
                    "bins hold {} free pages, page map has {free_pages}",
                    ex.free_pages
                ),
            });
        }
        // every bin entry is a free extent head of the right size
        let mut binned = 0;
        for b in 0..EXT_BINS {
            let mut cur = ex.bins[b];
            while cur != NIL {
                // SAFETY: bin lists link free heads.
                let m = unsafe { &*self.meta_at(cur as usize) };
                if m.kind != ExtentKind::Free as u8 || ext_bin(m.len as usize) != b {
                    return Err(HeapCorruption::State {
                        page: cur as usize,
                        what: "bin list holds a non-free extent or one of the wrong size".into(),
                    });
                }
                binned += m.len as usize;
                cur = m.next;
            }
        }
        if binned != free_pages {
            return Err(HeapCorruption::State {
                page: 0,
                what: format!("bins link {binned} pages, page map has {free_pages} free"),
            });
        }
        Ok(rep)
    }
}

impl<P: Persist> Drop for HeapCore<P> {
    fn drop(&mut self) {
        if self.registered.swap(false, Ordering::AcqRel) {
            tcache::unregister_heap(self as *const Self as usize);
        }
    }
}

/// One size class in [`HeapDetail`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClassDetail {
    /// Block size.
    pub size: usize,
    /// Runs of the class.
    pub runs: usize,
    /// Blocks out of runs (live or thread-cached).
    pub blocks_out: u64,
    /// Blocks the runs can hold.
    pub capacity: u64,
}

/// Detail for tools: classes, free extents, fragmentation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeapDetail {
    /// Classes in use.
    pub classes: Vec<ClassDetail>,
    /// Free pages.
    pub free_pages: usize,
    /// Free extents.
    pub free_extents: usize,
    /// Largest free extent in pages.
    pub largest_free_pages: usize,
    /// Pages in large allocations.
    pub large_pages: usize,
    /// Large allocations.
    pub large_allocations: usize,
}

impl HeapDetail {
    /// External fragmentation of free space: 1 - largest free extent / free pages (0 = one
    /// contiguous free extent).
    pub fn free_fragmentation(&self) -> f64 {
        if self.free_pages == 0 {
            0.0
        } else {
            1.0 - self.largest_free_pages as f64 / self.free_pages as f64
        }
    }

    /// Fraction of run capacity not holding live blocks (internal fragmentation of runs).
    pub fn run_slack(&self) -> f64 {
        let cap: u64 = self
            .classes
            .iter()
            .map(|c| c.capacity * c.size as u64)
            .sum();
        let used: u64 = self
            .classes
            .iter()
            .map(|c| c.blocks_out * c.size as u64)
            .sum();
        if cap == 0 {
            0.0
        } else {
            1.0 - used as f64 / cap as f64
        }
    }
}

/// What the rebuild after an open did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RebuildReport {
    /// Live blocks (run blocks and large extents) kept.
    pub live_blocks: usize,
    /// Runs without live blocks returned to free pages.
    pub freed_runs: usize,
    /// Unreachable large extents freed (recovery only).
    pub freed_large: usize,
    /// Free extents merged (a durable head written).
    pub merged: usize,
}

/// What [`HeapCore::check`] saw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// Extents in the page maps.
    pub extents: usize,
    /// Runs.
    pub runs: usize,
    /// Live blocks in runs.
    pub run_blocks_live: usize,
    /// Large allocations.
    pub large: usize,
    /// Free pages.
    pub free_pages: usize,
}
