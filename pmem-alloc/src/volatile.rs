//! Persistent memory as a DRAM replacement: a volatile heap over a DAX file (or any file, or
//! anonymous memory), on the same engine as the persistent heap with the no-op persistence
//! policy. It starts empty on every open, never flushes and never recovers.
//!
//! - [`VolatileHeap`] implements `allocator_api2::alloc::Allocator` (on `&VolatileHeap`), so
//!   single collections can live on PMEM while the rest of the program stays in DRAM;
//!   several heaps can exist at once (one per device or NUMA node).
//! - [`crate::global::PmemGlobalAlloc`] makes one heap the process's `#[global_allocator]`.
//!
//! Memory freed in large extents is returned to the file system (hole punching) so the file does
//! not only grow; those pages read back as zeros, which zeroed allocations use without writing.
//! On `fork` a file-backed heap is copied (while the allocator is quiescent, in the prepare
//! handler) into a memfd that the child maps in its place: the child keeps allocating, writing
//! and returning pages without touching the parent's file, and it sees the heap as it was at the
//! fork, not the parent's later writes. The copy costs one pass over the mapped heap per fork.

use crate::heap::{AnonRegion, CoreOptions, HeapCore, HeapStats, Zone};
use crate::map::{MapOptions, Mapping};
use crate::persist::NoPersist;
use crate::size_class::PAGE;
use std::alloc::Layout;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::Mutex;

/// A heap grows by at least this fraction of its size (1/16) ...
const GROWTH_DIVISOR: usize = 16;
/// ... and at least this much (one huge page, so mappings stay 2 MiB aligned).
const GROWTH_MIN: usize = 2 << 20;

/// Errors creating a volatile heap.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HeapError {
    /// Creating or mapping the backing file failed.
    #[error(transparent)]
    Map(#[from] crate::map::MapError),
    /// Reserving metadata memory failed.
    #[error("cannot reserve metadata memory: {0}")]
    Meta(std::io::Error),
    /// Bad size.
    #[error("invalid heap size {0}: {1}")]
    Size(u64, &'static str),
}

/// Where a volatile heap gets its memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Backing {
    /// A new, immediately unlinked file in this directory (the usual case: a `-o dax` mount).
    Dir(PathBuf),
    /// This file path (created; an existing file is refused).
    File(PathBuf),
    /// Private anonymous memory (DRAM).
    Anonymous,
    /// An existing device-DAX character device (`/dev/daxN.M`), used whole; it cannot grow.
    /// Its old contents stay (nothing can punch a hole in a device), so zeroed allocations are
    /// always written with zeros.
    Device(PathBuf),
}

/// Builder for [`VolatileHeap`].
///
/// # Examples
/// ```
/// use pmem_alloc::volatile::VolatileHeap;
/// let dir = tempfile::tempdir().unwrap();
/// let heap = VolatileHeap::builder().dir(dir.path()).size(64 << 20).build().unwrap();
/// let mut v: allocator_api2::vec::Vec<u64, _> = allocator_api2::vec::Vec::new_in(&heap);
/// v.extend(0..1000u64);
/// assert_eq!(v.iter().sum::<u64>(), 499_500);
/// assert!(heap.stats().in_use >= 8000);
/// ```
#[derive(Clone, Debug)]
pub struct VolatileHeapBuilder {
    backing: Backing,
    size: u64,
    max_size: u64,
    punch_bytes: usize,
}

impl Default for VolatileHeapBuilder {
    fn default() -> Self {
        VolatileHeapBuilder {
            backing: Backing::Anonymous,
            size: 64 << 20,
            max_size: 0,
            punch_bytes: 2 << 20,
        }
    }
}

impl VolatileHeapBuilder {
    /// Back the heap with an unlinked file in `dir`.
    pub fn dir(mut self, dir: &Path) -> Self {
        self.backing = Backing::Dir(dir.to_path_buf());
        self
    }
    /// Back the heap with a new file at `path`.
    pub fn file(mut self, path: &Path) -> Self {
        self.backing = Backing::File(path.to_path_buf());
        self
    }
    /// Anonymous memory.
    pub fn anonymous(mut self) -> Self {
        self.backing = Backing::Anonymous;
        self
    }
    /// A device-DAX device (used whole).
    pub fn device(mut self, path: &Path) -> Self {
        self.backing = Backing::Device(path.to_path_buf());
        self
    }
    /// Any backing.
    pub fn backing(mut self, b: Backing) -> Self {
        self.backing = b;
        self
    }
    /// Initial size in bytes (default 64 MiB). The heap grows on demand up to `max_size`.
    pub fn size(mut self, bytes: u64) -> Self {
        self.size = bytes;
        self
    }
    /// Largest size the heap may grow to (default: 64 times the initial size, at least 1 GiB).
    pub fn max_size(mut self, bytes: u64) -> Self {
        self.max_size = bytes;
        self
    }
    /// Free extents of at least this many bytes are returned to the file system (default 2 MiB;
    /// 0 = never).
    pub fn punch_threshold(mut self, bytes: usize) -> Self {
        self.punch_bytes = bytes;
        self
    }
    /// Creates the heap.
    pub fn build(self) -> Result<VolatileHeap, HeapError> {
        VolatileHeap::new(self)
    }
}

/// The memory behind a heap (kept for its lifetime; dropped last).
enum Region {
    File(Mapping),
    #[allow(dead_code)]
    Anon(AnonRegion),
}

/// A volatile heap. See the module documentation.
pub struct VolatileHeap {
    core: Box<HeapCore<NoPersist>>,
    base: *mut u8,
    reserved: usize,
    size: Mutex<usize>,
    _pmap: AnonRegion,
    region: Mutex<Region>,
    fd: i32,
    /// Device DAX: free memory is never known to be zero (see [`Backing::Device`]).
    device: bool,
}

// SAFETY: the engine is Sync; the region is owned and guarded by a Mutex for growth.
unsafe impl Send for VolatileHeap {}
// SAFETY: as above.
unsafe impl Sync for VolatileHeap {}

impl std::fmt::Debug for VolatileHeap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VolatileHeap")
            .field("base", &self.base)
            .field("reserved", &self.reserved)
            .finish_non_exhaustive()
    }
}

/// Whether descriptor `fd` is the memfd copy a fork child's heap runs on (see
/// `heap::tcache::fork_child`). Allocation-free: it runs inside the allocator.
fn is_fork_copy(fd: i32) -> bool {
    if fd < 0 {
        return false;
    }
    let mut path = *b"/proc/self/fd/\0\0\0\0\0\0\0\0\0\0\0\0";
    let mut digits = [0u8; 10];
    let (mut n, mut k) = (fd as u32, 0);
    loop {
        digits[k] = b'0' + (n % 10) as u8;
        k += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for i in 0..k {
        path[14 + i] = digits[k - 1 - i];
    }
    let want = b"/memfd:pmem-heap-fork";
    let mut buf = [0u8; 64];
    // SAFETY: `path` is NUL-terminated; `buf` is writable for its length.
    let r = unsafe { libc::readlink(path.as_ptr().cast(), buf.as_mut_ptr().cast(), buf.len()) };
    r >= want.len() as isize && buf.starts_with(want)
}

fn unique_name() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    format!(
        ".pmem-heap-{}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        t
    )
}

impl VolatileHeap {
    /// A builder.
    pub fn builder() -> VolatileHeapBuilder {
        VolatileHeapBuilder::default()
    }

    /// An anonymous-memory heap of `size` bytes initially.
    pub fn anonymous(size: u64) -> Result<VolatileHeap, HeapError> {
        Self::builder().anonymous().size(size).build()
    }

    fn new(b: VolatileHeapBuilder) -> Result<VolatileHeap, HeapError> {
        let size = (b.size.max(PAGE as u64 * 16) + PAGE as u64 - 1) & !(PAGE as u64 - 1);
        let max = if b.max_size == 0 {
            (size.saturating_mul(64)).max(1 << 30)
        } else {
            b.max_size.max(size)
        };
        if max > (1u64 << 46) {
            return Err(HeapError::Size(max, "too large"));
        }
        let device = matches!(b.backing, Backing::Device(_));
        let (region, base, reserved, fd) = match &b.backing {
            Backing::Anonymous => {
                // 2 MiB aligned, as file mappings are: the engine aligns large blocks by page
                // index, so an aligned base makes `align` up to 2 MiB hold for addresses
                const ALIGN: usize = 2 << 20;
                let r = AnonRegion::new(max as usize + ALIGN).map_err(HeapError::Meta)?;
                let base = r.ptr().wrapping_add(r.ptr().align_offset(ALIGN));
                (Region::Anon(r), base, max as usize, -1)
            }
            Backing::Device(d) => {
                let m = Mapping::open(d, &MapOptions::new().require_dax(true))?;
                let base = m.as_ptr();
                let len = m.len() & !(PAGE - 1);
                (Region::File(m), base, len, -1)
            }
            Backing::Dir(d) | Backing::File(d) => {
                let path = match &b.backing {
                    Backing::Dir(_) => d.join(unique_name()),
                    _ => d.clone(),
                };
                let m = Mapping::create(
                    &path,
                    size,
                    &MapOptions::new()
                        .reserve(max as usize)
                        .try_sync(false)
                        .min_size(PAGE as u64),
                )?;
                if matches!(b.backing, Backing::Dir(_)) {
                    // the file lives as long as the mapping; nobody else needs its name
                    let _ = std::fs::remove_file(&path);
                }
                let base = m.as_ptr();
                let reserved = m.reserved();
                let fd = {
                    use std::os::fd::AsRawFd;
                    m.file().map(|f| f.as_raw_fd()).unwrap_or(-1)
                };
                (Region::File(m), base, reserved, fd)
            }
        };
        let max_pages = reserved / PAGE;
        let pmap = AnonRegion::new(max_pages * 8).map_err(HeapError::Meta)?;
        // SAFETY: `base` is page aligned and `size` bytes of it are mapped (more on growth); the
        // core is boxed and never moved.
        let core = Box::new(
            unsafe {
                HeapCore::new(
                    base,
                    max_pages,
                    NoPersist,
                    CoreOptions {
                        // MADV_DONTNEED on a shared device mapping neither frees nor zeroes
                        punch_bytes: if device { 0 } else { b.punch_bytes },
                        fd,
                    },
                )
            }
            .map_err(HeapError::Meta)?,
        );
        let size = if device { reserved as u64 } else { size };
        let npages = size as usize / PAGE;
        // SAFETY: the page map covers `max_pages` words of private anonymous memory.
        unsafe {
            core.add_zone(
                Zone {
                    start: 0,
                    npages,
                    meta_pages: 0,
                    pmap: pmap.ptr().cast(),
                    pbitmap: std::ptr::null_mut(),
                },
                true,
            )
        };
        core.init_fresh();
        let heap = VolatileHeap {
            core,
            base,
            reserved,
            size: Mutex::new(size as usize),
            _pmap: pmap,
            region: Mutex::new(region),
            fd,
            device,
        };
        crate::heap::register_fork_region(heap.base, heap.reserved, heap.fd, size as usize);
        heap.core.register();
        Ok(heap)
    }

    /// The engine.
    pub fn core(&self) -> &HeapCore<NoPersist> {
        &self.core
    }

    /// Whether `p` lies in this heap's address range.
    #[inline]
    pub fn owns(&self, p: *const u8) -> bool {
        (p as usize).wrapping_sub(self.base as usize) < self.reserved
    }

    /// Grows the heap by at least `min_bytes`, up to the reservation, in steps of a sixteenth of
    /// its size (at least 2 MiB): a file-backed heap `fallocate`s each step, so the file's
    /// allocated blocks stay within about 6% of what the heap has used (doubling left up to
    /// half of them never touched).
    fn grow(&self, min_bytes: usize) -> bool {
        let mut size = self.size.lock().unwrap_or_else(|e| e.into_inner());
        let step = min_bytes
            .max(*size / GROWTH_DIVISOR)
            .max(GROWTH_MIN)
            .next_multiple_of(GROWTH_MIN);
        let want = (*size + step).min(self.reserved) & !(PAGE - 1);
        if want <= *size {
            return false;
        }
        let mut region = self.region.lock().unwrap_or_else(|e| e.into_inner());
        if let (Region::File(m), true) = (&*region, crate::heap::in_fork_child()) {
            // A fork child must not extend the parent's file. Its heap is normally the memfd
            // copy made at the fork (under the same descriptor): extend that, so that hole
            // punching keeps working on the new part; otherwise grow with private memory.
            let copy = m.file().filter(|_| is_fork_copy(self.fd));
            let r = match copy {
                // SAFETY: `fd` is our own memfd; the range is the unused tail of our
                // reservation, mapped from the matching offset of the extended memfd.
                Some(f) if unsafe { libc::ftruncate(self.fd, want as libc::off_t) } == 0 => unsafe {
                    crate::sys::mmap_fixed(
                        self.base.add(*size),
                        want - *size,
                        Some(f),
                        libc::MAP_SHARED,
                        *size as u64,
                    )
                },
                // SAFETY: `base+size..base+want` is the unused tail of our reservation.
                _ => unsafe {
                    crate::sys::mmap_fixed(
                        self.base.add(*size),
                        want - *size,
                        None,
                        libc::MAP_PRIVATE,
                        0,
                    )
                },
            };
            drop(region);
            if r.is_err() || !self.core.extend_last_zone(want / PAGE) {
                return false;
            }
            *size = want;
            return true;
        }
        if let Region::File(m) = &mut *region {
            if m.grow(want).is_err() {
                // maybe only the step failed: try the minimum
                let min = (*size + min_bytes).next_multiple_of(PAGE);
                if min > self.reserved || m.grow(min).is_err() {
                    return false;
                }
            }
            let new = m.len();
            drop(region);
            // the fork snapshot covers the new part too
            crate::heap::register_fork_region(self.base, self.reserved, self.fd, new);
            if !self.core.extend_last_zone(new / PAGE) {
                return false;
            }
            *size = new;
            return true;
        }
        drop(region);
        if !self.core.extend_last_zone(want / PAGE) {
            return false;
        }
        *size = want;
        true
    }

    /// Allocates for `layout`; null when out of memory. Zero-size layouts are the caller's
    /// business (see the `Allocator` impl).
    #[inline]
    pub fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = self.core.alloc(layout.size(), layout.align());
        if !p.is_null() {
            return p;
        }
        self.alloc_slow(layout, false)
    }

    /// Zero-filled allocation (fresh or hole-punched memory of a file or anonymous heap is not
    /// written again; on a device everything is).
    pub fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if self.device {
            // the engine takes fresh extents for zero: a device holds whatever it held before
            let p = self.alloc(layout);
            if !p.is_null() {
                // SAFETY: a fresh block of at least `layout.size()` bytes.
                unsafe { std::ptr::write_bytes(p, 0, layout.size()) };
            }
            return p;
        }
        let p = self.core.alloc_zeroed(layout.size(), layout.align());
        if !p.is_null() {
            return p;
        }
        self.alloc_slow(layout, true)
    }

    #[cold]
    fn alloc_slow(&self, layout: Layout, zero: bool) -> *mut u8 {
        if !self.grow(layout.size() + layout.align() + (1 << 20)) {
            return std::ptr::null_mut();
        }
        if zero {
            self.core.alloc_zeroed(layout.size(), layout.align())
        } else {
            self.core.alloc(layout.size(), layout.align())
        }
    }

    /// Frees.
    ///
    /// # Safety
    /// `p` was allocated by this heap with `layout` and not freed.
    #[inline]
    pub unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        // SAFETY: forwarded.
        unsafe { self.core.free_sized(p, layout.size(), layout.align()) }
    }

    /// Resizes, in place when the block allows it.
    ///
    /// # Safety
    /// As `GlobalAlloc::realloc`: `p` allocated here with `layout`, `new_size > 0`.
    pub unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded.
        if unsafe { self.core.resize_in_place(p, new_size, layout.align()) } {
            // a small block whose class did not change, or a large extent resized in place
            // (the engine frees or takes pages; the layout's class for frees stays consistent
            // because large frees do not use the size)
            return p;
        }
        // SAFETY: alignment is unchanged and valid; size is non-zero.
        let nl = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        let n = self.alloc(nl);
        if !n.is_null() {
            // SAFETY: both blocks live, sizes bounded by each.
            unsafe {
                std::ptr::copy_nonoverlapping(p, n, layout.size().min(new_size));
                self.dealloc(p, layout);
            }
        }
        n
    }

    /// Usable size of a live block.
    ///
    /// # Safety
    /// `p` is a live block of this heap.
    pub unsafe fn usable_size(&self, p: *const u8) -> usize {
        // SAFETY: forwarded.
        unsafe { self.core.usable_size(p) }
    }

    /// Statistics (cheap).
    pub fn stats(&self) -> HeapStats {
        self.core.stats()
    }
}

impl Drop for VolatileHeap {
    fn drop(&mut self) {
        crate::heap::unregister_fork_region(self.base);
        self.core.unregister();
    }
}

// SAFETY: blocks returned are valid for the layout until deallocated; the heap outlives the
// borrow; zero-size requests get a dangling aligned pointer and are never passed to the engine.
unsafe impl allocator_api2::alloc::Allocator for &VolatileHeap {
    fn allocate(&self, layout: Layout) -> Result<NonNull<[u8]>, allocator_api2::alloc::AllocError> {
        if layout.size() == 0 {
            let p = layout.align() as *mut u8;
            return Ok(NonNull::slice_from_raw_parts(
                NonNull::new(p).ok_or(allocator_api2::alloc::AllocError)?,
                0,
            ));
        }
        let p = VolatileHeap::alloc(self, layout);
        NonNull::new(p)
            .map(|p| NonNull::slice_from_raw_parts(p, layout.size()))
            .ok_or(allocator_api2::alloc::AllocError)
    }

    fn allocate_zeroed(
        &self,
        layout: Layout,
    ) -> Result<NonNull<[u8]>, allocator_api2::alloc::AllocError> {
        if layout.size() == 0 {
            return self.allocate(layout);
        }
        let p = VolatileHeap::alloc_zeroed(self, layout);
        NonNull::new(p)
            .map(|p| NonNull::slice_from_raw_parts(p, layout.size()))
            .ok_or(allocator_api2::alloc::AllocError)
    }

    unsafe fn deallocate(&self, ptr: NonNull<u8>, layout: Layout) {
        if layout.size() != 0 {
            // SAFETY: the Allocator contract: `ptr` came from this allocator with `layout`.
            unsafe { VolatileHeap::dealloc(self, ptr.as_ptr(), layout) }
        }
    }

    unsafe fn grow(
        &self,
        ptr: NonNull<u8>,
        old: Layout,
        new: Layout,
    ) -> Result<NonNull<[u8]>, allocator_api2::alloc::AllocError> {
        if old.size() != 0 && new.align() == old.align() {
            // SAFETY: the Allocator contract for `ptr`/`old`; `new.size() >= old.size() > 0`.
            let p = unsafe { VolatileHeap::realloc(self, ptr.as_ptr(), old, new.size()) };
            return NonNull::new(p)
                .map(|p| NonNull::slice_from_raw_parts(p, new.size()))
                .ok_or(allocator_api2::alloc::AllocError);
        }
        let n = self.allocate(new)?;
        // SAFETY: both valid; old contents copied; then the old block is released.
        unsafe {
            std::ptr::copy_nonoverlapping(ptr.as_ptr(), n.as_ptr().cast::<u8>(), old.size());
            self.deallocate(ptr, old);
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::VolatileHeap;
    use std::alloc::Layout;

    #[test]
    fn large_alignments_hold_for_addresses_in_an_anonymous_heap() {
        let h = VolatileHeap::anonymous(8 << 20).unwrap();
        for shift in [13, 16, 20, 21] {
            let align = 1usize << shift;
            let l = Layout::from_size_align(10, align).unwrap();
            let p = h.alloc(l);
            assert!(!p.is_null(), "align {align}");
            assert_eq!(p as usize % align, 0, "align {align}");
            // SAFETY: allocated above with `l`.
            unsafe { h.dealloc(p, l) };
        }
    }
}
