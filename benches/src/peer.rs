//! Peers: the implementations a benchmark compares, behind one small trait per kind of work.
//!
//! A *persist peer* ([`PersistPeer`]) maps a scratch file with its own mapping call and can make
//! ranges of it durable: `persist`, `memcpy_persist`, `memset_persist`. This crate has two:
//! [`OursPeer`] (pmem-alloc's [`Hardware`] policy on a [`Mapping`]) and, with the `libpmem`
//! feature, `LibpmemPeer` (PMDK's libpmem on a `pmem_map_file` mapping). All peers of a run map
//! the same file ([`PeerConfig::path`]). [`persist_peers`] is the
//! registry the `compare` binary walks; adding a peer is one impl plus one [`PeerSpec`] line.
//!
//! # Adding other kinds of peers
//! Allocator peers (libpmemobj, memkind, jemalloc, mimalloc, glibc) fit beside this one as an
//! `AllocPeer` trait (`name`, `alloc(size) -> *mut u8`, `free(ptr, size)`, and a provided
//! `run_batch` like [`PersistPeer::run_batch`]) with its own `alloc_peers()` registry of
//! `AllocPeerSpec { name, open, env }`. The interleaving driver,
//! [`crate::measure::interleave`], only sees closures, so it serves both kinds unchanged, and
//! the result file format ([`crate::results`]) keys cases by an operation name and a size.
//!
//! # Why `run_batch` is a trait method
//! The registry hands out `Box<dyn PersistPeer>`. If the measurement loop called
//! `persist` through the vtable, every peer would pay a virtual call per operation. Instead,
//! the loop itself is the provided method [`PersistPeer::run_batch`]: its body is compiled
//! once per implementing type, so inside it `self.persist(..)` is a direct (inlinable) call,
//! and only the batch as a whole is dispatched dynamically.

use crate::measure::{self, Workload};
use crate::timer::Timer;
use pmem_alloc::flush::FlushMethod;
use pmem_alloc::map::{MapKind, MapOptions, Mapping};
use pmem_alloc::persist::{Hardware, Persist};
use std::path::{Path, PathBuf};

/// What every persist peer is opened with.
#[derive(Clone, Debug)]
pub struct PeerConfig {
    /// The scratch file every peer maps (all of it): the peers then work on the very same
    /// physical pages, so page placement cannot favour one of them.
    pub path: PathBuf,
    /// Its size.
    pub region_len: usize,
    /// The CPU flush instruction every peer must use.
    pub flush: FlushMethod,
}

/// A scratch file of a given size, removed on drop.
#[derive(Debug)]
pub struct ScratchFile {
    path: PathBuf,
    len: usize,
}

impl ScratchFile {
    /// Creates `<dir>/pmem-benches-<pid>-<tag>.pool` (must not exist) with `len` bytes.
    pub fn create(dir: &Path, tag: &str, len: usize) -> Result<ScratchFile, String> {
        let path = dir.join(format!("pmem-benches-{}-{tag}.pool", std::process::id()));
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let file = ScratchFile { path, len };
        f.set_len(len as u64)
            .map_err(|e| format!("{}: {e}", file.path.display()))?;
        Ok(file)
    }

    /// The path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A configuration for peers mapping this file.
    pub fn config(&self, flush: FlushMethod) -> PeerConfig {
        PeerConfig {
            path: self.path.clone(),
            region_len: self.len,
            flush,
        }
    }
}

impl Drop for ScratchFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A library that can make ranges of its mapped region durable.
pub trait PersistPeer: std::fmt::Debug {
    /// Short name used in tables and result files (`pmem-alloc`, `libpmem`).
    fn name(&self) -> &'static str;

    /// One line saying how the peer is configured (flush instruction, mapping, version).
    fn detail(&self) -> String;

    /// Base of the mapped region.
    fn base(&self) -> *mut u8;

    /// Length of the mapped region.
    fn region_len(&self) -> usize;

    /// Flush + drain.
    ///
    /// # Safety
    /// `addr..addr+len` must lie in this peer's region.
    unsafe fn persist(&self, addr: *const u8, len: usize);

    /// Copy and make durable.
    ///
    /// # Safety
    /// `dst..dst+len` in this peer's region, `src` valid for `len` bytes of reads, no overlap.
    unsafe fn memcpy_persist(&self, dst: *mut u8, src: *const u8, len: usize);

    /// Fill and make durable.
    ///
    /// # Safety
    /// `dst..dst+len` in this peer's region.
    unsafe fn memset_persist(&self, dst: *mut u8, byte: u8, len: usize);

    /// Runs `n` operations of `w` back to back, starting at rotation slot `cursor`, and
    /// returns the net ticks of the batch. Do not override: see the module documentation.
    fn run_batch(&self, w: &Workload, cursor: usize, n: usize, timer: &Timer) -> u64 {
        measure::run_batch(self, w, cursor, n, timer)
    }
}

/// Environment a peer needs *at process start* for a flush method: `(name, Some(value))` to
/// set, `(name, None)` to remove.
pub type EnvVars = Vec<(&'static str, Option<&'static str>)>;

/// A registry entry.
#[derive(Clone, Copy, Debug)]
pub struct PeerSpec {
    /// The peer's name (same as [`PersistPeer::name`]).
    pub name: &'static str,
    /// Opens the peer: maps its region.
    pub open: fn(&PeerConfig) -> Result<Box<dyn PersistPeer>, String>,
    /// Environment the process must be started with.
    pub env: fn(FlushMethod) -> EnvVars,
}

/// Every persist peer compiled in; pmem-alloc first (ratios are taken against it).
pub fn persist_peers() -> Vec<PeerSpec> {
    #[allow(unused_mut)]
    let mut v = vec![PeerSpec {
        name: OursPeer::NAME,
        open: |c| OursPeer::open(c).map(|p| Box::new(p) as Box<dyn PersistPeer>),
        env: OursPeer::env,
    }];
    #[cfg(feature = "libpmem")]
    v.push(PeerSpec {
        name: LibpmemPeer::NAME,
        open: |c| LibpmemPeer::open(c).map(|p| Box::new(p) as Box<dyn PersistPeer>),
        env: LibpmemPeer::env,
    });
    v
}

/// pmem-alloc: a [`Mapping`] of a scratch file and a [`Hardware`] policy with the requested
/// CPU flush method.
#[derive(Debug)]
pub struct OursPeer {
    map: Mapping,
    hw: Hardware,
}

impl OursPeer {
    /// Registry name.
    pub const NAME: &'static str = "pmem-alloc";

    /// Maps the scratch file `cfg.path` with [`Mapping::open`]. On a page-cache mapping
    /// (tmpfs) the mapping's own policy is msync unless `PMEM_ALLOC_FORCE_PMEM=1` and
    /// `PMEM_ALLOC_FLUSH` select the CPU method (what [`OursPeer::env`] asks for); the policy
    /// is then checked to be exactly `Hardware::new(cfg.flush)`.
    pub fn open(cfg: &PeerConfig) -> Result<OursPeer, String> {
        let map = Mapping::open(&cfg.path, &MapOptions::new()).map_err(|e| e.to_string())?;
        Self::with_mapping(map, cfg.flush)
    }

    /// Wraps an existing mapping (criterion benches use anonymous memory).
    pub fn with_mapping(map: Mapping, flush: FlushMethod) -> Result<OursPeer, String> {
        let hw = Hardware::new(flush);
        if hw.method() != flush {
            return Err(format!(
                "this CPU cannot run {flush} (would fall back to {})",
                hw.method()
            ));
        }
        if map.kind() != MapKind::Anonymous && map.persister() != hw {
            return Err(format!(
                "the mapping's own policy is {:?}, not {hw:?}: start the process with \
                 PMEM_ALLOC_FORCE_PMEM=1 PMEM_ALLOC_FLUSH={flush}",
                map.persister()
            ));
        }
        Ok(OursPeer { map, hw })
    }

    /// `PMEM_ALLOC_FORCE_PMEM=1` and `PMEM_ALLOC_FLUSH=<method>`.
    pub fn env(flush: FlushMethod) -> EnvVars {
        let m: &'static str = match flush {
            FlushMethod::Clwb => "clwb",
            FlushMethod::ClflushOpt => "clflushopt",
            FlushMethod::Clflush => "clflush",
            FlushMethod::FenceOnly => "fence",
            FlushMethod::Msync => "msync",
            FlushMethod::None => "none",
        };
        vec![
            (pmem_alloc::map::FORCE_PMEM_ENV, Some("1")),
            (pmem_alloc::flush::FLUSH_ENV, Some(m)),
        ]
    }

    /// The policy in use.
    pub fn hardware(&self) -> Hardware {
        self.hw
    }
}

impl PersistPeer for OursPeer {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn detail(&self) -> String {
        format!(
            "pmem-alloc {} Hardware({}) on a Mapping (Mapping::open) of kind {:?}, CPU flush \
             forced, movnt threshold {} B",
            env!("CARGO_PKG_VERSION"),
            self.hw.method(),
            self.map.kind(),
            pmem_alloc::persist::movnt_threshold()
        )
    }

    fn base(&self) -> *mut u8 {
        self.map.as_ptr()
    }

    fn region_len(&self) -> usize {
        self.map.len()
    }

    #[inline]
    unsafe fn persist(&self, addr: *const u8, len: usize) {
        // SAFETY: forwarded from the caller (range inside our mapping).
        unsafe { self.hw.persist(addr, len) }
    }

    #[inline]
    unsafe fn memcpy_persist(&self, dst: *mut u8, src: *const u8, len: usize) {
        // SAFETY: forwarded from the caller.
        unsafe { self.hw.memcpy_persist(dst, src, len) }
    }

    #[inline]
    unsafe fn memset_persist(&self, dst: *mut u8, byte: u8, len: usize) {
        // SAFETY: forwarded from the caller.
        unsafe { self.hw.memset_persist(dst, byte, len) }
    }
}

/// PMDK's libpmem on a `pmem_map_file` mapping.
#[cfg(feature = "libpmem")]
#[derive(Debug)]
pub struct LibpmemPeer {
    file: crate::ffi::PmemFile,
    flush: FlushMethod,
}

#[cfg(feature = "libpmem")]
impl LibpmemPeer {
    /// Registry name.
    pub const NAME: &'static str = "libpmem";

    /// The libpmem version the crate was built against (from pkg-config, if it answered).
    pub const VERSION: &'static str = env!("PMEM_BENCHES_LIBPMEM_VERSION");

    /// Maps a new scratch file with `pmem_map_file` and checks that libpmem treats it as
    /// persistent memory (`PMEM_IS_PMEM_FORCE=1`) and was started with the environment that
    /// selects `cfg.flush` (see [`LibpmemPeer::env`]).
    pub fn open(cfg: &PeerConfig) -> Result<LibpmemPeer, String> {
        for (k, v) in Self::env(cfg.flush) {
            let have = std::env::var(k).ok();
            if have.as_deref() != v {
                return Err(format!(
                    "libpmem needs {k}={} at process start for {} (found {have:?})",
                    v.unwrap_or("<unset>"),
                    cfg.flush
                ));
            }
        }
        Self::map(cfg, cfg.flush)
    }

    /// Like [`LibpmemPeer::open`], but takes whatever instruction libpmem chose from the
    /// environment the process was started with (for criterion, which cannot re-execute
    /// itself); `PMEM_IS_PMEM_FORCE=1` must still be set before the first libpmem call.
    /// `cfg.flush` is ignored.
    pub fn open_as_started(cfg: &PeerConfig) -> Result<Self, String> {
        Self::map(cfg, Self::started_flush())
    }

    /// The instruction libpmem picks given this process's environment and CPU (the rules of
    /// libpmem(7)).
    pub fn started_flush() -> FlushMethod {
        let f = pmem_alloc::flush::CpuFeatures::get();
        let set = |k: &str| std::env::var(k).map(|v| v == "1").unwrap_or(false);
        if f.clwb && !set("PMEM_NO_CLWB") {
            FlushMethod::Clwb
        } else if f.clflushopt && !set("PMEM_NO_CLFLUSHOPT") {
            FlushMethod::ClflushOpt
        } else {
            FlushMethod::Clflush
        }
    }

    fn map(cfg: &PeerConfig, flush: FlushMethod) -> Result<LibpmemPeer, String> {
        crate::ffi::check_version()?;
        let file = crate::ffi::PmemFile::open(&cfg.path)?;
        // SAFETY: the range is the mapping just created.
        let forced = unsafe { crate::ffi::is_pmem(file.as_ptr(), file.len()) };
        if !forced || !file.is_pmem() {
            return Err(
                "libpmem does not treat the mapping as pmem: set PMEM_IS_PMEM_FORCE=1 \
                        (without it, libpmem callers would msync instead)"
                    .into(),
            );
        }
        Ok(LibpmemPeer { file, flush })
    }

    /// The flush instruction this peer was opened for.
    pub fn flush_method(&self) -> FlushMethod {
        self.flush
    }

    /// libpmem picks its flush instruction in its constructor: clwb if present unless
    /// `PMEM_NO_CLWB=1`, then clflushopt unless `PMEM_NO_CLFLUSHOPT=1`, then clflush (see
    /// libpmem(7)). `PMEM_IS_PMEM_FORCE=1` makes `pmem_is_pmem` true on tmpfs.
    pub fn env(flush: FlushMethod) -> EnvVars {
        let (no_clwb, no_opt) = match flush {
            FlushMethod::Clwb => (None, None),
            FlushMethod::ClflushOpt => (Some("1"), None),
            _ => (Some("1"), Some("1")),
        };
        vec![
            ("PMEM_IS_PMEM_FORCE", Some("1")),
            ("PMEM_NO_CLWB", no_clwb),
            ("PMEM_NO_CLFLUSHOPT", no_opt),
            ("PMEM_NO_FLUSH", None),
            ("PMEM_NO_MOVNT", None),
            ("PMEM_MOVNT_THRESHOLD", None),
        ]
    }
}

#[cfg(feature = "libpmem")]
impl PersistPeer for LibpmemPeer {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn detail(&self) -> String {
        let avx = |k: &str| std::env::var(k).unwrap_or_else(|_| "unset".into());
        format!(
            "libpmem {} (pmem_map_file of the same file, PMEM_IS_PMEM_FORCE=1), flush {} selected with \
             PMEM_NO_CLWB={} PMEM_NO_CLFLUSHOPT={}, PMEM_AVX={} PMEM_AVX512F={}",
            Self::VERSION,
            self.flush,
            std::env::var("PMEM_NO_CLWB").unwrap_or_else(|_| "unset".into()),
            std::env::var("PMEM_NO_CLFLUSHOPT").unwrap_or_else(|_| "unset".into()),
            avx("PMEM_AVX"),
            avx("PMEM_AVX512F"),
        )
    }

    fn base(&self) -> *mut u8 {
        self.file.as_ptr()
    }

    fn region_len(&self) -> usize {
        self.file.len()
    }

    #[inline]
    unsafe fn persist(&self, addr: *const u8, len: usize) {
        // SAFETY: forwarded from the caller.
        unsafe { crate::ffi::persist(addr, len) }
    }

    #[inline]
    unsafe fn memcpy_persist(&self, dst: *mut u8, src: *const u8, len: usize) {
        // SAFETY: forwarded from the caller.
        unsafe { crate::ffi::memcpy_persist(dst, src, len) }
    }

    #[inline]
    unsafe fn memset_persist(&self, dst: *mut u8, byte: u8, len: usize) {
        // SAFETY: forwarded from the caller.
        unsafe { crate::ffi::memset_persist(dst, byte, len) }
    }
}
