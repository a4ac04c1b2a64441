//! Crash sweep over transactions under the crash simulator.
//!
//! A seeded sequence of transactions moves amounts between counters spread over four blocks
//! (their sum is constant), pushes and pops list nodes (allocation and deferred free inside the
//! transaction), sometimes rewrites a 2 KiB blob (the undo log overflows into a heap block) and
//! sometimes aborts. Ranges are saved with `get_mut`, `snapshot` and `snapshot_many`. Every
//! fence is a crash point; the image at each point (strict, and with random subsets of
//! unflushed lines written back) is reopened. The state found must equal the state after the
//! last transaction completed before the crash point, or after the one in progress (whose
//! commit store may have been evicted early), never anything in between; the counters must sum
//! to the constant, the checker must pass, and the allocated blocks must be exactly the
//! reachable ones plus the transaction lanes.

mod common;

use common::{Run, SimPool};
use pmem_alloc::pool::Pool;
use pmem_alloc::pptr::{PPtr, PSafe};
use pmem_alloc::sim::{CrashImage, Evictions, SimMedia};
use pmem_alloc::tx::TxError;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::Arc;

const POOL: usize = 1 << 20;
const BLOCKS: usize = 4;
const PER: usize = 8;
const TOTAL: u64 = (BLOCKS * PER) as u64 * 1000;
const BLOB: usize = 2048;

#[repr(C)]
struct Root {
    txn: u64,
    len: u64,
    head: PPtr<Node>,
    blob: PPtr<[u8; BLOB]>,
    counters: [PPtr<[u64; PER]>; BLOCKS],
}
// SAFETY: repr(C), PSafe fields.
unsafe impl PSafe for Root {}

#[repr(C)]
struct Node {
    value: u64,
    check: u64,
    next: PPtr<Node>,
}
// SAFETY: repr(C), PSafe fields.
unsafe impl PSafe for Node {}

fn node_check(v: u64) -> u64 {
    v.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5A5A
}

/// Everything a transaction may change.
#[derive(Clone, Debug, PartialEq, Eq)]
struct State {
    txn: u64,
    counters: Vec<u64>,
    list: Vec<u64>,
    blob: u8,
}

fn read_state<P: pmem_alloc::Persist + 'static>(pool: &Pool<P>) -> Result<State, String> {
    let root = pool.root::<Root>().map_err(|e| e.to_string())?;
    let r = pool.get(root).ok_or("root")?;
    // SAFETY: single-threaded; every pointer is resolved through the pool (bounds-checked).
    unsafe {
        let mut counters = Vec::new();
        for b in (*r).counters {
            let c = pool.get(b).ok_or("counter block")?;
            counters.extend_from_slice(&*c);
        }
        let mut list = Vec::new();
        let mut cur = (*r).head;
        while !cur.is_null() {
            let n = pool.get(cur).ok_or("node outside the pool")?;
            if (*n).check != node_check((*n).value) {
                return Err(format!("node {} torn", (*n).value));
            }
            list.push((*n).value);
            if list.len() > 10_000 {
                return Err("cycle".into());
            }
            cur = (*n).next;
        }
        if list.len() as u64 != (*r).len {
            return Err(format!("len {} but {} nodes", (*r).len, list.len()));
        }
        let b = &*pool.get((*r).blob).ok_or("blob")?;
        if b.iter().any(|&x| x != b[0]) {
            return Err("blob torn".into());
        }
        Ok(State {
            txn: (*r).txn,
            counters,
            list,
            blob: b[0],
        })
    }
}

/// The root, after the setup (not swept): counter blocks, the blob, the lanes.
fn setup(pool: &SimPool) -> PPtr<Root> {
    let root = pool.root::<Root>().unwrap();
    pool.transaction(|tx| {
        let r = tx.get_mut(root)?;
        for c in r.counters.iter_mut() {
            *c = tx.alloc([1000u64; PER])?;
        }
        r.blob = tx.alloc([0u8; BLOB])?;
        Ok::<_, TxError>(())
    })
    .unwrap();
    root
}

fn workload(seed: u64, attempts: usize) -> Run<State> {
    let media = Arc::new(SimMedia::new(POOL));
    let pool = Pool::create_sim(media.clone()).unwrap();
    let root = setup(&pool);
    let initial = read_state(&pool).unwrap();
    media.reset_recording();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut after = Vec::new();
    for _ in 0..attempts {
        let abort = rng.gen_bool(0.15);
        let kind = rng.gen_range(0..10);
        let moves: Vec<(usize, usize, u64)> = (0..rng.gen_range(1..4))
            .map(|_| {
                (
                    rng.gen_range(0..BLOCKS * PER),
                    rng.gen_range(0..BLOCKS * PER),
                    rng.gen_range(0..50),
                )
            })
            .collect();
        let many = rng.gen_bool(0.5);
        let res: Result<(), TxError> = pool.transaction(|tx| {
            let r = tx.get_mut(root)?;
            r.txn += 1;
            // save the counter blocks touched: one snapshot_many, or one get_mut each
            let mut touched: Vec<usize> =
                moves.iter().flat_map(|m| [m.0 / PER, m.1 / PER]).collect();
            touched.sort_unstable();
            touched.dedup();
            let mut blocks: Vec<*mut [u64; PER]> = Vec::new();
            if many {
                let ranges: Vec<_> = touched
                    .iter()
                    .map(|&b| (r.counters[b].cast::<u8>(), 64))
                    .collect();
                tx.snapshot_many(&ranges)?;
                for &b in &touched {
                    blocks.push(tx.pool().get(r.counters[b]).unwrap());
                }
            } else {
                for &b in &touched {
                    blocks.push(tx.get_mut(r.counters[b])?);
                }
            }
            for &(from, to, amount) in &moves {
                let bf = touched.iter().position(|&b| b == from / PER).unwrap();
                let bt = touched.iter().position(|&b| b == to / PER).unwrap();
                // SAFETY: the blocks were saved above; single-threaded; the raw pointers are
                // used one at a time.
                unsafe {
                    let a = (*blocks[bf])[from % PER].min(amount);
                    (*blocks[bf])[from % PER] -= a;
                    (*blocks[bt])[to % PER] += a;
                }
            }
            match kind {
                0..=3 => {
                    let v = r.txn;
                    r.head = tx.alloc(Node {
                        value: v,
                        check: node_check(v),
                        next: r.head,
                    })?;
                    r.len += 1;
                }
                4..=6 if !r.head.is_null() => {
                    let h = r.head;
                    r.head = tx.get(h)?.next;
                    r.len -= 1;
                    // SAFETY: `h` was the head, unlinked in this transaction.
                    unsafe { tx.free(h)? };
                }
                7 => {
                    let b = tx.get_mut(r.blob)?;
                    b.fill(r.txn as u8);
                }
                _ => {}
            }
            if abort {
                Err(TxError::Aborted)
            } else {
                Ok(())
            }
        });
        assert_eq!(res.is_err(), abort);
        after.push((media.fences(), read_state(&pool).unwrap()));
    }
    pool.abandon();
    Run {
        rec: media.recording(),
        after,
        initial,
    }
}

fn check(run: &Run<State>, img: &CrashImage<'_>) -> Result<(), String> {
    let mut pool = common::open_image(img.bytes)?;
    let rep = pool.open_report();
    let st = read_state(&pool)?;
    if let Err((done, prev, _)) = run.check_state(img.crash_point, &st) {
        return Err(format!(
            "after {done} transactions: found txn {} counters {:?} list {:?} blob {}, expected txn {} (or the next)",
            st.txn, st.counters, st.list, st.blob, prev.txn
        ));
    }
    if st.counters.iter().sum::<u64>() != TOTAL {
        return Err("counters do not sum to the total".into());
    }
    let chk = pool.check().map_err(|e| format!("check: {e}"))?;
    // root, counter blocks, blob, nodes, lane area and overflow logs
    let expect = 1 + BLOCKS + 1 + st.list.len() + rep.lane_blocks;
    if chk.run_blocks_live + chk.large != expect {
        return Err(format!(
            "{} blocks allocated, {expect} expected (lanes {})",
            chk.run_blocks_live + chk.large,
            rep.lane_blocks
        ));
    }
    // the pool keeps working: one more transaction commits
    let root = pool.root::<Root>().map_err(|e| e.to_string())?;
    pool.transaction(|tx| {
        let r = tx.get_mut(root)?;
        r.head = tx.alloc(Node {
            value: 0,
            check: node_check(0),
            next: r.head,
        })?;
        r.len += 1;
        Ok::<_, TxError>(())
    })
    .map_err(|e| format!("transaction after recovery: {e}"))?;
    Ok(())
}

fn sweep(seed: u64, attempts: usize, ev: Evictions) -> (usize, usize) {
    let run = workload(seed, attempts);
    common::tally(seed, &run.rec.sweep(ev, |img| check(&run, img)))
}

/// For every `cargo test` run: one seed, strict and with a few eviction samples.
#[test]
fn crash_sweep_tx_quick() {
    common::quick_sweep("tx crash sweep (quick)", 7, 3, 100, |seed, ev| {
        sweep(seed, 40, ev)
    });
}

#[test]
#[ignore = "heavy: run by tools/test-all.sh with --ignored --nocapture"]
fn crash_sweep_tx_every_fence_point_strict_and_with_evictions() {
    common::heavy_sweep("tx crash sweep", 31, 10, 10_000, |seed, ev| {
        sweep(seed, 150, ev)
    });
}

/// A crash during the rollback that an open performs (every fence of the recovering open, with
/// and without evictions): the next open still finds the state before the transaction.
#[test]
fn crash_during_rollback_at_open() {
    let media = Arc::new(SimMedia::new_strict(POOL));
    let pool = Pool::create_sim(media.clone()).unwrap();
    let root = setup(&pool);
    let before = read_state(&pool).unwrap();
    // an uncommitted transaction whose modifications all reached the media
    let mut mid = Vec::new();
    let _ = pool.transaction(|tx| {
        let r = tx.get_mut(root)?;
        r.txn = 99;
        let ranges: Vec<_> = r.counters.iter().map(|c| (c.cast::<u8>(), 64)).collect();
        tx.snapshot_many(&ranges)?;
        for c in r.counters {
            let a = tx.pool().get(c).unwrap();
            // SAFETY: saved above; single-threaded.
            unsafe { (*a)[0] = 0 };
            tx.pool().persist_val(c);
        }
        let b = tx.get_mut(r.blob)?;
        b.fill(7);
        tx.pool().persist_val(r.blob);
        tx.pool().persist_val(root);
        mid = media.durable_image();
        Err::<(), _>(TxError::Aborted)
    });
    // the recovering open, recorded
    let m = Arc::new(SimMedia::from_image(&mid));
    let p = Pool::open_sim(m.clone()).unwrap();
    assert_eq!(p.open_report().tx_rolled_back, 1);
    assert_eq!(read_state(&p).unwrap(), before);
    p.abandon();
    common::sweep_recovering_open("crash during rollback", &m, 11, |pool| {
        let st = read_state(pool)?;
        if st != before {
            return Err(format!("found txn {}, counters {:?}", st.txn, st.counters));
        }
        Ok(())
    });
}
