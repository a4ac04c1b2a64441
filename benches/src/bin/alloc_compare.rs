//! Allocator comparison: pmem-alloc's volatile heap and persistent pool against glibc,
//! jemalloc, mimalloc, memkind (PMEM kind) and libpmemobj, side by side in one process.
//!
//! `alloc_compare run` measures throughput, space (in child processes) and recovery (with
//! killed child processes) and writes the JSON results, the Markdown report and its SVG plot.
//! `benches/alloc-compare.sh` runs it with the defaults used for the committed report.

use clap::{Parser, Subcommand};
use pmem_benches::alloc::peers::{self, PeerConfig};
use pmem_benches::alloc::recovery;
use pmem_benches::alloc::report::{self, Meta, Results};
use pmem_benches::alloc::space::{self, SpaceResult};
use pmem_benches::alloc::workloads::{self, Workers, Workload};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    about = "Allocator comparison (pmem-alloc against glibc, jemalloc, mimalloc, memkind, libpmemobj)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Measure and write the results and the report.
    Run(Box<RunArgs>),
    /// (internal) One space measurement; prints a JSON line.
    ChildSpace {
        #[arg(long)]
        peer: String,
        #[arg(long)]
        test: String,
        #[arg(long, default_value_t = 64)]
        size: usize,
        #[arg(long, default_value_t = 0)]
        n: usize,
        #[arg(long, default_value_t = 0)]
        live: u64,
        #[arg(long)]
        pool_size: u64,
        #[arg(long)]
        dir: PathBuf,
    },
    /// (internal) Fill a pool and wait to be killed.
    ChildFill {
        #[arg(long)]
        which: String,
        #[arg(long)]
        path: PathBuf,
        #[arg(long)]
        pool_size: u64,
        #[arg(long)]
        objects: u64,
    },
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Directory for heap and pool files.
    #[arg(long, default_value = "/dev/shm")]
    dir: PathBuf,
    /// Peers (comma-separated; default all).
    #[arg(long, value_delimiter = ',')]
    peers: Vec<String>,
    /// Workloads (comma-separated; default all).
    #[arg(long, value_delimiter = ',')]
    workloads: Vec<String>,
    /// Thread counts.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    threads: Vec<usize>,
    /// Trials per case (median reported).
    #[arg(long, default_value_t = 11)]
    trials: usize,
    /// Target duration of one run, ms.
    #[arg(long, default_value_t = 30)]
    run_ms: u64,
    /// Pool size of persistent throughput peers (and initial volatile heap file), MiB.
    #[arg(long, default_value_t = 512)]
    pool_mib: u64,
    /// Pool size of the space tests, MiB.
    #[arg(long, default_value_t = 64)]
    space_pool_mib: u64,
    /// Live bytes of the fragmentation test, MiB.
    #[arg(long, default_value_t = 128)]
    frag_live_mib: u64,
    /// Objects of the recovery test.
    #[arg(long, default_value_t = 1_000_000)]
    recovery_objects: u64,
    /// Pool of the recovery test, MiB (scaled down if the directory lacks room).
    #[arg(long, default_value_t = 1024)]
    recovery_pool_mib: u64,
    /// Recovery trials per peer.
    #[arg(long, default_value_t = 3)]
    recovery_trials: usize,
    /// Skip the throughput workloads.
    #[arg(long)]
    no_throughput: bool,
    /// Skip the space tests.
    #[arg(long)]
    no_space: bool,
    /// Skip the recovery test.
    #[arg(long)]
    no_recovery: bool,
    /// Write the report from this results file instead of measuring.
    #[arg(long)]
    from_json: Option<PathBuf>,
    /// Results file to write.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Markdown report to write.
    #[arg(long)]
    md: Option<PathBuf>,
    /// SVG plot to write (linked from the report by file name).
    #[arg(long)]
    svg: Option<PathBuf>,
    /// Results of the diagnostic run (volatile heap with and without hole punching) to add to
    /// the report.
    #[arg(long)]
    diag_json: Option<PathBuf>,
    /// Markdown notes appended to the report.
    #[arg(long)]
    notes: Option<PathBuf>,
    /// The command line recorded in the report.
    #[arg(long, default_value = "")]
    command: String,
    /// The date recorded in the report.
    #[arg(long, default_value = "")]
    date: String,
    /// Peer library versions recorded in the report (comma-separated).
    #[arg(long, value_delimiter = ',')]
    versions: Vec<String>,
}

/// glibc reserves little static TLS for libraries loaded later, and jemalloc uses the
/// initial-exec TLS model: without more, `dlopen("libjemalloc.so.2")` fails with "cannot
/// allocate memory in static TLS block". The tunable is read at process start, so the process
/// re-executes itself once with it set (this only sizes a reserve; it interposes nothing).
fn ensure_static_tls() {
    use std::os::unix::process::CommandExt;
    const TUNABLE: &str = "glibc.rtld.optional_static_tls";
    let cur = std::env::var("GLIBC_TUNABLES").unwrap_or_default();
    if cur.contains(TUNABLE) {
        return;
    }
    let val = if cur.is_empty() {
        format!("{TUNABLE}=65536")
    } else {
        format!("{cur}:{TUNABLE}=65536")
    };
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let err = Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env("GLIBC_TUNABLES", val)
        .exec();
    eprintln!("alloc_compare: re-exec with {TUNABLE} failed: {err}");
}

fn main() {
    ensure_static_tls();
    // Before any library reads them (pmem-alloc reads its variable once; libpmem reads its
    // at load): CPU flushes on the tmpfs mappings for both persistent peers.
    for k in ["PMEM_ALLOC_FORCE_PMEM", "PMEM_IS_PMEM_FORCE"] {
        if std::env::var_os(k).is_none() {
            std::env::set_var(k, "1");
        }
    }
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Run(a) => run(*a),
        Cmd::ChildSpace {
            peer,
            test,
            size,
            n,
            live,
            pool_size,
            dir,
        } => {
            let cfg = PeerConfig { dir, pool_size };
            space::run_child(&peer, &test, size, n, live, &cfg).map(|r| {
                println!("{}", serde_json::to_string(&r).expect("json"));
            })
        }
        Cmd::ChildFill {
            which,
            path,
            pool_size,
            objects,
        } => recovery::child_fill(&which, &path, pool_size, objects),
    };
    if let Err(e) = r {
        eprintln!("alloc_compare: {e}");
        std::process::exit(1);
    }
}

fn free_bytes(dir: &Path) -> u64 {
    let c = peers::cpath(dir);
    // SAFETY: an all-zero statvfs is a valid out buffer.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid path and out pointer.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return 0;
    }
    st.f_bavail as u64 * st.f_frsize as u64
}

fn fs_type(dir: &Path) -> String {
    let c = peers::cpath(dir);
    // SAFETY: an all-zero statfs is a valid out buffer.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid path and out pointer.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return "unknown".into();
    }
    if st.f_type == libc::TMPFS_MAGIC {
        "tmpfs".into()
    } else {
        format!("fs type {:#x}", st.f_type)
    }
}

fn space_child(args: &[String]) -> Result<SpaceResult, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let out = Command::new(exe)
        .arg("child-space")
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "child-space {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("child-space output: {e}"))
}

fn run(a: RunArgs) -> Result<(), String> {
    let mut res: Results = match &a.from_json {
        Some(p) => serde_json::from_str(&std::fs::read_to_string(p).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?,
        None => measure(&a)?,
    };
    if a.from_json.is_none() {
        res.meta.command = a.command.clone();
        res.meta.date = a.date.clone();
        res.meta.versions = a.versions.clone();
    }
    if let Some(p) = &a.json {
        std::fs::write(p, serde_json::to_string_pretty(&res).expect("json"))
            .map_err(|e| format!("{}: {e}", p.display()))?;
    }
    let notes = a
        .notes
        .as_ref()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .unwrap_or_default();
    if let Some(p) = &a.svg {
        std::fs::write(p, report::svg(&res)).map_err(|e| format!("{}: {e}", p.display()))?;
    }
    let svg_name = a
        .svg
        .as_ref()
        .and_then(|p| p.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "alloc-throughput.svg".into());
    let diag: Option<Results> = match &a.diag_json {
        Some(p) => Some(
            serde_json::from_str(&std::fs::read_to_string(p).map_err(|e| e.to_string())?)
                .map_err(|e| format!("{}: {e}", p.display()))?,
        ),
        None => None,
    };
    let md = report::markdown(&res, diag.as_ref(), &svg_name, &notes);
    match &a.md {
        Some(p) => std::fs::write(p, md).map_err(|e| format!("{}: {e}", p.display()))?,
        None => print!("{md}"),
    }
    Ok(())
}

fn measure(a: &RunArgs) -> Result<Results, String> {
    let names: Vec<String> = if a.peers.is_empty() {
        peers::ALL.iter().map(|s| s.to_string()).collect()
    } else {
        a.peers.clone()
    };
    let wls: Vec<Workload> = if a.workloads.is_empty() {
        Workload::ALL.to_vec()
    } else {
        a.workloads
            .iter()
            .map(|w| Workload::parse(w).ok_or(format!("unknown workload {w}")))
            .collect::<Result<_, _>>()?
    };
    let (cpu, cores, kernel) = report::machine();
    let mut res = Results {
        meta: Meta {
            cpu,
            cores,
            kernel,
            peers: names.clone(),
            trials: a.trials,
            run_ms: a.run_ms,
            pool_size: a.pool_mib << 20,
            space_pool_size: a.space_pool_mib << 20,
            frag_live: a.frag_live_mib << 20,
            recovery_objects: a.recovery_objects,
            recovery_pool_size: a.recovery_pool_mib << 20,
            fs: fs_type(&a.dir),
            loadavg: std::fs::read_to_string("/proc/loadavg")
                .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
                .unwrap_or_default(),
            ..Default::default()
        },
        ..Default::default()
    };
    let cfg = PeerConfig {
        dir: a.dir.clone(),
        pool_size: a.pool_mib << 20,
    };
    {
        // which flush instruction the persistent pool uses on this directory
        let path = peers::scratch(&a.dir, "probe");
        let _ = std::fs::remove_file(&path);
        let pool = pmem_alloc::pool::Pool::create(&path, 1 << 20, &Default::default())
            .map_err(|e| e.to_string())?;
        res.meta.ours_flush = format!(
            "{:?} (PMEM_ALLOC_FORCE_PMEM={})",
            pool.persister().method(),
            std::env::var("PMEM_ALLOC_FORCE_PMEM").unwrap_or_default()
        );
        let _ = pool.close();
        let _ = std::fs::remove_file(&path);
    }

    if !a.no_throughput {
        let mut ps = Vec::new();
        for n in &names {
            eprintln!("opening {n}");
            ps.push(peers::open(n, &cfg)?);
        }
        let workers = Workers::new(a.threads.iter().copied().max().unwrap_or(1));
        eprintln!(
            "throughput: {} workloads x {:?} threads x {} peers",
            wls.len(),
            a.threads,
            ps.len()
        );
        res.cases = workloads::run_matrix(
            &ps,
            &wls,
            &a.threads,
            a.trials,
            Duration::from_millis(a.run_ms),
            &workers,
        );
        workers.stop();
        drop(ps);
    }

    if !a.no_space {
        eprintln!("space");
        for n in &names {
            let persistent =
                n == "pmemobj" || n.starts_with("pmem-alloc pool") || n == "pmem-alloc engine";
            let base = |test: &str| -> Vec<String> {
                vec![
                    "--peer".into(),
                    n.clone(),
                    "--test".into(),
                    test.into(),
                    "--pool-size".into(),
                    (a.space_pool_mib << 20).to_string(),
                    "--dir".into(),
                    a.dir.to_string_lossy().into_owned(),
                ]
            };
            if n == "pmem-alloc engine" || n == "floor" {
                continue; // same pool as "pmem-alloc pool"; the floor never returns memory
            }
            for size in [16usize, 64, 1024] {
                if persistent {
                    // a second, twice as large pool: the difference gives the marginal cost
                    let mut args = base("meta");
                    let n2 = args.iter().position(|x| x == "--pool-size").expect("arg") + 1;
                    args[n2] = (a.space_pool_mib << 21).to_string();
                    args.extend(["--size".into(), size.to_string()]);
                    match space_child(&args) {
                        Ok(r) => res.space.push(r),
                        Err(e) => eprintln!("  {e}"),
                    }
                }
                let mut args = base("meta");
                args.extend([
                    "--size".into(),
                    size.to_string(),
                    "--n".into(),
                    ((64usize << 20) / size).to_string(),
                ]);
                match space_child(&args) {
                    Ok(r) => res.space.push(r),
                    Err(e) => eprintln!("  {e}"),
                }
            }
            let test = if persistent { "fill" } else { "frag" };
            let mut args = base(test);
            args.extend(["--live".into(), (a.frag_live_mib << 20).to_string()]);
            match space_child(&args) {
                Ok(r) => res.space.push(r),
                Err(e) => eprintln!("  {e}"),
            }
            eprintln!("  {n} done");
        }
    }

    if !a.no_recovery {
        let mut pool = a.recovery_pool_mib << 20;
        let mut objects = a.recovery_objects;
        let avail = free_bytes(&a.dir);
        while pool * 2 > avail && pool > 64 << 20 {
            pool /= 2;
            objects /= 2;
            eprintln!(
                "recovery: scaled down to {} MiB / {objects} objects (free space {} MiB)",
                pool >> 20,
                avail >> 20
            );
        }
        res.meta.recovery_pool_size = pool;
        res.meta.recovery_objects = objects;
        for t in 0..a.recovery_trials {
            let order: [&str; 2] = if t % 2 == 0 {
                ["ours", "pmemobj"]
            } else {
                ["pmemobj", "ours"]
            };
            for w in order {
                let r = recovery::measure(w, &a.dir, pool, objects)?;
                eprintln!(
                    "recovery {}: fill {:.0} ms, unclean {:.2} ms, clean {:.3} ms",
                    r.peer, r.fill_ms, r.unclean_ms, r.clean_ms
                );
                res.recovery.push(r);
            }
        }
    }
    Ok(res)
}
