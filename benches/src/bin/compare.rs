//! Side-by-side comparison of pmem-alloc's persistence primitives with every compiled-in peer
//! (libpmem with `--features libpmem`), in one process, interleaved trial by trial.
//!
//! ```text
//! cargo run --release -p pmem-benches --features libpmem --bin compare -- --flush clwb
//! ```
//!
//! Both peers map a scratch file of the same size on a tmpfs (`--dir`, default /dev/shm) and
//! are forced to use the same CPU flush instruction. Some of the peers' settings are read from
//! the environment at process start (libpmem reads `PMEM_NO_CLWB` & co. in its library
//! constructor), so the binary re-executes itself once with the environment every peer asks
//! for (see `PeerSpec::env`); `--no-reexec` turns that off and fails instead if the
//! environment is wrong.

use clap::Parser;
use pmem_alloc::flush::{CpuFeatures, FlushMethod};
use pmem_benches::measure::{interleave, undisturbed, Op, Source, Workload};
use pmem_benches::peer::{persist_peers, PersistPeer, ScratchFile};
use pmem_benches::results::{Case, Machine, PeerInfo, PeerResult, RunFile, TimerInfo, SCHEMA};
use pmem_benches::timer::Timer;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often a trial in which the thread was preempted is rerun.
const MAX_RETRIES: u32 = 5;

/// Marker set in the re-executed child so it never re-executes again.
const REEXEC_ENV: &str = "PMEM_BENCHES_REEXEC";

#[derive(Parser, Debug)]
#[command(about = "Compare pmem-alloc's persist/memcpy_persist/memset_persist with peers")]
struct Args {
    /// CPU flush instruction every peer must use (clwb, clflushopt, clflush). Default: the
    /// best this CPU has.
    #[arg(long)]
    flush: Option<FlushMethod>,
    /// Directory for the scratch file (a tmpfs, so that no device speed is measured).
    #[arg(long, default_value = "/dev/shm")]
    dir: PathBuf,
    /// Directory the JSON and CSV results are written to.
    #[arg(long, default_value = "docs/benchmarks/data")]
    out: PathBuf,
    /// Measured rounds per case (each round runs one batch of every peer).
    #[arg(long, default_value_t = 201)]
    trials: usize,
    /// Keep measuring a case for at least this many milliseconds (more rounds than
    /// `--trials` when rounds are short), so a burst of interference cannot cover a case.
    #[arg(long, default_value_t = 300)]
    min_case_ms: u64,
    /// Keep the per-trial values in the JSON file (large).
    #[arg(long)]
    raw: bool,
    /// Discarded rounds per case.
    #[arg(long, default_value_t = 5)]
    warmup: usize,
    /// Operations to measure.
    #[arg(long, value_delimiter = ',', default_value = "persist,memcpy,memset")]
    ops: Vec<String>,
    /// Sizes for persist (bytes).
    #[arg(long, value_delimiter = ',', default_value = "8,64,256,4096,65536")]
    persist_sizes: Vec<usize>,
    /// Sizes for memcpy_persist and memset_persist (bytes).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "256,1024,4096,16384,65536,262144,1048576,4194304"
    )]
    copy_sizes: Vec<usize>,
    /// Pin the process to this CPU (default: the last one; -1: do not pin).
    #[arg(long, allow_hyphen_values = true)]
    cpu: Option<i64>,
    /// Only these peers (registry names, e.g. `pmem-alloc,libpmem`); default: all compiled in.
    /// Ratios are taken for the first one.
    #[arg(long, value_delimiter = ',')]
    peers: Vec<String>,
    /// Do not re-execute with the peers' environment; fail if it is wrong.
    #[arg(long)]
    no_reexec: bool,
}

fn main() {
    let args = Args::parse();
    let flush = args
        .flush
        .unwrap_or_else(|| CpuFeatures::get().best_method());
    if !flush.is_cpu_flush() {
        fail(&format!(
            "--flush {flush}: only CPU flush instructions can be compared"
        ));
    }
    if !CpuFeatures::get().supports(flush) {
        fail(&format!("this CPU has no {flush}"));
    }
    let mut specs = persist_peers();
    if !args.peers.is_empty() {
        for want in &args.peers {
            if !specs.iter().any(|s| s.name == want) {
                let have: Vec<&str> = specs.iter().map(|s| s.name).collect();
                fail(&format!(
                    "no peer {want:?} (compiled in: {})",
                    have.join(", ")
                ));
            }
        }
        specs = args
            .peers
            .iter()
            .filter_map(|w| specs.iter().find(|s| s.name == w).copied())
            .collect();
    }
    ensure_env(&specs, flush, args.no_reexec);
    pin(args.cpu);

    let copy_max = args.copy_sizes.iter().copied().max().unwrap_or(0);
    let ops = parse_ops(&args.ops);
    let src = Arc::new(Source::new(copy_max.max(4096)));
    let mut workloads = Vec::new();
    for &op in &ops {
        let sizes = if op == Op::Persist {
            &args.persist_sizes
        } else {
            &args.copy_sizes
        };
        for &size in sizes {
            workloads.push(match op {
                Op::Persist => Workload::persist(size),
                Op::MemcpyPersist => Workload::memcpy(size, src.clone()),
                Op::MemsetPersist => Workload::memset(size),
                Op::Dirty => unreachable!("not parsed from --ops"),
            });
        }
    }
    let region_len = workloads
        .iter()
        .map(Workload::region_needed)
        .max()
        .unwrap_or(1 << 20)
        .next_multiple_of(2 << 20);

    // One file for all peers: they map the same physical pages (dropped, i.e. removed, last).
    let scratch = ScratchFile::create(&args.dir, "shared", region_len).unwrap_or_else(|e| fail(&e));
    let cfg = scratch.config(flush);
    let mut peers: Vec<Box<dyn PersistPeer>> = Vec::new();
    for s in &specs {
        match (s.open)(&cfg) {
            Ok(p) => peers.push(p),
            Err(e) => {
                drop(peers);
                drop(scratch);
                fail(&format!("{}: {e}", s.name));
            }
        }
    }
    for p in &peers {
        eprintln!("peer {:<10} {}", p.name(), p.detail());
        // Fault every page in before anything is timed.
        // SAFETY: the whole region belongs to the peer and nothing else uses it yet.
        unsafe { std::ptr::write_bytes(p.base(), 0x5a, p.region_len()) };
    }
    let timer = Timer::calibrate(Duration::from_millis(50));
    eprintln!(
        "counter {:.3} GHz, empty window {} ticks (subtracted); {} warm-up + {} trials",
        timer.ghz(),
        timer.overhead_ticks(),
        args.warmup,
        args.trials
    );

    let started_utc = pmem_benches::results::utc_now();
    let mut cases = Vec::new();
    for w in &workloads {
        // All peers work on the same lines, so a peer must not run into lines another peer
        // has just written (their cache and write-combining state would be charged to it).
        // Peer i starts its rotation i/P of the way round, and a batch covers at most 1/(2P)
        // of the rotation: the lines of a batch were last touched by another peer at least
        // one full round earlier.
        let p = peers.len();
        let n = match w.op {
            Op::Persist => w.batch_len(1 << 20, 64, 2000),
            _ => w.batch_len(16 << 20, 8, 1000),
        }
        .min((w.slots() / (2 * p)).max(1));
        let per_op = |ticks: u64| timer.to_ns(ticks as f64) / n as f64;
        let mut cursors: Vec<usize> = (0..p).map(|i| i * w.slots() / p).collect();
        let mut retried = 0u64;
        let results: Vec<PeerResult> = if w.op == Op::Persist {
            // Each trial: the write-only loop, then the write + persist loop over the same
            // slots; the persist's cost is the difference.
            let dirty = w.dirty_only();
            let values = run_rounds(p, &args, |i| {
                let c = cursors[i];
                let ((base, full), r) = undisturbed(MAX_RETRIES, || {
                    let base = per_op(peers[i].run_batch(&dirty, c, n, &timer));
                    let full = per_op(peers[i].run_batch(w, c, n, &timer));
                    (base, full)
                });
                retried += u64::from(r);
                cursors[i] += n;
                (full - base, full, base)
            });
            peers
                .iter()
                .zip(values)
                .map(|(p, v)| PeerResult::from_persist_trials(p.name(), &v))
                .collect()
        } else {
            let values = run_rounds(p, &args, |i| {
                let c = cursors[i];
                let (t, r) =
                    undisturbed(MAX_RETRIES, || per_op(peers[i].run_batch(w, c, n, &timer)));
                retried += u64::from(r);
                cursors[i] += n;
                t
            });
            peers
                .iter()
                .zip(values)
                .map(|(p, v)| PeerResult::from_trials(p.name(), v))
                .collect()
        };
        let mut case = Case {
            op: w.op,
            size: w.size,
            ops_per_trial: n,
            slots: w.slots(),
            trials: results.first().map(|r| r.trials).unwrap_or(0),
            retried_trials: retried,
            peers: results,
            ratios: Vec::new(),
        };
        case.store_ratios();
        print_case(&case);
        if !args.raw {
            case.peers.iter_mut().for_each(PeerResult::drop_raw);
        }
        cases.push(case);
    }

    let run = RunFile {
        schema: SCHEMA,
        flush: flush.to_string(),
        started_utc,
        command: command_line(),
        machine: Machine::detect(),
        timer: TimerInfo {
            ghz: timer.ghz(),
            overhead_ticks: timer.overhead_ticks(),
        },
        warmup: args.warmup,
        trials: args.trials,
        min_case_ms: args.min_case_ms,
        peers: peers
            .iter()
            .map(|p| PeerInfo {
                name: p.name().to_string(),
                detail: p.detail(),
            })
            .collect(),
        cases,
    };
    // Unmap, then remove the scratch file, before anything can exit early.
    drop(peers);
    drop(scratch);
    if let Err(e) = run.write(&args.out) {
        fail(&format!("writing results to {}: {e}", args.out.display()));
    }
    eprintln!(
        "wrote {}/{}.json and .csv",
        args.out.display(),
        RunFile::stem(&run.flush)
    );
}

/// Upper bound on the rounds of one case.
const MAX_TRIALS: usize = 20_000;

/// Warm-up rounds, then as many measured rounds as `--trials` and `--min-case-ms` ask for
/// (estimated from the duration of the warm-up rounds).
fn run_rounds<T>(p: usize, args: &Args, mut trial: impl FnMut(usize) -> T) -> Vec<Vec<T>> {
    let warmup = args.warmup.max(1);
    let t0 = Instant::now();
    let _ = interleave(p, warmup, 0, &mut trial);
    let per_round = t0.elapsed().as_secs_f64() / warmup as f64;
    let want = (args.min_case_ms as f64 / 1000.0 / per_round.max(1e-9)).ceil() as usize;
    interleave(p, 0, args.trials.max(want).min(MAX_TRIALS), &mut trial)
}

fn parse_ops(names: &[String]) -> Vec<Op> {
    names
        .iter()
        .map(|n| match n.trim() {
            "persist" => Op::Persist,
            "memcpy" | "memcpy_persist" => Op::MemcpyPersist,
            "memset" | "memset_persist" => Op::MemsetPersist,
            other => fail(&format!("unknown op {other:?} (persist, memcpy, memset)")),
        })
        .collect()
}

fn print_case(c: &Case) {
    let mut line = format!("{:<15} {:>8} B {:>5}x", c.op.as_str(), c.size, c.trials);
    for p in &c.peers {
        if c.op.is_bandwidth() {
            line += &format!(
                "  {} {:>9.1} ns {:>6.2} GB/s",
                p.peer,
                p.median_ns,
                c.gbps(p.median_ns)
            );
        } else {
            line += &format!(
                "  {} {:>9.1} ns (loop {:.1} - writes {:.1})",
                p.peer,
                p.median_ns,
                p.loop_median_ns.unwrap_or(f64::NAN),
                p.baseline_median_ns.unwrap_or(f64::NAN)
            );
        }
    }
    let first = &c.peers[0].peer;
    for p in &c.peers[1..] {
        if let Some(r) = c.time_ratio(first, &p.peer) {
            line += &format!("  time {first}/{} {:.3}", p.peer, r.median);
        }
    }
    eprintln!("{line}");
}

/// Re-executes the process with the environment every peer needs for `flush`, unless it is
/// already there.
fn ensure_env(specs: &[pmem_benches::peer::PeerSpec], flush: FlushMethod, no_reexec: bool) {
    let wanted: Vec<_> = specs.iter().flat_map(|s| (s.env)(flush)).collect();
    let ok = wanted
        .iter()
        .all(|(k, v)| std::env::var(k).ok().as_deref() == *v);
    if ok {
        return;
    }
    if no_reexec || std::env::var_os(REEXEC_ENV).is_some() {
        let want: Vec<String> = wanted
            .iter()
            .map(|(k, v)| format!("{k}={}", v.unwrap_or("<unset>")))
            .collect();
        fail(&format!("the process must start with {}", want.join(" ")));
    }
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().unwrap_or_else(|e| fail(&format!("current_exe: {e}")));
    let mut cmd = std::process::Command::new(exe);
    cmd.args(std::env::args_os().skip(1)).env(REEXEC_ENV, "1");
    for (k, v) in &wanted {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    let e = cmd.exec();
    fail(&format!("re-exec with the peers' environment failed: {e}"));
}

fn pin(cpu: Option<i64>) {
    let n = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let cpu = match cpu {
        Some(c) if c < 0 => return,
        Some(c) => c as usize,
        None => n - 1,
    };
    // SAFETY: `set` is a plain local bitmask initialised by CPU_ZERO before use;
    // sched_setaffinity only reads it.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_ZERO(&mut set);
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc != 0 {
        eprintln!(
            "warning: could not pin to CPU {cpu}: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// `compare <args>`, without the directory of the executable.
fn command_line() -> String {
    let mut v = vec!["compare".to_string()];
    v.extend(std::env::args().skip(1));
    v.join(" ")
}

fn fail(msg: &str) -> ! {
    eprintln!("compare: {msg}");
    std::process::exit(2)
}
