//! Shared by the `resp_*` tests: the backends under test, a RESP reply decoder, an exec-level
//! client with a controllable clock, a `pmem-redis` process and a blocking TCP client.

use pmem_examples::resp::db::{Db, DbResult, Expiry, SetCond};
use pmem_examples::resp::exec::{self, Flow, ServerInfo, Session};
use pmem_examples::resp::memdb::MemDb;
use pmem_examples::resp::pdb::PmemDb;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const REDIS_BIN: &str = env!("CARGO_BIN_EXE_pmem-redis");

/// A backend under test. Both constructors get a fresh scratch directory (for pool files),
/// which lives as long as the keyspace or server made with it.
pub struct Backend {
    pub name: &'static str,
    /// An empty keyspace, for exec-level tests.
    pub make: fn(&Path) -> Arc<dyn Db>,
    /// The `pmem-redis` options that select it; None for a backend the binary cannot select
    /// (tested at the exec level only).
    pub server_args: Option<fn(&Path) -> Vec<String>>,
}

impl Backend {
    /// An exec-level client on an empty keyspace of this backend.
    pub fn exec_client(&self) -> ExecClient {
        let dir = tempfile::tempdir().expect("scratch directory");
        let db = (self.make)(dir.path());
        let mut c = ExecClient::new(db);
        c._dir = Some(dir);
        c
    }

    /// A `pmem-redis` process on this backend, with `extra` options; None for an exec-only
    /// backend.
    pub fn server(&self, extra: &[&str]) -> Option<RedisServer> {
        let dir = tempfile::tempdir().expect("scratch directory");
        let mut args = (self.server_args?)(dir.path());
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut s = RedisServer::launch(&args);
        s._dir = Some(dir);
        Some(s)
    }
}

/// A `pmem-redis` process with `extra` options on each backend the binary can select.
pub fn servers(extra: &[&str]) -> Vec<(&'static str, RedisServer)> {
    backends()
        .into_iter()
        .filter_map(|b| Some((b.name, b.server(extra)?)))
        .collect()
}

/// Every backend the generic tests run against. A new backend is one more entry here.
pub fn backends() -> Vec<Backend> {
    vec![
        Backend {
            name: "memory",
            make: |_| Arc::new(MemDb::new()),
            server_args: Some(|_| vec!["--memory".into()]),
        },
        Backend {
            name: "memory, required methods only",
            make: |_| Arc::new(RequiredOnly::default()),
            server_args: None,
        },
        Backend {
            name: "pmem",
            make: |dir| Arc::new(PmemDb::open(&dir.join("t.pool"), 32 << 20).unwrap().0),
            server_args: Some(|dir| {
                let pool = dir.join("redis.pool").display().to_string();
                vec!["--pool".into(), pool, "--size".into(), "64m".into()]
            }),
        },
    ]
}

/// A decoded RESP2 reply.
#[derive(Clone, Debug, PartialEq)]
pub enum V {
    Simple(String),
    Err(String),
    Int(i64),
    Bulk(Vec<u8>),
    Nil,
    Arr(Vec<V>),
    NilArr,
}

impl V {
    pub fn b(s: &str) -> V {
        V::Bulk(s.as_bytes().to_vec())
    }
    pub fn ok() -> V {
        V::Simple("OK".into())
    }
    pub fn arr(items: &[&str]) -> V {
        V::Arr(items.iter().map(|s| V::b(s)).collect())
    }
    /// The bulk strings of an array reply, sorted (for replies in no particular order).
    pub fn sorted(&self) -> Vec<String> {
        let V::Arr(items) = self else {
            panic!("not an array: {self:?}")
        };
        let mut v: Vec<String> = items
            .iter()
            .map(|i| match i {
                V::Bulk(b) => String::from_utf8_lossy(b).into_owned(),
                other => panic!("not a bulk string: {other:?}"),
            })
            .collect();
        v.sort();
        v
    }
    pub fn is_err(&self) -> bool {
        matches!(self, V::Err(_))
    }
}

fn line(b: &[u8]) -> Option<(&[u8], usize)> {
    let p = b.windows(2).position(|w| w == b"\r\n")?;
    Some((&b[..p], p + 2))
}

/// Decodes one reply from the front of `b`: the value and its length, None if incomplete.
pub fn decode(b: &[u8]) -> Option<(V, usize)> {
    let (&t, _) = b.split_first()?;
    let (l, n) = line(&b[1..])?;
    let n = n + 1;
    let s = String::from_utf8_lossy(l).into_owned();
    match t {
        b'+' => Some((V::Simple(s), n)),
        b'-' => Some((V::Err(s), n)),
        b':' => Some((V::Int(s.parse().expect("integer reply")), n)),
        b'$' => {
            let len: i64 = s.parse().expect("bulk length");
            if len < 0 {
                return Some((V::Nil, n));
            }
            let len = len as usize;
            if b.len() < n + len + 2 {
                return None;
            }
            assert_eq!(&b[n + len..n + len + 2], b"\r\n", "bulk terminator");
            Some((V::Bulk(b[n..n + len].to_vec()), n + len + 2))
        }
        b'*' => {
            let len: i64 = s.parse().expect("array length");
            if len < 0 {
                return Some((V::NilArr, n));
            }
            let mut pos = n;
            let mut items = Vec::new();
            for _ in 0..len {
                let (v, m) = decode(&b[pos..])?;
                items.push(v);
                pos += m;
            }
            Some((V::Arr(items), pos))
        }
        other => panic!(
            "bad reply type byte {other:?} in {:?}",
            String::from_utf8_lossy(b)
        ),
    }
}

/// Decodes a buffer holding exactly one reply.
pub fn decode_one(b: &[u8]) -> V {
    let (v, n) =
        decode(b).unwrap_or_else(|| panic!("incomplete reply {:?}", String::from_utf8_lossy(b)));
    assert_eq!(n, b.len(), "trailing bytes after {v:?}");
    v
}

/// A client that runs commands straight through the exec layer, with its own clock.
pub struct ExecClient {
    pub db: Arc<dyn Db>,
    pub info: ServerInfo,
    pub session: Session,
    /// The `now_ms` passed to the commands.
    pub now: u64,
    /// The backend's scratch directory, if any (removed on drop).
    pub _dir: Option<tempfile::TempDir>,
}

impl ExecClient {
    pub fn new(db: Arc<dyn Db>) -> ExecClient {
        let info = ServerInfo::for_tests();
        let session = Session::new(&info);
        ExecClient {
            db,
            info,
            session,
            now: 1_700_000_000_000,
            _dir: None,
        }
    }

    /// Runs one command given as words; its reply and flow.
    pub fn run(&mut self, words: &[&[u8]]) -> (V, Flow) {
        let mut out = Vec::new();
        let flow = exec::execute(
            &*self.db,
            &self.info,
            &mut self.session,
            words,
            self.now,
            &mut out,
        );
        if out.is_empty() {
            return (V::NilArr, flow);
        }
        (decode_one(&out), flow)
    }

    /// Runs a command written as space-separated words.
    pub fn c(&mut self, cmd: &str) -> V {
        let words: Vec<&[u8]> = cmd.split_whitespace().map(str::as_bytes).collect();
        self.run(&words).0
    }

    /// Runs a command given as words.
    pub fn w(&mut self, words: &[&[u8]]) -> V {
        self.run(words).0
    }
}

/// A `pmem-redis` process on loopback. Killed (SIGKILL) on drop if still running.
pub struct RedisServer {
    pub child: Child,
    pub port: u16,
    pub log: Arc<Mutex<Vec<String>>>,
    /// The backend's scratch directory, if any (removed after the process is stopped).
    pub _dir: Option<tempfile::TempDir>,
}

impl RedisServer {
    /// A server with these options on a free port; waits (bounded) for its "ready" line.
    pub fn launch(args: &[&str]) -> RedisServer {
        let port = super::free_port();
        let (child, log) = super::spawn_logged(
            Command::new(REDIS_BIN)
                .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
                .args(args),
        );
        let mut s = RedisServer {
            child,
            port,
            log,
            _dir: None,
        };
        super::wait_ready(&mut s.child, &s.log);
        s
    }

    pub fn client(&self) -> RespClient {
        RespClient::connect(self.port)
    }

    pub fn signal(&self, sig: i32) {
        super::signal(&self.child, sig);
    }

    /// Waits (bounded) for the exit status.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        super::wait_exit(&mut self.child, &self.log, Duration::from_secs(30))
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        super::kill_if_running(&mut self.child);
    }
}

/// Encodes a command as a RESP array of bulk strings.
pub fn encode(words: &[&[u8]]) -> Vec<u8> {
    let mut m = format!("*{}\r\n", words.len()).into_bytes();
    for w in words {
        m.extend_from_slice(format!("${}\r\n", w.len()).as_bytes());
        m.extend_from_slice(w);
        m.extend_from_slice(b"\r\n");
    }
    m
}

/// A blocking RESP client.
pub struct RespClient {
    pub s: TcpStream,
    buf: Vec<u8>,
}

impl RespClient {
    pub fn connect(port: u16) -> RespClient {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.set_nodelay(true).unwrap();
        RespClient { s, buf: Vec::new() }
    }

    pub fn send_raw(&mut self, b: &[u8]) {
        self.s.write_all(b).unwrap();
    }

    /// The next reply; None if the server closed the connection first.
    pub fn try_read(&mut self) -> Option<V> {
        let mut chunk = [0u8; 65536];
        loop {
            if let Some((v, n)) = decode(&self.buf) {
                self.buf.drain(..n);
                return Some(v);
            }
            let n = self.s.read(&mut chunk).ok()?;
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    pub fn read(&mut self) -> V {
        self.try_read().expect("connection closed")
    }

    /// Sends a command (words) and reads its reply.
    pub fn w(&mut self, words: &[&[u8]]) -> V {
        self.send_raw(&encode(words));
        self.read()
    }

    /// Sends a command and reads its reply; None if the connection broke (server killed).
    pub fn try_w(&mut self, words: &[&[u8]]) -> Option<V> {
        self.s.write_all(&encode(words)).ok()?;
        self.try_read()
    }

    /// Sends a command written as space-separated words.
    pub fn c(&mut self, cmd: &str) -> V {
        let words: Vec<&[u8]> = cmd.split_whitespace().map(str::as_bytes).collect();
        self.w(&words)
    }

    /// Whether the server closed the connection (reads until EOF, bounded by the timeout).
    pub fn closed(&mut self) -> bool {
        let mut chunk = [0u8; 4096];
        loop {
            match self.s.read(&mut chunk) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    }
}

/// Runs a tool of redis-tools (redis-cli, redis-benchmark) with a time limit; see
/// [`super::run_tool_from`].
pub fn run_tool(
    tool: &str,
    args: &[&str],
    stdin: Option<&[u8]>,
    limit: Duration,
) -> Option<(bool, String, String)> {
    super::run_tool_from("redis-tools", tool, args, stdin, limit)
        .map(|(status, out, err)| (status.success(), out, err))
}

/// A backend that implements only the required methods of [`Db`] (delegating to [`MemDb`]),
/// so that the exec-level tests also cover the trait's provided methods, which a new backend
/// may rely on.
#[derive(Debug, Default)]
pub struct RequiredOnly(MemDb);

impl Db for RequiredOnly {
    fn dbsize(&self, now_ms: u64) -> u64 {
        self.0.dbsize(now_ms)
    }
    fn exists(&self, key: &[u8], now_ms: u64) -> bool {
        self.0.exists(key, now_ms)
    }
    fn del(&self, key: &[u8], now_ms: u64) -> DbResult<bool> {
        self.0.del(key, now_ms)
    }
    fn flushall(&self) -> DbResult<()> {
        self.0.flushall()
    }
    fn set_expiry(&self, key: &[u8], at_ms: Option<u64>, now_ms: u64) -> DbResult<bool> {
        self.0.set_expiry(key, at_ms, now_ms)
    }
    fn expiry(&self, key: &[u8], now_ms: u64) -> Option<Option<u64>> {
        self.0.expiry(key, now_ms)
    }
    fn get(&self, key: &[u8], now_ms: u64) -> DbResult<Option<Vec<u8>>> {
        self.0.get(key, now_ms)
    }
    fn set(
        &self,
        key: &[u8],
        value: &[u8],
        cond: SetCond,
        expiry: Expiry,
        now_ms: u64,
    ) -> DbResult<bool> {
        self.0.set(key, value, cond, expiry, now_ms)
    }
    fn mset(&self, pairs: &[(&[u8], &[u8])], now_ms: u64) -> DbResult<()> {
        self.0.mset(pairs, now_ms)
    }
    fn incr_by(&self, key: &[u8], delta: i64, now_ms: u64) -> DbResult<i64> {
        self.0.incr_by(key, delta, now_ms)
    }
    fn push(&self, key: &[u8], values: &[&[u8]], front: bool, now_ms: u64) -> DbResult<u64> {
        self.0.push(key, values, front, now_ms)
    }
    fn pop(&self, key: &[u8], front: bool, count: usize, now_ms: u64) -> DbResult<Vec<Vec<u8>>> {
        self.0.pop(key, front, count, now_ms)
    }
    fn lrange(&self, key: &[u8], start: i64, stop: i64, now_ms: u64) -> DbResult<Vec<Vec<u8>>> {
        self.0.lrange(key, start, stop, now_ms)
    }
    fn llen(&self, key: &[u8], now_ms: u64) -> DbResult<u64> {
        self.0.llen(key, now_ms)
    }
    fn hset(&self, key: &[u8], pairs: &[(&[u8], &[u8])], now_ms: u64) -> DbResult<u64> {
        self.0.hset(key, pairs, now_ms)
    }
    fn hget(&self, key: &[u8], field: &[u8], now_ms: u64) -> DbResult<Option<Vec<u8>>> {
        self.0.hget(key, field, now_ms)
    }
    fn hdel(&self, key: &[u8], fields: &[&[u8]], now_ms: u64) -> DbResult<u64> {
        self.0.hdel(key, fields, now_ms)
    }
    fn hgetall(&self, key: &[u8], now_ms: u64) -> DbResult<Vec<(Vec<u8>, Vec<u8>)>> {
        self.0.hgetall(key, now_ms)
    }
    fn sadd(&self, key: &[u8], members: &[&[u8]], now_ms: u64) -> DbResult<u64> {
        self.0.sadd(key, members, now_ms)
    }
    fn srem(&self, key: &[u8], members: &[&[u8]], now_ms: u64) -> DbResult<u64> {
        self.0.srem(key, members, now_ms)
    }
    fn smembers(&self, key: &[u8], now_ms: u64) -> DbResult<Vec<Vec<u8>>> {
        self.0.smembers(key, now_ms)
    }
    fn spop(&self, key: &[u8], count: usize, now_ms: u64) -> DbResult<Vec<Vec<u8>>> {
        self.0.spop(key, count, now_ms)
    }
    fn scard(&self, key: &[u8], now_ms: u64) -> DbResult<u64> {
        self.0.scard(key, now_ms)
    }
    fn zadd(&self, key: &[u8], pairs: &[(f64, &[u8])], now_ms: u64) -> DbResult<u64> {
        self.0.zadd(key, pairs, now_ms)
    }
    fn zrange(
        &self,
        key: &[u8],
        start: i64,
        stop: i64,
        now_ms: u64,
    ) -> DbResult<Vec<(Vec<u8>, f64)>> {
        self.0.zrange(key, start, stop, now_ms)
    }
    fn zpopmin(&self, key: &[u8], count: usize, now_ms: u64) -> DbResult<Vec<(Vec<u8>, f64)>> {
        self.0.zpopmin(key, count, now_ms)
    }
    fn zcard(&self, key: &[u8], now_ms: u64) -> DbResult<u64> {
        self.0.zcard(key, now_ms)
    }
    fn info(&self) -> Vec<(String, String)> {
        self.0.info()
    }
}
