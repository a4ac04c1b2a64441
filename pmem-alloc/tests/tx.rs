//! Transactions: commit, abort, panic, nesting, allocation and free, borrow checks, fence
//! counts (measured with the simulator), rollback at open, pools without lanes, corrupted lane
//! areas, and a randomized comparison with a model.

use pmem_alloc::layout::{self, PoolHeader};
use pmem_alloc::pool::Pool;
use pmem_alloc::pptr::{PPtr, PSafe};
use pmem_alloc::sim::SimMedia;
use pmem_alloc::tx::TxError;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::Arc;

const POOL: usize = 2 << 20;

#[repr(C)]
struct Root {
    counters: [u64; 8],
    head: PPtr<Node>,
    len: u64,
}
// SAFETY: repr(C), PSafe fields.
unsafe impl PSafe for Root {}

#[repr(C)]
struct Node {
    value: u64,
    next: PPtr<Node>,
}
// SAFETY: repr(C), PSafe fields.
unsafe impl PSafe for Node {}

type SimPool = Pool<Arc<SimMedia>>;

fn sim_pool() -> (Arc<SimMedia>, SimPool) {
    let media = Arc::new(SimMedia::new_strict(POOL));
    let pool = Pool::create_sim(media.clone()).unwrap();
    (media, pool)
}

fn read_root(pool: &SimPool) -> ([u64; 8], Vec<u64>, u64) {
    let root = pool.root::<Root>().unwrap();
    let r = pool.get(root).unwrap();
    // SAFETY: single-threaded test; read-only walk through bounds-checked pointers.
    unsafe {
        let mut vals = Vec::new();
        let mut cur = (*r).head;
        while !cur.is_null() && vals.len() < 10_000 {
            let n = pool.get(cur).unwrap();
            vals.push((*n).value);
            cur = (*n).next;
        }
        ((*r).counters, vals, (*r).len)
    }
}

fn push(pool: &SimPool, v: u64) -> Result<(), TxError> {
    let root = pool.root::<Root>().unwrap();
    pool.transaction(|tx| {
        let r = tx.get_mut(root)?;
        r.head = tx.alloc(Node {
            value: v,
            next: r.head,
        })?;
        r.len += 1;
        Ok(())
    })
}

#[test]
fn commit_and_error_abort() {
    let (_m, pool) = sim_pool();
    let root = pool.root::<Root>().unwrap();
    push(&pool, 1).unwrap();
    push(&pool, 2).unwrap();
    let res: Result<(), TxError> = pool.transaction(|tx| {
        let r = tx.get_mut(root)?;
        r.counters[3] = 77;
        r.head = tx.alloc(Node {
            value: 3,
            next: r.head,
        })?;
        r.len += 1;
        Err(TxError::Aborted)
    });
    assert_eq!(res, Err(TxError::Aborted));
    let (c, vals, len) = read_root(&pool);
    assert_eq!(c, [0; 8]);
    assert_eq!(vals, vec![2, 1]);
    assert_eq!(len, 2);
    // the aborted allocation was released: allocated blocks = root + 2 nodes + lanes
    let mut pool = pool;
    let chk = pool.check().unwrap();
    assert_eq!(chk.run_blocks_live + chk.large, 1 + 2 + 1);
}

#[test]
fn panic_rolls_back_and_resumes_unwinding() {
    let (_m, pool) = sim_pool();
    let root = pool.root::<Root>().unwrap();
    push(&pool, 5).unwrap();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _: Result<(), TxError> = pool.transaction(|tx| {
            tx.get_mut(root)?.counters[0] = 9;
            panic!("boom");
        });
    }));
    assert!(r.is_err());
    let (c, vals, _) = read_root(&pool);
    assert_eq!(c[0], 0);
    assert_eq!(vals, vec![5]);
    // the lane and the borrows were released
    pool.transaction(|tx| {
        tx.get_mut(root)?.counters[0] = 1;
        Ok::<_, TxError>(())
    })
    .unwrap();
    assert_eq!(read_root(&pool).0[0], 1);
}

#[test]
fn nested_transactions_are_flattened() {
    let (_m, pool) = sim_pool();
    let root = pool.root::<Root>().unwrap();
    let aux = pool.alloc_zeroed::<[u64; 4]>().unwrap();
    // inner success, outer failure: everything rolls back
    let res: Result<(), TxError> = pool.transaction(|tx| {
        tx.get_mut(aux)?[0] = 1;
        pool.transaction(|tx2| {
            assert_eq!(tx2.lane(), tx.lane());
            push(tx2.pool(), 10)?;
            Ok::<_, TxError>(())
        })?;
        Err(TxError::Aborted)
    });
    assert!(res.is_err());
    let (_, vals, _) = read_root(&pool);
    assert_eq!(vals.len(), 0);
    // SAFETY: no transaction runs.
    assert_eq!(unsafe { (*pool.get(aux).unwrap())[0] }, 0);
    // inner failure swallowed by the outer closure: the outer aborts anyway
    let res: Result<(), TxError> = pool.transaction(|tx| {
        tx.get_mut(root)?.counters[1] = 1;
        let inner: Result<(), TxError> = pool.transaction(|_| Err(TxError::OutOfSpace));
        assert_eq!(inner, Err(TxError::OutOfSpace));
        Ok(())
    });
    assert_eq!(res, Err(TxError::Aborted));
    assert_eq!(read_root(&pool).0[1], 0);
    // both succeed: one commit; the inner transaction cannot borrow what the outer holds
    let res: Result<(), TxError> = pool.transaction(|tx| {
        tx.get_mut(aux)?[2] = 2;
        push(&pool, 11)?;
        let again: Result<(), TxError> = pool.transaction(|tx| tx.get(aux).map(|_| ()));
        assert_eq!(again, Err(TxError::Borrowed));
        Ok(())
    });
    assert_eq!(res, Err(TxError::Aborted));
    let (_, vals, _) = read_root(&pool);
    assert_eq!(
        vals,
        Vec::<u64>::new(),
        "the inner failure aborted the whole transaction"
    );
    pool.transaction(|tx| {
        tx.get_mut(aux)?[2] = 2;
        push(&pool, 11)?;
        Ok::<_, TxError>(())
    })
    .unwrap();
    let (_, vals, _) = read_root(&pool);
    assert_eq!(vals, vec![11]);
    // SAFETY: no transaction runs.
    assert_eq!(unsafe { (*pool.get(aux).unwrap())[2] }, 2);
}

#[test]
fn borrows_are_exclusive() {
    let (_m, pool) = sim_pool();
    let root = pool.root::<Root>().unwrap();
    pool.transaction(|tx| {
        let _r = tx.get_mut(root)?;
        assert_eq!(tx.get_mut(root).err(), Some(TxError::Borrowed));
        assert_eq!(tx.get(root).err(), Some(TxError::Borrowed));
        // an overlapping field
        let first = root.cast::<u64>();
        assert_eq!(tx.get(first).err(), Some(TxError::Borrowed));
        assert_eq!(
            tx.get_mut(PPtr::<u64>::null()).err(),
            Some(TxError::InvalidPointer)
        );
        assert_eq!(
            tx.get_mut(PPtr::<u64>::from_offset(u64::MAX >> 20)).err(),
            Some(TxError::InvalidPointer)
        );
        Ok::<_, TxError>(())
    })
    .unwrap();
    // shared borrows may overlap; a later transaction may borrow again
    pool.transaction(|tx| {
        let a = tx.get(root)?;
        let b = tx.get(root)?;
        assert_eq!(a.len, b.len);
        Ok::<_, TxError>(())
    })
    .unwrap();
    // another thread's transaction cannot borrow what this one holds
    let pool = Arc::new(pool);
    let p2 = pool.clone();
    pool.transaction(|tx| {
        let _r = tx.get_mut(root)?;
        let other =
            std::thread::spawn(move || p2.transaction(|tx| tx.get(root).map(|r| r.len)).err())
                .join()
                .unwrap();
        assert_eq!(other, Some(TxError::Borrowed));
        Ok::<_, TxError>(())
    })
    .unwrap();
}

#[test]
fn frees_take_effect_at_commit_only() {
    let (_m, pool) = sim_pool();
    let root = pool.root::<Root>().unwrap();
    for v in 0..4 {
        push(&pool, v).unwrap();
    }
    let pop = |pool: &SimPool, commit: bool| -> Result<(), TxError> {
        pool.transaction(|tx| {
            let r = tx.get_mut(root)?;
            let h = r.head;
            r.head = tx.get(h)?.next;
            r.len -= 1;
            // SAFETY: `h` is a live node; its only link was just removed in this transaction.
            unsafe { tx.free(h)? };
            if commit {
                Ok(())
            } else {
                Err(TxError::Aborted)
            }
        })
    };
    let live = |pool: &mut SimPool| {
        let c = pool.check().unwrap();
        c.run_blocks_live + c.large
    };
    let mut pool = pool;
    let before = live(&mut pool);
    assert!(pop(&pool, false).is_err());
    assert_eq!(live(&mut pool), before, "an aborted free must not free");
    pop(&pool, true).unwrap();
    assert_eq!(live(&mut pool), before - 1);
    assert_eq!(read_root(&pool).1, vec![2, 1, 0]);
}

/// Fence counts, measured: per snapshot call 1, per commit 2; snapshot_many costs 1 for any
/// number of ranges; fresh blocks and ranges saved already cost nothing.
#[test]
fn fence_counts() {
    let (media, pool) = sim_pool();
    let root = pool.root::<Root>().unwrap();
    let counters = root.cast::<u8>();
    // first transaction creates the lanes (not counted below)
    pool.transaction(|tx| tx.get_mut(root).map(|_| ())).unwrap();
    let count = |f: &dyn Fn()| {
        let before = media.fences();
        f();
        media.fences() - before
    };
    // read-only: nothing
    assert_eq!(
        count(&|| pool.transaction(|tx| tx.get(root).map(|_| ())).unwrap()),
        0
    );
    // one range: 1 + 2
    assert_eq!(
        count(&|| pool
            .transaction(|tx| {
                tx.get_mut(root)?.len += 1;
                Ok::<_, TxError>(())
            })
            .unwrap()),
        3
    );
    for n in [1usize, 4, 8] {
        // n separate snapshot calls: n + 2
        assert_eq!(
            count(&|| pool
                .transaction(|tx| {
                    for i in 0..n {
                        tx.snapshot(counters.byte_add(8 * i as u64), 8)?;
                    }
                    Ok::<_, TxError>(())
                })
                .unwrap()),
            n + 2,
            "{n} snapshot calls"
        );
        // one snapshot_many: 3
        assert_eq!(
            count(&|| pool
                .transaction(|tx| {
                    let r: Vec<_> = (0..n)
                        .map(|i| (counters.byte_add(8 * i as u64), 8usize))
                        .collect();
                    tx.snapshot_many(&r)?;
                    tx.snapshot(counters, 8)?; // saved already: free
                    Ok::<_, TxError>(())
                })
                .unwrap()),
            3,
            "snapshot_many of {n}"
        );
    }
    // allocate and initialise a node, link it: 1 (root) + 2; the node needs no entry (the
    // node's size class gets its run first: creating a run persists page-map entries)
    let warm = pool.alloc(16).unwrap();
    // SAFETY: just allocated, never linked.
    unsafe { pool.free(warm) };
    assert_eq!(
        count(&|| pool
            .transaction(|tx| {
                let n = tx.alloc(Node {
                    value: 1,
                    next: PPtr::null(),
                })?;
                tx.get_mut(n)?.value = 2;
                tx.get_mut(root)?.head = n;
                Ok::<_, TxError>(())
            })
            .unwrap()),
        3
    );
    // abort of one range: 1 (snapshot) + 2 (restore, invalidate)
    assert_eq!(
        count(&|| {
            let _ = pool.transaction(|tx| {
                tx.get_mut(root)?.len = 99;
                Err::<(), _>(TxError::Aborted)
            });
        }),
        3
    );
    // a log overflow (more than the 960-byte inline log) adds 2 fences once; later
    // transactions reuse the overflow block
    let big = pool.alloc_zeroed_bytes(4000).unwrap();
    let f1 = count(&|| {
        pool.transaction(|tx| tx.snapshot(big, 4000)).unwrap();
    });
    let f2 = count(&|| {
        pool.transaction(|tx| tx.snapshot(big, 4000)).unwrap();
    });
    assert_eq!((f1, f2), (5, 3));
}

/// Patches a freshly created pool image into a format-1.0 header (minor 0, no feature bits).
fn as_format_1_0(img: &mut [u8]) {
    let mut h: PoolHeader = layout::read_from(img).unwrap();
    h.minor = layout::Le16::new(0);
    h.incompat = layout::Le64::new(0);
    h.seal();
    img[..256].copy_from_slice(layout::as_bytes(&h));
}

#[test]
fn pools_without_lanes_open_and_get_them_lazily() {
    let (media, pool) = sim_pool();
    pool.root::<Root>().unwrap();
    pool.close().unwrap();
    let mut img = media.durable_image();
    as_format_1_0(&mut img);
    let media = Arc::new(SimMedia::from_image_strict(&img));
    let pool = Pool::open_sim(media.clone()).unwrap();
    push(&pool, 42).unwrap();
    pool.abandon();
    // reopen after a crash: recovery keeps the lanes (unscanned) and the node
    let media = Arc::new(SimMedia::from_image_strict(&media.durable_image()));
    let mut pool = Pool::open_sim(media).unwrap();
    let rep = pool.open_report();
    assert!(rep.recovered);
    assert_eq!(rep.lane_blocks, 1);
    assert_eq!(read_root(&pool).1, vec![42]);
    let c = pool.check().unwrap();
    assert_eq!(c.run_blocks_live + c.large, 1 + 1 + 1);
}

/// A crash in the middle of a transaction (after its snapshots and modifications reached the
/// media) is rolled back by the next open; a committed one is kept.
#[test]
fn open_rolls_back_an_uncommitted_transaction() {
    let (media, pool) = sim_pool();
    let root = pool.root::<Root>().unwrap();
    push(&pool, 1).unwrap();
    let committed = media.durable_image();
    // run a transaction up to just before its commit: modify, persist the modification by
    // hand, then crash (abandon inside the closure is impossible; take the image instead)
    let mut mid = Vec::new();
    let _ = pool.transaction(|tx| {
        let r = tx.get_mut(root)?;
        r.counters = [7; 8];
        r.len = 1000;
        tx.pool().persist_val(root);
        mid = media.durable_image();
        Err::<(), _>(TxError::Aborted)
    });
    for (img, expect_len) in [(&committed, 1), (&mid, 1)] {
        let m = Arc::new(SimMedia::from_image_strict(img));
        let mut p = Pool::open_sim(m).unwrap();
        let (c, vals, len) = read_root(&p);
        assert_eq!((c, vals, len), ([0; 8], vec![1], expect_len));
        p.check().unwrap();
    }
    let m = Arc::new(SimMedia::from_image_strict(&mid));
    let p = Pool::open_sim(m).unwrap();
    assert_eq!(p.open_report().tx_rolled_back, 1);
}

#[test]
fn many_threads_many_lanes() {
    let media = Arc::new(SimMedia::new_strict(8 << 20));
    let pool = Arc::new(Pool::create_sim(media).unwrap());
    let root = pool.root::<Root>().unwrap();
    let slots = pool.alloc_zeroed_bytes(64 * 8).unwrap().cast::<[u64; 64]>();
    pool.transaction(|tx| {
        tx.get_mut(root)?.head = slots.cast();
        Ok::<_, TxError>(())
    })
    .unwrap();
    let hs: Vec<_> = (0..8)
        .map(|t| {
            let pool = pool.clone();
            std::thread::spawn(move || {
                for i in 0..200u64 {
                    let slot = slots.cast::<u64>().byte_add(8 * (t * 8 + i % 8));
                    pool.transaction(|tx| {
                        *tx.get_mut(slot)? += 1;
                        Ok::<_, TxError>(())
                    })
                    .unwrap();
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    let s = pool.get(slots).unwrap();
    // SAFETY: all threads joined.
    let total: u64 = unsafe { (*s).iter().sum() };
    assert_eq!(total, 8 * 200);
}

/// Random transactions (updates of random counter subsets, pushes, pops, aborts by error and by
/// panic) against a model.
#[test]
fn random_transactions_match_a_model() {
    for seed in 0..4u64 {
        let (_m, pool) = sim_pool();
        let root = pool.root::<Root>().unwrap();
        let mut rng = StdRng::seed_from_u64(seed);
        let mut model_c = [0u64; 8];
        let mut model_list: Vec<u64> = Vec::new();
        for step in 0..300u64 {
            let fail = rng.gen_range(0..5); // 0: error, 1: panic, else commit
            let op = rng.gen_range(0..3);
            let mask: u8 = rng.gen();
            let delta = rng.gen_range(1..100u64);
            let mut c2 = model_c;
            let mut l2 = model_list.clone();
            let run = || -> Result<(), TxError> {
                pool.transaction(|tx| {
                    let r = tx.get_mut(root)?;
                    for (i, c) in r.counters.iter_mut().enumerate() {
                        if mask & (1 << i) != 0 {
                            *c += delta;
                        }
                    }
                    match op {
                        0 => {
                            r.head = tx.alloc(Node {
                                value: step,
                                next: r.head,
                            })?;
                            r.len += 1;
                        }
                        1 if !r.head.is_null() => {
                            let h = r.head;
                            r.head = tx.get(h)?.next;
                            r.len -= 1;
                            // SAFETY: `h` was the head, unlinked in this transaction.
                            unsafe { tx.free(h)? };
                        }
                        _ => {}
                    }
                    match fail {
                        0 => Err(TxError::Aborted),
                        1 => panic!("injected"),
                        _ => Ok(()),
                    }
                })
            };
            let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(run));
            if fail >= 2 {
                assert!(matches!(res, Ok(Ok(()))));
                for (i, c) in c2.iter_mut().enumerate() {
                    if mask & (1 << i) != 0 {
                        *c += delta;
                    }
                }
                match op {
                    0 => l2.insert(0, step),
                    1 if !l2.is_empty() => {
                        l2.remove(0);
                    }
                    _ => {}
                }
                model_c = c2;
                model_list = l2;
            }
            let (c, vals, len) = read_root(&pool);
            assert_eq!(c, model_c, "seed {seed} step {step}");
            assert_eq!(vals, model_list, "seed {seed} step {step}");
            assert_eq!(len as usize, model_list.len());
        }
        let mut pool = pool;
        let chk = pool.check().unwrap();
        assert_eq!(chk.run_blocks_live + chk.large, 1 + 1 + model_list.len());
    }
}

/// Random byte changes in the lane area and its overflow log of an image with an uncommitted
/// transaction: the open returns a typed error or a pool (whose checker is then run); never a
/// panic or a write outside the pool.
#[test]
fn corrupted_lanes_never_panic() {
    let (media, pool) = sim_pool();
    let root = pool.root::<Root>().unwrap();
    push(&pool, 1).unwrap();
    let big = pool.alloc_zeroed_bytes(3000).unwrap();
    let mut mid = Vec::new();
    let _ = pool.transaction(|tx| {
        tx.snapshot(big, 3000)?; // overflow log
        tx.get_mut(root)?.len = 5;
        tx.pool().persist_val(root);
        mid = media.durable_image();
        Err::<(), _>(TxError::Aborted)
    });
    let slots: Vec<layout::StateSlot> = [256, 320]
        .iter()
        .map(|&o| layout::read_from(&mid[o..]).unwrap())
        .collect();
    let slot = slots
        .iter()
        .filter(|s| s.valid())
        .max_by_key(|s| s.seq.get())
        .unwrap();
    let lanes = slot.lanes.get() as usize;
    assert_ne!(lanes, 0);
    let mut rng = StdRng::seed_from_u64(5);
    let (mut errors, mut opened) = (0, 0);
    for case in 0..300 {
        let mut img = mid.clone();
        // the area header and lane 0's header and inline log, or anywhere in the image
        for _ in 0..rng.gen_range(1..4) {
            let at = if case % 3 == 2 {
                rng.gen_range(4096..img.len())
            } else {
                lanes + rng.gen_range(0..64 + 1024)
            };
            img[at] ^= 1 << rng.gen_range(0..8);
        }
        let m = Arc::new(SimMedia::from_image_strict(&img));
        match Pool::open_sim(m) {
            Ok(mut p) => {
                opened += 1;
                let _ = p.check();
            }
            Err(_) => errors += 1,
        }
    }
    assert_eq!(errors + opened, 300);
}

#[test]
fn boxes_are_tied_to_their_pool() {
    let (_m, pool) = sim_pool();
    let (_m2, other) = sim_pool();
    let root = pool.root::<Root>().unwrap();
    let b = pool
        .transaction(|tx| {
            let b = tx.alloc_box(Node {
                value: 3,
                next: PPtr::null(),
            })?;
            tx.get_mut(root)?.head = b.as_pptr();
            Ok::<_, TxError>(b)
        })
        .unwrap();
    // a box of `pool` cannot be freed in a transaction of `other`
    let res = other.transaction(|tx| tx.free_box(b));
    assert_eq!(res, Err(TxError::WrongPool));
    let mut pool = pool;
    let live = {
        let c = pool.check().unwrap();
        c.run_blocks_live + c.large
    };
    let pool = pool;
    pool.transaction(|tx| {
        let r = tx.get_mut(root)?;
        // SAFETY: the head node was allocated for a Node in this pool; no box owns it (the one
        // above was consumed by the failed free).
        let b = unsafe { pmem_alloc::tx::PBox::from_pptr(&pool, r.head) };
        r.head = PPtr::null();
        tx.free_box(b)
    })
    .unwrap();
    let mut pool = pool;
    let c = pool.check().unwrap();
    assert_eq!(c.run_blocks_live + c.large, live - 1);
}

#[test]
fn metadata_and_lanes_are_out_of_reach() {
    let (_m, pool) = sim_pool();
    let root = pool.root::<Root>().unwrap();
    push(&pool, 1).unwrap();
    pool.transaction(|tx| {
        // zone 0's header and page map (page 1), and page 0
        for off in [4096u64, 4096 + 64, 8192, 100] {
            assert_eq!(
                tx.get_mut(PPtr::<u64>::from_offset(off)).err(),
                Some(TxError::InvalidPointer),
                "offset {off}"
            );
            assert_eq!(
                tx.snapshot(PPtr::<u8>::from_offset(off), 8).err(),
                Some(TxError::InvalidPointer)
            );
        }
        tx.get(root)?;
        Ok::<_, TxError>(())
    })
    .unwrap();
}

/// Two threads each crash in the middle of a transaction (their modifications durable): the
/// open rolls back both lanes.
#[test]
fn open_rolls_back_every_lane() {
    let media = Arc::new(SimMedia::new_strict(POOL));
    let pool = Arc::new(Pool::create_sim(media.clone()).unwrap());
    let root = pool.root::<Root>().unwrap();
    let blocks: Vec<PPtr<[u64; 8]>> = (0..2)
        .map(|_| pool.alloc_zeroed::<[u64; 8]>().unwrap())
        .collect();
    pool.transaction(|tx| {
        let r = tx.get_mut(root)?;
        r.counters[0] = blocks[0].offset();
        r.counters[1] = blocks[1].offset();
        for b in &blocks {
            tx.get_mut(*b)?;
            tx.pool().persist_val(*b);
        }
        Ok::<_, TxError>(())
    })
    .unwrap();
    let inside = Arc::new(std::sync::Barrier::new(3));
    let done = Arc::new(std::sync::Barrier::new(3));
    let hs: Vec<_> = blocks
        .iter()
        .map(|&b| {
            let (pool, inside, done) = (pool.clone(), inside.clone(), done.clone());
            std::thread::spawn(move || {
                let res: Result<(), TxError> = pool.transaction(|tx| {
                    let v = tx.get_mut(b)?;
                    v.fill(0xEE);
                    tx.pool().persist_val(b);
                    inside.wait(); // both modified and durable
                    done.wait(); // the image is taken
                    Err(TxError::Aborted)
                });
                assert!(res.is_err());
            })
        })
        .collect();
    inside.wait();
    let img = media.durable_image();
    done.wait();
    for h in hs {
        h.join().unwrap();
    }
    let m = Arc::new(SimMedia::from_image_strict(&img));
    let mut p = Pool::open_sim(m).unwrap();
    assert_eq!(p.open_report().tx_rolled_back, 2);
    for b in &blocks {
        // SAFETY: single-threaded reopened pool.
        assert_eq!(unsafe { *p.get(*b).unwrap() }, [0u64; 8]);
    }
    p.check().unwrap();
}

/// `Tx::mark_dirty`: the range is flushed by the commit (durable afterwards) without an undo
/// entry (a transaction that only marks costs the commit's one fence, no `gen` store), and an
/// abort leaves it as written (its contract: the old contents must not matter). Ranges outside
/// the heap are refused.
#[test]
fn mark_dirty_flushes_at_commit_without_undo() {
    let media = Arc::new(SimMedia::new(POOL));
    let pool = Pool::create_sim(media.clone()).unwrap();
    let root = pool.root::<Root>().unwrap();
    pool.transaction(|_| Ok::<_, TxError>(())).unwrap();
    let slot = |i: u64| root.cast::<u8>().byte_add(8 * i);
    let write = |tx: &pmem_alloc::Tx<'_, Arc<SimMedia>>, i: u64, v: u64| {
        let a = tx.pool().get(slot(i).cast::<u64>()).unwrap();
        // SAFETY: a word of the root inside the pool; no reference to it exists.
        unsafe { a.write(v) };
    };
    let f0 = media.fences();
    pool.transaction(|tx| {
        tx.mark_dirty(slot(3), 8)?;
        write(tx, 3, 77);
        Ok::<_, TxError>(())
    })
    .unwrap();
    assert_eq!(media.fences() - f0, 1, "one fence: the commit's flush");
    let img = media.durable_image();
    let off = slot(3).offset() as usize;
    assert_eq!(
        u64::from_le_bytes(img[off..off + 8].try_into().unwrap()),
        77
    );
    // an abort restores saved ranges but leaves marked ones as written
    let _ = pool.transaction(|tx| {
        tx.snapshot(slot(0), 8)?;
        write(tx, 0, 5);
        tx.mark_dirty(slot(4), 8)?;
        write(tx, 4, 88);
        Err::<(), _>(TxError::Aborted)
    });
    pool.transaction(|tx| {
        let r = tx.get(root)?;
        assert_eq!(r.counters[0], 0);
        assert_eq!(r.counters[3], 77);
        assert_eq!(r.counters[4], 88);
        Ok::<_, TxError>(())
    })
    .unwrap();
    // outside the heap: refused
    pool.transaction(|tx| {
        assert_eq!(
            tx.mark_dirty(PPtr::<u8>::from_offset(8), 8),
            Err(TxError::InvalidPointer)
        );
        assert_eq!(
            tx.mark_dirty(PPtr::<u8>::from_offset(POOL as u64 - 4), 8),
            Err(TxError::InvalidPointer)
        );
        Ok::<_, TxError>(())
    })
    .unwrap();
}
