//! Proof that the crash simulator catches broken durable-write sequences.
//!
//! The structure under test is a minimal persistent append-only log: a header line holding
//! `count`, and 48-byte records (deliberately not line aligned) after it. Its invariant after any
//! crash: every record below `count` is complete and checksummed. Four writers:
//!
//! | variant | sequence per append | expected failing crash points (N appends) |
//! |---|---|---|
//! | correct | write rec, persist rec; write count, persist count | none |
//! | missing flush | write rec; write count, persist count | 1..=N (strict) |
//! | flush without fence | write rec, flush rec; write count, persist count | 0..N with evictions, none strict |
//! | publish before data | write count, persist count; write rec, persist rec | 1, 3, .., 2N-1 (strict) |

use pmem_alloc::persist::Persist;
use pmem_alloc::sim::{Evictions, Recording, SimMedia};

const N: u64 = 8;
const REC: usize = 48;
const RECS_AT: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Variant {
    Correct,
    MissingFlush,
    FlushWithoutFence,
    PublishBeforeData,
}

fn record(i: u64) -> [u8; REC] {
    let mut r = [0u8; REC];
    r[..8].copy_from_slice(&i.to_le_bytes());
    for (k, b) in r[16..].iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(31).wrapping_add(k as u8) ^ 0x5A;
    }
    let sum = checksum(i, &r[16..]);
    r[8..16].copy_from_slice(&sum.to_le_bytes());
    r
}

fn checksum(seq: u64, payload: &[u8]) -> u64 {
    // FNV-1a over the sequence number and payload, salted so that all-zero records are invalid.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ 0xDEAD_BEEF;
    for b in seq.to_le_bytes().iter().chain(payload) {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// Appends record `i` to the log at `base`.
///
/// # Safety
/// `base` must be the base of a region of at least 4096 bytes that `p` persists.
unsafe fn append<P: Persist>(p: &P, base: *mut u8, i: u64, v: Variant) {
    let rec = record(i);
    // SAFETY: offsets stay inside the 4096-byte region (N records of 48 bytes after line 0).
    unsafe {
        let dst = base.add(RECS_AT + i as usize * REC);
        let count = base.cast::<u64>();
        match v {
            Variant::Correct => {
                std::ptr::copy_nonoverlapping(rec.as_ptr(), dst, REC);
                p.persist(dst, REC);
                count.write(i + 1);
                p.persist(count.cast(), 8);
            }
            Variant::MissingFlush => {
                std::ptr::copy_nonoverlapping(rec.as_ptr(), dst, REC);
                count.write(i + 1);
                p.persist(count.cast(), 8);
            }
            Variant::FlushWithoutFence => {
                std::ptr::copy_nonoverlapping(rec.as_ptr(), dst, REC);
                p.flush(dst, REC);
                count.write(i + 1);
                p.persist(count.cast(), 8);
            }
            Variant::PublishBeforeData => {
                count.write(i + 1);
                p.persist(count.cast(), 8);
                std::ptr::copy_nonoverlapping(rec.as_ptr(), dst, REC);
                p.persist(dst, REC);
            }
        }
    }
}

/// The log's recovery check on a media image.
fn check(img: &[u8]) -> Result<u64, String> {
    let count = u64::from_le_bytes(img[..8].try_into().unwrap());
    if count > N {
        return Err(format!("count {count} beyond the {N} appends made"));
    }
    for i in 0..count {
        let off = RECS_AT + i as usize * REC;
        let r = &img[off..off + REC];
        let seq = u64::from_le_bytes(r[..8].try_into().unwrap());
        let sum = u64::from_le_bytes(r[8..16].try_into().unwrap());
        if seq != i || sum != checksum(seq, &r[16..]) {
            return Err(format!("record {i} of {count} is torn or missing"));
        }
    }
    Ok(count)
}

fn run(v: Variant) -> Recording {
    let media = SimMedia::new(4096);
    for i in 0..N {
        // SAFETY: the region is 4096 bytes and persisted by `media`.
        unsafe { append(&media, media.base(), i, v) };
    }
    assert_eq!(media.foreign_flushes(), 0);
    media.recording()
}

const EXHAUSTIVE: Evictions = Evictions::Exhaustive {
    max_candidates: 12,
    fallback_samples: 64,
    seed: 7,
};

#[test]
fn correct_log_survives_every_crash_point_with_and_without_evictions() {
    let rec = run(Variant::Correct);
    assert_eq!(rec.fences(), 2 * N as usize);
    let strict = rec.sweep(Evictions::None, |img| check(img.bytes).map(drop));
    assert_eq!(strict.crash_points, 2 * N as usize + 1);
    assert!(strict.failures.is_empty(), "{:?}", strict.failures);
    let ev = rec.sweep(EXHAUSTIVE, |img| check(img.bytes).map(drop));
    assert!(
        ev.checked > strict.checked,
        "eviction variants were generated"
    );
    assert!(ev.failures.is_empty(), "{:?}", ev.failures);
    // Completeness: at the end every append is durable.
    assert_eq!(check(&rec.image_at(rec.fences())).unwrap(), N);
}

#[test]
fn missing_flush_is_caught_at_every_point_after_the_first_publish() {
    let rec = run(Variant::MissingFlush);
    let r = rec.sweep(Evictions::None, |img| check(img.bytes).map(drop));
    assert_eq!(r.failing_points(), (1..=N as usize).collect::<Vec<_>>());
}

#[test]
fn flush_without_fence_needs_evictions_to_be_caught() {
    let rec = run(Variant::FlushWithoutFence);
    // Without evictions the record and the count reach the media at the same fence, so a
    // strict sweep cannot see the missing ordering...
    let strict = rec.sweep(Evictions::None, |img| check(img.bytes).map(drop));
    assert!(strict.failures.is_empty());
    // ...but at the instant before each fence, the count line may be written back alone.
    let ev = rec.sweep(EXHAUSTIVE, |img| check(img.bytes).map(drop));
    assert_eq!(ev.failing_points(), (0..N as usize).collect::<Vec<_>>());
}

#[test]
fn publish_before_data_is_caught_between_the_two_fences_of_each_append() {
    let rec = run(Variant::PublishBeforeData);
    let r = rec.sweep(Evictions::None, |img| check(img.bytes).map(drop));
    let expected: Vec<usize> = (0..N as usize).map(|i| 2 * i + 1).collect();
    assert_eq!(r.failing_points(), expected);
}

#[test]
fn random_evictions_catch_the_unfenced_flush_too() {
    let rec = run(Variant::FlushWithoutFence);
    let r = rec.sweep(
        Evictions::Random {
            seed: 42,
            samples: 32,
        },
        |img| check(img.bytes).map(drop),
    );
    assert!(!r.failures.is_empty());
    assert!(
        r.failures.iter().all(|f| f.variant > 0),
        "only eviction variants fail"
    );
}

#[test]
fn crash_images_reopen_and_the_log_continues() {
    // Reopen every crash image of the correct writer as new simulated media, recover (count
    // stays), append the rest, and check the result: the recovery path itself runs under the
    // simulator.
    let rec = run(Variant::Correct);
    let r = rec.sweep(Evictions::None, |img| {
        let have = check(img.bytes)?;
        let media = SimMedia::from_image(img.bytes);
        for i in have..N {
            // SAFETY: as in `run`.
            unsafe { append(&media, media.base(), i, Variant::Correct) };
        }
        let after = check(&media.durable_image())?;
        if after != N {
            return Err(format!(
                "after reopen and {} appends count is {after}",
                N - have
            ));
        }
        Ok(())
    });
    assert!(r.failures.is_empty(), "{:?}", r.failures);
    assert_eq!(r.checked, rec.crash_points());
}
