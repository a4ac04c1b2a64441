//! Staged writes (redo records): values, fence counts (measured with the simulator),
//! retirement in batches, replay at open after a crash, errors and panics, joining a running
//! transaction, the fallback for lane areas without the feature, corrupted records, and many
//! threads.

use pmem_alloc::layout::{self, LaneArea, StateSlot, STATE_SLOT_OFFSET};
use pmem_alloc::pool::{Pool, PoolError};
use pmem_alloc::pptr::{PPtr, PSafe};
use pmem_alloc::sim::SimMedia;
use pmem_alloc::tx::TxError;
use std::sync::Arc;

const POOL: usize = 2 << 20;

#[repr(C)]
struct Root {
    words: [u64; 64],
    link: PPtr<[u64; 8]>,
}
// SAFETY: repr(C), PSafe fields.
unsafe impl PSafe for Root {}

type SimPool = Pool<Arc<SimMedia>>;

fn sim_pool() -> (Arc<SimMedia>, SimPool) {
    let media = Arc::new(SimMedia::new_strict(POOL));
    let pool = Pool::create_sim(media.clone()).unwrap();
    (media, pool)
}

fn word(root: PPtr<Root>, i: usize) -> PPtr<u64> {
    root.cast::<u64>().byte_add(8 * i as u64)
}

fn words(pool: &SimPool) -> [u64; 64] {
    let root = pool.root::<Root>().unwrap();
    // SAFETY: single-threaded reads of the root.
    unsafe { (*pool.get(root).unwrap()).words }
}

/// Writes `v` to words `first..first + n` (one range of 8 bytes per word, 64 bytes apart when
/// `spread`).
fn stage(pool: &SimPool, first: usize, n: usize, v: u64) -> Result<(), TxError> {
    let root = pool.root::<Root>().unwrap();
    pool.staged(|s| {
        for i in first..first + n {
            s.write_u64(word(root, i), v)?;
        }
        Ok(())
    })
}

fn reopen(media: &SimMedia) -> (Arc<SimMedia>, SimPool) {
    let m = Arc::new(SimMedia::from_image_strict(&media.durable_image()));
    let p = Pool::open_sim(m.clone()).unwrap();
    (m, p)
}

#[test]
fn writes_are_visible_and_survive_close_and_crash() {
    let (media, pool) = sim_pool();
    stage(&pool, 0, 4, 7).unwrap();
    stage(&pool, 2, 4, 9).unwrap();
    assert_eq!(&words(&pool)[..7], &[7, 7, 9, 9, 9, 9, 0]);
    assert_eq!(pool.staged_pending(), 2);
    // a crash: the in-place bytes were never flushed, the records replay them
    let (m2, p2) = reopen(&media);
    assert_eq!(p2.open_report().staged_replayed, 2);
    assert_eq!(&words(&p2)[..7], &[7, 7, 9, 9, 9, 9, 0]);
    // replayed and retired: another crash replays nothing and loses nothing
    p2.abandon();
    let (_m3, p3) = reopen(&m2);
    assert_eq!(p3.open_report().staged_replayed, 0);
    assert_eq!(&words(&p3)[..7], &[7, 7, 9, 9, 9, 9, 0]);
    // a clean close retires everything
    pool.close().unwrap();
    let (_m4, p4) = reopen(&media);
    assert_eq!(p4.open_report().staged_replayed, 0);
    assert_eq!(&words(&p4)[..7], &[7, 7, 9, 9, 9, 9, 0]);
}

#[test]
fn one_fence_per_write_and_two_per_retired_batch() {
    let (media, pool) = sim_pool();
    stage(&pool, 0, 1, 1).unwrap(); // creates the lanes
    pool.retire_staged();
    let nlanes = pool.tx_lanes();
    let count = |f: &dyn Fn()| {
        let before = media.fences();
        f();
        media.fences() - before
    };
    for n in [1, 4, 16, 64] {
        // 64 ranges (1,056 bytes) outgrow the 960-byte inline log: once, the log moves to a
        // new block (two fences, plus the fences of allocating the block)
        let first = count(&|| stage(&pool, 0, n, n as u64).unwrap());
        if n < 64 {
            assert_eq!(first, 1, "{n} ranges");
        } else {
            assert!(first >= 3, "{n} ranges: {first}");
        }
        pool.retire_staged();
        assert_eq!(
            count(&|| stage(&pool, 0, n, n as u64).unwrap()),
            1,
            "{n} ranges"
        );
        pool.retire_staged();
    }
    // retiring costs two fences for the whole batch
    for i in 0..5 {
        stage(&pool, i, 1, 100 + i as u64).unwrap();
    }
    assert_eq!(pool.staged_pending(), 5);
    assert_eq!(count(&|| pool.retire_staged()), 2);
    assert_eq!(pool.staged_pending(), 0);
    assert_eq!(count(&|| pool.retire_staged()), 0);
    // a writer retires the batch when half of the lanes hold records
    let mut total = 0;
    let writes = nlanes + 1;
    for i in 0..writes {
        total += count(&|| stage(&pool, i % 64, 1, i as u64).unwrap());
        assert!(pool.staged_pending() <= nlanes / 2);
    }
    // with 2n lanes, the writes number n + 1 and 2n + 1 retire the n records before them
    assert_eq!(total, writes + 2 * 2, "{writes} writes, two retirements");
    // nothing staged: no fence
    assert_eq!(count(&|| pool.staged(|_| Ok(())).unwrap()), 0);
}

#[test]
fn error_or_panic_writes_nothing() {
    let (_media, pool) = sim_pool();
    let root = pool.root::<Root>().unwrap();
    let r: Result<(), TxError> = pool.staged(|s| {
        s.write_u64(word(root, 0), 5)?;
        Err(TxError::Aborted)
    });
    assert_eq!(r, Err(TxError::Aborted));
    let p = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _ = pool.staged(|s| -> Result<(), TxError> {
            s.write_u64(word(root, 1), 5)?;
            panic!("in the closure");
        });
    }));
    assert!(p.is_err());
    assert_eq!(&words(&pool)[..2], &[0, 0]);
    assert_eq!(pool.staged_pending(), 0);
    stage(&pool, 0, 2, 3).unwrap();
    assert_eq!(&words(&pool)[..2], &[3, 3]);
}

#[test]
fn invalid_ranges_are_refused() {
    let (_media, pool) = sim_pool();
    let root = pool.root::<Root>().unwrap();
    pool.transaction(|_| Ok::<_, TxError>(())).unwrap();
    let bad = [
        PPtr::<u8>::null(),
        PPtr::from_offset(8),                  // the pool header
        PPtr::from_offset(POOL as u64 - 4),    // runs past the end
        PPtr::from_offset(POOL as u64 + 4096), // outside
    ];
    for p in bad {
        let r = pool.staged(|s| s.write(p, &[1u8; 8]));
        assert_eq!(r, Err(TxError::InvalidPointer), "{p:?}");
    }
    // misaligned word
    let r = pool.staged(|s| s.write_u64(root.cast::<u8>().byte_add(3).cast(), 1));
    assert_eq!(r, Err(TxError::InvalidPointer));
    assert_eq!(pool.staged_pending(), 0);
}

#[test]
fn inside_a_transaction_it_joins_and_aborts_with_it() {
    let (_media, pool) = sim_pool();
    let root = pool.root::<Root>().unwrap();
    let r: Result<(), TxError> = pool.transaction(|tx| {
        tx.pool().staged(|s| s.write_u64(word(root, 0), 11))?;
        // SAFETY: single-threaded read.
        assert_eq!(unsafe { *tx.pool().get(word(root, 0)).unwrap() }, 11);
        Err(TxError::Aborted)
    });
    assert!(r.is_err());
    assert_eq!(words(&pool)[0], 0);
    assert_eq!(pool.staged_pending(), 0);
    pool.transaction(|tx| tx.pool().staged(|s| s.write_u64(word(root, 0), 12)))
        .unwrap();
    assert_eq!(words(&pool)[0], 12);
}

/// A transaction after staged writes retires them first, so a crash cannot replay a record
/// over what the transaction made durable; the same holds for a freed and reused block.
#[test]
fn later_durable_writes_are_not_undone_by_a_replay() {
    let (media, pool) = sim_pool();
    let root = pool.root::<Root>().unwrap();
    stage(&pool, 0, 1, 1).unwrap();
    pool.transaction(|tx| {
        tx.get_mut(root)?.words[0] = 2;
        Ok::<_, TxError>(())
    })
    .unwrap();
    assert_eq!(pool.staged_pending(), 0);
    // a block written by a staged write, freed, reallocated and persisted by hand
    let b = pool.alloc_zeroed::<[u64; 8]>().unwrap();
    pool.staged(|s| s.write_u64(b.cast(), 5)).unwrap();
    // SAFETY: `b` is a live block nobody links.
    unsafe { pool.free(b) };
    let c = pool.alloc_zeroed::<[u64; 8]>().unwrap();
    let cp = pool.get(c).unwrap();
    // SAFETY: a fresh block of this pool; single-threaded.
    unsafe { (*cp)[0] = 6 };
    pool.persist_val(c);
    let (_m, p2) = reopen(&media);
    assert_eq!(words(&p2)[0], 2);
    if c == b {
        let cp = p2.get(c).unwrap();
        // SAFETY: single-threaded read inside the pool.
        assert_eq!(unsafe { (*cp)[0] }, 6);
    }
}

/// A new object flushed with the record and linked by it survives a crash.
#[test]
fn a_linked_new_object_is_flushed_with_the_record() {
    let (media, pool) = sim_pool();
    let root = pool.root::<Root>().unwrap();
    pool.transaction(|_| Ok::<_, TxError>(())).unwrap();
    let obj = pool.alloc_zeroed::<[u64; 8]>().unwrap();
    let op = pool.get(obj).unwrap();
    // SAFETY: a fresh block nobody else uses.
    unsafe { *op = [42; 8] };
    let slot = root.cast::<u8>().byte_add(64 * 8).cast::<PPtr<[u64; 8]>>();
    pool.staged(|s| {
        s.flush(obj, 64)?;
        s.write_pptr(slot, obj)
    })
    .unwrap();
    let (_m, p2) = reopen(&media);
    let r = p2.get(root).unwrap();
    // SAFETY: single-threaded reads through bounds-checked pointers.
    unsafe {
        let o = p2.get((*r).link).unwrap();
        assert_eq!(*o, [42; 8]);
    }
}

/// The lane area of `img` (from the newer state slot).
fn lane_area_off(img: &[u8]) -> usize {
    let slots: Vec<StateSlot> = (0..2)
        .map(|i| layout::read_from(&img[STATE_SLOT_OFFSET + 64 * i..]).unwrap())
        .collect();
    let s = slots.iter().max_by_key(|s| s.seq.get()).unwrap();
    s.lanes.get() as usize
}

#[test]
fn lane_areas_without_the_feature_fall_back_to_transactions() {
    let (media, pool) = sim_pool();
    pool.transaction(|_| Ok::<_, TxError>(())).unwrap();
    pool.close().unwrap();
    let mut img = media.durable_image();
    let off = lane_area_off(&img);
    let mut a: LaneArea = layout::read_from(&img[off..]).unwrap();
    assert_eq!(a.features.get(), layout::LANE_FEATURE_STAGED);
    a.features = layout::Le64::new(0);
    a.seal();
    img[off..off + 64].copy_from_slice(layout::as_bytes(&a));
    let m = Arc::new(SimMedia::from_image_strict(&img));
    let pool = Pool::open_sim(m.clone()).unwrap();
    stage(&pool, 0, 4, 7).unwrap();
    let before = m.fences();
    stage(&pool, 0, 4, 8).unwrap();
    assert_eq!(m.fences() - before, 3, "an undo transaction");
    assert_eq!(pool.staged_pending(), 0);
    assert_eq!(&words(&pool)[..4], &[8; 4]);
    // unknown feature bits are refused
    pool.close().unwrap();
    let mut img = m.durable_image();
    a.features = layout::Le64::new(2);
    a.seal();
    img[off..off + 64].copy_from_slice(layout::as_bytes(&a));
    let m = Arc::new(SimMedia::from_image_strict(&img));
    assert!(matches!(Pool::open_sim(m), Err(PoolError::Lanes(_))));
}

/// A torn record (bad checksum) is ignored: the write it carried was never acknowledged.
/// A record with a right checksum but a range outside the pool is refused with a typed error.
#[test]
fn torn_and_malformed_records() {
    let (media, pool) = sim_pool();
    stage(&pool, 0, 1, 1).unwrap();
    pool.retire_staged();
    stage(&pool, 0, 2, 5).unwrap();
    let img = media.durable_image();
    let area = lane_area_off(&img);
    // the record is at the start of some lane's log: find it by its kind word
    let rec = (0..64)
        .map(|l| area + 64 + l * layout::LANE_SIZE + layout::LANE_HEADER)
        .find(|&p| {
            let h: layout::StagedHeader = layout::read_from(&img[p..]).unwrap();
            h.kind.get() & 0xFFFF == layout::STAGED_KIND && h.seq.get() == 2
        })
        .expect("the record");
    // torn: one byte of the new bytes differs
    let mut torn = img.clone();
    torn[rec + 32 + 8] ^= 1;
    let m = Arc::new(SimMedia::from_image_strict(&torn));
    let p = Pool::open_sim(m).unwrap();
    assert_eq!(p.open_report().staged_replayed, 0);
    assert_eq!(&words(&p)[..2], &[1, 0]);
    // malformed: a range beyond the pool, checksum recomputed
    let mut bad = img.clone();
    let off_at = rec + 32;
    let e = layout::StagedEntry::new(POOL * 2, 8);
    bad[off_at..off_at + 8].copy_from_slice(layout::as_bytes(&e));
    let h: layout::StagedHeader = layout::read_from(&bad[rec..]).unwrap();
    let end = rec + 32 + h.len.get() as usize;
    let sum = layout::undo_checksum(&bad[rec + 8..end]);
    bad[rec..rec + 8].copy_from_slice(&sum.to_le_bytes());
    let m = Arc::new(SimMedia::from_image_strict(&bad));
    assert!(matches!(Pool::open_sim(m), Err(PoolError::Lanes(_))));
}

#[test]
fn many_threads_stage_their_own_words() {
    let (media, pool) = sim_pool();
    let root = pool.root::<Root>().unwrap();
    let pool = Arc::new(pool);
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let pool = pool.clone();
            std::thread::spawn(move || {
                for i in 1..=300u64 {
                    // two words per thread move together; a transaction now and then
                    if i % 50 == 0 {
                        pool.transaction(|tx| {
                            // this thread's word only (the root is shared)
                            let p = word(root, 32 + t);
                            tx.snapshot(p, 8)?;
                            let a = tx.pool().get(p).ok_or(TxError::InvalidPointer)?;
                            // SAFETY: saved above; no other thread writes this word.
                            unsafe { *a += 1 };
                            Ok::<_, TxError>(())
                        })
                        .unwrap();
                    }
                    pool.staged(|s| {
                        s.write_u64(word(root, 2 * t), i)?;
                        s.write_u64(word(root, 2 * t + 1), i * 10)
                    })
                    .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let expect = |w: &[u64; 64]| {
        for t in 0..4 {
            assert_eq!(
                (w[2 * t], w[2 * t + 1], w[32 + t]),
                (300, 3000, 6),
                "thread {t}"
            );
        }
    };
    expect(&words(&pool));
    let (_m, p2) = reopen(&media);
    expect(&words(&p2));
}

/// A write longer than one entry's 65,535 bytes is split into several entries (and the record
/// moves to an overflow log); it replays whole.
#[test]
fn a_long_write_is_split_and_replays_whole() {
    let (media, pool) = sim_pool();
    let big = pool.alloc_zeroed_bytes(70_000).unwrap();
    let bytes: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
    pool.staged(|s| s.write(big, &bytes)).unwrap();
    let (_m, p2) = reopen(&media);
    assert_eq!(p2.open_report().staged_replayed, 1);
    let a = p2.get(big).unwrap();
    // SAFETY: a live block of 70,000 bytes; single-threaded read.
    let got = unsafe { std::slice::from_raw_parts(a, 70_000) };
    assert!(got == &bytes[..]);
}

/// A range borrowed by a running transaction (a reference handed out to safe code) is not
/// written by a staged write from another thread: the write fails with `Borrowed` and changes
/// nothing; after the transaction it succeeds.
#[test]
fn ranges_borrowed_by_a_running_transaction_are_refused() {
    let (_media, pool) = sim_pool();
    let root = pool.root::<Root>().unwrap();
    let pool = Arc::new(pool);
    let (tx_in, rx_in) = std::sync::mpsc::channel::<()>();
    let (tx_out, rx_out) = std::sync::mpsc::channel::<()>();
    let p2 = pool.clone();
    let holder = std::thread::spawn(move || {
        p2.transaction(|tx| {
            let r = tx.get(root)?;
            let before = r.words[5];
            tx_in.send(()).unwrap();
            rx_out.recv().unwrap();
            assert_eq!(r.words[5], before, "changed under a shared reference");
            Ok::<_, TxError>(())
        })
        .unwrap();
    });
    rx_in.recv().unwrap();
    assert_eq!(stage(&pool, 5, 1, 77), Err(TxError::Borrowed));
    // a range outside the borrowed root is fine
    let other = pool.alloc_zeroed::<[u64; 8]>().unwrap();
    pool.staged(|s| s.write_u64(other.cast(), 1)).unwrap();
    tx_out.send(()).unwrap();
    holder.join().unwrap();
    assert_eq!(words(&pool)[5], 0);
    stage(&pool, 5, 1, 77).unwrap();
    assert_eq!(words(&pool)[5], 77);
}

/// Stress of the fast path against transactions that start borrowing: readers hold a shared
/// reference to the root in a transaction and must never see a word change under it, while
/// writers stage new values for that word (retrying while it is borrowed).
#[test]
fn a_shared_reference_never_changes_under_concurrent_staged_writes() {
    let (_media, pool) = sim_pool();
    let root = pool.root::<Root>().unwrap();
    pool.transaction(|_| Ok::<_, TxError>(())).unwrap();
    let pool = Arc::new(pool);
    let order = Arc::new(std::sync::Mutex::new(()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..2)
        .map(|_| {
            let (pool, order, stop) = (pool.clone(), order.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut done = 0u64;
                for _ in 0..200_000 {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    // writes of one word are ordered by the application
                    let _g = order.lock().unwrap();
                    let cur = words(&pool)[9];
                    match stage(&pool, 9, 1, cur + 1) {
                        Ok(()) => done += 1,
                        Err(TxError::Borrowed) => {}
                        Err(e) => panic!("{e}"),
                    }
                }
                done
            })
        })
        .collect();
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let pool = pool.clone();
            std::thread::spawn(move || {
                let mut seen = 0u64;
                for _ in 0..20_000 {
                    let r = pool.transaction(|tx| {
                        let r = tx.get(root)?;
                        // SAFETY: a volatile read through the shared reference's address.
                        let a = unsafe { std::ptr::read_volatile(&r.words[9]) };
                        for _ in 0..200 {
                            std::hint::spin_loop();
                        }
                        // SAFETY: as above.
                        let b = unsafe { std::ptr::read_volatile(&r.words[9]) };
                        assert_eq!(a, b, "the word changed under a shared reference");
                        Ok::<_, TxError>(())
                    });
                    // a staged write registered in the borrow table refuses the reader, as
                    // a transaction would
                    match r {
                        Ok(()) => seen += 1,
                        Err(TxError::Borrowed) => {}
                        Err(e) => panic!("{e}"),
                    }
                }
                seen
            })
        })
        .collect();
    let seen: u64 = readers.into_iter().map(|r| r.join().unwrap()).sum();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let done: u64 = writers.into_iter().map(|w| w.join().unwrap()).sum();
    assert!(done > 0 && seen > 0, "writes {done}, reads {seen}");
    assert_eq!(words(&pool)[9], done);
}

/// Staged writes of the same bytes from several threads at once: each leaves the object whole
/// (never a mix of two updates), and they reach memory in the order of their sequence numbers,
/// the order in which a replay applies them, so a crash at any moment brings back exactly what
/// memory held. Rounds of three simultaneous writers of a 4 KiB object; after each, the durable
/// image is opened (a crash there) and must show the bytes memory shows.
#[test]
fn concurrent_writes_of_the_same_bytes_reach_memory_in_sequence_order() {
    const LEN: usize = 4096;
    let (media, pool) = sim_pool();
    let obj = pool.alloc_zeroed_bytes(LEN).unwrap();
    let read = |pool: &SimPool| -> Vec<u8> {
        let p = pool.get(obj).unwrap();
        // SAFETY: a 4 KiB block of the pool; no writer runs while it is read.
        unsafe { std::slice::from_raw_parts(p, LEN).to_vec() }
    };
    let pool = Arc::new(pool);
    let mut replayed_rounds = 0;
    for round in 0..200u64 {
        let barrier = Arc::new(std::sync::Barrier::new(3));
        let threads: Vec<_> = (0..3u64)
            .map(|t| {
                let (pool, barrier) = (pool.clone(), barrier.clone());
                std::thread::spawn(move || {
                    let v = (round * 3 + t) as u8 | 1;
                    barrier.wait();
                    pool.staged(|s| s.write(obj, &[v; LEN])).unwrap();
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let mem = read(&pool);
        assert!(
            mem.iter().all(|&b| b == mem[0]),
            "round {round}: a mix of updates in memory"
        );
        if pool.staged_pending() > 0 {
            replayed_rounds += 1;
        }
        let (_m, after_crash) = reopen(&media);
        assert!(
            read(&after_crash) == mem,
            "round {round}: a crash now would bring back other bytes than memory holds"
        );
    }
    assert!(replayed_rounds > 0, "no round left records to replay");
}
