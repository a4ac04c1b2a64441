//! A small demo of the foundation layer: creates (or reopens) a pool file, writes a record,
//! persists it with the mapping's own policy, and reads it back.
//!
//! ```text
//! cargo run --release -p pmem-examples --bin pmem-demo -- [--path FILE] [--size BYTES]
//! ```
//! Run it twice: the second run finds the counter the first one persisted.

use clap::Parser;
use pmem_alloc::{FlushMethod, MapError, MapOptions, Mapping};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(about = "Create or reopen a pool file, persist a counter and a message, read them back")]
struct Args {
    /// Pool file (created if missing).
    #[arg(long, default_value = "pmem-demo.pool")]
    path: PathBuf,
    /// Size of a new pool file in bytes.
    #[arg(long, default_value_t = 4 << 20)]
    size: u64,
    /// Fail unless the file can be mapped with MAP_SYNC (real DAX).
    #[arg(long)]
    require_dax: bool,
}

const MAGIC: &[u8; 8] = b"PMDEMO01";

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pmem-demo: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let opts = MapOptions::new().require_dax(args.require_dax);
    let (m, created) = match Mapping::open(&args.path, &opts) {
        Ok(m) => (m, false),
        Err(MapError::NotFound { .. }) => (Mapping::create(&args.path, args.size, &opts)?, true),
        Err(e) => return Err(e.into()),
    };
    println!(
        "{} {} ({} bytes) mapped as {}; flush method {}",
        if created { "created" } else { "opened" },
        args.path.display(),
        m.len(),
        m.kind(),
        m.persister().method(),
    );
    let _ = FlushMethod::detected();
    let mut hdr = [0u8; 16];
    m.read_at(0, &mut hdr)?;
    let count = if &hdr[..8] == MAGIC {
        u64::from_le_bytes(hdr[8..16].try_into()?)
    } else if hdr.iter().all(|&b| b == 0) {
        0
    } else {
        return Err(format!("{} is not a demo pool (unknown magic)", args.path.display()).into());
    };
    let count = count + 1;
    let msg = format!("hello from run {count}");
    // Ordering: the message (offset 64..) is persisted before the header that counts it.
    m.write_at(64, &(msg.len() as u64).to_le_bytes())?;
    m.write_at(72, msg.as_bytes())?;
    m.persist_range(64, 8 + msg.len())?;
    m.write_at(0, MAGIC)?;
    m.write_at(8, &count.to_le_bytes())?;
    m.persist_range(0, 16)?;
    drop(m);

    let m = Mapping::open(&args.path, &opts)?;
    let mut len = [0u8; 8];
    m.read_at(64, &mut len)?;
    let mut back = vec![0u8; u64::from_le_bytes(len) as usize];
    m.read_at(72, &mut back)?;
    let mut c = [0u8; 8];
    m.read_at(8, &mut c)?;
    println!(
        "read back after reopen: run counter {} message {:?}",
        u64::from_le_bytes(c),
        String::from_utf8_lossy(&back)
    );
    if back != msg.as_bytes() || u64::from_le_bytes(c) != count {
        return Err("read-back mismatch".into());
    }
    Ok(())
}
