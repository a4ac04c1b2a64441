//! The TCP server: command line (mirroring memcached's), store opening, privilege drop and the
//! memcached protocol's [`net::Service`]; the accept loop, worker threads, per-connection
//! pipelined processing and graceful shutdown are [`net::run`]'s.

use super::exec::{self, Flow, ServerInfo};
use super::memstore::MemStore;
use super::proto::{err, Parser};
use super::pstore::{PmemStore, PmemStoreConfig};
use super::store::{CacheStore, Ctr};
use crate::net;
use clap::{ArgAction, Parser as ClapParser, ValueEnum};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::signal::unix::SignalKind;

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
    net::exit_code("pmem-memcached", run(Args::parse()))
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
    let svc = Arc::new(McService { store, info });
    let cfg = net::Config {
        name: "pmem-memcached",
        worker_name: "mc-worker-",
        addr: SocketAddr::new(args.listen, args.port),
        threads: args.threads.max(1),
        signals: vec![
            SignalKind::terminate(),
            SignalKind::interrupt(),
            SignalKind::user_defined1(),
        ],
        // Background work of the store (expired-item crawler, counters) about once a second.
        tick: Duration::from_secs(1),
        tick_at_start: false,
        start,
        summary,
    };
    net::run(cfg, svc)
}

/// The memcached protocol over a store, for [`net::run`].
struct McService {
    store: Arc<dyn CacheStore>,
    info: Arc<ServerInfo>,
}

impl net::Service for McService {
    type Conn = Parser;

    fn connect(&self) -> Parser {
        Parser::new(self.store.item_size_max())
    }

    fn process(&self, parser: &mut Parser, input: &[u8], out: &mut Vec<u8>) -> (usize, Flow) {
        exec::process(parser, &*self.store, &self.info, input, out)
    }

    fn bytes_read(&self, n: usize) {
        self.store.counters().add(Ctr::BytesRead, n as u64);
    }

    fn bytes_written(&self, n: usize) {
        self.store.counters().add(Ctr::BytesWritten, n as u64);
    }

    fn open_connections(&self) -> &AtomicU64 {
        &self.info.curr_connections
    }

    fn max_connections(&self) -> u64 {
        self.info.max_connections
    }

    fn accepted(&self) {
        self.store.counters().incr(Ctr::TotalConnections);
    }

    fn rejected(&self) -> String {
        self.store.counters().incr(Ctr::RejectedConnections);
        format!("{}\r\n", err::TOO_MANY_CONNS)
    }

    fn verbose(&self) -> bool {
        self.info.verbosity.load(Ordering::Relaxed) > 0
    }

    fn tick(&self) {
        self.store.maintenance();
    }

    fn shutdown(&self) {
        self.store.shutdown();
    }
}
