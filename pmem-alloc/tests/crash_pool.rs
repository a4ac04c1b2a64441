//! Crash sweep of the persistent heap under the crash simulator.
//!
//! A random workload (seeded) allocates nodes of random sizes (small and large), fills them with
//! checksummed data, persists them, links them into a list from the root, unlinks (durably) and
//! frees others. Every fence of the run is a crash point; the durable image at each point, and
//! images with random subsets of unflushed lines also written back (evictions), are reopened as
//! new pools. Each must open, recover, pass the checker, hold a list whose every node verifies,
//! count exactly the reachable blocks as allocated (no persistent leak, nothing reachable lost),
//! and never hand out a reachable block again.

mod common;

use common::{Node, HDR};
use pmem_alloc::pool::Pool;
use pmem_alloc::pptr::{PPtr, PSafe};
use pmem_alloc::sim::{CrashImage, Evictions, SimMedia};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashSet;
use std::sync::Arc;

const POOL: usize = 1 << 20;

#[repr(C)]
struct Root {
    head: PPtr<Node>,
}
// SAFETY: repr(C), PSafe fields.
unsafe impl PSafe for Root {}

fn payload_byte(id: u64, i: usize) -> u8 {
    (id as usize * 131 + i * 7) as u8 ^ 0x5c
}

fn sum(id: u64, len: u64) -> u64 {
    id.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ len.rotate_left(29) ^ 0xA5A5_0000_0000_5A5A
}

/// Runs the workload; returns the recording of every fence after setup.
fn workload(seed: u64, ops: usize) -> (pmem_alloc::sim::Recording, usize) {
    let media = Arc::new(SimMedia::new(POOL));
    let pool = Pool::create_sim(media.clone()).unwrap();
    let root = pool.root::<Root>().unwrap();
    media.reset_recording();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut live: Vec<PPtr<Node>> = Vec::new();
    let mut next_id = 1u64;
    for _ in 0..ops {
        if live.is_empty() || rng.gen_bool(0.6) {
            let len = if rng.gen_bool(0.05) {
                rng.gen_range(33_000..90_000)
            } else {
                rng.gen_range(0..600)
            };
            let Ok(raw) = pool.alloc_zeroed_bytes(HDR + len) else {
                continue;
            };
            let n = raw.cast::<Node>();
            let id = next_id;
            next_id += 1;
            let np = pool.get(n).unwrap();
            // SAFETY: fresh block of HDR + len bytes; single-threaded.
            unsafe {
                let r = pool.get(root).unwrap();
                (*np).next = (*r).head;
                (*np).id = id;
                (*np).len = len as u64;
                (*np).sum = sum(id, len as u64);
                let data = np.cast::<u8>().add(HDR);
                for i in 0..len {
                    *data.add(i) = payload_byte(id, i);
                }
                // ordering: node durable, then the link
                pool.persist(n, HDR + len);
                pool.publish(root.cast::<PPtr<Node>>(), n).unwrap();
            }
            live.insert(0, n);
        } else {
            // unlink a random node (durably), then free it
            let k = rng.gen_range(0..live.len());
            let victim = live.remove(k);
            // SAFETY: single-threaded; nodes are live.
            unsafe {
                let vnext = (*pool.get(victim).unwrap()).next;
                if k == 0 {
                    pool.publish(root.cast::<PPtr<Node>>(), vnext).unwrap();
                } else {
                    let prev = live[k - 1];
                    pool.publish(prev.cast::<PPtr<Node>>(), vnext).unwrap();
                }
                pool.free(victim);
            }
        }
    }
    let n = live.len();
    pool.abandon();
    (media.recording(), n)
}

fn check_image(img: &CrashImage<'_>) -> Result<(), String> {
    let mut pool = common::open_image(img.bytes)?;
    let rep = pool.open_report();
    if !rep.recovered {
        return Err("an abandoned pool opened without recovery".into());
    }
    let root = pool.root::<Root>().map_err(|e| format!("root: {e}"))?;
    // walk and verify the list
    let mut seen = HashSet::new();
    let mut addrs = Vec::new();
    // SAFETY: read-only walk; pointers resolved through the pool (bounds checked).
    unsafe {
        let mut cur = (*pool.get(root).unwrap()).head;
        while !cur.is_null() {
            let np = pool.get(cur).ok_or("link outside the pool")?;
            if !seen.insert(cur.offset()) {
                return Err("cycle in the list".into());
            }
            let (id, len, s) = ((*np).id, (*np).len, (*np).sum);
            if s != sum(id, len) || len > 200_000 {
                return Err(format!("node {id} header torn"));
            }
            let data = np.cast::<u8>().add(HDR);
            for i in 0..len as usize {
                if *data.add(i) != payload_byte(id, i) {
                    return Err(format!("node {id} payload torn at {i}"));
                }
            }
            addrs.push((np as usize, HDR + len as usize));
            cur = (*np).next;
        }
    }
    let chk = pool.check().map_err(|e| format!("check: {e}"))?;
    let live = chk.run_blocks_live + chk.large;
    if live != seen.len() + 1 {
        return Err(format!(
            "{live} blocks allocated but {} reachable (+ root)",
            seen.len()
        ));
    }
    if rep.reachable != seen.len() + 1 {
        return Err(format!(
            "recovery marked {} blocks, {} reachable",
            rep.reachable,
            seen.len() + 1
        ));
    }
    // new allocations never overlap reachable blocks
    for i in 0..64 {
        let size = if i % 16 == 0 { 40_000 } else { 16 + i * 24 };
        let Ok(p) = pool.alloc(size) else { break };
        let a = pool.get(p).unwrap() as usize;
        if addrs.iter().any(|&(s, l)| a < s + l && s < a + size) {
            return Err("a reachable block was handed out again".into());
        }
    }
    Ok(())
}

fn sweep(seed: u64, ops: usize, ev: Evictions) -> (usize, usize) {
    let (rec, _) = workload(seed, ops);
    common::tally(seed, &rec.sweep(ev, check_image))
}

#[test]
#[ignore = "heavy (~30 s): run by tools/test-all.sh with --ignored --nocapture"]
fn crash_sweep_every_fence_point_strict_and_with_evictions() {
    common::heavy_sweep("crash sweep", 77, 10, 10_000, |seed, ev| {
        sweep(seed, 120, ev)
    });
}

/// A quick version for every `cargo test` run: one seed, no evictions.
#[test]
fn crash_sweep_quick() {
    let (c, f) = sweep(99, 40, Evictions::None);
    assert!(c > 40);
    assert_eq!(f, 0);
}
