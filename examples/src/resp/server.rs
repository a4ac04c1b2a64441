//! The TCP server: command line, backend opening, accept loop, per-connection pipelined
//! processing and graceful shutdown.
//!
//! Threading follows the memcached example: the listener runs on the main thread and hands
//! accepted sockets round-robin to worker threads, each with its own single-threaded tokio
//! runtime, so a connection's wake-ups never hop threads.

use super::db::{unix_ms, Db};
use super::exec::{self, err, Flow, ServerInfo, Session};
use super::memdb::MemDb;
use super::pdb::PmemDb;
use clap::Parser as ClapParser;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

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
    let args = Args::parse();
    match run(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pmem-redis: {e}");
            std::process::ExitCode::FAILURE
        }
    }
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
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let stop_tx = Arc::new(stop_tx);
    let mut workers = Vec::new();
    for i in 0..args.threads {
        match spawn_worker(
            i,
            db.clone(),
            info.clone(),
            stop_rx.clone(),
            stop_tx.clone(),
        ) {
            Ok(w) => workers.push(w),
            Err(e) => {
                let _ = stop_tx.send(true);
                for w in workers {
                    let _ = w.handle.join();
                }
                return Err(format!("cannot start worker thread {i}: {e}"));
            }
        }
    }
    let addr = SocketAddr::new(args.bind, args.port);
    let txs: Vec<_> = workers.iter().map(|w| w.tx.clone()).collect();
    let ctx = ServeCtx {
        db: db.clone(),
        info,
        verbose: args.verbose,
    };
    let res = rt.block_on(serve(
        addr,
        ctx,
        start,
        summary,
        txs,
        (stop_tx.clone(), stop_rx),
    ));
    let _ = stop_tx.send(true);
    // In-flight commands finish (each worker drains its connections) before the backend
    // shuts down.
    for w in workers {
        let _ = w.handle.join();
    }
    db.shutdown();
    rt.shutdown_timeout(Duration::from_secs(1));
    if args.verbose {
        eprintln!("pmem-redis: stopped");
    }
    res
}

/// A worker thread: its event loop and the channel that hands it accepted sockets.
struct Worker {
    tx: tokio::sync::mpsc::UnboundedSender<std::net::TcpStream>,
    handle: std::thread::JoinHandle<()>,
}

fn spawn_worker(
    i: u32,
    db: Arc<dyn Db>,
    info: Arc<ServerInfo>,
    stop_rx: watch::Receiver<bool>,
    stop_tx: Arc<watch::Sender<bool>>,
) -> std::io::Result<Worker> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<std::net::TcpStream>();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let handle = std::thread::Builder::new()
        .name(format!("redis-worker-{i}"))
        .spawn(move || {
            rt.block_on(async move {
                let mut conns = tokio::task::JoinSet::new();
                let mut stop = stop_rx.clone();
                loop {
                    tokio::select! {
                        s = rx.recv() => {
                            let Some(s) = s else { break };
                            let Ok(sock) = TcpStream::from_std(s) else {
                                info.connected_clients.fetch_sub(1, Ordering::Relaxed);
                                continue;
                            };
                            let (db, info, stop_rx, stop_tx) =
                                (db.clone(), info.clone(), stop_rx.clone(), stop_tx.clone());
                            conns.spawn(async move {
                                if connection(sock, &*db, &info, stop_rx).await {
                                    let _ = stop_tx.send(true);
                                }
                                info.connected_clients.fetch_sub(1, Ordering::Relaxed);
                            });
                        }
                        _ = stop.changed() => break,
                        Some(_) = conns.join_next(), if !conns.is_empty() => {}
                    }
                }
                // Let in-flight commands finish (each connection stops at its next read).
                let drain = async { while conns.join_next().await.is_some() {} };
                if tokio::time::timeout(Duration::from_secs(5), drain)
                    .await
                    .is_err()
                {
                    conns.abort_all();
                    while conns.join_next().await.is_some() {}
                }
            })
        })?;
    Ok(Worker { tx, handle })
}

struct ServeCtx {
    db: Arc<dyn Db>,
    info: Arc<ServerInfo>,
    verbose: bool,
}

async fn serve(
    addr: SocketAddr,
    ctx: ServeCtx,
    start: Instant,
    summary: String,
    workers: Vec<tokio::sync::mpsc::UnboundedSender<std::net::TcpStream>>,
    (stop_tx, stop_rx): (Arc<watch::Sender<bool>>, watch::Receiver<bool>),
) -> Result<(), String> {
    use tokio::signal::unix::{signal, SignalKind};
    let ServeCtx { db, info, verbose } = ctx;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| format!("failed to listen on {addr}: {e}"))?;
    let bound = listener.local_addr().map_err(|e| e.to_string())?;
    eprintln!(
        "pmem-redis: ready in {} ms: {summary}, listening on {bound}",
        start.elapsed().as_millis()
    );
    let sig = |k| signal(k).map_err(|e| format!("cannot install signal handler: {e}"));
    let mut term = sig(SignalKind::terminate())?;
    let mut int = sig(SignalKind::interrupt())?;
    let mut conns = tokio::task::JoinSet::new();
    let mut next = 0usize;
    let mut stop_wait = stop_rx.clone();
    // Active expiry: a bounded sweep ten times a second.
    let sweeper = {
        let (db, info) = (db.clone(), info.clone());
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.changed() => break,
                }
                let db = db.clone();
                let n =
                    tokio::task::spawn_blocking(move || db.expire_sweep(unix_ms(), SWEEP_BUDGET))
                        .await
                        .unwrap_or(0);
                info.expired_keys.fetch_add(n, Ordering::Relaxed);
            }
        })
    };
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = stop_wait.changed() => break,
            acc = listener.accept() => {
                let (sock, peer) = match acc {
                    Ok(x) => x,
                    Err(e) => {
                        if verbose {
                            eprintln!("pmem-redis: accept: {e}");
                        }
                        // Out of descriptors and similar: back off briefly.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                info.total_connections.fetch_add(1, Ordering::Relaxed);
                let n = info.connected_clients.fetch_add(1, Ordering::Relaxed) + 1;
                if n > info.maxclients {
                    info.connected_clients.fetch_sub(1, Ordering::Relaxed);
                    info.rejected_connections.fetch_add(1, Ordering::Relaxed);
                    conns.spawn(async move {
                        let mut sock = sock;
                        let msg = format!("-{}\r\n", err::MAX_CLIENTS);
                        let _ = sock.write_all(msg.as_bytes()).await;
                        let _ = sock.shutdown().await;
                    });
                    continue;
                }
                if verbose {
                    eprintln!("pmem-redis: connection from {peer}");
                }
                let _ = sock.set_nodelay(true);
                let handed = sock.into_std().ok().and_then(|s| {
                    next = next.wrapping_add(1);
                    workers.get(next % workers.len().max(1))?.send(s).ok()
                });
                if handed.is_none() {
                    info.connected_clients.fetch_sub(1, Ordering::Relaxed);
                }
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let _ = sweeper.await;
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if verbose {
        eprintln!("pmem-redis: shutting down");
    }
    Ok(())
}

/// Serves one connection; true if it asked for a server shutdown.
async fn connection(
    mut sock: TcpStream,
    db: &dyn Db,
    info: &ServerInfo,
    mut stop: watch::Receiver<bool>,
) -> bool {
    let mut session = Session::new(info);
    let mut rbuf: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut out: Vec<u8> = Vec::with_capacity(16 * 1024);
    loop {
        if *stop.borrow() {
            return false;
        }
        if rbuf.len() > QUERY_BUFFER_MAX {
            // Like Redis' client-query-buffer-limit: drop the client.
            return false;
        }
        if rbuf.capacity() - rbuf.len() < 4096 {
            rbuf.reserve(16 * 1024);
        }
        tokio::select! {
            r = sock.read_buf(&mut rbuf) => match r {
                Ok(0) | Err(_) => return false,
                Ok(_) => {}
            },
            _ = stop.changed() => return false,
        }
        let (used, flow) = exec::process(db, info, &mut session, &rbuf, &mut out);
        rbuf.drain(..used);
        if !out.is_empty() {
            if sock.write_all(&out).await.is_err() {
                return false;
            }
            if out.capacity() > 4 * 1024 * 1024 {
                out = Vec::with_capacity(16 * 1024);
            } else {
                out.clear();
            }
        }
        if rbuf.is_empty() && rbuf.capacity() > 4 * 1024 * 1024 {
            rbuf = Vec::with_capacity(16 * 1024);
        }
        match flow {
            Flow::Continue => {}
            Flow::Close => {
                let _ = sock.shutdown().await;
                return false;
            }
            Flow::Shutdown => {
                let _ = sock.shutdown().await;
                return true;
            }
        }
    }
}
