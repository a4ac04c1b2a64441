//! A `#[global_allocator]` whose heap lives on persistent memory used as DRAM replacement.
//!
//! ```no_run
//! use pmem_alloc::global::PmemGlobalAlloc;
//! // Heap in an unlinked file under /mnt/pmem, 1 GiB to start; the environment may override.
//! #[global_allocator]
//! static GLOBAL: PmemGlobalAlloc = PmemGlobalAlloc::new().dir("/mnt/pmem").size(1 << 30);
//! fn main() {
//!     let v = vec![1u8; 1000]; // on PMEM
//!     println!("{}", GLOBAL.stats().unwrap());
//! }
//! ```
//!
//! # Configuration
//! The heap is created at the first allocation (the Rust runtime allocates before `main`), from
//! the const builder of the static, overridden by the environment:
//!
//! | variable | meaning |
//! |---|---|
//! | `PMEM_HEAP_DIR` | directory (a `-o dax` mount) for an unlinked heap file |
//! | `PMEM_HEAP_FILE` | heap file path (created; must not exist) |
//! | `PMEM_HEAP_DEVICE` | a device-DAX device (`/dev/daxN.M`), used whole |
//! | `PMEM_HEAP_SIZE` | initial size, bytes or with a `K`/`M`/`G`/`T` suffix (default 64M) |
//! | `PMEM_HEAP_MAX` | largest size the heap grows to (default 64 x size, at least 1G) |
//! | `PMEM_HEAP_QUIET` | `1`: do not print the notice below |
//!
//! **When nothing is configured** the heap uses anonymous memory (DRAM) through the same engine,
//! and says so once on stderr (`pmem-alloc: no PMEM_HEAP_DIR or PMEM_HEAP_FILE configured ...`),
//! so that a misconfigured deployment is visible rather than silently running from DRAM. If the
//! configured file cannot be created the process continues on the system allocator, also with
//! one line on stderr. Allocations made while the heap is being created, and by other threads
//! meanwhile, come from the system allocator and are returned to it: every free is routed by
//! address.

use crate::heap::HeapStats;
use crate::volatile::{Backing, VolatileHeap};
use std::alloc::{GlobalAlloc, Layout, System};
use std::path::PathBuf;
use std::sync::atomic::{AtomicPtr, AtomicU8, Ordering};

const UNINIT: u8 = 0;
const INITIALIZING: u8 = 1;
const READY: u8 = 2;
const FAILED: u8 = 3;

static STATE: AtomicU8 = AtomicU8::new(UNINIT);
static HEAP: AtomicPtr<VolatileHeap> = AtomicPtr::new(std::ptr::null_mut());

/// The global allocator. See the module documentation.
#[derive(Debug, Clone, Copy)]
pub struct PmemGlobalAlloc {
    dir: Option<&'static str>,
    file: Option<&'static str>,
    size: u64,
    max_size: u64,
    quiet: bool,
}

impl Default for PmemGlobalAlloc {
    fn default() -> Self {
        Self::new()
    }
}

/// Parses `123`, `64K`, `512M`, `2G`, `1T` (binary units).
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last()? {
        (i, 'k' | 'K') => (&s[..i], 1u64 << 10),
        (i, 'm' | 'M') => (&s[..i], 1 << 20),
        (i, 'g' | 'G') => (&s[..i], 1 << 30),
        (i, 't' | 'T') => (&s[..i], 1 << 40),
        _ => (s, 1),
    };
    num.trim().parse::<u64>().ok()?.checked_mul(mult)
}

impl PmemGlobalAlloc {
    /// Configuration from the environment only.
    pub const fn new() -> Self {
        PmemGlobalAlloc {
            dir: None,
            file: None,
            size: 64 << 20,
            max_size: 0,
            quiet: false,
        }
    }
    /// Heap file in this directory (unlinked at once).
    pub const fn dir(mut self, dir: &'static str) -> Self {
        self.dir = Some(dir);
        self
    }
    /// Heap file at this path.
    pub const fn file(mut self, path: &'static str) -> Self {
        self.file = Some(path);
        self
    }
    /// Initial size.
    pub const fn size(mut self, bytes: u64) -> Self {
        self.size = bytes;
        self
    }
    /// Growth limit.
    pub const fn max_size(mut self, bytes: u64) -> Self {
        self.max_size = bytes;
        self
    }
    /// No notice on stderr.
    pub const fn quiet(mut self) -> Self {
        self.quiet = true;
        self
    }

    /// The heap, once created (`None` before the first allocation or on failure).
    pub fn heap(&self) -> Option<&'static VolatileHeap> {
        let p = HEAP.load(Ordering::Acquire);
        // SAFETY: once published, the heap is leaked and lives for the rest of the process.
        (!p.is_null()).then(|| unsafe { &*p })
    }

    /// Heap statistics (`None` if the heap does not exist).
    pub fn stats(&self) -> Option<HeapStats> {
        self.heap().map(|h| h.stats())
    }

    #[inline]
    fn get(&self) -> Option<&'static VolatileHeap> {
        let p = HEAP.load(Ordering::Acquire);
        if !p.is_null() {
            // SAFETY: as in `heap`.
            return Some(unsafe { &*p });
        }
        self.init_slow()
    }

    #[cold]
    fn init_slow(&self) -> Option<&'static VolatileHeap> {
        if STATE
            .compare_exchange(UNINIT, INITIALIZING, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return None; // being created (maybe by this very thread), or failed: system allocator
        }
        // Everything allocated from here until READY comes from the system allocator.
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let quiet = self.quiet || env("PMEM_HEAP_QUIET").as_deref() == Some("1");
        let backing = if let Some(d) = env("PMEM_HEAP_DEVICE") {
            Backing::Device(PathBuf::from(d))
        } else if let Some(f) = env("PMEM_HEAP_FILE") {
            Backing::File(PathBuf::from(f))
        } else if let Some(d) = env("PMEM_HEAP_DIR") {
            Backing::Dir(PathBuf::from(d))
        } else if let Some(f) = self.file {
            Backing::File(PathBuf::from(f))
        } else if let Some(d) = self.dir {
            Backing::Dir(PathBuf::from(d))
        } else {
            if !quiet {
                eprintln!(
                    "pmem-alloc: no PMEM_HEAP_DIR, PMEM_HEAP_FILE or PMEM_HEAP_DEVICE configured: the global heap uses \
                     anonymous memory (DRAM). Set PMEM_HEAP_QUIET=1 to silence this notice."
                );
            }
            Backing::Anonymous
        };
        let size = env("PMEM_HEAP_SIZE")
            .and_then(|s| parse_size(&s))
            .unwrap_or(self.size);
        let max = env("PMEM_HEAP_MAX")
            .and_then(|s| parse_size(&s))
            .unwrap_or(self.max_size);
        match VolatileHeap::builder()
            .backing(backing.clone())
            .size(size)
            .max_size(max)
            .build()
        {
            Ok(h) => {
                let p = Box::into_raw(Box::new(h));
                HEAP.store(p, Ordering::Release);
                STATE.store(READY, Ordering::Release);
                // SAFETY: just published; leaked for the life of the process.
                Some(unsafe { &*p })
            }
            Err(e) => {
                eprintln!("pmem-alloc: cannot create the global heap ({backing:?}): {e}; using the system allocator");
                STATE.store(FAILED, Ordering::Release);
                None
            }
        }
    }
}

// SAFETY: every pointer returned is valid for its layout until freed; frees are routed to the
// allocator that produced the block by address (our heap's reservation is disjoint from
// anything the system allocator returns); the heap never allocates from the global allocator.
unsafe impl GlobalAlloc for PmemGlobalAlloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match self.get() {
            Some(h) => h.alloc(layout),
            // SAFETY: forwarded contract.
            None => unsafe { System.alloc(layout) },
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let h = HEAP.load(Ordering::Acquire);
        // SAFETY: a published heap is live forever; `owns` routes the block to its allocator.
        unsafe {
            if !h.is_null() && (*h).owns(ptr) {
                (*h).dealloc(ptr, layout)
            } else {
                System.dealloc(ptr, layout)
            }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        match self.get() {
            Some(h) => h.alloc_zeroed(layout),
            // SAFETY: forwarded contract.
            None => unsafe { System.alloc_zeroed(layout) },
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let h = HEAP.load(Ordering::Acquire);
        // SAFETY: as in `dealloc`; GlobalAlloc's realloc contract is forwarded.
        unsafe {
            if !h.is_null() && (*h).owns(ptr) {
                return (*h).realloc(ptr, layout, new_size);
            }
            if h.is_null() {
                return System.realloc(ptr, layout, new_size);
            }
            // a block from the system allocator (made during start-up): move it to the heap
            let nl = Layout::from_size_align_unchecked(new_size, layout.align());
            let n = (*h).alloc(nl);
            if !n.is_null() {
                std::ptr::copy_nonoverlapping(ptr, n, layout.size().min(new_size));
                System.dealloc(ptr, layout);
            }
            n
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_size;
    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("64K"), Some(64 << 10));
        assert_eq!(parse_size("2g"), Some(2 << 30));
        assert_eq!(parse_size(" 1T "), Some(1 << 40));
        assert_eq!(parse_size("x"), None);
        assert_eq!(parse_size(""), None);
        assert_eq!(parse_size("99999999999999T"), None);
    }
}
