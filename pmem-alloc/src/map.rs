//! An owned memory mapping of a pool file, a device-DAX device or anonymous memory, which knows
//! what kind of mapping it is and therefore how data written through it becomes durable.
//!
//! | kind | how it was made | durable after |
//! |---|---|---|
//! | [`MapKind::SyncDax`] | `MAP_SHARED_VALIDATE \| MAP_SYNC` on a file of a `-o dax` file system | flush + fence |
//! | [`MapKind::DevDax`] | a `/dev/daxN.M` character device | flush + fence |
//! | [`MapKind::PageCache`] | `MAP_SHARED` after the kernel refused `MAP_SYNC` | `msync` |
//! | [`MapKind::Anonymous`] | anonymous shared memory | never (volatile) |
//!
//! [`Mapping::persister`] returns the policy that follows the kind; nothing assumes.
//!
//! Memory safety: the mapping hands out raw pointers only. Another process may map and modify
//! the same file at any time, so turning the memory into Rust references is the caller's
//! responsibility (pools take an exclusive file lock for this reason).

use crate::flush::FlushMethod;
use crate::persist::Hardware;
use crate::sys;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;

/// Huge-page size used to align mappings of files large enough to use them.
pub const HUGE_PAGE: usize = 2 << 20;

/// What a [`Mapping`] maps, and so how persistence works for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MapKind {
    /// A regular file on a DAX file system, mapped with `MAP_SYNC`: CPU flushes reach the media
    /// and the file system metadata is kept synchronous by the kernel.
    SyncDax,
    /// A device-DAX character device: always synchronous.
    DevDax,
    /// A regular file through the page cache (the kernel refused `MAP_SYNC`): only `msync`
    /// makes data durable.
    PageCache,
    /// Anonymous memory: nothing survives the process.
    Anonymous,
}

impl MapKind {
    /// Whether CPU cache flushes are enough to make data durable.
    pub fn is_synchronous(self) -> bool {
        matches!(self, MapKind::SyncDax | MapKind::DevDax)
    }
}

impl std::fmt::Display for MapKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MapKind::SyncDax => "synchronous DAX (MAP_SYNC)",
            MapKind::DevDax => "device DAX",
            MapKind::PageCache => "page cache (msync)",
            MapKind::Anonymous => "anonymous (volatile)",
        })
    }
}

/// Errors of [`Mapping`] construction. Every OS failure is mapped to a variant that names the
/// path and the problem; none of them panics.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MapError {
    /// The path does not exist.
    #[error("{}: no such file", path.display())]
    NotFound {
        /// The path.
        path: PathBuf,
    },
    /// `create` was asked for a path that already exists.
    #[error("{}: already exists", path.display())]
    AlreadyExists {
        /// The path.
        path: PathBuf,
    },
    /// The path is a directory.
    #[error("{}: is a directory", path.display())]
    IsDirectory {
        /// The path.
        path: PathBuf,
    },
    /// The path is neither a regular file nor a device-DAX device.
    #[error("{}: not a regular file or device-DAX device", path.display())]
    Unsupported {
        /// The path.
        path: PathBuf,
    },
    /// Permission denied (open, or the file system refused writable shared mappings).
    #[error("{}: permission denied", path.display())]
    PermissionDenied {
        /// The path.
        path: PathBuf,
    },
    /// The file has size 0.
    #[error("{}: file is empty", path.display())]
    Empty {
        /// The path.
        path: PathBuf,
    },
    /// The file or requested size is below the minimum.
    #[error("{}: size {size} is below the minimum of {min} bytes", path.display())]
    TooSmall {
        /// The path.
        path: PathBuf,
        /// Its size (or the requested size).
        size: u64,
        /// The minimum accepted.
        min: u64,
    },
    /// The size cannot be mapped on this platform.
    #[error("{}: size {size} is too large to map", path.display())]
    TooLarge {
        /// The path.
        path: PathBuf,
        /// The size.
        size: u64,
    },
    /// The file system is full (reported by fallocate, before any mapping).
    #[error("{}: no space left to allocate {requested} bytes", path.display())]
    NoSpace {
        /// The path.
        path: PathBuf,
        /// The size that could not be reserved.
        requested: u64,
    },
    /// DAX was required ([`MapOptions::require_dax`]) but this file or device cannot do it.
    #[error("{}: not DAX-capable: {reason}", path.display())]
    NotDax {
        /// The path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Any other OS error, with the operation that failed.
    #[error("{}: {op} failed: {source}", path.display())]
    Io {
        /// The path (`<anonymous>` for anonymous memory).
        path: PathBuf,
        /// The failing operation (`open`, `mmap`, ...).
        op: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

impl MapError {
    fn from_io(path: &Path, op: &'static str, e: io::Error) -> Self {
        let path = path.to_path_buf();
        match e.raw_os_error() {
            Some(libc::ENOENT) => MapError::NotFound { path },
            Some(libc::EEXIST) => MapError::AlreadyExists { path },
            Some(libc::EISDIR) => MapError::IsDirectory { path },
            Some(libc::EACCES) | Some(libc::EPERM) | Some(libc::EROFS) => {
                MapError::PermissionDenied { path }
            }
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => MapError::NoSpace { path, requested: 0 },
            _ => MapError::Io {
                path,
                op,
                source: e,
            },
        }
    }
}

/// Options for [`Mapping::create`] and [`Mapping::open`].
///
/// # Examples
/// ```
/// use pmem_alloc::map::MapOptions;
/// let o = MapOptions::new().require_dax(false).min_size(8192).reserve(1 << 30);
/// # let _ = o;
/// ```
#[derive(Clone, Debug)]
pub struct MapOptions {
    require_dax: bool,
    min_size: u64,
    reserve: usize,
    huge_align: bool,
    try_sync: bool,
}

impl Default for MapOptions {
    fn default() -> Self {
        Self::new()
    }
}

impl MapOptions {
    /// Defaults: DAX not required (page-cache fallback allowed), minimum one page, no extra
    /// address-space reservation, 2 MiB alignment for files of at least 2 MiB.
    pub fn new() -> Self {
        MapOptions {
            require_dax: false,
            min_size: sys::page_size() as u64,
            reserve: 0,
            huge_align: true,
            try_sync: true,
        }
    }

    /// Fail with [`MapError::NotDax`] instead of falling back to the page cache.
    pub fn require_dax(mut self, yes: bool) -> Self {
        self.require_dax = yes;
        self
    }

    /// Smallest acceptable file size (default: one page).
    pub fn min_size(mut self, bytes: u64) -> Self {
        self.min_size = bytes;
        self
    }

    /// Reserve this much address space (at least the file size) so that the mapping can later
    /// [`grow`](Mapping::grow) in place without moving.
    pub fn reserve(mut self, bytes: usize) -> Self {
        self.reserve = bytes;
        self
    }

    /// Try `MAP_SYNC` first (default true). Volatile users (a heap used as DRAM replacement)
    /// switch it off: synchronous page faults cost file-system metadata syncs they do not need.
    /// The mapping then reports [`MapKind::PageCache`] (not synchronous) even on a DAX file.
    pub fn try_sync(mut self, yes: bool) -> Self {
        self.try_sync = yes;
        self
    }

    /// Align the mapping to 2 MiB when the file is at least that large (default true).
    pub fn huge_align(mut self, yes: bool) -> Self {
        self.huge_align = yes;
        self
    }
}

/// An owned mapping. Unmapped on drop.
///
/// # Examples
/// ```
/// use pmem_alloc::map::{MapKind, Mapping, MapOptions};
/// use pmem_alloc::persist::Persist;
/// let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("demo.pool");
/// let m = Mapping::create(&path, 1 << 20, &MapOptions::new()).unwrap();
/// assert_eq!(m.len(), 1 << 20);
/// // tmpfs or ext4 without -o dax: the kernel refuses MAP_SYNC and persist() uses msync.
/// assert!(matches!(m.kind(), MapKind::PageCache | MapKind::SyncDax));
/// m.write_at(0, b"hello").unwrap();
/// m.persist_range(0, 5).unwrap();
/// drop(m);
/// let m = Mapping::open(&path, &MapOptions::new()).unwrap();
/// let mut buf = [0u8; 5];
/// m.read_at(0, &mut buf).unwrap();
/// assert_eq!(&buf, b"hello");
/// ```
#[derive(Debug)]
pub struct Mapping {
    base: NonNull<u8>,
    len: usize,
    /// The whole address-space reservation (`base..base+reserved`), unmapped on drop.
    reserved: usize,
    kind: MapKind,
    file: Option<File>,
    path: PathBuf,
    persister: Hardware,
    /// Whether `MAP_SYNC` was used (for regular-file growth).
    map_flags: libc::c_int,
    /// A part of the reservation given up after a failed growth (`offset`, `len`; len 0: none):
    /// a failed `MAP_FIXED` call may have unmapped it and another thread may own it now, so it
    /// is never unmapped by us and the mapping cannot grow any more.
    lost: (usize, usize),
}

// SAFETY: the mapping is plain memory owned by this value; sharing the raw base pointer across
// threads is sound because all access goes through raw pointers whose users synchronise.
unsafe impl Send for Mapping {}
// SAFETY: as above; `&Mapping` only exposes raw pointers and copying reads/writes.
unsafe impl Sync for Mapping {}

/// An error from [`Mapping::read_at`] / [`Mapping::write_at`] / [`Mapping::persist_range`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("range {offset}+{len} is outside the mapping of {size} bytes")]
pub struct OutOfBounds {
    /// Requested offset.
    pub offset: usize,
    /// Requested length.
    pub len: usize,
    /// Mapping size.
    pub size: usize,
}

impl Mapping {
    /// Creates a new file of `size` bytes (error if it exists), reserves its blocks with
    /// `fallocate` and maps it.
    pub fn create(path: &Path, size: u64, opts: &MapOptions) -> Result<Mapping, MapError> {
        if size < opts.min_size {
            return Err(MapError::TooSmall {
                path: path.into(),
                size,
                min: opts.min_size,
            });
        }
        let len = usize::try_from(size).map_err(|_| MapError::TooLarge {
            path: path.into(),
            size,
        })?;
        let file = sys::open(path, libc::O_RDWR | libc::O_CREAT | libc::O_EXCL, 0o600)
            .map_err(|e| MapError::from_io(path, "open", e))?;
        let cleanup = |e: MapError| {
            let _ = std::fs::remove_file(path);
            e
        };
        if let Err(e) = sys::fallocate(&file, size) {
            return Err(cleanup(match e.raw_os_error() {
                Some(libc::ENOSPC) | Some(libc::EDQUOT) | Some(libc::EFBIG) => MapError::NoSpace {
                    path: path.into(),
                    requested: size,
                },
                _ => MapError::from_io(path, "fallocate", e),
            }));
        }
        Self::map_file(file, path, len, opts).map_err(cleanup)
    }

    /// Opens an existing pool file or device-DAX device and maps all of it.
    pub fn open(path: &Path, opts: &MapOptions) -> Result<Mapping, MapError> {
        let file =
            sys::open(path, libc::O_RDWR, 0).map_err(|e| MapError::from_io(path, "open", e))?;
        let md = file
            .metadata()
            .map_err(|e| MapError::from_io(path, "fstat", e))?;
        let ft = md.file_type();
        if ft.is_dir() {
            return Err(MapError::IsDirectory { path: path.into() });
        }
        if ft.is_char_device() {
            return Self::map_devdax(file, path, opts);
        }
        if !ft.is_file() {
            return Err(if opts.require_dax {
                MapError::NotDax {
                    path: path.into(),
                    reason: "not a DAX file or device-DAX character device".into(),
                }
            } else {
                MapError::Unsupported { path: path.into() }
            });
        }
        let size = md.len();
        if size == 0 {
            return Err(MapError::Empty { path: path.into() });
        }
        if size < opts.min_size {
            return Err(MapError::TooSmall {
                path: path.into(),
                size,
                min: opts.min_size,
            });
        }
        let len = usize::try_from(size).map_err(|_| MapError::TooLarge {
            path: path.into(),
            size,
        })?;
        Self::map_file(file, path, len, opts)
    }

    /// Anonymous shared memory of `len` bytes (volatile).
    pub fn anonymous(len: usize) -> Result<Mapping, MapError> {
        Self::anonymous_with(len, &MapOptions::new())
    }

    /// Anonymous shared memory with options (reservation, alignment).
    pub fn anonymous_with(len: usize, opts: &MapOptions) -> Result<Mapping, MapError> {
        let path = PathBuf::from("<anonymous>");
        let len = round_up(len.max(1), sys::page_size());
        let (base, reserved) = Self::reserve_aligned(&path, len, opts)?;
        // SAFETY: `base..base+len` lies in the reservation we just made and own.
        if let Err(e) = unsafe { sys::mmap_fixed(base, len, None, libc::MAP_SHARED, 0) } {
            // SAFETY: the reservation minus the range the failed call touched is ours.
            unsafe { release_except(base, reserved, 0, len) };
            return Err(MapError::from_io(&path, "mmap", e));
        }
        Ok(Mapping {
            base: NonNull::new(base).expect("mmap never returns null on success"),
            len,
            reserved,
            kind: MapKind::Anonymous,
            file: None,
            path,
            persister: Hardware::new(FlushMethod::None),
            map_flags: libc::MAP_SHARED,
            lost: (0, 0),
        })
    }

    fn reserve_aligned(
        path: &Path,
        len: usize,
        opts: &MapOptions,
    ) -> Result<(*mut u8, usize), MapError> {
        let ps = sys::page_size();
        let want = round_up(len.max(opts.reserve), ps);
        let align = if opts.huge_align && len >= HUGE_PAGE {
            HUGE_PAGE
        } else {
            ps
        };
        Self::reserve_with_align(path, want, align)
    }

    fn reserve_with_align(
        path: &Path,
        want: usize,
        align: usize,
    ) -> Result<(*mut u8, usize), MapError> {
        let total = want.checked_add(align).ok_or(MapError::TooLarge {
            path: path.into(),
            size: want as u64,
        })?;
        let raw = sys::reserve(total).map_err(|e| MapError::from_io(path, "mmap reserve", e))?;
        let start = round_up(raw as usize, align);
        let head = start - raw as usize;
        let tail = total - head - want;
        // SAFETY: both slack ranges are page-aligned parts of the reservation just made, not
        // yet referenced by anyone.
        unsafe {
            let _ = sys::munmap(raw, head);
            let _ = sys::munmap((start + want) as *mut u8, tail);
        }
        Ok((start as *mut u8, want))
    }

    fn map_file(
        file: File,
        path: &Path,
        len: usize,
        opts: &MapOptions,
    ) -> Result<Mapping, MapError> {
        // Probe MAP_SYNC before reserving: a refused MAP_FIXED call must never be retried (see
        // `sys::map_sync_supported`).
        let sync = opts.try_sync
            && sys::map_sync_supported(&file).map_err(|e| MapError::from_io(path, "mmap", e))?;
        if opts.require_dax && !sync {
            return Err(MapError::NotDax {
                path: path.into(),
                reason: "the kernel refused MAP_SYNC for this file".into(),
            });
        }
        let (base, reserved) = Self::reserve_aligned(path, len, opts)?;
        let flags = if sync {
            sys::MAP_SHARED_VALIDATE | sys::MAP_SYNC
        } else {
            libc::MAP_SHARED
        };
        // SAFETY: `base..base+len` is inside our reservation.
        if let Err(e) = unsafe { sys::mmap_fixed(base, len, Some(&file), flags, 0) } {
            // SAFETY: the reservation minus the range the failed call touched is ours.
            unsafe { release_except(base, reserved, 0, len) };
            return Err(MapError::from_io(path, "mmap", e));
        }
        let kind = if sync {
            MapKind::SyncDax
        } else {
            MapKind::PageCache
        };
        let persister = match kind {
            MapKind::SyncDax => Hardware::detected(),
            _ => page_cache_policy().within(base, len),
        };
        Ok(Mapping {
            base: NonNull::new(base).expect("mmap never returns null on success"),
            len,
            reserved,
            kind,
            file: Some(file),
            path: path.to_path_buf(),
            persister,
            map_flags: flags,
            lost: (0, 0),
        })
    }

    fn map_devdax(file: File, path: &Path, opts: &MapOptions) -> Result<Mapping, MapError> {
        let st = sys::fstat(&file).map_err(|e| MapError::from_io(path, "fstat", e))?;
        if !sys::is_devdax(&st) {
            return Err(MapError::NotDax {
                path: path.into(),
                reason: "character device is not a device-DAX instance".into(),
            });
        }
        let size = sys::devdax_size(&st).map_err(|e| MapError::from_io(path, "devdax size", e))?;
        if size < opts.min_size {
            return Err(MapError::TooSmall {
                path: path.into(),
                size,
                min: opts.min_size,
            });
        }
        let len = usize::try_from(size).map_err(|_| MapError::TooLarge {
            path: path.into(),
            size,
        })?;
        let align = sys::devdax_align(&st)
            .unwrap_or(HUGE_PAGE)
            .max(sys::page_size());
        // Device DAX is synchronous with or without the flag; ask for it where accepted, and
        // probe first because a refused MAP_FIXED call is never retried (see `map_file`).
        let flags = match sys::map_sync_supported(&file) {
            Ok(true) => sys::MAP_SHARED_VALIDATE | sys::MAP_SYNC,
            _ => libc::MAP_SHARED,
        };
        let (base, reserved) = Self::reserve_with_align(path, round_up(len, align), align)?;
        // SAFETY: inside our reservation.
        if let Err(e) = unsafe { sys::mmap_fixed(base, len, Some(&file), flags, 0) } {
            // SAFETY: the reservation minus the range the failed call touched is ours.
            unsafe { release_except(base, reserved, 0, len) };
            return Err(MapError::from_io(path, "mmap", e));
        }
        Ok(Mapping {
            base: NonNull::new(base).expect("mmap never returns null on success"),
            len,
            reserved,
            kind: MapKind::DevDax,
            file: Some(file),
            path: path.to_path_buf(),
            persister: Hardware::detected(),
            map_flags: libc::MAP_SHARED,
            lost: (0, 0),
        })
    }

    /// Base address of the mapping.
    pub fn as_ptr(&self) -> *mut u8 {
        self.base.as_ptr()
    }

    /// Mapped length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the mapping is empty (never true for a successfully built mapping).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Address space reserved for in-place growth.
    pub fn reserved(&self) -> usize {
        self.reserved
    }

    /// What kind of mapping this is.
    pub fn kind(&self) -> MapKind {
        self.kind
    }

    /// The path mapped (`<anonymous>` for anonymous memory).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open file, if any (for locking).
    pub fn file(&self) -> Option<&File> {
        self.file.as_ref()
    }

    /// Takes an exclusive advisory lock (`flock`) on the file: `Ok(false)` if another open of
    /// the file holds it. Anonymous mappings always succeed. The lock lasts as long as the
    /// mapping.
    pub fn try_lock_exclusive(&self) -> std::io::Result<bool> {
        match &self.file {
            Some(f) => sys::try_lock_exclusive(f),
            None => Ok(true),
        }
    }

    /// The persistence policy that matches this mapping's kind.
    pub fn persister(&self) -> Hardware {
        self.persister
    }

    fn check(&self, offset: usize, len: usize) -> Result<(), OutOfBounds> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(OutOfBounds {
                offset,
                len,
                size: self.len,
            }),
        }
    }

    /// Copies `buf.len()` bytes from the mapping at `offset`.
    pub fn read_at(&self, offset: usize, buf: &mut [u8]) -> Result<(), OutOfBounds> {
        self.check(offset, buf.len())?;
        // SAFETY: bounds checked; the mapping is readable; `buf` cannot overlap it because
        // the mapping is never exposed as a Rust reference by this type.
        unsafe {
            std::ptr::copy_nonoverlapping(self.as_ptr().add(offset), buf.as_mut_ptr(), buf.len())
        };
        Ok(())
    }

    /// Copies `data` into the mapping at `offset` (not persisted: see [`Mapping::persist_range`]).
    pub fn write_at(&self, offset: usize, data: &[u8]) -> Result<(), OutOfBounds> {
        self.check(offset, data.len())?;
        // SAFETY: bounds checked; the mapping is writable.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.as_ptr().add(offset), data.len())
        };
        Ok(())
    }

    /// Makes `offset..offset+len` durable with this mapping's policy.
    pub fn persist_range(&self, offset: usize, len: usize) -> Result<(), OutOfBounds> {
        use crate::persist::Persist;
        self.check(offset, len)?;
        // SAFETY: bounds checked, so the range is mapped.
        unsafe { self.persister.persist(self.as_ptr().add(offset), len) };
        Ok(())
    }

    /// Extends a file mapping in place to `new_len` bytes: the file is extended with
    /// `fallocate` and the new part is mapped right after the old one, so the base address
    /// (and every pointer into the mapping) stays valid. Needs a large enough
    /// [`MapOptions::reserve`]. Device-DAX and anonymous mappings cannot grow.
    pub fn grow(&mut self, new_len: usize) -> Result<(), MapError> {
        let ps = sys::page_size();
        if new_len <= self.len {
            return Ok(());
        }
        let new_len = round_up(new_len, ps);
        let Some(file) = self.file.as_ref().filter(|_| self.kind != MapKind::DevDax) else {
            return Err(MapError::Unsupported {
                path: self.path.clone(),
            });
        };
        if self.lost.1 != 0 {
            return Err(MapError::from_io(
                &self.path,
                "mmap",
                std::io::Error::other("an earlier growth of this mapping failed; reopen to grow"),
            ));
        }
        if new_len > self.reserved {
            return Err(MapError::TooLarge {
                path: self.path.clone(),
                size: new_len as u64,
            });
        }
        let cur = file
            .metadata()
            .map(|m| m.len())
            .unwrap_or(0)
            .max(self.len as u64);
        sys::fallocate_range(file, cur, new_len as u64 - cur.min(new_len as u64)).map_err(|e| {
            match e.raw_os_error() {
                Some(libc::ENOSPC) | Some(libc::EDQUOT) => MapError::NoSpace {
                    path: self.path.clone(),
                    requested: new_len as u64,
                },
                _ => MapError::from_io(&self.path, "fallocate", e),
            }
        })?;
        let old = round_up(self.len, ps);
        // SAFETY: `base+old..base+new_len` is the unused tail of our own reservation (mapped
        // PROT_NONE) and nothing references it.
        let r = unsafe {
            sys::mmap_fixed(
                self.as_ptr().add(old),
                new_len - old,
                Some(file),
                self.map_flags,
                old as u64,
            )
        };
        if let Err(e) = r {
            // The failed call may have unmapped the range and someone else may map there now.
            self.lost = (old, new_len - old);
            return Err(MapError::from_io(&self.path, "mmap", e));
        }
        self.len = new_len;
        Ok(())
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the reservation, except a range given up after a failed growth, belongs to
        // this value and no reference into it can outlive it (the type hands out raw pointers
        // only; their users are bound by it).
        unsafe { release_except(self.base.as_ptr(), self.reserved, self.lost.0, self.lost.1) };
    }
}

/// Unmaps the reservation `base..base+reserved` except `base+off..base+off+len`, the target of
/// a failed `MAP_FIXED` call (which may be a hole that another thread has mapped since).
///
/// # Safety
/// The reservation outside that range is the caller's and nothing references it.
unsafe fn release_except(base: *mut u8, reserved: usize, off: usize, len: usize) {
    let end = (off + len).min(reserved);
    // SAFETY: both parts lie in the caller's reservation (contract); `munmap` of length 0 is a
    // no-op.
    unsafe {
        let _ = sys::munmap(base, off.min(reserved));
        let _ = sys::munmap(base.add(end), reserved - end);
    }
}

/// The policy for page-cache mappings: msync, unless flushing is switched off entirely, or the
/// process forces a CPU method with `PMEM_ALLOC_FORCE_PMEM=1` (tests and benchmarks on a
/// machine without persistent memory, like PMDK's `PMEM_IS_PMEM_FORCE`).
fn page_cache_policy() -> Hardware {
    let m = FlushMethod::detected();
    if m == FlushMethod::None || force_pmem() {
        Hardware::new(m)
    } else {
        Hardware::new(FlushMethod::Msync)
    }
}

/// Environment variable that makes page-cache mappings use the CPU flush method as if they
/// were synchronous DAX (for tests and benchmarks only: data is then *not* durable on a
/// machine without persistent memory).
pub const FORCE_PMEM_ENV: &str = "PMEM_ALLOC_FORCE_PMEM";

fn force_pmem() -> bool {
    static F: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *F.get_or_init(|| {
        std::env::var(FORCE_PMEM_ENV)
            .map(|v| v == "1")
            .unwrap_or(false)
    })
}

fn round_up(x: usize, a: usize) -> usize {
    debug_assert!(a.is_power_of_two());
    (x + a - 1) & !(a - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_files_are_2mib_aligned() {
        let dir = tempfile::tempdir().unwrap();
        let m = Mapping::create(&dir.path().join("a"), 4 << 20, &MapOptions::new()).unwrap();
        assert_eq!(m.as_ptr() as usize % HUGE_PAGE, 0);
        let a = Mapping::anonymous(HUGE_PAGE).unwrap();
        assert_eq!(a.as_ptr() as usize % HUGE_PAGE, 0);
        assert_eq!(a.kind(), MapKind::Anonymous);
        assert!(!crate::persist::Persist::is_durable(&a.persister()));
    }

    #[test]
    fn grow_in_place_keeps_base_and_data() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("g");
        let mut m = Mapping::create(&p, 1 << 20, &MapOptions::new().reserve(64 << 20)).unwrap();
        let base = m.as_ptr();
        m.write_at(100, b"abc").unwrap();
        m.grow(8 << 20).unwrap();
        assert_eq!(m.as_ptr(), base);
        assert_eq!(m.len(), 8 << 20);
        m.write_at((8 << 20) - 3, b"xyz").unwrap();
        m.persist_range(0, 8 << 20).unwrap();
        let mut b = [0u8; 3];
        m.read_at(100, &mut b).unwrap();
        assert_eq!(&b, b"abc");
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 8 << 20);
        assert!(matches!(m.grow(128 << 20), Err(MapError::TooLarge { .. })));
    }

    #[test]
    fn out_of_bounds_access_is_an_error() {
        let m = Mapping::anonymous(4096).unwrap();
        assert!(m.write_at(4090, &[0; 7]).is_err());
        assert!(m.read_at(usize::MAX, &mut [0; 2]).is_err());
        assert!(m.persist_range(4096, 1).is_err());
        assert!(m.persist_range(4096, 0).is_ok());
    }
}
