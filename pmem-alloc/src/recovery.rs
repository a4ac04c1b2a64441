//! Recovery after an unclean shutdown: a conservative reachability scan from the root.
//!
//! Design (Ralloc's, adapted): nothing about individual blocks is persisted while the heap runs,
//! so allocation and free cost no flush. After a crash the durable page map still describes every
//! run and large extent (it is kept a valid tiling at every instant). Starting at the root
//! object, every 8-byte aligned word of every reachable block is examined; a word carrying the
//! [`PPtr`](crate::pptr::PPtr) tag whose offset falls inside a run block or a large extent marks
//! that block (interior pointers count) and queues it for scanning. Marked blocks become the
//! allocation bitmaps; everything else is free.
//!
//! Why conservative and tag-filtered rather than typed: a typed scan needs a tracing function per
//! persistent type, registered by the application and versioned with the data; a wrong or
//! missing one loses data. The tag (16 bits, `0x504D`) makes accidental retention by integers
//! rare, and retention is the only failure mode of conservatism: it can keep garbage alive, never
//! free live data. Cost: one pass over reachable bytes, O(live data).

use crate::heap::HeapCore;
use crate::layout::{PPTR_OFFSET_MASK, PPTR_TAG};
use crate::persist::Persist;

/// Marks every block reachable from `root_off` (0 = no root). Returns the number of blocks
/// marked.
pub(crate) fn mark_from_root<P: Persist + 'static>(
    core: &HeapCore<P>,
    pool_size: usize,
    root_off: u64,
) -> usize {
    let mut marked = 0;
    let mut stack: Vec<(*const u8, usize)> = Vec::new();
    let visit = |off: u64, stack: &mut Vec<(*const u8, usize)>, marked: &mut usize| {
        let off = off as usize;
        if off >= pool_size {
            return;
        }
        if let Some((start, size, head, idx)) = core.block_at(off) {
            if core.mark(head, idx) {
                *marked += 1;
                stack.push((start, size));
            }
        }
    };
    if root_off != 0 {
        visit(root_off, &mut stack, &mut marked);
    }
    while let Some((p, size)) = stack.pop() {
        let words = size / 8;
        for i in 0..words {
            // SAFETY: `p..p+size` is a block inside the mapped pool (from `block_at`); blocks are
            // at least 16-byte aligned, so word reads are aligned. Volatile: the memory may hold
            // anything after a crash and must be read as it is.
            let w = unsafe { std::ptr::read_volatile(p.add(i * 8).cast::<u64>()) };
            let w = u64::from_le(w);
            if w & !PPTR_OFFSET_MASK == PPTR_TAG {
                visit(w & PPTR_OFFSET_MASK, &mut stack, &mut marked);
            }
        }
    }
    marked
}

/// What the recovery marker needs from the engine (object-safe, so [`Tracer`] is not generic
/// over the persistence policy).
pub(crate) trait MarkTarget {
    /// See [`HeapCore::block_at`].
    fn block_at(&self, off: usize) -> Option<(*mut u8, usize, usize, usize)>;
    /// See [`HeapCore::mark`].
    fn mark(&self, head: usize, idx: usize) -> bool;
}

impl<P: Persist + 'static> MarkTarget for HeapCore<P> {
    fn block_at(&self, off: usize) -> Option<(*mut u8, usize, usize, usize)> {
        HeapCore::block_at(self, off)
    }
    fn mark(&self, head: usize, idx: usize) -> bool {
        HeapCore::mark(self, head, idx)
    }
}

/// An application-supplied recovery tracer: called once during an open that needs recovery,
/// it must [`Tracer::mark`] every block the application still uses. Unmarked blocks become free.
///
/// A typed tracer is an alternative to the default conservative scan for applications that
/// know their data: it reads only the words that are pointers (not, say, cached values), and it
/// retains no garbage. Its obligation is completeness: a live block it fails to mark is freed.
pub type TraceFn = fn(&mut Tracer<'_>);

/// Result of [`Tracer::mark`].
#[derive(Debug)]
pub enum Mark<'a> {
    /// The offset is the start of an allocated-looking block that was not marked before; here
    /// are its bytes (the whole block: its size class or its pages), to be read for further
    /// pointers. The contents are whatever the media held at the crash.
    New(&'a [u8]),
    /// The block was marked already (a second path to it, or a cycle).
    Seen,
    /// The offset is not the start of a block in a run or large extent (null, out of range, an
    /// interior pointer, or a free page).
    Invalid,
}

/// Handed to a [`TraceFn`] during recovery.
pub struct Tracer<'a> {
    target: &'a dyn MarkTarget,
    base: *const u8,
    pool_size: usize,
    root_off: u64,
    marked: usize,
}

impl std::fmt::Debug for Tracer<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracer")
            .field("pool_size", &self.pool_size)
            .field("root_off", &self.root_off)
            .field("marked", &self.marked)
            .finish()
    }
}

impl<'a> Tracer<'a> {
    /// The root object's offset (0 if the pool has none) and bytes. The root is marked
    /// before the tracer runs.
    pub fn root(&self) -> Option<(u64, &'a [u8])> {
        if self.root_off == 0 {
            return None;
        }
        let (p, size, _, _) = self.target.block_at(self.root_off as usize)?;
        // SAFETY: `block_at` returns a block inside the mapped pool; the pool is opened by a
        // single thread and nothing writes while the tracer runs.
        Some((self.root_off, unsafe {
            std::slice::from_raw_parts(p, size)
        }))
    }

    /// Marks the block starting at pool offset `off` (the offset of a [`crate::PPtr`], tag or
    /// no tag) as in use.
    pub fn mark(&mut self, off: u64) -> Mark<'a> {
        let off = if off & !PPTR_OFFSET_MASK == PPTR_TAG {
            off & PPTR_OFFSET_MASK
        } else {
            off
        };
        if off == 0 || off >= self.pool_size as u64 {
            return Mark::Invalid;
        }
        match self.target.block_at(off as usize) {
            Some((p, size, head, idx)) if p as usize == self.base as usize + off as usize => {
                if self.target.mark(head, idx) {
                    self.marked += 1;
                    // SAFETY: as in `root`.
                    Mark::New(unsafe { std::slice::from_raw_parts(p, size) })
                } else {
                    Mark::Seen
                }
            }
            _ => Mark::Invalid,
        }
    }

    /// Blocks marked so far (the root included).
    pub fn marked(&self) -> usize {
        self.marked
    }
}

/// Marks the root, then runs the application's tracer. Returns the number of blocks marked.
pub(crate) fn mark_typed<P: Persist + 'static>(
    core: &HeapCore<P>,
    pool_size: usize,
    root_off: u64,
    trace: TraceFn,
) -> usize {
    let mut t = Tracer {
        target: core,
        base: core.base(),
        pool_size,
        root_off,
        marked: 0,
    };
    if root_off != 0 {
        if let Mark::Invalid = t.mark(root_off) {
            t.root_off = 0;
        }
    }
    trace(&mut t);
    t.marked
}
