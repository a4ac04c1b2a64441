//! Per-thread caches, thread ids and the registry of heaps (for thread-exit flushes and fork).
//!
//! Each thread gets a small integer id (1..MAX_THREADS) on its first allocation; every heap keeps
//! a cache slot per id at a fixed address in a lazily-faulted reservation, so the fast path is a
//! thread-local load, an index, and a pop or push. Zeroed memory is an empty cache.
//!
//! Invariants:
//! - only the thread that owns an id touches the slots of its caches, except the thread-exit
//!   flush (run by the exiting owner itself) and quiescent flushes (close, check);
//! - `count` is atomic (relaxed) only so that statistics may read it from other threads;
//! - blocks in a cache are "taken" in their run's bitmap: recovery after a crash finds them
//!   unreachable and frees them.

use crate::size_class::{class_size, NCLASSES};
use crate::sync::{AtomicU32, AtomicU64, Locked};
use std::cell::{Cell, UnsafeCell};
use std::sync::atomic::Ordering;

/// Most threads with a cache at once; further threads use the locked path.
pub(crate) const MAX_THREADS: usize = 1024;
/// Largest cache capacity of any class (after growth).
pub(crate) const MAX_CAP: usize = 1024;
/// Remote frees buffered per class before they go back to the bin together.
pub(crate) const REMOTE_CAP: usize = 32;
/// Bytes a grown cache of one class may hold.
const GROW_BYTES: usize = 64 << 10;
/// Most heaps with thread caches at once.
const MAX_HEAPS: usize = 64;
/// Thread id meaning "exiting or out of ids: no cache".
const NO_TID: u32 = u32::MAX;

/// Initial cache capacity of class `c` (bounded by bytes for big classes).
#[inline]
pub(crate) fn cap(c: usize) -> usize {
    match class_size(c) {
        0..=256 => 128,
        257..=1024 => 64,
        1025..=4096 => 32,
        4097..=8192 => 16,
        _ => 8,
    }
}

/// Largest capacity the cache of class `c` grows to: a thread whose cache overflows (it frees
/// more than the capacity in a row) gets a bigger one, doubling up to [`GROW_BYTES`] of blocks
/// (at most [`MAX_CAP`]), so that batch patterns stay in the cache instead of going through
/// the bin lock. Never shrinks; the bytes bound keeps a thread's cache small.
#[inline]
pub(crate) fn max_cap(c: usize) -> usize {
    (GROW_BYTES / class_size(c)).clamp(cap(c), MAX_CAP)
}

/// One thread's cache for one heap: per class, a stack of blocks in a slot array. The counts,
/// capacities and top blocks of all classes are packed together (a few cache lines) ahead of
/// the slot arrays, so that a workload touching many classes does not take a cache and TLB miss
/// per class to read a count, and a pop has its block without waiting for the slot array (it
/// reads the next top from there afterwards, off the critical path).
///
/// The cache never writes into a cached block: a use-after-free cannot corrupt it, and on
/// persistent memory freeing costs no media write.
#[repr(C)]
pub(crate) struct TCache {
    count: [AtomicU32; NCLASSES],
    /// Current capacity per class; 0 = not used yet (the initial [`cap`] on first use).
    cap: [AtomicU32; NCLASSES],
    /// Per class: remote frees buffered in `remote` (see [`TCache::push_remote`]).
    rcount: [AtomicU32; NCLASSES],
    /// Per class: the block on top of the stack (`slots[count - 1]` while `count > 0`), so
    /// that a pop has its block after one load of this small, always cached table.
    top: [UnsafeCell<*mut u8>; NCLASSES],
    slots: [UnsafeCell<[*mut u8; MAX_CAP]>; NCLASSES],
    remote: [UnsafeCell<[*mut u8; REMOTE_CAP]>; NCLASSES],
}

impl TCache {
    /// Pops the most recently pushed block of class `c`.
    ///
    /// # Safety
    /// `c < NCLASSES`.
    #[inline]
    pub(crate) unsafe fn pop(&self, c: usize) -> Option<*mut u8> {
        debug_assert!(c < NCLASSES);
        // SAFETY: `c < NCLASSES` (the caller's contract).
        let (count, top) = unsafe { (self.count.get_unchecked(c), self.top.get_unchecked(c)) };
        let n = count.load(Ordering::Relaxed);
        if n == 0 {
            return None;
        }
        count.store(n - 1, Ordering::Relaxed);
        // SAFETY: only the owning thread touches the cache (module invariant); `c < NCLASSES`;
        // the index is below `MAX_CAP` (masked). It is `n - 2`, the new top, when `n >= 2`; when
        // `n == 1` it reads a stale slot, never used: the count is 0 then.
        unsafe {
            let s = &*self.slots.get_unchecked(c).get();
            let p = *top.get();
            debug_assert_eq!(p, s[n as usize - 1]);
            *top.get() = *s.get_unchecked((n as usize).wrapping_sub(2) & (MAX_CAP - 1));
            Some(p)
        }
    }

    /// The current capacity of class `c` (set to the initial [`cap`] on first use).
    #[inline]
    pub(crate) fn capacity(&self, c: usize) -> usize {
        match self.cap[c].load(Ordering::Relaxed) {
            0 => {
                self.cap[c].store(cap(c) as u32, Ordering::Relaxed);
                cap(c)
            }
            k => k as usize,
        }
    }

    /// Doubles the capacity of class `c` up to [`max_cap`] (a cache not used yet gets its
    /// initial capacity); false if it is at the maximum already.
    pub(crate) fn grow(&self, c: usize) -> bool {
        let k = self.cap[c].load(Ordering::Relaxed) as usize;
        if k == 0 {
            self.cap[c].store(cap(c) as u32, Ordering::Relaxed);
            return true;
        }
        let m = max_cap(c);
        if k >= m {
            return false;
        }
        self.cap[c].store((k * 2).min(m) as u32, Ordering::Relaxed);
        true
    }

    /// Pushes unless full.
    ///
    /// # Safety
    /// `c < NCLASSES`.
    #[inline]
    pub(crate) unsafe fn push(&self, c: usize, p: *mut u8) -> bool {
        debug_assert!(c < NCLASSES);
        // SAFETY: `c < NCLASSES` (the caller's contract).
        let (count, cap) = unsafe { (self.count.get_unchecked(c), self.cap.get_unchecked(c)) };
        let n = count.load(Ordering::Relaxed);
        // a capacity of 0 (cache not used yet) sends the first free to the slow path, which
        // sets it: one load and compare here
        if n >= cap.load(Ordering::Relaxed) {
            return false;
        }
        debug_assert!((n as usize) < MAX_CAP);
        // SAFETY: owner-only access; `c < NCLASSES` and `n < cap <= MAX_CAP`.
        unsafe {
            *(*self.slots.get_unchecked(c).get()).get_unchecked_mut(n as usize) = p;
            *self.top.get_unchecked(c).get() = p;
        }
        count.store(n + 1, Ordering::Relaxed);
        true
    }

    /// Buffers a *remote* free (a block of a run that another thread's cache takes from)
    /// unless the buffer is full. These blocks are not reused by this thread: they go back to
    /// their bin together ([`TCache::drain_remote_with`]).
    #[inline]
    pub(crate) fn push_remote(&self, c: usize, p: *mut u8) -> bool {
        let n = self.rcount[c].load(Ordering::Relaxed);
        if n as usize >= REMOTE_CAP {
            return false;
        }
        // SAFETY: owner-only access (module invariant); `n < REMOTE_CAP`.
        unsafe { (*self.remote[c].get())[n as usize] = p };
        self.rcount[c].store(n + 1, Ordering::Relaxed);
        true
    }

    /// Hands every buffered remote free of class `c` to `give` and empties the buffer.
    pub(crate) fn drain_remote_with(&self, c: usize, give: impl FnOnce(&[*mut u8])) {
        let n = self.rcount[c].load(Ordering::Relaxed) as usize;
        if n == 0 {
            return;
        }
        // SAFETY: owner-only (or quiescent) access; indexes below `n <= REMOTE_CAP`.
        let s = unsafe { &*self.remote[c].get() };
        give(&s[..n]);
        self.rcount[c].store(0, Ordering::Relaxed);
    }

    /// Refills the empty cache of class `c`: `take` writes up to `want` blocks (at most the
    /// capacity) into the slots, in ascending address order, and returns how many. The lowest
    /// address is returned to the caller, the others cached so that later pops continue in
    /// address order.
    pub(crate) fn refill_with(
        &self,
        c: usize,
        want: usize,
        take: impl FnOnce(&mut [*mut u8]) -> usize,
    ) -> Option<*mut u8> {
        debug_assert_eq!(self.count[c].load(Ordering::Relaxed), 0);
        let want = want.min(self.capacity(c)).max(1);
        // SAFETY: owner-only access; the cache is empty, so the slots are free to overwrite.
        let s = unsafe { &mut *self.slots[c].get() };
        let got = take(&mut s[..want]);
        if got == 0 {
            return None;
        }
        s[..got].reverse();
        if got >= 2 {
            // SAFETY: owner-only access.
            unsafe { *self.top[c].get() = s[got - 2] };
        }
        self.count[c].store((got - 1) as u32, Ordering::Relaxed);
        Some(s[got - 1])
    }

    /// Hands the oldest `k` cached blocks of class `c` (at most all of them) to `give`, then
    /// drops them from the cache; returns how many. The newest stay, so the cached top does too.
    pub(crate) fn drain_with(&self, c: usize, k: usize, give: impl FnOnce(&[*mut u8])) -> usize {
        let n = self.count[c].load(Ordering::Relaxed) as usize;
        let k = n.min(k);
        if k == 0 {
            return 0;
        }
        // SAFETY: owner-only (or quiescent) access; indexes below `n`.
        let s = unsafe { &mut *self.slots[c].get() };
        give(&s[..k]);
        s.copy_within(k..n, 0);
        self.count[c].store((n - k) as u32, Ordering::Relaxed);
        k
    }

    /// Bytes held (for statistics; racy but atomic).
    pub(crate) fn cached_bytes(&self) -> u64 {
        (0..NCLASSES)
            .map(|c| {
                let n =
                    self.count[c].load(Ordering::Relaxed) + self.rcount[c].load(Ordering::Relaxed);
                n as u64 * class_size(c) as u64
            })
            .sum()
    }
}

thread_local! {
    static TID: Cell<u32> = const { Cell::new(0) };
    static EXIT: ExitGuard = const { ExitGuard };
}

/// The calling thread's id (assigning one on first use); `NO_TID` when none can be had.
#[inline]
pub(crate) fn current_tid() -> u32 {
    let t = TID.with(|t| t.get());
    if t != 0 {
        return t;
    }
    assign_tid()
}

struct IdPool {
    next: u32,
    free: [u32; MAX_THREADS],
    nfree: usize,
}

/// One bit per thread id, set while a thread holds the id: runs that an exited thread took
/// from are free for others to take from (see `HeapCore::pick_partial`).
static LIVE: [AtomicU64; MAX_THREADS / 64] = [const { AtomicU64::new(0) }; MAX_THREADS / 64];

/// Whether thread id `t` is held by a running thread.
#[inline]
pub(crate) fn tid_live(t: u32) -> bool {
    let t = t as usize;
    t < MAX_THREADS && LIVE[t / 64].load(Ordering::Relaxed) & (1 << (t % 64)) != 0
}

fn set_live(t: u32, live: bool) {
    let t = t as usize;
    if t < MAX_THREADS {
        let bit = 1u64 << (t % 64);
        if live {
            LIVE[t / 64].fetch_or(bit, Ordering::Relaxed);
        } else {
            LIVE[t / 64].fetch_and(!bit, Ordering::Relaxed);
        }
    }
}

static IDS: Locked<IdPool> = Locked::new_const(IdPool {
    next: 1,
    free: [0; MAX_THREADS],
    nfree: 0,
});

#[cold]
fn assign_tid() -> u32 {
    let id = {
        let mut ids = IDS.lock();
        if ids.nfree > 0 {
            ids.nfree -= 1;
            let n = ids.nfree;
            ids.free[n]
        } else if (ids.next as usize) < MAX_THREADS {
            ids.next += 1;
            ids.next - 1
        } else {
            NO_TID
        }
    };
    TID.with(|t| t.set(id));
    if id != NO_TID {
        set_live(id, true);
        // Registers the exit destructor (glibc's __cxa_thread_atexit_impl; no lock is held).
        let _ = EXIT.try_with(|_| ());
    }
    id
}

struct ExitGuard;

impl Drop for ExitGuard {
    fn drop(&mut self) {
        let t = TID.with(|t| t.replace(NO_TID));
        if t == 0 || t == NO_TID {
            return;
        }
        {
            let heaps = HEAPS.lock();
            for e in heaps.iter().flatten() {
                // SAFETY: registered heaps are live (they unregister under this lock before
                // they are dropped).
                unsafe { (e.1.flush)(e.0, t) };
            }
        }
        let mut ids = IDS.lock();
        set_live(t, false);
        let n = ids.nfree;
        ids.free[n] = t;
        ids.nfree += 1;
    }
}

/// Type-erased operations of a registered heap.
#[derive(Debug)]
pub(crate) struct HeapVTable {
    /// Flushes one thread's cache.
    pub(crate) flush: unsafe fn(usize, u32),
    /// Takes every lock of the heap (fork prepare).
    pub(crate) lock_all: unsafe fn(usize),
    /// Releases them (fork parent and child).
    pub(crate) unlock_all: unsafe fn(usize),
}

type Entry = Option<(usize, &'static HeapVTable)>;

static HEAPS: Locked<[Entry; MAX_HEAPS]> = Locked::new_const([None; MAX_HEAPS]);

/// Registers a heap so that exiting threads flush their caches into it. Returns false when the
/// registry is full (the heap then works without flushes at thread exit: cached blocks of exited
/// threads stay cached until close).
pub(crate) fn register_heap(addr: usize, vt: &'static HeapVTable) -> bool {
    install_atfork();
    let mut h = HEAPS.lock();
    for e in h.iter_mut() {
        if e.is_none() {
            *e = Some((addr, vt));
            return true;
        }
    }
    false
}

/// Runs `f` holding the registry lock, which exiting threads hold while they flush their caches
/// (so `f` may flush other threads' caches without racing an exiting owner).
pub(crate) fn with_registry_locked<R>(f: impl FnOnce() -> R) -> R {
    let _g = HEAPS.lock();
    f()
}

/// Removes a heap from the registry (before it is dropped).
pub(crate) fn unregister_heap(addr: usize) {
    let mut h = HEAPS.lock();
    for e in h.iter_mut() {
        if matches!(e, Some((a, _)) if *a == addr) {
            *e = None;
        }
    }
}

// ---------------------------------------------------------------------------------- fork

/// A file-backed volatile heap region: the fork child gets a private copy of it.
#[derive(Clone, Copy)]
struct ForkRegion {
    base: usize,
    len: usize,
    fd: i32,
    /// Bytes from `base` currently mapped from the file (grows with the heap).
    mapped: usize,
    /// During a fork: a memfd holding a copy of the mapped bytes, taken before the fork (-1: none).
    copy: i32,
}

static FORK_REGIONS: Locked<[Option<ForkRegion>; MAX_HEAPS]> = Locked::new_const([None; MAX_HEAPS]);
static ATFORK: std::sync::Once = std::sync::Once::new();
static IN_CHILD: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether this process is a fork child of a process that had volatile heaps (file-backed heaps
/// then grow with private memory instead of the shared file).
pub(crate) fn in_fork_child() -> bool {
    IN_CHILD.load(Ordering::Relaxed)
}

fn install_atfork() {
    ATFORK.call_once(|| {
        // SAFETY: the handlers are plain extern "C" functions that only take/release our own
        // locks and call mmap; registering them has no other precondition.
        unsafe {
            libc::pthread_atfork(Some(fork_prepare), Some(fork_parent), Some(fork_child));
        }
    });
}

/// Registers a file-backed heap region (`fd >= 0`, `mapped` bytes mapped from the file) for the
/// fork child's private copy, and installs the fork handlers. Registering a region again (same
/// `base`) updates its mapped size after growth.
pub(crate) fn register_fork_region(base: *mut u8, len: usize, fd: i32, mapped: usize) {
    install_atfork();
    if fd < 0 {
        return;
    }
    let mut r = FORK_REGIONS.lock();
    if let Some(f) = r.iter_mut().flatten().find(|f| f.base == base as usize) {
        f.mapped = mapped.min(f.len);
        return;
    }
    if let Some(slot) = r.iter_mut().find(|e| e.is_none()) {
        *slot = Some(ForkRegion {
            base: base as usize,
            len,
            fd,
            mapped: mapped.min(len),
            copy: -1,
        });
    }
}

/// Forgets a region (heap dropped).
pub(crate) fn unregister_fork_region(base: *mut u8) {
    let mut r = FORK_REGIONS.lock();
    for e in r.iter_mut() {
        if matches!(e, Some(f) if f.base == base as usize) {
            *e = None;
        }
    }
}

/// Copies `len` bytes at `base` into a new memfd (for the fork child); -1 on failure.
///
/// # Safety
/// `base..base+len` is mapped and readable.
unsafe fn copy_to_memfd(base: usize, len: usize) -> i32 {
    // SAFETY: plain syscalls on a fresh descriptor and a fresh private mapping of it; the source
    // range is readable per the contract.
    unsafe {
        let fd = libc::memfd_create(c"pmem-heap-fork".as_ptr(), libc::MFD_CLOEXEC);
        if fd < 0 {
            return -1;
        }
        if libc::ftruncate(fd, len as libc::off_t) != 0 {
            libc::close(fd);
            return -1;
        }
        let p = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd,
            0,
        );
        if p == libc::MAP_FAILED {
            libc::close(fd);
            return -1;
        }
        std::ptr::copy_nonoverlapping(base as *const u8, p.cast::<u8>(), len);
        libc::munmap(p, len);
        fd
    }
}

extern "C" fn fork_prepare() {
    // Lock order: regions, heap registry, ids, then every heap's bins and extents, so that no
    // lock is held by a thread that does not exist in the child.
    FORK_REGIONS.raw().lock();
    HEAPS.raw().lock();
    IDS.raw().lock();
    // SAFETY: we hold the registry lock, so the entries are live heaps.
    unsafe {
        for e in (*HEAPS.data_ptr()).iter().flatten() {
            (e.1.lock_all)(e.0);
        }
        // Snapshot every file-backed heap now, while its allocator is quiescent: after the fork
        // the parent goes on writing the shared file, and the child must not see that.
        for r in (*FORK_REGIONS.data_ptr()).iter_mut().flatten() {
            r.copy = copy_to_memfd(r.base, r.mapped);
        }
    }
}

fn release_all() {
    // SAFETY: the prepare handler took every lock released here, in this process.
    unsafe {
        for r in (*FORK_REGIONS.data_ptr()).iter_mut().flatten() {
            if r.copy >= 0 {
                libc::close(r.copy);
                r.copy = -1;
            }
        }
        for e in (*HEAPS.data_ptr()).iter().flatten() {
            (e.1.unlock_all)(e.0);
        }
        IDS.raw().unlock();
        HEAPS.raw().unlock();
        FORK_REGIONS.raw().unlock();
    }
}

extern "C" fn fork_parent() {
    release_all();
}

extern "C" fn fork_child() {
    IN_CHILD.store(true, Ordering::Relaxed);
    // Only the forking thread lives on in the child: runs the others took from are free to take.
    for w in &LIVE {
        w.store(0, Ordering::Relaxed);
    }
    if let Ok(me) = TID.try_with(|t| t.get()) {
        if me != 0 && me != NO_TID {
            set_live(me, true);
        }
    }
    // SAFETY: the child is single-threaded here and the prepare handler holds the region lock.
    unsafe {
        for r in (*FORK_REGIONS.data_ptr()).iter().flatten() {
            if r.copy >= 0 {
                // The child's heap becomes the snapshot taken before the fork, in a memfd that
                // takes the heap file's descriptor number, so that the engine's hole punching
                // (which zeroes free pages) acts on the child's copy, never on the parent's file.
                let p = libc::mmap(
                    r.base as *mut libc::c_void,
                    r.mapped,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED | libc::MAP_FIXED,
                    r.copy,
                    0,
                );
                if p != libc::MAP_FAILED && libc::dup3(r.copy, r.fd, libc::O_CLOEXEC) == r.fd {
                    continue;
                }
            }
            // No copy: a copy-on-write view of the file at the same address (the child's writes
            // stay in the child, but it sees pages the parent changes later until it writes
            // them itself).
            libc::mmap(
                r.base as *mut libc::c_void,
                r.mapped,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_FIXED,
                r.fd,
                0,
            );
        }
    }
    release_all();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zeroed_cache() -> Box<TCache> {
        let layout = std::alloc::Layout::new::<TCache>();
        // SAFETY: a non-zero size; all-zero bytes are an empty `TCache` (atomics, null
        // pointers), and the box frees it with the same layout.
        unsafe {
            let p = std::alloc::alloc_zeroed(layout).cast::<TCache>();
            assert!(!p.is_null());
            Box::from_raw(p)
        }
    }

    /// The cache against a `Vec` model: pops come back in LIFO order through pushes, refills
    /// and drains, so the cached top always equals the top slot. The cache never reads or
    /// writes the blocks, so the "blocks" here are made-up addresses.
    #[test]
    fn pops_follow_a_stack_model_through_refills_and_drains() {
        let tc = zeroed_cache();
        let c = 5;
        assert!(tc.grow(c)); // the initial capacity
        let mut model: Vec<*mut u8> = Vec::new();
        let mut next = 0x10_0000usize;
        let mut fresh = |n: usize| -> Vec<*mut u8> {
            (0..n)
                .map(|_| {
                    next += 16;
                    next as *mut u8
                })
                .collect()
        };
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for step in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            match x % 8 {
                // pop (refill when empty)
                0..=3 => {
                    // SAFETY: `c < NCLASSES`.
                    match unsafe { tc.pop(c) } {
                        Some(p) => assert_eq!(Some(p), model.pop(), "step {step}"),
                        None => {
                            assert!(model.is_empty(), "step {step}");
                            let want = 1 + (x >> 8) as usize % 40;
                            let blocks = fresh(want);
                            let got = tc.refill_with(c, want, |out| {
                                out.copy_from_slice(&blocks[..out.len()]);
                                out.len()
                            });
                            // the lowest address is returned, later pops go on upwards
                            assert_eq!(got, Some(blocks[0]));
                            model.extend(blocks[1..].iter().rev());
                        }
                    }
                }
                // push (drain the older half when full)
                4..=6 => {
                    let p = fresh(1)[0];
                    // SAFETY: `c < NCLASSES`.
                    if !unsafe { tc.push(c, p) } {
                        let half = tc.capacity(c) / 2;
                        let mut given = Vec::new();
                        assert_eq!(tc.drain_with(c, half, |b| given.extend_from_slice(b)), half);
                        assert_eq!(given, model.drain(..half).collect::<Vec<_>>());
                        // SAFETY: as above.
                        assert!(unsafe { tc.push(c, p) });
                    }
                    model.push(p);
                }
                // drain a few of the oldest
                _ => {
                    let k = (x >> 8) as usize % 5;
                    let mut given = Vec::new();
                    let n = tc.drain_with(c, k, |b| given.extend_from_slice(b));
                    assert_eq!(n, k.min(model.len()));
                    assert_eq!(given, model.drain(..n).collect::<Vec<_>>());
                }
            }
        }
    }
}
