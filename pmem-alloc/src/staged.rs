//! Staged writes: all-or-nothing updates of several pool ranges, durable on return with
//! **one fence**, through a redo record.
//!
//! [`Pool::staged`] runs a closure that hands the new bytes to a [`Staged`] handle
//! ([`Staged::write`], [`Staged::write_u64`], [`Staged::write_pptr`]). When it returns `Ok`,
//! the writes are assembled into one *record* in a transaction lane, the record is flushed and
//! fenced (the commit point), and only then are the ranges written in place, without a flush
//! of their own. A crash at any instant leaves all of the writes or none; once `staged`
//! returns, they survive a crash. An undo transaction ([`Pool::transaction`]) needs three
//! fences for the same update (see docs/crash-consistency.md); what a staged write gives up is
//! reading inside the update: the application computes the new bytes first (under its own
//! lock if the new bytes depend on old ones that other threads update).
//!
//! # Retirement
//! The record keeps its lane until it is *retired*: the ranges it wrote are flushed, a fence
//! follows, then the pool's retirement watermark (lane 0's `retired` word) is raised to the
//! record's sequence number and persisted (a second fence), and the lane is free again.
//! Records are retired in sequence order, in batches: by a staged write that finds half of
//! the lanes holding records, by a thread waiting for a lane, by [`Pool::retire_staged`], and
//! before anything else makes memory durable in a way a later replay could undo: the start of
//! a transaction, [`Pool::free`], [`Pool::persist`], [`Pool::persist_val`],
//! [`Pool::publish`] and a clean close. A batch of *k* records costs two fences, and a range
//! written by several of them is flushed once.
//!
//! # Recovery
//! At open, after the undo logs are rolled back and before the reachability scan, every
//! valid record above the watermark (right checksum, lane and kind; ranges inside the pool and
//! outside the lane area) is written in place in sequence order, flushed, fenced, and the
//! watermark is raised past them. Replaying a record twice writes the same bytes, so a crash
//! during this replay is harmless. Why the watermark is global and raised in order: a record
//! may be overwritten in place by a later one; if the later record were retired while the
//! earlier stayed valid, a replay would bring back the older bytes.
//!
//! # Isolation
//! A staged write never changes memory under a reference that a running transaction handed
//! out ([`crate::tx::Tx::get`], [`crate::tx::Tx::get_mut`]): if one of its ranges is borrowed,
//! the commit fails with [`TxError::Borrowed`] and writes nothing, and while it writes in place
//! no transaction can borrow its ranges. While no transaction holds borrows this costs no lock
//! (a per-lane flag that a transaction starting to borrow waits for: the gate in
//! `sync/gate.rs`, checked by the loom model `tests/loom_gate.rs`).
//!
//! Staged writes whose ranges share a page run one after the other: each takes striped page
//! locks before its sequence number and releases them after its in-place writes. So two
//! threads writing the same bytes never leave a mix of both updates, and the update that memory
//! ends with is the one a replay after a crash applies last. Which of two concurrent updates
//! comes last is not specified; an application that cares orders them itself.
//!
//! # Fallbacks
//! Inside a running transaction of the same pool on the same thread, a staged write joins that
//! transaction (undo entries, committed with it). A pool whose lanes were created by a build
//! of format 1.1 (no [`LANE_FEATURE_STAGED`] bit) runs it as its own transaction: the same
//! guarantees, three fences. A record larger than the lane's log (960 bytes inline) moves the
//! log to an overflow block first, as an undo log does (two more fences, once per lane and
//! size; the block stays with the lane).
//!
//! # Examples
//! ```
//! use pmem_alloc::pool::{Pool, PoolOptions};
//! use pmem_alloc::tx::TxError;
//! let dir = tempfile::tempdir()?;
//! let pool = Pool::create(&dir.path().join("s.pool"), 8 << 20, &PoolOptions::default())?;
//! let root = pool.root::<[u64; 4]>()?;
//! let words = root.cast::<u64>();
//! // move 5 from word 0 to word 3, all or nothing, durable on return
//! let (a, b) = pool.transaction(|tx| {
//!     let r = tx.get(root)?;
//!     Ok::<_, TxError>((r[0], r[3]))
//! })?;
//! pool.staged(|s| {
//!     s.write_u64(words, a.wrapping_sub(5))?;
//!     s.write_u64(words.byte_add(24), b + 5)?;
//!     Ok(())
//! })?;
//! pool.transaction(|tx| {
//!     assert_eq!(tx.get(root)?[3], 5);
//!     Ok::<_, TxError>(())
//! })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use crate::layout::{
    as_bytes, read_from, undo_checksum, Le32, Le64, StagedEntry, StagedHeader, HEADER_AREA,
    LANE_FEATURE_STAGED, STAGED_ENTRY, STAGED_HEADER, STAGED_KIND, STAGED_MAX_RANGE,
};
use crate::persist::{Hardware, Persist};
use crate::pool::{Pool, PoolError};
use crate::pptr::PPtr;
use crate::sync::RangeLocks;
use crate::tx::{store_u64, LaneTable, TxError};
use std::cell::RefCell;
use std::sync::atomic::Ordering;

thread_local! {
    /// The record being assembled by this thread (kept between calls to reuse its capacity).
    static BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// The handle of [`Pool::staged`]: collects the new bytes of an all-or-nothing update.
pub struct Staged<'p, P: Persist + 'static = Hardware> {
    pool: &'p Pool<P>,
    /// The record: a header placeholder, then the entries.
    buf: Vec<u8>,
    count: u32,
    /// Ranges flushed with the commit fence ([`Staged::flush`]).
    flushes: Vec<(usize, usize)>,
}

impl<P: Persist + 'static> std::fmt::Debug for Staged<'_, P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Staged")
            .field("writes", &self.count)
            .field("bytes", &(self.buf.len() - STAGED_HEADER))
            .finish_non_exhaustive()
    }
}

/// The `kind` word of lane `lane`'s record.
fn record_kind(lane: usize) -> u32 {
    STAGED_KIND | (lane as u32) << 16
}

/// Iterates the entries of a record's body: (pool offset, length, position of the new bytes).
fn entries(body: &[u8]) -> impl Iterator<Item = (usize, usize, usize)> + Clone + '_ {
    let mut pos = 0;
    std::iter::from_fn(move || {
        let e: StagedEntry = read_from(body.get(pos..)?)?;
        let len = e.range_len();
        let at = pos + STAGED_ENTRY;
        pos += StagedEntry::footprint(len);
        Some((e.range_off(), len, at))
    })
}

impl<P: Persist + 'static> Staged<'_, P> {
    /// The pool.
    pub fn pool(&self) -> &Pool<P> {
        self.pool
    }

    /// Stages `bytes` to be written at `p`. Fails with [`TxError::InvalidPointer`] for ranges
    /// outside the pool's heap (null, out of bounds, allocator metadata, the lanes), and with
    /// [`TxError::TooLarge`] for more than 1 GiB in one call. The commit fails with
    /// [`TxError::Borrowed`] (writing nothing) if a range overlaps one that a running
    /// transaction has borrowed ([`crate::tx::Tx::get`] / [`crate::tx::Tx::get_mut`]).
    pub fn write<T: ?Sized>(&mut self, p: PPtr<T>, bytes: &[u8]) -> Result<(), TxError> {
        if bytes.len() > u32::MAX as usize >> 2 {
            return Err(TxError::TooLarge);
        }
        let off = self
            .pool
            .check_heap_range(p.offset() as usize, bytes.len())?;
        for (i, chunk) in bytes.chunks(STAGED_MAX_RANGE).enumerate() {
            let e = StagedEntry::new(off + i * STAGED_MAX_RANGE, chunk.len());
            let at = self.buf.len();
            self.buf.extend_from_slice(as_bytes(&e));
            self.buf.extend_from_slice(chunk);
            self.buf.resize(at + StagedEntry::footprint(chunk.len()), 0);
            self.count += 1;
        }
        Ok(())
    }

    /// Stages an 8-byte value for the aligned word at `p`.
    pub fn write_u64(&mut self, p: PPtr<u64>, v: u64) -> Result<(), TxError> {
        self.pool.get(p).ok_or(TxError::InvalidPointer)?;
        self.write(p, &v.to_le_bytes())
    }

    /// Stages a link: `value` for the pointer field at `slot`. The object `value` names must be
    /// durable by the commit: written earlier and persisted, or passed to [`Staged::flush`].
    pub fn write_pptr<T: ?Sized>(
        &mut self,
        slot: PPtr<PPtr<T>>,
        value: PPtr<T>,
    ) -> Result<(), TxError> {
        self.pool.get(slot).ok_or(TxError::InvalidPointer)?;
        self.write(slot, &value.raw().to_le_bytes())
    }

    /// Flushes `len` bytes from `p` with the commit's fence, without a record entry: for a
    /// freshly allocated object that this update links (its contents before the update do not
    /// matter, as with [`crate::tx::Tx::mark_dirty`]). Write the object before calling
    /// `staged`; the range must not be written concurrently.
    pub fn flush<T: ?Sized>(&mut self, p: PPtr<T>, len: usize) -> Result<(), TxError> {
        let off = self.pool.check_heap_range(p.offset() as usize, len)?;
        if len > 0 {
            self.flushes.push((off, len));
        }
        Ok(())
    }

    /// Runs the update as a transaction (joining the running one of this thread, if any).
    fn commit_as_tx(&self) -> Result<(), TxError> {
        let body = &self.buf[STAGED_HEADER..];
        self.pool.transaction(|tx| {
            let ranges: Vec<(PPtr<u8>, usize)> = entries(body)
                .map(|(off, len, _)| (PPtr::from_offset(off as u64), len))
                .collect();
            for &(p, len) in &ranges {
                // as a staged write in a lane: never under a reference handed out by a
                // running transaction (borrows are registered by address)
                tx.register(tx.raw_range(p, len)? as usize, len, true)?;
            }
            tx.snapshot_many(&ranges)?;
            for (off, len, at) in entries(body) {
                let dst = tx.raw_range(PPtr::from_offset(off as u64), len)?;
                // SAFETY: a range of the heap (checked), saved just above; the source is
                // this handle's buffer.
                unsafe { std::ptr::copy_nonoverlapping(body[at..].as_ptr(), dst, len) };
            }
            for &(off, len) in &self.flushes {
                tx.mark_dirty(PPtr::<u8>::from_offset(off as u64), len)?;
            }
            Ok(())
        })
    }

    /// Commits with a redo record (one fence), or as a transaction when that is not possible.
    fn commit(&mut self) -> Result<(), TxError> {
        if self.count == 0 && self.flushes.is_empty() {
            return Ok(());
        }
        let pool = self.pool;
        let t = pool.lanes()?;
        let need = self.buf.len();
        if !t.staged || crate::tx::in_transaction(pool) {
            return self.commit_as_tx();
        }
        // The record is written in whole cache lines (zeros after its end, outside its
        // checksum): large records go out with non-temporal stores, and a partly written
        // line costs those more than a whole one.
        let lines = need.next_multiple_of(64);
        if t.pending.load(Ordering::Relaxed).count_ones() as usize >= (t.nlanes / 2).max(1) {
            pool.retire(t, None);
        }
        let sh = pool.tx_shared();
        let base = pool.base();
        let lane = sh.acquire(t.nlanes, &|| pool.retire_try(t));
        // SAFETY: the lane is reserved for this thread (busy bit).
        let v = unsafe { &mut *t.vol[lane].get() };
        if lines > v.cap {
            if let Err(e) = crate::tx::grow_log(pool, v, lines) {
                sh.release_mask(1 << lane);
                return Err(e);
            }
        }
        // The in-place writes below must not change memory that a running transaction has
        // handed out a reference to (safe code would see it change), and no transaction may
        // borrow the ranges until they are written. Fast path, while no transaction holds
        // borrows: the gate (sync/gate.rs) makes a transaction that starts borrowing wait
        // for the in-place writes (see `Tx::register`). Otherwise the ranges are checked
        // against the borrow table and registered in it as borrowed until they are written.
        //
        // Staged writes whose ranges share a page run one at a time, from before they
        // take their sequence number until their in-place writes are done, so they reach
        // memory in sequence order, as a replay would apply them (sync/gate.rs, `RangeLocks`).
        let stripes = RangeLocks::mask(
            entries(&self.buf[STAGED_HEADER..]).map(|(off, len, _)| (base as usize + off, len)),
        );
        sh.ranges.lock(stripes);
        let fast = sh.gate.enter(lane);
        if !fast {
            let ranges =
                entries(&self.buf[STAGED_HEADER..]).map(|(off, len, _)| (base as usize + off, len));
            if let Err(e) = sh.borrow_staged(lane, ranges) {
                sh.ranges.unlock(stripes);
                sh.release_mask(1 << lane);
                return Err(e);
            }
        }
        let pers = pool.persister();
        // Nothing from here to the publication in `pending` can fail or panic: a sequence
        // number given out is always published (retirement waits for the numbers in order).
        let seq = t.seq.fetch_add(1, Ordering::AcqRel) + 1;
        let h = StagedHeader {
            checksum: Le64::new(0),
            seq: Le64::new(seq),
            len: Le32::new((need - STAGED_HEADER) as u32),
            kind: Le32::new(record_kind(lane)),
            count: Le32::new(self.count),
            reserved: Le32::new(0),
        };
        self.buf[..STAGED_HEADER].copy_from_slice(as_bytes(&h));
        let sum = undo_checksum(&self.buf[8..]);
        self.buf[..8].copy_from_slice(&sum.to_le_bytes());
        self.buf.resize(lines, 0);
        // SAFETY: the record fits the lane's log (checked above), a block of its own; the
        // flushed ranges are heap ranges of the pool (checked by `flush`).
        unsafe {
            pers.memcpy_nodrain(v.log, self.buf.as_ptr(), lines);
            for &(off, len) in &self.flushes {
                pers.flush(base.add(off), len);
            }
        }
        // Ordering: the record (and the flushed objects) are durable before any range is
        // written in place. This fence is the commit point.
        pers.drain();
        v.staged.clear();
        let body = &self.buf[STAGED_HEADER..need];
        for (off, len, at) in entries(body) {
            // SAFETY: heap ranges of the pool (checked by `write`); the source is the buffer.
            // No flush: retirement flushes them, and until then the record replays them.
            unsafe { std::ptr::copy_nonoverlapping(body[at..].as_ptr(), base.add(off), len) };
            v.staged.push((off, len));
        }
        v.staged_seq = seq;
        if fast {
            sh.gate.leave(lane);
        } else {
            sh.unborrow_staged(lane);
        }
        sh.ranges.unlock(stripes);
        // hand the lane to the retirer
        t.pending.fetch_or(1 << lane, Ordering::Release);
        Ok(())
    }
}

impl<P: Persist + 'static> Pool<P> {
    /// Runs `f` to stage an all-or-nothing update, then commits it with one fence: durable when
    /// this returns `Ok` (see the [module documentation](crate::staged)). If `f` returns an
    /// error or panics, nothing is written.
    ///
    /// # Examples
    /// ```
    /// use pmem_alloc::pool::{Pool, PoolOptions};
    /// let dir = tempfile::tempdir()?;
    /// let pool = Pool::create(&dir.path().join("w.pool"), 8 << 20, &PoolOptions::default())?;
    /// let root = pool.root::<[u8; 64]>()?;
    /// pool.staged(|s| s.write(root, b"hello"))?;
    /// let p = pool.get(root).unwrap();
    /// // SAFETY: the root is 64 bytes inside the pool; nothing writes it concurrently.
    /// let root_bytes: &[u8; 64] = unsafe { &*p };
    /// assert_eq!(&root_bytes[..5], b"hello");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn staged<R, F>(&self, f: F) -> Result<R, TxError>
    where
        F: FnOnce(&mut Staged<'_, P>) -> Result<R, TxError>,
    {
        let mut buf = BUF.with(|b| std::mem::take(&mut *b.borrow_mut()));
        buf.clear();
        buf.resize(STAGED_HEADER, 0);
        let mut s = Staged {
            pool: self,
            buf,
            count: 0,
            flushes: Vec::new(),
        };
        let out = f(&mut s);
        let res = match out {
            Ok(r) => s.commit().map(|()| r),
            Err(e) => Err(e),
        };
        let buf = std::mem::take(&mut s.buf);
        BUF.with(|b| *b.borrow_mut() = buf);
        res
    }

    /// Retires every staged record committed so far (see the [module
    /// documentation](crate::staged)): afterwards no replay can rewrite anything. Called
    /// automatically where needed; useful before writing pool memory through raw pointers
    /// that staged writes also wrote.
    pub fn retire_staged(&self) {
        if let Some(t) = self.tx_shared().table() {
            if t.staged {
                let s = t.seq.load(Ordering::Acquire);
                if t.retired.load(Ordering::Acquire) < s {
                    self.retire(t, Some(s));
                }
            }
        }
    }

    /// Number of staged records not yet retired.
    pub fn staged_pending(&self) -> usize {
        self.tx_shared().table().map_or(0, |t| {
            t.pending.load(Ordering::Acquire).count_ones() as usize
        })
    }

    /// The heap range `off..off+len`, checked as a transaction checks it.
    pub(crate) fn check_heap_range(&self, off: usize, len: usize) -> Result<usize, TxError> {
        let in_lanes = self.tx_shared().table().is_some_and(|t| {
            let end = t.area_off + crate::layout::LaneArea::bytes(t.nlanes);
            off < end && t.area_off < off + len.max(1)
        });
        if off < HEADER_AREA
            || off.checked_add(len).is_none_or(|e| e > self.size())
            || self.overlaps_metadata(off, len)
            || in_lanes
        {
            return Err(TxError::InvalidPointer);
        }
        Ok(off)
    }

    /// One retirement pass if no other thread is retiring (for threads waiting for a lane).
    pub(crate) fn retire_try(&self, t: &LaneTable) {
        if let Ok(mut g) = t.retire_lock.try_lock() {
            self.retire_pass(t, &mut g);
        }
    }

    /// Retires records in sequence order: one pass (`until` = `None`), or until the
    /// watermark reaches `until` (waiting for records still being committed).
    pub(crate) fn retire(&self, t: &LaneTable, until: Option<u64>) {
        let mut g = t.retire_lock.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let progressed = self.retire_pass(t, &mut g);
            match until {
                Some(u) if t.retired.load(Ordering::Acquire) < u => {
                    if !progressed {
                        std::thread::yield_now();
                    }
                }
                _ => return,
            }
        }
    }

    /// Retires the records that follow the watermark without a gap; returns whether any was.
    fn retire_pass(&self, t: &LaneTable, scratch: &mut Vec<(usize, usize)>) -> bool {
        let mask = t.pending.load(Ordering::Acquire);
        if mask == 0 {
            return false;
        }
        let mut recs = [(0u64, 0usize); 64];
        let mut n = 0;
        let mut m = mask;
        while m != 0 {
            let lane = m.trailing_zeros() as usize;
            m &= m - 1;
            // SAFETY: the lane is published in `pending`: its state belongs to the retirer,
            // and we hold the retirement lock.
            let v = unsafe { &*t.vol[lane].get() };
            recs[n] = (v.staged_seq, lane);
            n += 1;
        }
        recs[..n].sort_unstable();
        let mut w = t.retired.load(Ordering::Relaxed);
        let mut bits = 0u64;
        scratch.clear();
        for &(seq, lane) in &recs[..n] {
            if seq != w + 1 {
                break;
            }
            w = seq;
            bits |= 1 << lane;
            // SAFETY: as above.
            scratch.extend_from_slice(unsafe { &(*t.vol[lane].get()).staged });
        }
        if bits == 0 {
            return false;
        }
        let pers = self.persister();
        let base = self.base();
        scratch.sort_unstable();
        let mut i = 0;
        while i < scratch.len() {
            let (start, mut end) = (scratch[i].0, scratch[i].0 + scratch[i].1);
            i += 1;
            while i < scratch.len() && scratch[i].0 <= end {
                end = end.max(scratch[i].0 + scratch[i].1);
                i += 1;
            }
            // SAFETY: heap ranges of the pool, checked when they were staged.
            unsafe { pers.flush(base.add(start), end - start) };
        }
        // Ordering: the records' ranges are durable in place before the watermark passes
        // them, and the watermark is durable before their lanes can be reused.
        pers.drain();
        // SAFETY: lane 0's `retired` word (8-byte aligned, inside the lane area); only the
        // retirer (under the lock) and open write it.
        unsafe {
            store_u64(t.retired_word, w);
            pers.persist(t.retired_word, 8);
        }
        let mut m = bits;
        while m != 0 {
            let lane = m.trailing_zeros() as usize;
            m &= m - 1;
            // SAFETY: as above; the lane is released just below.
            let v = unsafe { &mut *t.vol[lane].get() };
            v.staged.clear();
            v.staged_seq = 0;
        }
        t.retired.store(w, Ordering::Release);
        t.pending.fetch_and(!bits, Ordering::AcqRel);
        self.tx_shared().release_mask(bits);
        true
    }
}

/// One valid record found at open.
struct Found {
    seq: u64,
    lane: usize,
}

/// Replays the valid staged records of the lanes (`logs`: each lane's log and capacity) above
/// the watermark stored at `retired_word`, durably, and raises the watermark past them.
/// Returns the new watermark and the number of records replayed.
///
/// # Safety
/// The logs and the word lie inside the pool mapping of `core`, which is open
/// single-threaded.
pub(crate) unsafe fn replay<P: Persist + 'static>(
    core: &crate::heap::HeapCore<P>,
    pool_size: usize,
    lane_area: (usize, usize),
    logs: &[(*mut u8, usize)],
    retired_word: *mut u8,
) -> Result<(u64, usize), PoolError> {
    let base = core.base();
    // SAFETY: caller's contract.
    let w = u64::from_le_bytes(unsafe { *(retired_word as *const [u8; 8]) });
    let mut found = Vec::new();
    for (lane, &(log, cap)) in logs.iter().enumerate() {
        // SAFETY: caller's contract; the log is `cap` bytes.
        let log = unsafe { std::slice::from_raw_parts(log as *const u8, cap) };
        let Some(h) = read_from::<StagedHeader>(log) else {
            continue;
        };
        let len = h.len.get() as usize;
        if h.kind.get() != record_kind(lane)
            || h.seq.get() <= w
            || len > cap - STAGED_HEADER
            || h.reserved.get() != 0
            || h.checksum.get() != undo_checksum(&log[8..STAGED_HEADER + len])
        {
            continue;
        }
        let body = &log[STAGED_HEADER..STAGED_HEADER + len];
        let mut count = 0;
        let mut ok = true;
        let mut pos = 0;
        for (off, n, at) in entries(body) {
            count += 1;
            pos = at + n.next_multiple_of(8);
            if at + n > body.len()
                || n == 0
                || off < HEADER_AREA
                || off.checked_add(n).is_none_or(|e| e > pool_size)
                || (off < lane_area.0 + lane_area.1 && lane_area.0 < off + n.max(1))
            {
                ok = false;
                break;
            }
        }
        if !ok || pos != len || count != h.count.get() {
            return Err(PoolError::Lanes("a staged record is malformed"));
        }
        found.push(Found {
            seq: h.seq.get(),
            lane,
        });
    }
    if found.is_empty() {
        return Ok((w, 0));
    }
    found.sort_unstable_by_key(|f| f.seq);
    let pers = core.persister();
    for f in &found {
        let (log, _) = logs[f.lane];
        // SAFETY: validated above: the record lies inside the log, its ranges inside the pool
        // and outside the lane area (so source and destination do not overlap).
        unsafe {
            let h: StagedHeader =
                read_from(std::slice::from_raw_parts(log as *const u8, STAGED_HEADER))
                    .expect("32 bytes");
            let body = std::slice::from_raw_parts(
                log.add(STAGED_HEADER) as *const u8,
                h.len.get() as usize,
            );
            for (off, n, at) in entries(body) {
                std::ptr::copy_nonoverlapping(body[at..].as_ptr(), base.add(off), n);
                pers.flush(base.add(off), n);
            }
        }
    }
    // Ordering: the replayed bytes are durable before the watermark passes the records.
    pers.drain();
    let last = found.last().expect("not empty").seq;
    // SAFETY: caller's contract (aligned word inside the lane area).
    unsafe {
        store_u64(retired_word, last);
        pers.persist(retired_word, 8);
    }
    Ok((last, found.len()))
}

/// Whether a lane area with these feature bits uses staged records.
pub(crate) fn enabled(features: u64) -> bool {
    features & LANE_FEATURE_STAGED != 0
}
