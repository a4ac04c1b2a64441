//! Persistent pools: lifecycle (create, open, close, grow), header validation, locking, the root
//! object and the allocation API over the engine.
//!
//! A pool is a file (or a device-DAX device, or simulated media in tests) laid out as
//! docs/format.md describes: page 0 holds the immutable [`PoolHeader`] and two alternating
//! [`StateSlot`]s; zones follow. Opening validates everything before trusting anything, and
//! refuses with a typed [`PoolError`]; it never panics on bad bytes.
//!
//! # Crash consistency (the contract)
//! After a power failure at any instant and a reopen: every block reachable from the root is
//! allocated and will not be handed out again; every other block is free (no persistent leaks);
//! the metadata passes [`Pool::check`]. Reachability is decided on the *durable* image by a
//! conservative scan for tagged [`PPtr`] words, so the application must make a link durable
//! before it relies on the block being kept, and must make an unlink durable before it frees the
//! block (free, then crash, with the old link still durable would otherwise resurrect a block that
//! may already have been reused). After a clean [`Pool::close`] the next open skips the scan.
//!
//! # Fork
//! A pool is mapped shared, while the allocator's bookkeeping is private process memory: after
//! `fork`, parent and child would hand out the same blocks. A child may read an inherited pool,
//! but must not allocate, free or write in it (as with libpmemobj); open pools in the process
//! that uses them.

use crate::heap::{
    CheckReport, CoreOptions, HeapCore, HeapCorruption, HeapStats, RebuildReport, Zone,
};
use crate::layout::{
    self, as_bytes, read_from, ArchFlags, Le16, Le32, Le64, PoolHeader, StateSlot, ZoneHeader,
    FORMAT_MAJOR, FORMAT_MINOR, HEADER_AREA, INCOMPAT_SUPPORTED, INCOMPAT_TX_LANES, POOL_MAGIC,
    RO_COMPAT_SUPPORTED, STATE_CLEAN, STATE_SLOT_OFFSET, ZONE_MAGIC, ZONE_PMAP_OFFSET,
};
use crate::map::{MapError, MapOptions, Mapping};
use crate::persist::{Hardware, Persist};
use crate::pptr::{PPtr, PSafe};
use crate::size_class::PAGE;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Smallest pool: header page, zone metadata and a few runs.
pub const MIN_POOL_SIZE: u64 = 1 << 20;

/// Errors of pool operations.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PoolError {
    /// Mapping the file failed (missing, directory, permissions, no space, not DAX, ...).
    #[error(transparent)]
    Map(#[from] MapError),
    /// Another process (or another open in this one) holds the pool.
    #[error("{path}: the pool is already open in another process")]
    Locked {
        /// The path.
        path: String,
    },
    /// Not a pool file.
    #[error("not a pool (bad magic)")]
    BadMagic,
    /// Header checksum mismatch.
    #[error("pool header checksum mismatch (corrupted header)")]
    HeaderChecksum,
    /// Written by an incompatible format version.
    #[error("unsupported pool format version {major}.{minor} (this build reads {FORMAT_MAJOR}.x)")]
    Version {
        /// Major version found.
        major: u16,
        /// Minor version found.
        minor: u16,
    },
    /// The pool uses features this build does not know.
    #[error("pool uses unknown incompatible features {incompat:#x} (read-only-compatible: {ro_compat:#x})")]
    UnknownFeatures {
        /// Unknown incompatible bits.
        incompat: u64,
        /// Unknown read-only-compatible bits.
        ro_compat: u64,
    },
    /// Created on another architecture.
    #[error("pool was created on another architecture ({found:?}, this is {expected:?})")]
    WrongArch {
        /// Flags in the pool.
        found: ArchFlags,
        /// Flags of this process.
        expected: ArchFlags,
    },
    /// Reserved header bytes are not zero.
    #[error("pool header has non-zero reserved bytes")]
    Reserved,
    /// Neither state slot is valid.
    #[error("no valid state record (both copies are corrupted)")]
    NoState,
    /// The file is smaller than the pool it holds.
    #[error("pool file is truncated: {actual} bytes, the pool needs {expected}")]
    Truncated {
        /// Size recorded in the pool.
        expected: u64,
        /// Size of the file.
        actual: u64,
    },
    /// A zone header is invalid.
    #[error("zone {index}: {what}")]
    Zone {
        /// Zone index.
        index: usize,
        /// What is wrong.
        what: &'static str,
    },
    /// The transaction lane area or a lane log is invalid.
    #[error("transaction lanes: {0}")]
    Lanes(&'static str),
    /// The allocator metadata is inconsistent.
    #[error("heap metadata corrupted: {0}")]
    Heap(#[from] HeapCorruption),
    /// The root does not point at an allocated block.
    #[error("the root object is not an allocated block")]
    BadRoot,
    /// The root exists with another size.
    #[error("root object has size {found}, the application expects {expected}")]
    RootSize {
        /// Size the application asked for.
        expected: u64,
        /// Size recorded in the pool.
        found: u64,
    },
    /// A size argument is out of range.
    #[error("invalid size {size}: {why}")]
    InvalidSize {
        /// The size.
        size: u64,
        /// Why.
        why: &'static str,
    },
    /// The operation is not possible on this pool.
    #[error("{0}")]
    Unsupported(&'static str),
    /// Out of memory in the pool.
    #[error("out of space in the pool")]
    OutOfSpace,
    /// An I/O error outside the mapping layer.
    #[error("{op}: {source}")]
    Io {
        /// Operation.
        op: &'static str,
        /// Error.
        #[source]
        source: std::io::Error,
    },
}

/// Options for [`Pool::create`] and [`Pool::open`].
#[derive(Clone, Debug)]
pub struct PoolOptions {
    /// Application layout name stored at create and checked at open (at most 31 bytes; empty
    /// matches anything at open).
    pub layout: String,
    /// Address space reserved for growth while open (default: 64 GiB or the file size if
    /// larger).
    pub max_size: u64,
    /// Refuse page-cache mappings (require `MAP_SYNC` or device DAX).
    pub require_dax: bool,
    /// A typed recovery tracer replacing the conservative scan (see
    /// [`crate::recovery::TraceFn`]); `None` (the default) scans conservatively.
    pub trace: Option<crate::recovery::TraceFn>,
}

impl Default for PoolOptions {
    fn default() -> Self {
        PoolOptions {
            layout: String::new(),
            max_size: 64 << 30,
            require_dax: false,
            trace: None,
        }
    }
}

/// How the last open went.
#[derive(Clone, Copy, Debug, Default)]
pub struct OpenReport {
    /// The pool had been closed cleanly: no recovery ran.
    pub clean: bool,
    /// Recovery ran (unclean shutdown, or saved bitmaps failed their checksum).
    pub recovered: bool,
    /// Blocks found reachable by recovery (root included; the transaction lane area and
    /// overflow logs are counted in `lane_blocks`, not here).
    pub reachable: usize,
    /// Lanes whose uncommitted transaction was rolled back at this open.
    pub tx_rolled_back: usize,
    /// Staged records (see [`crate::staged`]) written in place again at this open.
    pub staged_replayed: usize,
    /// Blocks held by the transaction lanes (the lane area and overflow logs), kept by
    /// recovery without being scanned.
    pub lane_blocks: usize,
    /// What rebuilding the allocator did.
    pub rebuild: RebuildReport,
    /// Time spent in open.
    pub duration: Duration,
}

struct State {
    slot: StateSlot,
    /// Index (0 or 1) of the slot holding `slot`.
    which: usize,
}

/// Keeps simulated media alive for a pool built on it.
type Keep = Option<Box<dyn std::any::Any + Send + Sync>>;

/// An open pool. Thread-safe: allocate, free and persist from any thread.
///
/// # Examples
/// ```
/// use pmem_alloc::pool::{Pool, PoolOptions};
/// use pmem_alloc::pptr::{PPtr, PSafe};
///
/// #[repr(C)]
/// struct Root { counter: u64, list: PPtr<u64> }
/// // SAFETY: repr(C), PSafe fields only.
/// unsafe impl PSafe for Root {}
///
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("doc.pool");
/// {
///     let pool = Pool::create(&path, 8 << 20, &PoolOptions::default())?;
///     let root = pool.root::<Root>()?;
///     let r = pool.get(root).unwrap();
///     // SAFETY: the root lives as long as the pool; no other thread uses it here.
///     unsafe { (*r).counter += 1 };
///     pool.persist_val(root);
///     pool.close()?;
/// }
/// let pool = Pool::open(&path, &PoolOptions::default())?;
/// assert!(pool.open_report().clean);
/// let r = pool.get(pool.root::<Root>()?).unwrap();
/// // SAFETY: as above.
/// assert_eq!(unsafe { (*r).counter }, 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Pool<P: Persist + 'static = Hardware> {
    core: Box<HeapCore<P>>,
    base: *mut u8,
    size: AtomicUsize,
    header: PoolHeader,
    state: Mutex<State>,
    report: OpenReport,
    closed: bool,
    tx: crate::tx::TxShared,
    // dropped last: the memory everything above points into
    mapping: Option<Mutex<Mapping>>,
    _keep: Keep,
}

// SAFETY: the engine is Sync; `base` points into the owned mapping; mutable state is behind a
// Mutex.
unsafe impl<P: Persist + 'static> Send for Pool<P> {}
// SAFETY: as above.
unsafe impl<P: Persist + 'static> Sync for Pool<P> {}

impl<P: Persist + 'static> std::fmt::Debug for Pool<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("base", &self.base)
            .field("size", &self.size.load(Ordering::Relaxed))
            .field("report", &self.report)
            .finish_non_exhaustive()
    }
}

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn random_uuid() -> [u8; 16] {
    let mut u = [0u8; 16];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut u);
    }
    if u == [0; 16] {
        let t = now_ns() ^ ((std::process::id() as u64) << 32);
        u[..8].copy_from_slice(&t.to_le_bytes());
        u[8..].copy_from_slice(
            &t.rotate_left(17)
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                .to_le_bytes(),
        );
    }
    u[6] = (u[6] & 0x0f) | 0x40; // version 4
    u[8] = (u[8] & 0x3f) | 0x80; // variant
    u
}

fn layout_name(s: &str) -> Result<[u8; 32], PoolError> {
    let b = s.as_bytes();
    if b.len() > 31 || b.contains(&0) {
        return Err(PoolError::InvalidSize {
            size: b.len() as u64,
            why: "layout names are at most 31 bytes without NUL",
        });
    }
    let mut out = [0u8; 32];
    out[..b.len()].copy_from_slice(b);
    Ok(out)
}

impl Pool<Hardware> {
    /// Creates a pool file of `size` bytes (rounded down to whole pages).
    pub fn create(path: &Path, size: u64, opts: &PoolOptions) -> Result<Self, PoolError> {
        if size < MIN_POOL_SIZE {
            return Err(PoolError::InvalidSize {
                size,
                why: "a pool needs at least 1 MiB",
            });
        }
        let layout = layout_name(&opts.layout)?;
        let size = size & !(PAGE as u64 - 1);
        let mopts = map_options(opts, size);
        let m = Mapping::create(path, size, &mopts)?;
        lock(&m)?;
        let persist = m.persister();
        let (base, len) = (m.as_ptr(), m.len());
        // SAFETY: the mapping is ours, `len` bytes, page aligned, and outlives the pool.
        unsafe { Self::create_in(base, len, persist, layout, Some(m), None) }
    }

    /// Opens an existing pool file (or device-DAX device), running recovery after an unclean
    /// shutdown.
    pub fn open(path: &Path, opts: &PoolOptions) -> Result<Self, PoolError> {
        let m = Mapping::open(path, &map_options(opts, 0).min_size(MIN_POOL_SIZE))?;
        lock(&m)?;
        let persist = m.persister();
        let (base, len) = (m.as_ptr(), m.len());
        let layout = layout_name(&opts.layout)?;
        // SAFETY: as in `create`.
        unsafe { Self::open_in(base, len, persist, layout, opts.trace, Some(m), None) }
    }
}

fn map_options(opts: &PoolOptions, size: u64) -> MapOptions {
    MapOptions::new()
        .require_dax(opts.require_dax)
        .reserve(opts.max_size.max(size) as usize)
}

fn lock(m: &Mapping) -> Result<(), PoolError> {
    match m.try_lock_exclusive() {
        Ok(true) => Ok(()),
        Ok(false) => Err(PoolError::Locked {
            path: m.path().display().to_string(),
        }),
        Err(source) => Err(PoolError::Io {
            op: "flock",
            source,
        }),
    }
}

#[cfg(feature = "crash-sim")]
impl Pool<std::sync::Arc<crate::sim::SimMedia>> {
    /// Creates a pool on simulated media (crash tests).
    pub fn create_sim(media: std::sync::Arc<crate::sim::SimMedia>) -> Result<Self, PoolError> {
        let (base, len) = (media.base(), media.len());
        let keep: Keep = Some(Box::new(media.clone()));
        // SAFETY: the media region is `len` bytes, page aligned, and kept alive by `keep`.
        unsafe { Self::create_in(base, len, media, [0; 32], None, keep) }
    }

    /// Opens a pool on simulated media (typically [`crate::sim::SimMedia::from_image`]).
    pub fn open_sim(media: std::sync::Arc<crate::sim::SimMedia>) -> Result<Self, PoolError> {
        Self::open_sim_traced(media, None)
    }

    /// Opens a pool on simulated media with an optional typed recovery tracer.
    pub fn open_sim_traced(
        media: std::sync::Arc<crate::sim::SimMedia>,
        trace: Option<crate::recovery::TraceFn>,
    ) -> Result<Self, PoolError> {
        let (base, len) = (media.base(), media.len());
        let keep: Keep = Some(Box::new(media.clone()));
        // SAFETY: as above.
        unsafe { Self::open_in(base, len, media, [0; 32], trace, None, keep) }
    }
}

impl<P: Persist + 'static> Pool<P> {
    fn persist_range(&self, p: *const u8, len: usize) {
        // SAFETY: callers pass ranges inside the pool mapping.
        unsafe { self.core.persister().persist(p, len) }
    }

    /// # Safety
    /// `base..base+len` is a page-aligned region that stays mapped while the pool lives
    /// (`mapping`/`keep` own it).
    unsafe fn create_in(
        base: *mut u8,
        len: usize,
        persist: P,
        layout: [u8; 32],
        mapping: Option<Mapping>,
        keep: Keep,
    ) -> Result<Self, PoolError> {
        let pages = len / PAGE;
        // SAFETY: forwarded from the caller.
        let core = unsafe { new_core(base, len, mapping.as_ref(), persist) }?;
        let header = PoolHeader {
            magic: POOL_MAGIC,
            major: Le16::new(FORMAT_MAJOR),
            minor: Le16::new(FORMAT_MINOR),
            header_size: Le32::new(std::mem::size_of::<PoolHeader>() as u32),
            compat: Le64::new(0),
            incompat: Le64::new(INCOMPAT_TX_LANES),
            ro_compat: Le64::new(0),
            uuid: random_uuid(),
            arch: ArchFlags::current(),
            created_ns: Le64::new(now_ns()),
            initial_size: Le64::new(len as u64),
            layout,
            reserved: [0; 128],
            checksum: Le64::new(0),
        };
        let mut header = header;
        header.seal();
        let mut pool = Pool {
            core,
            base,
            size: AtomicUsize::new(len),
            header,
            state: Mutex::new(State {
                slot: StateSlot::default(),
                which: 1,
            }),
            report: OpenReport::default(),
            closed: false,
            tx: Default::default(),
            mapping: mapping.map(Mutex::new),
            _keep: keep,
        };
        // Ordering: zone 0 (header, page map) durable, then the pool header, then the first
        // state slot, which is the commit point of create.
        pool.write_zone(0, 1, pages - 1)?;
        // SAFETY: page 0 is inside the mapping.
        unsafe {
            std::ptr::copy_nonoverlapping(
                as_bytes(&pool.header).as_ptr(),
                base,
                std::mem::size_of::<PoolHeader>(),
            );
        }
        pool.persist_range(base, std::mem::size_of::<PoolHeader>());
        let slot = StateSlot {
            seq: Le64::new(0),
            pool_size: Le64::new(len as u64),
            nzones: Le32::new(1),
            flags: Le32::new(0),
            ..StateSlot::default()
        };
        pool.write_state(slot);
        pool.core.init_fresh();
        pool.core.register();
        pool.report = OpenReport {
            clean: true,
            ..OpenReport::default()
        };
        Ok(pool)
    }

    /// Writes a new zone's header and page map (durable) and adds it to the engine.
    fn write_zone(&self, index: usize, start: usize, npages: usize) -> Result<Zone, PoolError> {
        let meta = layout::zone_meta_pages(npages);
        if npages < meta + 16 {
            return Err(PoolError::InvalidSize {
                size: (npages * PAGE) as u64,
                why: "too small for a zone",
            });
        }
        let zbase = self.base.wrapping_add(start * PAGE);
        let mut zh = ZoneHeader {
            magic: ZONE_MAGIC,
            index: Le32::new(index as u32),
            reserved0: Le32::new(0),
            start_page: Le64::new(start as u64),
            npages: Le64::new(npages as u64),
            meta_pages: Le64::new(meta as u64),
            pool_uuid: self.header.uuid[..8].try_into().expect("8 bytes"),
            reserved: [0; 8],
            checksum: Le64::new(0),
        };
        zh.seal();
        // SAFETY: the zone's first page is inside the mapping.
        unsafe { std::ptr::copy_nonoverlapping(as_bytes(&zh).as_ptr(), zbase, 64) };
        self.persist_range(zbase, 64);
        let zone = self.zone_desc(start, npages, meta);
        // SAFETY: the zone's metadata pages are mapped and belong to this zone only.
        unsafe { self.core.add_zone(zone, true) };
        Ok(zone)
    }

    fn zone_desc(&self, start: usize, npages: usize, meta: usize) -> Zone {
        let zbase = self.base.wrapping_add(start * PAGE);
        Zone {
            start,
            npages,
            meta_pages: meta,
            pmap: zbase.wrapping_add(ZONE_PMAP_OFFSET).cast(),
            pbitmap: zbase.wrapping_add(layout::zone_bitmap_offset(npages)),
        }
    }

    /// Writes `slot` (with the next sequence number) into the older state slot and persists it;
    /// that is the commit point. Then mirrors it into the other slot, so that afterwards damage
    /// to either copy falls back to an identical twin rather than to the previous state.
    fn write_state(&self, slot: StateSlot) {
        self.update_state(|s| *s = slot);
    }

    /// Applies `f` to the record in force and writes the result as [`Pool::write_state`] does,
    /// under the state lock (concurrent updates of different fields, such as root creation,
    /// growth and the transaction lanes, cannot undo each other).
    fn update_state(&self, f: impl FnOnce(&mut StateSlot)) -> StateSlot {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut slot = st.slot;
        f(&mut slot);
        slot.seq = Le64::new(st.slot.seq.get() + 1);
        slot.seal();
        let which = 1 - st.which;
        for w in [which, 1 - which] {
            let dst = self.base.wrapping_add(STATE_SLOT_OFFSET + w * 64);
            // SAFETY: the slot lies in page 0 of the mapping.
            unsafe { std::ptr::copy_nonoverlapping(as_bytes(&slot).as_ptr(), dst, 64) };
            self.persist_range(dst, 64);
        }
        st.slot = slot;
        st.which = which;
        slot
    }

    /// # Safety
    /// As [`Pool::create_in`].
    unsafe fn open_in(
        base: *mut u8,
        len: usize,
        persist: P,
        layout: [u8; 32],
        trace: Option<crate::recovery::TraceFn>,
        mapping: Option<Mapping>,
        keep: Keep,
    ) -> Result<Self, PoolError> {
        let t0 = Instant::now();
        // SAFETY: page 0 is mapped (the mapping layer enforces the minimum size).
        let page0 = unsafe { std::slice::from_raw_parts(base as *const u8, HEADER_AREA) };
        let header: PoolHeader = read_from(page0).ok_or(PoolError::BadMagic)?;
        validate_header(&header, &layout)?;
        let slot = [0, 1]
            .iter()
            .filter_map(|&i| {
                let s: StateSlot = read_from(&page0[STATE_SLOT_OFFSET + i * 64..])?;
                s.valid().then_some((s, i))
            })
            .max_by_key(|(s, _)| s.seq.get());
        let Some((slot, which)) = slot else {
            return Err(PoolError::NoState);
        };
        let pool_size = slot.pool_size.get();
        if pool_size > len as u64 {
            return Err(PoolError::Truncated {
                expected: pool_size,
                actual: len as u64,
            });
        }
        if pool_size < MIN_POOL_SIZE || !pool_size.is_multiple_of(PAGE as u64) {
            return Err(PoolError::Zone {
                index: 0,
                what: "state records an impossible pool size",
            });
        }
        let pages = pool_size as usize / PAGE;
        // SAFETY: forwarded from the caller.
        let core = unsafe { new_core(base, len, mapping.as_ref(), persist) }?;
        let mut pool = Pool {
            core,
            base,
            size: AtomicUsize::new(pool_size as usize),
            header,
            state: Mutex::new(State { slot, which }),
            report: OpenReport::default(),
            closed: true, // nothing is written back if open fails part-way
            tx: Default::default(),
            mapping: mapping.map(Mutex::new),
            _keep: keep,
        };
        // zones
        let nzones = slot.nzones.get() as usize;
        if nzones == 0 || nzones > crate::heap::MAX_ZONES {
            return Err(PoolError::Zone {
                index: 0,
                what: "state records an impossible zone count",
            });
        }
        let mut start = 1usize;
        for index in 0..nzones {
            if start >= pages {
                return Err(PoolError::Zone {
                    index,
                    what: "zone starts beyond the pool size",
                });
            }
            // SAFETY: `start < pages`, inside the mapping.
            let zb = unsafe { std::slice::from_raw_parts(base.add(start * PAGE) as *const u8, 64) };
            let zh: ZoneHeader = read_from(zb).ok_or(PoolError::Zone {
                index,
                what: "unreadable",
            })?;
            if zh.magic != ZONE_MAGIC {
                return Err(PoolError::Zone {
                    index,
                    what: "bad zone magic",
                });
            }
            if !zh.checksum_ok() {
                return Err(PoolError::Zone {
                    index,
                    what: "zone header checksum mismatch",
                });
            }
            let np = zh.npages.get() as usize;
            if zh.index.get() as usize != index
                || zh.start_page.get() as usize != start
                || zh.pool_uuid[..] != header.uuid[..8]
                || zh.reserved0.get() != 0
                || zh.reserved != [0; 8]
            {
                return Err(PoolError::Zone {
                    index,
                    what: "zone header does not belong here",
                });
            }
            if np == 0
                || start.checked_add(np).is_none_or(|end| end > pages)
                || zh.meta_pages.get() != layout::zone_meta_pages(np) as u64
            {
                return Err(PoolError::Zone {
                    index,
                    what: "zone size does not fit the pool",
                });
            }
            let z = pool.zone_desc(start, np, zh.meta_pages.get() as usize);
            // SAFETY: validated zone inside the mapping.
            unsafe { pool.core.add_zone(z, false) };
            start += np;
        }
        if start != pages {
            return Err(PoolError::Zone {
                index: nzones - 1,
                what: "zones do not cover the pool size",
            });
        }
        let extents = pool.core.walk()?;
        // Roll back uncommitted transactions before anything reads the heap's contents.
        let mut rolled_back = 0;
        let mut staged_replayed = 0;
        let lanes_off = slot.lanes.get();
        if lanes_off != 0 {
            let (t, n, r) =
                crate::tx::open_lanes(&pool.core, pool_size as usize, lanes_off as usize)?;
            pool.tx.install(t);
            rolled_back = n;
            staged_replayed = r;
        }
        let clean = slot.flags.get() & STATE_CLEAN != 0;
        let bitmaps_ok = clean && pool.bitmap_crc() == slot.bitmap_crc.get();
        let mut report = OpenReport {
            clean,
            tx_rolled_back: rolled_back,
            staged_replayed,
            ..OpenReport::default()
        };
        if bitmaps_ok {
            pool.core.load_bitmaps();
        } else {
            pool.core.clear_marks(&extents);
            report.recovered = true;
            // the lane blocks first, unscanned: old bytes in a log keep nothing alive
            if let Some(t) = pool.tx.table() {
                report.lane_blocks = crate::tx::mark_lanes(&pool.core, t);
            }
            let root = slot.root_off.get();
            report.reachable = match trace {
                Some(f) => crate::recovery::mark_typed(&pool.core, pool_size as usize, root, f),
                None => crate::recovery::mark_from_root(&pool.core, pool_size as usize, root),
            };
        }
        report.rebuild = pool.core.rebuild(&extents, report.recovered);
        // the root must be a block start
        let root = slot.root_off.get();
        if root != 0 {
            match pool.core.block_at(root as usize) {
                Some((p, size, _, _))
                    if p == base.wrapping_add(root as usize)
                        && size as u64 >= slot.root_size.get() => {}
                _ => return Err(PoolError::BadRoot),
            }
        }
        // Mark the pool in use (not clean) before anything is handed out.
        let mut s = slot;
        s.flags = Le32::new(s.flags.get() & !STATE_CLEAN);
        s.bitmap_crc = Le64::new(0);
        pool.write_state(s);
        report.duration = t0.elapsed();
        pool.report = report;
        pool.closed = false;
        pool.core.register();
        Ok(pool)
    }

    fn bitmap_crc(&self) -> u64 {
        let mut h = crc32fast::Hasher::new();
        for z in self.core.zones() {
            if z.pbitmap.is_null() {
                continue;
            }
            // SAFETY: zones known to the engine were validated (or written) and their bitmap
            // areas lie inside their metadata pages.
            let bm = unsafe {
                std::slice::from_raw_parts(
                    z.pbitmap,
                    z.npages * crate::size_class::BITMAP_BYTES_PER_PAGE,
                )
            };
            h.update(bm);
        }
        h.finalize() as u64
    }

    /// How the open went (clean, recovered, timings).
    pub fn open_report(&self) -> OpenReport {
        self.report
    }

    /// The pool's UUID.
    pub fn uuid(&self) -> [u8; 16] {
        self.header.uuid
    }

    /// Bytes of the pool (grows with [`Pool::grow`]).
    pub fn size(&self) -> usize {
        self.size.load(Ordering::Acquire)
    }

    /// Base address of the mapping.
    pub fn base(&self) -> *mut u8 {
        self.base
    }

    /// The persistence policy in use.
    pub fn persister(&self) -> &P {
        self.core.persister()
    }

    /// The engine (advanced use and tests).
    pub fn heap(&self) -> &HeapCore<P> {
        &self.core
    }

    pub(crate) fn tx_shared(&self) -> &crate::tx::TxShared {
        &self.tx
    }

    /// Whether `off..off+len` overlaps allocator metadata: page 0 or a zone's metadata pages
    /// (its header, page map and bitmaps). Reads the zone headers, which are immutable once the
    /// pool size covers them (the size is published after the zone is written).
    pub(crate) fn overlaps_metadata(&self, off: usize, len: usize) -> bool {
        let size = self.size();
        if off < HEADER_AREA {
            return true;
        }
        let end = off.saturating_add(len.max(1));
        let mut start = 1usize;
        while start * PAGE < size {
            let zh = self.base.wrapping_add(start * PAGE);
            // SAFETY: a zone header inside the pool (zones tile the pool from page 1); these
            // 16 bytes are not written after the zone was published.
            let (npages, meta) = unsafe {
                (
                    u64::from_le((zh.add(24) as *const u64).read_unaligned()) as usize,
                    u64::from_le((zh.add(32) as *const u64).read_unaligned()) as usize,
                )
            };
            let meta_end = (start + meta) * PAGE;
            if off < meta_end && start * PAGE < end {
                return true;
            }
            if npages == 0 {
                break;
            }
            start += npages;
        }
        false
    }

    /// Records the transaction lane area in the state (durable: the commit point of the lanes'
    /// creation).
    pub(crate) fn set_lanes(&self, off: u64) {
        self.update_state(|s| s.lanes = Le64::new(off));
    }

    // ------------------------------------------------------------------ root

    /// The typed root object, created zero-filled on first use. Its size is recorded, and a
    /// later call with a type of another size fails with [`PoolError::RootSize`].
    pub fn root<T: PSafe>(&self) -> Result<PPtr<T>, PoolError> {
        self.root_raw(std::mem::size_of::<T>().max(1), std::mem::align_of::<T>())
            .map(PPtr::cast)
    }

    /// The root as raw bytes of `size` (see [`Pool::root`]).
    pub fn root_raw(&self, size: usize, align: usize) -> Result<PPtr<u8>, PoolError> {
        let cur = self.state.lock().unwrap_or_else(|e| e.into_inner()).slot;
        if cur.root_off.get() != 0 {
            if cur.root_size.get() != size as u64 {
                return Err(PoolError::RootSize {
                    expected: size as u64,
                    found: cur.root_size.get(),
                });
            }
            return Ok(PPtr::from_offset(cur.root_off.get()));
        }
        let p = self.core.alloc(size, align);
        if p.is_null() {
            return Err(PoolError::OutOfSpace);
        }
        // Ordering: the zeroed root is durable before the state slot names it.
        // SAFETY: `p` is a fresh block of at least `size` bytes inside the pool.
        unsafe { self.core.persister().memset_persist(p, 0, size) };
        let s = self.update_state(|s| {
            s.root_off = Le64::new(p as u64 - self.base as u64);
            s.root_size = Le64::new(size as u64);
        });
        Ok(PPtr::from_offset(s.root_off.get()))
    }

    // ------------------------------------------------------------------ allocation

    /// Allocates `size` bytes (16-byte aligned). Contents are unspecified. No flush, no fence.
    #[inline]
    pub fn alloc(&self, size: usize) -> Result<PPtr<u8>, PoolError> {
        self.alloc_aligned(size, 16)
    }

    /// Allocates with an alignment (a power of two).
    #[inline]
    pub fn alloc_aligned(&self, size: usize, align: usize) -> Result<PPtr<u8>, PoolError> {
        if !align.is_power_of_two() || size > isize::MAX as usize {
            return Err(bad_layout(size));
        }
        let p = self.core.alloc(size, align);
        if p.is_null() {
            return Err(PoolError::OutOfSpace);
        }
        Ok(PPtr::from_offset(p as u64 - self.base as u64))
    }

    /// Allocates a zero-filled `T` (all-zero is valid for every [`PSafe`] type). The whole block
    /// is cleared, the slack of its size class included, so no stale tagged word from a previous
    /// owner can keep a dead block alive through the recovery scan. The zeros are *not*
    /// persisted: persist the object after initialising it, before linking it.
    pub fn alloc_zeroed<T: PSafe>(&self) -> Result<PPtr<T>, PoolError> {
        self.zeroed(std::mem::size_of::<T>().max(1), std::mem::align_of::<T>())
            .map(PPtr::cast)
    }

    /// Allocates `size` bytes (16-byte aligned), the whole block zero-filled as in
    /// [`Pool::alloc_zeroed`]: the allocation to use for variable-size objects that hold links.
    pub fn alloc_zeroed_bytes(&self, size: usize) -> Result<PPtr<u8>, PoolError> {
        if size > isize::MAX as usize {
            return Err(bad_layout(size));
        }
        self.zeroed(size.max(1), 16)
    }

    fn zeroed(&self, size: usize, align: usize) -> Result<PPtr<u8>, PoolError> {
        let p = self.core.alloc(size, align);
        if p.is_null() {
            return Err(PoolError::OutOfSpace);
        }
        // SAFETY: `p` is a fresh block of this pool; its usable size is the class (or extent) size.
        unsafe { std::ptr::write_bytes(p, 0, self.core.usable_size(p)) };
        Ok(PPtr::from_offset(p as u64 - self.base as u64))
    }

    /// Frees a block.
    ///
    /// # Safety
    /// `p` must be a live block of this pool, returned by an allocation of this pool and not
    /// freed since; per the crash contract, any durable link to it must already have been
    /// removed and persisted.
    #[inline]
    pub unsafe fn free<T: ?Sized>(&self, p: PPtr<T>) {
        if p.is_null() {
            return;
        }
        // a record not yet retired must not replay into the block's next owner
        self.retire_staged();
        // SAFETY: forwarded from the caller.
        unsafe { self.core.free(self.base.wrapping_add(p.offset() as usize)) }
    }

    /// Resizes a block: in place when possible, else allocate, copy (persisted) and free.
    ///
    /// # Safety
    /// As [`Pool::free`] for `p`; after a move the old pointer is dangling, so the application
    /// must have made the new link durable before relying on the data across a crash.
    pub unsafe fn realloc(&self, p: PPtr<u8>, new_size: usize) -> Result<PPtr<u8>, PoolError> {
        if p.is_null() {
            return self.alloc(new_size);
        }
        let old = self.base.wrapping_add(p.offset() as usize);
        // SAFETY: forwarded.
        if unsafe { self.core.resize_in_place(old, new_size, 16) } {
            return Ok(p);
        }
        let n = self.alloc(new_size)?;
        let np = self.base.wrapping_add(n.offset() as usize);
        // SAFETY: both blocks are live; copy the smaller of the sizes.
        unsafe {
            let len = self.core.usable_size(old).min(new_size);
            self.core.persister().memcpy_persist(np, old, len);
            self.core.free(old);
        }
        Ok(n)
    }

    /// Usable size of a live block.
    ///
    /// # Safety
    /// `p` must be a live block of this pool.
    pub unsafe fn usable_size<T: ?Sized>(&self, p: PPtr<T>) -> usize {
        // SAFETY: forwarded.
        unsafe {
            self.core
                .usable_size(self.base.wrapping_add(p.offset() as usize))
        }
    }

    // ------------------------------------------------------------------ pointers and persistence

    /// Resolves a pointer of this pool: `None` for null, out-of-range or misaligned pointers.
    /// The result is a raw pointer: turning it into a reference is the caller's decision
    /// (concurrent access is the application's to synchronise).
    pub fn get<T>(&self, p: PPtr<T>) -> Option<*mut T> {
        let off = p.offset() as usize;
        let size = std::mem::size_of::<T>();
        if p.is_null()
            || off < HEADER_AREA
            || off.checked_add(size)? > self.size()
            || !off.is_multiple_of(std::mem::align_of::<T>())
        {
            return None;
        }
        Some(self.base.wrapping_add(off).cast())
    }

    /// The pointer for an address inside this pool.
    pub fn ptr_of<T>(&self, addr: *const T) -> Option<PPtr<T>> {
        let off = (addr as usize).checked_sub(self.base as usize)?;
        (off >= HEADER_AREA && off < self.size()).then(|| PPtr::from_offset(off as u64))
    }

    /// Makes `size_of::<T>()` bytes at `p` durable (nothing for null or foreign pointers).
    pub fn persist_val<T>(&self, p: PPtr<T>) {
        if let Some(a) = self.get(p) {
            self.retire_staged();
            self.persist_range(a.cast(), std::mem::size_of::<T>());
        }
    }

    /// Makes `len` bytes from `p` durable (clamped to the pool).
    pub fn persist<T: ?Sized>(&self, p: PPtr<T>, len: usize) {
        let off = p.offset() as usize;
        if p.is_null() || off >= self.size() {
            return;
        }
        let len = len.min(self.size() - off);
        self.retire_staged();
        self.persist_range(self.base.wrapping_add(off), len);
    }

    /// Stores `value` into the pointer field at `slot` and persists it: the publish step of the
    /// crash contract (persist the target first, then publish).
    pub fn publish<T: ?Sized>(&self, slot: PPtr<PPtr<T>>, value: PPtr<T>) -> Result<(), PoolError> {
        let a = self
            .get(slot)
            .ok_or(PoolError::Unsupported("publish slot outside the pool"))?;
        // SAFETY: `a` is an aligned pointer-sized location inside the pool; an 8-byte aligned
        // store is failure-atomic.
        unsafe {
            (*(a as *const std::sync::atomic::AtomicU64)).store(value.raw(), Ordering::Release)
        };
        self.retire_staged();
        self.persist_range(a.cast(), 8);
        Ok(())
    }

    // ------------------------------------------------------------------ maintenance

    /// Allocator statistics.
    pub fn stats(&self) -> HeapStats {
        self.core.stats()
    }

    /// Full consistency check (flushes thread caches; other threads must not allocate from the
    /// pool meanwhile).
    pub fn check(&mut self) -> Result<CheckReport, PoolError> {
        Ok(self.core.check()?)
    }

    /// Grows the pool to `new_size` bytes while it is open: the file is extended, the new part
    /// mapped in place (existing pointers stay valid) and added as a new zone.
    pub fn grow(&self, new_size: u64) -> Result<(), PoolError> {
        let Some(m) = &self.mapping else {
            return Err(PoolError::Unsupported(
                "this pool cannot grow (not file-backed)",
            ));
        };
        let mut m = m.lock().unwrap_or_else(|e| e.into_inner());
        let new_size = new_size & !(PAGE as u64 - 1);
        let old = self.size();
        if new_size <= old as u64 {
            return Ok(());
        }
        if new_size > m.reserved() as u64 {
            return Err(PoolError::InvalidSize {
                size: new_size,
                why: "beyond the address space reserved at open (PoolOptions::max_size)",
            });
        }
        if m.len() < new_size as usize {
            m.grow(new_size as usize)?;
        }
        let cur = self.state.lock().unwrap_or_else(|e| e.into_inner()).slot;
        let index = cur.nzones.get() as usize;
        if index >= crate::heap::MAX_ZONES {
            return Err(PoolError::Unsupported("too many zones"));
        }
        // Ordering: the new zone (header and page map) is durable before the state slot that
        // counts it; a crash in between leaves a file longer than the pool, which open accepts.
        self.write_zone(index, old / PAGE, (new_size as usize - old) / PAGE)?;
        self.update_state(|s| {
            s.pool_size = Le64::new(new_size);
            s.nzones = Le32::new(index as u32 + 1);
        });
        self.size.store(new_size as usize, Ordering::Release);
        self.core.add_free_zone(index);
        Ok(())
    }

    /// Closes cleanly: thread caches are returned, allocation bitmaps saved, and the state marked
    /// clean so the next open skips recovery. Dropping the pool does the same; `close` reports
    /// errors.
    pub fn close(mut self) -> Result<(), PoolError> {
        self.close_inner();
        Ok(())
    }

    fn close_inner(&mut self) {
        if self.closed {
            return;
        }
        self.closed = true;
        self.retire_staged();
        self.core.flush_all_caches();
        self.core.unregister();
        self.core.save_bitmaps();
        let crc = self.bitmap_crc();
        self.update_state(|s| {
            s.flags = Le32::new(s.flags.get() | STATE_CLEAN);
            s.bitmap_crc = Le64::new(crc);
        });
    }

    /// Simulates a crash in tests: the pool is dropped without a clean close (nothing more is
    /// written), as if the process had been killed.
    pub fn abandon(mut self) {
        self.closed = true;
        self.core.unregister();
    }
}

impl<P: Persist + 'static> Drop for Pool<P> {
    fn drop(&mut self) {
        self.close_inner();
    }
}

/// The engine over `base..base+len`, with address space for growth up to the mapping's
/// reservation.
///
/// # Safety
/// As [`Pool::create_in`]: the region stays mapped while the engine lives.
unsafe fn new_core<P: Persist + 'static>(
    base: *mut u8,
    len: usize,
    mapping: Option<&Mapping>,
    persist: P,
) -> Result<Box<HeapCore<P>>, PoolError> {
    let max_pages = mapping.map_or(0, |m| m.reserved()).max(len) / PAGE;
    let opts = CoreOptions {
        punch_bytes: 0,
        fd: -1,
    };
    // SAFETY: forwarded from the caller.
    let core = unsafe { HeapCore::new(base, max_pages, persist, opts) };
    core.map(Box::new).map_err(|source| PoolError::Io {
        op: "metadata mmap",
        source,
    })
}

#[cold]
fn bad_layout(size: usize) -> PoolError {
    PoolError::InvalidSize {
        size: size as u64,
        why: "alignment must be a power of two and size below isize::MAX",
    }
}

fn validate_header(h: &PoolHeader, layout: &[u8; 32]) -> Result<(), PoolError> {
    if h.magic != POOL_MAGIC {
        return Err(PoolError::BadMagic);
    }
    if !h.checksum_ok() {
        return Err(PoolError::HeaderChecksum);
    }
    if h.major.get() != FORMAT_MAJOR
        || h.header_size.get() as usize != std::mem::size_of::<PoolHeader>()
    {
        return Err(PoolError::Version {
            major: h.major.get(),
            minor: h.minor.get(),
        });
    }
    let inc = h.incompat.get() & !INCOMPAT_SUPPORTED;
    let ro = h.ro_compat.get() & !RO_COMPAT_SUPPORTED;
    if inc != 0 || ro != 0 {
        return Err(PoolError::UnknownFeatures {
            incompat: inc,
            ro_compat: ro,
        });
    }
    let here = ArchFlags::current();
    if h.arch != here {
        return Err(PoolError::WrongArch {
            found: h.arch,
            expected: here,
        });
    }
    if h.reserved != [0; 128] {
        return Err(PoolError::Reserved);
    }
    if layout[0] != 0 && h.layout != *layout {
        return Err(PoolError::Unsupported(
            "the pool was created with another layout name",
        ));
    }
    Ok(())
}
