//! The TCP server: command line (mirroring memcached's), store opening, privilege drop,
//! accept loop, per-connection pipelined processing and graceful shutdown.

use super::exec::{self, Flow, ServerInfo};
use super::memstore::MemStore;
use super::proto::{err, Parser};
use super::pstore::{PmemStore, PmemStoreConfig};
use super::store::{CacheStore, Ctr};
use clap::{ArgAction, Parser as ClapParser, ValueEnum};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Which store backs the cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StoreKind {
    /// The persistent store in the pool file (`-e`).
    Pmem,
    /// The DRAM reference model (testing; nothing survives a restart).
    Memory,
}

/// Command line, mirroring memcached's options.
#[derive(Debug, Clone, ClapParser)]
#[command(
    name = "pmem-memcached",
    version = concat!(env!("CARGO_PKG_VERSION"), " (memcached 1.6.21 protocol)"),
    about = "A memcached-compatible cache whose items survive restarts and crashes (pmem pool)"
)]
pub struct Args {
    /// TCP port to listen on.
    #[arg(short = 'p', long = "port", default_value_t = 11211)]
    pub port: u16,
    /// Interface to listen on.
    #[arg(short = 'l', long = "listen", default_value = "127.0.0.1")]
    pub listen: IpAddr,
    /// Item memory in megabytes.
    #[arg(short = 'm', long = "memory-limit", default_value_t = 64)]
    pub memory_limit: u64,
    /// Max simultaneous connections.
    #[arg(short = 'c', long = "conn-limit", default_value_t = 1024)]
    pub conn_limit: u64,
    /// Number of worker threads.
    #[arg(short = 't', long = "threads", default_value_t = 4)]
    pub threads: u32,
    /// Max item size (bytes, or with a k/m suffix), 1k..=1g, at most half the memory limit.
    #[arg(short = 'I', long = "max-item-size", default_value = "1m", value_parser = parse_size)]
    pub max_item_size: usize,
    /// Verbose (repeat for more).
    #[arg(short = 'v', action = ArgAction::Count)]
    pub verbose: u8,
    /// The pool file holding the items.
    #[arg(
        short = 'e',
        long = "memory-file",
        default_value = "pmem-memcached.pool"
    )]
    pub memory_file: PathBuf,
    /// UDP port: only 0 (UDP off) is supported.
    #[arg(short = 'U', long = "udp-port", default_value_t = 0, value_parser = parse_udp)]
    pub udp_port: u16,
    /// When started as root, drop privileges to this user after opening the store.
    #[arg(short = 'u', long = "user")]
    pub user: Option<String>,
    /// Enable the `shutdown` command.
    #[arg(short = 'A', long = "enable-shutdown")]
    pub enable_shutdown: bool,
    /// Make every acknowledged write durable before the reply.
    #[arg(long)]
    pub durable: bool,
    /// Refuse page-cache mappings: the pool must be on DAX storage.
    #[arg(long)]
    pub require_dax: bool,
    /// Store implementation (testing).
    #[arg(long = "store", value_enum, default_value = "pmem", hide = true)]
    pub store: StoreKind,
}

fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let (num, mult) = match t.as_bytes().last() {
        Some(b'k' | b'K') => (&t[..t.len() - 1], 1024),
        Some(b'm' | b'M') => (&t[..t.len() - 1], 1024 * 1024),
        Some(b'g' | b'G') => (&t[..t.len() - 1], 1024 * 1024 * 1024),
        _ => (t, 1),
    };
    let n: usize = num
        .parse()
        .map_err(|_| format!("invalid size {s:?} (use bytes or a k/m suffix)"))?;
    let v = n
        .checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} too large"))?;
    if v < 1024 {
        return Err("item max size cannot be less than 1024 bytes".into());
    }
    if v > 1024 * 1024 * 1024 {
        return Err("item max size cannot be more than 1 gigabyte".into());
    }
    Ok(v)
}

fn parse_udp(s: &str) -> Result<u16, String> {
    match s.parse::<u16>() {
        Ok(0) => Ok(0),
        _ => Err("UDP is not supported: only -U 0 is accepted".into()),
    }
}

/// Checks option combinations clap cannot.
pub fn validate(a: &Args) -> Result<(), String> {
    if a.memory_limit == 0 {
        return Err("memory limit must be at least 1 MB".into());
    }
    if a.threads == 0 || a.threads > 256 {
        return Err("threads must be between 1 and 256".into());
    }
    if a.conn_limit == 0 {
        return Err("connection limit must be at least 1".into());
    }
    let mem = a.memory_limit.saturating_mul(1024 * 1024);
    if a.max_item_size as u64 > mem / 2 {
        return Err("cannot set item size limit higher than 1/2 of memory max".into());
    }
    Ok(())
}

/// Drops root privileges to `user` (getpwnam, setgroups, setgid, setuid).
fn drop_privileges(user: &str) -> Result<(), String> {
    let name = std::ffi::CString::new(user).map_err(|_| format!("bad user name {user:?}"))?;
    // SAFETY: `name` is a valid NUL-terminated string; getpwnam returns null or a pointer to
    // static storage that we read at once, before any other passwd call.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    if pw.is_null() {
        return Err(format!("can't find the user {user:?} to switch to"));
    }
    // SAFETY: `pw` is non-null and points to a valid passwd record (see above).
    let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
    // SAFETY: plain system calls with valid arguments (an empty group list).
    let ok = unsafe {
        libc::setgroups(0, std::ptr::null()) == 0
            && libc::setgid(gid) == 0
            && libc::setuid(uid) == 0
    };
    if !ok {
        return Err(format!(
            "failed to assume the identity of {user:?}: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Entry point of the `pmem-memcached` binary: parses the command line, runs the server and
/// returns the process exit code.
pub fn main_cli() -> std::process::ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pmem-memcached: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Opens the store, serves until a signal or `shutdown`, then shuts the store down.
pub fn run(args: Args) -> Result<(), String> {
    validate(&args)?;
    let start = Instant::now();
    let mem_limit = args.memory_limit.saturating_mul(1024 * 1024);
    let (store, summary): (Arc<dyn CacheStore>, String) = match args.store {
        StoreKind::Memory => (
            Arc::new(MemStore::new(args.max_item_size, mem_limit)),
            "0 items restored (new, memory store)".into(),
        ),
        StoreKind::Pmem => {
            let cfg = PmemStoreConfig {
                path: args.memory_file.clone(),
                mem_limit,
                item_size_max: args.max_item_size,
                durable: args.durable,
                require_dax: args.require_dax,
            };
            let (s, info) = PmemStore::open(&cfg)
                .map_err(|e| format!("cannot open {}: {e}", args.memory_file.display()))?;
            for m in &info.messages {
                eprintln!("pmem-memcached: {m}");
            }
            let how = if info.created {
                "new"
            } else if info.clean {
                "clean"
            } else {
                "recovered"
            };
            (
                Arc::new(s),
                format!("{} items restored ({how})", info.items),
            )
        }
    };
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if euid == 0 {
        match &args.user {
            Some(u) => drop_privileges(u)?,
            None => eprintln!(
                "pmem-memcached: warning: running as root (memcached refuses this without -u)"
            ),
        }
    }
    let info = Arc::new(ServerInfo {
        started: Instant::now(),
        started_unix: super::store::unix_now(),
        port: args.port,
        listen: args.listen.to_string(),
        max_connections: args.conn_limit,
        threads: args.threads,
        shutdown_enabled: args.enable_shutdown,
        verbosity: AtomicU32::new(u32::from(args.verbose)),
        curr_connections: AtomicU64::new(0),
        store_kind: match args.store {
            StoreKind::Pmem => "pmem".into(),
            StoreKind::Memory => "memory".into(),
        },
        memory_file: args.memory_file.display().to_string(),
        durable: args.durable,
    });
    // memcached's model: one event loop per worker thread (a single-threaded runtime each, so
    // a connection's wake-ups never hop threads), fed accepted sockets round-robin by the
    // listener's loop on the main thread.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let stop_tx = Arc::new(stop_tx);
    let mut workers = Vec::new();
    for i in 0..args.threads.max(1) {
        match spawn_worker(
            i,
            store.clone(),
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
    let addr = SocketAddr::new(args.listen, args.port);
    let txs: Vec<_> = workers.iter().map(|w| w.tx.clone()).collect();
    let res = rt.block_on(serve(
        addr,
        store.clone(),
        info,
        start,
        summary,
        txs,
        (stop_tx.clone(), stop_rx),
    ));
    let _ = stop_tx.send(true);
    // In-flight commands finish (each worker drains its connections) before the store shuts
    // down.
    for w in workers {
        let _ = w.handle.join();
    }
    store.shutdown();
    rt.shutdown_timeout(Duration::from_secs(1));
    res
}

/// A worker thread: its event loop and the channel that hands it accepted sockets.
struct Worker {
    tx: tokio::sync::mpsc::UnboundedSender<std::net::TcpStream>,
    handle: std::thread::JoinHandle<()>,
}

fn spawn_worker(
    i: u32,
    store: Arc<dyn CacheStore>,
    info: Arc<ServerInfo>,
    stop_rx: watch::Receiver<bool>,
    stop_tx: Arc<watch::Sender<bool>>,
) -> std::io::Result<Worker> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<std::net::TcpStream>();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let handle = std::thread::Builder::new()
        .name(format!("mc-worker-{i}"))
        .spawn(move || {
            rt.block_on(async move {
                let mut conns = tokio::task::JoinSet::new();
                let mut stop = stop_rx.clone();
                loop {
                    tokio::select! {
                        s = rx.recv() => {
                            let Some(s) = s else { break };
                            let sock = match TcpStream::from_std(s) {
                                Ok(x) => x,
                                Err(_) => {
                                    info.curr_connections.fetch_sub(1, Ordering::Relaxed);
                                    continue;
                                }
                            };
                            let (store, info, stop_rx, stop_tx) =
                                (store.clone(), info.clone(), stop_rx.clone(), stop_tx.clone());
                            conns.spawn(async move {
                                if connection(sock, &*store, &info, stop_rx).await {
                                    let _ = stop_tx.send(true);
                                }
                                info.curr_connections.fetch_sub(1, Ordering::Relaxed);
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
                    // Aborted tasks stop at their next await point; wait for that so that no
                    // command is still running when the store shuts down.
                    while conns.join_next().await.is_some() {}
                }
            })
        })?;
    Ok(Worker { tx, handle })
}

async fn serve(
    addr: SocketAddr,
    store: Arc<dyn CacheStore>,
    info: Arc<ServerInfo>,
    start: Instant,
    summary: String,
    workers: Vec<tokio::sync::mpsc::UnboundedSender<std::net::TcpStream>>,
    (stop_tx, stop_rx): (Arc<watch::Sender<bool>>, watch::Receiver<bool>),
) -> Result<(), String> {
    use tokio::signal::unix::{signal, SignalKind};
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| format!("failed to listen on {addr}: {e}"))?;
    let bound = listener.local_addr().map_err(|e| e.to_string())?;
    eprintln!(
        "pmem-memcached: ready in {} ms: {summary}, listening on {bound}",
        start.elapsed().as_millis()
    );
    let sig = |k| signal(k).map_err(|e| format!("cannot install signal handler: {e}"));
    let mut term = sig(SignalKind::terminate())?;
    let mut int = sig(SignalKind::interrupt())?;
    let mut usr1 = sig(SignalKind::user_defined1())?;
    let mut conns = tokio::task::JoinSet::new();
    let mut next = 0usize;
    let mut stop_wait = stop_rx.clone();
    // Background work of the store (expired-item crawler, counters) about once a second.
    let maint = {
        let store = store.clone();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.changed() => break,
                }
                let s = store.clone();
                let _ = tokio::task::spawn_blocking(move || s.maintenance()).await;
            }
        })
    };
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = usr1.recv() => break,
            _ = stop_wait.changed() => break,
            acc = listener.accept() => {
                let (sock, _) = match acc {
                    Ok(x) => x,
                    Err(e) => {
                        if info.verbosity.load(Ordering::Relaxed) > 0 {
                            eprintln!("pmem-memcached: accept: {e}");
                        }
                        // Out of descriptors and similar: back off briefly.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                store.counters().incr(Ctr::TotalConnections);
                let n = info.curr_connections.fetch_add(1, Ordering::Relaxed) + 1;
                if n > info.max_connections {
                    info.curr_connections.fetch_sub(1, Ordering::Relaxed);
                    store.counters().incr(Ctr::RejectedConnections);
                    conns.spawn(async move {
                        let mut sock = sock;
                        let msg = format!("{}\r\n", err::TOO_MANY_CONNS);
                        let _ = sock.write_all(msg.as_bytes()).await;
                        let _ = sock.shutdown().await;
                    });
                    continue;
                }
                let _ = sock.set_nodelay(true);
                // hand the socket to the next worker's event loop
                let handed = sock.into_std().ok().and_then(|s| {
                    next = next.wrapping_add(1);
                    workers[next % workers.len()].send(s).ok()
                });
                if handed.is_none() {
                    info.curr_connections.fetch_sub(1, Ordering::Relaxed);
                }
            }
            // Reap finished connection tasks so the set does not grow.
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    // A maintenance pass in progress finishes before the store shuts down.
    let _ = maint.await;
    // (rejection messages still being written)
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if info.verbosity.load(Ordering::Relaxed) > 0 {
        eprintln!("pmem-memcached: shutting down");
    }
    Ok(())
}

/// Serves one connection; true if it asked for a server shutdown.
async fn connection(
    mut sock: TcpStream,
    store: &dyn CacheStore,
    info: &ServerInfo,
    mut stop: watch::Receiver<bool>,
) -> bool {
    let mut parser = Parser::new(store.item_size_max());
    let mut rbuf: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut out: Vec<u8> = Vec::with_capacity(16 * 1024);
    loop {
        if *stop.borrow() {
            return false;
        }
        if rbuf.capacity() - rbuf.len() < 4096 {
            rbuf.reserve(16 * 1024);
        }
        let n = tokio::select! {
            r = sock.read_buf(&mut rbuf) => match r {
                Ok(0) | Err(_) => return false,
                Ok(n) => n,
            },
            _ = stop.changed() => return false,
        };
        store.counters().add(Ctr::BytesRead, n as u64);
        let (used, flow) = exec::process(&mut parser, store, info, &rbuf, &mut out);
        rbuf.drain(..used);
        if !out.is_empty() {
            if sock.write_all(&out).await.is_err() {
                return false;
            }
            store.counters().add(Ctr::BytesWritten, out.len() as u64);
            // Keep a moderate buffer; drop a huge one (a big multi-get).
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
