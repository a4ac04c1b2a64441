//! `pma-pool`: create, inspect, check and grow pool files (like PMDK's `pmempool`).
//!
//! ```text
//! pma-pool create [--layout NAME] FILE SIZE      SIZE in bytes or with K/M/G/T
//! pma-pool info FILE                             size, used, free, fragmentation, objects per class
//! pma-pool check FILE                            full consistency check; exit 0 = consistent, 1 = not
//! pma-pool grow FILE SIZE                        grow to SIZE (bytes or K/M/G/T)
//! ```
//! Opening a pool after an unclean shutdown runs recovery (that is what every open does); `info`
//! and `check` say so.

use clap::{Parser, Subcommand};
use pmem_alloc::global::parse_size;
use pmem_alloc::pool::{Pool, PoolOptions};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "pma-pool",
    version,
    about = "Create, inspect, check and grow pmem-alloc pool files"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Create a pool file.
    Create {
        /// Application layout name stored in the header.
        #[arg(long, default_value = "")]
        layout: String,
        /// Pool file (must not exist).
        file: PathBuf,
        /// Size (bytes, or with K/M/G/T).
        size: String,
    },
    /// Print size, usage, fragmentation and objects per size class.
    Info {
        /// Pool file.
        file: PathBuf,
    },
    /// Full consistency check; exit code 0 if consistent, 1 if not.
    Check {
        /// Pool file.
        file: PathBuf,
    },
    /// Grow a pool to a new size.
    Grow {
        /// Pool file.
        file: PathBuf,
        /// New size (bytes, or with K/M/G/T).
        size: String,
    },
}

fn size_arg(s: &str) -> Result<u64, String> {
    parse_size(s)
        .ok_or_else(|| format!("invalid size {s:?} (bytes, or a number with K, M, G or T)"))
}

fn opts(max: u64) -> PoolOptions {
    PoolOptions {
        max_size: max.max(64 << 30),
        ..PoolOptions::default()
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.cmd) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("pma-pool: {e}");
            ExitCode::from(1)
        }
    }
}

fn run(cmd: Cmd) -> Result<ExitCode, Box<dyn std::error::Error>> {
    match cmd {
        Cmd::Create { layout, file, size } => {
            let size = size_arg(&size)?;
            let pool = Pool::create(
                &file,
                size,
                &PoolOptions {
                    layout,
                    ..opts(size)
                },
            )?;
            println!(
                "created {} ({} bytes, mapped as {:?})",
                file.display(),
                pool.size(),
                kind(&pool)
            );
            pool.close()?;
        }
        Cmd::Info { file } => {
            let pool = Pool::open(&file, &opts(0))?;
            let rep = pool.open_report();
            let st = pool.stats();
            let d = pool.heap().detail();
            let u = pool.uuid();
            println!("pool        {}", file.display());
            println!(
                "uuid        {}",
                u.iter().map(|b| format!("{b:02x}")).collect::<String>()
            );
            println!("size        {} bytes", pool.size());
            println!(
                "last close  {}",
                if rep.clean && !rep.recovered {
                    "clean".to_string()
                } else {
                    format!(
                        "unclean: recovered in {:?}, {} reachable blocks",
                        rep.duration, rep.reachable
                    )
                }
            );
            println!(
                "transactions  {} lanes, {} rolled back at this open",
                pool.tx_lanes(),
                rep.tx_rolled_back
            );
            println!("in use      {} bytes", st.in_use);
            println!(
                "free        {} bytes in {} extents (largest {} bytes)",
                st.free,
                d.free_extents,
                d.largest_free_pages * 4096
            );
            println!("metadata    {} pages", st.meta_pages);
            println!(
                "fragmentation  free space {:.1}%, run slack {:.1}%",
                100.0 * d.free_fragmentation(),
                100.0 * d.run_slack()
            );
            println!(
                "large       {} allocations, {} pages",
                d.large_allocations, d.large_pages
            );
            println!("class (B)   runs   objects   capacity");
            for c in &d.classes {
                println!(
                    "{:>9} {:>6} {:>9} {:>10}",
                    c.size, c.runs, c.blocks_out, c.capacity
                );
            }
            pool.close()?;
        }
        Cmd::Check { file } => {
            let mut pool = match Pool::open(&file, &opts(0)) {
                Ok(p) => p,
                Err(e) => {
                    println!("{}: NOT consistent: {e}", file.display());
                    return Ok(ExitCode::from(1));
                }
            };
            let rep = pool.open_report();
            match pool.check() {
                Ok(c) => {
                    println!(
                        "{}: consistent ({} extents, {} runs, {} live small blocks, {} large allocations{})",
                        file.display(),
                        c.extents,
                        c.runs,
                        c.run_blocks_live,
                        c.large,
                        if rep.recovered { "; recovered from an unclean shutdown" } else { "" }
                    );
                    pool.close()?;
                }
                Err(e) => {
                    println!("{}: NOT consistent: {e}", file.display());
                    pool.abandon();
                    return Ok(ExitCode::from(1));
                }
            }
        }
        Cmd::Grow { file, size } => {
            let size = size_arg(&size)?;
            let pool = Pool::open(&file, &opts(size))?;
            let old = pool.size();
            pool.grow(size)?;
            println!(
                "grew {} from {old} to {} bytes",
                file.display(),
                pool.size()
            );
            pool.close()?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn kind(pool: &Pool) -> pmem_alloc::flush::FlushMethod {
    pool.persister().method()
}
