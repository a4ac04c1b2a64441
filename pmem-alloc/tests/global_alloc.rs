//! This test binary's global allocator is the PMEM heap (file-backed, in an unlinked file under
//! /dev/shm): the whole test harness, std's internals included, allocates from it.

use pmem_alloc::global::PmemGlobalAlloc;
use std::collections::{BTreeMap, HashMap};

#[global_allocator]
static GLOBAL: PmemGlobalAlloc = PmemGlobalAlloc::new()
    .dir("/dev/shm")
    .size(64 << 20)
    .quiet();

fn on_heap<T>(p: *const T) -> bool {
    GLOBAL
        .heap()
        .expect("the global heap exists")
        .owns(p.cast())
}

#[test]
fn the_global_heap_is_file_backed_and_used() {
    let v = vec![1u8; 1000];
    assert!(on_heap(v.as_ptr()));
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    assert!(
        maps.contains("/dev/shm/.pmem-heap-"),
        "heap file mapping not found in maps"
    );
    let s = GLOBAL.stats().unwrap();
    assert!(s.in_use > 0 && s.mapped >= 64 << 20, "{s}");
}

#[test]
fn multi_threaded_collections_and_strings() {
    let results: Vec<u64> = (0..4)
        .map(|t| {
            std::thread::spawn(move || {
                let mut m: HashMap<String, Vec<u64>> = HashMap::new();
                let mut b = BTreeMap::new();
                for i in 0..20_000u64 {
                    let k = format!("key-{t}-{i}");
                    m.entry(k.clone()).or_default().push(i);
                    b.insert(i, k);
                    if i % 3 == 0 {
                        m.remove(&format!("key-{t}-{}", i / 2));
                    }
                }
                let mut s = String::new();
                for (_, v) in b.iter().take(1000) {
                    s.push_str(v);
                }
                assert!(on_heap(s.as_ptr()));
                m.values().map(|v| v.iter().sum::<u64>()).sum::<u64>() + s.len() as u64
            })
        })
        .map(|h| h.join().unwrap())
        .collect();
    // the four threads computed the same shape of data
    assert!(results.iter().all(|&r| r > 0));
    assert_eq!(results.len(), 4);
}

#[test]
fn large_and_aligned_allocations() {
    let big = vec![7u64; 4 << 20];
    assert!(on_heap(big.as_ptr()));
    let layout = std::alloc::Layout::from_size_align(10_000, 8192).unwrap();
    // SAFETY: non-zero size; freed below with the same layout.
    let p = unsafe { std::alloc::alloc(layout) };
    assert_eq!(p as usize % 8192, 0);
    // SAFETY: allocated above.
    unsafe { std::alloc::dealloc(p, layout) };
    let mut v: Vec<u32> = Vec::new();
    for i in 0..1_000_000 {
        v.push(i); // repeated realloc
    }
    assert_eq!(v[999_999], 999_999);
}

#[test]
fn a_forked_child_keeps_allocating_without_touching_the_parent() {
    let shared = vec![42u8; 100_000];
    // SAFETY: fork in a test process: the child only allocates, computes and calls _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        let ok = std::panic::catch_unwind(|| {
            let mut inherited = shared.clone();
            let mut m = HashMap::new();
            for i in 0..50_000u64 {
                m.insert(i, i.to_string());
            }
            // write into memory the parent also has: must stay private to the child
            // SAFETY: the child's copy-on-write view of the parent's vector.
            unsafe { std::ptr::write_bytes(shared.as_ptr() as *mut u8, 0, shared.len()) };
            inherited.extend_from_slice(&[1, 2, 3]);
            m.len() == 50_000 && m[&777] == "777" && on_heap(inherited.as_ptr())
        })
        .unwrap_or(false);
        // SAFETY: leave the child without running the parent's destructors.
        unsafe { libc::_exit(if ok { 0 } else { 1 }) };
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "child failed: {status}"
    );
    assert!(
        shared.iter().all(|&b| b == 42),
        "the child's writes reached the parent"
    );
    // and the parent keeps allocating
    let v: Vec<String> = (0..10_000).map(|i| i.to_string()).collect();
    assert_eq!(v[9_999], "9999");
}
