//! The `pmem-redis` binary over TCP, for each backend in `common::resp::backends()`: options,
//! raw RESP round trips and pipelining, protocol errors, the connection limit, clean shutdown
//! by signal and by `SHUTDOWN`, `redis-cli` round trips and a bounded `redis-benchmark` run.
//!
//! Servers listen on free loopback ports and are stopped by PID. Without `redis-cli` or
//! `redis-benchmark` on the PATH those tests are skipped with a message, unless the `CI`
//! environment variable is set, in which case they fail.

mod common;
use common::resp::{backends, encode, run_tool, servers, REDIS_BIN, V};
use std::net::TcpListener;
use std::time::{Duration, Instant};

fn bad_options(args: &[&str], want: &str) {
    common::bad_options(REDIS_BIN, args, want);
}

#[test]
fn bad_options_fail_clearly() {
    bad_options(&["--port", "notaport"], "invalid value");
    bad_options(&["--memory", "--threads", "0"], "threads");
    bad_options(&["--memory", "--maxclients", "0"], "maxclients");
    bad_options(&["--size", "5x"], "invalid size");
    bad_options(&["--no-such-option"], "unexpected argument");
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port().to_string();
    bad_options(
        &["--memory", "--port", &port],
        "failed to listen on 127.0.0.1:",
    );
}

#[test]
fn round_trips_pipelining_and_big_values() {
    for (name, s) in servers(&[]) {
        eprintln!("backend {name}");
        let mut c = s.client();
        assert_eq!(c.c("PING"), V::Simple("PONG".into()));
        c.send_raw(b"PING\r\nping\n");
        assert_eq!(c.read(), V::Simple("PONG".into()));
        assert_eq!(c.read(), V::Simple("PONG".into()));
        // 1000 pipelined commands in one write
        let mut batch = Vec::new();
        for i in 0..1000 {
            batch.extend(encode(&[b"RPUSH", b"l", i.to_string().as_bytes()]));
        }
        c.send_raw(&batch);
        for i in 0..1000 {
            assert_eq!(c.read(), V::Int(i + 1));
        }
        let V::Arr(all) = c.c("LRANGE l 0 -1") else {
            panic!("lrange")
        };
        assert_eq!(all.len(), 1000);
        assert_eq!(all[999], V::b("999"));
        // a 4 MiB binary value, sent in pieces
        let big: Vec<u8> = (0..4 << 20).map(|i: u32| (i * 7 + i / 251) as u8).collect();
        let msg = encode(&[b"SET", b"big", &big]);
        for piece in msg.chunks(100_000) {
            c.send_raw(piece);
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(c.read(), V::ok());
        assert_eq!(c.w(&[b"GET", b"big"]), V::Bulk(big));
        // other connections see the same keyspace
        let mut d = s.client();
        assert_eq!(d.c("LLEN l"), V::Int(1000));
        assert_eq!(d.c("DBSIZE"), V::Int(2));
        assert_eq!(d.c("QUIT"), V::ok());
        assert!(d.closed());
        assert_eq!(c.c("DBSIZE"), V::Int(2));
    }
}

#[test]
fn protocol_errors_close_the_connection() {
    for (name, s) in servers(&[]) {
        eprintln!("backend {name}");
        let cases: [(&[u8], &str); 4] = [
            (
                b"*1\r\n$536870913\r\n",
                "ERR Protocol error: invalid bulk length",
            ),
            (b"*x\r\n", "ERR Protocol error: invalid multibulk length"),
            (b"*1\r\n:5\r\n", "ERR Protocol error: expected '$', got ':'"),
            (
                b"SET k \"abc\r\n",
                "ERR Protocol error: unbalanced quotes in request",
            ),
        ];
        for (req, want) in cases {
            let mut c = s.client();
            c.send_raw(b"PING\r\n");
            c.send_raw(req);
            assert_eq!(c.read(), V::Simple("PONG".into()));
            assert_eq!(c.read(), V::Err(want.into()));
            assert!(c.closed(), "{want}");
        }
        // A declared 512 MiB bulk is accepted and waits for its data, without the server
        // allocating it: the connection stays usable by others, and closing it is fine.
        let mut c = s.client();
        c.send_raw(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$536870912\r\nabc");
        let mut d = s.client();
        assert_eq!(d.c("PING"), V::Simple("PONG".into()));
        drop(c);
        // an inline command over 64 KiB without a newline
        let mut c = s.client();
        c.send_raw(&vec![b'a'; 70_000]);
        assert_eq!(
            c.read(),
            V::Err("ERR Protocol error: too big inline request".into())
        );
        assert!(c.closed());
        assert_eq!(d.c("PING"), V::Simple("PONG".into()));
    }
}

#[test]
fn connection_limit() {
    for (name, s) in servers(&["--maxclients", "2"]) {
        eprintln!("backend {name}");
        let mut a = s.client();
        let mut b = s.client();
        assert_eq!(a.c("PING"), V::Simple("PONG".into()));
        assert_eq!(b.c("PING"), V::Simple("PONG".into()));
        let mut c = s.client();
        assert_eq!(
            c.try_read(),
            Some(V::Err("ERR max number of clients reached".into()))
        );
        assert!(c.closed());
        drop(b);
        // the slot frees up once the server notices the close
        let t0 = Instant::now();
        loop {
            let mut c = s.client();
            c.send_raw(b"PING\r\n");
            if c.try_read() == Some(V::Simple("PONG".into())) {
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(10), "slot not freed");
            std::thread::sleep(Duration::from_millis(20));
        }
        let V::Bulk(info) = a.c("INFO stats") else {
            panic!("info")
        };
        // one refusal above, plus any retries made before the freed slot was noticed
        let info = String::from_utf8_lossy(&info).into_owned();
        let rejected: u64 = info
            .lines()
            .find_map(|l| l.strip_prefix("rejected_connections:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no rejected_connections in {info}"));
        assert!(rejected >= 1, "{info}");
    }
}

#[test]
fn clean_shutdown_by_signal_and_command() {
    for b in backends() {
        eprintln!("backend {}", b.name);
        for how in ["SIGTERM", "SIGINT", "SHUTDOWN"] {
            let Some(mut s) = b.server(&[]) else {
                continue;
            };
            let mut c = s.client();
            assert_eq!(c.c("SET k v"), V::ok());
            let t0 = Instant::now();
            match how {
                "SIGTERM" => s.signal(libc::SIGTERM),
                "SIGINT" => s.signal(libc::SIGINT),
                _ => {
                    c.send_raw(&encode(&[b"SHUTDOWN", b"NOSAVE"]));
                    assert_eq!(c.try_read(), None, "SHUTDOWN has no reply");
                }
            }
            let st = s.wait_exit();
            assert!(st.success(), "{how}: {st}");
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "{how} took {:?}",
                t0.elapsed()
            );
        }
    }
}

/// Runs redis-cli against the port; None if it is not installed (and CI is unset).
fn cli(port: u16, args: &[&str], stdin: Option<&[u8]>) -> Option<String> {
    let p = port.to_string();
    let all = [&["-h", "127.0.0.1", "-p", &p][..], args].concat();
    let (ok, out, err) = run_tool("redis-cli", &all, stdin, Duration::from_secs(30))?;
    assert!(ok, "redis-cli {args:?} failed: {out} {err}");
    Some(out)
}

#[test]
fn redis_cli_round_trips() {
    for (name, s) in servers(&[]) {
        eprintln!("backend {name}");
        let p = s.port;
        let Some(out) = cli(p, &["PING"], None) else {
            return;
        };
        assert_eq!(out, "PONG\n");
        // -x: the last argument from stdin, binary-safe (NUL, CR, LF, high bytes)
        let value: Vec<u8> = b"bin\x00\r\nary\xff\xfe end".to_vec();
        assert_eq!(cli(p, &["-x", "SET", "bk"], Some(&value)).unwrap(), "OK\n");
        let mut raw = s.client();
        assert_eq!(raw.c("GET bk"), V::Bulk(value));
        assert_eq!(cli(p, &["LPUSH", "l", "a", "b", "c"], None).unwrap(), "3\n");
        assert_eq!(
            cli(p, &["LRANGE", "l", "0", "-1"], None).unwrap(),
            "c\nb\na\n"
        );
        assert_eq!(
            cli(p, &["HSET", "h", "f1", "v1", "f2", "v2"], None).unwrap(),
            "2\n"
        );
        let h = cli(p, &["HGETALL", "h"], None).unwrap();
        let lines: Vec<&str> = h.lines().collect();
        assert_eq!(lines.len(), 4);
        let pairs: Vec<(&str, &str)> = lines.chunks(2).map(|p| (p[0], p[1])).collect();
        assert!(
            pairs.contains(&("f1", "v1")) && pairs.contains(&("f2", "v2")),
            "{h}"
        );
        assert_eq!(
            cli(p, &["ZADD", "z", "1.5", "a", "2", "b", "-inf", "c"], None).unwrap(),
            "3\n"
        );
        assert_eq!(
            cli(p, &["ZRANGE", "z", "0", "-1", "WITHSCORES"], None).unwrap(),
            "c\n-inf\na\n1.5\nb\n2\n"
        );
        assert_eq!(cli(p, &["DBSIZE"], None).unwrap(), "4\n");
        let info = cli(p, &["INFO"], None).unwrap();
        assert!(info.contains("redis_version:7.0.0"), "{info}");
        assert!(info.contains("db0:keys=4,expires=0"), "{info}");
        // several commands on stdin (one connection), as in scripts
        let out = cli(p, &[], Some(b"SET a 1\nINCR a\nGET a\nDEL a\n")).unwrap();
        assert_eq!(out, "OK\n2\n2\n1\n");
        // errors are printed, with Redis' text
        let out = cli(p, &["GET"], None).unwrap();
        assert_eq!(
            out.trim(),
            "ERR wrong number of arguments for 'get' command"
        );
        // SHUTDOWN from redis-cli stops the server cleanly
        let _ = run_tool(
            "redis-cli",
            &["-h", "127.0.0.1", "-p", &p.to_string(), "SHUTDOWN"],
            None,
            Duration::from_secs(30),
        );
        let mut s = s;
        assert!(s.wait_exit().success());
    }
}

#[test]
fn redis_benchmark_runs_clean() {
    let tests = "ping,set,get,incr,lpush,rpush,lpop,rpop,sadd,hset,spop,zadd,zpopmin,lrange,mset";
    let want = [
        "PING_INLINE",
        "PING_MBULK",
        "SET",
        "GET",
        "INCR",
        "LPUSH",
        "RPUSH",
        "LPOP",
        "RPOP",
        "SADD",
        "HSET",
        "SPOP",
        "ZADD",
        "ZPOPMIN",
        "LRANGE_100",
        "LRANGE_300",
        "LRANGE_500",
        "LRANGE_600",
        "MSET",
    ];
    for (name, s) in servers(&[]) {
        eprintln!("backend {name}");
        let port = s.port.to_string();
        let args = [
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-q",
            "-n",
            "2000",
            "-c",
            "8",
            "-P",
            "1",
            "-t",
            tests,
        ];
        let Some((ok, out, err)) =
            run_tool("redis-benchmark", &args, None, Duration::from_secs(240))
        else {
            return;
        };
        // -q overwrites progress lines with CR; the final lines hold "requests per second".
        let lines: Vec<&str> = out
            .split(['\n', '\r'])
            .filter(|l| l.contains("requests per second"))
            .collect();
        eprintln!("{}", lines.join("\n"));
        assert!(ok, "redis-benchmark failed: {out}\n{err}");
        assert!(err.trim().is_empty(), "redis-benchmark stderr: {err}");
        for l in out.split(['\n', '\r']) {
            let l = l.trim();
            assert!(
                l.is_empty() || l.contains("requests per second") || l.contains("rps="),
                "unexpected output line {l:?}"
            );
            assert!(!l.to_ascii_lowercase().contains("error"), "{l}");
        }
        for t in want {
            assert!(
                lines
                    .iter()
                    .any(|l| l.trim_start().starts_with(&format!("{t}:"))
                        || l.trim_start().starts_with(&format!("{t} "))),
                "no throughput line for {t}: {lines:?}"
            );
        }
        // the server is still healthy
        let mut c = s.client();
        assert_eq!(c.c("PING"), V::Simple("PONG".into()));
    }
}
