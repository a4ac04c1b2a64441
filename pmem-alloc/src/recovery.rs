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
