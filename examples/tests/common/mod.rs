//! Shared by the restart and kill tests: a `pmem-memcached` process on a pool file and a
//! minimal text-protocol client; [`resp`] holds the helpers of the `pmem-redis` tests.
#![allow(dead_code, unreachable_pub, missing_docs)]

pub mod resp;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_pmem-memcached");

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `pmem-memcached` process on loopback. Killed (SIGKILL) on drop if still running.
pub struct Server {
    pub child: Child,
    pub port: u16,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// A server on a pool file with `shutdown` enabled.
    pub fn start(pool: &Path, port: u16, extra: &[&str]) -> Server {
        let pool = pool.to_str().expect("UTF-8 path");
        Server::launch_on(port, &[&["-A", "-e", pool], extra].concat())
    }

    /// A server with exactly these options, on a free port.
    pub fn launch(args: &[&str]) -> Server {
        Server::launch_on(free_port(), args)
    }

    /// A server with exactly these options on `port`; waits (bounded) for its "ready" line.
    pub fn launch_on(port: u16, args: &[&str]) -> Server {
        let (child, log) = spawn_logged(
            Command::new(BIN)
                .args(["-l", "127.0.0.1", "-p", &port.to_string()])
                .args(args),
        );
        let mut s = Server { child, port, log };
        wait_ready(&mut s.child, &s.log);
        s
    }

    /// A raw connection (10 s read timeout).
    pub fn connect(&self) -> TcpStream {
        connect(self.port)
    }

    /// The "ready" log line.
    pub fn ready_line(&self) -> String {
        self.log
            .lock()
            .unwrap()
            .iter()
            .find(|l| l.contains("ready in"))
            .cloned()
            .unwrap_or_default()
    }

    pub fn client(&self) -> Client {
        Client::connect(self.port)
    }

    pub fn signal(&self, sig: i32) {
        signal(&self.child, sig);
    }

    /// Waits (bounded) for the exit status.
    pub fn wait_exit(&mut self) -> ExitStatus {
        wait_exit(&mut self.child, &self.log, Duration::from_secs(60))
    }

    /// kill -9 and reap.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        kill_if_running(&mut self.child);
    }
}

/// A blocking text-protocol client.
pub struct Client {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

/// One `VALUE` of a get reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Value {
    pub key: String,
    pub flags: u32,
    pub cas: Option<u64>,
    pub data: Vec<u8>,
}

impl Client {
    pub fn connect(port: u16) -> Client {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.set_nodelay(true).unwrap();
        Client {
            r: BufReader::new(s.try_clone().unwrap()),
            w: s,
        }
    }

    pub fn try_line(&mut self) -> std::io::Result<String> {
        let mut l = String::new();
        if self.r.read_line(&mut l)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        Ok(l.trim_end_matches("\r\n").to_string())
    }

    pub fn line(&mut self) -> String {
        self.try_line().unwrap()
    }

    /// Sends a command line without waiting for a reply.
    pub fn send(&mut self, line: &str) {
        self.w.write_all(format!("{line}\r\n").as_bytes()).unwrap();
    }

    /// Sends a command line and returns the one-line reply.
    pub fn cmd(&mut self, line: &str) -> String {
        self.w.write_all(format!("{line}\r\n").as_bytes()).unwrap();
        self.line()
    }

    pub fn try_store(
        &mut self,
        verb: &str,
        key: &str,
        flags: u32,
        exp: i64,
        data: &[u8],
    ) -> std::io::Result<String> {
        let mut m = format!("{verb} {key} {flags} {exp} {}\r\n", data.len()).into_bytes();
        m.extend_from_slice(data);
        m.extend_from_slice(b"\r\n");
        self.w.write_all(&m)?;
        self.try_line()
    }

    pub fn set(&mut self, key: &str, flags: u32, exp: i64, data: &[u8]) -> String {
        self.try_store("set", key, flags, exp, data).unwrap()
    }

    /// `get`/`gets` of several keys.
    pub fn try_get(&mut self, verb: &str, keys: &[&str]) -> std::io::Result<Vec<Value>> {
        self.w
            .write_all(format!("{verb} {}\r\n", keys.join(" ")).as_bytes())?;
        let mut out = Vec::new();
        loop {
            let l = self.try_line()?;
            if l == "END" {
                return Ok(out);
            }
            let f: Vec<&str> = l.split(' ').collect();
            assert_eq!(f[0], "VALUE", "unexpected reply {l:?}");
            let len: usize = f[3].parse().unwrap();
            let mut data = vec![0u8; len + 2];
            self.r.read_exact(&mut data)?;
            assert_eq!(&data[len..], b"\r\n");
            data.truncate(len);
            out.push(Value {
                key: f[1].to_string(),
                flags: f[2].parse().unwrap(),
                cas: f.get(4).map(|c| c.parse().unwrap()),
                data,
            });
        }
    }

    pub fn gets(&mut self, keys: &[&str]) -> Vec<Value> {
        self.try_get("gets", keys).unwrap()
    }

    pub fn get1(&mut self, key: &str) -> Option<Value> {
        self.gets(&[key]).pop()
    }

    /// `stats` as a map.
    pub fn stats(&mut self) -> std::collections::HashMap<String, String> {
        self.w.write_all(b"stats\r\n").unwrap();
        let mut m = std::collections::HashMap::new();
        loop {
            let l = self.line();
            if l == "END" {
                return m;
            }
            let mut f = l.splitn(3, ' ');
            f.next();
            let k = f.next().unwrap_or_default().to_string();
            m.insert(k, f.next().unwrap_or_default().to_string());
        }
    }
}

// ---- checksummed values of the kill -9 loops (memcached and RESP)

/// FNV-1a.
pub fn fnv(b: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for &x in b {
        h = (h ^ x as u64).wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// `key|version|` + payload + 16 hex digits of checksum.
pub fn make_value(key: &str, version: u64, len: usize) -> Vec<u8> {
    let mut v = format!("{key}|{version}|").into_bytes();
    v.extend((0..len).map(|i| (version as usize * 7 + i * 31) as u8));
    let sum = fnv(&v);
    v.extend_from_slice(format!("{sum:016x}").as_bytes());
    v
}

/// Verifies a value; returns its version.
pub fn check_value(key: &str, v: &[u8]) -> Result<u64, String> {
    if v.len() < 16 {
        return Err(format!("{key}: value too short ({} bytes)", v.len()));
    }
    let (body, sum) = v.split_at(v.len() - 16);
    if format!("{:016x}", fnv(body)).as_bytes() != sum {
        return Err(format!("{key}: checksum mismatch (torn or mixed value)"));
    }
    let s = String::from_utf8_lossy(body);
    let mut f = s.splitn(3, '|');
    let (k, ver) = (f.next().unwrap_or(""), f.next().unwrap_or(""));
    if k != key {
        return Err(format!("{key}: value belongs to key {k}"));
    }
    ver.parse().map_err(|_| format!("{key}: bad version"))
}

/// Waits (bounded, 60 s) for a server's "ready in" log line; panics with its log if it exits
/// or never gets there.
pub fn wait_ready(child: &mut Child, log: &Mutex<Vec<String>>) {
    let t0 = Instant::now();
    while !log.lock().unwrap().iter().any(|l| l.contains("ready in")) {
        if let Some(st) = child.try_wait().unwrap() {
            panic!("server exited with {st}: {:?}", log.lock().unwrap());
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "server did not start: {:?}",
            log.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A raw connection to a loopback port (10 s read timeout).
pub fn connect(port: u16) -> TcpStream {
    let c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c
}

/// Sends `req` and reads until the reply ends with `end`.
pub fn call(c: &mut TcpStream, req: &[u8], end: &[u8]) -> Vec<u8> {
    c.write_all(req).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 65536];
    while !got.ends_with(end) {
        let n = c.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "connection closed; got {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    got
}

// ---- server processes (pmem-memcached and pmem-redis)

/// Spawns `cmd` (stdin and stdout null) and collects its stderr lines in the returned log.
pub fn spawn_logged(cmd: &mut Command) -> (Child, Arc<Mutex<Vec<String>>>) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {:?}: {e}", cmd.get_program()));
    let log = Arc::new(Mutex::new(Vec::new()));
    let stderr = child.stderr.take().unwrap();
    let l2 = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            l2.lock().unwrap().push(line);
        }
    });
    (child, log)
}

/// Sends `sig` to a child process.
pub fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) on our own child's PID; no memory is involved.
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, sig) };
    assert_eq!(rc, 0);
}

/// Waits (bounded by `limit`) for a server's exit status; panics with its log on timeout.
pub fn wait_exit(child: &mut Child, log: &Mutex<Vec<String>>, limit: Duration) -> ExitStatus {
    let t0 = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        assert!(
            t0.elapsed() < limit,
            "server did not exit: {:?}",
            log.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// kill -9 and reap, if the process still runs (for `Drop`).
pub fn kill_if_running(child: &mut Child) {
    if let Ok(None) = child.try_wait() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Runs `bin` with `args`, which must fail with a message containing `want` (and no panic).
pub fn bad_options(bin: &str, args: &[&str], want: &str) {
    let out = Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} succeeded");
    assert!(err.contains(want), "{args:?}: {err}");
    assert!(!err.contains("panicked"), "{args:?}: {err}");
}

/// Spawns `cmd`, a tool of the Debian package `package`; None if it is not installed and CI
/// is unset (CI set: a missing tool fails the test).
pub fn spawn_tool(cmd: &mut Command, package: &str) -> Option<Child> {
    let tool = cmd.get_program().to_string_lossy().into_owned();
    match cmd.spawn() {
        Ok(c) => Some(c),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if std::env::var_os("CI").is_some() {
                panic!("{tool} is not installed ({package}); required when CI is set");
            }
            eprintln!("skipping: {tool} is not installed (apt-get install {package})");
            None
        }
        Err(e) => panic!("cannot run {tool}: {e}"),
    }
}

/// Runs a tool of the Debian package `package` with a time limit; None if it is not installed
/// and CI is unset (CI set: a missing tool fails the test). Returns (status, stdout, stderr).
pub fn run_tool_from(
    package: &str,
    tool: &str,
    args: &[&str],
    stdin: Option<&[u8]>,
    limit: Duration,
) -> Option<(ExitStatus, String, String)> {
    let mut child = spawn_tool(
        Command::new(tool)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
        package,
    )?;
    if let Some(input) = stdin {
        let mut si = child.stdin.take().unwrap();
        si.write_all(input).unwrap();
    }
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out_t = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = stdout.read_to_end(&mut s);
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = stderr.read_to_end(&mut s);
        s
    });
    let t0 = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{tool} {args:?} timed out");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let out = String::from_utf8_lossy(&out_t.join().unwrap()).into_owned();
    let err = String::from_utf8_lossy(&err_t.join().unwrap()).into_owned();
    Some((status, out, err))
}

/// Starts the writer threads of a kill loop: writer `w` (of `writers`) runs `write(w, rng,
/// stop)` with its own generator, seeded from `rng` in writer order, and returns how many
/// commands it sent. [`stop_writers`] stops them.
pub fn spawn_writers<F>(
    writers: u64,
    rng: &mut StdRng,
    stop: &Arc<AtomicBool>,
    write: F,
) -> Vec<std::thread::JoinHandle<u64>>
where
    F: Fn(u64, &mut StdRng, &AtomicBool) -> u64 + Clone + Send + 'static,
{
    (0..writers)
        .map(|w| {
            let (stop, write) = (stop.clone(), write.clone());
            let seed = rng.gen::<u64>();
            std::thread::spawn(move || write(w, &mut StdRng::seed_from_u64(seed), &stop))
        })
        .collect()
}

/// Stops the writer threads of a kill loop (after the kill) and returns the most commands one
/// of them sent, so that the next iteration's versions start above all of theirs.
pub fn stop_writers(stop: &AtomicBool, writers: Vec<std::thread::JoinHandle<u64>>) -> u64 {
    stop.store(true, Ordering::Relaxed);
    let mut most = 0;
    for h in writers {
        most = most.max(h.join().unwrap());
    }
    most
}
