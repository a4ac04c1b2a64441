//! Warm restarts of `pmem-memcached` on a pool file: values from 1 B to 1 MiB, flags and CAS
//! identical after restart, TTLs continuing from the wall clock, items that expired during the
//! downtime gone, incr continuing, flush_all with a delay respected across a restart, stats
//! counters kept; each clean shutdown path (SIGTERM, SIGUSR1, the `shutdown` command).

mod common;
use common::*;
use std::collections::BTreeMap;
use std::time::Duration;

fn payload(i: usize, len: usize) -> Vec<u8> {
    (0..len).map(|j| (i * 251 + j * 13) as u8).collect()
}

#[test]
fn warm_restart_matrix() {
    let d = tempfile::tempdir().unwrap();
    let pool = d.path().join("cache.pool");
    let port = free_port();
    let args = ["-m", "64", "-I", "2m"];
    let sizes = [1usize, 2, 100, 1000, 4096, 65_536, 500_000, 1 << 20];
    let mut s = Server::start(&pool, port, &args);
    assert!(s.ready_line().contains("(new)"), "{}", s.ready_line());
    let mut c = s.client();
    let mut expect: BTreeMap<String, common::Value> = BTreeMap::new();
    for (i, &len) in sizes.iter().enumerate() {
        // every byte value, CR and LF included: 8-bit clean
        let data = payload(i, len);
        let key = format!("v{len}");
        assert_eq!(c.set(&key, (i as u32) * 1_000_003, 0, &data), "STORED");
    }
    assert_eq!(c.set("ttl-long", 7, 100, b"long"), "STORED");
    assert_eq!(c.set("ttl-short", 7, 2, b"short"), "STORED");
    let abs = unix_now() + 200;
    assert_eq!(c.set("ttl-abs", 7, abs as i64, b"abs"), "STORED");
    assert_eq!(c.set("counter", 0, 0, b"41"), "STORED");
    assert_eq!(c.cmd("incr counter 1"), "42");
    let keys: Vec<String> = sizes
        .iter()
        .map(|l| format!("v{l}"))
        .chain(["ttl-long", "ttl-abs", "counter"].map(String::from))
        .collect();
    let kr: Vec<&str> = keys.iter().map(|s| s.as_str()).collect();
    for v in c.gets(&kr) {
        expect.insert(v.key.clone(), v);
    }
    assert_eq!(expect.len(), keys.len());
    let max_cas = expect.values().filter_map(|v| v.cas).max().unwrap();
    let gets_before: u64 = c.stats()["cmd_get"].parse().unwrap();
    drop(c);

    // 1. SIGTERM; down for 2.5 s: the 2-second item expires meanwhile
    s.signal(libc::SIGTERM);
    assert!(s.wait_exit().success());
    std::thread::sleep(Duration::from_millis(2500));
    let mut s = Server::start(&pool, port, &args);
    assert!(s.ready_line().contains("(clean)"), "{}", s.ready_line());
    let mut c = s.client();
    for v in c.gets(&kr) {
        assert_eq!(Some(&v), expect.get(&v.key), "{} after restart", v.key);
    }
    assert_eq!(c.gets(&kr).len(), keys.len());
    assert!(c.get1("ttl-short").is_none(), "expired during the downtime");
    // the TTL continued from the wall clock: about 97 s left, not 100
    let mg = c.cmd("mg ttl-long t");
    let left: i64 = mg.trim_start_matches("HD t").parse().unwrap_or(-1);
    assert!((90..=98).contains(&left), "{mg}");
    assert_eq!(c.cmd("incr counter 1"), "43", "incr continues");
    assert_eq!(c.set("after", 0, 0, b"x"), "STORED");
    assert!(
        c.get1("after").unwrap().cas.unwrap() > max_cas,
        "CAS counter continues"
    );
    let st = c.stats();
    let gets_after: u64 = st["cmd_get"].parse().unwrap();
    assert!(
        gets_after > gets_before,
        "stats counters kept across the restart"
    );
    // 2. flush_all with a delay, then SIGUSR1 before the deadline
    assert_eq!(c.cmd("flush_all 3"), "OK");
    drop(c);
    s.signal(libc::SIGUSR1);
    assert!(s.wait_exit().success());
    let mut s = Server::start(&pool, port, &args);
    let mut c = s.client();
    assert!(c.get1("v100").is_some(), "before the flush_all deadline");
    std::thread::sleep(Duration::from_millis(3500));
    assert!(c.get1("v100").is_none(), "flushed at the deadline");
    assert!(c.get1("counter").is_none());
    assert_eq!(c.set("post-flush", 3, 0, b"y"), "STORED");
    // 3. the shutdown command
    c.send("shutdown");
    assert!(s.wait_exit().success());
    let s = Server::start(&pool, port, &args);
    let mut c = s.client();
    let v = c.get1("post-flush").unwrap();
    assert_eq!((v.flags, v.data.as_slice()), (3, &b"y"[..]));
    assert!(c.get1("v1").is_none(), "flush_all stays in effect");
}

/// Items written with `noreply` in a pipeline are all there after a restart.
#[test]
fn pipelined_noreply_writes_survive_restart() {
    let d = tempfile::tempdir().unwrap();
    let pool = d.path().join("p.pool");
    let port = free_port();
    let mut s = Server::start(&pool, port, &[]);
    let mut c = s.client();
    let mut batch = Vec::new();
    for i in 0..5000 {
        batch.extend_from_slice(
            format!("set k{i} {i} 0 5 noreply\r\nv{:04}\r\n", i % 10_000).as_bytes(),
        );
    }
    batch.extend_from_slice(b"mn\r\n");
    use std::io::Write;
    let mut w = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    w.write_all(&batch).unwrap();
    drop(w);
    // wait until all are applied
    let t0 = std::time::Instant::now();
    while c.stats()["curr_items"] != "5000" {
        assert!(t0.elapsed() < Duration::from_secs(30));
        std::thread::sleep(Duration::from_millis(20));
    }
    s.signal(libc::SIGTERM);
    assert!(s.wait_exit().success());
    let s = Server::start(&pool, port, &[]);
    assert!(s.ready_line().contains("5000 items"), "{}", s.ready_line());
    let mut c = s.client();
    for i in (0..5000).step_by(97) {
        let v = c.get1(&format!("k{i}")).unwrap();
        assert_eq!(
            (v.flags, v.data),
            (i as u32, format!("v{:04}", i % 10_000).into_bytes())
        );
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}
