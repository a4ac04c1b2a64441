//! Crash sweep over staged writes (redo records) under the crash simulator.
//!
//! A seeded sequence of operations moves amounts between counters spread over four blocks
//! (their sum is constant) and bumps an operation counter in the root, with:
//! - staged writes of 1 to 6 ranges (single words, whole 64-byte blocks, or both), sometimes
//!   large enough to move the lane's log to an overflow block;
//! - staged writes whose closure fails (nothing may change);
//! - undo transactions (which retire the pending records first);
//! - explicit retirements, and the retirements the writers do when half the lanes are held.
//!
//! Every fence is a crash point; the image at each point (strict, and with random subsets of
//! unflushed lines written back, which includes in-place writes reaching the media before
//! their record is retired and records reaching it torn) is reopened. The state found must be
//! the state after the last operation completed before the crash point, or after the one in
//! progress; the counters must sum to the constant, the checker must pass, and the pool must
//! take another staged write. A second test sweeps a crash during the replay at open.

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

#[repr(C)]
struct Root {
    ops: u64,
    counters: [PPtr<[u64; PER]>; BLOCKS],
}
// SAFETY: repr(C), PSafe fields.
unsafe impl PSafe for Root {}

#[derive(Clone, Debug, PartialEq, Eq)]
struct State {
    ops: u64,
    counters: Vec<u64>,
}

fn read_state<P: pmem_alloc::Persist + 'static>(pool: &Pool<P>) -> Result<State, String> {
    let root = pool.root::<Root>().map_err(|e| e.to_string())?;
    let r = pool.get(root).ok_or("root")?;
    // SAFETY: single-threaded; pointers resolved through the pool (bounds-checked).
    unsafe {
        let mut counters = Vec::new();
        for b in (*r).counters {
            counters.extend_from_slice(&*pool.get(b).ok_or("counter block")?);
        }
        Ok(State {
            ops: (*r).ops,
            counters,
        })
    }
}

fn setup(pool: &SimPool) -> PPtr<Root> {
    let root = pool.root::<Root>().unwrap();
    pool.transaction(|tx| {
        let r = tx.get_mut(root)?;
        for c in r.counters.iter_mut() {
            *c = tx.alloc([1000u64; PER])?;
        }
        Ok::<_, TxError>(())
    })
    .unwrap();
    root
}

fn counter(root: &Root, i: usize) -> PPtr<u64> {
    root.counters[i / PER]
        .cast::<u64>()
        .byte_add(8 * (i % PER) as u64)
}

/// One staged operation: move amounts between counters, bump `ops`. With `whole`, every
/// touched block is written as one 64-byte range; `pad` adds a large dummy write (a second
/// copy of a block, rewritten with its own contents) to outgrow the inline log.
fn staged_op(
    pool: &SimPool,
    root: PPtr<Root>,
    moves: &[(usize, usize, u64)],
    whole: bool,
    pad: bool,
    fail: bool,
) -> Result<(), TxError> {
    let mut st = read_state(pool).unwrap();
    for &(from, to, amount) in moves {
        let a = st.counters[from].min(amount);
        st.counters[from] -= a;
        st.counters[to] += a;
    }
    // SAFETY: single-threaded read of the root.
    let r = unsafe { &*pool.get(root).unwrap() };
    pool.staged(|s| {
        s.write_u64(root.cast(), st.ops + 1)?;
        let mut touched: Vec<usize> = moves.iter().flat_map(|m| [m.0, m.1]).collect();
        touched.sort_unstable();
        touched.dedup();
        if whole {
            let mut blocks: Vec<usize> = touched.iter().map(|i| i / PER).collect();
            blocks.dedup();
            for b in blocks {
                let bytes: Vec<u8> = st.counters[b * PER..(b + 1) * PER]
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect();
                s.write(r.counters[b], &bytes)?;
            }
        } else {
            for &i in &touched {
                s.write_u64(counter(r, i), st.counters[i])?;
            }
        }
        if pad {
            // the same bytes again, many times: a record of about 1.3 KiB
            for _ in 0..20 {
                let bytes: Vec<u8> = st.counters[..PER]
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect();
                s.write(r.counters[0], &bytes)?;
            }
        }
        if fail {
            Err(TxError::Aborted)
        } else {
            Ok(())
        }
    })
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
        let moves: Vec<(usize, usize, u64)> = (0..rng.gen_range(1..4))
            .map(|_| {
                (
                    rng.gen_range(0..BLOCKS * PER),
                    rng.gen_range(0..BLOCKS * PER),
                    rng.gen_range(0..50),
                )
            })
            .collect();
        match rng.gen_range(0..20) {
            0..=1 => {
                // an undo transaction: retires the pending records first
                pool.transaction(|tx| {
                    let r = tx.get_mut(root)?;
                    r.ops += 1;
                    let b = tx.get_mut(r.counters[moves[0].0 / PER])?;
                    let (i, j) = (moves[0].0 % PER, (moves[0].0 + 1) % PER);
                    let a = b[i].min(7);
                    b[i] -= a;
                    b[j] += a;
                    Ok::<_, TxError>(())
                })
                .unwrap();
            }
            2 => pool.retire_staged(),
            3 => {
                let r = staged_op(&pool, root, &moves, false, false, true);
                assert_eq!(r, Err(TxError::Aborted));
            }
            k => {
                let whole = k % 3 == 0;
                let pad = k == 19 && rng.gen_bool(0.3);
                staged_op(&pool, root, &moves, whole, pad, false).unwrap();
            }
        }
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
    let st = read_state(&pool)?;
    if let Err((done, prev, _)) = run.check_state(img.crash_point, &st) {
        return Err(format!(
            "after {done} operations: found ops {} counters {:?}, expected ops {} (or the next)",
            st.ops, st.counters, prev.ops
        ));
    }
    if st.counters.iter().sum::<u64>() != TOTAL {
        return Err("counters do not sum to the total".into());
    }
    pool.check().map_err(|e| format!("check: {e}"))?;
    if pool.staged_pending() != 0 {
        return Err("records pending after open".into());
    }
    // the pool keeps working
    let root = pool.root::<Root>().map_err(|e| e.to_string())?;
    staged_op(&pool, root, &[(0, 1, 1)], false, false, false)
        .map_err(|e| format!("staged write after recovery: {e}"))?;
    Ok(())
}

fn sweep(seed: u64, attempts: usize, ev: Evictions) -> (usize, usize) {
    let run = workload(seed, attempts);
    common::tally(seed, &run.rec.sweep(ev, |img| check(&run, img)))
}

/// For every `cargo test` run: one seed, strict and with a few eviction samples.
#[test]
fn crash_sweep_staged_quick() {
    common::quick_sweep("staged crash sweep (quick)", 5, 9, 60, |seed, ev| {
        sweep(seed, 60, ev)
    });
}

#[test]
#[ignore = "heavy: run by tools/test-all.sh with --ignored --nocapture"]
fn crash_sweep_staged_every_fence_point_strict_and_with_evictions() {
    common::heavy_sweep("staged crash sweep", 37, 10, 5_000, |seed, ev| {
        sweep(seed, 200, ev)
    });
}

/// A crash during the replay that an open performs: the next open still finds every
/// acknowledged write.
#[test]
fn crash_during_replay_at_open() {
    let media = Arc::new(SimMedia::new_strict(POOL));
    let pool = Pool::create_sim(media.clone()).unwrap();
    let root = setup(&pool);
    for i in 0..6 {
        staged_op(
            &pool,
            root,
            &[(i, i + 8, 100), (i + 16, i, 3)],
            i % 2 == 0,
            false,
            false,
        )
        .unwrap();
    }
    let expect = read_state(&pool).unwrap();
    assert!(pool.staged_pending() > 0);
    let img = media.durable_image();
    pool.abandon();
    let m = Arc::new(SimMedia::from_image(&img));
    let p = Pool::open_sim(m.clone()).unwrap();
    assert_eq!(p.open_report().staged_replayed, 6);
    assert_eq!(read_state(&p).unwrap(), expect);
    p.abandon();
    common::sweep_recovering_open("crash during replay", &m, 13, |pool| {
        let st = read_state(pool)?;
        if st != expect {
            return Err(format!("found ops {}, counters {:?}", st.ops, st.counters));
        }
        Ok(())
    });
}
