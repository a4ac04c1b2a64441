//! Crash sweep over the persistent collections under the crash simulator.
//!
//! A seeded sequence of transactions changes every kind of collection: vector pushes (through
//! several growths), pops, inserts and removes, a vector of byte strings, byte-string appends
//! and range writes (with growth), deque pushes and pops at both ends (wrapping, growing), a
//! hash map of byte strings and one of integers (through several incremental resizes, with
//! transactions in the middle of one), and an ordered map (inserts, removes, pops). Some
//! transactions do several of these, some abort. Every fence is a crash point; the image at
//! each (strict, and with random subsets of unflushed lines written back) is reopened. The
//! state found must equal the state before or after the transaction in progress, the checker
//! must pass, the blocks the recovery scan finds reachable must be exactly the blocks the
//! collections own (no leaked uncommitted block, no stale pointer keeping a freed one), and
//! the pool must keep working.

mod common;

use common::Run;
use pmem_alloc::collections::{PBytes, PDeque, PHashMap, POrdMap, PVec};
use pmem_alloc::pool::Pool;
use pmem_alloc::pptr::PSafe;
use pmem_alloc::sim::{CrashImage, Evictions, SimMedia};
use pmem_alloc::tx::{Tx, TxError};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

const POOL: usize = 2 << 20;

#[repr(C)]
struct Root {
    txn: u64,
    vec: PVec<u64>,
    bvec: PVec<PBytes>,
    bytes: PBytes,
    deque: PDeque<u64>,
    map: PHashMap<PBytes, PBytes>,
    imap: PHashMap<u64, u64>,
    omap: POrdMap<PBytes, u64>,
}
// SAFETY: repr(C), PSafe fields.
unsafe impl PSafe for Root {}

/// Everything a transaction may change, and the blocks the collections own.
#[derive(Clone, Debug, PartialEq, Eq)]
struct State {
    txn: u64,
    vec: Vec<u64>,
    bvec: Vec<Vec<u8>>,
    bytes: Vec<u8>,
    deque: VecDeque<u64>,
    map: BTreeMap<Vec<u8>, Vec<u8>>,
    imap: BTreeMap<u64, u64>,
    omap: Vec<(Vec<u8>, u64)>,
    blocks: usize,
}

fn read_state<P: pmem_alloc::Persist + 'static>(pool: &Pool<P>) -> Result<State, String> {
    let root = pool.root::<Root>().map_err(|e| e.to_string())?;
    pool.transaction(|tx| {
        let r = tx.get(root)?;
        read(tx, r)
    })
    .map_err(|e| format!("read: {e}"))
}

fn read<P: pmem_alloc::Persist + 'static>(tx: &Tx<'_, P>, r: &Root) -> Result<State, TxError> {
    let mut blocks = 1;
    let buf = |cap: usize| usize::from(cap > 0);
    blocks += buf(r.vec.capacity()) + buf(r.bvec.capacity()) + buf(r.deque.capacity());
    let vec = r.vec.iter(tx)?.copied().collect();
    let mut bvec = Vec::new();
    for b in r.bvec.iter(tx)? {
        blocks += usize::from(!b.is_empty());
        bvec.push(b.as_bytes(tx)?.to_vec());
    }
    blocks += usize::from(!r.bytes.is_empty());
    let bytes = r.bytes.as_bytes(tx)?.to_vec();
    let deque = r.deque.iter(tx)?.copied().collect();
    let tables = |buckets: usize, resizing: bool| buf(buckets) + usize::from(resizing);
    blocks += tables(r.map.buckets(), r.map.is_resizing());
    let mut map = BTreeMap::new();
    for e in r.map.iter(tx)? {
        let (k, v) = e?;
        blocks += 1 + usize::from(!k.is_empty()) + usize::from(!v.is_empty());
        map.insert(k.as_bytes(tx)?.to_vec(), v.as_bytes(tx)?.to_vec());
    }
    if map.len() != r.map.len() {
        return Err(TxError::Corrupt);
    }
    blocks += tables(r.imap.buckets(), r.imap.is_resizing());
    let mut imap = BTreeMap::new();
    for e in r.imap.iter(tx)? {
        let (k, v) = e?;
        blocks += 1;
        imap.insert(*k, *v);
    }
    if imap.len() != r.imap.len() {
        return Err(TxError::Corrupt);
    }
    let mut omap = Vec::new();
    for e in r.omap.iter(tx)? {
        let (k, v) = e?;
        blocks += 1 + usize::from(!k.is_empty());
        omap.push((k.as_bytes(tx)?.to_vec(), *v));
    }
    if omap.len() != r.omap.len() || omap.windows(2).any(|w| w[0].0 >= w[1].0) {
        return Err(TxError::Corrupt);
    }
    Ok(State {
        txn: r.txn,
        vec,
        bvec,
        bytes,
        deque,
        map,
        imap,
        omap,
        blocks,
    })
}

/// Lowercase text (no byte of a pointer tag) of `n` bytes derived from `seed`.
fn text(seed: u64, n: usize) -> Vec<u8> {
    (0..n as u64)
        .map(|i| b'a' + ((seed.wrapping_mul(31).wrapping_add(i * 7)) % 26) as u8)
        .collect()
}

/// One random operation on one collection.
fn op<P: pmem_alloc::Persist + 'static>(
    tx: &Tx<'_, P>,
    r: &mut Root,
    kind: u32,
    x: u64,
) -> Result<(), TxError> {
    let t = r.txn;
    match kind {
        0 => r.vec.push(tx, t)?,
        1 => {
            r.vec.pop(tx)?;
        }
        2 => {
            if x.is_multiple_of(2) {
                r.vec.insert(tx, 0, t)?;
            } else if !r.vec.is_empty() {
                r.vec.remove(tx, 0)?;
            }
        }
        3 => {
            if x.is_multiple_of(3) {
                if let Some(b) = r.bvec.pop(tx)? {
                    pmem_alloc::collections::PFree::free_in(b, tx)?;
                }
            } else {
                let b = PBytes::new(tx, &text(x, 1 + (x % 40) as usize))?;
                r.bvec.push(tx, b)?;
            }
        }
        4 => {
            if x.is_multiple_of(2) {
                r.bytes.append(tx, &text(x, 1 + (x % 50) as usize))?;
            } else {
                let at = (x % 97) as usize;
                r.bytes.set_range(tx, at, &text(x, 5))?;
            }
        }
        5 => match x % 4 {
            0 => r.deque.push_back(tx, t)?,
            1 => r.deque.push_front(tx, t)?,
            2 => {
                r.deque.pop_front(tx)?;
            }
            _ => {
                r.deque.pop_back(tx)?;
            }
        },
        6 => {
            let k = format!("k{}", x % 40).into_bytes();
            match x % 5 {
                0 => {
                    if let Some(v) = r.map.remove(tx, &k)? {
                        pmem_alloc::collections::PFree::free_in(v, tx)?;
                    }
                }
                1 => {
                    if let Some(v) = r.map.get_mut(tx, &k)? {
                        v.append(tx, b"+")?;
                    }
                }
                _ => {
                    let v = PBytes::new(tx, &text(x, 1 + (x % 20) as usize))?;
                    if let Some(old) = r.map.insert(tx, &k, v)? {
                        pmem_alloc::collections::PFree::free_in(old, tx)?;
                    }
                }
            }
        }
        7 => {
            let k = x % 150;
            if x.is_multiple_of(4) {
                r.imap.remove(tx, &k)?;
            } else {
                for j in 0..3 {
                    r.imap.insert(tx, &(k + j), t)?;
                }
            }
        }
        _ => {
            let k = text(x % 30, 1 + (x % 3) as usize);
            match x % 5 {
                0 => {
                    r.omap.remove(tx, &k)?;
                }
                1 => {
                    if let Some((k, _)) = r.omap.pop_first(tx)? {
                        pmem_alloc::collections::PFree::free_in(k, tx)?;
                    }
                }
                _ => {
                    r.omap.insert(tx, &k, t)?;
                }
            }
        }
    }
    Ok(())
}

fn workload(seed: u64, attempts: usize) -> Run<State> {
    let media = Arc::new(SimMedia::new(POOL));
    let pool = Pool::create_sim(media.clone()).unwrap();
    let root = pool.root::<Root>().unwrap();
    // setup (not swept): the lanes, and a map one insert short of its first resize
    pool.transaction(|tx| {
        let r = tx.get_mut(root)?;
        for k in 0..7u64 {
            r.imap.insert(tx, &(1000 + k), k)?;
        }
        Ok::<_, TxError>(())
    })
    .unwrap();
    let initial = read_state(&pool).unwrap();
    media.reset_recording();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut after = Vec::new();
    let (mut resizing, mut vec_growths, mut last_cap) = (0, 0, 0);
    for _ in 0..attempts {
        let abort = rng.gen_bool(0.12);
        let nops = if rng.gen_bool(0.2) { 3 } else { 1 };
        let ops: Vec<(u32, u64)> = (0..nops)
            .map(|_| (rng.gen_range(0..9), rng.gen::<u64>() >> 1))
            .collect();
        let res: Result<(), TxError> = pool.transaction(|tx| {
            let r = tx.get_mut(root)?;
            r.txn += 1;
            for &(kind, x) in &ops {
                op(tx, r, kind, x)?;
            }
            if abort {
                Err(TxError::Aborted)
            } else {
                Ok(())
            }
        });
        assert_eq!(res.is_err(), abort, "{res:?}");
        pool.transaction(|tx| {
            let r = tx.get(root)?;
            resizing += usize::from(r.imap.is_resizing() || r.map.is_resizing());
            if r.vec.capacity() > last_cap {
                vec_growths += 1;
                last_cap = r.vec.capacity();
            }
            Ok::<_, TxError>(())
        })
        .unwrap();
        after.push((media.fences(), read_state(&pool).unwrap()));
    }
    assert!(resizing > 0, "no transaction ran during a hash map resize");
    assert!(vec_growths > 1, "the vector did not grow");
    pool.abandon();
    Run {
        rec: media.recording(),
        after,
        initial,
    }
}

/// The fields in which two states differ (with both values, shortened).
fn diff(a: &State, b: &State) -> Vec<String> {
    let mut out = Vec::new();
    macro_rules! field {
        ($($f:ident),*) => { $(
            if a.$f != b.$f {
                let (x, y) = (format!("{:?}", a.$f), format!("{:?}", b.$f));
                out.push(format!(
                    "{}: {} vs {}",
                    stringify!($f),
                    &x[..x.len().min(300)],
                    &y[..y.len().min(300)]
                ));
            }
        )* };
    }
    field!(txn, vec, bvec, bytes, deque, map, imap, omap, blocks);
    out
}

fn check(run: &Run<State>, img: &CrashImage<'_>) -> Result<(), String> {
    let mut pool = common::open_image(img.bytes)?;
    let rep = pool.open_report();
    let st = read_state(&pool)?;
    if let Err((done, prev, next)) = run.check_state(img.crash_point, &st) {
        let next = next.map(|s| diff(&st, s));
        return Err(format!(
            "after {done} transactions: found txn {}, expected txn {}: differs from before in {:?}, from after in {:?}",
            st.txn,
            prev.txn,
            diff(&st, prev),
            next
        ));
    }
    if rep.reachable != st.blocks {
        return Err(format!(
            "{} blocks reachable, the collections own {}",
            rep.reachable, st.blocks
        ));
    }
    let chk = pool.check().map_err(|e| format!("check: {e}"))?;
    if chk.run_blocks_live + chk.large != st.blocks + rep.lane_blocks {
        return Err(format!(
            "{} blocks allocated, {} expected (lanes {})",
            chk.run_blocks_live + chk.large,
            st.blocks + rep.lane_blocks,
            rep.lane_blocks
        ));
    }
    // the pool keeps working
    let root = pool.root::<Root>().map_err(|e| e.to_string())?;
    pool.transaction(|tx| {
        let r = tx.get_mut(root)?;
        r.vec.push(tx, 7)?;
        r.imap.insert(tx, &u64::MAX, 1)?;
        r.omap.insert(tx, b"zz", 1)?;
        Ok::<_, TxError>(())
    })
    .map_err(|e| format!("transaction after recovery: {e}"))?;
    read_state(&pool).map(|_| ())
}

fn sweep(seed: u64, attempts: usize, ev: Evictions) -> (usize, usize) {
    let run = workload(seed, attempts);
    common::tally(seed, &run.rec.sweep(ev, |img| check(&run, img)))
}

/// For every `cargo test` run: two seeds, strict and with a few eviction samples.
#[test]
fn crash_sweep_collections_quick() {
    let t = std::time::Instant::now();
    let (mut checked, mut failed, mut strict) = (0, 0, 0);
    for seed in [5, 6] {
        let (c, f) = sweep(seed, 150, Evictions::None);
        strict += c;
        checked += c;
        failed += f;
        let (c, f) = sweep(
            seed,
            150,
            Evictions::Random {
                seed: 9,
                samples: 2,
            },
        );
        checked += c;
        failed += f;
    }
    println!(
        "collections crash sweep (quick): {checked} crash images checked, {failed} failures, {:?}",
        t.elapsed()
    );
    assert!(strict > 800, "only {strict} crash points");
    assert_eq!(failed, 0);
}

#[test]
#[ignore = "heavy: run by tools/test-all.sh with --ignored --nocapture"]
fn crash_sweep_collections_every_fence_point_strict_and_with_evictions() {
    common::heavy_sweep("collections crash sweep", 17, 8, 30_000, |seed, ev| {
        sweep(seed, 500, ev)
    });
}
