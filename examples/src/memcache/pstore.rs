//! The persistent store: items, hash index and LRU in a `pmem_alloc::Pool`.
//!
//! # Layout (docs/memcached.md has the byte diagrams)
//! The pool root is a [`CacheRoot`]: settings, the hash table pointer, the global CAS counter,
//! the flush_all marks, the LRU ends and, saved at a clean shutdown, the stats counters. The
//! hash table is one block of `nbuckets` tagged 8-byte pointers; each bucket is a chain of items
//! linked through their `next` field. An item is one block: an 80-byte header, the key, the
//! value. LRU links are plain offsets (untagged), trusted only after a clean shutdown.
//!
//! # Ordering (what is persisted before what)
//! - store: the new item (header, key, value, CAS, `next`) is flushed and fenced (F1) **before**
//!   the single 8-byte store that links it (into its bucket head, or into the predecessor of the
//!   item it replaces, which it takes the place of in one store). The link is flushed; with
//!   `durable` a second fence (F2) follows before the reply. A replaced item is freed only
//!   after F2 (an unlink must be durable before its block can be reused).
//! - delete, eviction, lazy expiry: the unlinking store is flushed and fenced before the free.
//! - touch: one 8-byte store of the expiry, flushed (fenced with `durable`).
//! - flush_all: the root's `oldest_cas` / `oldest_live` word, flushed and fenced.
//! - clean shutdown: counters, CAS counter and LRU saved; every item header flushed; then the
//!   root's CLEAN flag, flushed and fenced; then the pool closes cleanly.
//!
//! # After a crash
//! The pool's recovery runs [`trace`], a typed tracer: it walks the table and the chains,
//! verifies each item (magic, bounds, CRC over header, key and value) and marks only valid
//! items; a link to anything else is recorded and cut after open. Values are never scanned for
//! pointers. Then expired and flushed items are reclaimed, the LRU is rebuilt from the items'
//! access times and the CAS counter continues above the largest CAS found.

use super::store::*;
use pmem_alloc::pool::PoolOptions;
use pmem_alloc::recovery::{Mark, Tracer};
use pmem_alloc::{Hardware, PPtr, PSafe, Persist, Pool, PoolError};
use std::cell::RefCell;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Layout name stored in the pool header: another application's pool is refused.
pub const LAYOUT: &str = "pmem-memcached";
const ROOT_MAGIC: [u8; 8] = *b"PMCACHE1";
const FORMAT_VERSION: u32 = 1;
const ITEM_MAGIC: u32 = 0x4D45_5449; // "ITEM" little-endian
/// Item header size.
pub const HDR: usize = 80;
const F_CLEAN: u32 = 1;
const STRIPES: usize = 4096;
/// An item is moved to the LRU head on access at most once per this many seconds (memcached's
/// ITEM_UPDATE_INTERVAL).
const LRU_BUMP_SECS: u32 = 60;
/// Evictions tried for one allocation before answering out of memory.
const EVICT_TRIES: usize = 1024;

/// The pool root (416 bytes, little-endian, fixed offsets: docs/memcached.md).
#[repr(C)]
#[derive(Debug)]
pub struct CacheRoot {
    magic: [u8; 8],
    version: u32,
    flags: u32,
    /// Tagged pointer to the bucket array.
    table: u64,
    nbuckets: u64,
    mem_limit: u64,
    item_max: u64,
    cas_next: u64,
    /// flush_all with a delay: items stored before this Unix time die when it arrives (0 =
    /// none).
    oldest_live: u64,
    /// flush_all now: items with a smaller CAS are dead.
    oldest_cas: u64,
    lru_head: u64,
    lru_tail: u64,
    items: u64,
    bytes: u64,
    created: u64,
    reserved: [u64; 6],
    counters: [u64; NCOUNTERS],
}
const _: () = assert!(std::mem::size_of::<CacheRoot>() == 416);
const _: () = assert!(cfg!(target_endian = "little"));
// SAFETY: repr(C), integer fields only, every bit pattern valid, no Drop.
unsafe impl PSafe for CacheRoot {}

// Item header offsets (see docs/memcached.md).
const I_MAGIC: usize = 0; // u32
const I_NKEY: usize = 4; // u16 (+ u16 reserved)
const I_FLAGS: usize = 8; // u32
const I_NBYTES: usize = 12; // u32
const I_TIME: usize = 16; // u64 store time (Unix s)
const I_KHASH: usize = 24; // u32 low bits of the key hash
const I_CRC: usize = 28; // u32 CRC-32 of [0..28) + key + value + CAS
const I_CAS: usize = 32; // u64
const I_EXP: usize = 40; // u64 Expiry::to_raw (mutable: touch)
const I_NEXT: usize = 48; // u64 tagged PPtr, hash chain
const I_LRU_PREV: usize = 56; // u64 offset (untagged)
const I_LRU_NEXT: usize = 64; // u64 offset (untagged)
const I_ATIME: usize = 72; // u32 last access (Unix s)
const I_AFLAGS: usize = 76; // u32 bit 0: fetched
const A_FETCHED: u32 = 1;

/// A stable 64-bit hash of a key (part of the format: bucket = hash & (nbuckets - 1)).
pub fn hash_key(k: &[u8]) -> u64 {
    const M: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut h = (k.len() as u64).wrapping_mul(M) ^ 0x2545_F491_4F6C_DD1D;
    let mut chunks = k.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_le_bytes(c.try_into().unwrap_or([0; 8]));
        h = (h ^ w).wrapping_mul(M).rotate_left(29);
    }
    let mut tail = [0u8; 8];
    let r = chunks.remainder();
    tail[..r.len()].copy_from_slice(r);
    h = (h ^ u64::from_le_bytes(tail)).wrapping_mul(M);
    // splitmix64 finaliser
    h ^= h >> 30;
    h = h.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94D0_49BB_1331_11EB);
    h ^ (h >> 31)
}

/// Bytes an item of this key and value length occupies before size-class rounding.
pub fn item_size(nkey: usize, nbytes: usize) -> usize {
    HDR + nkey + nbytes
}

/// How to open the persistent store.
#[derive(Clone, Debug)]
pub struct PmemStoreConfig {
    /// Pool file (created if missing).
    pub path: PathBuf,
    /// Memory limit for items in bytes (`-m`).
    pub mem_limit: u64,
    /// Item size limit in bytes (`-I`).
    pub item_size_max: usize,
    /// Make every acknowledged write durable before the reply (`--durable`).
    pub durable: bool,
    /// Refuse page-cache mappings.
    pub require_dax: bool,
}

impl PmemStoreConfig {
    /// Defaults of memcached: 64 MiB, 1 MiB items, not durable.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        PmemStoreConfig {
            path: path.into(),
            mem_limit: 64 << 20,
            item_size_max: 1 << 20,
            durable: false,
            require_dax: false,
        }
    }
}

/// What opening found.
#[derive(Clone, Debug, Default)]
pub struct OpenInfo {
    /// A new pool was created.
    pub created: bool,
    /// The previous run shut down cleanly.
    pub clean: bool,
    /// Items restored.
    pub items: u64,
    /// Items dropped (expired, flushed, failed verification, evicted to fit a smaller limit).
    pub dropped: u64,
    /// Time from start of open to ready.
    pub duration: Duration,
    /// Log lines worth printing (reasons for a clean start, adaptations to new settings).
    pub messages: Vec<String>,
}

/// Why the store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another process has the pool open.
    #[error("{0}")]
    Locked(String),
    /// Anything else from the pool layer.
    #[error("{0}")]
    Pool(#[from] PoolError),
    /// File-system trouble.
    #[error("{op}: {source}")]
    Io {
        /// What failed.
        op: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Settings that cannot work (e.g. a memory limit below the minimum).
    #[error("{0}")]
    Config(String),
}

thread_local! {
    /// Links the tracer refused (offsets of the 8-byte words holding them), for the open that
    /// runs on this thread to cut.
    static CUTS: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
}

fn rd32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}
fn rd64(b: &[u8], o: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(a)
}

/// Verifies an item block's bytes: magic, lengths within the block, CRC.
fn item_valid(b: &[u8]) -> bool {
    if b.len() < HDR || rd32(b, I_MAGIC) != ITEM_MAGIC {
        return false;
    }
    let nkey = u16::from_le_bytes([b[I_NKEY], b[I_NKEY + 1]]) as usize;
    let nbytes = rd32(b, I_NBYTES) as usize;
    if nkey == 0 || nkey > KEY_MAX || HDR + nkey + nbytes > b.len() {
        return false;
    }
    let mut h = crc32fast::Hasher::new();
    h.update(&b[..I_CRC]);
    h.update(&b[HDR..HDR + nkey + nbytes]);
    h.update(&b[I_CAS..I_CAS + 8]);
    h.finalize() == rd32(b, I_CRC)
}

/// The typed recovery tracer of the cache (see the module documentation).
pub fn trace(t: &mut Tracer<'_>) {
    CUTS.with(|c| c.borrow_mut().clear());
    let Some((_, root)) = t.root() else { return };
    if root.len() < std::mem::size_of::<CacheRoot>() || root[..8] != ROOT_MAGIC {
        return;
    }
    let table = rd64(root, 16);
    let nbuckets = rd64(root, 24) as usize;
    let Mark::New(tb) = t.mark(table) else {
        return;
    };
    let table_off = table & ((1 << 48) - 1);
    let nbuckets = nbuckets.min(tb.len() / 8);
    let mut cuts = Vec::new();
    for b in 0..nbuckets {
        let mut link_at = table_off + b as u64 * 8;
        let mut next = rd64(tb, b * 8);
        while next != 0 {
            let off = next & ((1 << 48) - 1);
            match t.mark(next) {
                Mark::New(item) if item_valid(item) => {
                    link_at = off + I_NEXT as u64;
                    next = rd64(item, I_NEXT);
                }
                _ => {
                    cuts.push(link_at);
                    break;
                }
            }
        }
    }
    CUTS.with(|c| *c.borrow_mut() = cuts);
}

/// A pointer to an item header in the mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct It(*mut u8);

impl It {
    fn rd32(self, o: usize) -> u32 {
        // SAFETY: `self` is a live item block (at least HDR bytes, 16-byte aligned) and `o` a
        // header field offset; fields are naturally aligned.
        unsafe { self.0.add(o).cast::<u32>().read() }
    }
    fn wr32(self, o: usize, v: u32) {
        // SAFETY: as in `rd32`.
        unsafe { self.0.add(o).cast::<u32>().write(v) }
    }
    fn rd64(self, o: usize) -> u64 {
        // SAFETY: as in `rd32`; an atomic load because LRU fields are read under another lock
        // than some of their writers.
        unsafe { AtomicU64::from_ptr(self.0.add(o).cast::<u64>()).load(Ordering::Relaxed) }
    }
    /// A single 8-byte store (power-fail atomic on aligned words).
    fn wr64(self, o: usize, v: u64) {
        // SAFETY: as in `rd64`.
        unsafe { AtomicU64::from_ptr(self.0.add(o).cast::<u64>()).store(v, Ordering::Relaxed) }
    }
    fn nkey(self) -> usize {
        // SAFETY: as in `rd32`.
        unsafe { self.0.add(I_NKEY).cast::<u16>().read() as usize }
    }
    fn nbytes(self) -> usize {
        self.rd32(I_NBYTES) as usize
    }
    fn key<'a>(self) -> &'a [u8] {
        // SAFETY: the key follows the header inside the block; immutable after publication.
        unsafe { std::slice::from_raw_parts(self.0.add(HDR), self.nkey()) }
    }
    fn value<'a>(self) -> &'a [u8] {
        // SAFETY: the value follows the key inside the block; immutable after publication.
        unsafe { std::slice::from_raw_parts(self.0.add(HDR + self.nkey()), self.nbytes()) }
    }
    fn expiry(self) -> Expiry {
        Expiry::from_raw(self.rd64(I_EXP))
    }
}

/// Where a chain link lives: a bucket slot or an item's `next` field.
#[derive(Clone, Copy)]
struct Link(*mut u8);

impl Link {
    fn get(self) -> u64 {
        // SAFETY: a bucket slot or an item's `next` field: aligned words inside the mapping.
        unsafe { AtomicU64::from_ptr(self.0.cast::<u64>()).load(Ordering::Acquire) }
    }
    fn set(self, v: u64) {
        // SAFETY: as in `get`; one 8-byte store.
        unsafe { AtomicU64::from_ptr(self.0.cast::<u64>()).store(v, Ordering::Release) }
    }
}

/// The persistent store. See the module documentation.
pub struct PmemStore<P: Persist + 'static = Hardware> {
    pool: Pool<P>,
    root: *mut CacheRoot,
    table: *mut u64,
    mask: u64,
    stripes: Box<[Mutex<()>]>,
    lru: Mutex<()>,
    cas: AtomicU64,
    used: AtomicU64,
    items: AtomicU64,
    limit: AtomicU64,
    item_max: usize,
    durable: bool,
    counters: Counters,
    closed: AtomicBool,
    crawl: AtomicU64,
    /// No per-operation flushes (default mode on a page-cache file, where a flush is an
    /// msync): the whole pool is synced at a clean shutdown instead.
    lazy: bool,
    path: PathBuf,
}

// SAFETY: the raw pointers point into the pool mapping owned by `pool`; every access to the
// memory behind them is synchronised by the stripe locks, the LRU lock, or atomics.
unsafe impl<P: Persist + 'static> Send for PmemStore<P> {}
// SAFETY: as above.
unsafe impl<P: Persist + 'static> Sync for PmemStore<P> {}

impl<P: Persist + 'static> std::fmt::Debug for PmemStore<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PmemStore")
            .field("path", &self.path)
            .field("items", &self.items.load(Ordering::Relaxed))
            .field("used", &self.used.load(Ordering::Relaxed))
            .finish()
    }
}

fn lock(m: &Mutex<()>) -> MutexGuard<'_, ()> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Pool bytes for a memory limit: items, class rounding and run slack, table, metadata.
fn pool_size_for(limit: u64, nbuckets: u64) -> u64 {
    let s = limit + limit / 8 + nbuckets * 8 + (8 << 20);
    s.div_ceil(2 << 20) * (2 << 20)
}

fn buckets_for(limit: u64) -> u64 {
    (limit / 256).next_power_of_two().clamp(1 << 12, 1 << 30)
}

/// Errors that mean the file's contents are damaged (as opposed to: in use, another
/// application's or a newer version's pool, or an OS error), so that moving it aside and
/// starting empty is the right answer.
fn is_damage(e: &PoolError) -> bool {
    use pmem_alloc::MapError;
    matches!(
        e,
        PoolError::BadMagic
            | PoolError::HeaderChecksum
            | PoolError::Reserved
            | PoolError::NoState
            | PoolError::Truncated { .. }
            | PoolError::Zone { .. }
            | PoolError::Heap(_)
            | PoolError::BadRoot
            | PoolError::RootSize { .. }
            | PoolError::Map(MapError::Empty { .. } | MapError::TooSmall { .. })
    )
}

impl PmemStore<Hardware> {
    /// Opens (or creates) the store on `cfg.path`.
    ///
    /// A pool that is damaged (bad header, checksums, truncated, inconsistent heap metadata) is
    /// renamed to `<path>.damaged-<unix time>` and a new one is created, with a message: the
    /// data is kept for inspection and the server does not crash-loop. A pool held by another
    /// process, a pool of another application and file-system errors are refused.
    pub fn open(cfg: &PmemStoreConfig) -> Result<(Self, OpenInfo), StoreError> {
        let t0 = Instant::now();
        if cfg.mem_limit < (1 << 20) {
            return Err(StoreError::Config(
                "memory limit must be at least 1 MiB".into(),
            ));
        }
        if cfg.item_size_max < 1024 || cfg.item_size_max as u64 > cfg.mem_limit / 2 {
            return Err(StoreError::Config(format!(
                "item size limit {} must be between 1 KiB and half the memory limit",
                cfg.item_size_max
            )));
        }
        let mut messages = Vec::new();
        let opts = PoolOptions {
            layout: LAYOUT.into(),
            require_dax: cfg.require_dax,
            trace: Some(trace),
            max_size: (4 * pool_size_for(cfg.mem_limit, buckets_for(cfg.mem_limit))).max(64 << 30),
        };
        let exists = cfg.path.exists();
        let opened = if exists {
            match Pool::open(&cfg.path, &opts) {
                Ok(p) => Some(p),
                Err(PoolError::Locked { path }) => {
                    return Err(StoreError::Locked(format!(
                        "{path} is in use by another process (one server per pool file)"
                    )))
                }
                Err(e) if is_damage(&e) => {
                    let aside = cfg.path.with_extension(format!(
                        "{}damaged-{}",
                        cfg.path
                            .extension()
                            .map(|e| format!("{}.", e.to_string_lossy()))
                            .unwrap_or_default(),
                        unix_now()
                    ));
                    std::fs::rename(&cfg.path, &aside).map_err(|source| StoreError::Io {
                        op: format!("renaming damaged pool {}", cfg.path.display()),
                        source,
                    })?;
                    messages.push(format!(
                        "pool {} is damaged ({e}); moved to {} and starting empty",
                        cfg.path.display(),
                        aside.display()
                    ));
                    None
                }
                Err(e) => return Err(e.into()),
            }
        } else {
            None
        };
        let (pool, created) = match opened {
            Some(p) => (p, false),
            None => {
                let size = pool_size_for(cfg.mem_limit, buckets_for(cfg.mem_limit));
                match Pool::create(&cfg.path, size, &opts) {
                    Ok(p) => (p, true),
                    Err(PoolError::Locked { path }) => return Err(StoreError::Locked(path)),
                    Err(e) => return Err(e.into()),
                }
            }
        };
        let lazy = !cfg.durable && pool.persister().method() == pmem_alloc::FlushMethod::Msync;
        let mut info = Self::from_pool(pool, cfg)?;
        info.0.lazy = lazy;
        if lazy {
            messages.push(format!(
                "{} is not on DAX (page cache): writes are safe against process crashes; \
                 power-loss durability comes from the sync at a clean shutdown, or use --durable \
                 (an msync per write)",
                cfg.path.display()
            ));
        }
        info.1.created = created;
        messages.append(&mut info.1.messages);
        info.1.messages = messages;
        info.1.duration = t0.elapsed();
        Ok(info)
    }
}

impl<P: Persist + 'static> PmemStore<P> {
    /// Builds the store on an open pool (created empty, or reopened: recovered if the pool's
    /// open report says so). Used by [`PmemStore::open`] and by crash tests on simulated
    /// media (open those with [`trace`]).
    pub fn from_pool(pool: Pool<P>, cfg: &PmemStoreConfig) -> Result<(Self, OpenInfo), StoreError> {
        let t0 = Instant::now();
        let report = pool.open_report();
        let rootp = pool.root::<CacheRoot>()?;
        let root = pool
            .get(rootp)
            .ok_or_else(|| StoreError::Config("root outside the pool".into()))?;
        let mut info = OpenInfo::default();
        // SAFETY: the root block is ours for the store's lifetime; single-threaded here.
        let r = unsafe { &mut *root };
        let initialised = r.magic == ROOT_MAGIC;
        if initialised && r.version != FORMAT_VERSION {
            return Err(StoreError::Config(format!(
                "cache format version {} is not supported (this build: {FORMAT_VERSION})",
                r.version
            )));
        }
        let mut store = PmemStore {
            root,
            table: std::ptr::null_mut(),
            mask: 0,
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            lru: Mutex::new(()),
            cas: AtomicU64::new(1),
            used: AtomicU64::new(0),
            items: AtomicU64::new(0),
            limit: AtomicU64::new(cfg.mem_limit),
            item_max: cfg.item_size_max,
            durable: cfg.durable,
            counters: Counters::default(),
            closed: AtomicBool::new(false),
            crawl: AtomicU64::new(0),
            lazy: false,
            path: cfg.path.clone(),
            pool,
        };
        if !initialised {
            store.init_root(cfg)?;
            info.created = true;
        } else {
            store.table = store
                .pool
                .get(PPtr::<u64>::from_raw(r.table))
                .ok_or_else(|| StoreError::Config("hash table pointer outside the pool".into()))?;
            store.mask = r.nbuckets - 1;
            let clean = r.flags & F_CLEAN != 0 && !report.recovered;
            info.clean = clean;
            if clean {
                store.cas.store(r.cas_next.max(1), Ordering::Relaxed);
                store.used.store(r.bytes, Ordering::Relaxed);
                store.items.store(r.items, Ordering::Relaxed);
                store.counters.restore(&r.counters);
                // Nothing is visited: items that expired (or were flushed) during the
                // downtime are invisible at once and reclaimed by reads and the crawler.
            } else {
                if r.flags & F_CLEAN != 0 {
                    info.messages.push(
                        "the pool was not closed cleanly although the cache was: recovering".into(),
                    );
                }
                info.dropped += store.recover();
                store.counters.restore(&r.counters);
            }
            store.adapt_settings(cfg, &mut info)?;
        }
        // Mark in use before serving.
        r.flags &= !F_CLEAN;
        store.persist_root();
        info.items = store.items.load(Ordering::Relaxed);
        info.duration = t0.elapsed() + report.duration;
        Ok((store, info))
    }

    fn r(&self) -> *mut CacheRoot {
        self.root
    }

    fn persist_root(&self) {
        // SAFETY: the root block lies in the mapping.
        unsafe {
            self.pool
                .persister()
                .persist(self.root as *const u8, std::mem::size_of::<CacheRoot>())
        };
    }

    fn flush(&self, p: *const u8, len: usize) {
        if self.lazy {
            return;
        }
        // SAFETY: callers pass ranges inside the mapping.
        unsafe { self.pool.persister().flush(p, len) };
    }

    fn fence(&self) {
        if !self.lazy {
            self.pool.persister().drain();
        }
    }

    fn init_root(&mut self, cfg: &PmemStoreConfig) -> Result<(), StoreError> {
        let nb = buckets_for(cfg.mem_limit);
        let t = self.pool.alloc_zeroed_bytes(nb as usize * 8)?;
        self.pool.persist(t, nb as usize * 8);
        let r = self.r();
        // SAFETY: single-threaded open; root block in the mapping. Ordering: everything but
        // the magic is persisted first, then the magic (an uninitialised root is redone).
        unsafe {
            (*r).version = FORMAT_VERSION;
            (*r).flags = 0;
            (*r).table = t.raw();
            (*r).nbuckets = nb;
            (*r).mem_limit = cfg.mem_limit;
            (*r).item_max = cfg.item_size_max as u64;
            (*r).cas_next = 1;
            (*r).oldest_live = 0;
            (*r).oldest_cas = 0;
            (*r).lru_head = 0;
            (*r).lru_tail = 0;
            (*r).items = 0;
            (*r).bytes = 0;
            (*r).created = unix_now();
            (*r).counters = [0; NCOUNTERS];
            self.persist_root();
            (*r).magic = ROOT_MAGIC;
        }
        self.persist_root();
        self.table = self.pool.get(t.cast::<u64>()).expect("just allocated");
        self.mask = nb - 1;
        Ok(())
    }

    /// Applies changed `-m` / `-I` to a restored cache.
    fn adapt_settings(
        &mut self,
        cfg: &PmemStoreConfig,
        info: &mut OpenInfo,
    ) -> Result<(), StoreError> {
        let r = self.r();
        // SAFETY: single-threaded open.
        let (old_limit, old_max, nb) = unsafe { ((*r).mem_limit, (*r).item_max, (*r).nbuckets) };
        if cfg.mem_limit != old_limit {
            let need = pool_size_for(cfg.mem_limit, nb);
            if need > self.pool.size() as u64 {
                self.pool.grow(need)?;
            }
            info.messages.push(format!(
                "memory limit changed from {} to {} MiB{}",
                old_limit >> 20,
                cfg.mem_limit >> 20,
                if cfg.mem_limit < old_limit {
                    ": evicting least recently used items to fit"
                } else {
                    ""
                }
            ));
            // SAFETY: single-threaded open.
            unsafe { (*r).mem_limit = cfg.mem_limit };
            let mut n = 0;
            while self.used.load(Ordering::Relaxed) > cfg.mem_limit && self.evict_one(unix_now()) {
                n += 1;
            }
            info.dropped += n;
            if cfg.mem_limit > old_limit.saturating_mul(4) {
                info.messages.push(format!(
                    "the hash table ({nb} buckets) was sized for {} MiB; chains will be longer",
                    old_limit >> 20
                ));
            }
        }
        if cfg.item_size_max as u64 != old_max {
            info.messages.push(format!(
                "item size limit changed from {old_max} to {} bytes (stored items are kept)",
                cfg.item_size_max
            ));
            // SAFETY: single-threaded open.
            unsafe { (*r).item_max = cfg.item_size_max as u64 };
        }
        self.persist_root();
        Ok(())
    }

    fn bucket_of(&self, h: u64) -> (usize, Link) {
        let b = (h & self.mask) as usize;
        // SAFETY: `b <= mask < nbuckets`, inside the table block.
        (b, Link(unsafe { self.table.add(b) }.cast()))
    }

    fn stripe(&self, bucket: usize) -> MutexGuard<'_, ()> {
        lock(&self.stripes[bucket % STRIPES])
    }

    fn item_at(&self, raw: u64) -> Option<It> {
        self.pool.get(PPtr::<u8>::from_raw(raw)).map(It)
    }

    fn off_of(&self, it: It) -> u64 {
        it.0 as u64 - self.pool.base() as u64
    }

    fn ptr_of(&self, it: It) -> PPtr<u8> {
        PPtr::from_offset(self.off_of(it))
    }

    /// Finds `key` in its chain. Returns (link pointing at the item, item). Caller holds the
    /// stripe lock.
    fn find(&self, head: Link, h: u64, key: &[u8]) -> Option<(Link, It)> {
        let mut link = head;
        let mut n = 0;
        loop {
            let it = self.item_at(link.get())?;
            if it.rd32(I_KHASH) == h as u32 && it.key() == key {
                return Some((link, it));
            }
            // SAFETY: the `next` field of a live item.
            link = Link(unsafe { it.0.add(I_NEXT) });
            n += 1;
            if n > 1 << 24 {
                return None; // a cycle would be corruption; never loop forever
            }
        }
    }

    fn oldest(&self) -> (u64, u64) {
        let r = self.r();
        // SAFETY: 8-byte aligned root words, written with single stores.
        unsafe {
            (
                AtomicU64::from_ptr(std::ptr::addr_of_mut!((*r).oldest_live))
                    .load(Ordering::Relaxed),
                AtomicU64::from_ptr(std::ptr::addr_of_mut!((*r).oldest_cas))
                    .load(Ordering::Relaxed),
            )
        }
    }

    /// Dead: expired, or invalidated by flush_all. Returns (dead, flushed).
    fn dead(&self, it: It, now: u64) -> (bool, bool) {
        let (ol, oc) = self.oldest();
        let flushed = it.rd64(I_CAS) < oc || (ol != 0 && now >= ol && it.rd64(I_TIME) < ol);
        (flushed || it.expiry().is_expired(now), flushed)
    }

    // ---- LRU (caller holds the LRU lock) ----

    fn lru_unlink(&self, it: It) {
        let r = self.r();
        let (p, n) = (it.rd64(I_LRU_PREV), it.rd64(I_LRU_NEXT));
        match self.item_at_off(p) {
            Some(pi) => pi.wr64(I_LRU_NEXT, n),
            // SAFETY: root word under the LRU lock.
            None => unsafe { (*r).lru_head = n },
        }
        match self.item_at_off(n) {
            Some(ni) => ni.wr64(I_LRU_PREV, p),
            // SAFETY: as above.
            None => unsafe { (*r).lru_tail = p },
        }
        it.wr64(I_LRU_PREV, 0);
        it.wr64(I_LRU_NEXT, 0);
    }

    fn lru_push_head(&self, it: It) {
        let r = self.r();
        let off = self.off_of(it);
        // SAFETY: root words under the LRU lock.
        let head = unsafe { (*r).lru_head };
        it.wr64(I_LRU_PREV, 0);
        it.wr64(I_LRU_NEXT, head);
        match self.item_at_off(head) {
            Some(h) => h.wr64(I_LRU_PREV, off),
            // SAFETY: as above.
            None => unsafe { (*r).lru_tail = off },
        }
        // SAFETY: as above.
        unsafe { (*r).lru_head = off };
    }

    /// An LRU offset (untagged) as an item, if it plausibly is one.
    fn item_at_off(&self, off: u64) -> Option<It> {
        if off == 0 || !off.is_multiple_of(16) {
            return None;
        }
        let it = self.pool.get(PPtr::<u8>::from_offset(off)).map(It)?;
        (off as usize + HDR <= self.pool.size() && it.rd32(I_MAGIC) == ITEM_MAGIC).then_some(it)
    }

    // ---- allocation and eviction ----

    /// Allocates an item block of `size` bytes, evicting as needed.
    fn alloc_item(&self, size: usize, now: u64) -> Option<It> {
        let mut tries = 0;
        loop {
            let limit = self.limit.load(Ordering::Relaxed);
            if self.used.load(Ordering::Relaxed) + size as u64 <= limit {
                if let Ok(p) = self.pool.alloc(size) {
                    return self.pool.get(p).map(It);
                }
            }
            if tries >= EVICT_TRIES || !self.evict_one(now) {
                return None;
            }
            tries += 1;
        }
    }

    /// Charges a linked item.
    fn charge(&self, it: It) {
        // SAFETY: a live block of the pool.
        let u = unsafe { self.pool.usable_size(self.ptr_of(it)) } as u64;
        self.used.fetch_add(u, Ordering::Relaxed);
        self.items.fetch_add(1, Ordering::Relaxed);
    }

    /// Frees an item whose unlink (hash and LRU) is durable.
    fn release(&self, it: It) {
        let p = self.ptr_of(it);
        // SAFETY: a live block of the pool, unlinked durably by the caller.
        unsafe {
            let u = self.pool.usable_size(p) as u64;
            self.used.fetch_sub(u, Ordering::Relaxed);
            self.items.fetch_sub(1, Ordering::Relaxed);
            self.pool.free(p);
        }
    }

    /// Frees a block that was never linked.
    fn discard(&self, it: It) {
        // SAFETY: a block of this pool that nothing links to.
        unsafe { self.pool.free(self.ptr_of(it)) };
    }

    /// Takes `it` out of its chain: one 8-byte store of its successor into the link that
    /// points at it, flushed and fenced (an unlink is durable before the block is reused).
    fn unlink_durably(&self, link: Link, it: It) {
        link.set(it.rd64(I_NEXT));
        self.flush(link.0, 8);
        self.fence();
    }

    /// Removes a linked item: unlink from its chain (durably), from the LRU, free. Caller holds
    /// the item's stripe lock (and not the LRU lock).
    fn remove(&self, link: Link, it: It) {
        self.unlink_durably(link, it);
        {
            let _l = lock(&self.lru);
            self.lru_unlink(it);
        }
        self.release(it);
    }

    /// Evicts (or reclaims, if dead) one item from the LRU tail. False if nothing could be.
    fn evict_one(&self, now: u64) -> bool {
        let _l = lock(&self.lru);
        let r = self.r();
        // SAFETY: root word under the LRU lock.
        let mut cur = unsafe { (*r).lru_tail };
        for _ in 0..64 {
            let Some(it) = self.item_at_off(cur) else {
                return false;
            };
            let prev = it.rd64(I_LRU_PREV);
            let h = hash_key(it.key());
            let (b, head) = self.bucket_of(h);
            if let Ok(_g) = self.stripes[b % STRIPES].try_lock() {
                if let Some((link, found)) = self.find(head, h, it.key()) {
                    if found == it {
                        let (dead, _) = self.dead(it, now);
                        let fetched = it.rd32(I_AFLAGS) & A_FETCHED != 0;
                        self.unlink_durably(link, it);
                        self.lru_unlink(it);
                        self.release(it);
                        if dead {
                            self.counters.incr(Ctr::Reclaimed);
                            if !fetched {
                                self.counters.incr(Ctr::ExpiredUnfetched);
                            }
                        } else {
                            self.counters.incr(Ctr::Evictions);
                            if !fetched {
                                self.counters.incr(Ctr::EvictedUnfetched);
                            }
                        }
                        return true;
                    }
                }
            }
            cur = prev;
        }
        false
    }

    // ---- building items ----

    /// Allocates and fills an item (everything but CAS, `next` and the CRC's CAS part) and
    /// flushes it (not fenced). Returns the item and the CRC state to finish with the CAS.
    fn build(
        &self,
        key: &[u8],
        h: u64,
        parts: &[&[u8]],
        flags: u32,
        expiry: Expiry,
        now: u64,
    ) -> Option<(It, crc32fast::Hasher)> {
        let nbytes: usize = parts.iter().map(|p| p.len()).sum();
        let it = self.alloc_item(item_size(key.len(), nbytes), now)?;
        let mut hdr = [0u8; HDR];
        hdr[I_MAGIC..I_MAGIC + 4].copy_from_slice(&ITEM_MAGIC.to_le_bytes());
        hdr[I_NKEY..I_NKEY + 2].copy_from_slice(&(key.len() as u16).to_le_bytes());
        hdr[I_FLAGS..I_FLAGS + 4].copy_from_slice(&flags.to_le_bytes());
        hdr[I_NBYTES..I_NBYTES + 4].copy_from_slice(&(nbytes as u32).to_le_bytes());
        hdr[I_TIME..I_TIME + 8].copy_from_slice(&now.to_le_bytes());
        hdr[I_KHASH..I_KHASH + 4].copy_from_slice(&(h as u32).to_le_bytes());
        hdr[I_EXP..I_EXP + 8].copy_from_slice(&expiry.to_raw().to_le_bytes());
        hdr[I_ATIME..I_ATIME + 4].copy_from_slice(&(now as u32).to_le_bytes());
        let mut crc = crc32fast::Hasher::new();
        crc.update(&hdr[..I_CRC]);
        // SAFETY: the block holds HDR + key + value bytes (allocated above); nothing else
        // references it yet.
        unsafe {
            std::ptr::copy_nonoverlapping(hdr.as_ptr(), it.0, HDR);
            std::ptr::copy_nonoverlapping(key.as_ptr(), it.0.add(HDR), key.len());
            let mut at = HDR + key.len();
            for p in parts {
                std::ptr::copy_nonoverlapping(p.as_ptr(), it.0.add(at), p.len());
                at += p.len();
            }
        }
        crc.update(key);
        for p in parts {
            crc.update(p);
        }
        self.flush(it.0, item_size(key.len(), nbytes));
        Some((it, crc))
    }

    /// Publishes a built item under its stripe lock: assigns the CAS, links it in place of
    /// `old` (or at the chain head), persists in the documented order, puts it in the LRU and
    /// frees `old`. Returns the CAS.
    fn publish(
        &self,
        it: It,
        mut crc: crc32fast::Hasher,
        head: Link,
        old: Option<(Link, It)>,
    ) -> u64 {
        let cas = self.cas.fetch_add(1, Ordering::Relaxed);
        crc.update(&cas.to_le_bytes());
        it.wr64(I_CAS, cas);
        it.wr32(I_CRC, crc.finalize());
        let (link, next) = match old {
            Some((l, o)) => (l, o.rd64(I_NEXT)),
            None => (head, head.get()),
        };
        it.wr64(I_NEXT, next);
        self.flush(it.0, HDR);
        self.fence(); // F1: the item before the link
        link.set(self.ptr_of(it).raw());
        self.flush(link.0, 8);
        if self.durable || old.is_some() {
            self.fence(); // F2: the link durable (and the old item's unlink before its free)
        }
        self.charge(it);
        {
            let _l = lock(&self.lru);
            if let Some((_, o)) = old {
                self.lru_unlink(o);
            }
            self.lru_push_head(it);
        }
        if let Some((_, o)) = old {
            self.release(o);
        }
        cas
    }

    fn meta_of(&self, it: It) -> ItemMeta {
        ItemMeta {
            flags: it.rd32(I_FLAGS),
            cas: it.rd64(I_CAS),
            expiry: it.expiry(),
            last_access: it.rd32(I_ATIME) as u64,
            fetched: it.rd32(I_AFLAGS) & A_FETCHED != 0,
            class: 1,
        }
    }

    /// Looks up a live item under the held stripe lock, reclaiming a dead one.
    fn lookup(&self, head: Link, h: u64, key: &[u8], now: u64) -> Option<(Link, It)> {
        let (link, it) = self.find(head, h, key)?;
        let (dead, flushed) = self.dead(it, now);
        if dead {
            self.counters.incr(if flushed {
                Ctr::GetFlushed
            } else {
                Ctr::GetExpired
            });
            self.remove(link, it);
            return None;
        }
        Some((link, it))
    }

    fn set_expiry(&self, it: It, e: Expiry) {
        it.wr64(I_EXP, e.to_raw());
        self.flush(it.0.wrapping_add(I_EXP), 8);
        if self.durable {
            self.fence();
        }
    }

    // ---- open-time passes ----

    /// After a crash: cut refused links, reclaim dead items, rebuild the LRU and the counts.
    /// Returns the number of items dropped.
    fn recover(&mut self) -> u64 {
        let cuts = CUTS.with(|c| std::mem::take(&mut *c.borrow_mut()));
        let mut dropped = cuts.len() as u64;
        for off in cuts {
            if let Some(p) = self.pool.get(PPtr::<u64>::from_offset(off)) {
                let l = Link(p.cast());
                l.set(0);
                self.flush(l.0, 8);
            }
        }
        self.fence();
        let now = unix_now();
        let r = self.r();
        // SAFETY: single-threaded open.
        unsafe {
            (*r).lru_head = 0;
            (*r).lru_tail = 0;
        }
        let mut live: Vec<(u32, It)> = Vec::new();
        let mut max_cas = 0;
        for b in 0..=self.mask as usize {
            // SAFETY: inside the table.
            let mut link = Link(unsafe { self.table.add(b) }.cast());
            while let Some(it) = self.item_at(link.get()) {
                max_cas = max_cas.max(it.rd64(I_CAS));
                if self.dead(it, now).0 {
                    self.unlink_durably(link, it);
                    // SAFETY: unlinked durably; marked by the tracer, so a live block.
                    unsafe { self.pool.free(self.ptr_of(it)) };
                    dropped += 1;
                    continue;
                }
                self.charge(it);
                live.push((it.rd32(I_ATIME), it));
                // SAFETY: the `next` field of a verified item.
                link = Link(unsafe { it.0.add(I_NEXT) });
            }
        }
        // Most recent first: pushing in ascending access time leaves the newest at the head.
        live.sort_unstable_by_key(|&(t, _)| t);
        for &(_, it) in &live {
            self.lru_push_head(it);
        }
        // SAFETY: single-threaded open.
        let saved = unsafe { (*r).cas_next.max((*r).oldest_cas) };
        self.cas
            .store((max_cas + 1).max(saved).max(1), Ordering::Relaxed);
        dropped
    }

    /// Background work, called about once a second by the server: saves the counters into
    /// the root (a kill -9 then loses at most a second of counting) and reclaims up to
    /// `budget` expired items found by scanning buckets round-robin from `cursor`.
    /// Returns the next cursor.
    pub fn tick(&self, cursor: u64, budget: usize) -> u64 {
        let r = self.r();
        let snap = self.counters.snapshot();
        // SAFETY: the counters area is written only here and at shutdown (same thread).
        unsafe { std::ptr::addr_of_mut!((*r).counters).write(snap) };
        let now = unix_now();
        let nb = self.mask + 1;
        let mut b = cursor % nb;
        let mut seen = 0;
        while seen < budget {
            let (bi, head) = self.bucket_of(b);
            {
                let _g = self.stripe(bi);
                let mut link = head;
                while let Some(it) = self.item_at(link.get()) {
                    seen += 1;
                    if self.dead(it, now).0 {
                        if it.rd32(I_AFLAGS) & A_FETCHED == 0 {
                            self.counters.incr(Ctr::ExpiredUnfetched);
                        }
                        self.counters.incr(Ctr::Reclaimed);
                        self.remove(link, it);
                        continue;
                    }
                    // SAFETY: the `next` field of a live item.
                    link = Link(unsafe { it.0.add(I_NEXT) });
                }
            }
            b = (b + 1) % nb;
            seen += 1;
            if b == cursor % nb {
                break;
            }
        }
        b
    }

    /// Simulates `kill -9` in tests: the pool is dropped without any close, so the next open
    /// runs recovery with [`trace`].
    pub fn abandon(self) {
        self.pool.abandon();
    }

    /// The pool (for tests and statistics).
    pub fn pool(&self) -> &Pool<P> {
        &self.pool
    }

    /// Every live key with its value (for tests: verification after restarts).
    pub fn dump(&self) -> Vec<(Vec<u8>, ItemMeta, Vec<u8>)> {
        let mut out = Vec::new();
        let now = unix_now();
        for b in 0..=self.mask as usize {
            let _g = self.stripe(b);
            // SAFETY: inside the table.
            let mut link = Link(unsafe { self.table.add(b) }.cast());
            while let Some(it) = self.item_at(link.get()) {
                if !self.dead(it, now).0 {
                    out.push((it.key().to_vec(), self.meta_of(it), it.value().to_vec()));
                }
                // SAFETY: the `next` field of a live item.
                link = Link(unsafe { it.0.add(I_NEXT) });
            }
        }
        out
    }

    /// Checks the structure: every chain item valid (CRC) and in the right bucket, the LRU a
    /// consistent doubly linked list over exactly the chained items, the byte count exact.
    /// For tests after restarts and crashes.
    pub fn verify(&self) -> Result<u64, String> {
        let _l = lock(&self.lru);
        let mut set = std::collections::HashSet::new();
        let mut bytes = 0u64;
        for b in 0..=self.mask as usize {
            let _g = self.stripe(b);
            // SAFETY: inside the table.
            let mut link = Link(unsafe { self.table.add(b) }.cast());
            while let Some(it) = self.item_at(link.get()) {
                // SAFETY: a chained item: a live block.
                let usable = unsafe { self.pool.usable_size(self.ptr_of(it)) };
                // SAFETY: `usable` bytes of the block.
                let bytes_of = unsafe { std::slice::from_raw_parts(it.0, usable) };
                if !item_valid(bytes_of) {
                    return Err(format!("item at {:#x} fails verification", self.off_of(it)));
                }
                if (hash_key(it.key()) & self.mask) as usize != b {
                    return Err("item in the wrong bucket".into());
                }
                if !set.insert(self.off_of(it)) {
                    return Err("item linked twice".into());
                }
                bytes += usable as u64;
                // SAFETY: the `next` field of a live item.
                link = Link(unsafe { it.0.add(I_NEXT) });
            }
        }
        let r = self.r();
        // SAFETY: under the LRU lock.
        let (mut cur, mut prev) = (unsafe { (*r).lru_head }, 0u64);
        let mut n = 0;
        while cur != 0 {
            let it = self
                .item_at_off(cur)
                .ok_or_else(|| format!("LRU link to {cur:#x} is not an item"))?;
            if it.rd64(I_LRU_PREV) != prev {
                return Err("LRU back link mismatch".into());
            }
            if !set.contains(&cur) {
                return Err("LRU holds an item that is not in the table".into());
            }
            n += 1;
            if n > set.len() {
                return Err("LRU longer than the table".into());
            }
            prev = cur;
            cur = it.rd64(I_LRU_NEXT);
        }
        // SAFETY: as above.
        if n != set.len() || unsafe { (*r).lru_tail } != prev {
            return Err(format!("LRU has {n} items, table {}", set.len()));
        }
        if bytes != self.used.load(Ordering::Relaxed) {
            return Err(format!(
                "byte count {} != {bytes}",
                self.used.load(Ordering::Relaxed)
            ));
        }
        if set.len() as u64 != self.items.load(Ordering::Relaxed) {
            return Err("item count mismatch".into());
        }
        Ok(set.len() as u64)
    }

    /// memcached's observable rule (key + value + 52 header bytes within `-I`), so that the
    /// largest storable value is the same as with memcached; the real header is 80 bytes.
    fn too_large(&self, nkey: usize, nbytes: usize) -> bool {
        nkey + nbytes + 52 > self.item_max
    }
}

/// memcached's number rule for incr/decr: decimal digits, at most 20, optionally followed by
/// spaces (left there by an earlier in-place decrement).
fn parse_u64(v: &[u8]) -> Option<u64> {
    let end = v.iter().rposition(|&b| b != b' ').map_or(0, |i| i + 1);
    let v = &v[..end];
    if v.is_empty() || v.len() > 20 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

impl<P: Persist + 'static> CacheStore for PmemStore<P> {
    fn get(&self, key: &[u8], opts: GetOpts, out: &mut dyn FnMut(&ItemMeta, &[u8])) -> bool {
        let now = unix_now();
        let h = hash_key(key);
        let (b, head) = self.bucket_of(h);
        let _g = self.stripe(b);
        let Some((_, it)) = self.lookup(head, h, key, now) else {
            return false;
        };
        if let Some(e) = opts.touch {
            self.set_expiry(it, e);
        }
        let meta = self.meta_of(it);
        out(&meta, it.value());
        if !opts.peek {
            it.wr32(I_AFLAGS, it.rd32(I_AFLAGS) | A_FETCHED);
            let last = it.rd32(I_ATIME);
            let now32 = now as u32;
            if now32.wrapping_sub(last) >= LRU_BUMP_SECS {
                it.wr32(I_ATIME, now32);
                let _l = lock(&self.lru);
                self.lru_unlink(it);
                self.lru_push_head(it);
            }
        }
        true
    }

    fn store(&self, req: &StoreReq<'_>) -> StoreOutcome {
        if self.closed.load(Ordering::Relaxed) {
            return StoreOutcome::NoMemory;
        }
        let now = unix_now();
        let h = hash_key(req.key);
        let (b, head) = self.bucket_of(h);
        match req.mode {
            SetMode::Append | SetMode::Prepend => {
                let _g = self.stripe(b);
                // memcached: append/prepend on a missing key is NOT_STORED, CAS or not; one
                // that would exceed the item size limit too
                let Some((link, old)) = self.lookup(head, h, req.key, now) else {
                    return StoreOutcome::NotStored;
                };
                if req.cas.is_some_and(|c| c != old.rd64(I_CAS)) {
                    return StoreOutcome::Exists;
                }
                if self.too_large(req.key.len(), old.nbytes() + req.value.len()) {
                    return StoreOutcome::NotStored;
                }
                let parts: [&[u8]; 2] = if req.mode == SetMode::Append {
                    [old.value(), req.value]
                } else {
                    [req.value, old.value()]
                };
                let Some((it, crc)) =
                    self.build(req.key, h, &parts, old.rd32(I_FLAGS), old.expiry(), now)
                else {
                    return StoreOutcome::NoMemory;
                };
                // `old` may have been evicted while allocating? No: eviction try-locks our
                // stripe, which we hold.
                StoreOutcome::Stored(self.publish(it, crc, head, Some((link, old))))
            }
            _ => {
                // memcached ignores a CAS on add
                let cas = if req.mode == SetMode::Add {
                    None
                } else {
                    req.cas
                };
                if self.too_large(req.key.len(), req.value.len()) {
                    // memcached unlinks the old item of a failed plain set (no stale data)
                    if req.mode == SetMode::Set && cas.is_none() {
                        let _g = self.stripe(b);
                        if let Some((link, old)) = self.lookup(head, h, req.key, now) {
                            self.remove(link, old);
                        }
                    }
                    return StoreOutcome::TooLarge;
                }
                let Some((it, crc)) =
                    self.build(req.key, h, &[req.value], req.flags, req.expiry, now)
                else {
                    return StoreOutcome::NoMemory;
                };
                let _g = self.stripe(b);
                let old = self.lookup(head, h, req.key, now);
                let verdict = match (req.mode, cas, old) {
                    (_, Some(_), None) => Some(StoreOutcome::NotFound),
                    (_, Some(c), Some((_, o))) if o.rd64(I_CAS) != c => Some(StoreOutcome::Exists),
                    (SetMode::Add, None, Some(_)) => Some(StoreOutcome::NotStored),
                    (SetMode::Replace, None, None) => Some(StoreOutcome::NotStored),
                    _ => None,
                };
                if let Some(v) = verdict {
                    self.discard(it);
                    return v;
                }
                StoreOutcome::Stored(self.publish(it, crc, head, old))
            }
        }
    }

    fn delete(&self, key: &[u8], cas: Option<u64>) -> DeleteOutcome {
        let now = unix_now();
        let h = hash_key(key);
        let (b, head) = self.bucket_of(h);
        let _g = self.stripe(b);
        let Some((link, it)) = self.lookup(head, h, key, now) else {
            return DeleteOutcome::NotFound;
        };
        if cas.is_some_and(|c| c != it.rd64(I_CAS)) {
            return DeleteOutcome::Exists;
        }
        self.remove(link, it);
        DeleteOutcome::Deleted
    }

    fn arith(&self, key: &[u8], req: &ArithReq) -> ArithOutcome {
        let now = unix_now();
        let h = hash_key(key);
        let (b, head) = self.bucket_of(h);
        let _g = self.stripe(b);
        let (value, flags, expiry, old, created, width) = match self.lookup(head, h, key, now) {
            None => match req.autovivify {
                None => return ArithOutcome::NotFound,
                Some((init, e)) => (init, 0, e, None, true, 0),
            },
            Some((link, it)) => {
                if req.cas.is_some_and(|c| c != it.rd64(I_CAS)) {
                    return ArithOutcome::Exists;
                }
                let Some(cur) = parse_u64(it.value()) else {
                    return ArithOutcome::NonNumeric;
                };
                let v = if req.incr {
                    cur.wrapping_add(req.delta)
                } else {
                    cur.saturating_sub(req.delta)
                };
                let e = req.touch.unwrap_or(it.expiry());
                (v, it.rd32(I_FLAGS), e, Some((link, it)), false, it.nbytes())
            }
        };
        // Like memcached: a shorter result keeps the value's length, padded with spaces.
        let text = format!("{value:<width$}");
        let Some((it, crc)) = self.build(key, h, &[text.as_bytes()], flags, expiry, now) else {
            return ArithOutcome::NoMemory;
        };
        let cas = self.publish(it, crc, head, old);
        ArithOutcome::Value {
            value,
            cas,
            created,
        }
    }

    fn touch(&self, key: &[u8], expiry: Expiry) -> bool {
        let now = unix_now();
        let h = hash_key(key);
        let (b, head) = self.bucket_of(h);
        let _g = self.stripe(b);
        match self.lookup(head, h, key, now) {
            Some((_, it)) => {
                self.set_expiry(it, expiry);
                true
            }
            None => false,
        }
    }

    fn flush_all(&self, delay_secs: u64) {
        let r = self.r();
        // SAFETY: root words, single 8-byte stores, then persisted.
        unsafe {
            if delay_secs == 0 {
                let c = self.cas.load(Ordering::Relaxed);
                AtomicU64::from_ptr(std::ptr::addr_of_mut!((*r).oldest_cas))
                    .store(c, Ordering::Relaxed);
                AtomicU64::from_ptr(std::ptr::addr_of_mut!((*r).oldest_live))
                    .store(0, Ordering::Relaxed);
            } else {
                AtomicU64::from_ptr(std::ptr::addr_of_mut!((*r).oldest_live))
                    .store(unix_now() + delay_secs, Ordering::Relaxed);
            }
        }
        self.persist_root();
    }

    fn counters(&self) -> &Counters {
        &self.counters
    }

    fn occupancy(&self) -> Occupancy {
        Occupancy {
            curr_items: self.items.load(Ordering::Relaxed),
            bytes: self.used.load(Ordering::Relaxed),
            limit_maxbytes: self.limit.load(Ordering::Relaxed),
            hash_buckets: self.mask + 1,
            hash_bytes: (self.mask + 1) * 8,
        }
    }

    fn stats_group(&self, group: &str) -> Vec<(String, String)> {
        let s = self.pool.stats();
        let o = self.occupancy();
        match group {
            "" => vec![
                ("pool_mapped".into(), s.mapped.to_string()),
                ("pool_in_use".into(), s.in_use.to_string()),
                ("pool_free".into(), s.free.to_string()),
                ("durable".into(), (self.durable as u8).to_string()),
            ],
            "items" => vec![
                ("items:1:number".into(), o.curr_items.to_string()),
                (
                    "items:1:evicted".into(),
                    self.counters.get(Ctr::Evictions).to_string(),
                ),
                (
                    "items:1:reclaimed".into(),
                    self.counters.get(Ctr::Reclaimed).to_string(),
                ),
            ],
            "slabs" => vec![
                ("1:used_chunks".into(), o.curr_items.to_string()),
                ("1:mem_requested".into(), o.bytes.to_string()),
                ("active_slabs".into(), "1".into()),
                ("total_malloced".into(), s.in_use.to_string()),
            ],
            _ => Vec::new(),
        }
    }

    fn item_size_max(&self) -> usize {
        self.item_max
    }

    fn maintenance(&self) {
        if self.closed.load(Ordering::Relaxed) {
            return;
        }
        let c = self.crawl.load(Ordering::Relaxed);
        self.crawl.store(self.tick(c, 20_000), Ordering::Relaxed);
    }

    fn shutdown(&self) {
        if self.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        // Quiesce: hold every stripe and the LRU so no operation is in flight.
        let _gs: Vec<_> = self.stripes.iter().map(lock).collect();
        let _l = lock(&self.lru);
        let r = self.r();
        if self.lazy {
            // SAFETY: the whole pool is mapped.
            unsafe {
                self.pool
                    .persister()
                    .persist(self.pool.base(), self.pool.size())
            };
        }
        // Every header (LRU links, access times) to the media, then the root.
        // SAFETY: quiesced (every lock held); the root is a live block.
        let mut cur = unsafe { (*r).lru_head };
        let mut steps = 0u64;
        while let Some(it) = self.item_at_off(cur) {
            self.flush(it.0, HDR);
            cur = it.rd64(I_LRU_NEXT);
            steps += 1;
            if steps > self.items.load(Ordering::Relaxed) {
                break;
            }
        }
        self.fence();
        // SAFETY: quiesced; the root block is ours.
        unsafe {
            (*r).counters = self.counters.snapshot();
            (*r).cas_next = self.cas.load(Ordering::Relaxed);
            (*r).items = self.items.load(Ordering::Relaxed);
            (*r).bytes = self.used.load(Ordering::Relaxed);
        }
        self.persist_root();
        // SAFETY: as above.
        unsafe { (*r).flags |= F_CLEAN };
        self.persist_root();
    }
}
