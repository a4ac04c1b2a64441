//! Executes parsed commands against a [`CacheStore`], appending replies to an output buffer
//! and counting like memcached's `stats`.

use super::proto::{self, err, Command, Meta, Parser, Step};
use super::store::*;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Instant;

/// The version reported by `version` and `stats`.
pub const VERSION: &str = "1.6.21";

/// Server-wide settings and state that `stats` reports.
#[derive(Debug)]
pub struct ServerInfo {
    /// Start time (for uptime).
    pub started: Instant,
    /// Unix time at start.
    pub started_unix: u64,
    /// TCP port.
    pub port: u16,
    /// Listen address.
    pub listen: String,
    /// `-c`.
    pub max_connections: u64,
    /// `-t`.
    pub threads: u32,
    /// `-A`.
    pub shutdown_enabled: bool,
    /// `-v` level (changed by `verbosity`).
    pub verbosity: AtomicU32,
    /// Open connections.
    pub curr_connections: AtomicU64,
    /// Store kind for `stats settings` (`pmem` or `memory`).
    pub store_kind: String,
    /// Pool file.
    pub memory_file: String,
    /// `--durable`.
    pub durable: bool,
}

impl ServerInfo {
    /// Settings with defaults for tests.
    pub fn for_tests() -> ServerInfo {
        ServerInfo {
            started: Instant::now(),
            started_unix: unix_now(),
            port: 11211,
            listen: "127.0.0.1".into(),
            max_connections: 1024,
            threads: 4,
            shutdown_enabled: false,
            verbosity: AtomicU32::new(0),
            curr_connections: AtomicU64::new(0),
            store_kind: "memory".into(),
            memory_file: String::new(),
            durable: false,
        }
    }
}

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

/// Appends `n` in decimal.
pub fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

fn push_i64(out: &mut Vec<u8>, n: i64) {
    if n < 0 {
        out.push(b'-');
    }
    push_u64(out, n.unsigned_abs());
}

fn line(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Parses and executes every complete command in `input`, appending replies to `out`.
/// Returns the bytes consumed and what the connection should do next.
pub fn process(
    parser: &mut Parser,
    store: &dyn CacheStore,
    info: &ServerInfo,
    input: &[u8],
    out: &mut Vec<u8>,
) -> (usize, Flow) {
    let mut pos = 0;
    // Each step consumes input or returns NeedMore/Close, so this ends; the bound is a guard.
    for _ in 0..=input.len() + 1 {
        let (n, step) = parser.next(&input[pos..]);
        pos += n;
        match step {
            Step::NeedMore => return (pos, Flow::Continue),
            Step::Continue => {}
            Step::Error(e) => line(out, e),
            Step::Close(msg) => {
                if let Some(m) = msg {
                    line(out, m);
                }
                return (pos, Flow::Close);
            }
            Step::Cmd(cmd) => {
                let flow = execute(store, info, cmd, out);
                if flow != Flow::Continue {
                    return (pos, flow);
                }
            }
        }
        if pos >= input.len() && !parser.swallowing() {
            return (pos, Flow::Continue);
        }
    }
    (pos, Flow::Continue)
}

fn ttl_remaining(e: Expiry, now: u64) -> i64 {
    match e {
        Expiry::Never => -1,
        Expiry::Expired => 0,
        Expiry::At(t) => t.saturating_sub(now).min(i64::MAX as u64) as i64,
    }
}

fn push_key(out: &mut Vec<u8>, key: &[u8], base64: bool) {
    out.extend_from_slice(b" k");
    if base64 {
        proto::base64_encode(key, out);
        out.extend_from_slice(b" b");
    } else {
        out.extend_from_slice(key);
    }
}

/// O and k flags (the only ones echoed on a miss or failure).
fn push_miss_flags(out: &mut Vec<u8>, m: &Meta<'_>) {
    for f in m.flag_tokens() {
        match f[0] {
            b'O' => {
                out.push(b' ');
                out.extend_from_slice(f);
            }
            b'k' => push_key(out, &m.key, m.opts.base64),
            _ => {}
        }
    }
}

/// Executes one command, appending its reply.
pub fn execute(
    store: &dyn CacheStore,
    info: &ServerInfo,
    cmd: Command<'_>,
    out: &mut Vec<u8>,
) -> Flow {
    let c = store.counters();
    let now = unix_now();
    match cmd {
        Command::Get { keys, cas, touch } => {
            let opts = GetOpts {
                touch: touch.map(|t| Expiry::from_client(t, now)),
                peek: false,
            };
            for key in proto::tokens(keys) {
                c.incr(Ctr::CmdGet);
                if touch.is_some() {
                    c.incr(Ctr::CmdTouch);
                }
                let hit = store.get(key, opts, &mut |m, v| {
                    out.extend_from_slice(b"VALUE ");
                    out.extend_from_slice(key);
                    out.push(b' ');
                    push_u64(out, u64::from(m.flags));
                    out.push(b' ');
                    push_u64(out, v.len() as u64);
                    if cas {
                        out.push(b' ');
                        push_u64(out, m.cas);
                    }
                    out.extend_from_slice(b"\r\n");
                    out.extend_from_slice(v);
                    out.extend_from_slice(b"\r\n");
                });
                match (hit, touch.is_some()) {
                    (true, false) => c.incr(Ctr::GetHits),
                    (false, false) => c.incr(Ctr::GetMisses),
                    (true, true) => c.incr(Ctr::TouchHits),
                    (false, true) => c.incr(Ctr::TouchMisses),
                }
            }
            out.extend_from_slice(b"END\r\n");
        }
        Command::Store {
            mode,
            key,
            flags,
            exptime,
            cas,
            data,
            noreply,
        } => {
            c.incr(Ctr::CmdSet);
            let r = store.store(&StoreReq {
                mode,
                key,
                value: data,
                flags,
                expiry: Expiry::from_client(exptime, now),
                cas,
            });
            count_store(c, r, cas.is_some());
            if !noreply {
                line(
                    out,
                    match r {
                        StoreOutcome::Stored(_) => "STORED",
                        StoreOutcome::NotStored => "NOT_STORED",
                        StoreOutcome::Exists => "EXISTS",
                        StoreOutcome::NotFound => "NOT_FOUND",
                        StoreOutcome::TooLarge => err::TOO_LARGE,
                        StoreOutcome::NoMemory => "SERVER_ERROR out of memory storing object",
                    },
                );
            }
        }
        Command::TooLarge { key, unlink, quiet } => {
            if unlink {
                store.delete(&key, None);
            }
            if !quiet {
                line(out, err::TOO_LARGE);
            }
        }
        Command::Delete { key, noreply } => {
            let r = store.delete(key, None);
            c.incr(if r == DeleteOutcome::Deleted {
                Ctr::DeleteHits
            } else {
                Ctr::DeleteMisses
            });
            if !noreply {
                line(
                    out,
                    if r == DeleteOutcome::Deleted {
                        "DELETED"
                    } else {
                        "NOT_FOUND"
                    },
                );
            }
        }
        Command::Arith {
            incr,
            key,
            delta,
            noreply,
        } => {
            let r = store.arith(
                key,
                &ArithReq {
                    incr,
                    delta,
                    autovivify: None,
                    cas: None,
                    touch: None,
                },
            );
            count_arith(c, incr, &r);
            if !noreply {
                match r {
                    ArithOutcome::Value { value, .. } => {
                        push_u64(out, value);
                        out.extend_from_slice(b"\r\n");
                    }
                    ArithOutcome::NotFound | ArithOutcome::Exists => line(out, "NOT_FOUND"),
                    ArithOutcome::NonNumeric => line(out, err::NON_NUMERIC),
                    ArithOutcome::NoMemory => line(out, "SERVER_ERROR out of memory"),
                }
            }
        }
        Command::Touch {
            key,
            exptime,
            noreply,
        } => {
            c.incr(Ctr::CmdTouch);
            let hit = store.touch(key, Expiry::from_client(exptime, now));
            c.incr(if hit {
                Ctr::TouchHits
            } else {
                Ctr::TouchMisses
            });
            if !noreply {
                line(out, if hit { "TOUCHED" } else { "NOT_FOUND" });
            }
        }
        Command::FlushAll { delay, noreply } => {
            c.incr(Ctr::CmdFlush);
            let secs = if delay <= 0 {
                0
            } else {
                match Expiry::from_client(delay, now) {
                    Expiry::At(t) => t.saturating_sub(now),
                    _ => 0,
                }
            };
            store.flush_all(secs);
            if !noreply {
                line(out, "OK");
            }
        }
        Command::Version => {
            out.extend_from_slice(b"VERSION ");
            line(out, VERSION);
        }
        Command::Verbosity { level, noreply } => {
            info.verbosity.store(level.min(2), Ordering::Relaxed);
            if !noreply {
                line(out, "OK");
            }
        }
        Command::Stats { group } => stats(store, info, group, out),
        Command::Quit => return Flow::Close,
        Command::Shutdown { graceful } => {
            if !info.shutdown_enabled {
                line(out, err::SHUTDOWN_DISABLED);
            } else if graceful.is_none() {
                line(out, err::SHUTDOWN_MODE);
            } else {
                return Flow::Shutdown;
            }
        }
        Command::Mn => out.extend_from_slice(b"MN\r\n"),
        Command::Me { key, base64 } => {
            c.incr(Ctr::CmdMeta);
            let peek = GetOpts {
                touch: None,
                peek: true,
            };
            let hit = store.get(&key, peek, &mut |m, v| {
                out.extend_from_slice(b"ME ");
                if base64 {
                    proto::base64_encode(&key, out);
                } else {
                    out.extend_from_slice(&key);
                }
                out.extend_from_slice(b" exp=");
                push_i64(out, ttl_remaining(m.expiry, now));
                out.extend_from_slice(b" la=");
                push_u64(out, now.saturating_sub(m.last_access));
                out.extend_from_slice(b" cas=");
                push_u64(out, m.cas);
                out.extend_from_slice(if m.fetched {
                    b" fetch=yes"
                } else {
                    b" fetch=no"
                });
                out.extend_from_slice(b" cls=");
                push_u64(out, u64::from(m.class));
                out.extend_from_slice(b" size=");
                push_u64(out, super::memstore::item_size(key.len(), v.len()) as u64);
                out.extend_from_slice(b"\r\n");
            });
            if !hit {
                out.extend_from_slice(b"EN\r\n");
            }
        }
        Command::Mg(m) => meta_get(store, m, now, out),
        Command::Ms(m, data) => meta_set(store, m, data, now, out),
        Command::Md(m) => {
            c.incr(Ctr::CmdMeta);
            let r = store.delete(&m.key, m.opts.cas);
            let code: &[u8] = match r {
                DeleteOutcome::Deleted => {
                    c.incr(Ctr::DeleteHits);
                    if m.opts.quiet {
                        return Flow::Continue;
                    }
                    b"HD"
                }
                DeleteOutcome::NotFound => {
                    c.incr(Ctr::DeleteMisses);
                    b"NF"
                }
                DeleteOutcome::Exists => {
                    c.incr(Ctr::DeleteMisses);
                    b"EX"
                }
            };
            out.extend_from_slice(code);
            push_miss_flags(out, &m);
            out.extend_from_slice(b"\r\n");
        }
        Command::Ma(m) => meta_arith(store, m, now, out),
    }
    Flow::Continue
}

fn count_store(c: &Counters, r: StoreOutcome, cas: bool) {
    if let StoreOutcome::Stored(_) = r {
        c.incr(Ctr::TotalItems);
    }
    if cas {
        match r {
            StoreOutcome::Stored(_) => c.incr(Ctr::CasHits),
            StoreOutcome::Exists => c.incr(Ctr::CasBadval),
            StoreOutcome::NotFound => c.incr(Ctr::CasMisses),
            _ => {}
        }
    }
}

fn count_arith(c: &Counters, incr: bool, r: &ArithOutcome) {
    let hit = matches!(r, ArithOutcome::Value { .. });
    let miss = matches!(r, ArithOutcome::NotFound);
    match (incr, hit, miss) {
        (true, true, _) => c.incr(Ctr::IncrHits),
        (true, _, true) => c.incr(Ctr::IncrMisses),
        (false, true, _) => c.incr(Ctr::DecrHits),
        (false, _, true) => c.incr(Ctr::DecrMisses),
        _ => {}
    }
}

fn meta_get(store: &dyn CacheStore, m: Meta<'_>, now: u64, out: &mut Vec<u8>) {
    let c = store.counters();
    c.incr(Ctr::CmdMeta);
    let touch = m.opts.ttl.map(|t| Expiry::from_client(t, now));
    let opts = GetOpts {
        touch,
        peek: m.opts.no_update,
    };
    let mut won = false;
    let write = |out: &mut Vec<u8>, won: bool, meta: &ItemMeta, v: &[u8]| {
        if m.opts.value {
            out.extend_from_slice(b"VA ");
            push_u64(out, v.len() as u64);
        } else {
            out.extend_from_slice(b"HD");
        }
        for f in m.flag_tokens() {
            match f[0] {
                b's' => {
                    out.extend_from_slice(b" s");
                    push_u64(out, v.len() as u64);
                }
                b't' => {
                    out.extend_from_slice(b" t");
                    push_i64(out, ttl_remaining(meta.expiry, now));
                }
                b'c' => {
                    out.extend_from_slice(b" c");
                    push_u64(out, meta.cas);
                }
                b'f' => {
                    out.extend_from_slice(b" f");
                    push_u64(out, u64::from(meta.flags));
                }
                b'l' => {
                    out.extend_from_slice(b" l");
                    push_u64(out, now.saturating_sub(meta.last_access));
                }
                b'h' => out.extend_from_slice(if meta.fetched { b" h1" } else { b" h0" }),
                b'O' => {
                    out.push(b' ');
                    out.extend_from_slice(f);
                }
                b'k' => push_key(out, &m.key, m.opts.base64),
                _ => {}
            }
        }
        if won {
            out.extend_from_slice(b" W");
        }
        out.extend_from_slice(b"\r\n");
        if m.opts.value {
            out.extend_from_slice(v);
            out.extend_from_slice(b"\r\n");
        }
    };
    let mut hit = store.get(&m.key, opts, &mut |meta, v| write(out, false, meta, v));
    if !hit {
        if let Some(n) = m.opts.vivify {
            let r = store.store(&StoreReq {
                mode: SetMode::Add,
                key: &m.key,
                value: b"",
                flags: 0,
                expiry: Expiry::from_client(n, now),
                cas: None,
            });
            if let StoreOutcome::Stored(_) = r {
                won = true;
            }
            let o = GetOpts {
                touch: None,
                peek: true,
            };
            hit = store.get(&m.key, o, &mut |meta, v| write(out, won, meta, v));
        }
    }
    match (hit, touch.is_some()) {
        (true, false) => c.incr(Ctr::GetHits),
        (false, false) => c.incr(Ctr::GetMisses),
        (true, true) => c.incr(Ctr::TouchHits),
        (false, true) => c.incr(Ctr::TouchMisses),
    }
    if touch.is_some() {
        c.incr(Ctr::CmdTouch);
    } else {
        c.incr(Ctr::CmdGet);
    }
    if !hit && !m.opts.quiet {
        out.extend_from_slice(b"EN");
        push_miss_flags(out, &m);
        out.extend_from_slice(b"\r\n");
    }
}

fn meta_set(store: &dyn CacheStore, m: Meta<'_>, data: &[u8], now: u64, out: &mut Vec<u8>) {
    let c = store.counters();
    c.incr(Ctr::CmdMeta);
    c.incr(Ctr::CmdSet);
    let mode = match m.opts.mode.map(|b| b.to_ascii_uppercase()) {
        Some(b'E') => SetMode::Add,
        Some(b'A') => SetMode::Append,
        Some(b'P') => SetMode::Prepend,
        Some(b'R') => SetMode::Replace,
        _ => SetMode::Set,
    };
    let cas = if mode == SetMode::Add {
        None
    } else {
        m.opts.cas
    };
    let mut req = StoreReq {
        mode,
        key: &m.key,
        value: data,
        flags: m.opts.client_flags,
        expiry: Expiry::from_client(m.opts.ttl.unwrap_or(0), now),
        cas,
    };
    let mut r = store.store(&req);
    if r == StoreOutcome::NotStored && matches!(mode, SetMode::Append | SetMode::Prepend) {
        if let Some(n) = m.opts.vivify {
            req.mode = SetMode::Add;
            req.cas = None;
            req.expiry = Expiry::from_client(n, now);
            r = store.store(&req);
        }
    }
    count_store(c, r, cas.is_some());
    let (code, new_cas): (&[u8], u64) = match r {
        StoreOutcome::Stored(cas) => {
            if m.opts.quiet {
                return;
            }
            (b"HD", cas)
        }
        StoreOutcome::NotStored => (b"NS", 0),
        StoreOutcome::Exists => (b"EX", 0),
        StoreOutcome::NotFound => (b"NF", 0),
        StoreOutcome::TooLarge => return line(out, err::TOO_LARGE),
        StoreOutcome::NoMemory => return line(out, "SERVER_ERROR out of memory storing object"),
    };
    out.extend_from_slice(code);
    for f in m.flag_tokens() {
        match f[0] {
            b'O' => {
                out.push(b' ');
                out.extend_from_slice(f);
            }
            b'k' => push_key(out, &m.key, m.opts.base64),
            b'c' => {
                out.extend_from_slice(b" c");
                push_u64(out, new_cas);
            }
            b's' => {
                out.extend_from_slice(b" s");
                push_u64(out, data.len() as u64);
            }
            _ => {}
        }
    }
    out.extend_from_slice(b"\r\n");
}

fn meta_arith(store: &dyn CacheStore, m: Meta<'_>, now: u64, out: &mut Vec<u8>) {
    let c = store.counters();
    c.incr(Ctr::CmdMeta);
    let incr = !matches!(m.opts.mode, Some(b'D' | b'd' | b'-'));
    let touch = m.opts.ttl.map(|t| Expiry::from_client(t, now));
    let viv = m.opts.vivify.map(|n| Expiry::from_client(n, now));
    let r = store.arith(
        &m.key,
        &ArithReq {
            incr,
            delta: m.opts.delta,
            autovivify: viv.map(|e| (m.opts.initial, e)),
            cas: m.opts.cas,
            touch,
        },
    );
    count_arith(c, incr, &r);
    match r {
        ArithOutcome::Value {
            value,
            cas,
            created,
        } => {
            if m.opts.quiet {
                return;
            }
            let mut digits = Vec::new();
            push_u64(&mut digits, value);
            if m.opts.value {
                out.extend_from_slice(b"VA ");
                push_u64(out, digits.len() as u64);
            } else {
                out.extend_from_slice(b"HD");
            }
            for f in m.flag_tokens() {
                match f[0] {
                    b'c' => {
                        out.extend_from_slice(b" c");
                        push_u64(out, cas);
                    }
                    b't' => {
                        let exp = match (created, touch) {
                            (true, _) => viv.unwrap_or(Expiry::Never),
                            (false, Some(t)) => t,
                            (false, None) => {
                                let mut e = Expiry::Never;
                                let o = GetOpts {
                                    touch: None,
                                    peek: true,
                                };
                                store.get(&m.key, o, &mut |meta, _| e = meta.expiry);
                                e
                            }
                        };
                        out.extend_from_slice(b" t");
                        push_i64(out, ttl_remaining(exp, now));
                    }
                    b'O' => {
                        out.push(b' ');
                        out.extend_from_slice(f);
                    }
                    b'k' => push_key(out, &m.key, m.opts.base64),
                    _ => {}
                }
            }
            out.extend_from_slice(b"\r\n");
            if m.opts.value {
                out.extend_from_slice(&digits);
                out.extend_from_slice(b"\r\n");
            }
        }
        ArithOutcome::NotFound | ArithOutcome::Exists => {
            out.extend_from_slice(if r == ArithOutcome::Exists {
                b"EX"
            } else {
                b"NF"
            });
            push_miss_flags(out, &m);
            out.extend_from_slice(b"\r\n");
        }
        ArithOutcome::NonNumeric => line(out, err::NON_NUMERIC),
        ArithOutcome::NoMemory => line(out, "SERVER_ERROR out of memory"),
    }
}

fn stat(out: &mut Vec<u8>, name: &str, value: impl std::fmt::Display) {
    use std::io::Write;
    let _ = write!(out, "STAT {name} {value}\r\n");
}

/// User and system CPU seconds of this process.
fn rusage() -> (f64, f64) {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a `rusage` into the valid, writable buffer we pass.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, ru.as_mut_ptr()) };
    if rc != 0 {
        return (0.0, 0.0);
    }
    // SAFETY: the call succeeded, so the struct is initialised (it was zeroed anyway).
    let ru = unsafe { ru.assume_init() };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (secs(ru.ru_utime), secs(ru.ru_stime))
}

fn stats(store: &dyn CacheStore, info: &ServerInfo, group: Option<&[u8]>, out: &mut Vec<u8>) {
    let c = store.counters();
    match group {
        None => {
            let occ = store.occupancy();
            let (user, sys) = rusage();
            stat(out, "pid", std::process::id());
            stat(out, "uptime", info.started.elapsed().as_secs());
            stat(out, "time", unix_now());
            stat(out, "version", VERSION);
            stat(out, "pointer_size", usize::BITS);
            stat(out, "rusage_user", format_args!("{user:.6}"));
            stat(out, "rusage_system", format_args!("{sys:.6}"));
            stat(out, "max_connections", info.max_connections);
            stat(
                out,
                "curr_connections",
                info.curr_connections.load(Ordering::Relaxed),
            );
            stat(out, "total_connections", c.get(Ctr::TotalConnections));
            stat(out, "rejected_connections", c.get(Ctr::RejectedConnections));
            stat(
                out,
                "connection_structures",
                info.curr_connections.load(Ordering::Relaxed),
            );
            for (name, ctr) in [
                ("cmd_get", Ctr::CmdGet),
                ("cmd_set", Ctr::CmdSet),
                ("cmd_flush", Ctr::CmdFlush),
                ("cmd_touch", Ctr::CmdTouch),
                ("cmd_meta", Ctr::CmdMeta),
                ("get_hits", Ctr::GetHits),
                ("get_misses", Ctr::GetMisses),
                ("get_expired", Ctr::GetExpired),
                ("get_flushed", Ctr::GetFlushed),
                ("delete_misses", Ctr::DeleteMisses),
                ("delete_hits", Ctr::DeleteHits),
                ("incr_misses", Ctr::IncrMisses),
                ("incr_hits", Ctr::IncrHits),
                ("decr_misses", Ctr::DecrMisses),
                ("decr_hits", Ctr::DecrHits),
                ("cas_misses", Ctr::CasMisses),
                ("cas_hits", Ctr::CasHits),
                ("cas_badval", Ctr::CasBadval),
                ("touch_hits", Ctr::TouchHits),
                ("touch_misses", Ctr::TouchMisses),
                ("auth_cmds", Ctr::AuthCmds),
                ("auth_errors", Ctr::AuthErrors),
                ("bytes_read", Ctr::BytesRead),
                ("bytes_written", Ctr::BytesWritten),
            ] {
                stat(out, name, c.get(ctr));
            }
            stat(out, "limit_maxbytes", occ.limit_maxbytes);
            stat(out, "accepting_conns", 1);
            stat(out, "threads", info.threads);
            stat(out, "hash_power_level", occ.hash_buckets.max(1).ilog2());
            stat(out, "hash_bytes", occ.hash_bytes);
            stat(out, "hash_is_expanding", 0);
            stat(out, "curr_items", occ.curr_items);
            stat(out, "bytes", occ.bytes);
            stat(out, "total_items", c.get(Ctr::TotalItems));
            stat(out, "expired_unfetched", c.get(Ctr::ExpiredUnfetched));
            stat(out, "evicted_unfetched", c.get(Ctr::EvictedUnfetched));
            stat(out, "evictions", c.get(Ctr::Evictions));
            stat(out, "reclaimed", c.get(Ctr::Reclaimed));
            for (k, v) in store.stats_group("") {
                stat(out, &k, v);
            }
        }
        Some(b"reset") => {
            c.restore(&[0; NCOUNTERS]);
            return line(out, "RESET");
        }
        Some(b"settings") => {
            let occ = store.occupancy();
            stat(out, "maxbytes", occ.limit_maxbytes);
            stat(out, "maxconns", info.max_connections);
            stat(out, "tcpport", info.port);
            stat(out, "udpport", 0);
            stat(out, "inter", &info.listen);
            stat(out, "verbosity", info.verbosity.load(Ordering::Relaxed));
            stat(out, "evictions", "on");
            stat(out, "num_threads", info.threads);
            stat(out, "cas_enabled", "yes");
            stat(out, "binding_protocol", "ascii");
            stat(out, "item_size_max", store.item_size_max());
            stat(out, "flush_enabled", "yes");
            stat(
                out,
                "shutdown_command",
                if info.shutdown_enabled { "yes" } else { "no" },
            );
            stat(out, "store", &info.store_kind);
            stat(out, "memory_file", &info.memory_file);
            stat(out, "durable", if info.durable { "yes" } else { "no" });
        }
        Some(g @ (b"items" | b"slabs")) => {
            let g = if g == b"items" { "items" } else { "slabs" };
            for (k, v) in store.stats_group(g) {
                stat(out, &k, v);
            }
        }
        Some(_) => return line(out, "ERROR"),
    }
    out.extend_from_slice(b"END\r\n");
}
