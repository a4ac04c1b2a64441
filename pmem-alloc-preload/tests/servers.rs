//! Acceptance: unmodified Debian memcached and redis-server run with their heap on a PMEM heap
//! file through the preload library (loopback only, bounded runs, servers killed by PID).

mod common;

use common::*;
use std::process::Command;
use std::time::{Duration, Instant};

fn is_root() -> bool {
    // SAFETY: no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn memcached_under_the_preload_passes_memccapable() {
    let (Some(memcached), Some(memccapable)) = (tool("memcached"), tool("memccapable")) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let heap = dir.path().join("memcached.heap");
    let port = free_port();
    let mut cmd = Command::new(memcached);
    cmd.env("LD_PRELOAD", preload_lib())
        .env("PMEM_HEAP_FILE", &heap)
        .env("PMEM_HEAP_SIZE", "32M")
        .args([
            "-l",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "0",
            "-m",
            "64",
        ]);
    if is_root() {
        // memcached refuses to run as root; the heap file is created by the first allocation,
        // before it switches user, and stays mapped (and growable through its descriptor).
        cmd.args(["-u", "nobody"]);
    }
    // the preload's notices (e.g. why it fell back to anonymous memory) go to stderr
    let errlog = dir.path().join("stderr.log");
    cmd.stderr(std::fs::File::create(&errlog).unwrap());
    let mut server = Proc(cmd.spawn().unwrap());
    wait_port(port, 10, &mut server);
    // (bounded wait: the listener may be up a moment before /proc shows every mapping)
    let t0 = Instant::now();
    while !maps_show(server.pid(), &heap) && t0.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        maps_show(server.pid(), &heap),
        "the heap file is not mapped in memcached; its stderr: {:?}; its mappings of the heap \
         directory: {:?}",
        std::fs::read_to_string(&errlog).unwrap_or_default(),
        std::fs::read_to_string(format!("/proc/{}/maps", server.pid()))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(dir.path().to_str().unwrap()))
            .collect::<Vec<_>>()
    );
    let out = run_bounded(
        Command::new(memccapable).args(["-h", "127.0.0.1", "-p", &port.to_string(), "-a"]),
        120,
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "memccapable failed:\n{text}");
    assert!(text.contains("All tests passed"), "{text}");
    assert!(!text.contains("[fail]"), "{text}");
    assert!(server.alive(), "memcached died");
    assert!(maps_show(server.pid(), &heap));
    let st = server.stop();
    assert!(st.success(), "memcached exit status {st:?}");
}

struct Redis {
    proc: Proc,
    port: u16,
    cli: std::path::PathBuf,
}

impl Redis {
    fn start(
        server: &std::path::Path,
        cli: &std::path::Path,
        dir: &std::path::Path,
        heap: &std::path::Path,
    ) -> Redis {
        let port = free_port();
        let mut proc = Proc(
            Command::new(server)
                .env("LD_PRELOAD", preload_lib())
                .env("PMEM_HEAP_FILE", heap)
                .env("PMEM_HEAP_SIZE", "64M")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
                .arg("--dir")
                .arg(dir)
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap(),
        );
        wait_port(port, 10, &mut proc);
        Redis {
            proc,
            port,
            cli: cli.to_path_buf(),
        }
    }

    fn cli(&self, args: &[&str]) -> String {
        let out = run_bounded(
            Command::new(&self.cli)
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
                .args(args),
            30,
        );
        assert!(out.status.success(), "redis-cli {args:?} failed");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn info_field(&self, field: &str) -> String {
        let info = self.cli(&["info", "persistence"]);
        info.lines()
            .find_map(|l| l.strip_prefix(&format!("{field}:")))
            .unwrap_or_default()
            .trim()
            .to_string()
    }

    fn wait_bgsave(&self) {
        let t = Instant::now();
        while self.info_field("rdb_bgsave_in_progress") != "0" {
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "BGSAVE never finished"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn redis_under_the_preload_survives_benchmark_and_repeated_bgsave() {
    let (Some(server), Some(cli), Some(bench)) = (
        tool("redis-server"),
        tool("redis-cli"),
        tool("redis-benchmark"),
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let heap = dir.path().join("redis.heap");
    let mut r = Redis::start(&server, &cli, dir.path(), &heap);
    assert!(
        maps_show(r.proc.pid(), &heap),
        "the heap file is not mapped in redis-server"
    );
    assert!(r
        .cli(&["info", "memory"])
        .contains("mem_allocator:jemalloc"));

    // write load in the background, BGSAVE repeatedly meanwhile
    let mut b = Command::new(bench);
    b.args(["-h", "127.0.0.1", "-p", &r.port.to_string()])
        .args(["-n", "20000", "-c", "20", "-r", "10000", "-q"])
        .args(["-t", "set,get,incr,lpush,lpop,sadd,hset,lrange,mset"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut bench = b.spawn().unwrap();
    let t = Instant::now();
    let mut saves = 0;
    while bench.try_wait().unwrap().is_none() && t.elapsed() < Duration::from_secs(150) {
        std::thread::sleep(Duration::from_millis(400));
        let reply = r.cli(&["bgsave"]);
        assert!(
            reply.contains("Background saving started") || reply.contains("already in progress"),
            "BGSAVE: {reply}"
        );
        saves += reply.contains("started") as u32;
        assert!(r.proc.alive(), "redis-server died under BGSAVE");
    }
    if bench.try_wait().unwrap().is_none() {
        let _ = bench.kill();
        let _ = bench.wait();
        panic!("redis-benchmark did not finish in 150 s");
    }
    let out = bench.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "redis-benchmark failed: {text}");
    for t in [
        "SET",
        "GET",
        "INCR",
        "LPUSH",
        "LPOP",
        "SADD",
        "HSET",
        "LRANGE_100",
        "MSET",
    ] {
        assert!(
            text.contains(&format!("{t}:")) || text.contains(&format!("{t} ")),
            "no {t} result in {text}"
        );
    }
    assert!(saves >= 3, "only {saves} BGSAVEs started");
    r.wait_bgsave();
    assert_eq!(r.info_field("rdb_last_bgsave_status"), "ok");

    // data readable afterwards: in this server, and from the snapshot in a fresh one
    assert_eq!(r.cli(&["set", "pmem:check", "survived"]), "OK");
    let keys: u64 = r.cli(&["dbsize"]).parse().unwrap();
    assert!(keys > 1000, "only {keys} keys");
    let len: u64 = r.cli(&["llen", "mylist"]).parse().unwrap();
    r.cli(&["bgsave"]);
    r.wait_bgsave();
    assert_eq!(r.info_field("rdb_last_bgsave_status"), "ok");
    assert_eq!(r.cli(&["get", "pmem:check"]), "survived");
    assert!(maps_show(r.proc.pid(), &heap));
    let st = r.proc.stop();
    assert!(st.success(), "redis-server exit status {st:?}");

    let heap2 = dir.path().join("redis2.heap");
    let r2 = Redis::start(&server, &cli, dir.path(), &heap2);
    assert_eq!(r2.cli(&["get", "pmem:check"]), "survived");
    assert_eq!(r2.cli(&["dbsize"]).parse::<u64>().unwrap(), keys);
    assert_eq!(r2.cli(&["llen", "mylist"]).parse::<u64>().unwrap(), len);
    assert!(r2.proc.stop().success());
}
