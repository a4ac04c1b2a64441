//! Recovery: time from open to the first completed allocation, after an unclean exit and after
//! a clean close, pmem-alloc's pool against libpmemobj.
//!
//! A child process (the `child-fill` command of `alloc_compare`) creates a pool, allocates
//! `objects` 64-byte objects, writes and persists each, and links all of them from the root
//! through a persistent array of pointers (pmem-alloc: an array of `PPtr` published in the
//! root; libpmemobj: an array of `PMEMoid` whose entries `pmemobj_alloc` fills atomically). It
//! then reports ready and the parent kills it with SIGKILL: no close runs (pmem-alloc's child
//! also calls `Pool::abandon` first, which writes nothing). The parent then times open + one
//! 64-byte allocation (the unclean case), closes cleanly, and times open + one allocation again
//! (the clean case). The pool file stays in the page cache of the tmpfs, so these are
//! CPU-bound times, not I/O.

use super::peers::{cpath, PmemOid, PmemobjApi};
use pmem_alloc::pool::{Pool, PoolOptions};
use pmem_alloc::pptr::PPtr;
use std::io::{BufRead, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// One recovery measurement.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct RecoveryResult {
    /// `pmem-alloc pool` or `pmemobj`.
    pub peer: String,
    /// Objects linked from the root.
    pub objects: u64,
    /// Pool bytes.
    pub pool_size: u64,
    /// Fill time in the child (ms).
    pub fill_ms: f64,
    /// Open + first allocation after SIGKILL (ms).
    pub unclean_ms: f64,
    /// Open + first allocation after a clean close (ms).
    pub clean_ms: f64,
    /// pmem-alloc: blocks its recovery found reachable (0 for libpmemobj).
    pub reachable: u64,
}

#[repr(C)]
struct OursRoot {
    arr: u64,
    n: u64,
}

/// The child: fills a pool at `path` and waits to be killed. Prints `ready <fill ms>`.
pub fn child_fill(which: &str, path: &Path, pool_size: u64, objects: u64) -> Result<(), String> {
    let _ = std::fs::remove_file(path);
    let t0 = Instant::now();
    match which {
        "ours" => {
            let pool = Pool::create(path, pool_size, &PoolOptions::default())
                .map_err(|e| e.to_string())?;
            let root = pool
                .root_raw(std::mem::size_of::<OursRoot>(), 8)
                .map_err(|e| e.to_string())?;
            let arr = pool
                .alloc(objects as usize * 8)
                .map_err(|e| e.to_string())?;
            let a = pool
                .get(arr.cast::<u64>())
                .ok_or("array outside the pool")?;
            for i in 0..objects as usize {
                let o = pool.alloc(64).map_err(|e| e.to_string())?;
                let op = pool.get(o.cast::<u64>()).ok_or("object outside the pool")?;
                // SAFETY: a fresh 64-byte block; `a` has `objects` words.
                unsafe {
                    for k in 0..8 {
                        op.add(k).write(i as u64 + k as u64);
                    }
                    a.add(i).write(o.raw());
                }
                pool.persist(o, 64);
            }
            pool.persist(arr, objects as usize * 8);
            let r = pool
                .get(root.cast::<OursRoot>())
                .ok_or("root outside the pool")?;
            // SAFETY: the root is 16 bytes, 8-aligned, used by this thread only.
            unsafe { (*r).n = objects };
            pool.persist(root, 16);
            pool.publish(root.cast::<PPtr<u8>>(), arr)
                .map_err(|e| e.to_string())?;
            pool.abandon();
        }
        "pmemobj" => {
            let api = PmemobjApi::get()?;
            let c = cpath(path);
            // SAFETY: valid strings, new file.
            let pop =
                unsafe { (api.create)(c.as_ptr(), c"bench".as_ptr(), pool_size as usize, 0o600) };
            if pop.is_null() {
                return Err(format!("pmemobj_create: {}", api.error()));
            }
            // SAFETY: live pool; the root is 16 bytes (one PMEMoid), zeroed by libpmemobj.
            let root = unsafe { (api.root)(pop, std::mem::size_of::<PmemOid>()) };
            let rootp = pop
                .cast::<u8>()
                .wrapping_add(root.off as usize)
                .cast::<PmemOid>();
            // SAFETY: `rootp` is inside the pool: pmemobj_alloc publishes atomically into it.
            let rc = unsafe {
                (api.alloc)(
                    pop,
                    rootp,
                    objects as usize * 16,
                    1,
                    None,
                    std::ptr::null_mut(),
                )
            };
            if rc != 0 {
                return Err(format!("pmemobj_alloc(array): {}", api.error()));
            }
            // SAFETY: the root now names the array.
            let arr = pop
                .cast::<u8>()
                .wrapping_add(unsafe { (*rootp).off } as usize)
                .cast::<PmemOid>();
            for i in 0..objects as usize {
                // SAFETY: `arr.add(i)` is an entry of the array, inside the pool.
                let rc = unsafe { (api.alloc)(pop, arr.add(i), 64, 2, None, std::ptr::null_mut()) };
                if rc != 0 {
                    return Err(format!("pmemobj_alloc: {}", api.error()));
                }
                // SAFETY: the entry names a fresh 64-byte object of this pool.
                unsafe {
                    let op = pop
                        .cast::<u8>()
                        .wrapping_add((*arr.add(i)).off as usize)
                        .cast::<u64>();
                    for k in 0..8 {
                        op.add(k).write(i as u64 + k as u64);
                    }
                    (api.persist)(pop, op.cast(), 64);
                }
            }
            // no pmemobj_close: the process is killed
        }
        _ => return Err(format!("unknown pool kind {which}")),
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready {:.3}", t0.elapsed().as_secs_f64() * 1e3).map_err(|e| e.to_string())?;
    out.flush().map_err(|e| e.to_string())?;
    drop(out);
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Runs a filling child, kills it once ready, and returns its fill time (ms).
fn fill_and_kill(which: &str, path: &Path, pool_size: u64, objects: u64) -> Result<f64, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = Command::new(exe)
        .args(["child-fill", "--which", which, "--path"])
        .arg(path)
        .args(["--pool-size", &pool_size.to_string()])
        .args(["--objects", &objects.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let mut line = String::new();
    let stdout = child.stdout.take().ok_or("no stdout")?;
    std::io::BufReader::new(stdout)
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    let _ = child.wait();
    line.trim()
        .strip_prefix("ready ")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("child-fill {which} failed (output {line:?})"))
}

/// One unclean + clean measurement for `which` (`ours` or `pmemobj`).
pub fn measure(
    which: &str,
    dir: &Path,
    pool_size: u64,
    objects: u64,
) -> Result<RecoveryResult, String> {
    let path = super::peers::scratch(dir, &format!("recovery-{which}"));
    let fill_ms = fill_and_kill(which, &path, pool_size, objects)?;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let res = match which {
        "ours" => {
            let opts = PoolOptions::default();
            let t0 = Instant::now();
            let pool = Pool::open(&path, &opts).map_err(|e| e.to_string())?;
            let p = pool.alloc(64).map_err(|e| e.to_string())?;
            let unclean = t0.elapsed();
            let rep = pool.open_report();
            if !rep.recovered {
                return Err("pmem-alloc: the killed pool was not recovered".into());
            }
            // SAFETY: just allocated, unlinked.
            unsafe { pool.free(p) };
            pool.close().map_err(|e| e.to_string())?;
            let t0 = Instant::now();
            let pool = Pool::open(&path, &opts).map_err(|e| e.to_string())?;
            let p = pool.alloc(64).map_err(|e| e.to_string())?;
            let clean = t0.elapsed();
            if !pool.open_report().clean {
                return Err("pmem-alloc: the closed pool was not clean".into());
            }
            // SAFETY: as above.
            unsafe { pool.free(p) };
            pool.close().map_err(|e| e.to_string())?;
            RecoveryResult {
                peer: "pmem-alloc pool".into(),
                objects,
                pool_size,
                fill_ms,
                unclean_ms: ms(unclean),
                clean_ms: ms(clean),
                reachable: rep.reachable as u64,
            }
        }
        _ => {
            let api = PmemobjApi::get()?;
            let c = cpath(&path);
            let open_alloc = || -> Result<(Duration, *mut std::ffi::c_void), String> {
                let t0 = Instant::now();
                // SAFETY: valid strings; the pool is not open elsewhere.
                let pop = unsafe { (api.open)(c.as_ptr(), c"bench".as_ptr()) };
                if pop.is_null() {
                    return Err(format!("pmemobj_open: {}", api.error()));
                }
                let mut oid = PmemOid::default();
                // SAFETY: live pool, volatile out parameter.
                let rc = unsafe { (api.alloc)(pop, &mut oid, 64, 0, None, std::ptr::null_mut()) };
                let d = t0.elapsed();
                if rc != 0 {
                    return Err(format!("pmemobj_alloc: {}", api.error()));
                }
                // SAFETY: the block just allocated.
                unsafe { (api.free)(&mut oid) };
                Ok((d, pop))
            };
            let (unclean, pop) = open_alloc()?;
            // SAFETY: open pool, no longer used.
            unsafe { (api.close)(pop) };
            let (clean, pop) = open_alloc()?;
            // SAFETY: as above.
            unsafe { (api.close)(pop) };
            RecoveryResult {
                peer: "pmemobj".into(),
                objects,
                pool_size,
                fill_ms,
                unclean_ms: ms(unclean),
                clean_ms: ms(clean),
                reachable: 0,
            }
        }
    };
    let _ = std::fs::remove_file(&path);
    Ok(res)
}
