//! Typed recovery tracers (`PoolOptions::trace`): after a crash only what the tracer marks
//! survives; words that merely look like pointers (in application data) retain nothing.

use pmem_alloc::pool::{Pool, PoolOptions};
use pmem_alloc::pptr::{PPtr, PSafe};
use pmem_alloc::recovery::{Mark, Tracer};

#[repr(C)]
struct Root {
    head: PPtr<Node>,
}
// SAFETY: repr(C), PSafe fields.
unsafe impl PSafe for Root {}

/// `next` is the only pointer; `data` is application data that may contain anything,
/// including words carrying the pointer tag.
#[repr(C)]
struct Node {
    next: PPtr<Node>,
    data: [u64; 3],
}
// SAFETY: repr(C), PSafe fields.
unsafe impl PSafe for Node {}

fn word(b: &[u8], i: usize) -> u64 {
    u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().unwrap())
}

/// Follows root.head and node.next only.
fn trace_list(t: &mut Tracer<'_>) {
    let Some((_, root)) = t.root() else { return };
    let mut next = word(root, 0);
    while let Mark::New(node) = t.mark(next) {
        next = word(node, 0);
    }
}

/// Marks nothing beyond the root: every node is freed.
fn trace_nothing(_t: &mut Tracer<'_>) {}

/// Builds a list of `n` nodes whose data words are tagged pointers to `n` garbage blocks that
/// nothing else references, then crashes.
fn build_and_crash(path: &std::path::Path, n: usize) {
    let pool = Pool::create(path, 8 << 20, &PoolOptions::default()).unwrap();
    let root = pool.root::<Root>().unwrap();
    for i in 0..n {
        let garbage = pool.alloc(64).unwrap();
        let node = pool.alloc_zeroed::<Node>().unwrap();
        let r = pool.get(root).unwrap();
        // SAFETY: single-threaded; both are live blocks of the pool.
        unsafe {
            let np = pool.get(node).unwrap();
            (*np).next = (*r).head;
            (*np).data = [garbage.raw(), i as u64, garbage.raw()];
            pool.persist_val(node);
            (*r).head = node;
            pool.persist_val(root);
        }
    }
    pool.abandon();
}

fn count(pool: &Pool) -> usize {
    let root = pool.root::<Root>().unwrap();
    // SAFETY: the list was built by `build_and_crash` and recovered with its tracer.
    let mut p = unsafe { (*pool.get(root).unwrap()).head };
    let mut n = 0;
    while let Some(np) = pool.get(p) {
        n += 1;
        // SAFETY: as above.
        p = unsafe { (*np).next };
    }
    n
}

#[test]
fn typed_tracer_retains_no_garbage() {
    let d = tempfile::tempdir().unwrap();
    let a = d.path().join("conservative.pool");
    let b = d.path().join("typed.pool");
    build_and_crash(&a, 100);
    build_and_crash(&b, 100);
    let cons = Pool::open(&a, &PoolOptions::default()).unwrap();
    let typed = Pool::open(
        &b,
        &PoolOptions {
            trace: Some(trace_list),
            ..PoolOptions::default()
        },
    )
    .unwrap();
    assert!(cons.open_report().recovered && typed.open_report().recovered);
    // root + 100 nodes + 100 garbage blocks reachable through tagged data words
    assert_eq!(cons.open_report().reachable, 201);
    // root + 100 nodes only
    assert_eq!(typed.open_report().reachable, 101);
    assert_eq!(count(&cons), 100);
    assert_eq!(count(&typed), 100);
    assert!(typed.stats().in_use < cons.stats().in_use);
}

#[test]
fn tracer_decides_what_survives() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("nothing.pool");
    build_and_crash(&p, 50);
    let pool = Pool::open(
        &p,
        &PoolOptions {
            trace: Some(trace_nothing),
            ..PoolOptions::default()
        },
    )
    .unwrap();
    assert_eq!(pool.open_report().reachable, 1, "only the root");
    // 50 nodes (32 B) and 50 garbage blocks (64 B) were allocated; only the root (one small
    // block) is still in use
    let in_use = pool.stats().in_use;
    assert!(in_use <= 64, "in use after recovery: {in_use} bytes");
}

#[test]
fn mark_rejects_interior_and_out_of_range_offsets() {
    fn probe(t: &mut Tracer<'_>) {
        let (root_off, _) = t.root().expect("root");
        assert!(matches!(t.mark(root_off), Mark::Seen), "root is pre-marked");
        assert!(matches!(t.mark(root_off + 8), Mark::Invalid), "interior");
        assert!(matches!(t.mark(0), Mark::Invalid));
        assert!(
            matches!(t.mark(u64::MAX >> 17), Mark::Invalid),
            "beyond the pool"
        );
        assert_eq!(t.marked(), 1);
    }
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("probe.pool");
    build_and_crash(&p, 3);
    let pool = Pool::open(
        &p,
        &PoolOptions {
            trace: Some(probe),
            ..PoolOptions::default()
        },
    )
    .unwrap();
    assert_eq!(pool.open_report().reachable, 1);
}
