//! Criterion micro-benchmarks of the persistent collections: one transaction per iteration on a
//! pool file in the temporary directory.
//!
//! ```text
//! PMEM_ALLOC_FLUSH=none cargo bench -p pmem-benches --bench collections [-- collections/hashmap]
//! ```
//!
//! A pool file outside a DAX file system is persisted with `msync`, which then dominates every
//! transaction that writes (milliseconds). `PMEM_ALLOC_FLUSH=none` times the software path
//! alone (undo entries written, nothing flushed, no fence); `clwb` or `clflushopt` add the
//! flush instructions and fences of persistent memory, minus its media latency.

#![allow(missing_docs)]

use criterion::Criterion;
use pmem_alloc::collections::{PBytes, PFree, PHashMap, POrdMap, PVec};
use pmem_alloc::pptr::PSafe;
use pmem_alloc::{Pool, PoolOptions, TxError};
use std::path::PathBuf;

#[repr(C)]
struct Root {
    vec: PVec<u64>,
    map: PHashMap<PBytes, PBytes>,
    omap: POrdMap<PBytes, u64>,
    bytes: PBytes,
}
// SAFETY: repr(C), PSafe fields.
unsafe impl PSafe for Root {}

const KEYS: u64 = 10_000;

fn key(i: u64) -> [u8; 16] {
    let mut k = *b"key:000000000000";
    k[4..].copy_from_slice(format!("{:012}", i % KEYS).as_bytes());
    k
}

fn bench(c: &mut Criterion) {
    let path: PathBuf = std::env::temp_dir().join(format!(
        "pmem-bench-collections-{}.pool",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&path);
    let pool = Pool::create(&path, 256 << 20, &PoolOptions::default()).expect("pool");
    let root = pool.root::<Root>().expect("root");
    // a map and an ordered map of KEYS entries
    for chunk in 0..KEYS / 500 {
        pool.transaction(|tx| {
            let r = tx.get_mut(root)?;
            for i in chunk * 500..(chunk + 1) * 500 {
                let v = PBytes::new(tx, &[b'v'; 32])?;
                r.map.insert(tx, &key(i), v)?;
                r.omap.insert(tx, &key(i), i)?;
            }
            Ok::<_, TxError>(())
        })
        .expect("fill");
    }
    let mut g = c.benchmark_group("collections");
    let mut n = 0u64;
    g.bench_function("pvec/push_u64", |b| {
        b.iter(|| {
            n += 1;
            pool.transaction(|tx| {
                let v = &mut tx.get_mut(root)?.vec;
                if v.len() >= 4096 {
                    v.clear(tx)?;
                }
                v.push(tx, n)
            })
            .expect("push")
        })
    });
    g.bench_function("hashmap/get_16B_key", |b| {
        b.iter(|| {
            n += 7;
            pool.transaction(|tx| {
                let m = &tx.get(root)?.map;
                m.get(tx, &key(n))?.map(|v| v.len(tx)).transpose()
            })
            .expect("get")
        })
    });
    g.bench_function("hashmap/overwrite_16B_key_32B_value", |b| {
        b.iter(|| {
            n += 7;
            pool.transaction(|tx| {
                let m = &mut tx.get_mut(root)?.map;
                let v = PBytes::new(tx, &[b'w'; 32])?;
                if let Some(old) = m.insert(tx, &key(n), v)? {
                    old.free_in(tx)?;
                }
                Ok::<_, TxError>(())
            })
            .expect("insert")
        })
    });
    g.bench_function("ordmap/remove_insert_16B_key", |b| {
        b.iter(|| {
            n += 7;
            pool.transaction(|tx| {
                let m = &mut tx.get_mut(root)?.omap;
                let k = key(n);
                m.remove(tx, &k)?;
                m.insert(tx, &k, n)?;
                Ok::<_, TxError>(())
            })
            .expect("ordmap")
        })
    });
    g.bench_function("ordmap/range_by_rank_10", |b| {
        b.iter(|| {
            n += 7;
            pool.transaction(|tx| {
                let m = &tx.get(root)?.omap;
                let s = (n % KEYS) as usize;
                Ok::<_, TxError>(m.range_by_rank(tx, s..s + 10)?.count())
            })
            .expect("range")
        })
    });
    g.bench_function("pbytes/append_16B", |b| {
        b.iter(|| {
            pool.transaction(|tx| {
                let s = &mut tx.get_mut(root)?.bytes;
                if s.len(tx)? >= 1 << 16 {
                    s.truncate(tx, 0)?;
                }
                s.append(tx, &[b'a'; 16])
            })
            .expect("append")
        })
    });
    g.finish();
    drop(pool);
    let _ = std::fs::remove_file(&path);
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c);
    c.final_summary();
}
