//! Thread caches grow for batch patterns: a thread that frees more blocks of a class than its
//! cache holds gets a bigger cache (up to 64 KiB of blocks per class), so a repeated batch of
//! 1000 allocations and frees stays out of the shared bins after the first round.

use pmem_alloc::volatile::VolatileHeap;
use std::alloc::Layout;

#[test]
fn batch_frees_grow_the_cache_within_its_byte_bound() {
    let heap = VolatileHeap::anonymous(64 << 20).unwrap();
    let l = Layout::from_size_align(64, 8).unwrap();
    let mut v: Vec<*mut u8> = (0..1000).map(|_| heap.alloc(l)).collect();
    assert!(v.iter().all(|p| !p.is_null()));
    for &p in &v {
        // SAFETY: allocated above with `l`, freed once.
        unsafe { heap.dealloc(p, l) };
    }
    let cached = heap.stats().cached;
    assert!(cached >= 1000 * 64, "all 1000 blocks stay cached: {cached}");
    // a second round is served from the cache: the same blocks come back
    let mut w: Vec<*mut u8> = (0..1000).map(|_| heap.alloc(l)).collect();
    v.sort();
    w.sort();
    assert_eq!(v, w);
    for &p in &w {
        // SAFETY: as above.
        unsafe { heap.dealloc(p, l) };
    }
    // the bound: 64 KiB of 64-byte blocks per class (1024); more frees go back to the bins
    let many: Vec<*mut u8> = (0..5000).map(|_| heap.alloc(l)).collect();
    for &p in &many {
        // SAFETY: as above.
        unsafe { heap.dealloc(p, l) };
    }
    let cached = heap.stats().cached;
    assert!(cached <= 64 << 10, "cache bounded: {cached}");
}
