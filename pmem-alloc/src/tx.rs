//! Transactions: all-or-nothing updates of pool memory, with an undo log per lane.
//!
//! [`Pool::transaction`] runs a closure with a [`Tx`]. Inside it the application
//!
//! - borrows objects for update with [`Tx::get_mut`] (the whole `T` is saved in the undo log
//!   first) or saves raw ranges with [`Tx::snapshot`] / [`Tx::snapshot_many`] before writing
//!   them through raw pointers;
//! - allocates with [`Tx::alloc`] or [`Tx::alloc_box`] (released again if the transaction
//!   aborts) and frees with [`Tx::free_box`] or the unsafe [`Tx::free`] (takes effect only when
//!   the transaction commits). A [`PBox`] owns its object and remembers its pool, so safe code
//!   frees only what it owns, and only in the right pool.
//!
//! Returning `Ok` commits; returning `Err`, or panicking, rolls every saved range back and
//! releases the transaction's allocations (a panic then resumes unwinding). A crash at any
//! instant leaves the state before or after the transaction: the next open rolls back every
//! uncommitted log before its recovery scan. A `pool.transaction` call inside a running
//! transaction of the same pool on the same thread joins it (flattened nesting): an inner
//! error or panic makes the whole transaction abort.
//!
//! # Log and ordering (docs/format.md has the byte layout)
//! A pool has up to 64 *lanes*, created on its first transaction; a transaction holds one lane
//! for its duration. A lane is a 64-byte header (`gen`, `ext`) and a 960-byte inline log; a
//! transaction that saves more moves its log to an overflow block from the heap (kept by the
//! lane for later transactions). An undo entry (64-bit checksum, offset, length, kind and lane, `gen`,
//! old bytes) is valid only while its `gen` equals the lane's.
//!
//! - **snapshot** (one call, any number of ranges): write the entries, flush them, *one fence*;
//!   only then may the ranges be modified. A range already saved in this transaction, or inside
//!   a block allocated by it, costs nothing.
//! - **commit**: flush every saved range and every block allocated in the transaction, *fence*;
//!   then `gen += 1` (one aligned 8-byte store), flush, *fence*: the commit point. Deferred
//!   frees happen after it. **2 fences**; a transaction that saved nothing costs at most one (0
//!   when it allocated nothing either).
//! - **abort** (error, panic, or recovery at open): copy the old bytes back in reverse order,
//!   flush, *fence*; `gen += 1`, flush, *fence*. Then the transaction's allocations are freed.
//! - **log growth** (rare; the overflow block is kept): copy the log to a larger zeroed block,
//!   flush, fence; store the new `ext` word, flush, fence; free the old overflow block.
//!
//! A transaction that updates *n* ranges therefore costs `n + 2` fences with one `get_mut` per
//! range, or 3 fences with one [`Tx::snapshot_many`] call. When the new bytes are known before
//! the update, [`Pool::staged`](crate::staged) does the same all-or-nothing, durable update with
//! one fence (a redo record in a lane).
//!
//! Memory whose old contents do not matter if the transaction aborts (a vector's slots beyond
//! its length, say) needs no undo entry either: [`Tx::mark_dirty`] registers such a range for
//! the commit's flush without logging it (no fence of its own). This is what makes a
//! persistent vector's push cost one snapshot (its length) rather than two.
//!
//! Why allocations need no log entry: allocating is volatile in this allocator (nothing about a
//! block is persisted), and after a crash the reachability scan frees every block that no
//! durable link reaches. A block allocated by an uncommitted transaction can only be reached
//! through ranges that transaction modified, which the rollback restores first, so the scan
//! frees it. At run time an abort frees the transaction's allocations from a volatile list.
//! Frees wait for the commit point for the converse reason: the unlink is durable first.
//!
//! # Typed access
//! [`Tx::get`] and [`Tx::get_mut`] hand out references whose lifetime is the transaction's:
//! they cannot leave the closure (its argument's lifetime is higher-ranked), so no reference
//! into the pool outlives the transaction or the pool. Only [`PSafe`] types are accessible,
//! and every pointer and range is checked: inside the pool, aligned, and outside the
//! allocator's metadata (page 0, zone headers, page maps, bitmaps) and the lane area. What is
//! not checked is that a pointer names a live object of its type (a [`PPtr`] is an offset; a
//! stale one reads whatever now occupies the block, which `PSafe` makes a logic error rather
//! than undefined behaviour; but a stale pointer to a block that another thread is allocating
//! and initialising at the same moment races with that thread's writes).
//! Every borrowed range is registered with the pool until its transaction ends; a range that
//! overlaps one borrowed mutably (by this or any other running transaction) is refused with
//! [`TxError::Borrowed`], so safe code cannot obtain aliasing `&mut` references, and two
//! threads cannot update the same object in concurrent transactions. Borrow each object once
//! per transaction and keep the reference.
//!
//! Isolation beyond that is the application's: a transaction does not lock what it reads
//! through raw pointers, and memory written through raw pointers must be saved with
//! [`Tx::snapshot`] first.
//!
//! # Examples
//! ```
//! use pmem_alloc::pool::{Pool, PoolOptions};
//! use pmem_alloc::pptr::{PPtr, PSafe};
//! use pmem_alloc::tx::TxError;
//!
//! #[repr(C)]
//! struct Root { count: u64, head: PPtr<Node> }
//! // SAFETY: repr(C), PSafe fields only.
//! unsafe impl PSafe for Root {}
//! #[repr(C)]
//! struct Node { value: u64, next: PPtr<Node> }
//! // SAFETY: repr(C), PSafe fields only.
//! unsafe impl PSafe for Node {}
//!
//! let dir = tempfile::tempdir()?;
//! let pool = Pool::create(&dir.path().join("tx.pool"), 8 << 20, &PoolOptions::default())?;
//! let root = pool.root::<Root>()?;
//! pool.transaction(|tx| {
//!     let r = tx.get_mut(root)?;
//!     let n = tx.alloc(Node { value: 7, next: r.head })?;
//!     r.head = n;
//!     r.count += 1;
//!     Ok::<_, TxError>(())
//! })?;
//! // an error rolls everything back
//! let res: Result<(), TxError> = pool.transaction(|tx| {
//!     tx.get_mut(root)?.count = 100;
//!     Err(TxError::Aborted)
//! });
//! assert!(res.is_err());
//! pool.transaction(|tx| {
//!     assert_eq!(tx.get(root)?.count, 1);
//!     Ok::<_, TxError>(())
//! })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! A reference cannot leave its transaction:
//! ```compile_fail,E0521
//! # use pmem_alloc::pool::{Pool, PoolOptions};
//! # use pmem_alloc::tx::TxError;
//! # let dir = tempfile::tempdir().unwrap();
//! # let pool = Pool::create(&dir.path().join("tx.pool"), 8 << 20, &PoolOptions::default()).unwrap();
//! let root = pool.root::<u64>().unwrap();
//! let mut keep: Option<&mut u64> = None;
//! pool.transaction(|tx| {
//!     keep = Some(tx.get_mut(root)?);
//!     Ok::<_, TxError>(())
//! }).unwrap();
//! ```

use crate::heap::HeapCore;
use crate::layout::{
    as_bytes, read_from, undo_checksum, LaneArea, LaneHeader, Le32, Le64, UndoEntry, HEADER_AREA,
    LANE_FEATURE_STAGED, LANE_HEADER, LANE_INLINE_LOG, LANE_MAGIC, LANE_SIZE, MAX_LANES,
    PPTR_OFFSET_MASK, UNDO_ENTRY_HEADER, UNDO_KIND_SNAPSHOT,
};
use crate::persist::{Hardware, Persist};
use crate::pool::{Pool, PoolError};
use crate::pptr::{PPtr, PSafe};
use crate::sync::{RangeLocks, WriteGate};
use std::cell::{Cell, RefCell, UnsafeCell};
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

/// Smallest overflow log.
const MIN_EXT: usize = 4096;
/// Largest undo log of one transaction.
const MAX_LOG: usize = 1 << 30;

/// Errors of transaction operations. A closure passed to [`Pool::transaction`] returns an error
/// type `E: From<TxError>` (`TxError` itself in simple cases), so `?` works on every [`Tx`]
/// method.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TxError {
    /// The pool has no space for an allocation, the undo log or the lanes.
    #[error("out of space in the pool")]
    OutOfSpace,
    /// Null, outside the pool, or misaligned for the type.
    #[error("pointer is null, outside the pool or misaligned")]
    InvalidPointer,
    /// The range overlaps a range already borrowed mutably (or, for a mutable borrow, borrowed
    /// at all) in this or another running transaction.
    #[error("the range is already borrowed in a running transaction")]
    Borrowed,
    /// One transaction saves more than the largest undo log (1 GiB).
    #[error("the transaction's undo log would exceed 1 GiB")]
    TooLarge,
    /// A nested transaction failed, so the whole (flattened) transaction was rolled back; or
    /// the application aborts with it.
    #[error("the transaction was aborted")]
    Aborted,
    /// A [`PBox`] of another pool.
    #[error("the box belongs to another pool")]
    WrongPool,
    /// The transaction lanes could not be created.
    #[error("cannot create the transaction lanes: {0}")]
    Lanes(String),
    /// An index or position outside a persistent collection (see [`crate::collections`]).
    #[error("index out of range")]
    OutOfRange,
    /// A persistent collection's stored header or contents are inconsistent (a length beyond
    /// the capacity, a buffer outside the pool, invalid UTF-8 in a `PString`, ...).
    #[error("a persistent collection is corrupt")]
    Corrupt,
}

// ------------------------------------------------------------------------- volatile lane state

/// The DRAM side of a lane: where its log is, and the running transaction's lists.
#[derive(Debug)]
pub(crate) struct LaneVol {
    /// The lane header in the pool.
    pub(crate) header: *mut u8,
    /// The log in use (inline or overflow) and its capacity.
    pub(crate) log: *mut u8,
    pub(crate) cap: usize,
    /// The overflow block, or null.
    ext: *mut u8,
    /// The lane's generation (mirror of the durable one).
    gen: u64,
    /// Bytes of the log used by the running transaction.
    used: usize,
    /// Saved ranges: (pool offset, length, position of the entry in the log).
    entries: Vec<(usize, usize, usize)>,
    /// Blocks allocated by the running transaction (address, usable size).
    allocs: Vec<(*mut u8, usize)>,
    /// Blocks to free at commit.
    frees: Vec<*mut u8>,
    /// Ranges written without an undo entry ([`Tx::mark_dirty`]): (pool offset, length),
    /// flushed at commit.
    dirty: Vec<(usize, usize)>,
    /// Ranges that held live data when the transaction began and that it released (a
    /// collection's popped slots): writing them later in the transaction needs an undo entry
    /// after all ([`Tx::prepare_unused`]).
    vacated: Vec<(usize, usize)>,
    /// Staging buffer for the entries of one snapshot call.
    stage: Vec<u8>,
    /// Ranges registered in the pool's borrow table.
    borrows: usize,
    /// The transaction is counted in `TxShared::gate` (see [`Tx::register`]).
    announced: bool,
    /// A nested transaction failed: the transaction must abort.
    poisoned: bool,
    /// The sequence number of the staged record the lane holds (see [`crate::staged`]), 0 if
    /// none.
    pub(crate) staged_seq: u64,
    /// The ranges that record writes in place (pool offsets), flushed when it is retired.
    pub(crate) staged: Vec<(usize, usize)>,
}

/// The lanes of an open pool.
#[derive(Debug)]
pub(crate) struct LaneTable {
    pub(crate) area_off: usize,
    pub(crate) nlanes: usize,
    pub(crate) vol: Box<[UnsafeCell<LaneVol>]>,
    /// The area has [`LANE_FEATURE_STAGED`]: staged writes use records in the lanes.
    pub(crate) staged: bool,
    /// Staged writes' state: last sequence number given out, retirement watermark, lanes
    /// holding records not yet retired, and the retirement lock (with its scratch list). A
    /// lane's `LaneVol` belongs to the thread holding its busy bit, or, while the lane holds a
    /// staged record (published in `pending` with release ordering), to the retirer under
    /// `retire_lock`.
    pub(crate) seq: AtomicU64,
    pub(crate) retired: AtomicU64,
    pub(crate) pending: AtomicU64,
    pub(crate) retire_lock: Mutex<Vec<(usize, usize)>>,
    /// Lane 0's `retired` word in the pool.
    pub(crate) retired_word: *mut u8,
}

impl LaneTable {
    /// The lanes on which a staged write may be on its fast path: reserved and not holding a
    /// published record (a writer reserves its lane before it enters the gate, and leaves the
    /// gate before it publishes the lane in `pending`, with release ordering).
    fn maybe_writing(&self, busy: &AtomicU64) -> u64 {
        busy.load(Ordering::Relaxed) & !self.pending.load(Ordering::Acquire)
    }
}

#[derive(Clone, Copy, Debug)]
struct Borrow {
    start: usize,
    end: usize,
    lane: usize,
    mutable: bool,
}

/// Per-pool transaction state (volatile).
#[derive(Debug, Default)]
pub(crate) struct TxShared {
    table: OnceLock<LaneTable>,
    create: Mutex<()>,
    busy: AtomicU64,
    borrows: Mutex<Vec<Borrow>>,
    /// Staged writes on their fast path against transactions that borrow (counts the running
    /// transactions that have registered, or are registering, borrows).
    pub(crate) gate: WriteGate,
    /// Serialise staged writes whose ranges share pages (in sequence order).
    pub(crate) ranges: RangeLocks,
}

thread_local! {
    /// Running outermost transactions of this thread: (pool's `TxShared` address, lane).
    static ACTIVE: RefCell<Vec<(usize, usize)>> = const { RefCell::new(Vec::new()) };
    /// The lane this thread used last (tried first).
    static HINT: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// Whether this thread runs a transaction of `pool`.
pub(crate) fn in_transaction<P: Persist + 'static>(pool: &Pool<P>) -> bool {
    active_lane(pool.tx_shared() as *const TxShared as usize).is_some()
}

fn active_lane(key: usize) -> Option<usize> {
    ACTIVE.with(|a| {
        a.borrow()
            .iter()
            .rev()
            .find(|(k, _)| *k == key)
            .map(|&(_, l)| l)
    })
}

impl TxShared {
    pub(crate) fn table(&self) -> Option<&LaneTable> {
        self.table.get()
    }

    pub(crate) fn install(&self, t: LaneTable) {
        let _ = self.table.set(t);
    }

    /// Reserves a free lane, waiting while none is. `stuck` runs now and then while waiting
    /// (a staged writer retires records there, which frees lanes).
    pub(crate) fn acquire(&self, nlanes: usize, stuck: &dyn Fn()) -> usize {
        let all = if nlanes == 64 {
            u64::MAX
        } else {
            (1u64 << nlanes) - 1
        };
        let hint = HINT.with(Cell::get);
        let mut spins = 0u32;
        loop {
            let cur = self.busy.load(Ordering::Relaxed);
            let free = !cur & all;
            if free != 0 {
                let lane = if hint < nlanes && free & (1 << hint) != 0 {
                    hint
                } else {
                    free.trailing_zeros() as usize
                };
                if self
                    .busy
                    .compare_exchange_weak(
                        cur,
                        cur | 1 << lane,
                        // a borrower that reads `busy` after its gate fence sees the bit of
                        // a writer whose gate fence came first (sync/gate.rs)
                        Ordering::AcqRel,
                        Ordering::Relaxed,
                    )
                    .is_ok()
                {
                    HINT.with(|h| h.set(lane));
                    return lane;
                }
                continue;
            }
            // every lane is in use: wait for one
            spins += 1;
            if spins.is_multiple_of(64) {
                stuck();
            }
            if spins < 64 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
    }

    pub(crate) fn release_mask(&self, mask: u64) {
        self.busy.fetch_and(!mask, Ordering::Release);
    }

    fn release(&self, lane: usize) {
        self.busy.fetch_and(!(1u64 << lane), Ordering::Release);
    }

    fn lock_borrows(&self) -> std::sync::MutexGuard<'_, Vec<Borrow>> {
        self.borrows.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers `ranges` (address, length) as borrowed mutably by the staged write that
    /// holds lane `lane`, or fails with [`TxError::Borrowed`] (registering nothing) if one
    /// overlaps a range borrowed by a running transaction. Undone by [`Self::unborrow_staged`].
    pub(crate) fn borrow_staged(
        &self,
        lane: usize,
        ranges: impl Iterator<Item = (usize, usize)> + Clone,
    ) -> Result<(), TxError> {
        let mut b = self.lock_borrows();
        for (start, len) in ranges.clone() {
            let end = start + len;
            if b.iter().any(|o| o.start < end && start < o.end) {
                return Err(TxError::Borrowed);
            }
        }
        b.extend(ranges.map(|(start, len)| Borrow {
            start,
            end: start + len,
            lane: STAGED_BORROW + lane,
            mutable: true,
        }));
        Ok(())
    }

    /// Removes the ranges registered by [`Self::borrow_staged`] for `lane`.
    pub(crate) fn unborrow_staged(&self, lane: usize) {
        self.lock_borrows()
            .retain(|o| o.lane != STAGED_BORROW + lane);
    }
}

/// The `lane` of borrows registered by a staged write (plus its lane index): distinct from
/// every transaction's lane.
const STAGED_BORROW: usize = 1 << 16;

fn ext_word(off: usize, cap: usize) -> u64 {
    (cap.trailing_zeros() as u64) << 48 | off as u64
}

/// Decodes and validates a lane's `ext` word: (offset, capacity) of an allocated block.
fn decode_ext<P: Persist + 'static>(
    core: &HeapCore<P>,
    word: u64,
    pool_size: usize,
) -> Result<Option<(usize, usize)>, PoolError> {
    if word == 0 {
        return Ok(None);
    }
    let shift = word >> 48;
    let off = (word & PPTR_OFFSET_MASK) as usize;
    let bad = PoolError::Lanes("a lane's overflow log is invalid");
    if !(12..=30).contains(&shift) {
        return Err(bad);
    }
    let cap = 1usize << shift;
    if off < HEADER_AREA || off.checked_add(cap).is_none_or(|e| e > pool_size) {
        return Err(bad);
    }
    match core.block_at(off) {
        Some((p, size, _, _)) if p == core.base().wrapping_add(off) && size >= cap => {
            Ok(Some((off, cap)))
        }
        _ => Err(bad),
    }
}

/// Moves a lane's log to an overflow block of at least `need` bytes (two fences); the used
/// part of the log is copied.
#[cold]
pub(crate) fn grow_log<P: Persist + 'static>(
    pool: &Pool<P>,
    v: &mut LaneVol,
    need: usize,
) -> Result<(), TxError> {
    if need > MAX_LOG {
        return Err(TxError::TooLarge);
    }
    let cap = need.next_power_of_two().max(MIN_EXT);
    let core = pool.heap();
    let p = core.alloc(cap, 64);
    if p.is_null() {
        return Err(TxError::OutOfSpace);
    }
    let pers = pool.persister();
    // Ordering: the copy (and zeros: no stale entry can follow the last one) is durable
    // before the lane header names the block; the old block is freed after that.
    // SAFETY: `p` is a fresh block of `cap >= used` bytes; the old log holds `used` bytes.
    unsafe {
        std::ptr::copy_nonoverlapping(v.log, p, v.used);
        std::ptr::write_bytes(p.add(v.used), 0, cap - v.used);
        pers.flush(p, cap);
    }
    pers.drain();
    // SAFETY: the `ext` word of the lane header (8-byte aligned, inside the lane area).
    unsafe {
        store_u64(
            v.header.add(8),
            ext_word(p as usize - pool.base() as usize, cap),
        );
        pers.persist(v.header.add(8), 8);
    }
    if !v.ext.is_null() {
        // SAFETY: the old overflow block is a live block of this pool no longer named.
        unsafe { core.free(v.ext) };
    }
    v.ext = p;
    v.log = p;
    v.cap = cap;
    Ok(())
}

/// One valid entry of a log found by [`scan_log`].
struct Found {
    off: usize,
    len: usize,
    pos: usize,
}

/// The valid entries of a lane log (`gen` and `lane` match, checksum right, range inside the
/// pool), from the start up to the first entry that is not.
///
/// # Safety
/// `log..log+cap` is mapped and not written concurrently.
unsafe fn scan_log(log: *const u8, cap: usize, gen: u64, lane: usize, pool: usize) -> Vec<Found> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos + UNDO_ENTRY_HEADER <= cap {
        // SAFETY: inside the log (caller's contract).
        let hdr_bytes = unsafe { std::slice::from_raw_parts(log.add(pos), UNDO_ENTRY_HEADER) };
        let Some(e) = read_from::<UndoEntry>(hdr_bytes) else {
            break;
        };
        let len = e.len.get() as usize;
        let off = e.off.get() as usize;
        if e.gen.get() != gen
            || e.kind.get() != entry_kind(lane)
            || UndoEntry::footprint(len) > cap - pos
            || off < HEADER_AREA
            || off.checked_add(len).is_none_or(|end| end > pool)
        {
            break;
        }
        // SAFETY: the entry lies inside the log (checked just above).
        let covered =
            unsafe { std::slice::from_raw_parts(log.add(pos + 8), UndoEntry::footprint(len) - 8) };
        if e.checksum.get() != undo_checksum(covered) {
            break;
        }
        out.push(Found { off, len, pos });
        pos += UndoEntry::footprint(len);
    }
    out
}

fn entry_kind(lane: usize) -> u32 {
    UNDO_KIND_SNAPSHOT | (lane as u32) << 16
}

/// Opens the lane area at `area_off` (from the state slot): validates it, rolls back every
/// uncommitted log (durably), replays the staged records not yet retired (durably), and
/// returns the lane table, the number of lanes rolled back and the number of records
/// replayed. Runs at open, after the page-map walk and before the recovery scan.
pub(crate) fn open_lanes<P: Persist + 'static>(
    core: &HeapCore<P>,
    pool_size: usize,
    area_off: usize,
) -> Result<(LaneTable, usize, usize), PoolError> {
    let base = core.base();
    if area_off < HEADER_AREA || area_off + 64 > pool_size || !area_off.is_multiple_of(64) {
        return Err(PoolError::Lanes("the lane area lies outside the pool"));
    }
    let area = base.wrapping_add(area_off);
    // SAFETY: inside the pool (checked).
    let hdr: LaneArea =
        read_from(unsafe { std::slice::from_raw_parts(area as *const u8, 64) }).expect("64 B");
    if !hdr.valid() {
        return Err(PoolError::Lanes("the lane area header is invalid"));
    }
    let nlanes = hdr.nlanes.get() as usize;
    let bytes = LaneArea::bytes(nlanes);
    if area_off + bytes > pool_size {
        return Err(PoolError::Lanes("the lane area lies outside the pool"));
    }
    match core.block_at(area_off) {
        Some((p, size, _, _)) if p == area && size >= bytes => {}
        _ => return Err(PoolError::Lanes("the lane area is not an allocated block")),
    }
    let pers = core.persister();
    let mut rolled = 0;
    let mut vol = Vec::with_capacity(nlanes);
    for lane in 0..nlanes {
        let lh = area.wrapping_add(64 + lane * LANE_SIZE);
        // SAFETY: lane headers lie inside the validated area.
        let h: LaneHeader =
            read_from(unsafe { std::slice::from_raw_parts(lh, LANE_HEADER) }).expect("64 B");
        let mut gen = h.gen.get();
        let (log, cap, ext) = match decode_ext(core, h.ext.get(), pool_size)? {
            Some((off, cap)) => {
                let p = base.wrapping_add(off);
                (p, cap, p)
            }
            None => (
                lh.wrapping_add(LANE_HEADER),
                LANE_INLINE_LOG,
                std::ptr::null_mut(),
            ),
        };
        // SAFETY: the log is inside the pool; open is single-threaded.
        let found = unsafe { scan_log(log, cap, gen, lane, pool_size) };
        if !found.is_empty() {
            for f in found.iter().rev() {
                // SAFETY: the entry's data is inside the log and its range inside the pool
                // (checked by scan_log); they do not overlap (the log is its own block).
                unsafe {
                    let dst = base.wrapping_add(f.off);
                    std::ptr::copy(log.add(f.pos + UNDO_ENTRY_HEADER), dst, f.len);
                    pers.flush(dst, f.len);
                }
            }
            pers.drain();
            gen += 1;
            // SAFETY: the lane header's first word: 8-byte aligned (the area is 64-byte aligned,
            // checked above, and lanes are 1024-byte multiples after its 64-byte header).
            unsafe { store_u64(lh, gen) };
            // SAFETY: inside the pool.
            unsafe { pers.persist(lh, 8) };
            rolled += 1;
        }
        vol.push(UnsafeCell::new(LaneVol {
            header: lh,
            log,
            cap,
            ext,
            gen,
            used: 0,
            entries: Vec::new(),
            allocs: Vec::new(),
            frees: Vec::new(),
            dirty: Vec::new(),
            vacated: Vec::new(),
            stage: Vec::new(),
            borrows: 0,
            announced: false,
            poisoned: false,
            staged_seq: 0,
            staged: Vec::new(),
        }));
    }
    // lane 0's `retired` word: the third word of its header
    let retired_word = area.wrapping_add(64 + 16);
    let staged = crate::staged::enabled(hdr.features.get());
    let (watermark, replayed) = if staged {
        let logs: Vec<(*mut u8, usize)> = vol
            .iter_mut()
            .map(|v| (v.get_mut().log, v.get_mut().cap))
            .collect();
        // SAFETY: the logs and lane 0's header lie inside the validated area or are validated
        // overflow blocks; open is single-threaded.
        unsafe { crate::staged::replay(core, pool_size, (area_off, bytes), &logs, retired_word)? }
    } else {
        (0, 0)
    };
    Ok((
        LaneTable {
            area_off,
            nlanes,
            vol: vol.into_boxed_slice(),
            staged,
            seq: AtomicU64::new(watermark),
            retired: AtomicU64::new(watermark),
            pending: AtomicU64::new(0),
            retire_lock: Mutex::new(Vec::new()),
            retired_word,
        },
        rolled,
        replayed,
    ))
}

/// Marks the lane area and every overflow log as allocated during recovery, *without* scanning
/// them (old bytes in a log must not keep dead blocks alive). Returns the blocks marked.
pub(crate) fn mark_lanes<P: Persist + 'static>(core: &HeapCore<P>, t: &LaneTable) -> usize {
    let mut n = 0;
    let base = core.base();
    let mut mark = |p: *mut u8| {
        if let Some((_, _, head, idx)) = core.block_at(p as usize - base as usize) {
            n += core.mark(head, idx) as usize;
        }
    };
    mark(base.wrapping_add(t.area_off));
    for v in t.vol.iter() {
        // SAFETY: open is single-threaded; no transaction runs yet.
        let v = unsafe { &*v.get() };
        if !v.ext.is_null() {
            mark(v.ext);
        }
    }
    n
}

/// # Safety
/// `p` is 8-byte aligned, inside the pool, and not accessed concurrently.
pub(crate) unsafe fn store_u64(p: *mut u8, v: u64) {
    // SAFETY: caller's contract; an aligned 8-byte store is failure-atomic.
    unsafe { (*(p as *const AtomicU64)).store(v.to_le(), Ordering::Release) }
}

/// Lanes for a pool of `pool_size` bytes: one per 64 KiB, between 4 and 64.
fn lanes_for(pool_size: usize) -> usize {
    (pool_size / (64 << 10)).clamp(4, MAX_LANES)
}

impl<P: Persist + 'static> Pool<P> {
    /// The lane table, created (durably) on first use.
    pub(crate) fn lanes(&self) -> Result<&LaneTable, TxError> {
        let sh = self.tx_shared();
        if let Some(t) = sh.table() {
            return Ok(t);
        }
        let _g = sh.create.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = sh.table() {
            return Ok(t);
        }
        let core = self.heap();
        let nlanes = lanes_for(self.size());
        let bytes = LaneArea::bytes(nlanes);
        let p = core.alloc(bytes, 64);
        if p.is_null() {
            return Err(TxError::OutOfSpace);
        }
        let mut a = LaneArea {
            magic: LANE_MAGIC,
            nlanes: Le32::new(nlanes as u32),
            lane_size: Le32::new(LANE_SIZE as u32),
            features: Le64::new(LANE_FEATURE_STAGED),
            ..LaneArea::default()
        };
        a.seal();
        // Ordering: the zeroed area with its header and lane generations is durable before the
        // state slot names it (a crash in between leaves an unreachable block, freed by
        // recovery).
        // SAFETY: `p` is a fresh block of at least `bytes` bytes inside the pool.
        unsafe {
            std::ptr::write_bytes(p, 0, bytes);
            std::ptr::copy_nonoverlapping(as_bytes(&a).as_ptr(), p, 64);
            for lane in 0..nlanes {
                let h = LaneHeader {
                    gen: Le64::new(1),
                    ..LaneHeader::default()
                };
                std::ptr::copy_nonoverlapping(
                    as_bytes(&h).as_ptr(),
                    p.add(64 + lane * LANE_SIZE),
                    LANE_HEADER,
                );
            }
            core.persister().persist(p, bytes);
        }
        let off = p as usize - self.base() as usize;
        self.set_lanes(off as u64);
        let (t, _, _) =
            open_lanes(core, self.size(), off).map_err(|e| TxError::Lanes(e.to_string()))?;
        sh.install(t);
        Ok(sh.table().expect("just installed"))
    }

    /// Number of transaction lanes (0 until the pool's first transaction).
    ///
    /// ```
    /// # use pmem_alloc::pool::{Pool, PoolOptions};
    /// # use pmem_alloc::tx::TxError;
    /// # let dir = tempfile::tempdir()?;
    /// let pool = Pool::create(&dir.path().join("l.pool"), 8 << 20, &PoolOptions::default())?;
    /// assert_eq!(pool.tx_lanes(), 0);
    /// pool.transaction(|_| Ok::<_, TxError>(()))?;
    /// assert_eq!(pool.tx_lanes(), 64);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn tx_lanes(&self) -> usize {
        self.tx_shared().table().map_or(0, |t| t.nlanes)
    }

    /// Runs `f` as a transaction: commits if it returns `Ok`, rolls back if it returns `Err`
    /// (returned as is) or panics (unwinding resumes after the rollback). Inside a running
    /// transaction of this pool on the same thread, joins it (flattened): an inner failure
    /// makes the outer transaction abort, with [`TxError::Aborted`] if the outer closure
    /// returns `Ok` regardless. See the [module documentation](crate::tx) for the guarantees
    /// and the fence counts.
    ///
    /// # Examples
    /// ```
    /// use pmem_alloc::pool::{Pool, PoolOptions};
    /// use pmem_alloc::tx::TxError;
    /// let dir = tempfile::tempdir()?;
    /// let pool = Pool::create(&dir.path().join("t.pool"), 8 << 20, &PoolOptions::default())?;
    /// let root = pool.root::<[u64; 2]>()?;
    /// // move 5 from one counter to the other, all or nothing
    /// pool.transaction(|tx| {
    ///     let c = tx.get_mut(root)?;
    ///     c[0] = c[0].wrapping_sub(5);
    ///     c[1] += 5;
    ///     Ok::<_, TxError>(())
    /// })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn transaction<R, E, F>(&self, f: F) -> Result<R, E>
    where
        E: From<TxError>,
        F: FnOnce(&Tx<'_, P>) -> Result<R, E>,
    {
        let key = self.tx_shared() as *const TxShared as usize;
        if let Some(lane) = active_lane(key) {
            return self.nested(lane, f);
        }
        let table = self.lanes()?;
        // Staged records committed before this transaction are retired first: a later replay
        // must not rewrite what this transaction makes durable.
        self.retire_staged();
        let sh = self.tx_shared();
        let lane = sh.acquire(table.nlanes, &|| self.retire_try(table));
        let vol = table.vol[lane].get();
        ACTIVE.with(|a| a.borrow_mut().push((key, lane)));
        let tx = Tx {
            pool: self,
            lane,
            vol,
            _not_send: PhantomData,
        };
        let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&tx)));
        ACTIVE.with(|a| {
            let mut a = a.borrow_mut();
            if let Some(i) = a.iter().rposition(|&(k, _)| k == key) {
                a.remove(i);
            }
        });
        // SAFETY: the lane is ours (busy bit) and no handle method runs now.
        let poisoned = unsafe { (*vol).poisoned };
        let res = match out {
            Ok(Ok(r)) if !poisoned => {
                tx.commit();
                Ok(r)
            }
            Ok(Ok(_)) => {
                tx.abort();
                Err(E::from(TxError::Aborted))
            }
            Ok(Err(e)) => {
                tx.abort();
                Err(e)
            }
            Err(payload) => {
                tx.abort();
                tx.finish();
                sh.release(lane);
                std::panic::resume_unwind(payload);
            }
        };
        tx.finish();
        sh.release(lane);
        res
    }

    fn nested<R, E, F>(&self, lane: usize, f: F) -> Result<R, E>
    where
        E: From<TxError>,
        F: FnOnce(&Tx<'_, P>) -> Result<R, E>,
    {
        let table = self
            .tx_shared()
            .table()
            .expect("a running transaction has lanes");
        let vol = table.vol[lane].get();
        struct Poison(*mut LaneVol);
        impl Drop for Poison {
            fn drop(&mut self) {
                if std::thread::panicking() {
                    // SAFETY: the lane belongs to this thread's running transaction.
                    unsafe { (*self.0).poisoned = true };
                }
            }
        }
        let guard = Poison(vol);
        let tx = Tx {
            pool: self,
            lane,
            vol,
            _not_send: PhantomData,
        };
        let r = f(&tx);
        drop(guard);
        if r.is_err() {
            // SAFETY: as above.
            unsafe { (*vol).poisoned = true };
        }
        r
    }
}

/// An owned object in a pool: the handle through which safe code allocates and frees. It
/// remembers its pool (the first 8 bytes of the pool's UUID), so freeing it in a transaction of
/// another pool fails with [`TxError::WrongPool`]. It is a volatile handle, not storable in the
/// pool: link an object with [`PBox::as_pptr`] (the box still owns it) or give the ownership to
/// the pool with [`PBox::into_pptr`], and take it back with [`PBox::from_pptr`] to free it.
///
/// # Examples
/// ```
/// use pmem_alloc::pool::{Pool, PoolOptions};
/// use pmem_alloc::tx::TxError;
/// let dir = tempfile::tempdir()?;
/// let pool = Pool::create(&dir.path().join("b.pool"), 8 << 20, &PoolOptions::default())?;
/// pool.transaction(|tx| {
///     let b = tx.alloc_box(41u64)?;
///     *tx.get_mut(b.as_pptr())? += 1;
///     tx.free_box(b) // freed when the transaction commits
/// })?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct PBox<T: PSafe> {
    ptr: PPtr<T>,
    pool: u64,
}

impl<T: PSafe> std::fmt::Debug for PBox<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PBox({:?})", self.ptr)
    }
}

fn pool_id<P: Persist + 'static>(pool: &Pool<P>) -> u64 {
    u64::from_le_bytes(pool.uuid()[..8].try_into().expect("8 bytes"))
}

impl<T: PSafe> PBox<T> {
    /// The pointer to store in links (the box keeps the ownership).
    pub fn as_pptr(&self) -> PPtr<T> {
        self.ptr
    }

    /// Gives up the ownership: the object now belongs to whatever links it.
    pub fn into_pptr(self) -> PPtr<T> {
        self.ptr
    }

    /// Takes the ownership of an object of `pool` back (to free it).
    ///
    /// # Safety
    /// `p` must be a live block of `pool` allocated for a `T` (by [`Tx::alloc`],
    /// [`Tx::alloc_box`] or the pool's allocation functions) that no other `PBox` owns and that
    /// is not freed otherwise.
    pub unsafe fn from_pptr<P: Persist + 'static>(pool: &Pool<P>, p: PPtr<T>) -> Self {
        PBox {
            ptr: p,
            pool: pool_id(pool),
        }
    }
}

/// A running transaction (see the [module documentation](crate::tx)). Handed to the closure of
/// [`Pool::transaction`]; references it returns live as long as the transaction.
pub struct Tx<'t, P: Persist + 'static = Hardware> {
    pool: &'t Pool<P>,
    lane: usize,
    vol: *mut LaneVol,
    _not_send: PhantomData<*mut ()>,
}

impl<P: Persist + 'static> std::fmt::Debug for Tx<'_, P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tx")
            .field("lane", &self.lane)
            .finish_non_exhaustive()
    }
}

impl<'t, P: Persist + 'static> Tx<'t, P> {
    #[allow(clippy::mut_from_ref)]
    fn v(&self) -> &mut LaneVol {
        // SAFETY: the lane is reserved for this thread's transaction (busy bit), the handle is
        // neither Send nor Sync, and no method holds this borrow across a call that could
        // reach another handle of the same lane (no user code runs inside a method).
        unsafe { &mut *self.vol }
    }

    /// The pool.
    pub fn pool(&self) -> &'t Pool<P> {
        self.pool
    }

    /// The lane (0..64) this transaction uses.
    pub fn lane(&self) -> usize {
        self.lane
    }

    fn pers(&self) -> &P {
        self.pool.persister()
    }

    fn base(&self) -> usize {
        self.pool.base() as usize
    }

    pub(crate) fn register(&self, start: usize, len: usize, mutable: bool) -> Result<(), TxError> {
        if len == 0 {
            return Ok(());
        }
        if !self.v().announced {
            // Announce the borrows before making any (sync/gate.rs): a staged write on its
            // fast path either sees the announcement (and registers its ranges in the table,
            // where the check below finds them), or this transaction waits until its in-place
            // writes are done. No reference is handed out over memory being written.
            self.v().announced = true;
            let sh = self.pool.tx_shared();
            sh.gate
                .announce(|| sh.table().map_or(0, |t| t.maybe_writing(&sh.busy)));
        }
        let end = start + len;
        let mut b = self.pool.tx_shared().lock_borrows();
        if b.iter()
            .any(|o| o.start < end && start < o.end && (mutable || o.mutable))
        {
            return Err(TxError::Borrowed);
        }
        b.push(Borrow {
            start,
            end,
            lane: self.lane,
            mutable,
        });
        drop(b);
        self.v().borrows += 1;
        Ok(())
    }

    /// A shared reference to a `T` in the pool for the rest of the transaction. Not saved in
    /// the log (reading needs no undo). Fails for invalid pointers and for ranges borrowed
    /// mutably.
    pub fn get<T: PSafe>(&self, p: PPtr<T>) -> Result<&'t T, TxError> {
        let a = self.target(p)?;
        self.register(a as usize, std::mem::size_of::<T>(), false)?;
        // SAFETY: `a` is an aligned, in-bounds `T` of the pool (checked by `get`); every bit
        // pattern is a valid `T` (PSafe); no mutable borrow of the range exists in any running
        // transaction (registered above) until this one ends, and the reference cannot outlive
        // it ('t, higher-ranked in `Pool::transaction`).
        Ok(unsafe { &*a })
    }

    /// A mutable reference to a `T` in the pool for the rest of the transaction; the whole `T`
    /// is saved in the undo log first (one fence; nothing if it lies in a block allocated by
    /// this transaction or was saved already). Fails for invalid pointers, and for ranges
    /// already borrowed in this or another running transaction: borrow each object once.
    #[allow(clippy::mut_from_ref)]
    pub fn get_mut<T: PSafe>(&self, p: PPtr<T>) -> Result<&'t mut T, TxError> {
        let a = self.target(p)?;
        let size = std::mem::size_of::<T>();
        self.register(a as usize, size, true)?;
        self.save(std::iter::once((a as usize - self.base(), size)))?;
        // SAFETY: as in `get`, and the range is borrowed by nobody else (registered as
        // mutable above): this is the only reference to it until the transaction ends.
        Ok(unsafe { &mut *a })
    }

    /// Saves `len` bytes from `p` in the undo log before the application modifies them through
    /// raw pointers (one fence; nothing when already saved or freshly allocated). Ranges must
    /// lie inside the pool's heap.
    pub fn snapshot<T: ?Sized>(&self, p: PPtr<T>, len: usize) -> Result<(), TxError> {
        let off = self.check_range(p.cast::<u8>(), len)?;
        self.save(std::iter::once((off, len)))
    }

    /// Saves several ranges with one fence (see [`Tx::snapshot`]).
    pub fn snapshot_many(&self, ranges: &[(PPtr<u8>, usize)]) -> Result<(), TxError> {
        for &(p, len) in ranges {
            self.check_range(p, len)?;
        }
        self.save(ranges.iter().map(|&(p, len)| (p.offset() as usize, len)))
    }

    /// Registers `len` bytes from `p` to be flushed at commit **without** saving their old
    /// bytes: for memory whose contents before the transaction do not matter if it aborts or
    /// crashes, such as the unused capacity of a vector beyond its length. The application
    /// then writes the range through raw pointers. Costs no fence now (the flush joins the
    /// commit's first fence). Ranges inside blocks allocated by this transaction need neither
    /// this nor a snapshot (they are flushed at commit anyway).
    ///
    /// Contract (a crash-consistency contract, not a memory-safety one): after an abort or a
    /// crash before the commit point, the range may hold the new bytes, the old ones or any
    /// mix of them (the writes are not undone), so nothing reachable after a rollback may
    /// depend on its contents. Do not write [`PPtr`] words there unless they survive in any
    /// case: a pointer left behind by an abort or a crash would make the recovery scan keep
    /// the block it names (a leak, not a loss). Writing memory that an existing reference
    /// borrows is, as always, undefined behaviour; the raw writes are the caller's `unsafe`
    /// code.
    ///
    /// Fails with [`TxError::InvalidPointer`] for ranges outside the heap (as
    /// [`Tx::snapshot`]).
    ///
    /// # Examples
    /// ```
    /// use pmem_alloc::pool::{Pool, PoolOptions};
    /// use pmem_alloc::pptr::PPtr;
    /// use pmem_alloc::tx::TxError;
    /// let dir = tempfile::tempdir()?;
    /// let pool = Pool::create(&dir.path().join("d.pool"), 8 << 20, &PoolOptions::default())?;
    /// // [len, slot0, slot1, slot2]: slots at index >= len are unused
    /// let root = pool.root::<[u64; 4]>()?;
    /// pool.transaction(|tx| {
    ///     let r = tx.get_mut(root)?; // saves all four words
    ///     r[1] = 5;
    ///     r[0] = 1;
    ///     Ok::<_, TxError>(())
    /// })?;
    /// pool.transaction(|tx| {
    ///     let slot = root.cast::<u8>().byte_add(16); // slot 1: unused, no undo needed
    ///     tx.mark_dirty(slot, 8)?;
    ///     let a = tx.pool().get(slot.cast::<u64>()).ok_or(TxError::InvalidPointer)?;
    ///     // SAFETY: inside the pool; no reference to the root exists in this transaction.
    ///     unsafe { a.write(6) };
    ///     tx.snapshot(root, 8)?; // the length word does need its undo entry
    ///     let len = tx.pool().get(root.cast::<u64>()).ok_or(TxError::InvalidPointer)?;
    ///     // SAFETY: as above; saved just before.
    ///     unsafe { *len = 2 };
    ///     Ok::<_, TxError>(())
    /// })?;
    /// pool.transaction(|tx| {
    ///     assert_eq!(&tx.get(root)?[..3], &[2, 5, 6]);
    ///     Ok::<_, TxError>(())
    /// })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn mark_dirty<T: ?Sized>(&self, p: PPtr<T>, len: usize) -> Result<(), TxError> {
        let off = self.check_range(p.cast::<u8>(), len)?;
        if len > 0 {
            let v = self.v();
            // consecutive pushes extend the previous range
            match v.dirty.last_mut() {
                Some((o, n)) if *o + *n == off => *n += len,
                _ => v.dirty.push((off, len)),
            }
        }
        Ok(())
    }

    /// Records that `len` bytes from `p`, live when the transaction began (or possibly so),
    /// are no longer in use (a popped slot): a later [`Tx::prepare_unused`] of them saves them
    /// instead of only registering them, since an abort must find their old contents.
    pub(crate) fn note_vacated(&self, p: PPtr<u8>, len: usize) -> Result<(), TxError> {
        let off = self.check_range(p, len)?;
        if len > 0 && !self.covered(self.v(), off, len) {
            let v = self.v();
            match v.vacated.last_mut() {
                Some((o, n)) if *o == off + len => {
                    *o = off;
                    *n += len;
                }
                Some((o, n)) if *o + *n == off => *n += len,
                _ => v.vacated.push((off, len)),
            }
        }
        Ok(())
    }

    /// Prepares `len` bytes from `p` that a collection does not use (beyond its length) to be
    /// written: [`Tx::mark_dirty`] if they were unused when the transaction began, else (they
    /// were vacated by this transaction: [`Tx::note_vacated`]) saved as [`Tx::snapshot`] does.
    pub(crate) fn prepare_unused(&self, p: PPtr<u8>, len: usize) -> Result<(), TxError> {
        let off = self.check_range(p, len)?;
        let end = off + len;
        if self
            .v()
            .vacated
            .iter()
            .any(|&(o, n)| o < end && off < o + n)
        {
            self.save(std::iter::once((off, len)))
        } else {
            self.mark_dirty(p, len)
        }
    }

    /// The address of `len` bytes from `p`, checked as [`Tx::snapshot`] checks (in the heap,
    /// outside the metadata and the lanes). For the collections' raw access.
    pub(crate) fn raw_range(&self, p: PPtr<u8>, len: usize) -> Result<*mut u8, TxError> {
        let off = self.check_range(p, len)?;
        Ok((self.base() + off) as *mut u8)
    }

    /// Allocates `size` zeroed bytes with `align` (at least 16), as [`Tx::alloc`].
    pub(crate) fn alloc_raw(&self, size: usize, align: usize) -> Result<PPtr<u8>, TxError> {
        let p = self.alloc_block(size.max(1), align)?;
        Ok(PPtr::from_offset((p as usize - self.base()) as u64))
    }

    fn check_range(&self, p: PPtr<u8>, len: usize) -> Result<usize, TxError> {
        let off = p.offset() as usize;
        if p.is_null()
            || off < HEADER_AREA
            || off.checked_add(len).is_none_or(|e| e > self.pool.size())
            || self.pool.overlaps_metadata(off, len)
            || self.in_lanes(off, len)
        {
            return Err(TxError::InvalidPointer);
        }
        Ok(off)
    }

    /// Whether the range overlaps the lane area.
    fn in_lanes(&self, off: usize, len: usize) -> bool {
        self.pool.tx_shared().table().is_some_and(|t| {
            let end = t.area_off + LaneArea::bytes(t.nlanes);
            off < end && t.area_off < off + len.max(1)
        })
    }

    /// The address of a `T` the transaction may hand out: in bounds, aligned, outside the
    /// allocator's metadata and the lane area.
    fn target<T>(&self, p: PPtr<T>) -> Result<*mut T, TxError> {
        let a = self.pool.get(p).ok_or(TxError::InvalidPointer)?;
        self.check_range(p.cast::<u8>(), std::mem::size_of::<T>())?;
        Ok(a)
    }

    /// Whether `off..off+len` needs no new entry: inside a block allocated by this transaction
    /// or inside a range saved already.
    fn covered(&self, v: &LaneVol, off: usize, len: usize) -> bool {
        let a = self.base() + off;
        v.allocs
            .iter()
            .any(|&(p, n)| p as usize <= a && a + len <= p as usize + n)
            || v.entries
                .iter()
                .any(|&(o, n, _)| o <= off && off + len <= o + n)
    }

    /// Writes undo entries for `ranges` (pool offsets) and makes them durable with one fence.
    fn save(&self, ranges: impl Iterator<Item = (usize, usize)>) -> Result<(), TxError> {
        let v = self.v();
        let base = self.base() as *const u8;
        // The entries are assembled in DRAM and copied to the log in one piece: the copy uses
        // non-temporal stores when it is large enough (the log is write-only at run time, so
        // its lines need not be read into the cache first).
        let mut stage = std::mem::take(&mut v.stage);
        stage.clear();
        let start = v.used;
        let first_new = v.entries.len();
        for (off, len) in ranges {
            if len == 0 || self.covered(v, off, len) {
                continue;
            }
            let pos = start + stage.len();
            let hdr_at = stage.len();
            stage.resize(hdr_at + UndoEntry::footprint(len), 0);
            // SAFETY: the range is inside the pool (checked by the callers) and is not being
            // written (the application modifies it only after this call returns).
            let old = unsafe { std::slice::from_raw_parts(base.add(off), len) };
            stage[hdr_at + UNDO_ENTRY_HEADER..hdr_at + UNDO_ENTRY_HEADER + len]
                .copy_from_slice(old);
            let e = UndoEntry {
                checksum: Le64::new(0),
                off: Le64::new(off as u64),
                len: Le32::new(len as u32),
                kind: Le32::new(entry_kind(self.lane)),
                gen: Le64::new(v.gen),
            };
            let end = hdr_at + UndoEntry::footprint(len);
            stage[hdr_at..hdr_at + UNDO_ENTRY_HEADER].copy_from_slice(as_bytes(&e));
            let sum = undo_checksum(&stage[hdr_at + 8..end]);
            stage[hdr_at..hdr_at + 8].copy_from_slice(&sum.to_le_bytes());
            v.entries.push((off, len, pos));
        }
        if stage.is_empty() {
            v.stage = stage;
            return Ok(());
        }
        if start + stage.len() > v.cap {
            if let Err(e) = self.grow(start + stage.len()) {
                let v = self.v();
                v.entries.truncate(first_new);
                v.stage = stage;
                return Err(e);
            }
        }
        let v = self.v();
        let pers = self.pers();
        // SAFETY: `start + stage.len() <= cap` (ensured above): the entries fit the log, which
        // is a block of its own that the application never sees.
        unsafe { pers.memcpy_nodrain(v.log.add(start), stage.as_ptr(), stage.len()) };
        v.used += stage.len();
        v.stage = stage;
        // Ordering: the entries are durable before the caller modifies the ranges.
        pers.drain();
        Ok(())
    }

    /// Moves the log to an overflow block of at least `need` bytes (two fences).
    #[cold]
    fn grow(&self, need: usize) -> Result<(), TxError> {
        grow_log(self.pool, self.v(), need)
    }

    /// Allocates a `T` holding `value` (the rest of the block zeroed). Freed again if the
    /// transaction aborts; made durable by the commit. Fields of the new object can be written
    /// through [`Tx::get_mut`] without a log entry.
    pub fn alloc<T: PSafe>(&self, value: T) -> Result<PPtr<T>, TxError> {
        let p = self.alloc_block(std::mem::size_of::<T>().max(1), std::mem::align_of::<T>())?;
        // SAFETY: a fresh block of at least size_of::<T>() bytes with T's alignment.
        unsafe { std::ptr::write(p.cast::<T>(), value) };
        Ok(PPtr::from_offset((p as usize - self.base()) as u64))
    }

    /// Like [`Tx::alloc`], returning an owning [`PBox`] (freed by [`Tx::free_box`] without
    /// `unsafe`).
    pub fn alloc_box<T: PSafe>(&self, value: T) -> Result<PBox<T>, TxError> {
        Ok(PBox {
            ptr: self.alloc(value)?,
            pool: pool_id(self.pool),
        })
    }

    /// Frees a boxed object when the transaction commits (as [`Tx::free`]; nothing happens if
    /// it aborts). Fails with [`TxError::WrongPool`] for a box of another pool. The
    /// application's remaining obligation is logical: links to the object should be removed
    /// in this transaction (a dangling [`PPtr`] reads whatever later occupies the block).
    pub fn free_box<T: PSafe>(&self, b: PBox<T>) -> Result<(), TxError> {
        if b.pool != pool_id(self.pool) {
            return Err(TxError::WrongPool);
        }
        // SAFETY: a `PBox` owns a live block of its pool (checked to be this one), allocated
        // for a `T`, and is consumed here, so it is freed once.
        unsafe { self.free(b.ptr) }
    }

    /// Allocates `size` zeroed bytes (16-byte aligned), as [`Tx::alloc`].
    pub fn alloc_zeroed_bytes(&self, size: usize) -> Result<PPtr<u8>, TxError> {
        let p = self.alloc_block(size.max(1), 16)?;
        Ok(PPtr::from_offset((p as usize - self.base()) as u64))
    }

    fn alloc_block(&self, size: usize, align: usize) -> Result<*mut u8, TxError> {
        if size > isize::MAX as usize / 2 {
            return Err(TxError::OutOfSpace);
        }
        let core = self.pool.heap();
        let p = core.alloc(size, align.max(16));
        if p.is_null() {
            return Err(TxError::OutOfSpace);
        }
        // SAFETY: a fresh block of this pool; its usable size is at least `size`. Zeroing the
        // slack keeps stale tagged words of a previous owner away from the recovery scan.
        let usable = unsafe { core.usable_size(p) };
        // SAFETY: as above.
        unsafe { std::ptr::write_bytes(p, 0, usable) };
        self.v().allocs.push((p, usable));
        Ok(p)
    }

    /// Frees a block when the transaction commits (nothing happens if it aborts).
    ///
    /// # Safety
    /// `p` must be a live block of this pool (returned by an allocation of this pool and not
    /// freed, nor passed to `free` in this transaction, since), and every link to it that a
    /// later reader could follow must be removed in this transaction (through saved ranges).
    pub unsafe fn free<T: ?Sized>(&self, p: PPtr<T>) -> Result<(), TxError> {
        if p.is_null() {
            return Ok(());
        }
        let off = self.check_range(p.cast::<u8>(), 1)?;
        let a = (self.base() + off) as *mut u8;
        self.v().frees.push(a);
        Ok(())
    }

    fn bump_gen(&self, v: &mut LaneVol) {
        v.gen += 1;
        // SAFETY: the lane header's `gen` word (8-byte aligned, inside the lane area).
        unsafe {
            store_u64(v.header, v.gen);
            self.pers().persist(v.header, 8);
        }
    }

    fn commit(&self) {
        let v = self.v();
        let pers = self.pers();
        let base = self.base() as *const u8;
        let mut flushed = false;
        for &(off, len, _) in &v.entries {
            // SAFETY: a range of the pool checked when it was saved.
            unsafe { pers.flush(base.add(off), len) };
            flushed = true;
        }
        for &(p, n) in &v.allocs {
            // SAFETY: a block allocated by this transaction.
            unsafe { pers.flush(p, n) };
            flushed = true;
        }
        for &(off, len) in &v.dirty {
            // SAFETY: a range of the pool checked by `mark_dirty`.
            unsafe { pers.flush(base.add(off), len) };
            flushed = true;
        }
        if flushed {
            // Ordering: the new contents are durable before the log is invalidated.
            pers.drain();
        }
        if !v.entries.is_empty() {
            // the commit point
            self.bump_gen(v);
        }
        let core = self.pool.heap();
        for &p in &v.frees {
            // SAFETY: the caller of `Tx::free` guaranteed a live block; the unlink is durable.
            unsafe { core.free(p) };
        }
    }

    fn abort(&self) {
        let v = self.v();
        let pers = self.pers();
        let base = self.base() as *mut u8;
        if !v.entries.is_empty() {
            for &(off, len, pos) in v.entries.iter().rev() {
                // SAFETY: the entry's old bytes are in the log; the range is in the pool.
                unsafe {
                    let dst = base.add(off);
                    std::ptr::copy(v.log.add(pos + UNDO_ENTRY_HEADER), dst, len);
                    pers.flush(dst, len);
                }
            }
            // Ordering: the old contents are durable before the log is invalidated.
            pers.drain();
            self.bump_gen(v);
        }
        let core = self.pool.heap();
        for &(p, _) in &v.allocs {
            // SAFETY: blocks allocated by this transaction; the rollback removed every durable
            // link the transaction made to them.
            unsafe { core.free(p) };
        }
    }

    /// Clears the lane's lists and the transaction's borrows.
    fn finish(&self) {
        let v = self.v();
        v.entries.clear();
        v.allocs.clear();
        v.frees.clear();
        v.dirty.clear();
        v.vacated.clear();
        v.used = 0;
        v.poisoned = false;
        if v.announced {
            v.announced = false;
            self.pool.tx_shared().gate.withdraw();
        }
        if v.borrows > 0 {
            v.borrows = 0;
            let lane = self.lane;
            self.pool
                .tx_shared()
                .lock_borrows()
                .retain(|b| b.lane != lane);
        }
    }
}
