//! The volatile heap: collections through the Allocator API, several heaps at once, alignment and
//! reference-model property tests, in-place realloc, zeroed memory, hole punching, growth, stats.

use allocator_api2::vec::Vec as AVec;
use pmem_alloc::volatile::VolatileHeap;
use proptest::prelude::*;
use std::alloc::Layout;
use std::collections::BTreeMap;

fn file_heap(dir: &std::path::Path, size: u64) -> VolatileHeap {
    VolatileHeap::builder().dir(dir).size(size).build().unwrap()
}

/// An anonymous heap of `size` bytes that may grow to `max` bytes.
fn anon_heap(size: u64, max: u64) -> VolatileHeap {
    VolatileHeap::builder()
        .anonymous()
        .size(size)
        .max_size(max)
        .build()
        .unwrap()
}

/// Allocates blocks of `l` until the heap refuses; returns their addresses.
fn alloc_until_full(h: &VolatileHeap, l: Layout) -> Vec<usize> {
    let mut v = Vec::new();
    loop {
        let p = h.alloc(l);
        if p.is_null() {
            return v;
        }
        v.push(p as usize);
    }
}

#[test]
fn collections_live_in_the_heap_and_several_heaps_coexist() {
    let d = tempfile::tempdir().unwrap();
    let a = file_heap(d.path(), 32 << 20);
    let b = VolatileHeap::anonymous(32 << 20).unwrap();
    let mut va: AVec<u64, _> = AVec::new_in(&a);
    let mut m: hashbrown::HashMap<u64, AVec<u8, &VolatileHeap>, _, _> =
        hashbrown::HashMap::with_hasher_in(hashbrown::DefaultHashBuilder::default(), &b);
    for i in 0..20_000u64 {
        va.push(i * 3);
        let mut v = AVec::new_in(&b);
        v.extend_from_slice(&i.to_le_bytes());
        m.insert(i, v);
    }
    assert!(a.owns(va.as_ptr().cast()));
    assert!(!b.owns(va.as_ptr().cast()));
    assert!(b.owns(m.get(&7).unwrap().as_ptr()));
    assert_eq!(va.iter().sum::<u64>(), 3 * (20_000 * 19_999 / 2));
    assert_eq!(m[&12345][..], 12345u64.to_le_bytes());
    let sa = a.stats();
    assert!(sa.in_use >= 160_000, "{sa}");
    drop(va);
    drop(m);
    let sb = b.stats();
    assert!(sb.in_use < 1 << 20, "{sb}");
    assert!(format!("{}", a.stats()).contains("in use"));
    a.core().check().unwrap();
    b.core().check().unwrap();
}

#[test]
fn every_alignment_up_to_64k_is_honoured() {
    let h = VolatileHeap::anonymous(64 << 20).unwrap();
    let mut blocks = vec![];
    for shift in 0..=16 {
        let align = 1usize << shift;
        for size in [1, 7, align, align + 1, 3 * align, 40_000] {
            let l = Layout::from_size_align(size, align).unwrap();
            let p = h.alloc(l);
            assert!(!p.is_null());
            assert_eq!(p as usize % align, 0, "size {size} align {align}");
            // SAFETY: fresh block of `size` bytes.
            unsafe { std::ptr::write_bytes(p, 0xAB, size) };
            blocks.push((p, l));
        }
    }
    for (p, l) in blocks {
        // SAFETY: allocated above with `l`.
        unsafe { h.dealloc(p, l) };
    }
    h.core().check().unwrap();
}

#[test]
fn realloc_stays_in_place_when_the_block_allows() {
    let h = VolatileHeap::anonymous(64 << 20).unwrap();
    let l = Layout::from_size_align(100, 8).unwrap();
    let p = h.alloc(l);
    // 100 and 110 share the 112-byte class
    // SAFETY: live block of this heap.
    let q = unsafe { h.realloc(p, l, 110) };
    assert_eq!(p, q);
    // a large block grows into the free pages after it
    let big = Layout::from_size_align(100_000, 16).unwrap();
    let p = h.alloc(big);
    // SAFETY: writing within the block.
    unsafe { std::ptr::write_bytes(p, 7, 100_000) };
    // SAFETY: live block.
    let q = unsafe { h.realloc(p, big, 300_000) };
    assert_eq!(p, q, "fresh heap: the pages after the block are free");
    // SAFETY: the first 100_000 bytes were preserved.
    assert!(unsafe { std::slice::from_raw_parts(q, 100_000) }
        .iter()
        .all(|&b| b == 7));
    // SAFETY: live block, now 300_000 bytes.
    unsafe { h.dealloc(q, Layout::from_size_align(300_000, 16).unwrap()) };
    h.core().check().unwrap();
}

#[test]
fn zeroed_allocations_are_zero_even_after_reuse() {
    let h = VolatileHeap::anonymous(64 << 20).unwrap();
    for round in 0..3 {
        let mut v = vec![];
        for size in [16usize, 200, 5000, 40_000, 3 << 20] {
            let l = Layout::from_size_align(size, 16).unwrap();
            let p = h.alloc_zeroed(l);
            // SAFETY: fresh block.
            let s = unsafe { std::slice::from_raw_parts_mut(p, size) };
            assert!(s.iter().all(|&b| b == 0), "round {round} size {size}");
            s.fill(0xEE);
            v.push((p, l));
        }
        for (p, l) in v {
            // SAFETY: allocated above.
            unsafe { h.dealloc(p, l) };
        }
    }
}

fn file_blocks(path: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().blocks() * 512
}

#[test]
fn large_frees_return_space_to_the_file_system() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("heap");
    let h = VolatileHeap::builder()
        .file(&path)
        .size(128 << 20)
        .build()
        .unwrap();
    let l = Layout::from_size_align(8 << 20, 4096).unwrap();
    let blocks: Vec<_> = (0..8).map(|_| h.alloc(l)).collect();
    for &p in &blocks {
        // SAFETY: fresh 8 MiB blocks.
        unsafe { std::ptr::write_bytes(p, 1, 8 << 20) };
    }
    let full = file_blocks(&path);
    for p in blocks {
        // SAFETY: allocated above.
        unsafe { h.dealloc(p, l) };
    }
    let after = file_blocks(&path);
    assert!(
        after + (48 << 20) <= full,
        "file used {full} bytes, still {after} after freeing 64 MiB"
    );
}

#[test]
fn the_heap_grows_on_demand() {
    let h = anon_heap(1 << 20, 512 << 20);
    let l = Layout::from_size_align(1 << 20, 16).unwrap();
    let v: Vec<_> = (0..100).map(|_| h.alloc(l)).collect();
    assert!(v.iter().all(|p| !p.is_null()));
    assert!(h.stats().mapped >= 100 << 20);
    let small: Vec<_> = (0..10_000)
        .map(|_| h.alloc(Layout::new::<[u64; 4]>()))
        .collect();
    assert!(small.iter().all(|p| !p.is_null()));
    h.core().check().unwrap();
    // beyond the limit: null, not a crash
    let huge = Layout::from_size_align(1 << 30, 16).unwrap();
    assert!(h.alloc(huge).is_null());
}

#[test]
fn cross_thread_frees_and_thread_exit_return_caches() {
    let h = VolatileHeap::anonymous(64 << 20).unwrap();
    let l = Layout::from_size_align(64, 8).unwrap();
    let ptrs: Vec<usize> = std::thread::scope(|s| {
        s.spawn(|| (0..10_000).map(|_| h.alloc(l) as usize).collect())
            .join()
            .unwrap()
    });
    // the allocating thread has exited: its cache was flushed
    let cached_after_exit = h.stats().cached;
    assert!(cached_after_exit < 64 * 64, "{}", h.stats());
    std::thread::scope(|s| {
        for chunk in ptrs.chunks(2500) {
            let h = &h;
            s.spawn(move || {
                for &p in chunk {
                    // SAFETY: allocated above with `l`, freed once.
                    unsafe { h.dealloc(p as *mut u8, l) };
                }
            });
        }
    });
    let st = h.stats();
    assert_eq!(st.in_use, 0, "{st}");
    h.core().check().unwrap();
}

/// Whether `len` bytes at `p` (a live block of the test) all equal `t`.
fn filled(p: *const u8, len: usize, t: u8) -> bool {
    // SAFETY: callers pass live blocks of at least `len` bytes.
    unsafe { std::slice::from_raw_parts(p, len) }
        .iter()
        .all(|&b| b == t)
}

#[derive(Debug, Clone)]
enum Op {
    Alloc { size: usize, align_shift: u32 },
    Free(usize),
    Realloc(usize, usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (prop_oneof![1usize..512, 1usize..40_000, 30_000usize..300_000], 0u32..13)
            .prop_map(|(size, align_shift)| Op::Alloc { size, align_shift }),
        3 => any::<usize>().prop_map(Op::Free),
        2 => (any::<usize>(), 1usize..100_000).prop_map(|(i, s)| Op::Realloc(i, s)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    /// Against a reference model: live blocks never overlap, keep their contents, respect their
    /// alignment; the checker passes after every sequence.
    #[test]
    fn reference_model(ops in proptest::collection::vec(op(), 1..200)) {
        let h = VolatileHeap::anonymous(8 << 20).unwrap();
        let mut live: Vec<(usize, Layout, u8)> = vec![];
        let mut tag = 0u8;
        for o in ops {
            match o {
                Op::Alloc { size, align_shift } => {
                    let l = Layout::from_size_align(size, 1 << align_shift).unwrap();
                    let p = h.alloc(l);
                    prop_assert!(!p.is_null());
                    prop_assert_eq!(p as usize % l.align(), 0);
                    tag = tag.wrapping_add(1);
                    // SAFETY: fresh block of `size` bytes.
                    unsafe { std::ptr::write_bytes(p, tag, size) };
                    live.push((p as usize, l, tag));
                }
                Op::Free(i) if !live.is_empty() => {
                    let (p, l, t) = live.swap_remove(i % live.len());
                    prop_assert!(filled(p as *const u8, l.size(), t));
                    // SAFETY: allocated with `l`.
                    unsafe { h.dealloc(p as *mut u8, l) };
                }
                Op::Realloc(i, s) if !live.is_empty() => {
                    let k = i % live.len();
                    let (p, l, t) = live[k];
                    // SAFETY: live block of this heap.
                    let q = unsafe { h.realloc(p as *mut u8, l, s) };
                    prop_assert!(!q.is_null());
                    let keep = l.size().min(s);
                    prop_assert!(filled(q, keep, t));
                    // SAFETY: fill the rest of the new block with the tag.
                    unsafe { std::ptr::write_bytes(q, t, s) };
                    live[k] = (q as usize, Layout::from_size_align(s, l.align()).unwrap(), t);
                }
                _ => {}
            }
            // no overlap among live blocks
            let mut iv: BTreeMap<usize, usize> = BTreeMap::new();
            for &(p, l, _) in &live {
                iv.insert(p, p + l.size());
            }
            let mut end = 0;
            for (&s, &e) in &iv {
                prop_assert!(s >= end, "overlap at {s:#x}");
                end = e;
            }
        }
        for (p, l, t) in live {
            prop_assert!(filled(p as *const u8, l.size(), t));
            // SAFETY: allocated with `l`.
            unsafe { h.dealloc(p as *mut u8, l) };
        }
        if let Err(e) = h.core().check() {
            prop_assert!(false, "check: {}", e);
        }
        prop_assert_eq!(h.stats().in_use, 0);
    }
}

/// A block that one thread allocated and another frees is not handed out again by the freeing
/// thread (its next allocation would write a cache line the first thread's live blocks share:
/// false sharing); it goes back to the heap in a batch and nothing is lost.
#[test]
fn a_block_freed_by_another_thread_is_not_reused_by_it() {
    let heap = VolatileHeap::anonymous(32 << 20).unwrap();
    let h = &heap;
    let l = Layout::from_size_align(8, 8).unwrap();
    let before = h.stats().in_use;
    let (to_b, from_a) = std::sync::mpsc::channel::<usize>();
    // B drops `done` when it has finished (or failed); A stays alive until then, so that its
    // run stays its own
    let (done, wait_done) = std::sync::mpsc::channel::<()>();
    std::thread::scope(|s| {
        s.spawn(move || {
            let blocks: Vec<usize> = (0..300).map(|_| h.alloc(l) as usize).collect();
            for p in blocks {
                to_b.send(p).unwrap();
            }
            drop(to_b);
            let _ = wait_done.recv();
        });
        s.spawn(move || {
            let _done = done;
            let mut mine = Vec::new();
            for p in from_a {
                // SAFETY: a live block of this heap with layout `l`, freed once.
                unsafe { h.dealloc(p as *mut u8, l) };
                let q = h.alloc(l);
                assert!(!q.is_null());
                assert_ne!(
                    q as usize, p,
                    "the freeing thread reused the other thread's block"
                );
                mine.push(q);
            }
            for q in mine {
                // SAFETY: allocated above with layout `l`, freed once.
                unsafe { h.dealloc(q, l) };
            }
        });
    });
    h.core().flush_all_caches();
    assert_eq!(h.stats().in_use, before, "blocks lost or counted twice");
    h.core().check().unwrap();
}

/// Two live threads allocating the same small size get blocks from different runs, even when
/// the heap has a run with free blocks scattered through it (left by a thread that has exited):
/// no cache line holds blocks of both (allocator-induced false sharing).
#[test]
fn live_threads_do_not_share_cache_lines() {
    let heap = VolatileHeap::anonymous(32 << 20).unwrap();
    let h = &heap;
    let l = Layout::from_size_align(16, 8).unwrap();
    // a thread allocates 128 blocks, frees two of every three and exits (its cache goes back
    // to the heap): a run with free blocks in every cache line
    let kept: Vec<usize> = std::thread::scope(|s| {
        s.spawn(|| {
            let got: Vec<usize> = (0..128).map(|_| h.alloc(l) as usize).collect();
            let mut kept = Vec::new();
            for (i, p) in got.into_iter().enumerate() {
                if i % 3 == 0 {
                    kept.push(p);
                } else {
                    // SAFETY: allocated above with layout `l`, freed once.
                    unsafe { h.dealloc(p as *mut u8, l) };
                }
            }
            kept
        })
        .join()
        .unwrap()
    });
    // then two threads, both alive, allocate one after the other
    let (a_done, b_done) = (std::sync::Barrier::new(2), std::sync::Barrier::new(2));
    let lines: Vec<Vec<usize>> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..2)
            .map(|t| {
                let (a_done, b_done) = (&a_done, &b_done);
                s.spawn(move || {
                    if t == 1 {
                        a_done.wait();
                    }
                    // two whole cache refills
                    let got: Vec<usize> = (0..128).map(|_| h.alloc(l) as usize).collect();
                    if t == 0 {
                        a_done.wait();
                    }
                    b_done.wait();
                    let lines = got.iter().map(|p| p / 64).collect();
                    for p in got {
                        // SAFETY: allocated above with layout `l`, freed once.
                        unsafe { h.dealloc(p as *mut u8, l) };
                    }
                    lines
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let a: std::collections::HashSet<usize> = lines[0].iter().copied().collect();
    let shared = lines[1].iter().filter(|l| a.contains(l)).count();
    assert_eq!(
        shared, 0,
        "{shared} cache lines hold blocks of both threads"
    );
    for p in kept {
        // SAFETY: allocated by the first thread with layout `l`, freed once.
        unsafe { h.dealloc(p as *mut u8, l) };
    }
    h.core().flush_all_caches();
    h.core().check().unwrap();
}

/// Bins are sharded by thread: a thread whose own shard has no runs left and whose heap has no
/// free extents still gets the blocks that another thread freed into its shard's runs, instead
/// of failing with memory to spare. (When the two threads' ids fall into one shard, which is
/// one case in eight, this passes without crossing shards.)
#[test]
fn a_full_heap_serves_a_thread_from_blocks_freed_in_another_threads_shard() {
    let h = anon_heap(4 << 20, 4 << 20);
    let l = Layout::from_size_align(64, 8).unwrap();
    let filled = std::sync::Barrier::new(2);
    let done = std::sync::Barrier::new(2);
    let (freed, got) = std::thread::scope(|s| {
        let a = s.spawn(|| {
            let v = alloc_until_full(&h, l);
            let mut freed = 0;
            for (i, &p) in v.iter().enumerate() {
                if i % 2 == 0 {
                    // SAFETY: allocated above with `l`, freed once.
                    unsafe { h.dealloc(p as *mut u8, l) };
                    freed += 1;
                }
            }
            filled.wait();
            // stay alive (keeping this thread's id and shard) while the other allocates
            done.wait();
            for (i, &p) in v.iter().enumerate() {
                if i % 2 == 1 {
                    // SAFETY: as above.
                    unsafe { h.dealloc(p as *mut u8, l) };
                }
            }
            freed
        });
        let b = s.spawn(|| {
            filled.wait();
            let v = alloc_until_full(&h, l);
            done.wait();
            for &p in &v {
                // SAFETY: allocated above with `l`, freed once.
                unsafe { h.dealloc(p as *mut u8, l) };
            }
            v.len()
        });
        (a.join().unwrap(), b.join().unwrap())
    });
    // the freeing thread's cache keeps at most 1024 blocks of the class
    assert!(freed > 20_000, "the heap held only {} blocks", 2 * freed);
    assert!(
        got + 1024 >= freed,
        "freed {freed} blocks, the other thread got {got}"
    );
    assert_eq!(h.stats().in_use, 0, "{}", h.stats());
    h.core().check().unwrap();
}

/// Sharding the bins does not multiply the memory held in empty runs: after threads on
/// different shards allocate and free blocks of one class and exit, at most one completely free
/// run of that class is kept; the others went back to the extent allocator.
#[test]
fn at_most_one_empty_run_per_class_is_kept_over_all_shards() {
    use pmem_alloc::size_class::{class_of, run_pages};
    let h = VolatileHeap::anonymous(256 << 20).unwrap();
    let size = 20 << 10;
    let l = Layout::from_size_align(size, 8).unwrap();
    let c = class_of(size).unwrap();
    let before = h.stats().run_pages;
    // all alive at once: eight thread ids, so (with consecutive ids) eight shards
    let together = std::sync::Barrier::new(8);
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                together.wait();
                let v: Vec<usize> = (0..40).map(|_| h.alloc(l) as usize).collect();
                assert!(v.iter().all(|&p| p != 0));
                together.wait();
                for p in v {
                    // SAFETY: allocated above with `l`, freed once.
                    unsafe { h.dealloc(p as *mut u8, l) };
                }
            });
        }
    });
    // the threads are done (one may still be running its thread-exit flush: this waits for it)
    h.core().flush_all_caches();
    let st = h.stats();
    assert_eq!(st.in_use, 0, "{st}");
    assert!(
        st.run_pages - before <= run_pages(c) as u64,
        "{} run pages kept for class {c} (one run: {})",
        st.run_pages - before,
        run_pages(c)
    );
    h.core().check().unwrap();
}
