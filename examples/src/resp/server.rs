//! The TCP server: command line, backend opening and the RESP protocol's [`net::Service`]; the
//! accept loop, worker threads, per-connection pipelined processing and graceful shutdown are
//! [`net::run`]'s (shared with the memcached example).
//!
//! Threading follows the memcached example: the listener runs on the main thread and hands
//! accepted sockets round-robin to worker threads, each with its own single-threaded tokio
//! runtime, so a connection's wake-ups never hop threads.

use super::db::{unix_ms, Db};
use super::exec::{self, err, Flow, ServerInfo, Session};
use super::memdb::MemDb;
use super::pdb::PmemDb;
use crate::net;
use clap::Parser as ClapParser;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::signal::unix::SignalKind;

/// Default TCP port: 6380, one above Redis' 6379, so that both can run side by side.
pub const DEFAULT_PORT: u16 = 6380;
/// Most unconsumed request bytes a connection may hold (Redis' `client-query-buffer-limit`).
pub const QUERY_BUFFER_MAX: usize = 1024 * 1024 * 1024;
/// Keys the active expiry sweep reclaims per pass (10 passes a second).
const SWEEP_BUDGET: usize = 200;

/// Command line (Redis-like names).
#[derive(Debug, Clone, ClapParser)]
#[command(
    name = "pmem-redis",
    version = concat!(env!("CARGO_PKG_VERSION"), " (Redis 7.0 protocol subset)"),
    about = "A Redis-compatible (RESP2) key-value server over a pluggable storage backend"
)]
pub struct Args {
    /// TCP port (default 6380, so as not to clash with a Redis on 6379).
    #[arg(long, default_value_t = DEFAULT_PORT)]
    pub port: u16,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub bind: IpAddr,
    /// Worker threads.
    #[arg(long, default_value_t = 2)]
    pub threads: u32,
    /// Most simultaneous connections; beyond, `-ERR max number of clients reached`.
    #[arg(long, default_value_t = 10_000)]
    pub maxclients: u64,
    /// The pool file of the persistent backend.
    #[arg(long, default_value = "pmem-redis.pool")]
    pub pool: PathBuf,
    /// Size of a new pool (bytes, or with a k/m/g suffix).
    #[arg(long, default_value = "1g", value_parser = parse_size)]
    pub size: u64,
    /// Keep the data in DRAM (the reference backend; nothing survives a restart).
    #[arg(long)]
    pub memory: bool,
    /// Log connections and shutdown to stderr.
    #[arg(short = 'v', long)]
    pub verbose: bool,
}

/// Parses `123`, `64k`, `512m`, `2g`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.as_bytes().last() {
        Some(b'k' | b'K') => (&t[..t.len() - 1], 1u64 << 10),
        Some(b'm' | b'M') => (&t[..t.len() - 1], 1 << 20),
        Some(b'g' | b'G') => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid size {s:?} (use bytes or a k/m/g suffix)"))?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} too large"))
}

/// Which backend holds the keyspace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// [`MemDb`] in DRAM.
    Memory,
    /// The persistent backend on a pool file.
    Pool {
        /// Pool file.
        path: PathBuf,
        /// Size of a new pool in bytes.
        size: u64,
    },
}

impl Backend {
    /// The backend the command line selects.
    pub fn from_args(a: &Args) -> Backend {
        if a.memory {
            Backend::Memory
        } else {
            Backend::Pool {
                path: a.pool.clone(),
                size: a.size,
            }
        }
    }

    /// Its short name (INFO `backend`).
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Memory => "memory",
            Backend::Pool { .. } => "pmem",
        }
    }

    /// Opens it; a summary for the "ready" line.
    pub fn open(&self) -> Result<(Arc<dyn Db>, String), String> {
        match self {
            Backend::Memory => Ok((Arc::new(MemDb::new()), "memory backend (empty)".into())),
            Backend::Pool { path, size } => {
                let (db, msg) = PmemDb::open(path, *size)
                    .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
                Ok((Arc::new(db), msg))
            }
        }
    }
}

/// Checks option combinations clap cannot.
pub fn validate(a: &Args) -> Result<(), String> {
    if a.threads == 0 || a.threads > 256 {
        return Err("threads must be between 1 and 256".into());
    }
    if a.maxclients == 0 {
        return Err("maxclients must be at least 1".into());
    }
    if a.size < 1 << 20 {
        return Err("pool size must be at least 1m".into());
    }
    Ok(())
}

/// Entry point of the `pmem-redis` binary: parses the command line, runs the server and
/// returns the process exit code.
pub fn main_cli() -> std::process::ExitCode {
    net::exit_code("pmem-redis", run(Args::parse()))
}

/// Opens the backend, serves until a signal or `SHUTDOWN`, then shuts the backend down.
pub fn run(args: Args) -> Result<(), String> {
    validate(&args)?;
    let start = Instant::now();
    let backend = Backend::from_args(&args);
    let (db, summary) = backend.open()?;
    let info = Arc::new(ServerInfo::new(
        args.port,
        &args.bind.to_string(),
        args.threads,
        args.maxclients,
        backend.name(),
    ));
    let svc = Arc::new(RedisService {
        db,
        info,
        verbose: args.verbose,
    });
    let cfg = net::Config {
        name: "pmem-redis",
        worker_name: "redis-worker-",
        addr: SocketAddr::new(args.bind, args.port),
        threads: args.threads,
        signals: vec![SignalKind::terminate(), SignalKind::interrupt()],
        // Active expiry: a bounded sweep ten times a second.
        tick: Duration::from_millis(100),
        tick_at_start: true,
        start,
        summary,
    };
    let res = net::run(cfg, svc);
    if args.verbose {
        eprintln!("pmem-redis: stopped");
    }
    res
}

/// The RESP protocol over a backend, for [`net::run`].
struct RedisService {
    db: Arc<dyn Db>,
    info: Arc<ServerInfo>,
    verbose: bool,
}

impl net::Service for RedisService {
    type Conn = Session;
    // Like Redis' client-query-buffer-limit: drop the client.
    const MAX_PENDING: Option<usize> = Some(QUERY_BUFFER_MAX);

    fn connect(&self) -> Session {
        Session::new(&self.info)
    }

    fn process(&self, session: &mut Session, input: &[u8], out: &mut Vec<u8>) -> (usize, Flow) {
        exec::process(&*self.db, &self.info, session, input, out)
    }

    fn open_connections(&self) -> &AtomicU64 {
        &self.info.connected_clients
    }

    fn max_connections(&self) -> u64 {
        self.info.maxclients
    }

    fn accepted(&self) {
        self.info.total_connections.fetch_add(1, Ordering::Relaxed);
    }

    fn rejected(&self) -> String {
        self.info
            .rejected_connections
            .fetch_add(1, Ordering::Relaxed);
        format!("-{}\r\n", err::MAX_CLIENTS)
    }

    fn admitted(&self, peer: SocketAddr) {
        if self.verbose {
            eprintln!("pmem-redis: connection from {peer}");
        }
    }

    fn verbose(&self) -> bool {
        self.verbose
    }

    fn tick(&self) {
        let n = self.db.expire_sweep(unix_ms(), SWEEP_BUDGET);
        self.info.expired_keys.fetch_add(n, Ordering::Relaxed);
    }

    fn shutdown(&self) {
        self.db.shutdown();
    }
}
