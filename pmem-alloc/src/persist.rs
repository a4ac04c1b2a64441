//! Persistence policy: *whether* and *how* a range is made durable.
//!
//! Everything above this module (the heap engine, pools, collections) persists through the
//! [`Persist`] trait and never executes a flush instruction itself, so the same code runs
//!
//! - on real persistent memory ([`Hardware`] with a CPU flush method),
//! - on a page-cache mapping ([`Hardware`] with [`FlushMethod::Msync`]),
//! - as a volatile heap ([`NoPersist`], which compiles to nothing),
//! - under the crash simulator (`SimMedia` in the `sim` module, feature `crash-sim`).
//!
//! The contract of the trait is the media model of docs/format.md: data written to a range is
//! durable once the range has been *flushed* and a *drain* (fence) has followed. A flush alone
//! orders nothing; stores after a flush may or may not be included in it.

use crate::flush::{self, FlushMethod};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Copies of at least this many bytes use non-temporal stores (default 256, like libpmem).
static MOVNT_THRESHOLD: AtomicUsize = AtomicUsize::new(DEFAULT_MOVNT_THRESHOLD);

/// Default threshold above which [`Persist::memcpy_persist`] uses non-temporal stores.
pub const DEFAULT_MOVNT_THRESHOLD: usize = 256;

/// Environment variable read once by [`init_from_env`] to set the non-temporal threshold.
pub const MOVNT_THRESHOLD_ENV: &str = "PMEM_ALLOC_MOVNT_THRESHOLD";

/// Sets the size from which copies and fills use non-temporal stores (process-wide).
///
/// # Examples
/// ```
/// pmem_alloc::persist::set_movnt_threshold(1024);
/// assert_eq!(pmem_alloc::persist::movnt_threshold(), 1024);
/// pmem_alloc::persist::set_movnt_threshold(pmem_alloc::persist::DEFAULT_MOVNT_THRESHOLD);
/// ```
pub fn set_movnt_threshold(bytes: usize) {
    MOVNT_THRESHOLD.store(bytes, Ordering::Relaxed);
}

/// The current non-temporal threshold.
pub fn movnt_threshold() -> usize {
    MOVNT_THRESHOLD.load(Ordering::Relaxed)
}

/// Applies [`MOVNT_THRESHOLD_ENV`] if it is set to a number; returns the threshold in force.
pub fn init_from_env() -> usize {
    if let Some(v) = std::env::var(MOVNT_THRESHOLD_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
    {
        set_movnt_threshold(v);
    }
    movnt_threshold()
}

/// A persistence policy. See the module documentation for the media model.
///
/// # Safety (for implementors)
/// This trait is safe to implement; the *methods* are unsafe to call because they take raw
/// ranges. Implementations must not write to the ranges they are asked to flush.
pub trait Persist: Send + Sync + std::fmt::Debug {
    /// Starts writing back every cache line overlapping `addr..addr+len`. Not ordered: call
    /// [`Persist::drain`] before relying on it.
    ///
    /// # Safety
    /// The range must lie in memory mapped by this process (for the simulator: in its region).
    unsafe fn flush(&self, addr: *const u8, len: usize);

    /// Waits until every earlier flush and non-temporal store of this thread is durable: a
    /// store fence; under `msync`, the syncs of the ranges flushed since the last drain; or
    /// nothing where the flush method is itself ordered (`clflush`).
    fn drain(&self);

    /// `flush` + `drain`.
    ///
    /// # Safety
    /// As [`Persist::flush`].
    #[inline]
    unsafe fn persist(&self, addr: *const u8, len: usize) {
        // SAFETY: forwarded from the caller.
        unsafe { self.flush(addr, len) };
        self.drain();
    }

    /// Copies `len` bytes and flushes the destination, without the final drain.
    ///
    /// # Safety
    /// `src` valid for reads and `dst` for writes of `len` bytes, not overlapping; `dst` in
    /// mapped memory as for [`Persist::flush`].
    unsafe fn memcpy_nodrain(&self, dst: *mut u8, src: *const u8, len: usize) {
        // SAFETY: forwarded from the caller.
        unsafe {
            std::ptr::copy_nonoverlapping(src, dst, len);
            self.flush(dst, len);
        }
    }

    /// Fills `len` bytes with `byte` and flushes them, without the final drain.
    ///
    /// # Safety
    /// `dst` valid for writes of `len` bytes, in mapped memory.
    unsafe fn memset_nodrain(&self, dst: *mut u8, byte: u8, len: usize) {
        // SAFETY: forwarded from the caller.
        unsafe {
            std::ptr::write_bytes(dst, byte, len);
            self.flush(dst, len);
        }
    }

    /// Copies and makes the copy durable.
    ///
    /// # Safety
    /// As [`Persist::memcpy_nodrain`].
    #[inline]
    unsafe fn memcpy_persist(&self, dst: *mut u8, src: *const u8, len: usize) {
        // SAFETY: forwarded from the caller.
        unsafe { self.memcpy_nodrain(dst, src, len) };
        self.drain();
    }

    /// Fills and makes the fill durable.
    ///
    /// # Safety
    /// As [`Persist::memset_nodrain`].
    #[inline]
    unsafe fn memset_persist(&self, dst: *mut u8, byte: u8, len: usize) {
        // SAFETY: forwarded from the caller.
        unsafe { self.memset_nodrain(dst, byte, len) };
        self.drain();
    }

    /// Safe form of [`Persist::persist`] for memory the caller can borrow.
    #[inline]
    fn persist_bytes(&self, data: &[u8]) {
        // SAFETY: a live shared reference proves the range is mapped.
        unsafe { self.persist(data.as_ptr(), data.len()) }
    }

    /// Whether a completed persist makes data survive power loss (false for [`NoPersist`] and
    /// for [`FlushMethod::None`]).
    fn is_durable(&self) -> bool;
}

/// The policy for real mappings: flush instructions, the fence only (eADR), msync, or nothing,
/// chosen from the mapping kind and the process-wide [`FlushMethod`].
///
/// # Examples
/// ```
/// use pmem_alloc::persist::{Hardware, Persist};
/// use pmem_alloc::flush::FlushMethod;
/// let p = Hardware::new(FlushMethod::Clflush);
/// let data = [1u8; 100];
/// p.persist_bytes(&data); // clflush of two lines + sfence
/// assert!(p.is_durable());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hardware {
    method: FlushMethod,
    /// Under [`FlushMethod::Msync`]: the address range of one mapping, inside which two flushed
    /// ranges may be synced by one `msync` over both (and what lies between them); empty: only
    /// overlapping or adjacent pages are merged.
    span: (usize, usize),
}

impl Hardware {
    /// A policy with an explicit method. A CPU method the processor lacks is replaced by the
    /// best supported one (the instructions would fault otherwise).
    pub fn new(method: FlushMethod) -> Self {
        let f = flush::CpuFeatures::get();
        let method = if f.supports(method) {
            method
        } else {
            f.best_method()
        };
        Hardware {
            method,
            span: (0, 0),
        }
    }

    /// The same policy for flushes that lie in the one mapping `base..base + len`: under
    /// [`FlushMethod::Msync`] the ranges flushed before a drain are synced by one `msync` over
    /// all of them (its dirty pages are written back; clean pages between them cost no I/O),
    /// so a drain costs one file-system sync instead of one per flushed range. `base..base+len`
    /// must be one mapping of this process (pools pass their own; other methods ignore it).
    ///
    /// # Examples
    /// ```
    /// use pmem_alloc::flush::FlushMethod;
    /// use pmem_alloc::map::{MapOptions, Mapping};
    /// use pmem_alloc::persist::{msync_calls, Hardware, Persist};
    /// let path = std::env::temp_dir().join(format!("within-doc-{}", std::process::id()));
    /// let map = Mapping::create(&path, 1 << 20, &MapOptions::new()).unwrap();
    /// let p = Hardware::new(FlushMethod::Msync).within(map.as_ptr(), map.len());
    /// map.write_at(0, &[1]).unwrap();
    /// map.write_at(512 << 10, &[2]).unwrap();
    /// let before = msync_calls();
    /// // SAFETY: both ranges lie in `map`
    /// unsafe {
    ///     p.flush(map.as_ptr(), 1);
    ///     p.flush(map.as_ptr().add(512 << 10), 1);
    /// }
    /// p.drain(); // one msync over both pages
    /// assert_eq!(msync_calls() - before, 1);
    /// # drop(map);
    /// # std::fs::remove_file(&path).unwrap();
    /// ```
    pub fn within(self, base: *const u8, len: usize) -> Self {
        Hardware {
            span: (base as usize, base as usize + len),
            ..self
        }
    }

    /// The policy the process would use for synchronous (DAX) mappings.
    pub fn detected() -> Self {
        Hardware {
            method: FlushMethod::detected(),
            span: (0, 0),
        }
    }

    /// The method in use.
    pub fn method(&self) -> FlushMethod {
        self.method
    }
}

impl Persist for Hardware {
    #[inline]
    unsafe fn flush(&self, addr: *const u8, len: usize) {
        match self.method {
            // recorded for the next drain of this thread (see `msync_batch`)
            FlushMethod::Msync => msync_batch::add(addr as usize, len, self.span),
            // SAFETY: forwarded from the caller; `new` only admits supported methods.
            m => unsafe { flush::flush_lines(m, addr, len) },
        }
    }

    #[inline]
    fn drain(&self) {
        match self.method {
            FlushMethod::Clwb | FlushMethod::ClflushOpt | FlushMethod::FenceOnly => flush::sfence(),
            FlushMethod::Msync => msync_batch::drain(),
            // clflush is ordered with stores and other clflushes: nothing to wait for (the
            // non-temporal paths below fence themselves under this method)
            FlushMethod::Clflush | FlushMethod::None => {
                std::sync::atomic::compiler_fence(Ordering::SeqCst)
            }
        }
    }

    unsafe fn memcpy_nodrain(&self, dst: *mut u8, src: *const u8, len: usize) {
        // SAFETY: forwarded from the caller.
        unsafe { self.store_nodrain(dst, len, Store::Copy(src)) }
    }

    unsafe fn memset_nodrain(&self, dst: *mut u8, byte: u8, len: usize) {
        // SAFETY: forwarded from the caller.
        unsafe { self.store_nodrain(dst, len, Store::Set(byte)) }
    }

    fn is_durable(&self) -> bool {
        self.method != FlushMethod::None
    }
}

/// What [`Hardware::store_nodrain`] writes: a copy of `len` bytes from a source, or `len`
/// copies of a byte.
#[derive(Clone, Copy)]
enum Store {
    Copy(*const u8),
    Set(u8),
}

impl Store {
    /// Writes `len` bytes at `dst` with ordinary stores.
    ///
    /// # Safety
    /// `dst` must be valid for writes of `len` bytes; for [`Store::Copy`] the source must be
    /// valid for reads of `len` bytes and not overlap `dst`.
    #[inline(always)]
    unsafe fn write(self, dst: *mut u8, len: usize) {
        match self {
            // SAFETY: forwarded from the caller.
            Store::Copy(src) => unsafe { std::ptr::copy_nonoverlapping(src, dst, len) },
            // SAFETY: forwarded from the caller.
            Store::Set(byte) => unsafe { std::ptr::write_bytes(dst, byte, len) },
        }
    }

    /// Writes `len` bytes at `dst` with non-temporal stores (see [`flush::memcpy_nt`]).
    ///
    /// # Safety
    /// As [`Store::write`], and `method` must be supported by the CPU.
    #[inline(always)]
    unsafe fn write_nt(self, method: FlushMethod, dst: *mut u8, len: usize) {
        match self {
            // SAFETY: forwarded from the caller.
            Store::Copy(src) => unsafe { flush::memcpy_nt(method, dst, src, len) },
            // SAFETY: forwarded from the caller.
            Store::Set(byte) => unsafe { flush::memset_nt(method, dst, byte, len) },
        }
    }
}

impl Hardware {
    /// `memcpy_nodrain` and `memset_nodrain`: writes `what` at `dst` and flushes it (non-temporal
    /// stores from the threshold on), without the final drain.
    ///
    /// # Safety
    /// As [`Store::write`].
    #[inline(always)]
    unsafe fn store_nodrain(&self, dst: *mut u8, len: usize, what: Store) {
        match self.method {
            FlushMethod::Msync | FlushMethod::None => {
                // SAFETY: forwarded from the caller.
                unsafe {
                    what.write(dst, len);
                    self.flush(dst, len);
                }
            }
            m if len >= movnt_threshold() => {
                // SAFETY: forwarded from the caller; `m` is supported (see `new`).
                unsafe { what.write_nt(m, dst, len) };
                if m == FlushMethod::Clflush {
                    // `drain` is no fence under clflush, but non-temporal stores need one
                    flush::sfence();
                }
            }
            m => {
                // SAFETY: forwarded from the caller.
                unsafe {
                    what.write(dst, len);
                    flush::flush_lines(m, dst, len);
                }
            }
        }
    }
}

static MSYNC_ERRORS: AtomicUsize = AtomicUsize::new(0);
thread_local! {
    static MSYNC_CALLS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// How many `msync` calls [`Hardware`] policies have made on the calling thread (a drain
/// under [`FlushMethod::Msync`] makes one per group of pending ranges; see [`Hardware::within`]).
pub fn msync_calls() -> usize {
    MSYNC_CALLS.try_with(|c| c.get()).unwrap_or(0)
}

/// The ranges a thread has flushed under [`FlushMethod::Msync`] and not yet drained.
///
/// A flush records its pages here; the thread's next drain syncs them, merged: pages that
/// overlap or touch always, and any two ranges of the same mapping (the policy's `span`) into
/// one `msync` over both, so that a transaction commit costs one file-system sync per drain
/// rather than one per range. Durability is unchanged: the contract was always "flushed and
/// then drained", and each thread drains its own flushes (as a fence does). Eight ranges at
/// most wait; a ninth that merges with none syncs them first.
mod msync_batch {
    use super::{Ordering, MSYNC_CALLS, MSYNC_ERRORS};
    use std::cell::RefCell;

    const SLOTS: usize = 8;

    struct Pending {
        n: usize,
        /// Page-aligned `[start, end)` ranges and whether each lies inside its policy's span
        /// (then it may merge with another range of the same span).
        r: [(usize, usize, (usize, usize)); SLOTS],
    }

    thread_local! {
        // const-initialised, no destructor: usable inside allocators and at thread exit
        static PENDING: RefCell<Pending> = const {
            RefCell::new(Pending { n: 0, r: [(0, 0, (0, 0)); SLOTS] })
        };
    }

    pub(super) fn add(addr: usize, len: usize, span: (usize, usize)) {
        if len == 0 {
            return;
        }
        let ps = crate::sys::page_size();
        let (start, end) = (addr & !(ps - 1), (addr + len).next_multiple_of(ps));
        let inside = span.0 <= start && end <= span.1;
        let span = if inside { span } else { (0, 0) };
        let recorded = PENDING.try_with(|p| {
            let mut p = p.borrow_mut();
            let n = p.n;
            for e in &mut p.r[..n] {
                let touches = start <= e.1 && e.0 <= end;
                if touches || (span.1 != 0 && e.2 == span) {
                    e.0 = e.0.min(start);
                    e.1 = e.1.max(end);
                    return;
                }
            }
            if n == SLOTS {
                sync_all(&mut p);
            }
            let n = p.n;
            p.r[n] = (start, end, span);
            p.n = n + 1;
        });
        if recorded.is_err() {
            // the thread's storage is gone (thread exit): sync at once
            sync(start, end);
        }
    }

    pub(super) fn drain() {
        let _ = PENDING.try_with(|p| sync_all(&mut p.borrow_mut()));
    }

    fn sync_all(p: &mut Pending) {
        for &(start, end, _) in &p.r[..p.n] {
            sync(start, end);
        }
        p.n = 0;
    }

    fn sync(start: usize, end: usize) {
        let _ = MSYNC_CALLS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: the pages were flushed by a caller that guaranteed them mapped, and a merged
        // range lies inside one mapping's span; if the mapping has been unmapped since (a pool
        // closed by another thread), msync fails with ENOMEM and touches nothing. Failures
        // other than that (EIO from the file system) are counted so that pools can surface
        // them (see `msync_errors`).
        if let Err(e) = unsafe { crate::sys::msync(start as *const u8, end - start) } {
            if e.raw_os_error() != Some(libc::ENOMEM) {
                MSYNC_ERRORS.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// How many `msync` calls made by [`Hardware`] policies have failed in this process.
pub fn msync_errors() -> usize {
    MSYNC_ERRORS.load(Ordering::Relaxed)
}

/// The volatile policy: nothing is flushed, nothing is fenced (beyond a compiler fence).
/// Used by the volatile heap, where the mapping is only DRAM-replacement capacity.
///
/// # Examples
/// ```
/// use pmem_alloc::persist::{NoPersist, Persist};
/// NoPersist.persist_bytes(&[0u8; 8]);
/// assert!(!NoPersist.is_durable());
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NoPersist;

impl Persist for NoPersist {
    #[inline(always)]
    unsafe fn flush(&self, _addr: *const u8, _len: usize) {}
    #[inline(always)]
    fn drain(&self) {}
    fn is_durable(&self) -> bool {
        false
    }
}

/// `Persist` for pointers to a policy: every call goes to the policy pointed to.
macro_rules! forward_persist {
    ($($ptr:ty),*) => { $(
        impl<P: Persist + ?Sized> Persist for $ptr {
            #[inline]
            unsafe fn flush(&self, addr: *const u8, len: usize) {
                // SAFETY: forwarded from the caller.
                unsafe { (**self).flush(addr, len) }
            }
            #[inline]
            fn drain(&self) {
                (**self).drain()
            }
            unsafe fn memcpy_nodrain(&self, dst: *mut u8, src: *const u8, len: usize) {
                // SAFETY: forwarded from the caller.
                unsafe { (**self).memcpy_nodrain(dst, src, len) }
            }
            unsafe fn memset_nodrain(&self, dst: *mut u8, byte: u8, len: usize) {
                // SAFETY: forwarded from the caller.
                unsafe { (**self).memset_nodrain(dst, byte, len) }
            }
            fn is_durable(&self) -> bool {
                (**self).is_durable()
            }
        }
    )* };
}
forward_persist!(&P, std::sync::Arc<P>);
