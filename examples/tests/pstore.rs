//! The persistent store: semantics, clean restarts, crashes (pool abandoned and reopened with
//! recovery), eviction, changed settings, damaged and locked pool files.

use pmem_alloc::sim::SimMedia;
use pmem_alloc::Pool;
use pmem_examples::memcache::pstore::{trace, PmemStore, PmemStoreConfig, StoreError};
use pmem_examples::memcache::store::*;
use std::sync::Arc;

fn cfg(dir: &std::path::Path) -> PmemStoreConfig {
    let mut c = PmemStoreConfig::new(dir.join("cache.pool"));
    c.mem_limit = 16 << 20;
    c
}

fn set(s: &dyn CacheStore, k: &str, v: &[u8], flags: u32, e: Expiry) -> StoreOutcome {
    s.store(&StoreReq {
        mode: SetMode::Set,
        key: k.as_bytes(),
        value: v,
        flags,
        expiry: e,
        cas: None,
    })
}

fn get(s: &dyn CacheStore, k: &str) -> Option<(ItemMeta, Vec<u8>)> {
    let mut r = None;
    s.get(k.as_bytes(), GetOpts::default(), &mut |m, v| {
        r = Some((*m, v.to_vec()))
    });
    r
}

fn value_of(k: u64, version: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (k.wrapping_mul(31) ^ version.wrapping_mul(131) ^ i as u64) as u8)
        .collect()
}

#[test]
fn store_semantics() {
    let d = tempfile::tempdir().unwrap();
    let (s, info) = PmemStore::open(&cfg(d.path())).unwrap();
    assert!(info.created);
    let s: &dyn CacheStore = &s;
    let c1 = match set(s, "a", b"one", 5, Expiry::Never) {
        StoreOutcome::Stored(c) => c,
        o => panic!("{o:?}"),
    };
    let (m, v) = get(s, "a").unwrap();
    assert_eq!((m.flags, m.cas, v.as_slice()), (5, c1, &b"one"[..]));
    let req = |mode, v: &'static [u8], cas| StoreReq {
        mode,
        key: b"a",
        value: v,
        flags: 9,
        expiry: Expiry::Never,
        cas,
    };
    assert_eq!(
        s.store(&req(SetMode::Add, b"x", None)),
        StoreOutcome::NotStored
    );
    assert!(matches!(
        s.store(&req(SetMode::Append, b"+", None)),
        StoreOutcome::Stored(_)
    ));
    assert!(matches!(
        s.store(&req(SetMode::Prepend, b"-", None)),
        StoreOutcome::Stored(_)
    ));
    let (m, v) = get(s, "a").unwrap();
    assert_eq!(
        (m.flags, v.as_slice()),
        (5, &b"-one+"[..]),
        "append keeps flags"
    );
    assert_eq!(
        s.store(&req(SetMode::Set, b"z", Some(c1))),
        StoreOutcome::Exists
    );
    assert!(
        matches!(s.store(&req(SetMode::Set, b"z", Some(m.cas))), StoreOutcome::Stored(c) if c > m.cas)
    );
    assert_eq!(
        s.store(&StoreReq {
            key: b"nope",
            ..req(SetMode::Set, b"z", Some(1))
        }),
        StoreOutcome::NotFound
    );
    assert_eq!(
        s.store(&StoreReq {
            key: b"nope",
            ..req(SetMode::Replace, b"z", None)
        }),
        StoreOutcome::NotStored
    );
    // arithmetic
    set(s, "n", b"10", 0, Expiry::Never);
    let incr = |key: &str, incr, delta| s.arith(key.as_bytes(), &ArithReq::plain(incr, delta));
    assert!(matches!(
        incr("n", true, 5),
        ArithOutcome::Value { value: 15, .. }
    ));
    assert!(matches!(
        incr("n", false, 100),
        ArithOutcome::Value { value: 0, .. }
    ));
    set(s, "n", b"18446744073709551615", 0, Expiry::Never);
    assert!(
        matches!(incr("n", true, 2), ArithOutcome::Value { value: 1, .. }),
        "wraps"
    );
    assert_eq!(incr("a", true, 1), ArithOutcome::NonNumeric);
    set(s, "p", b"10", 0, Expiry::Never);
    incr("p", false, 1);
    assert_eq!(
        get(s, "p").unwrap().1,
        b"9 ",
        "memcached pads a shorter result"
    );
    assert!(matches!(
        incr("p", true, 5),
        ArithOutcome::Value { value: 14, .. }
    ));
    assert_eq!(incr("missing", true, 1), ArithOutcome::NotFound);
    // delete, touch, expiry
    assert_eq!(s.delete(b"a", Some(1)), DeleteOutcome::Exists);
    assert_eq!(s.delete(b"a", None), DeleteOutcome::Deleted);
    assert_eq!(s.delete(b"a", None), DeleteOutcome::NotFound);
    set(s, "e", b"v", 0, Expiry::Expired);
    assert!(
        get(s, "e").is_none(),
        "negative exptime: stored but invisible"
    );
    set(s, "t", b"v", 0, Expiry::Never);
    assert!(s.touch(b"t", Expiry::Expired));
    assert!(get(s, "t").is_none());
    assert!(!s.touch(b"t", Expiry::Never));
    // too large
    let big = vec![0u8; (1 << 20) + 1];
    assert_eq!(
        set(s, "big", &big, 0, Expiry::Never),
        StoreOutcome::TooLarge
    );
    // flush_all now
    set(s, "f1", b"v", 0, Expiry::Never);
    s.flush_all(0);
    assert!(get(s, "f1").is_none());
    set(s, "f2", b"v", 0, Expiry::Never);
    assert!(get(s, "f2").is_some(), "stored after flush_all");
}

#[test]
fn clean_restart_restores_everything() {
    let d = tempfile::tempdir().unwrap();
    let c = cfg(d.path());
    let now = unix_now();
    let mut expect = Vec::new();
    let before;
    {
        let (s, _) = PmemStore::open(&c).unwrap();
        for k in 0..2000u64 {
            let len = [1, 100, 5000, 20_000][k as usize % 4];
            let v = value_of(k, 1, len);
            let e = if k % 7 == 0 {
                Expiry::At(now + 3600)
            } else {
                Expiry::Never
            };
            let StoreOutcome::Stored(cas) = set(&s, &format!("k{k}"), &v, k as u32, e) else {
                panic!()
            };
            expect.push((format!("k{k}"), v, k as u32, cas, e));
        }
        set(&s, "gone", b"x", 0, Expiry::At(now + 1));
        s.counters().add(Ctr::CmdGet, 42);
        s.verify().unwrap();
        before = s.occupancy();
        s.shutdown();
    }
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let (s, info) = PmemStore::open(&c).unwrap();
    assert!(info.clean && !info.created, "{info:?}");
    assert_eq!(info.items, 2001, "{info:?}: a clean restart visits no item");
    assert!(get(&s, "gone").is_none(), "expired during the downtime");
    s.maintenance();
    assert_eq!(s.occupancy().curr_items, 2000, "reclaimed by the crawler");
    for (k, v, f, cas, e) in &expect {
        let (m, got) = get(&s, k).unwrap();
        assert_eq!((&got, m.flags, m.cas, m.expiry), (v, *f, *cas, *e), "{k}");
    }
    assert_eq!(
        s.counters().get(Ctr::CmdGet),
        42,
        "counters survive a clean restart"
    );
    assert!(
        s.occupancy().bytes < before.bytes,
        "the expired item's bytes are released"
    );
    let StoreOutcome::Stored(c2) = set(&s, "new", b"x", 0, Expiry::Never) else {
        panic!()
    };
    assert!(c2 > expect.last().unwrap().3 + 1, "CAS counter continues");
    s.verify().unwrap();
}

#[test]
fn crash_restart_recovers_a_consistent_cache() {
    let d = tempfile::tempdir().unwrap();
    let c = cfg(d.path());
    let mut max_cas = 0;
    {
        let (s, _) = PmemStore::open(&c).unwrap();
        for k in 0..3000u64 {
            if let StoreOutcome::Stored(cas) = set(
                &s,
                &format!("k{k}"),
                &value_of(k, 2, (k % 300) as usize),
                1,
                Expiry::Never,
            ) {
                max_cas = cas;
            }
        }
        for k in (0..3000u64).step_by(3) {
            s.delete(format!("k{k}").as_bytes(), None);
        }
        s.counters().add(Ctr::CmdSet, 7);
        s.tick(0, 10); // saves counters like the server's background tick
        s.abandon(); // kill -9
    }
    let (s, info) = PmemStore::open(&c).unwrap();
    assert!(!info.clean);
    assert_eq!(info.items, 2000);
    assert_eq!(s.verify().unwrap(), 2000);
    for k in 0..3000u64 {
        let got = get(&s, &format!("k{k}"));
        if k % 3 == 0 {
            assert!(got.is_none());
        } else {
            assert_eq!(got.unwrap().1, value_of(k, 2, (k % 300) as usize));
        }
    }
    assert_eq!(
        s.counters().get(Ctr::CmdSet),
        7,
        "counters saved by the last tick"
    );
    let StoreOutcome::Stored(c2) = set(&s, "x", b"y", 0, Expiry::Never) else {
        panic!()
    };
    assert!(c2 > max_cas);
    // nothing leaked: the pool's own accounting equals the items' plus root and table
    let in_use = s.pool().stats().in_use;
    let items = s.occupancy().bytes;
    assert!(in_use - items < (1 << 20), "in use {in_use}, items {items}");
}

#[test]
fn eviction_keeps_the_cache_within_its_limit() {
    let d = tempfile::tempdir().unwrap();
    let mut c = cfg(d.path());
    c.mem_limit = 4 << 20;
    let (s, _) = PmemStore::open(&c).unwrap();
    for k in 0..20_000u64 {
        let r = set(
            &s,
            &format!("key{k}"),
            &value_of(k, 0, 1000),
            0,
            Expiry::Never,
        );
        assert!(matches!(r, StoreOutcome::Stored(_)), "{k}: {r:?}");
        if k == 100 {
            // key0 is read now and then, so it stays recently used... only if bumped; the
            // bump interval is 60 s, so it is not: LRU order is insertion order here.
        }
    }
    let o = s.occupancy();
    assert!(o.bytes <= 4 << 20, "{o:?}");
    assert!(s.counters().get(Ctr::Evictions) > 10_000);
    assert!(get(&s, "key0").is_none(), "oldest evicted");
    assert!(get(&s, "key19999").is_some(), "newest kept");
    s.verify().unwrap();
    // large values evict many small ones
    for k in 0..20u64 {
        let r = set(
            &s,
            &format!("big{k}"),
            &value_of(k, 0, 900_000),
            0,
            Expiry::Never,
        );
        assert!(matches!(r, StoreOutcome::Stored(_)), "big{k}: {r:?}");
    }
    s.verify().unwrap();
}

#[test]
fn changed_settings_adapt() {
    let d = tempfile::tempdir().unwrap();
    let mut c = cfg(d.path());
    {
        let (s, _) = PmemStore::open(&c).unwrap();
        for k in 0..10_000u64 {
            set(
                &s,
                &format!("k{k}"),
                &value_of(k, 0, 1000),
                0,
                Expiry::Never,
            );
        }
        s.shutdown();
    }
    c.mem_limit = 4 << 20;
    c.item_size_max = 512 << 10;
    {
        let (s, info) = PmemStore::open(&c).unwrap();
        assert!(
            info.messages
                .iter()
                .any(|m| m.contains("memory limit changed")),
            "{info:?}"
        );
        assert!(
            info.messages.iter().any(|m| m.contains("item size limit")),
            "{info:?}"
        );
        assert!(s.occupancy().bytes <= 4 << 20);
        assert!(info.dropped > 5000);
        assert!(get(&s, "k9999").is_some(), "most recent kept");
        s.verify().unwrap();
        s.shutdown();
    }
    c.mem_limit = 64 << 20;
    let (s, info) = PmemStore::open(&c).unwrap();
    assert!(s.pool().size() as u64 > 64 << 20, "pool grew: {info:?}");
    let evicted_before = s.counters().get(Ctr::Evictions);
    for k in 0..30_000u64 {
        set(
            &s,
            &format!("n{k}"),
            &value_of(k, 0, 1000),
            0,
            Expiry::Never,
        );
    }
    assert_eq!(
        s.counters().get(Ctr::Evictions),
        evicted_before,
        "{:?} {:?}",
        s.occupancy(),
        s.pool().stats()
    );
    s.verify().unwrap();
}

#[test]
fn damaged_pool_is_moved_aside_and_a_locked_one_refused() {
    let d = tempfile::tempdir().unwrap();
    let c = cfg(d.path());
    {
        let (s, _) = PmemStore::open(&c).unwrap();
        set(&s, "a", b"b", 0, Expiry::Never);
        let second = PmemStore::open(&c);
        assert!(matches!(second, Err(StoreError::Locked(_))), "{second:?}");
        s.shutdown();
    }
    // damage the pool header
    let mut bytes = std::fs::read(&c.path).unwrap();
    bytes[100] ^= 0xff;
    std::fs::write(&c.path, &bytes).unwrap();
    let (s, info) = PmemStore::open(&c).unwrap();
    assert!(info.created);
    assert!(
        info.messages.iter().any(|m| m.contains("damaged")),
        "{info:?}"
    );
    assert!(get(&s, "a").is_none());
    let aside: Vec<_> = std::fs::read_dir(d.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("damaged"))
        .collect();
    assert_eq!(aside.len(), 1, "the damaged file is kept");
    drop(s);
    // a truncated (empty) file is damage too; a file of another application is refused
    std::fs::write(&c.path, b"").unwrap();
    assert!(PmemStore::open(&c).unwrap().1.created);
    let other = d.path().join("other.pool");
    Pool::create(
        &other,
        4 << 20,
        &pmem_alloc::PoolOptions {
            layout: "something-else".into(),
            ..Default::default()
        },
    )
    .unwrap();
    let r = PmemStore::open(&PmemStoreConfig::new(&other));
    assert!(matches!(r, Err(StoreError::Pool(_))), "{r:?}");
}

// ---- crash simulator sweep ----

const SIM_POOL: usize = 12 << 20;

#[derive(Clone, Debug)]
enum Op {
    Set(u64, u64, usize),
    Del(u64),
    Append(u64),
    Incr(u64),
    Touch(u64),
}

fn ops(seed: u64, n: usize) -> Vec<Op> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n as u64)
        .map(|i| {
            let k = rng.gen_range(0..12);
            match rng.gen_range(0..10) {
                0..=4 => Op::Set(
                    k,
                    i,
                    if rng.gen_bool(0.1) {
                        40_000
                    } else {
                        rng.gen_range(0..300)
                    },
                ),
                5 => Op::Del(k),
                6 => Op::Append(k),
                7 => Op::Incr(100 + k % 3),
                _ => Op::Touch(k),
            }
        })
        .collect()
}

type Model = std::collections::BTreeMap<Vec<u8>, Vec<u8>>;

fn apply(s: &dyn CacheStore, m: &mut Model, op: &Op) {
    let now = unix_now();
    match *op {
        Op::Set(k, ver, len) => {
            let v = value_of(k, ver, len);
            let key = format!("k{k}").into_bytes();
            assert!(matches!(
                set(s, &format!("k{k}"), &v, 0, Expiry::Never),
                StoreOutcome::Stored(_)
            ));
            m.insert(key, v);
        }
        Op::Del(k) => {
            let key = format!("k{k}").into_bytes();
            s.delete(&key, None);
            m.remove(&key);
        }
        Op::Append(k) => {
            let key = format!("k{k}").into_bytes();
            let r = s.store(&StoreReq {
                mode: SetMode::Append,
                key: &key,
                value: b"+tail",
                flags: 0,
                expiry: Expiry::Never,
                cas: None,
            });
            if let Some(v) = m.get_mut(&key) {
                assert!(matches!(r, StoreOutcome::Stored(_)));
                v.extend_from_slice(b"+tail");
            }
        }
        Op::Incr(k) => {
            let key = format!("n{k}").into_bytes();
            let r = s.arith(
                &key,
                &ArithReq {
                    incr: true,
                    delta: 1,
                    autovivify: Some((0, Expiry::Never)),
                    cas: None,
                    touch: None,
                },
            );
            let ArithOutcome::Value { value, .. } = r else {
                panic!("{r:?}")
            };
            m.insert(key, value.to_string().into_bytes());
        }
        Op::Touch(k) => {
            s.touch(format!("k{k}").as_bytes(), Expiry::At(now + 100_000));
        }
    }
}

fn sim_cfg(durable: bool) -> PmemStoreConfig {
    let mut c = PmemStoreConfig::new("sim");
    c.mem_limit = 6 << 20;
    c.durable = durable;
    c
}

/// Runs the ops on simulated media; returns the recording, the model state after each op
/// and the fence count at the end of each op.
fn sim_run(
    seed: u64,
    n: usize,
    durable: bool,
) -> (pmem_alloc::sim::Recording, Vec<Model>, Vec<usize>) {
    let media = Arc::new(SimMedia::new(SIM_POOL));
    let pool = Pool::create_sim(media.clone()).unwrap();
    let (s, _) = PmemStore::from_pool(pool, &sim_cfg(durable)).unwrap();
    media.reset_recording();
    let mut m = Model::new();
    let mut states = vec![m.clone()];
    let mut fences = vec![0];
    for op in ops(seed, n) {
        apply(&s, &mut m, &op);
        states.push(m.clone());
        fences.push(media.fences());
    }
    s.abandon();
    (media.recording(), states, fences)
}

fn check(
    img: &pmem_alloc::sim::CrashImage<'_>,
    states: &[Model],
    fences: &[usize],
    durable: bool,
) -> Result<(), String> {
    let media = Arc::new(SimMedia::from_image_strict(img.bytes));
    let pool = Pool::open_sim_traced(media, Some(trace)).map_err(|e| format!("open: {e}"))?;
    let (s, _) =
        PmemStore::from_pool(pool, &sim_cfg(durable)).map_err(|e| format!("store: {e}"))?;
    s.verify()?;
    // Ops whose last fence is within the crash point are complete. In durable mode each one is
    // durable; in default mode an op's final flush (its link) is durable only once a later
    // fence (of any later op) has completed: the documented bounded loss.
    let k = img.crash_point;
    let done = fences.iter().rposition(|&f| f <= k).unwrap_or(0);
    let lo = if durable {
        done
    } else {
        fences.iter().rposition(|&f| f < k).unwrap_or(0)
    };
    let hi = (done + 1).min(states.len() - 1);
    let got: Model = s.dump().into_iter().map(|(k, _, v)| (k, v)).collect();
    let keys: std::collections::BTreeSet<_> = states[lo..=hi]
        .iter()
        .flat_map(|m| m.keys().cloned())
        .chain(got.keys().cloned())
        .collect();
    for k in keys {
        let g = got.get(&k);
        if !states[lo..=hi].iter().any(|m| m.get(&k) == g) {
            return Err(format!(
                "key {} = {:?} matches no state in ops {lo}..={hi} (done {done})",
                String::from_utf8_lossy(&k),
                g.map(|v| v.len())
            ));
        }
    }
    Ok(())
}

fn sweep(seed: u64, n: usize, durable: bool, ev: pmem_alloc::sim::Evictions) -> (usize, usize) {
    let (rec, states, fences) = sim_run(seed, n, durable);
    let r = rec.sweep(ev, |img| check(img, &states, &fences, durable));
    for f in r.failures.iter().take(5) {
        eprintln!(
            "seed {seed} durable {durable} point {} variant {}: {}",
            f.crash_point, f.variant, f.message
        );
    }
    (r.checked, r.failures.len())
}

#[test]
fn crash_sweep_every_fence_durable_and_default() {
    use pmem_alloc::sim::Evictions;
    let mut total = 0;
    for (seed, durable) in [(1, true), (2, false)] {
        let (c, f) = sweep(seed, 60, durable, Evictions::None);
        assert_eq!(
            f, 0,
            "seed {seed} durable {durable}: {f} of {c} crash images failed"
        );
        total += c;
        let (c, f) = sweep(
            seed + 10,
            40,
            durable,
            Evictions::Random { seed, samples: 2 },
        );
        assert_eq!(
            f, 0,
            "evictions, seed {seed} durable {durable}: {f} of {c} failed"
        );
        total += c;
    }
    eprintln!("cache crash sweep: {total} crash images, 0 failures");
}

#[test]
fn background_crawler_reclaims_expired_items() {
    let d = tempfile::tempdir().unwrap();
    let (s, _) = PmemStore::open(&cfg(d.path())).unwrap();
    let now = unix_now();
    for k in 0..3000u64 {
        let e = if k % 2 == 0 {
            Expiry::At(now + 1)
        } else {
            Expiry::Never
        };
        set(&s, &format!("k{k}"), b"value", 0, e);
    }
    assert_eq!(s.occupancy().curr_items, 3000);
    std::thread::sleep(std::time::Duration::from_millis(2100));
    // no reads: only the crawler can find them; a few calls cover the whole table
    for _ in 0..4 {
        s.maintenance();
    }
    assert_eq!(s.occupancy().curr_items, 1500);
    assert_eq!(s.counters().get(Ctr::Reclaimed), 1500);
    assert_eq!(s.counters().get(Ctr::ExpiredUnfetched), 1500);
    s.verify().unwrap();
}

// ---- model test against the DRAM reference store ----

mod model {
    use super::*;
    use pmem_examples::memcache::memstore::MemStore;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    pub(super) enum MOp {
        Store(u8, u8, Vec<u8>, u32, bool, Option<u8>),
        Get(u8),
        Delete(u8, Option<u8>),
        Arith(u8, bool, u64, bool),
        Touch(u8, bool),
        FlushAll,
    }

    fn mode(m: u8) -> SetMode {
        [
            SetMode::Set,
            SetMode::Add,
            SetMode::Replace,
            SetMode::Append,
            SetMode::Prepend,
        ][m as usize % 5]
    }

    fn op() -> impl Strategy<Value = MOp> {
        prop_oneof![
            6 => (0u8..8, 0u8..5, prop::collection::vec(prop::sample::select(b"0123456789 x".to_vec()), 0..24), any::<u32>(), prop::bool::weighted(0.1), prop::option::weighted(0.2, 0u8..4))
                .prop_map(|(k, m, v, f, e, c)| MOp::Store(k, m, v, f, e, c)),
            4 => (0u8..8).prop_map(MOp::Get),
            1 => (0u8..8, prop::option::weighted(0.3, 0u8..4)).prop_map(|(k, c)| MOp::Delete(k, c)),
            2 => (0u8..8, any::<bool>(), prop_oneof![0u64..20, Just(u64::MAX)], prop::bool::weighted(0.2))
                .prop_map(|(k, i, d, a)| MOp::Arith(k, i, d, a)),
            1 => (0u8..8, any::<bool>()).prop_map(|(k, e)| MOp::Touch(k, e)),
            1 => Just(MOp::FlushAll),
        ]
    }

    /// CAS guesses: the current CAS of the key (index 0), or small numbers.
    fn cas_of(s: &dyn CacheStore, key: &[u8], guess: u8) -> u64 {
        if guess == 0 {
            let mut c = 0;
            s.get(
                key,
                GetOpts {
                    peek: true,
                    ..GetOpts::default()
                },
                &mut |m, _| c = m.cas,
            );
            c
        } else {
            guess as u64
        }
    }

    fn run(s: &dyn CacheStore, o: &MOp) -> String {
        match o {
            MOp::Store(k, m, v, f, e, c) => {
                let key = [b'k', b'0' + k];
                let cas = c.map(|g| cas_of(s, &key, g));
                format!(
                    "{:?}",
                    s.store(&StoreReq {
                        mode: mode(*m),
                        key: &key,
                        value: v,
                        flags: *f,
                        expiry: if *e { Expiry::Expired } else { Expiry::Never },
                        cas,
                    })
                )
            }
            MOp::Get(k) => {
                let mut r = None;
                s.get(&[b'k', b'0' + k], GetOpts::default(), &mut |m, v| {
                    r = Some((m.flags, m.cas, v.to_vec()))
                });
                format!("{r:?}")
            }
            MOp::Delete(k, c) => {
                let key = [b'k', b'0' + k];
                let cas = c.map(|g| cas_of(s, &key, g));
                format!("{:?}", s.delete(&key, cas))
            }
            MOp::Arith(k, incr, delta, viv) => format!(
                "{:?}",
                s.arith(
                    &[b'k', b'0' + k],
                    &ArithReq {
                        incr: *incr,
                        delta: *delta,
                        autovivify: viv.then_some((7, Expiry::Never)),
                        cas: None,
                        touch: None,
                    }
                )
            ),
            MOp::Touch(k, e) => format!(
                "{}",
                s.touch(
                    &[b'k', b'0' + k],
                    if *e { Expiry::Expired } else { Expiry::Never }
                )
            ),
            MOp::FlushAll => {
                s.flush_all(0);
                String::new()
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
        /// Same outcomes, values, flags and CAS as the reference store, op by op; a clean
        /// restart in the middle changes nothing.
        #[test]
        fn pstore_matches_memstore(ops in prop::collection::vec(op(), 1..120), restart_at in 0usize..120) {
            let d = tempfile::tempdir().unwrap();
            let c = cfg(d.path());
            let model = MemStore::new(c.item_size_max, c.mem_limit);
            let (mut s, _) = PmemStore::open(&c).unwrap();
            for (i, o) in ops.iter().enumerate() {
                if i == restart_at {
                    s.shutdown();
                    drop(s);
                    s = PmemStore::open(&c).unwrap().0;
                }
                let a = run(&model, o);
                let b = run(&s, o);
                prop_assert_eq!(&a, &b, "op {} {:?}", i, o);
            }
            s.verify().map_err(TestCaseError::fail)?;
        }
    }
}
