//! Process kills: a child process (this test binary, re-executed) opens the pool, recovers it,
//! and allocates, links, unlinks and frees from two threads until it is SIGKILLed at a random
//! instant. The parent reopens the pool, verifies every reachable node and runs the checker.
//! Repeated `PMA_KILLS` times (default 200).

mod common;

use common::{Node, HDR};
use pmem_alloc::pool::{Pool, PoolOptions};
use pmem_alloc::pptr::{PPtr, PSafe};
use rand::{Rng, SeedableRng};
use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[repr(C)]
struct Root {
    heads: [PPtr<Node>; 2],
}
// SAFETY: repr(C), PSafe fields.
unsafe impl PSafe for Root {}

fn sum(id: u64, len: u64) -> u64 {
    id.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ len ^ 0x1234_5678
}

fn verify(pool: &Pool) -> Result<usize, String> {
    let root = pool.root::<Root>().map_err(|e| e.to_string())?;
    let mut n = 0;
    for l in 0..2 {
        // SAFETY: read-only walk, bounds checked by `get`.
        unsafe {
            let mut cur = (*pool.get(root).unwrap()).heads[l];
            while !cur.is_null() {
                let np = pool.get(cur).ok_or("dangling link")?;
                let (id, len) = ((*np).id, (*np).len);
                if (*np).sum != sum(id, len) || len > 5000 {
                    return Err(format!("node {id} torn"));
                }
                let d = np.cast::<u8>().add(HDR);
                for i in 0..len as usize {
                    if *d.add(i) != id as u8 ^ i as u8 {
                        return Err(format!("node {id} payload torn"));
                    }
                }
                n += 1;
                if n > 1_000_000 {
                    return Err("list too long (cycle?)".into());
                }
                cur = (*np).next;
            }
        }
    }
    Ok(n)
}

/// The child's workload; runs until killed (or 20 s).
fn child(path: &str) {
    let pool = Pool::open(std::path::Path::new(path), &PoolOptions::default()).expect("child open");
    let root = pool.root::<Root>().unwrap();
    let locks = [Mutex::new(()), Mutex::new(())];
    println!("READY");
    use std::io::Write;
    std::io::stdout().flush().unwrap();
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for t in 0..2u64 {
            let (pool, locks) = (&pool, &locks);
            s.spawn(move || {
                let mut rng = rand::rngs::StdRng::seed_from_u64(t ^ std::process::id() as u64);
                let mut id = (std::process::id() as u64) << 32 | t << 31;
                while t0.elapsed() < Duration::from_secs(20) {
                    // alternate lists so that blocks are freed by the thread that did not allocate them
                    let l = rng.gen_range(0..2usize);
                    let _g = locks[l].lock().unwrap();
                    // SAFETY: list `l` is protected by its mutex; nodes are live blocks.
                    unsafe {
                        let r = pool.get(root).unwrap();
                        let head = (*r).heads[l];
                        if head.is_null() || rng.gen_bool(0.65) {
                            let len = rng.gen_range(0..3000usize);
                            let Ok(p) = pool.alloc_zeroed_bytes(HDR + len) else {
                                continue;
                            };
                            let n = p.cast::<Node>();
                            let np = pool.get(n).unwrap();
                            id += 1;
                            (*np).next = head;
                            (*np).id = id;
                            (*np).len = len as u64;
                            (*np).sum = sum(id, len as u64);
                            let d = np.cast::<u8>().add(HDR);
                            for i in 0..len {
                                *d.add(i) = id as u8 ^ i as u8;
                            }
                            pool.persist(n, HDR + len);
                            pool.publish(root.cast::<PPtr<Node>>().byte_add(8 * l as u64), n)
                                .unwrap();
                        } else {
                            let next = (*pool.get(head).unwrap()).next;
                            pool.publish(root.cast::<PPtr<Node>>().byte_add(8 * l as u64), next)
                                .unwrap();
                            pool.free(head);
                        }
                    }
                }
            });
        }
    });
}

#[test]
#[ignore = "helper: the child process of kills_at_random_instants"]
fn kill_child_entry() {
    if let Ok(p) = std::env::var("PMA_KILL_POOL") {
        child(&p);
    }
}

fn run_kills(kills: usize) {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("kill.pool");
    drop(Pool::create(&path, 16 << 20, &PoolOptions::default()).unwrap());
    let exe = std::env::current_exe().unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(12345);
    let mut recovered = 0;
    let mut max_nodes = 0;
    for k in 0..kills {
        let mut c = Command::new(&exe)
            .args([
                "--exact",
                "kill_child_entry",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("PMA_KILL_POOL", &path)
            // a process kill keeps the page cache: CPU flushes instead of msync keep the child fast
            .env("PMEM_ALLOC_FORCE_PMEM", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // wait for READY (bounded), then let it work for a random time
        let mut out = c.stdout.take().unwrap();
        let mut buf = [0u8; 256];
        let mut seen = String::new();
        let t0 = Instant::now();
        while !seen.contains("READY") && t0.elapsed() < Duration::from_secs(20) {
            match out.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
            }
        }
        assert!(seen.contains("READY"), "child {k} did not start: {seen:?}");
        std::thread::sleep(Duration::from_micros(rng.gen_range(0..40_000)));
        c.kill().unwrap(); // SIGKILL
        c.wait().unwrap();
        let mut pool = Pool::open(&path, &PoolOptions::default())
            .unwrap_or_else(|e| panic!("kill {k}: reopen: {e}"));
        let rep = pool.open_report();
        if rep.recovered {
            recovered += 1;
        }
        let n = verify(&pool).unwrap_or_else(|e| panic!("kill {k}: {e}"));
        max_nodes = max_nodes.max(n);
        let chk = pool
            .check()
            .unwrap_or_else(|e| panic!("kill {k}: check: {e}"));
        assert_eq!(
            chk.run_blocks_live + chk.large,
            n + 1,
            "kill {k}: leak or loss"
        );
        pool.abandon(); // keep the next child on the recovery path
    }
    println!("process kills: {kills} kills, {recovered} recoveries, up to {max_nodes} live nodes, 0 failures");
    assert_eq!(recovered, kills);
}

#[test]
#[ignore = "heavy: run by tools/test-all.sh with --ignored --nocapture"]
fn kills_at_random_instants() {
    let n = std::env::var("PMA_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    run_kills(n);
}

#[test]
fn kills_quick() {
    run_kills(5);
}
