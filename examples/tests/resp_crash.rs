//! Crash sweep of the persistent RESP keyspace: a random sequence of commands over keys of
//! every kind runs on simulated persistent memory that records every fence; then, for every
//! fence (and for random subsets of the unflushed lines evicted early), the pool is reopened
//! from the crash image and the keyspace must equal the DRAM model's state before or after the
//! command in flight, exactly: commands are all or nothing. The pool's allocator check must
//! pass on every image.

use pmem_alloc::sim::{CrashImage, Evictions, SimMedia};
use pmem_alloc::Pool;
use pmem_examples::resp::db::{Db, Expiry, KeyType, SetCond};
use pmem_examples::resp::memdb::MemDb;
use pmem_examples::resp::pdb::PmemDb;
use rand::{Rng, SeedableRng};
use std::path::Path;
use std::sync::Arc;

const SIM_POOL: usize = 4 << 20;
const NOW: u64 = 1_000_000;
const KEYS: [&[u8]; 6] = [b"s1", b"s2", b"l1", b"h1", b"z1", b"x1"];

#[derive(Clone, Debug)]
enum Op {
    Set(usize, Vec<u8>, Option<u64>),
    MSet(Vec<(usize, Vec<u8>)>),
    Incr(usize, i64),
    Del(usize),
    Expire(usize, Option<u64>),
    Push(usize, Vec<Vec<u8>>, bool),
    Pop(usize, usize, bool),
    HSet(usize, Vec<(Vec<u8>, Vec<u8>)>),
    HDel(usize, Vec<Vec<u8>>),
    SAdd(usize, Vec<Vec<u8>>),
    SRem(usize, Vec<Vec<u8>>),
    ZAdd(usize, Vec<(f64, Vec<u8>)>),
    ZPopMin(usize, usize),
    Sweep,
    FlushAll,
}

fn word(rng: &mut rand::rngs::StdRng) -> Vec<u8> {
    let n = rng.gen_range(0..5);
    let mut v = vec![b'a' + rng.gen_range(0..4u8)];
    v.extend(std::iter::repeat_n(b'x', n * rng.gen_range(1..40)));
    v
}

fn ops(seed: u64, n: usize) -> Vec<Op> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut out = Vec::new();
    for _ in 0..n {
        let k = rng.gen_range(0..KEYS.len());
        let ws = |rng: &mut rand::rngs::StdRng| {
            (0..rng.gen_range(1..4))
                .map(|_| word(rng))
                .collect::<Vec<_>>()
        };
        let op = match rng.gen_range(0..15) {
            0 => Op::Set(
                k,
                word(&mut rng),
                match rng.gen_range(0..3) {
                    0 => Some(NOW - 1),
                    1 => Some(NOW + 1000),
                    _ => None,
                },
            ),
            1 => Op::MSet(
                (0..rng.gen_range(1..4))
                    .map(|_| (rng.gen_range(0..KEYS.len()), word(&mut rng)))
                    .collect(),
            ),
            2 => Op::Incr(k, rng.gen_range(-5..5)),
            3 => Op::Del(k),
            4 => Op::Expire(k, [None, Some(NOW - 5), Some(NOW + 5)][rng.gen_range(0..3)]),
            5 | 6 => Op::Push(k, ws(&mut rng), rng.gen_bool(0.5)),
            7 => Op::Pop(k, rng.gen_range(1..3), rng.gen_bool(0.5)),
            8 => Op::HSet(
                k,
                (0..rng.gen_range(1..3))
                    .map(|_| (word(&mut rng), word(&mut rng)))
                    .collect(),
            ),
            9 => Op::HDel(k, ws(&mut rng)),
            10 => Op::SAdd(k, ws(&mut rng)),
            11 => Op::SRem(k, ws(&mut rng)),
            12 => Op::ZAdd(
                k,
                (0..rng.gen_range(1..4))
                    .map(|_| (f64::from(rng.gen_range(-3..4i32)) / 2.0, word(&mut rng)))
                    .collect(),
            ),
            13 => Op::ZPopMin(k, rng.gen_range(1..3)),
            _ => {
                if rng.gen_bool(0.1) {
                    Op::FlushAll
                } else {
                    Op::Sweep
                }
            }
        };
        out.push(op);
    }
    out
}

fn refs(v: &[Vec<u8>]) -> Vec<&[u8]> {
    v.iter().map(Vec::as_slice).collect()
}

/// Applies `op`; the outcome (or error text) is returned so both backends can be compared.
fn apply(db: &dyn Db, op: &Op) -> String {
    let r: Result<String, _> = match op {
        Op::Set(k, v, at) => db
            .set(
                KEYS[*k],
                v,
                SetCond::Always,
                at.map_or(Expiry::Clear, Expiry::At),
                NOW,
            )
            .map(|b| b.to_string()),
        Op::MSet(p) => {
            let pairs: Vec<(&[u8], &[u8])> =
                p.iter().map(|(k, v)| (KEYS[*k], v.as_slice())).collect();
            db.mset(&pairs, NOW).map(|_| "ok".into())
        }
        Op::Incr(k, d) => db.incr_by(KEYS[*k], *d, NOW).map(|n| n.to_string()),
        Op::Del(k) => db.del(KEYS[*k], NOW).map(|b| b.to_string()),
        Op::Expire(k, at) => db.set_expiry(KEYS[*k], *at, NOW).map(|b| b.to_string()),
        Op::Push(k, v, f) => db.push(KEYS[*k], &refs(v), *f, NOW).map(|n| n.to_string()),
        Op::Pop(k, n, f) => db.pop(KEYS[*k], *f, *n, NOW).map(|v| format!("{v:?}")),
        Op::HSet(k, p) => {
            let pairs: Vec<(&[u8], &[u8])> = p
                .iter()
                .map(|(a, b)| (a.as_slice(), b.as_slice()))
                .collect();
            db.hset(KEYS[*k], &pairs, NOW).map(|n| n.to_string())
        }
        Op::HDel(k, f) => db.hdel(KEYS[*k], &refs(f), NOW).map(|n| n.to_string()),
        Op::SAdd(k, m) => db.sadd(KEYS[*k], &refs(m), NOW).map(|n| n.to_string()),
        Op::SRem(k, m) => db.srem(KEYS[*k], &refs(m), NOW).map(|n| n.to_string()),
        Op::ZAdd(k, p) => {
            let pairs: Vec<(f64, &[u8])> = p.iter().map(|(s, m)| (*s, m.as_slice())).collect();
            db.zadd(KEYS[*k], &pairs, NOW).map(|n| n.to_string())
        }
        Op::ZPopMin(k, n) => db.zpopmin(KEYS[*k], *n, NOW).map(|v| format!("{v:?}")),
        Op::Sweep => Ok(db.expire_sweep(NOW, 100).to_string()),
        Op::FlushAll => db.flushall().map(|_| "ok".into()),
    };
    r.unwrap_or_else(|e| format!("error: {e}"))
}

/// The whole visible keyspace, canonically ordered.
fn dump(db: &dyn Db) -> Vec<String> {
    let mut out = vec![format!("dbsize {}", db.dbsize(NOW))];
    for k in KEYS {
        let name = String::from_utf8_lossy(k);
        let Some(t) = db.key_type(k, NOW) else {
            out.push(format!("{name}: none"));
            continue;
        };
        let v = match t {
            KeyType::String => format!("{:?}", db.get(k, NOW)),
            KeyType::List => format!("{:?}", db.lrange(k, 0, -1, NOW)),
            KeyType::Hash => {
                let mut h = db.hgetall(k, NOW).unwrap();
                h.sort();
                format!("{h:?}")
            }
            KeyType::Set => {
                let mut s = db.smembers(k, NOW).unwrap();
                s.sort();
                format!("{s:?}")
            }
            KeyType::ZSet => format!("{:?}", db.zrange(k, 0, -1, NOW)),
        };
        out.push(format!("{name}: {t:?} {v} expiry {:?}", db.expiry(k, NOW)));
    }
    out
}

struct Run {
    rec: pmem_alloc::sim::Recording,
    states: Vec<Vec<String>>,
    fences: Vec<usize>,
}

fn run(seed: u64, n: usize) -> Run {
    let media = Arc::new(SimMedia::new(SIM_POOL));
    let pool = Pool::create_sim(media.clone()).unwrap();
    let db = PmemDb::from_pool(pool, Path::new("sim")).unwrap();
    let model = MemDb::new();
    media.reset_recording();
    let mut states = vec![dump(&model)];
    let mut fences = vec![0];
    for (i, op) in ops(seed, n).iter().enumerate() {
        let a = apply(&db, op);
        let b = apply(&model, op);
        if std::env::var("RESP_CRASH_TRACE").is_ok() {
            eprintln!(
                "op {i} {op:?} -> {a} / {b}\n  pmem  {:?}\n  model {:?}",
                dump(&db),
                dump(&model)
            );
        }
        assert_eq!(a, b, "seed {seed} op {i} {op:?}: outcomes differ");
        states.push(dump(&model));
        fences.push(media.fences());
    }
    assert_eq!(dump(&db), *states.last().unwrap(), "final states differ");
    db.check().unwrap();
    Run {
        rec: media.recording(),
        states,
        fences,
    }
}

fn check(img: &CrashImage<'_>, r: &Run) -> Result<(), String> {
    let media = Arc::new(SimMedia::from_image_strict(img.bytes));
    let pool = Pool::open_sim(media).map_err(|e| format!("open: {e}"))?;
    let db = PmemDb::from_pool(pool, Path::new("sim")).map_err(|e| format!("keyspace: {e}"))?;
    db.check().map_err(|e| format!("pool check: {e}"))?;
    let got = dump(&db);
    // the commands whose last fence is within the crash point are committed; the next one
    // may or may not be
    let done = r
        .fences
        .iter()
        .rposition(|&f| f <= img.crash_point)
        .unwrap_or(0);
    let hi = (done + 1).min(r.states.len() - 1);
    if got == r.states[done] || got == r.states[hi] {
        Ok(())
    } else {
        Err(format!(
            "state matches neither command {done} nor {hi}: got {got:?}, want {:?}",
            r.states[done]
        ))
    }
}

fn sweep(seed: u64, n: usize, ev: Evictions) -> (usize, usize) {
    let r = run(seed, n);
    let rep = r.rec.sweep(ev, |img| check(img, &r));
    for f in rep.failures.iter().take(3) {
        eprintln!(
            "seed {seed} point {} variant {}: {}",
            f.crash_point, f.variant, f.message
        );
    }
    (rep.checked, rep.failures.len())
}

#[test]
fn every_crash_point_is_before_or_after_each_command() {
    let mut total = 0;
    for seed in [1, 2] {
        let (c, f) = sweep(seed, 50, Evictions::None);
        assert_eq!(f, 0, "seed {seed}: {f} of {c} crash images failed");
        total += c;
    }
    let (c, f) = sweep(
        7,
        30,
        Evictions::Random {
            seed: 7,
            samples: 2,
        },
    );
    assert_eq!(f, 0, "evictions: {f} of {c} crash images failed");
    total += c;
    eprintln!("keyspace crash sweep: {total} crash images, 0 failures");
}

/// The larger sweep of the heavy phase (`--ignored`).
#[test]
#[ignore]
fn heavy_crash_sweep() {
    let mut total = 0;
    for seed in 10..16 {
        let (c, f) = sweep(seed, 120, Evictions::None);
        assert_eq!(f, 0, "seed {seed}: {f} of {c} crash images failed");
        total += c;
        let (c, f) = sweep(seed + 100, 60, Evictions::Random { seed, samples: 3 });
        assert_eq!(f, 0, "evictions seed {seed}: {f} of {c} failed");
        total += c;
    }
    eprintln!("keyspace heavy crash sweep: {total} crash images, 0 failures");
}
