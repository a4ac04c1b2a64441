//! The `pmem-memcached` binary: command-line errors, protocol round trips over TCP, connection
//! limit, `shutdown` and signals. Servers run on free loopback ports with `--store memory`
//! and are stopped by PID.

mod common;
use common::{call, BIN};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};

/// A server on the DRAM store.
struct Server;

impl Server {
    fn start(extra: &[&str]) -> common::Server {
        common::Server::launch(&[&["--store", "memory"], extra].concat())
    }
}

fn bad_options(args: &[&str], want: &str) {
    common::bad_options(BIN, args, want);
}

#[test]
fn bad_options_fail_clearly() {
    bad_options(&["-U", "11211"], "UDP is not supported");
    bad_options(&["-p", "notaport"], "invalid value");
    bad_options(&["-I", "10"], "less than 1024");
    bad_options(&["-I", "5x"], "invalid size");
    bad_options(
        &["-m", "1", "-I", "1m", "--store", "memory"],
        "1/2 of memory",
    );
    bad_options(&["-t", "0", "--store", "memory"], "threads");
    bad_options(&["--store", "bogus"], "invalid value");
    bad_options(&["--no-such-option"], "unexpected argument");
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port().to_string();
    bad_options(
        &["--store", "memory", "-p", &port],
        "failed to listen on 127.0.0.1:",
    );
    bad_options(
        &["-e", "/nonexistent-dir/sub/cache.pool", "-p", "0"],
        "cannot open /nonexistent-dir/sub/cache.pool",
    );
}

#[test]
fn round_trips_and_pipelining() {
    let s = Server::start(&[]);
    let mut c = s.connect();
    assert_eq!(
        call(&mut c, b"set a 1 0 3\r\nabc\r\n", b"\r\n"),
        b"STORED\r\n"
    );
    assert_eq!(
        call(&mut c, b"get a\r\n", b"END\r\n"),
        b"VALUE a 1 3\r\nabc\r\nEND\r\n"
    );
    // Pipelined: many commands in one write, noreply ones silent, replies in order.
    let mut req = Vec::new();
    for i in 0..200 {
        req.extend_from_slice(
            format!("set k{i} 0 0 {}\r\n{i}\r\n", i.to_string().len()).as_bytes(),
        );
        req.extend_from_slice(format!("set q{i} 0 0 1 noreply\r\nx\r\n").as_bytes());
    }
    req.extend_from_slice(b"get k7 k199 q3\r\nmn\r\n");
    let got = call(&mut c, &req, b"MN\r\n");
    let mut want = b"STORED\r\n".repeat(200);
    want.extend_from_slice(
        b"VALUE k7 0 1\r\n7\r\nVALUE k199 0 3\r\n199\r\nVALUE q3 0 1\r\nx\r\nEND\r\nMN\r\n",
    );
    assert_eq!(
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(&want)
    );
    // A value split across writes, and a large one.
    c.write_all(b"set big 0 0 100000\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let big = vec![b'z'; 100_000];
    c.write_all(&big[..50_000]).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(
        call(&mut c, &[&big[50_000..], b"\r\n"].concat(), b"\r\n"),
        b"STORED\r\n"
    );
    let got = call(&mut c, b"get big\r\n", b"END\r\n");
    assert_eq!(got.len(), "VALUE big 0 100000\r\n".len() + 100_002 + 5);
    // Too large for the default 1 MB limit: refused, data swallowed, connection usable.
    let huge = vec![b'h'; 2 << 20];
    let mut req = b"set huge 0 0 2097152\r\n".to_vec();
    req.extend_from_slice(&huge);
    req.extend_from_slice(b"\r\nversion\r\n");
    let got = call(&mut c, &req, b"VERSION 1.6.21\r\n");
    assert_eq!(
        got,
        b"SERVER_ERROR object too large for cache\r\nVERSION 1.6.21\r\n"
    );
    assert_eq!(call(&mut c, b"bogus\r\n", b"\r\n"), b"ERROR\r\n");
    assert_eq!(
        call(&mut c, b"shutdown\r\n", b"\r\n"),
        b"ERROR: shutdown not enabled\r\n"
    );
    let stats = call(&mut c, b"stats\r\n", b"END\r\n");
    let stats = String::from_utf8_lossy(&stats);
    assert!(stats.contains("STAT curr_connections 1\r\n"), "{stats}");
    assert!(stats.contains("STAT total_connections 1\r\n"), "{stats}");
    // quit closes the connection.
    c.write_all(b"quit\r\n").unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(c.read(&mut buf).unwrap(), 0);
}

#[test]
fn line_too_long_closes() {
    let s = Server::start(&[]);
    let mut c = s.connect();
    c.write_all(&vec![b'x'; 4096]).unwrap();
    let mut got = Vec::new();
    c.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"CLIENT_ERROR line too long\r\n");
}

#[test]
fn connection_limit() {
    let s = Server::start(&["-c", "1"]);
    let mut first = s.connect();
    assert_eq!(
        call(&mut first, b"version\r\n", b"\r\n"),
        b"VERSION 1.6.21\r\n"
    );
    let mut second = s.connect();
    let mut got = Vec::new();
    second.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"ERROR Too many open connections\r\n");
    assert_eq!(call(&mut first, b"mn\r\n", b"\r\n"), b"MN\r\n");
}

#[test]
fn shutdown_command_exits_zero() {
    let mut s = Server::start(&["-A"]);
    let mut c = s.connect();
    assert_eq!(
        call(&mut c, b"set a 0 0 1\r\nx\r\n", b"\r\n"),
        b"STORED\r\n"
    );
    c.write_all(b"shutdown\r\n").unwrap();
    let st = s.wait_exit();
    assert!(st.success(), "{st:?}");
}

#[test]
fn signals_exit_zero() {
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGUSR1] {
        let mut s = Server::start(&[]);
        let mut c = s.connect();
        assert_eq!(call(&mut c, b"mn\r\n", b"\r\n"), b"MN\r\n");
        s.signal(sig);
        let st = s.wait_exit();
        assert!(st.success(), "signal {sig}: {st:?}");
    }
}

#[test]
fn user_option_drops_root() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipping: not running as root, -u is ignored");
        return;
    }
    bad_options(
        &["--store", "memory", "-p", "0", "-u", "no-such-user-xyz"],
        "can't find the user",
    );
    let s = Server::start(&["-u", "nobody"]);
    let status = std::fs::read_to_string(format!("/proc/{}/status", s.child.id())).unwrap();
    let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(uid.split_whitespace().skip(1).all(|u| u != "0"), "{uid}");
    let mut c = s.connect();
    assert_eq!(call(&mut c, b"mn\r\n", b"\r\n"), b"MN\r\n");
}

/// The server runs the store's maintenance (the persistent store's crawler reclaims expired
/// items nobody reads).
#[test]
fn maintenance_reclaims_expired_items() {
    let dir = tempfile::tempdir().unwrap();
    let pool = dir.path().join("m.pool");
    let s = common::Server::launch(&["-e", pool.to_str().unwrap()]);
    let mut c = s.connect();
    assert_eq!(
        call(&mut c, b"set a 0 1 1\r\nx\r\n", b"\r\n"),
        b"STORED\r\n"
    );
    assert_eq!(
        call(&mut c, b"set b 0 0 1\r\nx\r\n", b"\r\n"),
        b"STORED\r\n"
    );
    let t0 = Instant::now();
    loop {
        let st = call(&mut c, b"stats\r\n", b"END\r\n");
        if String::from_utf8_lossy(&st).contains("STAT curr_items 1\r\n") {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "expired item not reclaimed"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
