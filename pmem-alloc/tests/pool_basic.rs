//! Pool lifecycle: create, allocate, close, reopen (clean and after a simulated crash).

use pmem_alloc::pool::{Pool, PoolError, PoolOptions};
use pmem_alloc::pptr::{PPtr, PSafe};

#[repr(C)]
struct Root {
    head: PPtr<Node>,
    count: u64,
}
// SAFETY: repr(C), PSafe fields.
unsafe impl PSafe for Root {}

#[repr(C)]
struct Node {
    next: PPtr<Node>,
    value: u64,
    pad: [u64; 2],
}
// SAFETY: repr(C), PSafe fields.
unsafe impl PSafe for Node {}

fn push(pool: &Pool, root: PPtr<Root>, value: u64) {
    let n = pool.alloc_zeroed::<Node>().unwrap();
    let r = pool.get(root).unwrap();
    // SAFETY: single-threaded test; both objects are live blocks of the pool.
    unsafe {
        let np = pool.get(n).unwrap();
        (*np).value = value;
        (*np).next = (*r).head;
        pool.persist_val(n);
        (*r).head = n;
        (*r).count += 1;
        pool.persist_val(root);
    }
}

fn list(pool: &Pool) -> Vec<u64> {
    let root = pool.root::<Root>().unwrap();
    let mut out = vec![];
    // SAFETY: read-only walk of live nodes.
    unsafe {
        let mut cur = (*pool.get(root).unwrap()).head;
        while let Some(n) = pool.get(cur) {
            out.push((*n).value);
            cur = (*n).next;
        }
    }
    out
}

#[test]
fn create_close_reopen_keeps_data_and_skips_recovery() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("p.pool");
    let mut pool = Pool::create(&path, 16 << 20, &PoolOptions::default()).unwrap();
    let root = pool.root::<Root>().unwrap();
    for v in 0..1000 {
        push(&pool, root, v);
    }
    pool.check().unwrap();
    let used = pool.stats().in_use;
    assert!(used >= 1000 * 32, "{}", pool.stats());
    pool.close().unwrap();
    let mut pool = Pool::open(&path, &PoolOptions::default()).unwrap();
    let rep = pool.open_report();
    assert!(rep.clean && !rep.recovered, "{rep:?}");
    assert_eq!(list(&pool), (0..1000).rev().collect::<Vec<_>>());
    let chk = pool.check().unwrap();
    assert_eq!(chk.run_blocks_live, 1001); // nodes + root
                                           // allocation continues without handing out live blocks
    let root = pool.root::<Root>().unwrap();
    for v in 1000..1100 {
        push(&pool, root, v);
    }
    assert_eq!(list(&pool).len(), 1100);
}

#[test]
fn unclean_shutdown_recovers_reachable_blocks_and_frees_the_rest() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("p.pool");
    let pool = Pool::create(&path, 16 << 20, &PoolOptions::default()).unwrap();
    let root = pool.root::<Root>().unwrap();
    for v in 0..500 {
        push(&pool, root, v);
    }
    // leaked: allocated, never linked
    for _ in 0..300 {
        pool.alloc(100).unwrap();
    }
    let big = pool.alloc(1 << 20).unwrap(); // unlinked large
    assert!(!big.is_null());
    pool.abandon();
    let mut pool = Pool::open(&path, &PoolOptions::default()).unwrap();
    let rep = pool.open_report();
    assert!(rep.recovered && !rep.clean, "{rep:?}");
    assert_eq!(rep.reachable, 501);
    assert_eq!(rep.rebuild.freed_large, 1);
    assert_eq!(list(&pool).len(), 500);
    let chk = pool.check().unwrap();
    assert_eq!(chk.run_blocks_live, 501);
    assert_eq!(chk.large, 0);
}

#[test]
fn second_open_is_refused_and_root_size_is_checked() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("p.pool");
    let pool = Pool::create(&path, 4 << 20, &PoolOptions::default()).unwrap();
    pool.root::<Root>().unwrap();
    assert!(matches!(
        Pool::open(&path, &PoolOptions::default()),
        Err(PoolError::Locked { .. })
    ));
    assert!(matches!(
        pool.root::<[u64; 5]>(),
        Err(PoolError::RootSize {
            expected: 40,
            found: 16
        })
    ));
    drop(pool);
    let pool = Pool::open(&path, &PoolOptions::default()).unwrap();
    assert!(pool.root::<Root>().is_ok());
}

#[test]
fn grow_while_open_adds_space_and_survives_reopen() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("g.pool");
    let opts = PoolOptions {
        max_size: 256 << 20,
        ..PoolOptions::default()
    };
    let mut pool = Pool::create(&path, 2 << 20, &opts).unwrap();
    let root = pool.root::<Root>().unwrap();
    // fill until out of space
    let mut n = 0;
    while pool.alloc_zeroed::<Node>().is_ok() && n < 1_000_000 {
        n += 1;
    }
    assert!(pool.alloc(64).is_err());
    pool.grow(8 << 20).unwrap();
    assert_eq!(pool.size(), 8 << 20);
    for v in 0..1000 {
        push(&pool, root, v);
    }
    pool.check().unwrap();
    let big = pool.alloc(4 << 20).unwrap();
    assert!(pool.get(big.cast::<u64>()).is_some());
    pool.close().unwrap();
    let mut pool = Pool::open(&path, &opts).unwrap();
    assert_eq!(list(&pool).len(), 1000);
    pool.check().unwrap();
}

#[test]
fn several_pools_at_once_from_several_threads() {
    let d = tempfile::tempdir().unwrap();
    let pools: Vec<Pool> = (0..3)
        .map(|i| {
            Pool::create(
                &d.path().join(format!("p{i}.pool")),
                8 << 20,
                &PoolOptions::default(),
            )
            .unwrap()
        })
        .collect();
    std::thread::scope(|s| {
        for (i, p) in pools.iter().enumerate() {
            s.spawn(move || {
                let root = p.root::<Root>().unwrap();
                for v in 0..2000 {
                    push(p, root, v * 10 + i as u64);
                }
            });
        }
    });
    for (i, mut p) in pools.into_iter().enumerate() {
        let l = list(&p);
        assert_eq!(l.len(), 2000);
        assert!(
            l.iter().all(|v| v % 10 == i as u64),
            "pool {i} holds another pool's nodes"
        );
        p.check().unwrap();
    }
}
