//! `LD_PRELOAD` library: runs an unmodified program with its heap on persistent memory.
//!
//! ```text
//! PMEM_HEAP_DIR=/mnt/pmem LD_PRELOAD=libpmem_alloc_preload.so memcached ...
//! ```
//!
//! It interposes the C allocator (`malloc`, `free`, `calloc`, `realloc`, `reallocarray`,
//! `posix_memalign`, `aligned_alloc`, `memalign`, `valloc`, `pvalloc`, `malloc_usable_size`,
//! `free_sized`, `free_aligned_sized`) and jemalloc's non-standard API (`mallocx`, `rallocx`,
//! `xallocx`, `sallocx`, `dallocx`, `sdallocx`, `nallocx`, `mallctl`, `mallctlnametomib`,
//! `mallctlbymib`, `malloc_stats_print`), so that a program linked to jemalloc (Debian's
//! `redis-server`) never allocates from one allocator and frees through another.
//!
//! Every block comes from one [`pmem_alloc::volatile::VolatileHeap`] created at the first
//! allocation (see the crate README for the environment variables). Allocations made while that
//! heap is being created come from a small static bootstrap arena (never freed); the library's
//! own Rust allocations use glibc's allocator through `__libc_malloc`, which no C caller ever
//! sees, so there is no recursion and no `dlsym`. `free` routes by address: the heap's
//! reservation, the bootstrap arena, or (a block nobody here made) glibc's `__libc_free`.
//!
//! Fork: the engine's fork handlers give the child a private copy of the heap taken before the
//! fork (see `pmem_alloc::volatile`). Thread exit: the engine flushes the thread's caches.
//! A panic in an exported function aborts the process (they are `extern "C"`): none unwinds into
//! C.

use pmem_alloc::global::parse_size;
use pmem_alloc::size_class::{class_for_layout, class_size, PAGE};
use pmem_alloc::volatile::{Backing, VolatileHeap};
use std::alloc::{GlobalAlloc, Layout};
use std::ffi::{c_char, c_int, c_void, CStr};
use std::path::PathBuf;
use std::ptr::null_mut;
use std::sync::atomic::{AtomicPtr, AtomicU8, AtomicUsize, Ordering};

extern "C" {
    fn __libc_malloc(size: usize) -> *mut c_void;
    fn __libc_calloc(n: usize, size: usize) -> *mut c_void;
    fn __libc_realloc(p: *mut c_void, size: usize) -> *mut c_void;
    fn __libc_memalign(align: usize, size: usize) -> *mut c_void;
    fn __libc_free(p: *mut c_void);
}

/// The library's own Rust allocations: glibc's allocator, called by its internal names so that
/// they never come back through the interposed `malloc`.
struct LibcAlloc;

// SAFETY: glibc's allocator returns blocks valid for the requested size and alignment.
unsafe impl GlobalAlloc for LibcAlloc {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        // SAFETY: plain calls into glibc.
        unsafe {
            if l.align() <= 16 {
                __libc_malloc(l.size()).cast()
            } else {
                __libc_memalign(l.align(), l.size()).cast()
            }
        }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        if l.align() <= 16 {
            // SAFETY: as above.
            return unsafe { __libc_calloc(1, l.size()).cast() };
        }
        // SAFETY: as above; the block has `l.size()` bytes.
        unsafe {
            let p = self.alloc(l);
            if !p.is_null() {
                std::ptr::write_bytes(p, 0, l.size());
            }
            p
        }
    }
    unsafe fn dealloc(&self, p: *mut u8, _l: Layout) {
        // SAFETY: `p` came from glibc (GlobalAlloc contract).
        unsafe { __libc_free(p.cast()) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new_size: usize) -> *mut u8 {
        if l.align() <= 16 {
            // SAFETY: `p` came from glibc.
            return unsafe { __libc_realloc(p.cast(), new_size).cast() };
        }
        // SAFETY: GlobalAlloc contract; copy the smaller size, then free the old block.
        unsafe {
            let n = self.alloc(Layout::from_size_align_unchecked(new_size, l.align()));
            if !n.is_null() {
                std::ptr::copy_nonoverlapping(p, n, l.size().min(new_size));
                __libc_free(p.cast());
            }
            n
        }
    }
}

#[global_allocator]
static RUST_ALLOC: LibcAlloc = LibcAlloc;

// ------------------------------------------------------------------------- bootstrap arena

const ARENA_SIZE: usize = 1 << 20;

#[repr(C, align(4096))]
struct Arena(std::cell::UnsafeCell<[u8; ARENA_SIZE]>);
// SAFETY: disjoint ranges are handed out by an atomic bump pointer.
unsafe impl Sync for Arena {}

static ARENA: Arena = Arena(std::cell::UnsafeCell::new([0; ARENA_SIZE]));
static ARENA_NEXT: AtomicUsize = AtomicUsize::new(0);

fn arena_base() -> usize {
    ARENA.0.get() as usize
}

fn in_arena(p: *const c_void) -> bool {
    (p as usize).wrapping_sub(arena_base()) < ARENA_SIZE
}

/// A zero-filled block from the bootstrap arena (its size is stored in the 8 bytes before it).
fn arena_alloc(size: usize, align: usize) -> *mut c_void {
    let align = align.max(16);
    let mut cur = ARENA_NEXT.load(Ordering::Relaxed);
    loop {
        let start = (arena_base() + cur + 8).next_multiple_of(align) - arena_base();
        let Some(end) = start.checked_add(size) else {
            return null_mut();
        };
        if end > ARENA_SIZE {
            return null_mut();
        }
        match ARENA_NEXT.compare_exchange_weak(cur, end, Ordering::AcqRel, Ordering::Relaxed) {
            Ok(_) => {
                let p = (arena_base() + start) as *mut u8;
                // SAFETY: `start - 8 .. end` is ours alone (reserved by the bump above) and
                // lies inside the arena; `start >= 8` and is 8-aligned.
                unsafe { p.sub(8).cast::<usize>().write(size) };
                return p.cast();
            }
            Err(c) => cur = c,
        }
    }
}

/// # Safety
/// `p` is a block of the arena.
unsafe fn arena_size(p: *const c_void) -> usize {
    // SAFETY: `arena_alloc` wrote the size just before every block.
    unsafe { p.cast::<u8>().sub(8).cast::<usize>().read() }
}

// ------------------------------------------------------------------------------ the heap

const UNINIT: u8 = 0;
const INITIALIZING: u8 = 1;
const READY: u8 = 2;

static STATE: AtomicU8 = AtomicU8::new(UNINIT);
static HEAP: AtomicPtr<VolatileHeap> = AtomicPtr::new(null_mut());

#[inline]
fn heap() -> Option<&'static VolatileHeap> {
    let p = HEAP.load(Ordering::Acquire);
    if !p.is_null() {
        // SAFETY: published heaps are leaked: they live for the rest of the process.
        return Some(unsafe { &*p });
    }
    init_slow()
}

#[inline]
fn ready_heap() -> Option<&'static VolatileHeap> {
    let p = HEAP.load(Ordering::Acquire);
    // SAFETY: as in `heap`.
    (!p.is_null()).then(|| unsafe { &*p })
}

fn env(k: &str) -> Option<String> {
    std::env::var(k).ok().filter(|v| !v.is_empty())
}

fn say(msg: &str) {
    let s = format!("pmem-alloc-preload: {msg}\n");
    // SAFETY: writing a valid buffer to stderr.
    unsafe { libc::write(2, s.as_ptr().cast(), s.len()) };
}

#[cold]
fn init_slow() -> Option<&'static VolatileHeap> {
    if STATE
        .compare_exchange(UNINIT, INITIALIZING, Ordering::AcqRel, Ordering::Acquire)
        .is_err()
    {
        return None; // being created (perhaps by this thread): the bootstrap arena serves
    }
    let quiet = env("PMEM_HEAP_QUIET").as_deref() == Some("1");
    let pid = std::process::id().to_string();
    let backing = if let Some(d) = env("PMEM_HEAP_DEVICE") {
        Backing::Device(PathBuf::from(d))
    } else if let Some(f) = env("PMEM_HEAP_FILE") {
        Backing::File(PathBuf::from(f.replace("%p", &pid)))
    } else if let Some(d) = env("PMEM_HEAP_DIR") {
        Backing::Dir(PathBuf::from(d))
    } else {
        if !quiet {
            say("no PMEM_HEAP_DIR, PMEM_HEAP_FILE or PMEM_HEAP_DEVICE configured: the heap uses anonymous memory (DRAM); PMEM_HEAP_QUIET=1 silences this notice");
        }
        Backing::Anonymous
    };
    let size = env("PMEM_HEAP_SIZE")
        .and_then(|s| parse_size(&s))
        .unwrap_or(64 << 20);
    let max = env("PMEM_HEAP_MAX")
        .and_then(|s| parse_size(&s))
        .unwrap_or(0);
    let build = |b: Backing| {
        VolatileHeap::builder()
            .backing(b)
            .size(size)
            .max_size(max)
            .build()
    };
    let heap = match build(backing.clone()) {
        Ok(h) => Some(h),
        Err(e) if backing != Backing::Anonymous => {
            say(&format!(
                "cannot create the heap ({backing:?}): {e}; using anonymous memory (DRAM)"
            ));
            build(Backing::Anonymous).ok()
        }
        Err(e) => {
            say(&format!("cannot create the heap: {e}"));
            None
        }
    };
    let h = heap?; // STATE stays INITIALIZING: everything comes from the arena (then ENOMEM)
    let p = Box::into_raw(Box::new(h));
    HEAP.store(p, Ordering::Release);
    STATE.store(READY, Ordering::Release);
    // SAFETY: just published and leaked.
    Some(unsafe { &*p })
}

fn set_errno(e: c_int) {
    // SAFETY: errno is thread-local.
    unsafe { *libc::__errno_location() = e };
}

/// Allocates `size` bytes aligned to `align` (a power of two); `zero`: zero-filled.
#[inline]
fn alloc(size: usize, align: usize, zero: bool) -> *mut c_void {
    let size = size.max(1);
    let Ok(layout) = Layout::from_size_align(size, align) else {
        set_errno(libc::ENOMEM);
        return null_mut();
    };
    let p = match heap() {
        Some(h) if zero => h.alloc_zeroed(layout).cast(),
        Some(h) => h.alloc(layout).cast(),
        None => arena_alloc(size, align),
    };
    if p.is_null() {
        set_errno(libc::ENOMEM);
    }
    p
}

/// Usable size of any block handed out here (0 for null or unknown blocks).
///
/// # Safety
/// `p` is null or a live block.
unsafe fn usable(p: *const c_void) -> usize {
    if p.is_null() {
        return 0;
    }
    match ready_heap() {
        // SAFETY: a live block of the heap.
        Some(h) if h.owns(p.cast()) => unsafe { h.usable_size(p.cast()) },
        // SAFETY: a block of the arena.
        _ if in_arena(p) => unsafe { arena_size(p) },
        _ => 0,
    }
}

/// # Safety
/// `p` is null or a live block.
#[inline]
unsafe fn release(p: *mut c_void) {
    if p.is_null() {
        return;
    }
    match ready_heap() {
        // SAFETY: a live block of the heap, freed once (caller's contract).
        Some(h) if h.owns(p.cast()) => unsafe { h.core().free(p.cast()) },
        _ if in_arena(p) => {} // bootstrap blocks are never reused
        // SAFETY: not ours: the only other allocator a caller can reach is glibc's.
        _ => unsafe { __libc_free(p) },
    }
}

/// Resizes keeping `align`; `zero`: bytes past the old usable size are zero-filled.
///
/// # Safety
/// `p` is null or a live block.
unsafe fn resize(p: *mut c_void, size: usize, align: usize, zero: bool) -> *mut c_void {
    if p.is_null() {
        return alloc(size, align, zero);
    }
    let size = size.max(1);
    let heap = ready_heap().filter(|h| h.owns(p.cast()));
    if heap.is_none() && !in_arena(p) {
        // SAFETY: a glibc block (see `release`).
        return unsafe { __libc_realloc(p, size) };
    }
    // SAFETY: live block (contract).
    let old = unsafe { usable(p) };
    if let Some(h) = heap.filter(|_| (p as usize).is_multiple_of(align)) {
        // SAFETY: a live block of the heap, aligned to `align`.
        if unsafe { h.core().resize_in_place(p.cast(), size, align) } {
            if zero {
                // SAFETY: the block now has at least `usable(p)` bytes.
                unsafe {
                    let new = usable(p);
                    if new > old {
                        std::ptr::write_bytes(p.cast::<u8>().add(old), 0, new - old);
                    }
                }
            }
            return p;
        }
    }
    let n = alloc(size, align, zero);
    if !n.is_null() {
        // SAFETY: both blocks are live and at least `min(old, size)` bytes long.
        unsafe {
            std::ptr::copy_nonoverlapping(p.cast::<u8>(), n.cast::<u8>(), old.min(size));
            release(p);
        }
    }
    n
}

// ------------------------------------------------------------------------------- C API

/// `malloc(3)`.
#[no_mangle]
pub extern "C" fn malloc(size: usize) -> *mut c_void {
    alloc(size, 16, false)
}

/// `calloc(3)`.
#[no_mangle]
pub extern "C" fn calloc(n: usize, size: usize) -> *mut c_void {
    match n.checked_mul(size) {
        Some(t) => alloc(t, 16, true),
        None => {
            set_errno(libc::ENOMEM);
            null_mut()
        }
    }
}

/// `free(3)`.
///
/// # Safety
/// `p` is null or a live block of this allocator.
#[no_mangle]
pub unsafe extern "C" fn free(p: *mut c_void) {
    // SAFETY: forwarded.
    unsafe { release(p) }
}

/// C23 `free_sized`.
///
/// # Safety
/// As [`free`].
#[no_mangle]
pub unsafe extern "C" fn free_sized(p: *mut c_void, _size: usize) {
    // SAFETY: forwarded.
    unsafe { release(p) }
}

/// C23 `free_aligned_sized`.
///
/// # Safety
/// As [`free`].
#[no_mangle]
pub unsafe extern "C" fn free_aligned_sized(p: *mut c_void, _align: usize, _size: usize) {
    // SAFETY: forwarded.
    unsafe { release(p) }
}

/// `realloc(3)` (`realloc(p, 0)` frees `p` and returns null, as glibc does).
///
/// # Safety
/// `p` is null or a live block of this allocator.
#[no_mangle]
pub unsafe extern "C" fn realloc(p: *mut c_void, size: usize) -> *mut c_void {
    if size == 0 && !p.is_null() {
        // SAFETY: forwarded.
        unsafe { release(p) };
        return null_mut();
    }
    // SAFETY: forwarded.
    unsafe { resize(p, size, 16, false) }
}

/// `reallocarray(3)`.
///
/// # Safety
/// As [`realloc`].
#[no_mangle]
pub unsafe extern "C" fn reallocarray(p: *mut c_void, n: usize, size: usize) -> *mut c_void {
    match n.checked_mul(size) {
        // SAFETY: forwarded.
        Some(t) => unsafe { realloc(p, t) },
        None => {
            set_errno(libc::ENOMEM);
            null_mut()
        }
    }
}

/// `posix_memalign(3)`.
///
/// # Safety
/// `out` is valid for a pointer write.
#[no_mangle]
pub unsafe extern "C" fn posix_memalign(out: *mut *mut c_void, align: usize, size: usize) -> c_int {
    if out.is_null() {
        return libc::EINVAL;
    }
    if !align.is_power_of_two() || !align.is_multiple_of(std::mem::size_of::<usize>()) {
        return libc::EINVAL;
    }
    let p = alloc(size, align.max(16), false);
    if p.is_null() {
        return libc::ENOMEM;
    }
    // SAFETY: caller's contract.
    unsafe { *out = p };
    0
}

/// `aligned_alloc(3)` (glibc semantics: any power-of-two alignment).
#[no_mangle]
pub extern "C" fn aligned_alloc(align: usize, size: usize) -> *mut c_void {
    if !align.is_power_of_two() {
        set_errno(libc::EINVAL);
        return null_mut();
    }
    alloc(size, align.max(16), false)
}

/// `memalign(3)` (a non-power-of-two alignment is rounded up, as glibc does).
#[no_mangle]
pub extern "C" fn memalign(align: usize, size: usize) -> *mut c_void {
    match align.max(16).checked_next_power_of_two() {
        Some(a) => alloc(size, a, false),
        None => {
            set_errno(libc::EINVAL);
            null_mut()
        }
    }
}

/// `valloc(3)`.
#[no_mangle]
pub extern "C" fn valloc(size: usize) -> *mut c_void {
    alloc(size, PAGE, false)
}

/// `pvalloc(3)`.
#[no_mangle]
pub extern "C" fn pvalloc(size: usize) -> *mut c_void {
    match size.max(1).checked_next_multiple_of(PAGE) {
        Some(s) => alloc(s, PAGE, false),
        None => {
            set_errno(libc::ENOMEM);
            null_mut()
        }
    }
}

/// `malloc_usable_size(3)`.
///
/// # Safety
/// `p` is null or a live block of this allocator.
#[no_mangle]
pub unsafe extern "C" fn malloc_usable_size(p: *mut c_void) -> usize {
    // SAFETY: forwarded.
    unsafe { usable(p) }
}

// ------------------------------------------------------------------ jemalloc's extensions

const MALLOCX_ZERO: c_int = 0x40;

/// The alignment encoded in jemalloc `flags` (`MALLOCX_LG_ALIGN`), at least 16.
fn flag_align(flags: c_int) -> usize {
    let lg = (flags & 0x3f) as u32;
    if lg == 0 || lg >= usize::BITS {
        16
    } else {
        (1usize << lg).max(16)
    }
}

/// jemalloc `mallocx`.
#[no_mangle]
pub extern "C" fn mallocx(size: usize, flags: c_int) -> *mut c_void {
    alloc(size, flag_align(flags), flags & MALLOCX_ZERO != 0)
}

/// jemalloc `rallocx`.
///
/// # Safety
/// `p` is a live block of this allocator.
#[no_mangle]
pub unsafe extern "C" fn rallocx(p: *mut c_void, size: usize, flags: c_int) -> *mut c_void {
    // SAFETY: forwarded.
    unsafe { resize(p, size, flag_align(flags), flags & MALLOCX_ZERO != 0) }
}

/// jemalloc `xallocx`: resizes in place only; returns the resulting usable size.
///
/// # Safety
/// `p` is a live block of this allocator.
#[no_mangle]
pub unsafe extern "C" fn xallocx(p: *mut c_void, size: usize, extra: usize, flags: c_int) -> usize {
    if let Some(h) = ready_heap() {
        if h.owns(p.cast()) {
            let align = flag_align(flags);
            // SAFETY: a live block of the heap.
            unsafe {
                let old = usable(p);
                let want = size.saturating_add(extra).max(1);
                if !h.core().resize_in_place(p.cast(), want, align) {
                    let _ = h.core().resize_in_place(p.cast(), size.max(1), align);
                }
                let new = usable(p);
                if flags & MALLOCX_ZERO != 0 && new > old {
                    std::ptr::write_bytes(p.cast::<u8>().add(old), 0, new - old);
                }
                return new;
            }
        }
    }
    // SAFETY: forwarded.
    unsafe { usable(p) }
}

/// jemalloc `sallocx`.
///
/// # Safety
/// `p` is a live block of this allocator.
#[no_mangle]
pub unsafe extern "C" fn sallocx(p: *const c_void, _flags: c_int) -> usize {
    // SAFETY: forwarded.
    unsafe { usable(p) }
}

/// jemalloc `dallocx`.
///
/// # Safety
/// `p` is a live block of this allocator.
#[no_mangle]
pub unsafe extern "C" fn dallocx(p: *mut c_void, _flags: c_int) {
    // SAFETY: forwarded.
    unsafe { release(p) }
}

/// jemalloc `sdallocx`.
///
/// # Safety
/// `p` is a live block of this allocator.
#[no_mangle]
pub unsafe extern "C" fn sdallocx(p: *mut c_void, _size: usize, _flags: c_int) {
    // SAFETY: forwarded.
    unsafe { release(p) }
}

/// jemalloc `nallocx`: the usable size `mallocx(size, flags)` would return.
#[no_mangle]
pub extern "C" fn nallocx(size: usize, flags: c_int) -> usize {
    let align = flag_align(flags);
    match class_for_layout(size.max(1), align) {
        Some(c) => class_size(c),
        None => size.max(1).checked_next_multiple_of(PAGE).unwrap_or(0),
    }
}

/// jemalloc `mallctl`: answers `epoch`, `version`, `arenas.page`, `stats.allocated`,
/// `stats.active`, `stats.resident`, `stats.mapped`, `stats.retained`, `thread.tcache.flush`,
/// `background_thread` (false) and `opt.narenas`; `ENOENT` for anything else.
///
/// # Safety
/// The pointers follow jemalloc's `mallctl` contract.
#[no_mangle]
pub unsafe extern "C" fn mallctl(
    name: *const c_char,
    oldp: *mut c_void,
    oldlenp: *mut usize,
    _newp: *mut c_void,
    _newlen: usize,
) -> c_int {
    if name.is_null() {
        return libc::EINVAL;
    }
    // SAFETY: a NUL-terminated string (contract).
    let name = unsafe { CStr::from_ptr(name) }.to_bytes();
    let st = ready_heap().map(|h| h.stats()).unwrap_or_default();
    // SAFETY: `oldp`/`oldlenp` as jemalloc documents: write `T` if there is room for it.
    let put = |v: u64, bytes: usize| unsafe {
        if oldp.is_null() || oldlenp.is_null() {
            return 0;
        }
        if *oldlenp != bytes {
            return libc::EINVAL;
        }
        match bytes {
            8 => oldp.cast::<u64>().write_unaligned(v),
            4 => oldp.cast::<u32>().write_unaligned(v as u32),
            _ => oldp.cast::<u8>().write(v as u8),
        }
        0
    };
    match name {
        b"epoch" => put(1, 8),
        b"arenas.page" => put(PAGE as u64, std::mem::size_of::<usize>()),
        b"opt.narenas" | b"arenas.narenas" => put(1, 4),
        b"stats.allocated" => put(st.in_use, 8),
        b"stats.active" => put(st.in_use + st.cached, 8),
        b"stats.resident" | b"stats.mapped" => put(st.mapped, 8),
        b"stats.retained" => put(0, 8),
        b"background_thread" => put(0, 1),
        b"thread.tcache.flush" => 0,
        b"version" => {
            static V: &CStr = c"pmem-alloc-preload";
            // SAFETY: as above, for a pointer-sized value.
            unsafe {
                if !oldp.is_null() && !oldlenp.is_null() && *oldlenp == 8 {
                    oldp.cast::<*const c_char>().write_unaligned(V.as_ptr());
                }
            }
            0
        }
        _ => libc::ENOENT,
    }
}

/// jemalloc `mallctlnametomib`: always `ENOENT` (use `mallctl`).
#[no_mangle]
pub extern "C" fn mallctlnametomib(_n: *const c_char, _mib: *mut usize, _len: *mut usize) -> c_int {
    libc::ENOENT
}

/// jemalloc `mallctlbymib`: always `ENOENT`.
#[no_mangle]
pub extern "C" fn mallctlbymib(
    _mib: *const usize,
    _len: usize,
    _oldp: *mut c_void,
    _oldlenp: *mut usize,
    _newp: *mut c_void,
    _newlen: usize,
) -> c_int {
    libc::ENOENT
}

/// The callback type of `malloc_stats_print`.
pub type WriteCb = Option<unsafe extern "C" fn(*mut c_void, *const c_char)>;

/// jemalloc `malloc_stats_print`: one line of heap statistics, through `write_cb` (or stderr).
///
/// # Safety
/// `write_cb`, if given, accepts `cbopaque` and a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn malloc_stats_print(
    write_cb: WriteCb,
    cbopaque: *mut c_void,
    _opts: *const c_char,
) {
    let line = match ready_heap() {
        Some(h) => format!("pmem-alloc-preload: {}\n\0", h.stats()),
        None => "pmem-alloc-preload: no heap\n\0".to_string(),
    };
    match write_cb {
        // SAFETY: caller's contract; `line` is NUL-terminated.
        Some(cb) => unsafe { cb(cbopaque, line.as_ptr().cast()) },
        None => say(line.trim_end_matches(['\n', '\0'])),
    }
}
