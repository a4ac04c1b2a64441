//! Size classes: pure tables, no state.
//!
//! - 16 B quantum up to 128 B (16, 32, .., 128);
//! - above, 8 classes per doubling (128 < c <= 32 KiB), so a request larger than 128 B wastes
//!   at most 1/9 (11.1%) of its block, within the 12.5% bound;
//! - above [`MAX_SMALL`], allocations are *large*: whole 4 KiB pages from the extent allocator
//!   (at most one page of waste, under 12.5% for anything above 32 KiB).
//!
//! Each class is served from *runs*: spans of [`PAGE`]-sized pages holding blocks of that class
//! back to back from the run start (so a power-of-two class is naturally aligned, up to the
//! page size). The run length is chosen per class to keep the unusable tail small.

/// Page size of the heap: the unit of the extent allocator and of the page map.
pub const PAGE: usize = 4096;
/// log2 of [`PAGE`].
pub const PAGE_SHIFT: u32 = 12;
/// Largest size served from runs.
pub const MAX_SMALL: usize = 32 << 10;
/// Number of size classes.
pub const NCLASSES: usize = 8 + 8 * 8;
/// Most blocks a page can hold (16-byte blocks): the run bitmap has 32 bytes per page.
pub const MAX_BLOCKS_PER_PAGE: usize = PAGE / 16;
/// Bitmap bytes per page.
pub const BITMAP_BYTES_PER_PAGE: usize = MAX_BLOCKS_PER_PAGE / 8;

const fn class_size_const(c: usize) -> usize {
    if c < 8 {
        16 * (c + 1)
    } else {
        let g = (c - 8) / 8; // group: 128 << g .. 256 << g
        let i = (c - 8) % 8 + 1;
        (128 << g) + i * (16 << g)
    }
}

const fn run_pages_const(size: usize) -> usize {
    // Smallest run of at least 16 KiB and 8 blocks; then the length in [min, 2*min] with the
    // smallest unusable tail.
    let mut min = (size * 8).div_ceil(PAGE);
    if min < 4 {
        min = 4;
    }
    let mut best = min;
    let mut best_waste = usize::MAX;
    let mut n = min;
    while n <= 2 * min {
        let bytes = n * PAGE;
        // waste relative to the run, scaled to avoid floats
        let waste = (bytes % size) * 1024 / bytes;
        if waste < best_waste {
            best_waste = waste;
            best = n;
        }
        n += 1;
    }
    best
}

const fn build_sizes() -> [u32; NCLASSES] {
    let mut t = [0u32; NCLASSES];
    let mut c = 0;
    while c < NCLASSES {
        t[c] = class_size_const(c) as u32;
        c += 1;
    }
    t
}

const fn build_pages() -> [u16; NCLASSES] {
    let mut t = [0u16; NCLASSES];
    let mut c = 0;
    while c < NCLASSES {
        t[c] = run_pages_const(class_size_const(c)) as u16;
        c += 1;
    }
    t
}

/// Block size of each class.
pub static CLASS_SIZE: [u32; NCLASSES] = build_sizes();

const fn build_recips() -> [u32; NCLASSES] {
    let mut t = [0u32; NCLASSES];
    let mut c = 0;
    while c < NCLASSES {
        let d = class_size_const(c) as u64;
        t[c] = ((1u64 << 32).div_ceil(d)) as u32;
        c += 1;
    }
    t
}

/// `ceil(2^32 / class size)`: `(offset * CLASS_RECIP[c]) >> 32 == offset / size` for every
/// block start `offset = i * size` of a run (exact because `offset` stays far below 2^32: with
/// `m = 2^32/size + e`, `e < 1`, the error term `i * size * e / 2^32` is below 1), without a
/// division on the free path.
pub static CLASS_RECIP: [u32; NCLASSES] = build_recips();

/// The index of the block starting `offset` bytes into a run of class `c` (exact for block
/// starts; see [`CLASS_RECIP`]).
#[inline]
pub fn block_index(c: usize, offset: usize) -> usize {
    ((offset as u64 * CLASS_RECIP[c] as u64) >> 32) as usize
}
/// Pages per run of each class.
pub static RUN_PAGES: [u16; NCLASSES] = build_pages();

const _: () = assert!(class_size_const(NCLASSES - 1) == MAX_SMALL);
const _: () = assert!(class_size_const(7) == 128 && class_size_const(8) == 144);

/// Entries of [`CLASS_LUT`]: one per 16 bytes up to [`MAX_SMALL`].
const LUT_LEN: usize = MAX_SMALL / 16 + 1;

/// The class of every small size, index `ceil(size / 16)` (every class is a multiple of 16, so
/// rounding up to 16 keeps the class): one load, no branch on the size. A branch between a
/// table and a formula costs a misprediction per call when sizes on both sides are mixed at
/// random.
static CLASS_LUT: [u8; LUT_LEN] = {
    let mut t = [0u8; LUT_LEN];
    let mut i = 0;
    let mut c = 0;
    while i < LUT_LEN {
        let size = if i == 0 { 1 } else { i * 16 };
        while class_size_const(c) < size {
            c += 1;
        }
        t[i] = c as u8;
        i += 1;
    }
    t
};

/// The class for a request of `size` bytes (`size <= MAX_SMALL`), or `None` for large.
///
/// # Examples
/// ```
/// use pmem_alloc::size_class::{class_of, class_size};
/// assert_eq!(class_size(class_of(1).unwrap()), 16);
/// assert_eq!(class_size(class_of(129).unwrap()), 144);
/// assert!(class_of(40_000).is_none());
/// ```
#[inline]
pub fn class_of(size: usize) -> Option<usize> {
    if size > MAX_SMALL {
        return None;
    }
    // SAFETY: `size <= MAX_SMALL`, so the index is at most `MAX_SMALL / 16 < LUT_LEN`.
    Some(unsafe { *CLASS_LUT.get_unchecked(size.div_ceil(16)) } as usize)
}

/// The smallest class of at least `size` bytes whose blocks are `align`-aligned (for
/// `align <= PAGE`; runs start page aligned, so a class that is a multiple of `align` works).
#[inline]
pub fn class_for_layout(size: usize, align: usize) -> Option<usize> {
    if align <= 16 {
        // every class is a multiple of 16 (and size 0 maps to the smallest class)
        return class_of(size);
    }
    let mut c = class_of(size.max(align.min(MAX_SMALL)))?;
    if align > PAGE {
        return None;
    }
    while c < NCLASSES {
        if (CLASS_SIZE[c] as usize).is_multiple_of(align) {
            return Some(c);
        }
        c += 1;
    }
    None
}

/// Block size of class `c`.
#[inline]
pub fn class_size(c: usize) -> usize {
    CLASS_SIZE[c] as usize
}

/// Pages per run of class `c`.
#[inline]
pub fn run_pages(c: usize) -> usize {
    RUN_PAGES[c] as usize
}

/// Blocks per run of class `c`.
#[inline]
pub fn run_blocks(c: usize) -> usize {
    run_pages(c) * PAGE / class_size(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_are_increasing_and_aligned() {
        for c in 1..NCLASSES {
            assert!(CLASS_SIZE[c] > CLASS_SIZE[c - 1]);
            assert_eq!(CLASS_SIZE[c] % 16, 0);
        }
    }

    #[test]
    fn internal_fragmentation_is_bounded() {
        for size in 1..=MAX_SMALL {
            let c = class_of(size).unwrap();
            let cs = class_size(c);
            assert!(cs >= size, "size {size} class {cs}");
            if c > 0 {
                assert!(
                    class_size(c - 1) < size,
                    "size {size} not the smallest class"
                );
            }
            if size > 128 {
                assert!(
                    (cs - size) * 8 <= cs,
                    "size {size} in class {cs} wastes more than 12.5%"
                );
            }
        }
    }

    #[test]
    fn the_table_ends_at_the_largest_small_size() {
        assert_eq!(class_of(MAX_SMALL), Some(NCLASSES - 1));
        assert_eq!(class_of(MAX_SMALL + 1), None);
        assert_eq!(class_of(usize::MAX), None);
        assert_eq!(class_of(0), Some(0));
        assert_eq!(class_for_layout(0, 8), Some(0));
        assert_eq!(class_size(class_of(1024).unwrap()), 1024);
        assert_eq!(class_size(class_of(1025).unwrap()), 1152);
    }

    #[test]
    fn runs_hold_at_least_eight_blocks_and_fit_the_bitmap() {
        for c in 0..NCLASSES {
            let n = run_blocks(c);
            assert!(n >= 8, "class {} has {n} blocks", class_size(c));
            assert!(n <= run_pages(c) * MAX_BLOCKS_PER_PAGE);
            let tail = run_pages(c) * PAGE - n * class_size(c);
            assert!(
                tail * 16 <= run_pages(c) * PAGE,
                "class {} tail {tail}",
                class_size(c)
            );
        }
    }

    #[test]
    fn reciprocal_division_is_exact_for_every_block_start() {
        for c in 0..NCLASSES {
            for i in 0..run_blocks(c) {
                assert_eq!(
                    block_index(c, i * class_size(c)),
                    i,
                    "class {}",
                    class_size(c)
                );
            }
        }
    }

    #[test]
    fn layout_classes_honour_alignment() {
        for align in [1, 2, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096] {
            for size in [1, 7, 16, 100, 1000, 4096, 5000, 20000] {
                if let Some(c) = class_for_layout(size, align) {
                    assert!(class_size(c) >= size);
                    assert_eq!(class_size(c) % align.max(16), 0);
                }
            }
        }
        assert!(class_for_layout(8, 8192).is_none());
    }
}
