//! libmemcached's `memccapable -a` (the ASCII protocol conformance suite) against
//! `pmem-memcached`, with the DRAM store and with the persistent store on a temporary pool
//! (which is then restarted cleanly and after `kill -9`).
//!
//! Without `memccapable` on the PATH the tests are skipped with a message, unless the `CI`
//! environment variable is set, in which case they fail.

mod common;
use common::Server;
use std::path::Path;
use std::time::Duration;

/// Runs `memccapable -a` against the port; None if the tool is missing (and CI is unset).
fn memccapable(port: u16) -> Option<String> {
    let port = port.to_string();
    let args = ["-h", "127.0.0.1", "-p", &port, "-a"];
    let limit = Duration::from_secs(120);
    let (status, out, err) =
        common::run_tool_from("libmemcached-tools", "memccapable", &args, None, limit)?;
    let out = out + &err;
    assert!(status.success(), "memccapable failed ({status}):\n{out}");
    Some(out)
}

/// Asserts that every test memccapable ran passed.
fn assert_all_passed(out: &str) {
    let results: Vec<&str> = out.lines().filter(|l| l.contains('[')).collect();
    assert!(results.len() >= 20, "too few tests ran:\n{out}");
    let failed: Vec<&&str> = results.iter().filter(|l| !l.contains("[pass]")).collect();
    assert!(failed.is_empty(), "failed: {failed:?}\n{out}");
    assert!(out.contains("All tests passed"), "{out}");
}

fn call(port: u16, req: &[u8], end: &[u8]) -> Vec<u8> {
    common::call(&mut common::connect(port), req, end)
}

#[test]
fn memccapable_memory_store() {
    let s = Server::launch(&["--store", "memory"]);
    if let Some(out) = memccapable(s.port) {
        assert_all_passed(&out);
    }
}

fn pmem_args(pool: &Path) -> Vec<String> {
    vec![
        "-e".into(),
        pool.display().to_string(),
        "-m".into(),
        "64".into(),
    ]
}

#[test]
fn memccapable_pmem_store_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let pool = dir.path().join("cache.pool");
    let args = pmem_args(&pool);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();

    let mut s = Server::launch(&args);
    assert!(s.ready_line().contains("(new)"), "{:?}", s.ready_line());
    if let Some(out) = memccapable(s.port) {
        assert_all_passed(&out);
    }
    let set = b"set keep 42 0 5\r\nhello\r\n";
    assert_eq!(call(s.port, set, b"\r\n"), b"STORED\r\n");
    s.signal(libc::SIGTERM);
    assert!(s.wait_exit().success());
    drop(s);

    // Clean restart: the item is back.
    let mut s = Server::launch(&args);
    let ready = s.ready_line();
    assert!(ready.contains("(clean)"), "{ready}");
    let want = b"VALUE keep 42 5\r\nhello\r\nEND\r\n";
    assert_eq!(call(s.port, b"get keep\r\n", b"END\r\n"), want);
    assert_eq!(
        call(s.port, b"set after 0 0 1\r\nx\r\n", b"\r\n"),
        b"STORED\r\n"
    );
    // kill -9: the store recovers and acknowledged items survive.
    s.signal(libc::SIGKILL);
    let _ = s.wait_exit();
    drop(s);

    let mut s = Server::launch(&args);
    let ready = s.ready_line();
    assert!(ready.contains("(recovered)"), "{ready}");
    let got = call(s.port, b"get keep after\r\n", b"END\r\n");
    assert_eq!(
        String::from_utf8_lossy(&got),
        "VALUE keep 42 5\r\nhello\r\nVALUE after 0 1\r\nx\r\nEND\r\n"
    );
    s.signal(libc::SIGTERM);
    assert!(s.wait_exit().success());
}
