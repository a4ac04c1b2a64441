//! Property test of the persistent heap against a reference model: random sequences of alloc,
//! free, realloc and reopen (clean, or crashed at the end of the step) on simulated media; the
//! checker runs after every step and every live block keeps its contents across reopens.

use pmem_alloc::pool::Pool;
use pmem_alloc::pptr::PPtr;
use pmem_alloc::sim::SimMedia;
use proptest::prelude::*;
use std::sync::Arc;

const SLOTS: usize = 32;
type Root = [PPtr<u8>; SLOTS];

#[derive(Debug, Clone)]
enum Op {
    Alloc(usize, usize),
    Free(usize),
    Realloc(usize, usize),
    Reopen { clean: bool },
}

fn op() -> impl Strategy<Value = Op> {
    let size = prop_oneof![4 => 1usize..600, 2 => 600usize..40_000, 1 => 40_000usize..200_000];
    prop_oneof![
        5 => (0..SLOTS, size.clone()).prop_map(|(s, n)| Op::Alloc(s, n)),
        3 => (0..SLOTS).prop_map(Op::Free),
        2 => (0..SLOTS, size).prop_map(|(s, n)| Op::Realloc(s, n)),
        1 => any::<bool>().prop_map(|clean| Op::Reopen { clean }),
    ]
}

type SimPool = Pool<Arc<SimMedia>>;

fn slot(pool: &SimPool, i: usize) -> PPtr<PPtr<u8>> {
    pool.root::<Root>()
        .unwrap()
        .cast::<PPtr<u8>>()
        .byte_add(8 * i as u64)
}

fn read_slot(pool: &SimPool, i: usize) -> PPtr<u8> {
    // SAFETY: the slot is inside the live root object.
    unsafe { *pool.get(slot(pool, i)).unwrap() }
}

fn fill(pool: &SimPool, p: PPtr<u8>, len: usize, tag: u8) {
    let a = pool.get(p).unwrap();
    // SAFETY: `p` is a live block of at least `len` bytes.
    unsafe { std::ptr::write_bytes(a, tag, len) };
    pool.persist(p, len);
}

fn holds(pool: &SimPool, p: PPtr<u8>, len: usize, tag: u8) -> bool {
    let a = pool.get(p).unwrap();
    // SAFETY: live block of at least `len` bytes.
    unsafe { std::slice::from_raw_parts(a, len) }
        .iter()
        .all(|&b| b == tag)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn pool_matches_the_model(ops in proptest::collection::vec(op(), 1..80)) {
        let media = Arc::new(SimMedia::new_strict(8 << 20));
        let mut pool = Pool::create_sim(media).unwrap();
        pool.root::<Root>().unwrap();
        let mut model: Vec<Option<(usize, u8)>> = vec![None; SLOTS];
        let mut tag = 0u8;
        for o in ops {
            match o {
                Op::Alloc(i, n) => {
                    if model[i].is_some() {
                        let old = read_slot(&pool, i);
                        pool.publish(slot(&pool, i), PPtr::null()).unwrap();
                        // SAFETY: unlinked durably above; live block of this pool.
                        unsafe { pool.free(old) };
                    }
                    let Ok(p) = pool.alloc(n) else { model[i] = None; continue };
                    tag = tag.wrapping_add(1);
                    fill(&pool, p, n, tag);
                    pool.publish(slot(&pool, i), p).unwrap();
                    model[i] = Some((n, tag));
                }
                Op::Free(i) => {
                    if model[i].take().is_some() {
                        let old = read_slot(&pool, i);
                        pool.publish(slot(&pool, i), PPtr::null()).unwrap();
                        // SAFETY: as above.
                        unsafe { pool.free(old) };
                    }
                }
                Op::Realloc(i, n) => {
                    if let Some((len, t)) = model[i] {
                        let old = read_slot(&pool, i);
                        // SAFETY: live block; the new link is published right after.
                        let Ok(p) = (unsafe { pool.realloc(old, n) }) else { continue };
                        prop_assert!(holds(&pool, p, len.min(n), t));
                        fill(&pool, p, n, t);
                        pool.publish(slot(&pool, i), p).unwrap();
                        model[i] = Some((n, t));
                    }
                }
                Op::Reopen { clean } => {
                    let media = if clean {
                        let m = pool.persister().clone();
                        pool.close().unwrap();
                        m
                    } else {
                        let m = pool.persister().clone();
                        pool.abandon();
                        m
                    };
                    let img = media.durable_image();
                    pool = Pool::open_sim(Arc::new(SimMedia::from_image_strict(&img))).unwrap();
                    let rep = pool.open_report();
                    prop_assert_eq!(rep.recovered, !clean);
                }
            }
            let chk = pool.check().unwrap();
            let live = model.iter().flatten().count();
            prop_assert_eq!(chk.run_blocks_live + chk.large, live + 1, "allocated blocks vs model (+root)");
            for (i, m) in model.iter().enumerate() {
                match m {
                    Some((len, t)) => prop_assert!(holds(&pool, read_slot(&pool, i), *len, *t), "slot {} lost its contents", i),
                    None => prop_assert!(read_slot(&pool, i).is_null()),
                }
            }
        }
    }
}
