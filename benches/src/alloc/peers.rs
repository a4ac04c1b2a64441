//! The peers: glibc (the process allocator), jemalloc, mimalloc, memkind's PMEM kind,
//! libpmemobj, and pmem-alloc's volatile heap, pool API and pool engine; and the *floor*, a
//! reference point rather than an allocator ([`Floor`]).
//!
//! Adding a peer: implement [`AllocPeer`] (three short methods) and add a line to [`open`] and
//! [`ALL`].

use super::dl::Lib;
use super::{AllocPeer, PeerKind};
use pmem_alloc::pool::{Pool, PoolOptions};
use pmem_alloc::pptr::PPtr;
use pmem_alloc::volatile::VolatileHeap;
use std::alloc::Layout;
use std::ffi::{c_char, c_int, c_void, CString};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The peers of a default run, in table order. [`open`] also knows the diagnostic peer
/// `pmem-alloc volatile nopunch` (the volatile heap with hole punching off).
pub const ALL: &[&str] = &[
    "glibc",
    "jemalloc",
    "mimalloc",
    "memkind-pmem",
    "pmem-alloc volatile",
    "pmemobj",
    "pmem-alloc pool",
    "pmem-alloc engine",
    "floor",
];

/// What peers are opened with.
#[derive(Clone, Debug)]
pub struct PeerConfig {
    /// Directory for heap and pool files (a tmpfs such as `/dev/shm` on a machine without
    /// persistent memory).
    pub dir: PathBuf,
    /// Size of persistent pools and of the volatile heap's initial file.
    pub pool_size: u64,
}

/// Opens the peer called `name` (one of [`ALL`]).
pub fn open(name: &str, cfg: &PeerConfig) -> Result<Arc<dyn AllocPeer>, String> {
    Ok(match name {
        "glibc" => Arc::new(Glibc),
        "jemalloc" => Arc::new(Jemalloc::load()?),
        "mimalloc" => Arc::new(Mimalloc::load()?),
        "memkind-pmem" => Arc::new(MemkindPmem::create(&cfg.dir)?),
        "pmemobj" => Arc::new(Pmemobj::create(
            &scratch(&cfg.dir, "pmemobj"),
            cfg.pool_size,
        )?),
        "pmem-alloc volatile" => Arc::new(OursVolatile::create(&cfg.dir, cfg.pool_size, true)?),
        // diagnostic peer (not in ALL): the same heap without hole punching
        "pmem-alloc volatile nopunch" => {
            Arc::new(OursVolatile::create(&cfg.dir, cfg.pool_size, false)?)
        }
        "pmem-alloc pool" => Arc::new(OursPool::create(
            &scratch(&cfg.dir, "ours"),
            cfg.pool_size,
            false,
        )?),
        "pmem-alloc engine" => Arc::new(OursPool::create(
            &scratch(&cfg.dir, "engine"),
            cfg.pool_size,
            true,
        )?),
        "floor" => Arc::new(Floor),
        _ => return Err(format!("unknown peer {name:?} (known: {})", ALL.join(", "))),
    })
}

/// A per-process scratch path in `dir`.
pub fn scratch(dir: &Path, tag: &str) -> PathBuf {
    dir.join(format!("alloc-compare-{}-{tag}.pool", std::process::id()))
}

// ---------------------------------------------------------------------------------- glibc

/// glibc's `malloc`/`free`: the process allocator.
#[derive(Debug)]
pub struct Glibc;

impl AllocPeer for Glibc {
    fn name(&self) -> &str {
        "glibc"
    }
    fn kind(&self) -> PeerKind {
        PeerKind::Dram
    }
    #[inline]
    fn alloc(&self, size: usize) -> *mut u8 {
        // SAFETY: plain malloc.
        unsafe { libc::malloc(size).cast() }
    }
    #[inline]
    unsafe fn free(&self, p: *mut u8, _size: usize) {
        // SAFETY: `p` came from malloc (caller's contract).
        unsafe { libc::free(p.cast()) }
    }
}

// ---------------------------------------------------------------------------------- jemalloc

type MallocxFn = unsafe extern "C" fn(usize, c_int) -> *mut c_void;
type SdallocxFn = unsafe extern "C" fn(*mut c_void, usize, c_int);

/// jemalloc through `mallocx`/`sdallocx` (sized free), loaded from `libjemalloc.so.2`.
#[derive(Debug)]
pub struct Jemalloc {
    mallocx: MallocxFn,
    sdallocx: SdallocxFn,
    _lib: Lib,
}

impl Jemalloc {
    /// Loads the library.
    pub fn load() -> Result<Self, String> {
        let lib = Lib::open("libjemalloc.so.2")?;
        // SAFETY: the signatures are jemalloc's documented ones.
        unsafe {
            Ok(Jemalloc {
                mallocx: lib.func("mallocx")?,
                sdallocx: lib.func("sdallocx")?,
                _lib: lib,
            })
        }
    }
}

impl AllocPeer for Jemalloc {
    fn name(&self) -> &str {
        "jemalloc"
    }
    fn kind(&self) -> PeerKind {
        PeerKind::Dram
    }
    #[inline]
    fn alloc(&self, size: usize) -> *mut u8 {
        // SAFETY: size > 0 in every workload; flags 0 = default alignment and arena.
        unsafe { (self.mallocx)(size, 0).cast() }
    }
    #[inline]
    unsafe fn free(&self, p: *mut u8, size: usize) {
        // SAFETY: `p` came from mallocx with `size` (caller's contract).
        unsafe { (self.sdallocx)(p.cast(), size, 0) }
    }
}

// ---------------------------------------------------------------------------------- mimalloc

type MiMallocFn = unsafe extern "C" fn(usize) -> *mut c_void;
type MiFreeFn = unsafe extern "C" fn(*mut c_void);

/// mimalloc through `mi_malloc`/`mi_free`, loaded from `libmimalloc.so.2`.
#[derive(Debug)]
pub struct Mimalloc {
    malloc: MiMallocFn,
    free: MiFreeFn,
    _lib: Lib,
}

impl Mimalloc {
    /// Loads the library.
    pub fn load() -> Result<Self, String> {
        let lib = Lib::open("libmimalloc.so.2")?;
        // SAFETY: the signatures are mimalloc's documented ones.
        unsafe {
            Ok(Mimalloc {
                malloc: lib.func("mi_malloc")?,
                free: lib.func("mi_free")?,
                _lib: lib,
            })
        }
    }
}

impl AllocPeer for Mimalloc {
    fn name(&self) -> &str {
        "mimalloc"
    }
    fn kind(&self) -> PeerKind {
        PeerKind::Dram
    }
    #[inline]
    fn alloc(&self, size: usize) -> *mut u8 {
        // SAFETY: plain allocation.
        unsafe { (self.malloc)(size).cast() }
    }
    #[inline]
    unsafe fn free(&self, p: *mut u8, _size: usize) {
        // SAFETY: `p` came from mi_malloc (caller's contract).
        unsafe { (self.free)(p.cast()) }
    }
}

// ---------------------------------------------------------------------------------- memkind

type MkCreatePmemFn = unsafe extern "C" fn(*const c_char, usize, *mut *mut c_void) -> c_int;
type MkMallocFn = unsafe extern "C" fn(*mut c_void, usize) -> *mut c_void;
type MkFreeFn = unsafe extern "C" fn(*mut c_void, *mut c_void);
type MkDestroyFn = unsafe extern "C" fn(*mut c_void) -> c_int;

/// memkind's PMEM kind (`memkind_create_pmem`: a file-backed jemalloc arena set), loaded from
/// `libmemkind.so.0`.
#[derive(Debug)]
pub struct MemkindPmem {
    kind: *mut c_void,
    malloc: MkMallocFn,
    free: MkFreeFn,
    destroy: MkDestroyFn,
    _lib: Lib,
}

// SAFETY: a memkind kind is a thread-safe handle.
unsafe impl Send for MemkindPmem {}
// SAFETY: as above.
unsafe impl Sync for MemkindPmem {}

impl MemkindPmem {
    /// Creates a PMEM kind with its (unlinked) file in `dir`, unlimited size.
    pub fn create(dir: &Path) -> Result<Self, String> {
        let lib = Lib::open("libmemkind.so.0")?;
        let cdir = CString::new(dir.as_os_str().as_encoded_bytes()).map_err(|e| e.to_string())?;
        // SAFETY: memkind's documented signatures.
        let (create, malloc, free, destroy) = unsafe {
            (
                lib.func::<MkCreatePmemFn>("memkind_create_pmem")?,
                lib.func::<MkMallocFn>("memkind_malloc")?,
                lib.func::<MkFreeFn>("memkind_free")?,
                lib.func::<MkDestroyFn>("memkind_destroy_kind")?,
            )
        };
        let mut kind = std::ptr::null_mut();
        // SAFETY: valid directory string and out pointer; max_size 0 = limited by the file
        // system only.
        let rc = unsafe { create(cdir.as_ptr(), 0, &mut kind) };
        if rc != 0 || kind.is_null() {
            return Err(format!(
                "memkind_create_pmem({}) failed: {rc}",
                dir.display()
            ));
        }
        Ok(MemkindPmem {
            kind,
            malloc,
            free,
            destroy,
            _lib: lib,
        })
    }
}

impl Drop for MemkindPmem {
    fn drop(&mut self) {
        // SAFETY: the kind is ours and no block of it is used any more.
        unsafe { (self.destroy)(self.kind) };
    }
}

impl AllocPeer for MemkindPmem {
    fn name(&self) -> &str {
        "memkind-pmem"
    }
    fn kind(&self) -> PeerKind {
        PeerKind::VolatilePmem
    }
    #[inline]
    fn alloc(&self, size: usize) -> *mut u8 {
        // SAFETY: live kind.
        unsafe { (self.malloc)(self.kind, size).cast() }
    }
    #[inline]
    unsafe fn free(&self, p: *mut u8, _size: usize) {
        // SAFETY: `p` came from this kind (caller's contract).
        unsafe { (self.free)(self.kind, p.cast()) }
    }
}

// ---------------------------------------------------------------------------------- libpmemobj

/// PMDK's object handle.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PmemOid {
    /// Low 64 bits of the pool UUID.
    pub pool_uuid_lo: u64,
    /// Offset from the pool base.
    pub off: u64,
}

/// libpmemobj's entry points used here, loaded from `libpmemobj.so.1`.
#[derive(Debug)]
pub struct PmemobjApi {
    /// `pmemobj_create(path, layout, poolsize, mode)`.
    pub create: unsafe extern "C" fn(*const c_char, *const c_char, usize, u32) -> *mut c_void,
    /// `pmemobj_open(path, layout)`.
    pub open: unsafe extern "C" fn(*const c_char, *const c_char) -> *mut c_void,
    /// `pmemobj_close(pop)`.
    pub close: unsafe extern "C" fn(*mut c_void),
    /// `pmemobj_alloc(pop, oidp, size, type_num, constructor, arg)`.
    pub alloc: unsafe extern "C" fn(
        *mut c_void,
        *mut PmemOid,
        usize,
        u64,
        Option<unsafe extern "C" fn(*mut c_void, *mut c_void, *mut c_void) -> c_int>,
        *mut c_void,
    ) -> c_int,
    /// `pmemobj_free(oidp)`.
    pub free: unsafe extern "C" fn(*mut PmemOid),
    /// `pmemobj_root(pop, size)`.
    pub root: unsafe extern "C" fn(*mut c_void, usize) -> PmemOid,
    /// `pmemobj_persist(pop, addr, len)`.
    pub persist: unsafe extern "C" fn(*mut c_void, *const c_void, usize),
    /// `pmemobj_errormsg()`.
    pub errormsg: unsafe extern "C" fn() -> *const c_char,
    _lib: Lib,
}

impl PmemobjApi {
    /// Loads the library (once per process). Sets `PMEM_IS_PMEM_FORCE=1` first when unset, so
    /// that a pool on a tmpfs is flushed with CPU instructions rather than `msync`.
    pub fn get() -> Result<&'static PmemobjApi, String> {
        static API: std::sync::OnceLock<Result<PmemobjApi, String>> = std::sync::OnceLock::new();
        API.get_or_init(|| {
            if std::env::var_os("PMEM_IS_PMEM_FORCE").is_none() {
                std::env::set_var("PMEM_IS_PMEM_FORCE", "1");
            }
            let lib = Lib::open("libpmemobj.so.1")?;
            // SAFETY: libpmemobj's documented signatures.
            unsafe {
                Ok(PmemobjApi {
                    create: lib.func("pmemobj_create")?,
                    open: lib.func("pmemobj_open")?,
                    close: lib.func("pmemobj_close")?,
                    alloc: lib.func("pmemobj_alloc")?,
                    free: lib.func("pmemobj_free")?,
                    root: lib.func("pmemobj_root")?,
                    persist: lib.func("pmemobj_persist")?,
                    errormsg: lib.func("pmemobj_errormsg")?,
                    _lib: lib,
                })
            }
        })
        .as_ref()
        .map_err(Clone::clone)
    }

    /// The last error message of this thread.
    pub fn error(&self) -> String {
        // SAFETY: returns a thread-local NUL-terminated string (or null).
        unsafe {
            let e = (self.errormsg)();
            if e.is_null() {
                String::new()
            } else {
                std::ffi::CStr::from_ptr(e).to_string_lossy().into_owned()
            }
        }
    }
}

/// A C string of a path.
pub fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_encoded_bytes()).expect("path without NUL")
}

/// A libpmemobj pool: `pmemobj_alloc`/`pmemobj_free` (atomic, persistent allocations).
#[derive(Debug)]
pub struct Pmemobj {
    api: &'static PmemobjApi,
    pop: *mut c_void,
    uuid_lo: u64,
    path: PathBuf,
}

// SAFETY: a pmemobj pool handle is thread-safe for allocation and free.
unsafe impl Send for Pmemobj {}
// SAFETY: as above.
unsafe impl Sync for Pmemobj {}

impl Pmemobj {
    /// Creates a pool file of `size` bytes at `path` (removed on drop).
    pub fn create(path: &Path, size: u64) -> Result<Self, String> {
        let api = PmemobjApi::get()?;
        let _ = std::fs::remove_file(path);
        let c = cpath(path);
        // SAFETY: valid strings; the file does not exist.
        let pop = unsafe { (api.create)(c.as_ptr(), c"bench".as_ptr(), size as usize, 0o600) };
        if pop.is_null() {
            return Err(format!("pmemobj_create: {}", api.error()));
        }
        let mut oid = PmemOid::default();
        // SAFETY: live pool, volatile out parameter.
        if unsafe { (api.alloc)(pop, &mut oid, 64, 0, None, std::ptr::null_mut()) } != 0 {
            return Err(format!("pmemobj_alloc: {}", api.error()));
        }
        let uuid_lo = oid.pool_uuid_lo;
        // SAFETY: the block was just allocated.
        unsafe { (api.free)(&mut oid) };
        Ok(Pmemobj {
            api,
            pop,
            uuid_lo,
            path: path.into(),
        })
    }
}

impl Drop for Pmemobj {
    fn drop(&mut self) {
        // SAFETY: the pool is open and no longer used.
        unsafe { (self.api.close)(self.pop) };
        let _ = std::fs::remove_file(&self.path);
    }
}

impl AllocPeer for Pmemobj {
    fn name(&self) -> &str {
        "pmemobj"
    }
    fn kind(&self) -> PeerKind {
        PeerKind::Persistent
    }
    #[inline]
    fn alloc(&self, size: usize) -> *mut u8 {
        let mut oid = PmemOid::default();
        // SAFETY: live pool; `oid` is a volatile out parameter.
        let rc =
            unsafe { (self.api.alloc)(self.pop, &mut oid, size, 0, None, std::ptr::null_mut()) };
        if rc != 0 {
            return std::ptr::null_mut();
        }
        // what pmemobj_direct computes for an object of the open pool
        self.pop.cast::<u8>().wrapping_add(oid.off as usize)
    }
    #[inline]
    unsafe fn free(&self, p: *mut u8, _size: usize) {
        let mut oid = PmemOid {
            pool_uuid_lo: self.uuid_lo,
            off: (p as usize - self.pop as usize) as u64,
        };
        // SAFETY: `oid` names a live object of this pool (caller's contract).
        unsafe { (self.api.free)(&mut oid) }
    }
}

// ---------------------------------------------------------------------------------- pmem-alloc

/// pmem-alloc's volatile heap on an unlinked file (the DRAM-replacement heap).
#[derive(Debug)]
pub struct OursVolatile {
    heap: VolatileHeap,
    punch: bool,
}

impl OursVolatile {
    /// A heap with its file in `dir`, `size` bytes initially (it grows on demand); `punch`
    /// false turns hole punching of free extents off (the default threshold otherwise).
    pub fn create(dir: &Path, size: u64, punch: bool) -> Result<Self, String> {
        let mut b = VolatileHeap::builder().dir(dir).size(size);
        if !punch {
            b = b.punch_threshold(0);
        }
        let heap = b.build().map_err(|e| e.to_string())?;
        Ok(OursVolatile { heap, punch })
    }
}

impl AllocPeer for OursVolatile {
    fn name(&self) -> &str {
        if self.punch {
            "pmem-alloc volatile"
        } else {
            "pmem-alloc volatile nopunch"
        }
    }
    fn kind(&self) -> PeerKind {
        PeerKind::VolatilePmem
    }
    #[inline]
    fn alloc(&self, size: usize) -> *mut u8 {
        // SAFETY: size > 0 in every workload, alignment 8 is a power of two.
        self.heap
            .alloc(unsafe { Layout::from_size_align_unchecked(size, 8) })
    }
    #[inline]
    unsafe fn free(&self, p: *mut u8, size: usize) {
        // SAFETY: `p` came from `alloc` with this layout (caller's contract).
        unsafe {
            self.heap
                .dealloc(p, Layout::from_size_align_unchecked(size, 8))
        }
    }
}

/// pmem-alloc's persistent pool: the `Pool::alloc`/`Pool::free` API with `PPtr`s, or (engine)
/// `pool.heap().alloc`/`free` with raw pointers.
#[derive(Debug)]
pub struct OursPool {
    pool: Option<Pool>,
    base: *mut u8,
    engine: bool,
    path: PathBuf,
}

// SAFETY: the pool is Send + Sync; `base` is its mapping's address.
unsafe impl Send for OursPool {}
// SAFETY: as above.
unsafe impl Sync for OursPool {}

impl OursPool {
    /// Creates a pool file of `size` bytes at `path` (removed on drop).
    pub fn create(path: &Path, size: u64, engine: bool) -> Result<Self, String> {
        let _ = std::fs::remove_file(path);
        let pool = Pool::create(path, size, &PoolOptions::default()).map_err(|e| e.to_string())?;
        Ok(OursPool {
            base: pool.base(),
            pool: Some(pool),
            engine,
            path: path.into(),
        })
    }

    #[inline]
    fn pool(&self) -> &Pool {
        self.pool.as_ref().expect("open pool")
    }
}

impl Drop for OursPool {
    fn drop(&mut self) {
        if let Some(p) = self.pool.take() {
            let _ = p.close();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

impl AllocPeer for OursPool {
    fn name(&self) -> &str {
        if self.engine {
            "pmem-alloc engine"
        } else {
            "pmem-alloc pool"
        }
    }
    fn kind(&self) -> PeerKind {
        PeerKind::Persistent
    }
    #[inline]
    fn alloc(&self, size: usize) -> *mut u8 {
        if self.engine {
            return self.pool().heap().alloc(size, 16);
        }
        match self.pool().alloc(size) {
            Ok(pp) => self.base.wrapping_add(pp.offset() as usize),
            Err(_) => std::ptr::null_mut(),
        }
    }
    #[inline]
    unsafe fn free(&self, p: *mut u8, _size: usize) {
        if self.engine {
            // SAFETY: `p` is a live block of this pool (caller's contract).
            return unsafe { self.pool().heap().free(p) };
        }
        let pp = PPtr::<u8>::from_offset((p as usize - self.base as usize) as u64);
        // SAFETY: as above.
        unsafe { self.pool().free(pp) }
    }
}

// ---------------------------------------------------------------------------------- floor

/// The floor: the least work an allocator can do under these workloads, to put the others'
/// numbers in proportion. Not a usable allocator: one LIFO list per thread and 16-byte size
/// class threaded through the free blocks, carved from chunks of the process allocator that
/// are never returned; no metadata, no limits, no cross-thread bookkeeping (a block freed by
/// another thread joins that thread's list). What is left of its time is the workload's own
/// work (the loop, its random numbers and bookkeeping arrays, the write to every block) plus
/// a thread-local pop or push. An allocator `k` times slower than another one can be at most
/// `floor time / its time` times as fast as that one here.
#[derive(Debug)]
pub struct Floor;

/// Largest size the floor serves (the workloads' largest is 4 KiB; larger requests get null).
const FLOOR_MAX: usize = 4096;
const FLOOR_CLASSES: usize = FLOOR_MAX / 16 + 1;
/// Bytes carved from the process allocator at a time.
const FLOOR_CHUNK: usize = 1 << 20;

struct FloorCache {
    heads: [*mut u8; FLOOR_CLASSES],
    bump: usize,
    end: usize,
}

thread_local! {
    static FLOOR_CACHE: std::cell::UnsafeCell<FloorCache> = const {
        std::cell::UnsafeCell::new(FloorCache {
            heads: [std::ptr::null_mut(); FLOOR_CLASSES],
            bump: 0,
            end: 0,
        })
    };
}

#[cold]
fn floor_carve(fc: &mut FloorCache, c: usize) -> *mut u8 {
    let size = c * 16;
    if fc.end - fc.bump < size {
        // SAFETY: a non-zero size and a valid alignment.
        let chunk =
            unsafe { std::alloc::alloc(Layout::from_size_align_unchecked(FLOOR_CHUNK, 64)) };
        if chunk.is_null() {
            return chunk;
        }
        fc.bump = chunk as usize;
        fc.end = fc.bump + FLOOR_CHUNK;
    }
    let p = fc.bump as *mut u8;
    fc.bump += size;
    p
}

impl AllocPeer for Floor {
    fn name(&self) -> &str {
        "floor"
    }
    fn kind(&self) -> PeerKind {
        PeerKind::Dram
    }
    #[inline]
    fn alloc(&self, size: usize) -> *mut u8 {
        if size > FLOOR_MAX {
            return std::ptr::null_mut();
        }
        let c = size.max(16).div_ceil(16);
        FLOOR_CACHE.with(|fc| {
            // SAFETY: this thread's cache; nothing else holds a reference to it meanwhile.
            let fc = unsafe { &mut *fc.get() };
            let h = fc.heads[c];
            if h.is_null() {
                return floor_carve(fc, c);
            }
            // SAFETY: `h` is a free block of this list; its first word links the next one.
            fc.heads[c] = unsafe { h.cast::<*mut u8>().read() };
            h
        })
    }
    #[inline]
    unsafe fn free(&self, p: *mut u8, size: usize) {
        let c = size.max(16).div_ceil(16);
        FLOOR_CACHE.with(|fc| {
            // SAFETY: as in `alloc`; `p` is a block of class `c` that is no longer used (the
            // caller's contract), so its first word may hold the link.
            unsafe {
                let fc = &mut *fc.get();
                p.cast::<*mut u8>().write(fc.heads[c]);
                fc.heads[c] = p;
            }
        })
    }
}
