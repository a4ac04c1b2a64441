//! Criterion micro-benchmarks of pmem-alloc's persistence primitives, by size and flush
//! instruction, and of libpmem's with `--features libpmem`.
//!
//! ```text
//! cargo bench -p pmem-benches [--features libpmem] [-- persist/clwb]
//! ```
//!
//! Each iteration is one call inside a back-to-back batch timed as a whole, over the same
//! rotating offsets as the `compare` binary ([`Workload`]). `persist` iterations write their
//! range first (so the flush has dirty lines); `dirty/<size>` times those writes alone, to be
//! subtracted by eye. pmem-alloc runs on anonymous memory with an explicit `Hardware` policy
//! per instruction. libpmem runs on a `pmem_map_file` scratch file on /dev/shm with the
//! instruction it picked from the environment the benchmark was started with (set
//! `PMEM_NO_CLWB=1` and/or `PMEM_NO_CLFLUSHOPT=1` to change it); for a like-for-like
//! comparison use the `compare` binary instead.

#![allow(missing_docs)]

use criterion::{BenchmarkId, Criterion, Throughput};
use pmem_alloc::flush::{CpuFeatures, FlushMethod};
use pmem_alloc::map::Mapping;
use pmem_benches::measure::{Source, Workload};
use pmem_benches::peer::{OursPeer, PersistPeer};
use pmem_benches::timer::Timer;
use std::sync::Arc;
use std::time::Duration;

const PERSIST_SIZES: [usize; 5] = [8, 64, 256, 4096, 65536];
const COPY_SIZES: [usize; 4] = [4096, 65536, 1 << 20, 4 << 20];
const REGION: usize = 64 << 20;

fn methods() -> Vec<FlushMethod> {
    let f = CpuFeatures::get();
    [
        FlushMethod::Clwb,
        FlushMethod::ClflushOpt,
        FlushMethod::Clflush,
    ]
    .into_iter()
    .filter(|m| f.supports(*m))
    .collect()
}

/// Times `iters` calls of `w` on `peer` as one batch, continuing the rotation.
fn batch(
    peer: &dyn PersistPeer,
    w: &Workload,
    cursor: &mut usize,
    iters: u64,
    t: &Timer,
) -> Duration {
    let n = iters as usize;
    let ticks = peer.run_batch(w, *cursor, n, t);
    *cursor = (*cursor + n) % w.slots();
    t.to_duration(ticks)
}

fn bench_peer(
    c: &mut Criterion,
    label: &str,
    peer: &dyn PersistPeer,
    src: &Arc<Source>,
    t: &Timer,
) {
    let mut g = c.benchmark_group(format!("persist/{label}"));
    for size in PERSIST_SIZES {
        let w = Workload::persist(size);
        let mut cursor = 0;
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(BenchmarkId::from_parameter(size), |b| {
            b.iter_custom(|iters| batch(peer, &w, &mut cursor, iters, t))
        });
    }
    g.finish();
    for (name, make) in [("memcpy_persist", 0u8), ("memset_persist", 1u8)] {
        let mut g = c.benchmark_group(format!("{name}/{label}"));
        for size in COPY_SIZES {
            let w = if make == 0 {
                Workload::memcpy(size, src.clone())
            } else {
                Workload::memset(size)
            };
            let mut cursor = 0;
            g.throughput(Throughput::Bytes(size as u64));
            g.bench_function(BenchmarkId::from_parameter(size), |b| {
                b.iter_custom(|iters| batch(peer, &w, &mut cursor, iters, t))
            });
        }
        g.finish();
    }
}

fn benches(c: &mut Criterion) {
    let t = Timer::calibrate(Duration::from_millis(20));
    let src = Arc::new(Source::new(*COPY_SIZES.iter().max().unwrap_or(&4096)));

    // The write-only baseline of the persist loops (same for every peer).
    {
        let map = Mapping::anonymous(REGION).expect("anonymous mapping");
        let peer = OursPeer::with_mapping(map, FlushMethod::None).expect("no-flush policy");
        let mut g = c.benchmark_group("dirty");
        for size in PERSIST_SIZES {
            let w = Workload::persist(size).dirty_only();
            let mut cursor = 0;
            g.bench_function(BenchmarkId::from_parameter(size), |b| {
                b.iter_custom(|iters| batch(&peer, &w, &mut cursor, iters, &t))
            });
        }
        g.finish();
    }

    for m in methods() {
        let map = Mapping::anonymous(REGION).expect("anonymous mapping");
        let peer = OursPeer::with_mapping(map, m).expect("supported method");
        bench_peer(c, &format!("{m}/pmem-alloc"), &peer, &src, &t);
    }

    #[cfg(feature = "libpmem")]
    {
        use pmem_benches::peer::LibpmemPeer;
        use pmem_benches::peer::ScratchFile;
        let opened = ScratchFile::create(std::path::Path::new("/dev/shm"), "criterion", REGION)
            .and_then(|f| {
                let p = LibpmemPeer::open_as_started(&f.config(FlushMethod::Clwb))?;
                Ok((f, p))
            });
        match opened {
            Ok((_file, p)) => {
                let label = format!("{}/libpmem", p.flush_method());
                bench_peer(c, &label, &p, &src, &t);
            }
            Err(e) => eprintln!("libpmem benchmarks skipped: {e}"),
        }
    }
}

fn main() {
    // libpmem reads PMEM_IS_PMEM_FORCE lazily (first pmem_is_pmem call), so setting it here,
    // before any other thread exists and before any libpmem call, is enough.
    #[cfg(feature = "libpmem")]
    if std::env::var_os("PMEM_IS_PMEM_FORCE").is_none() {
        std::env::set_var("PMEM_IS_PMEM_FORCE", "1");
    }
    let mut c = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .configure_from_args();
    benches(&mut c);
    c.final_summary();
}
