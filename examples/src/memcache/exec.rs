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

/// What the connection should do after a batch (the servers' shared type).
pub use crate::net::Flow;

/// Appends `n` in decimal (shared with the RESP encoder).
pub use crate::net::push_u64;

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
            let r = store.arith(key, &ArithReq::plain(incr, delta));
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
                // The final size (append/prepend make it larger than the data).
                let mut size = data.len() as u64;
                if matches!(mode, SetMode::Append | SetMode::Prepend) && new_cas != 0 {
                    let o = GetOpts {
                        touch: None,
                        peek: true,
                    };
                    store.get(&m.key, o, &mut |_, v| size = v.len() as u64);
                }
                out.extend_from_slice(b" s");
                push_u64(out, size);
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
            let mut text = [0u8; 20];
            let digits = crate::net::decimal(&mut text, value);
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
                out.extend_from_slice(digits);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memcache::memstore::MemStore;
    use proptest::prelude::*;

    fn new_store() -> MemStore {
        MemStore::new(1024 * 1024, 64 << 20)
    }

    /// Feeds `input` whole; returns the replies and the final flow.
    fn run_flow(store: &MemStore, info: &ServerInfo, input: &[u8]) -> (String, Flow) {
        let mut p = Parser::new(store.item_size_max());
        let mut out = Vec::new();
        let (_, flow) = process(&mut p, store, info, input, &mut out);
        (String::from_utf8_lossy(&out).into_owned(), flow)
    }

    fn run(store: &MemStore, input: &str) -> String {
        run_flow(store, &ServerInfo::for_tests(), input.as_bytes()).0
    }

    /// Feeds `input` in chunks ending at `cuts`, like a connection reading pieces.
    fn run_split(store: &MemStore, input: &[u8], cuts: &[usize]) -> (Vec<u8>, Flow) {
        let info = ServerInfo::for_tests();
        let mut p = Parser::new(store.item_size_max());
        let mut rbuf = Vec::new();
        let mut out = Vec::new();
        let mut last = 0;
        let mut ends: Vec<usize> = cuts.iter().map(|&c| c.min(input.len())).collect();
        ends.sort_unstable();
        ends.push(input.len());
        for end in ends {
            if end < last {
                continue;
            }
            rbuf.extend_from_slice(&input[last..end]);
            last = end;
            let (used, flow) = process(&mut p, store, &info, &rbuf, &mut out);
            rbuf.drain(..used);
            if flow != Flow::Continue {
                return (out, flow);
            }
        }
        (out, Flow::Continue)
    }

    #[test]
    fn storage_commands() {
        let s = new_store();
        assert_eq!(run(&s, "set a 5 0 3\r\nabc\r\n"), "STORED\r\n");
        assert_eq!(run(&s, "get a\r\n"), "VALUE a 5 3\r\nabc\r\nEND\r\n");
        assert_eq!(run(&s, "gets a\r\n"), "VALUE a 5 3 1\r\nabc\r\nEND\r\n");
        assert_eq!(run(&s, "add a 0 0 1\r\nx\r\n"), "NOT_STORED\r\n");
        assert_eq!(run(&s, "add b 0 0 1\r\nx\r\n"), "STORED\r\n");
        assert_eq!(run(&s, "replace c 0 0 1\r\nx\r\n"), "NOT_STORED\r\n");
        assert_eq!(run(&s, "replace b 0 0 1\r\ny\r\n"), "STORED\r\n");
        assert_eq!(run(&s, "append a 9 0 2\r\nde\r\n"), "STORED\r\n");
        assert_eq!(run(&s, "prepend a 9 0 2\r\n__\r\n"), "STORED\r\n");
        assert_eq!(run(&s, "append zz 0 0 1\r\nx\r\n"), "NOT_STORED\r\n");
        assert_eq!(
            run(&s, "gets a b zz\r\n"),
            "VALUE a 5 7 5\r\n__abcde\r\nVALUE b 0 1 3\r\ny\r\nEND\r\n"
        );
        assert_eq!(run(&s, "cas a 1 0 1 4\r\nz\r\n"), "EXISTS\r\n");
        assert_eq!(run(&s, "cas nope 1 0 1 4\r\nz\r\n"), "NOT_FOUND\r\n");
        assert_eq!(run(&s, "cas a 1 0 1 5\r\nz\r\n"), "STORED\r\n");
        assert_eq!(
            run(&s, "set a 0 0 1 noreply\r\nq\r\nget a\r\n"),
            "VALUE a 0 1\r\nq\r\nEND\r\n"
        );
        assert_eq!(run(&s, "set bin 0 0 4\r\n\0\r\n\x7f\r\n"), "STORED\r\n");
        let c = s.counters();
        assert_eq!(
            (
                c.get(Ctr::CasHits),
                c.get(Ctr::CasBadval),
                c.get(Ctr::CasMisses)
            ),
            (1, 1, 1)
        );
    }

    #[test]
    fn eight_bit_values() {
        let s = new_store();
        let info = ServerInfo::for_tests();
        let mut input = b"set k 0 0 256\r\n".to_vec();
        input.extend((0..=255u8).collect::<Vec<_>>());
        input.extend_from_slice(b"\r\nget k\r\n");
        let mut p = Parser::new(s.item_size_max());
        let mut out = Vec::new();
        process(&mut p, &s, &info, &input, &mut out);
        let mut want = b"STORED\r\nVALUE k 0 256\r\n".to_vec();
        want.extend((0..=255u8).collect::<Vec<_>>());
        want.extend_from_slice(b"\r\nEND\r\n");
        assert_eq!(out, want);
    }

    #[test]
    fn other_commands() {
        let s = new_store();
        assert_eq!(run(&s, "delete a\r\n"), "NOT_FOUND\r\n");
        run(&s, "set a 0 0 2\r\n10\r\n");
        assert_eq!(run(&s, "incr a 5\r\n"), "15\r\n");
        assert_eq!(run(&s, "decr a 100\r\n"), "0\r\n");
        assert_eq!(run(&s, "get a\r\n"), "VALUE a 0 2\r\n0 \r\nEND\r\n");
        assert_eq!(
            run(&s, "incr a 18446744073709551615\r\n"),
            "18446744073709551615\r\n"
        );
        assert_eq!(run(&s, "incr a 2\r\n"), "1\r\n");
        assert_eq!(run(&s, "incr a 1 noreply\r\n"), "");
        assert_eq!(run(&s, "incr nope 1\r\n"), "NOT_FOUND\r\n");
        assert_eq!(run(&s, "incr a x\r\n"), format!("{}\r\n", err::BAD_DELTA));
        run(&s, "set t 0 0 2\r\nhi\r\n");
        assert_eq!(run(&s, "incr t 1\r\n"), format!("{}\r\n", err::NON_NUMERIC));
        assert_eq!(run(&s, "touch t 100\r\n"), "TOUCHED\r\n");
        assert_eq!(run(&s, "touch nope 100\r\n"), "NOT_FOUND\r\n");
        assert_eq!(
            run(&s, "gat 100 t nope\r\n"),
            "VALUE t 0 2\r\nhi\r\nEND\r\n"
        );
        assert!(run(&s, "gats 0 t\r\n").starts_with("VALUE t 0 2 "));
        assert_eq!(run(&s, "gat -1 t\r\n"), "VALUE t 0 2\r\nhi\r\nEND\r\n");
        assert_eq!(run(&s, "get t\r\n"), "END\r\n");
        assert_eq!(run(&s, "delete a\r\n"), "DELETED\r\n");
        assert_eq!(run(&s, "delete a noreply\r\n"), "");
        assert_eq!(run(&s, "delete a 0\r\n"), "NOT_FOUND\r\n");
        assert_eq!(
            run(&s, "delete a 1\r\n"),
            format!("{}\r\n", err::DELETE_USAGE)
        );
        assert_eq!(run(&s, "version\r\n"), format!("VERSION {VERSION}\r\n"));
        assert_eq!(run(&s, "verbosity 1\r\n"), "OK\r\n");
        assert_eq!(run(&s, "verbosity 1 noreply\r\n"), "");
        assert_eq!(run(&s, "verbosity\r\n"), "ERROR\r\n");
        assert_eq!(
            run(&s, "verbosity x\r\n"),
            format!("{}\r\n", err::BAD_FORMAT)
        );
        run(&s, "set f 0 0 1\r\nx\r\n");
        assert_eq!(run(&s, "flush_all\r\nget f\r\n"), "OK\r\nEND\r\n");
        assert_eq!(run(&s, "flush_all 0 noreply\r\n"), "");
        assert_eq!(run(&s, "flush_all noreply\r\n"), "");
        assert_eq!(
            run(&s, "flush_all x\r\n"),
            format!("{}\r\n", err::BAD_EXPTIME)
        );
        run(&s, "set f 0 0 1\r\nx\r\n");
        assert_eq!(
            run(&s, "flush_all 100\r\nget f\r\n"),
            "OK\r\nVALUE f 0 1\r\nx\r\nEND\r\n"
        );
        assert_eq!(run(&s, "bogus\r\n"), "ERROR\r\n");
        assert_eq!(run(&s, "touch t\r\n"), "ERROR\r\n");
        assert_eq!(
            run(&s, "touch t x\r\n"),
            format!("{}\r\n", err::BAD_EXPTIME)
        );
        let long = "k".repeat(251);
        assert_eq!(
            run(&s, &format!("set {long} 0 0 1\r\nx\r\n")),
            "CLIENT_ERROR bad command line format\r\nERROR\r\n"
        );
        assert_eq!(
            run(&s, &format!("get a {long}\r\n")),
            format!("{}\r\n", err::BAD_FORMAT)
        );
        assert_eq!(
            run(&s, "set k 0 0 1\r\nxy\r\n"),
            format!("{}\r\nERROR\r\n", err::BAD_CHUNK)
        );
    }

    #[test]
    fn flows() {
        let s = new_store();
        let mut info = ServerInfo::for_tests();
        assert_eq!(
            run_flow(&s, &info, b"shutdown\r\n"),
            (format!("{}\r\n", err::SHUTDOWN_DISABLED), Flow::Continue)
        );
        info.shutdown_enabled = true;
        assert_eq!(
            run_flow(&s, &info, b"shutdown bogus\r\n").0,
            format!("{}\r\n", err::SHUTDOWN_MODE)
        );
        assert_eq!(
            run_flow(&s, &info, b"version\r\nshutdown\r\nversion\r\n"),
            (format!("VERSION {VERSION}\r\n"), Flow::Shutdown)
        );
        assert_eq!(
            run_flow(&s, &info, b"shutdown graceful\r\n").1,
            Flow::Shutdown
        );
        assert_eq!(
            run_flow(&s, &info, b"quit\r\nversion\r\n"),
            (String::new(), Flow::Close)
        );
        let long = vec![b'x'; 5000];
        assert_eq!(
            run_flow(&s, &info, &long),
            (format!("{}\r\n", err::LINE_TOO_LONG), Flow::Close)
        );
    }

    #[test]
    fn too_large() {
        let s = MemStore::new(1024, 1 << 20);
        run(&s, "set k 0 0 1\r\nx\r\n");
        let big = "y".repeat(2000);
        assert_eq!(
            run(&s, &format!("set k 0 0 2000\r\n{big}\r\nget k\r\n")),
            format!("{}\r\nEND\r\n", err::TOO_LARGE)
        );
        assert_eq!(
            run(&s, &format!("set k 0 0 2000 noreply\r\n{big}\r\nmn\r\n")),
            "MN\r\n"
        );
        assert_eq!(
            run(&s, &format!("ms k 2000 q\r\n{big}\r\nmn\r\n")),
            format!("{}\r\nMN\r\n", err::TOO_LARGE)
        );
        // A huge declared length is refused without reading it.
        let (out, _) = run_split(&s, b"set k 0 0 2000000000\r\nabc", &[]);
        assert_eq!(out, format!("{}\r\n", err::TOO_LARGE).as_bytes());
        // Just under the limit: key 1 + value + 52 = 1024.
        let v = "z".repeat(1024 - 53);
        assert_eq!(
            run(&s, &format!("set k 0 0 {}\r\n{v}\r\n", v.len())),
            "STORED\r\n"
        );
        let v = "z".repeat(1024 - 52);
        assert_eq!(
            run(&s, &format!("set k 0 0 {}\r\n{v}\r\n", v.len())),
            format!("{}\r\n", err::TOO_LARGE)
        );
    }

    #[test]
    fn stats_output() {
        let s = new_store();
        run(&s, "set a 0 0 1\r\nx\r\nget a b\r\n");
        let out = run(&s, "stats\r\n");
        for want in [
            "STAT pid ",
            "STAT uptime ",
            "STAT time ",
            "STAT version 1.6",
            "STAT curr_connections ",
            "STAT threads 4",
            "STAT curr_items 1",
            "STAT bytes 54",
            "STAT limit_maxbytes 67108864",
            "STAT cmd_get 2",
            "STAT get_hits 1",
            "STAT get_misses 1",
            "STAT cmd_set 1",
            "STAT hash_bytes ",
            "STAT total_items 1",
        ] {
            assert!(out.contains(want), "{want} missing in {out}");
        }
        assert!(out.ends_with("END\r\n"));
        assert!(out.lines().all(|l| l == "END" || l.starts_with("STAT ")));
        assert_eq!(run(&s, "stats reset\r\n"), "RESET\r\n");
        assert!(run(&s, "stats\r\n").contains("STAT cmd_get 0\r\n"));
        assert!(run(&s, "stats settings\r\n").contains("STAT item_size_max 1048576\r\n"));
        assert!(run(&s, "stats items\r\n").contains("STAT items:1:number 1\r\n"));
        assert!(run(&s, "stats slabs\r\n").ends_with("END\r\n"));
        assert_eq!(run(&s, "stats bogus\r\n"), "ERROR\r\n");
    }

    #[test]
    fn meta_commands() {
        let s = new_store();
        assert_eq!(run(&s, "mn\r\n"), "MN\r\n");
        assert_eq!(
            run(&s, "ms foo 2 c k O1 F3 T0\r\nhi\r\n"),
            "HD c1 kfoo O1\r\n"
        );
        assert_eq!(
            run(&s, "mg foo v s f c k O2 q\r\n"),
            "VA 2 s2 f3 c1 kfoo O2\r\nhi\r\n"
        );
        assert_eq!(run(&s, "mg foo\r\n"), "HD\r\n");
        assert_eq!(run(&s, "mg foo h t\r\n"), "HD h1 t-1\r\n");
        assert_eq!(run(&s, "mg miss v k O9\r\n"), "EN kmiss O9\r\n");
        assert_eq!(run(&s, "mg miss v q\r\nmn\r\n"), "MN\r\n");
        assert_eq!(run(&s, "mg Zm9v b k v\r\n"), "VA 2 kZm9v b\r\nhi\r\n");
        assert_eq!(run(&s, "mg viv N30 c v\r\n"), "VA 0 c2 W\r\n\r\n");
        assert_eq!(run(&s, "mg viv N30 s\r\n"), "HD s0\r\n");
        assert_eq!(run(&s, "ms foo 1 q\r\nx\r\nmn\r\n"), "MN\r\n");
        assert_eq!(run(&s, "ms foo 1 C1\r\nx\r\n"), "EX\r\n");
        assert_eq!(run(&s, "ms new 1 C1\r\nx\r\n"), "NF\r\n");
        assert_eq!(run(&s, "ms foo 1 ME\r\nx\r\n"), "NS\r\n");
        assert_eq!(
            run(&s, "ms foo 1 MA\r\ny\r\nmg foo v\r\n"),
            "HD\r\nVA 2\r\nxy\r\n"
        );
        assert_eq!(run(&s, "ms foo 1 MP s\r\nw\r\n"), "HD s3\r\n");
        assert_eq!(run(&s, "ms app 1 MA\r\ny\r\n"), "NS\r\n");
        assert_eq!(
            run(&s, "ms app 1 MA N0\r\ny\r\nmg app v\r\n"),
            "HD\r\nVA 1\r\ny\r\n"
        );
        assert_eq!(run(&s, "ms rep 1 MR\r\ny\r\n"), "NS\r\n");
        assert_eq!(
            run(&s, "ms foo 1 MX\r\ny\r\nmn\r\n"),
            format!("{}\r\nMN\r\n", err::BAD_MS_MODE)
        );
        assert_eq!(
            run(&s, "ms foo 2\r\nabc\r\n"),
            format!("{}\r\nERROR\r\n", err::BAD_CHUNK)
        );
        assert_eq!(run(&s, "ms foo\r\n"), format!("{}\r\n", err::BAD_FORMAT));
        assert_eq!(run(&s, "ms foo x\r\n"), format!("{}\r\n", err::BAD_FORMAT));
        assert_eq!(
            run(&s, "md foo q\r\nmd foo\r\nmd foo q\r\n"),
            "NF\r\nNF\r\n"
        );
        run(&s, "ms foo 1\r\nx\r\n");
        assert_eq!(run(&s, "md foo C1 k O5\r\n"), "EX kfoo O5\r\n");
        assert_eq!(run(&s, "md foo k\r\n"), "HD kfoo\r\n");
        assert_eq!(
            run(&s, "md foo v v\r\n"),
            format!("{}\r\n", err::INVALID_OR_DUP)
        );
        assert_eq!(run(&s, "ma cnt\r\n"), "NF\r\n");
        assert_eq!(run(&s, "ma cnt N0 J10 v\r\n"), "VA 2\r\n10\r\n");
        assert_eq!(run(&s, "ma cnt v D5\r\n"), "VA 2\r\n15\r\n");
        assert_eq!(run(&s, "ma cnt MD D20 v t\r\n"), "VA 1 t-1\r\n0\r\n");
        assert_eq!(run(&s, "ma cnt q\r\nmn\r\n"), "MN\r\n");
        assert_eq!(run(&s, "ma cnt C1 O1\r\n"), "EX O1\r\n");
        assert_eq!(
            run(&s, "ma cnt MX\r\n"),
            format!("{}\r\n", err::BAD_MA_MODE)
        );
        assert_eq!(
            run(&s, "ma cnt Dx\r\n"),
            format!("{}\r\n", err::INVALID_OR_DUP)
        );
        assert_eq!(run(&s, "ma app\r\n"), format!("{}\r\n", err::NON_NUMERIC));
        let me = run(&s, "me app\r\n");
        assert!(
            me.starts_with("ME app exp=-1 la=") && me.contains(" fetch=yes cls=1 size=56\r\n"),
            "{me}"
        );
        assert_eq!(run(&s, "me nope\r\n"), "EN\r\n");
        assert_eq!(run(&s, "mg\r\n"), "ERROR\r\n");
        assert_eq!(run(&s, "mz foo\r\n"), "ERROR\r\n");
        assert_eq!(
            run(&s, "mg foo O123456789012345678901234567890123\r\n"),
            format!("{}\r\n", err::OPAQUE_TOO_LONG)
        );
        let many = " v".repeat(0) + &(0..20).map(|i| format!(" O{i}")).collect::<String>();
        assert_eq!(
            run(&s, &format!("mg foo{many}\r\n")),
            format!("{}\r\n", err::MG_TOO_MANY)
        );
        assert_eq!(run(&s, "mg !!! b\r\n"), format!("{}\r\n", err::BAD_KEY_B64));
    }

    fn command() -> impl Strategy<Value = Vec<u8>> {
        let key = prop::sample::select(vec!["a", "b", "c", "n", "Zm9v"]);
        let val = prop::collection::vec(any::<u8>(), 0..20);
        prop_oneof![
            (
                key.clone(),
                val.clone(),
                prop::sample::select(vec!["set", "add", "replace", "append", "prepend"]),
                any::<bool>()
            )
                .prop_map(|(k, v, c, nr)| {
                    let mut s = format!(
                        "{c} {k} 7 0 {}{}\r\n",
                        v.len(),
                        if nr { " noreply" } else { "" }
                    )
                    .into_bytes();
                    s.extend(v);
                    s.extend_from_slice(b"\r\n");
                    s
                }),
            (key.clone(), 0..6u64)
                .prop_map(|(k, c)| format!("cas {k} 0 0 1 {c}\r\nz\r\n").into_bytes()),
            (key.clone(), key.clone()).prop_map(|(a, b)| format!("gets {a} {b}\r\n").into_bytes()),
            key.clone()
                .prop_map(|k| format!("get {k}\r\n").into_bytes()),
            key.clone()
                .prop_map(|k| format!("delete {k}\r\n").into_bytes()),
            (key.clone(), any::<bool>(), any::<u64>()).prop_map(|(k, i, d)| format!(
                "{} {k} {d}\r\n",
                if i { "incr" } else { "decr" }
            )
            .into_bytes()),
            key.clone()
                .prop_map(|k| format!("set {k} 0 0 2\r\n42\r\n").into_bytes()),
            key.clone()
                .prop_map(|k| format!("touch {k} 1000\r\n").into_bytes()),
            key.clone()
                .prop_map(|k| format!("mg {k} v c f k s q O1\r\n").into_bytes()),
            key.clone()
                .prop_map(|k| format!("mg {k} b k v\r\n").into_bytes()),
            (key.clone(), val).prop_map(|(k, v)| {
                let mut s = format!("ms {k} {} c MA N0\r\n", v.len()).into_bytes();
                s.extend(v);
                s.extend_from_slice(b"\r\n");
                s
            }),
            key.clone()
                .prop_map(|k| format!("md {k} q k\r\n").into_bytes()),
            key.prop_map(|k| format!("ma {k} N0 J7 v c\r\n").into_bytes()),
            Just(b"mn\r\n".to_vec()),
            Just(b"version\r\n".to_vec()),
            Just(b"flush_all\r\n".to_vec()),
            Just({
                let mut v = b"set big 0 0 5000\r\n".to_vec();
                v.resize(v.len() + 5000, b'x');
                v.extend_from_slice(b"\r\nms big 5000 q\r\n");
                v.resize(v.len() + 5000, b'y');
                v.extend_from_slice(b"\r\n");
                v
            }),
            Just(b"bogus line\r\n".to_vec()),
            Just(b"set k 0 0 1\r\nxx\r\n".to_vec()),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn split_stream_same_replies(cmds in prop::collection::vec(command(), 1..30), cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12)) {
            let input: Vec<u8> = cmds.concat();
            let small = || MemStore::new(4096, 1 << 20);
            let whole = run_split(&small(), &input, &[]);
            let cuts: Vec<usize> = cuts.iter().map(|i| i.index(input.len() + 1)).collect();
            let split = run_split(&small(), &input, &cuts);
            prop_assert_eq!(whole.1, Flow::Continue);
            prop_assert_eq!(whole, split);
        }

        #[test]
        fn random_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..3000), cuts in prop::collection::vec(0usize..3000, 0..8)) {
            let s = MemStore::new(2048, 1 << 20);
            run_split(&s, &data, &cuts);
        }

        #[test]
        fn malformed_token_soup_never_panics(toks in prop::collection::vec(prop::sample::select(vec![
            "set", "get", "gets", "gat", "cas", "incr", "decr", "delete", "touch", "flush_all", "stats", "mg", "ms", "md", "ma", "me", "mn",
            "verbosity", "shutdown", "quit", "k", "Zm9v", "0", "1", "-1", "5", "4294967296", "99999999999999999999999", "noreply",
            "b", "q", "v", "k", "O1", "T-1", "N5", "C1", "MA", "ME", "MX", "D3", "J", "F9", "\r\n", "\n", "\r", " ", "\0", "\u{ff}",
        ]), 0..80), cuts in prop::collection::vec(0usize..400, 0..8)) {
            let data: Vec<u8> = toks.join(" ").into_bytes();
            let s = MemStore::new(2048, 1 << 20);
            let mut info = ServerInfo::for_tests();
            info.shutdown_enabled = false;
            run_split(&s, &data, &cuts);
        }
    }
}
