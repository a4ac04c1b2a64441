//! Transaction cost: pmem-alloc's `Pool::transaction` against PMDK's libpmemobj transactions
//! (`pmemobj_tx_begin` + `pmemobj_tx_add_range_direct` x N + modify + `pmemobj_tx_commit` +
//! `pmemobj_tx_end`), for N = 1, 4 and 16 ranges of 64 bytes, in one process on the same
//! machine. libpmemobj is loaded with `dlopen(RTLD_LOCAL)` like the allocator peers.
//!
//! Both pools are files in `--dir` (a tmpfs by default); `benches/tx-compare.sh` sets
//! `PMEM_IS_PMEM_FORCE=1` and `PMEM_ALLOC_FORCE_PMEM=1` so both flush with CPU instructions.
//! Trials are interleaved (every variant once per round); the median ns per transaction over
//! the rounds is reported. Our fence count per transaction is measured by running the same
//! transaction on the crash simulator (`SimMedia::fences`).
//!
//! Besides the undo transactions, the same update as a staged write (`Pool::staged`: a redo
//! record, one fence, ranges flushed later in batches), once on the same object every time
//! (as the other variants) and once rotating over 64 objects, so that the batched flushes
//! cannot merge the lines of consecutive updates.

use clap::Parser;
use pmem_alloc::pool::{Pool, PoolOptions};
use pmem_alloc::pptr::PPtr;
use pmem_alloc::sim::SimMedia;
use pmem_alloc::tx::TxError;
use pmem_alloc::Persist;
use pmem_benches::alloc::dl::Lib;
use std::ffi::{c_char, c_int, c_void};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

#[derive(Parser, Debug)]
#[command(about = "Transaction cost: pmem-alloc against libpmemobj")]
struct Cli {
    /// Directory for the pool files.
    #[arg(long, default_value = "/dev/shm")]
    dir: PathBuf,
    /// Rounds (every variant measured once per round; the median is reported).
    #[arg(long, default_value_t = 15)]
    trials: usize,
    /// Transactions per measurement.
    #[arg(long, default_value_t = 20_000)]
    txs: usize,
    /// Range counts.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
    ranges: Vec<usize>,
    /// Markdown report to write.
    #[arg(long)]
    md: Option<PathBuf>,
    /// The command line shown in the report.
    #[arg(long, default_value = "benches/tx-compare.sh")]
    command: String,
    /// Versions shown in the report.
    #[arg(long, default_value = "")]
    versions: String,
}

/// Bytes per range.
const RANGE: usize = 64;
/// Distance between ranges (not adjacent, so no peer can merge them).
const STRIDE: usize = 256;
const MAX_RANGES: usize = 16;

// ------------------------------------------------------------------------------- libpmemobj

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct PmemOid {
    pool_uuid_lo: u64,
    off: u64,
}

struct Pmdk {
    pop: *mut c_void,
    close: unsafe extern "C" fn(*mut c_void),
    begin: unsafe extern "C" fn(*mut c_void, *mut c_void, ...) -> c_int,
    add: unsafe extern "C" fn(*const c_void, usize) -> c_int,
    commit: unsafe extern "C" fn(),
    end: unsafe extern "C" fn() -> c_int,
    base: *mut u8,
    path: PathBuf,
    _lib: Lib,
}

impl Pmdk {
    fn create(path: &Path) -> Result<Pmdk, String> {
        let lib = Lib::open("libpmemobj.so.1")?;
        // SAFETY: libpmemobj's documented signatures (pmemobj_tx_begin is variadic: its
        // parameter list ends with TX_PARAM_NONE = 0).
        unsafe {
            let create: unsafe extern "C" fn(
                *const c_char,
                *const c_char,
                usize,
                u32,
            ) -> *mut c_void = lib.func("pmemobj_create")?;
            let root: unsafe extern "C" fn(*mut c_void, usize) -> PmemOid =
                lib.func("pmemobj_root")?;
            let errormsg: unsafe extern "C" fn() -> *const c_char = lib.func("pmemobj_errormsg")?;
            let _ = std::fs::remove_file(path);
            let c = pmem_benches::alloc::peers::cpath(path);
            let pop = create(c.as_ptr(), c"txbench".as_ptr(), 64 << 20, 0o600);
            if pop.is_null() {
                let e = std::ffi::CStr::from_ptr(errormsg())
                    .to_string_lossy()
                    .into_owned();
                return Err(format!("pmemobj_create: {e}"));
            }
            let oid = root(pop, MAX_RANGES * STRIDE);
            if oid.off == 0 {
                return Err("pmemobj_root failed".into());
            }
            Ok(Pmdk {
                pop,
                close: lib.func("pmemobj_close")?,
                begin: lib.func("pmemobj_tx_begin")?,
                add: lib.func("pmemobj_tx_add_range_direct")?,
                commit: lib.func("pmemobj_tx_commit")?,
                end: lib.func("pmemobj_tx_end")?,
                base: pop.cast::<u8>().add(oid.off as usize),
                path: path.into(),
                _lib: lib,
            })
        }
    }

    /// One transaction: begin, add `n` ranges, modify them, commit, end.
    #[inline(never)]
    fn tx(&self, n: usize, v: u8) {
        // SAFETY: the pool is open; the ranges lie in its root object; the calls follow the
        // documented TX_BEGIN/TX_END sequence (without setjmp: errors are returned).
        unsafe {
            if (self.begin)(self.pop, std::ptr::null_mut(), 0 as c_int) != 0 {
                panic!("pmemobj_tx_begin failed");
            }
            for i in 0..n {
                let p = self.base.add(i * STRIDE);
                if (self.add)(p.cast(), RANGE) != 0 {
                    panic!("pmemobj_tx_add_range_direct failed");
                }
                std::ptr::write_bytes(p, v, RANGE);
            }
            (self.commit)();
            if (self.end)() != 0 {
                panic!("pmemobj_tx_end failed");
            }
        }
    }
}

impl Drop for Pmdk {
    fn drop(&mut self) {
        // SAFETY: the pool is open and no longer used.
        unsafe { (self.close)(self.pop) };
        let _ = std::fs::remove_file(&self.path);
    }
}

// ------------------------------------------------------------------------------- pmem-alloc

/// How our transaction saves its ranges.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Style {
    /// One `snapshot_many` call for all ranges (one fence).
    Many,
    /// One `snapshot` call per range (one fence each), as PMDK's `add_range` per range.
    PerRange,
    /// One typed `get_mut` per range (`PPtr<[u8; 64]>`; borrow registry included).
    Typed,
    /// `Pool::staged` with one `write` per range (redo record: one fence, retired in batches).
    Staged,
    /// As `Staged`, each update on the next of [`SPREAD`] objects.
    StagedSpread,
}

/// Objects the `StagedSpread` variant rotates over.
const SPREAD: usize = 64;

fn our_tx<P: Persist + 'static>(pool: &Pool<P>, base: PPtr<u8>, n: usize, style: Style, v: u8) {
    if matches!(style, Style::Staged | Style::StagedSpread) {
        let bytes = [v; RANGE];
        pool.staged(|s| {
            for i in 0..n {
                s.write(base.byte_add((i * STRIDE) as u64), &bytes)?;
            }
            Ok(())
        })
        .expect("staged write");
        return;
    }
    let res: Result<(), TxError> = pool.transaction(|tx| {
        match style {
            Style::Many => {
                let mut r = [(PPtr::null(), 0usize); MAX_RANGES];
                for (i, slot) in r.iter_mut().enumerate().take(n) {
                    *slot = (base.byte_add((i * STRIDE) as u64), RANGE);
                }
                tx.snapshot_many(&r[..n])?;
                for (p, _) in &r[..n] {
                    let a = tx.pool().get(*p).expect("in the pool");
                    // SAFETY: saved above; single-threaded benchmark.
                    unsafe { std::ptr::write_bytes(a, v, RANGE) };
                }
            }
            Style::PerRange => {
                for i in 0..n {
                    let p = base.byte_add((i * STRIDE) as u64);
                    tx.snapshot(p, RANGE)?;
                    let a = tx.pool().get(p).expect("in the pool");
                    // SAFETY: saved above; single-threaded benchmark.
                    unsafe { std::ptr::write_bytes(a, v, RANGE) };
                }
            }
            Style::Typed => {
                for i in 0..n {
                    let p = base.byte_add((i * STRIDE) as u64).cast::<[u8; RANGE]>();
                    tx.get_mut(p)?.fill(v);
                }
            }
            Style::Staged | Style::StagedSpread => unreachable!("handled above"),
        }
        Ok(())
    });
    res.expect("transaction");
}

/// Fences per transaction, measured on the crash simulator over 640 transactions (staged
/// writes retire their records in batches: their average is not a whole number).
fn our_fences(n: usize, style: Style) -> f64 {
    let media = Arc::new(SimMedia::new_strict(4 << 20));
    let pool = Pool::create_sim(media.clone()).expect("simulated pool");
    let bases: Vec<PPtr<u8>> = (0..SPREAD)
        .map(|_| {
            pool.alloc_zeroed_bytes(MAX_RANGES * STRIDE)
                .expect("target block")
        })
        .collect();
    let pick = |i: usize| {
        bases[if style == Style::StagedSpread {
            i % SPREAD
        } else {
            0
        }]
    };
    our_tx(&pool, pick(0), n, style, 1); // lanes created, log sized
    pool.retire_staged();
    let reps = 640;
    let before = media.fences();
    for i in 0..reps {
        our_tx(&pool, pick(i), n, style, i as u8);
    }
    (media.fences() - before) as f64 / reps as f64
}

fn fmt_fences(f: f64) -> String {
    if f.fract() == 0.0 {
        format!("{f:.0}")
    } else {
        format!("{f:.2}")
    }
}

/// ns of one fence that has one freshly written line to wait for (store, flush, fence), through
/// the pool's own persistence policy: the floor under every fence a transaction issues.
fn fence_ns<P: Persist + 'static>(pool: &Pool<P>, at: PPtr<u8>, reps: usize) -> f64 {
    let a = pool.get(at).expect("in the pool");
    let t0 = Instant::now();
    for i in 0..reps {
        // SAFETY: a block of this pool owned by the benchmark; single-threaded.
        unsafe {
            a.write_volatile(i as u8);
            pool.persister().persist(a, 1);
        }
    }
    t0.elapsed().as_nanos() as f64 / reps as f64
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn machine() -> String {
    let model = std::process::Command::new("lscpu")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .find(|l| l.starts_with("Model name:"))
                .map(|l| l["Model name:".len()..].trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let flush = pmem_alloc::FlushMethod::detected();
    format!("{model}, {cpus} CPUs (nproc), flush method {flush:?}")
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cli = Cli::parse();
    let styles = [
        Style::Many,
        Style::PerRange,
        Style::Typed,
        Style::Staged,
        Style::StagedSpread,
    ];
    let pmdk = Pmdk::create(&cli.dir.join("tx-compare.pmemobj"))?;
    let ours_path = cli.dir.join("tx-compare.pool");
    let _ = std::fs::remove_file(&ours_path);
    let pool = Pool::create(&ours_path, 64 << 20, &PoolOptions::default())?;
    let base = pool.alloc_zeroed_bytes(MAX_RANGES * STRIDE)?;
    let spread: Vec<PPtr<u8>> = (0..SPREAD)
        .map(|_| pool.alloc_zeroed_bytes(MAX_RANGES * STRIDE))
        .collect::<Result<_, _>>()?;
    let target = |s: Style, i: usize| {
        if s == Style::StagedSpread {
            spread[i % SPREAD]
        } else {
            base
        }
    };
    eprintln!(
        "tx_compare: our pool flushes with {:?}; PMEM_IS_PMEM_FORCE={:?}",
        pool.persister().method(),
        std::env::var("PMEM_IS_PMEM_FORCE").ok()
    );
    // per range count: [pmdk, ours x styles] samples
    let scratch = pool.alloc_zeroed_bytes(64)?;
    let mut fence_samples = Vec::new();
    let mut samples: Vec<Vec<Vec<f64>>> =
        vec![vec![Vec::new(); 1 + styles.len()]; cli.ranges.len()];
    // warm up both (lanes, logs, page faults)
    for &n in &cli.ranges {
        for i in 0..1000 {
            pmdk.tx(n, i as u8);
            for s in styles {
                our_tx(&pool, target(s, i), n, s, i as u8);
            }
        }
    }
    for round in 0..cli.trials {
        for (ri, &n) in cli.ranges.iter().enumerate() {
            // alternate which peer goes first
            let order: Vec<usize> = if round % 2 == 0 {
                (0..=styles.len()).collect()
            } else {
                (0..=styles.len()).rev().collect()
            };
            for k in order {
                let t0 = Instant::now();
                for i in 0..cli.txs {
                    if k == 0 {
                        pmdk.tx(n, i as u8);
                    } else {
                        let s = styles[k - 1];
                        our_tx(&pool, target(s, i), n, s, i as u8);
                    }
                }
                let ns = t0.elapsed().as_nanos() as f64 / cli.txs as f64;
                samples[ri][k].push(ns);
            }
        }
        fence_samples.push(fence_ns(&pool, scratch, cli.txs));
        eprintln!("tx_compare: round {}/{} done", round + 1, cli.trials);
    }
    drop(pool);
    let _ = std::fs::remove_file(&ours_path);
    let fence = median(&mut fence_samples);
    let load = std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into());

    let mut md = String::new();
    writeln!(md, "# Transactions: pmem-alloc against PMDK libpmemobj\n")?;
    writeln!(
        md,
        "Generated by `{}` on {} ({}).\n",
        cli.command,
        machine(),
        cli.versions
    )?;
    writeln!(
        md,
        "Workload: one transaction updates N ranges of {RANGE} B, {STRIDE} B apart, in one \
         object: save each range (undo log), overwrite it, commit. PMDK: \
         `pmemobj_tx_begin(pop, NULL, TX_PARAM_NONE)`, `pmemobj_tx_add_range_direct` and a \
         64-byte `memset` per range, `pmemobj_tx_commit`, `pmemobj_tx_end` (the TX_BEGIN/TX_END \
         sequence without `setjmp`). Ours, undo log: `Pool::transaction` with the ranges saved \
         by one `Tx::snapshot_many` call, by one `Tx::snapshot` per range (PMDK's pattern), or \
         by one typed `Tx::get_mut` per range. Ours, redo record: `Pool::staged` with one \
         `Staged::write` of the 64 new bytes per range (the record is made durable with one \
         fence, then the ranges are written in place; the ranges of up to 32 records are \
         flushed later in one batch with two fences), on the same object every time (\"same\") \
         or on the next of {SPREAD} objects (\"rotating\": the batch flush cannot merge the \
         lines of consecutive updates). Pool files on a tmpfs (`--dir {}`), \
         `PMEM_IS_PMEM_FORCE=1` and `PMEM_ALLOC_FORCE_PMEM=1`: both flush with CPU \
         instructions. {} rounds, every variant once per round in alternating order, {} \
         transactions per measurement; the median of the rounds is shown (ns per \
         transaction). Our fences per transaction are measured on the crash simulator \
         (`SimMedia::fences`, averaged over 640 transactions: the batched retirement makes \
         the staged writes' average fractional).\n",
        cli.dir.display(),
        cli.trials,
        cli.txs
    )?;
    writeln!(
        md,
        "| ranges | PMDK ns | undo: snapshot_many ns (fences) | undo: snapshot per range ns (fences) | undo: get_mut per range ns (fences) | redo: staged, same ns (fences) | redo: staged, rotating ns (fences) | PMDK / snapshot_many | PMDK / staged same | PMDK / staged rotating | per-round ratio, staged rotating, quartiles |"
    )?;
    writeln!(
        md,
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )?;
    let (mut met, mut missed, mut met_many) = (Vec::new(), Vec::new(), Vec::new());
    for (ri, &n) in cli.ranges.iter().enumerate() {
        // the ratio within each round (measurements adjacent in time), before sorting
        let mut per_round: Vec<f64> = samples[ri][0]
            .iter()
            .zip(&samples[ri][5])
            .map(|(p, o)| p / o)
            .collect();
        per_round.sort_by(|a, b| a.total_cmp(b));
        let q = |f: f64| per_round[((per_round.len() - 1) as f64 * f).round() as usize];
        let (q1, q3) = (q(0.25), q(0.75));
        let med: Vec<f64> = samples[ri].iter_mut().map(|v| median(v)).collect();
        let fences: Vec<String> = styles
            .iter()
            .map(|&s| fmt_fences(our_fences(n, s)))
            .collect();
        let r_many = med[0] / med[1];
        let r_same = med[0] / med[4];
        let r_rot = med[0] / med[5];
        // the verdict uses the rotating variant (no help from merged flushes)
        if r_rot >= 5.0 {
            met.push(n);
        } else {
            missed.push(n);
        }
        if r_many >= 5.0 {
            met_many.push(n);
        }
        writeln!(
            md,
            "| {n} | {:.0} | {:.0} ({}) | {:.0} ({}) | {:.0} ({}) | {:.0} ({}) | {:.0} ({}) | {r_many:.1}x | {r_same:.1}x | {r_rot:.1}x | {q1:.1}x - {q3:.1}x |",
            med[0], med[1], fences[0], med[2], fences[1], med[3], fences[2], med[4], fences[3],
            med[5], fences[4]
        )?;
    }
    writeln!(md)?;
    writeln!(
        md,
        "One fence with one freshly written line to wait for (a store, a flush and a fence \
         through our persistence policy, in a loop) costs **{fence:.0} ns** here (median of the \
         rounds); PMDK's 1-range transaction costs {:.0} ns, so a 5x margin there leaves about \
         one such fence for the whole update. Load average during the run: {load} \
         ({} CPUs; other jobs may share the machine; the interleaving spreads their \
         interference over all variants).\n",
        median(&mut samples[0][0].clone()),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    )?;
    let list = |v: &[usize]| {
        if v.is_empty() {
            "no range count".to_string()
        } else {
            let n: Vec<String> = v.iter().map(|n| n.to_string()).collect();
            format!("N = {}", n.join(", "))
        }
    };
    writeln!(
        md,
        "**Verdict (goal: at least 5x faster than PMDK), judged on the staged write rotating \
         over {SPREAD} objects:** met for {}, not met for {}. With the undo log \
         (`snapshot_many`) it is met for {}: an undo-log transaction that is durable when it \
         returns needs a fence between saving a range and modifying it, one between making the \
         new contents durable and invalidating the log, and one after the invalidation. The \
         redo record needs one fence before it returns; flushing the ranges in place and \
         raising the retirement watermark (two fences) is shared by a batch of records. The \
         last column shows how much the ratio moves between rounds on this shared machine.\n",
        list(&met),
        list(&missed),
        list(&met_many)
    )?;
    writeln!(
        md,
        "Fence counts (docs/format.md, \"Transaction lanes\" and \"Staged records\"): an undo \
         snapshot call costs one fence whatever the number of ranges it saves, the commit two \
         (the saved ranges and new blocks are flushed and fenced, then the lane generation is \
         bumped with one 8-byte store, flushed and fenced). A staged write costs one fence, \
         plus its share of a retirement (two fences per batch of up to half the lanes: 32 \
         here). Here a fence waits for write-backs to DRAM (tmpfs); on persistent memory it \
         waits for the media, and the ratios depend mostly on the fence counts and the lines \
         written back."
    )?;
    print!("{md}");
    if let Some(p) = &cli.md {
        std::fs::write(p, &md)?;
        eprintln!("tx_compare: wrote {}", p.display());
    }
    Ok(())
}
