//! The TCP server machinery both example servers share: the listener on the main thread, worker
//! threads with one single-threaded tokio runtime each (memcached's model: a connection's
//! wake-ups never hop threads) fed accepted sockets round-robin, the per-connection pipelined
//! read / process / write loop with its buffers, a periodic background job and graceful
//! shutdown. What differs between the protocols (parsing and execution, counters, limits,
//! messages) is behind [`Service`].

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::watch;

/// What the connection should do after a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    /// Keep reading.
    Continue,
    /// Send the output, then close the connection.
    Close,
    /// Send the output, close, and shut the server down.
    Shutdown,
}

/// A protocol's part in [`run`]: per-connection state and request processing, connection
/// accounting, the background job and the final shutdown of the store.
pub trait Service: Send + Sync + 'static {
    /// Per-connection state (the request parser and the like).
    type Conn: Send;
    /// Most unconsumed request bytes a connection may hold; beyond, it is dropped. `None`: no
    /// limit.
    const MAX_PENDING: Option<usize> = None;

    /// A new connection's state.
    fn connect(&self) -> Self::Conn;
    /// Parses and executes every complete request in `input`, appending replies to `out`.
    /// Returns the bytes consumed and what the connection should do next.
    fn process(&self, conn: &mut Self::Conn, input: &[u8], out: &mut Vec<u8>) -> (usize, Flow);
    /// Counts `n` bytes read from a connection.
    fn bytes_read(&self, _n: usize) {}
    /// Counts `n` bytes written to a connection.
    fn bytes_written(&self, _n: usize) {}
    /// The counter of open connections.
    fn open_connections(&self) -> &AtomicU64;
    /// Most simultaneous connections.
    fn max_connections(&self) -> u64;
    /// Counts an accepted connection (before the limit is checked).
    fn accepted(&self);
    /// Counts a connection refused over the limit; returns the line sent to it before closing.
    fn rejected(&self) -> String;
    /// A connection within the limit, about to be handed to a worker.
    fn admitted(&self, _peer: SocketAddr) {}
    /// Whether accept errors and the shutdown are logged.
    fn verbose(&self) -> bool;
    /// The periodic background job (run on a blocking thread, see [`Config::tick`]).
    fn tick(&self);
    /// Shuts the store down; called once no command runs any more.
    fn shutdown(&self);
}

/// How [`run`] serves.
#[derive(Debug, Clone)]
pub struct Config {
    /// Program name, the prefix of log lines.
    pub name: &'static str,
    /// Worker thread names: this prefix and the thread's number.
    pub worker_name: &'static str,
    /// Address to listen on.
    pub addr: SocketAddr,
    /// Worker threads.
    pub threads: u32,
    /// Signals that stop the server.
    pub signals: Vec<SignalKind>,
    /// Period of [`Service::tick`].
    pub tick: Duration,
    /// Whether the first tick runs at once (else after one period).
    pub tick_at_start: bool,
    /// When the program started (for the time in the ready line).
    pub start: Instant,
    /// What the ready line says about the store.
    pub summary: String,
}

/// Writes the decimal digits of `n` at the end of `buf` and returns them (no allocation).
pub fn decimal(buf: &mut [u8; 20], mut n: u64) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &buf[i..]
}

/// Appends `n` in decimal, without allocating (replies write many lengths and counters).
pub fn push_u64(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(decimal(&mut [0u8; 20], n));
}

/// Maps a server's result to the process exit code, printing an error as `name: error`.
pub fn exit_code(name: &str, res: Result<(), String>) -> std::process::ExitCode {
    match res {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Serves `svc` until one of the signals or a connection's [`Flow::Shutdown`]; then lets
/// in-flight commands finish and calls [`Service::shutdown`].
pub fn run<S: Service>(cfg: Config, svc: Arc<S>) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let stop_tx = Arc::new(stop_tx);
    let mut workers = Vec::new();
    for i in 0..cfg.threads {
        match spawn_worker(
            format!("{}{i}", cfg.worker_name),
            svc.clone(),
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
    let txs: Vec<_> = workers.iter().map(|w| w.tx.clone()).collect();
    let res = rt.block_on(serve(&cfg, svc.clone(), txs, (stop_tx.clone(), stop_rx)));
    let _ = stop_tx.send(true);
    // In-flight commands finish (each worker drains its connections) before the store shuts
    // down.
    for w in workers {
        let _ = w.handle.join();
    }
    svc.shutdown();
    rt.shutdown_timeout(Duration::from_secs(1));
    res
}

/// A worker thread: its event loop and the channel that hands it accepted sockets.
struct Worker {
    tx: tokio::sync::mpsc::UnboundedSender<std::net::TcpStream>,
    handle: std::thread::JoinHandle<()>,
}

fn spawn_worker<S: Service>(
    name: String,
    svc: Arc<S>,
    stop_rx: watch::Receiver<bool>,
    stop_tx: Arc<watch::Sender<bool>>,
) -> std::io::Result<Worker> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<std::net::TcpStream>();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let handle = std::thread::Builder::new().name(name).spawn(move || {
        rt.block_on(async move {
            let mut conns = tokio::task::JoinSet::new();
            let mut stop = stop_rx.clone();
            loop {
                tokio::select! {
                    s = rx.recv() => {
                        let Some(s) = s else { break };
                        let Ok(sock) = TcpStream::from_std(s) else {
                            svc.open_connections().fetch_sub(1, Ordering::Relaxed);
                            continue;
                        };
                        let (svc, stop_rx, stop_tx) =
                            (svc.clone(), stop_rx.clone(), stop_tx.clone());
                        conns.spawn(async move {
                            if connection(sock, &*svc, stop_rx).await {
                                let _ = stop_tx.send(true);
                            }
                            svc.open_connections().fetch_sub(1, Ordering::Relaxed);
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

/// Resolves when any of `sigs` is received.
async fn any_signal(sigs: &mut [Signal]) {
    std::future::poll_fn(|cx| {
        if sigs.iter_mut().any(|s| s.poll_recv(cx).is_ready()) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await
}

async fn serve<S: Service>(
    cfg: &Config,
    svc: Arc<S>,
    workers: Vec<tokio::sync::mpsc::UnboundedSender<std::net::TcpStream>>,
    (stop_tx, stop_rx): (Arc<watch::Sender<bool>>, watch::Receiver<bool>),
) -> Result<(), String> {
    let (name, addr) = (cfg.name, cfg.addr);
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| format!("failed to listen on {addr}: {e}"))?;
    let bound = listener.local_addr().map_err(|e| e.to_string())?;
    eprintln!(
        "{name}: ready in {} ms: {}, listening on {bound}",
        cfg.start.elapsed().as_millis(),
        cfg.summary
    );
    let mut sigs = cfg
        .signals
        .iter()
        .map(|&k| signal(k).map_err(|e| format!("cannot install signal handler: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    let mut conns = tokio::task::JoinSet::new();
    let mut next = 0usize;
    let mut stop_wait = stop_rx.clone();
    // The store's background work, every `cfg.tick`.
    let background = {
        let svc = svc.clone();
        let mut stop = stop_rx.clone();
        let (period, at_start) = (cfg.tick, cfg.tick_at_start);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            if !at_start {
                // (the first tick is immediate)
                tick.tick().await;
            }
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.changed() => break,
                }
                let svc = svc.clone();
                let _ = tokio::task::spawn_blocking(move || svc.tick()).await;
            }
        })
    };
    let open = svc.open_connections();
    loop {
        tokio::select! {
            _ = any_signal(&mut sigs) => break,
            _ = stop_wait.changed() => break,
            acc = listener.accept() => {
                let (sock, peer) = match acc {
                    Ok(x) => x,
                    Err(e) => {
                        if svc.verbose() {
                            eprintln!("{name}: accept: {e}");
                        }
                        // Out of descriptors and similar: back off briefly.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                svc.accepted();
                let n = open.fetch_add(1, Ordering::Relaxed) + 1;
                if n > svc.max_connections() {
                    open.fetch_sub(1, Ordering::Relaxed);
                    let msg = svc.rejected();
                    conns.spawn(async move {
                        let mut sock = sock;
                        let _ = sock.write_all(msg.as_bytes()).await;
                        let _ = sock.shutdown().await;
                    });
                    continue;
                }
                svc.admitted(peer);
                let _ = sock.set_nodelay(true);
                // hand the socket to the next worker's event loop
                let handed = sock.into_std().ok().and_then(|s| {
                    next = next.wrapping_add(1);
                    workers.get(next % workers.len().max(1))?.send(s).ok()
                });
                if handed.is_none() {
                    open.fetch_sub(1, Ordering::Relaxed);
                }
            }
            // Reap finished connection tasks so the set does not grow.
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    // A background pass in progress finishes before the store shuts down.
    let _ = background.await;
    // (rejection messages still being written)
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if svc.verbose() {
        eprintln!("{name}: shutting down");
    }
    Ok(())
}

/// Serves one connection; true if it asked for a server shutdown.
async fn connection<S: Service>(
    mut sock: TcpStream,
    svc: &S,
    mut stop: watch::Receiver<bool>,
) -> bool {
    let mut conn = svc.connect();
    let mut rbuf: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut out: Vec<u8> = Vec::with_capacity(16 * 1024);
    loop {
        if *stop.borrow() {
            return false;
        }
        if S::MAX_PENDING.is_some_and(|max| rbuf.len() > max) {
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
        svc.bytes_read(n);
        let (used, flow) = svc.process(&mut conn, &rbuf, &mut out);
        rbuf.drain(..used);
        if !out.is_empty() {
            if sock.write_all(&out).await.is_err() {
                return false;
            }
            svc.bytes_written(out.len());
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
