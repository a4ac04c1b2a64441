//! Command execution: dispatches parsed commands to a [`Db`] and encodes the replies with
//! Redis' formats and error texts.

use super::db::{unix_ms, Db, DbError, Expiry, SetCond};
use super::memdb::parse_i64_strict;
use super::proto::{parse_double, reply, Parser, Step};
use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// The Redis version reported by `INFO` and `HELLO`, so that clients pick modern behaviour.
pub const REDIS_VERSION: &str = "7.0.0";

/// Error texts.
pub mod err {
    /// An argument that must be an integer.
    pub const NOT_INTEGER: &str = "ERR value is not an integer or out of range";
    /// An argument that must be a float.
    pub const NOT_FLOAT: &str = "ERR value is not a valid float";
    /// Bad or conflicting options.
    pub const SYNTAX: &str = "ERR syntax error";
    /// A negative count.
    pub const NOT_POSITIVE: &str = "ERR value is out of range, must be positive";
    /// DECRBY of `i64::MIN`.
    pub const DECR_OVERFLOW: &str = "ERR decrement would overflow";
    /// SELECT of a database other than 0.
    pub const DB_INDEX: &str = "ERR DB index is out of range";
    /// Too many connections (sent before closing).
    pub const MAX_CLIENTS: &str = "ERR max number of clients reached";
}

/// Server-wide settings and counters that `INFO`, `CONFIG GET` and `CLIENT` report.
#[derive(Debug)]
pub struct ServerInfo {
    /// Start time (for uptime).
    pub started: Instant,
    /// TCP port.
    pub port: u16,
    /// Listen address.
    pub bind: String,
    /// Worker threads.
    pub threads: u32,
    /// `--maxclients`.
    pub maxclients: u64,
    /// Backend name (`memory`, ...).
    pub backend: String,
    /// A random 40-hex-digit id of this run.
    pub run_id: String,
    /// Open connections.
    pub connected_clients: AtomicU64,
    /// Connections accepted since start.
    pub total_connections: AtomicU64,
    /// Connections refused (over `--maxclients`).
    pub rejected_connections: AtomicU64,
    /// Commands executed since start.
    pub total_commands: AtomicU64,
    /// Keys removed by the active expiry sweep.
    pub expired_keys: AtomicU64,
    /// The next `CLIENT ID`.
    pub next_client_id: AtomicU64,
}

impl ServerInfo {
    /// Settings for `port` and `backend`, counters at zero.
    pub fn new(port: u16, bind: &str, threads: u32, maxclients: u64, backend: &str) -> Self {
        let seed = unix_ms() ^ u64::from(std::process::id()).rotate_left(32);
        let mut x = seed | 1;
        let run_id = (0..40)
            .map(|_| {
                // xorshift: an id, not a secret
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                char::from(b"0123456789abcdef"[(x % 16) as usize])
            })
            .collect();
        ServerInfo {
            started: Instant::now(),
            port,
            bind: bind.into(),
            threads,
            maxclients,
            backend: backend.into(),
            run_id,
            connected_clients: AtomicU64::new(0),
            total_connections: AtomicU64::new(0),
            rejected_connections: AtomicU64::new(0),
            total_commands: AtomicU64::new(0),
            expired_keys: AtomicU64::new(0),
            next_client_id: AtomicU64::new(1),
        }
    }

    /// Defaults for tests.
    pub fn for_tests() -> Self {
        ServerInfo::new(6380, "127.0.0.1", 1, 10_000, "memory")
    }
}

/// Per-connection state.
#[derive(Debug)]
pub struct Session {
    /// `CLIENT ID`.
    pub id: u64,
    /// `CLIENT SETNAME`.
    pub name: Option<Vec<u8>>,
    /// The request parser.
    pub parser: Parser,
}

impl Session {
    /// A new connection's state, with the next client id.
    pub fn new(info: &ServerInfo) -> Session {
        Session {
            id: info.next_client_id.fetch_add(1, Ordering::Relaxed),
            name: None,
            parser: Parser::new(),
        }
    }
}

/// What the connection should do after a batch (the servers' shared type).
pub use crate::net::Flow;

/// Parses and executes every complete command in `input`, appending replies to `out`.
/// Returns the bytes consumed and what the connection should do next.
pub fn process(
    db: &dyn Db,
    info: &ServerInfo,
    session: &mut Session,
    input: &[u8],
    out: &mut Vec<u8>,
) -> (usize, Flow) {
    let mut pos = 0;
    let now = unix_ms();
    // Each step consumes input or returns; the bound is a guard.
    for _ in 0..=input.len() {
        let (n, step) = session.parser.next(&input[pos..]);
        pos += n;
        match step {
            Step::NeedMore => return (pos, Flow::Continue),
            Step::Skip => {}
            Step::Error(e) => {
                reply::error(out, &e.message());
                return (pos, Flow::Close);
            }
            Step::Cmd(args) => {
                let args: Vec<&[u8]> = args.iter().map(Cow::as_ref).collect();
                let flow = execute(db, info, session, &args, now, out);
                if flow != Flow::Continue {
                    return (pos, flow);
                }
            }
        }
        if pos >= input.len() {
            break;
        }
    }
    (pos, Flow::Continue)
}

/// A command error: the reply text.
#[derive(Debug)]
struct Fail(Cow<'static, str>);

impl From<DbError> for Fail {
    fn from(e: DbError) -> Fail {
        Fail(Cow::Owned(e.to_string()))
    }
}

impl From<&'static str> for Fail {
    fn from(e: &'static str) -> Fail {
        Fail(Cow::Borrowed(e))
    }
}

type Res = Result<(), Fail>;

/// Commands and their arity (Redis' convention: `n` exactly n words, `-n` at least n).
pub const COMMANDS: &[(&str, i32)] = &[
    ("ping", -1),
    ("echo", 2),
    ("quit", -1),
    ("shutdown", -1),
    ("select", 2),
    ("hello", -1),
    ("client", -2),
    ("command", -1),
    ("config", -2),
    ("info", -1),
    ("dbsize", 1),
    ("flushall", -1),
    ("flushdb", -1),
    ("time", 1),
    ("type", 2),
    ("get", 2),
    ("set", -3),
    ("setnx", 3),
    ("setex", 4),
    ("psetex", 4),
    ("getset", 3),
    ("incr", 2),
    ("decr", 2),
    ("incrby", 3),
    ("decrby", 3),
    ("mset", -3),
    ("mget", -2),
    ("del", -2),
    ("unlink", -2),
    ("exists", -2),
    ("expire", -3),
    ("pexpire", -3),
    ("expireat", -3),
    ("pexpireat", -3),
    ("ttl", 2),
    ("pttl", 2),
    ("persist", 2),
    ("lpush", -3),
    ("rpush", -3),
    ("lpop", -2),
    ("rpop", -2),
    ("lrange", 4),
    ("llen", 2),
    ("hset", -4),
    ("hmset", -4),
    ("hget", 3),
    ("hmget", -3),
    ("hdel", -3),
    ("hgetall", 2),
    ("hlen", 2),
    ("hexists", 3),
    ("sadd", -3),
    ("srem", -3),
    ("smembers", 2),
    ("spop", -2),
    ("scard", 2),
    ("sismember", 3),
    ("zadd", -4),
    ("zrange", -4),
    ("zpopmin", -2),
    ("zcard", 2),
    ("zscore", 3),
];

/// The table entry of a command name (ASCII case-insensitive).
fn lookup(name: &[u8]) -> Option<(&'static str, i32)> {
    let mut buf = [0u8; 16];
    let low = buf.get_mut(..name.len())?;
    low.copy_from_slice(name);
    low.make_ascii_lowercase();
    COMMANDS
        .iter()
        .find(|(c, _)| c.as_bytes() == &*low)
        .copied()
}

/// `'%s'` of client bytes for an error message: lossy UTF-8, at most `max` bytes.
fn quoted_arg(b: &[u8], max: usize) -> String {
    let s = String::from_utf8_lossy(&b[..b.len().min(max)]);
    s.replace(['\r', '\n'], " ")
}

fn unknown_command(args: &[&[u8]]) -> String {
    let name = args.first().map(|n| quoted_arg(n, 128)).unwrap_or_default();
    let mut rest = String::new();
    for a in args.iter().skip(1) {
        if rest.len() >= 128 {
            break;
        }
        let room = 128 - rest.len();
        rest.push('\'');
        rest.push_str(&quoted_arg(a, room));
        rest.push_str("' ");
    }
    format!("ERR unknown command '{name}', with args beginning with: {rest}")
}

fn wrong_arity(name: &str) -> String {
    format!("ERR wrong number of arguments for '{name}' command")
}

fn arity_ok(arity: i32, n: usize) -> bool {
    if arity >= 0 {
        n == arity as usize
    } else {
        n >= arity.unsigned_abs() as usize
    }
}

fn int_arg(b: &[u8]) -> Result<i64, Fail> {
    parse_i64_strict(b).ok_or(Fail(Cow::Borrowed(err::NOT_INTEGER)))
}

/// A count argument: a non-negative integer.
fn count_arg(b: &[u8]) -> Result<usize, Fail> {
    match parse_i64_strict(b) {
        Some(n) if n >= 0 => Ok(usize::try_from(n).unwrap_or(usize::MAX)),
        _ => Err(err::NOT_POSITIVE.into()),
    }
}

fn eq_ic(a: &[u8], b: &str) -> bool {
    a.eq_ignore_ascii_case(b.as_bytes())
}

/// Executes one command (`args[0]` is its name); appends the reply.
pub fn execute(
    db: &dyn Db,
    info: &ServerInfo,
    session: &mut Session,
    args: &[&[u8]],
    now: u64,
    out: &mut Vec<u8>,
) -> Flow {
    let Some(first) = args.first() else {
        return Flow::Continue;
    };
    let Some((name, arity)) = lookup(first) else {
        reply::error(out, &unknown_command(args));
        return Flow::Continue;
    };
    if !arity_ok(arity, args.len()) {
        reply::error(out, &wrong_arity(name));
        return Flow::Continue;
    }
    info.total_commands.fetch_add(1, Ordering::Relaxed);
    let mut flow = Flow::Continue;
    let res = run(db, info, session, name, args, now, out, &mut flow);
    if let Err(Fail(msg)) = res {
        reply::error(out, &msg);
    }
    flow
}

#[allow(clippy::too_many_arguments)]
fn run(
    db: &dyn Db,
    info: &ServerInfo,
    session: &mut Session,
    name: &str,
    args: &[&[u8]],
    now: u64,
    out: &mut Vec<u8>,
    flow: &mut Flow,
) -> Res {
    let a = args;
    match name {
        "ping" => match a.len() {
            1 => reply::simple(out, "PONG"),
            2 => reply::bulk(out, a[1]),
            _ => return Err(Fail(wrong_arity("ping").into())),
        },
        "echo" => reply::bulk(out, a[1]),
        "quit" => {
            reply::simple(out, "OK");
            *flow = Flow::Close;
        }
        "shutdown" => {
            for o in &a[1..] {
                if !["nosave", "save", "now", "force"]
                    .iter()
                    .any(|w| eq_ic(o, w))
                {
                    return Err(err::SYNTAX.into());
                }
            }
            // Like Redis, no reply: the connection closes and the server exits.
            *flow = Flow::Shutdown;
        }
        "select" => {
            if int_arg(a[1])? != 0 {
                return Err(err::DB_INDEX.into());
            }
            reply::simple(out, "OK");
        }
        "hello" => hello(info, session, a, out)?,
        "client" => client(session, a, out)?,
        "command" => command(a, out)?,
        "config" => config(info, a, out)?,
        "info" => info_cmd(db, info, a, now, out),
        "dbsize" => reply::int(out, db.dbsize(now) as i64),
        "flushall" | "flushdb" => {
            if a.len() > 2
                || a.get(1)
                    .is_some_and(|o| !eq_ic(o, "async") && !eq_ic(o, "sync"))
            {
                return Err(err::SYNTAX.into());
            }
            db.flushall()?;
            reply::simple(out, "OK");
        }
        "time" => {
            let us = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_micros())
                .unwrap_or(0);
            reply::array(out, 2);
            reply::bulk(out, (us / 1_000_000).to_string().as_bytes());
            reply::bulk(out, (us % 1_000_000).to_string().as_bytes());
        }
        "type" => {
            let t = db.key_type(a[1], now).map_or("none", |t| t.name());
            reply::simple(out, t);
        }
        "get" => reply::opt_bulk(out, db.get(a[1], now)?.as_deref()),
        "set" => set(db, a, now, out)?,
        "setnx" => {
            let ok = db.set(a[1], a[2], SetCond::IfAbsent, Expiry::Clear, now)?;
            reply::int(out, i64::from(ok));
        }
        "setex" | "psetex" => {
            let n = int_arg(a[2])?;
            let unit = if name == "setex" { 1000 } else { 1 };
            let at = (n > 0)
                .then(|| n.checked_mul(unit))
                .flatten()
                .and_then(|ms| (now as i64).checked_add(ms))
                .ok_or_else(|| {
                    Fail(format!("ERR invalid expire time in '{name}' command").into())
                })?;
            db.set(a[1], a[3], SetCond::Always, Expiry::At(at as u64), now)?;
            reply::simple(out, "OK");
        }
        "getset" => {
            let (_, old) = db.set_get(a[1], a[2], SetCond::Always, Expiry::Clear, now)?;
            reply::opt_bulk(out, old.as_deref());
        }
        "incr" | "decr" | "incrby" | "decrby" => {
            let delta = match name {
                "incr" => 1,
                "decr" => -1,
                "incrby" => int_arg(a[2])?,
                _ => int_arg(a[2])?
                    .checked_neg()
                    .ok_or(Fail(Cow::Borrowed(err::DECR_OVERFLOW)))?,
            };
            reply::int(out, db.incr_by(a[1], delta, now)?);
        }
        "mset" => {
            if a.len().is_multiple_of(2) {
                return Err(Fail(wrong_arity(name).into()));
            }
            let pairs: Vec<(&[u8], &[u8])> = a[1..].chunks_exact(2).map(|p| (p[0], p[1])).collect();
            db.mset(&pairs, now)?;
            reply::simple(out, "OK");
        }
        "mget" => {
            reply::array(out, a.len() - 1);
            for k in &a[1..] {
                // MGET answers nil for a key of another kind.
                let v = db.get(k, now).ok().flatten();
                reply::opt_bulk(out, v.as_deref());
            }
        }
        "del" | "unlink" => {
            let mut n = 0;
            for k in &a[1..] {
                n += i64::from(db.del(k, now)?);
            }
            reply::int(out, n);
        }
        "exists" => {
            let n = a[1..].iter().filter(|k| db.exists(k, now)).count();
            reply::int(out, n as i64);
        }
        "expire" | "pexpire" | "expireat" | "pexpireat" => expire(db, name, a, now, out)?,
        "ttl" | "pttl" => {
            let v = match db.expiry(a[1], now) {
                None => -2,
                Some(None) => -1,
                Some(Some(at)) => {
                    let ms = at.saturating_sub(now).min(i64::MAX as u64) as i64;
                    if name == "ttl" {
                        (ms + 500) / 1000
                    } else {
                        ms
                    }
                }
            };
            reply::int(out, v);
        }
        "persist" => {
            let had = matches!(db.expiry(a[1], now), Some(Some(_)));
            if had {
                db.set_expiry(a[1], None, now)?;
            }
            reply::int(out, i64::from(had));
        }
        "lpush" | "rpush" => {
            let n = db.push(a[1], &a[2..], name == "lpush", now)?;
            reply::int(out, n as i64);
        }
        "lpop" | "rpop" => {
            if a.len() > 3 {
                return Err(Fail(wrong_arity(name).into()));
            }
            let front = name == "lpop";
            match a.get(2) {
                None => {
                    let v = db.pop(a[1], front, 1, now)?;
                    reply::opt_bulk(out, v.first().map(Vec::as_slice));
                }
                Some(c) => {
                    let count = count_arg(c)?;
                    if !db.exists(a[1], now) {
                        // (checks the type first, like Redis)
                        db.llen(a[1], now)?;
                        reply::nil_array(out);
                    } else {
                        reply::bulks(out, &db.pop(a[1], front, count, now)?);
                    }
                }
            }
        }
        "lrange" => {
            let (s, e) = (int_arg(a[2])?, int_arg(a[3])?);
            db.lrange_reply(a[1], s, e, now, out)?;
        }
        "llen" => reply::int(out, db.llen(a[1], now)? as i64),
        "hset" | "hmset" => {
            if !a.len().is_multiple_of(2) {
                return Err(Fail(wrong_arity(name).into()));
            }
            let pairs: Vec<(&[u8], &[u8])> = a[2..].chunks_exact(2).map(|p| (p[0], p[1])).collect();
            let n = db.hset(a[1], &pairs, now)?;
            if name == "hset" {
                reply::int(out, n as i64);
            } else {
                reply::simple(out, "OK");
            }
        }
        "hget" => reply::opt_bulk(out, db.hget(a[1], a[2], now)?.as_deref()),
        "hmget" => {
            let mut vals = Vec::with_capacity(a.len() - 2);
            for f in &a[2..] {
                vals.push(db.hget(a[1], f, now)?);
            }
            reply::array(out, vals.len());
            for v in &vals {
                reply::opt_bulk(out, v.as_deref());
            }
        }
        "hexists" => reply::int(out, i64::from(db.hget(a[1], a[2], now)?.is_some())),
        "hdel" => reply::int(out, db.hdel(a[1], &a[2..], now)? as i64),
        "hgetall" => {
            let all = db.hgetall(a[1], now)?;
            reply::array(out, all.len() * 2);
            for (f, v) in &all {
                reply::bulk(out, f);
                reply::bulk(out, v);
            }
        }
        "hlen" => reply::int(out, db.hlen(a[1], now)? as i64),
        "sadd" => reply::int(out, db.sadd(a[1], &a[2..], now)? as i64),
        "srem" => reply::int(out, db.srem(a[1], &a[2..], now)? as i64),
        "smembers" => reply::bulks(out, &db.smembers(a[1], now)?),
        "spop" => {
            if a.len() > 3 {
                return Err(err::SYNTAX.into());
            }
            match a.get(2) {
                None => {
                    let v = db.spop(a[1], 1, now)?;
                    reply::opt_bulk(out, v.first().map(Vec::as_slice));
                }
                Some(c) => {
                    let count = count_arg(c)?;
                    reply::bulks(out, &db.spop(a[1], count, now)?);
                }
            }
        }
        "scard" => reply::int(out, db.scard(a[1], now)? as i64),
        "sismember" => reply::int(out, i64::from(db.sismember(a[1], a[2], now)?)),
        "zadd" => zadd(db, a, now, out)?,
        "zrange" => {
            let (s, e) = (int_arg(a[2])?, int_arg(a[3])?);
            let scores = match a.len() {
                4 => false,
                5 if eq_ic(a[4], "withscores") => true,
                _ => return Err(err::SYNTAX.into()),
            };
            let r = db.zrange(a[1], s, e, now)?;
            pairs_reply(out, &r, scores);
        }
        "zpopmin" => {
            if a.len() > 3 {
                return Err(err::SYNTAX.into());
            }
            let count = match a.get(2) {
                Some(c) => count_arg(c)?,
                None => 1,
            };
            pairs_reply(out, &db.zpopmin(a[1], count, now)?, true);
        }
        "zcard" => reply::int(out, db.zcard(a[1], now)? as i64),
        "zscore" => match db.zscore(a[1], a[2], now)? {
            Some(s) => reply::double(out, s),
            None => reply::nil(out),
        },
        _ => reply::error(out, &unknown_command(a)),
    }
    Ok(())
}

fn pairs_reply(out: &mut Vec<u8>, r: &[(Vec<u8>, f64)], scores: bool) {
    reply::array(out, if scores { r.len() * 2 } else { r.len() });
    for (m, s) in r {
        reply::bulk(out, m);
        if scores {
            reply::double(out, *s);
        }
    }
}

fn set(db: &dyn Db, a: &[&[u8]], now: u64, out: &mut Vec<u8>) -> Res {
    let mut cond = SetCond::Always;
    let mut expiry = Expiry::Clear;
    let mut expiry_given = false;
    let mut get = false;
    let mut i = 3;
    // Each iteration consumes one or two words.
    while i < a.len() {
        let o = a[i];
        let unit = if eq_ic(o, "ex") || eq_ic(o, "exat") {
            Some(1000)
        } else if eq_ic(o, "px") || eq_ic(o, "pxat") {
            Some(1)
        } else {
            None
        };
        if let Some(unit) = unit {
            let Some(v) = a.get(i + 1) else {
                return Err(err::SYNTAX.into());
            };
            if expiry_given {
                return Err(err::SYNTAX.into());
            }
            let n = int_arg(v)?;
            let relative = o.len() == 2;
            let invalid = || Fail("ERR invalid expire time in 'set' command".into());
            if n <= 0 {
                return Err(invalid());
            }
            let mut ms = n.checked_mul(unit).ok_or_else(invalid)?;
            if relative {
                ms = ms.checked_add(now as i64).ok_or_else(invalid)?;
            }
            expiry = Expiry::At(ms as u64);
            expiry_given = true;
            i += 2;
            continue;
        }
        if eq_ic(o, "nx") && cond != SetCond::IfPresent {
            cond = SetCond::IfAbsent;
        } else if eq_ic(o, "xx") && cond != SetCond::IfAbsent {
            cond = SetCond::IfPresent;
        } else if eq_ic(o, "keepttl") && !expiry_given {
            expiry = Expiry::Keep;
            expiry_given = true;
        } else if eq_ic(o, "get") {
            get = true;
        } else {
            return Err(err::SYNTAX.into());
        }
        i += 1;
    }
    if get {
        let (_, old) = db.set_get(a[1], a[2], cond, expiry, now)?;
        reply::opt_bulk(out, old.as_deref());
    } else if db.set(a[1], a[2], cond, expiry, now)? {
        reply::simple(out, "OK");
    } else {
        reply::nil(out);
    }
    Ok(())
}

fn expire(db: &dyn Db, name: &str, a: &[&[u8]], now: u64, out: &mut Vec<u8>) -> Res {
    let n = int_arg(a[2])?;
    let (mut nx, mut xx, mut gt, mut lt) = (false, false, false, false);
    for o in &a[3..] {
        if eq_ic(o, "nx") {
            nx = true;
        } else if eq_ic(o, "xx") {
            xx = true;
        } else if eq_ic(o, "gt") {
            gt = true;
        } else if eq_ic(o, "lt") {
            lt = true;
        } else {
            return Err(Fail(
                format!("ERR Unsupported option {}", quoted_arg(o, 128)).into(),
            ));
        }
    }
    if nx && (xx || gt || lt) {
        return Err("ERR NX and XX, GT or LT options at the same time are not compatible".into());
    }
    if gt && lt {
        return Err("ERR GT and LT options at the same time are not compatible".into());
    }
    let unit = if name == "expire" || name == "expireat" {
        1000
    } else {
        1
    };
    let base = if name.ends_with("at") { 0 } else { now as i64 };
    let at = n
        .checked_mul(unit)
        .and_then(|ms| ms.checked_add(base))
        .ok_or_else(|| Fail(format!("ERR invalid expire time in '{name}' command").into()))?;
    let Some(cur) = db.expiry(a[1], now) else {
        reply::int(out, 0);
        return Ok(());
    };
    let new = at.max(0) as u64;
    let ok = match cur {
        None => !xx && !gt,
        Some(c) => !nx && (!gt || new > c) && (!lt || new < c),
    };
    let done = ok && db.set_expiry(a[1], Some(new), now)?;
    reply::int(out, i64::from(done));
    Ok(())
}

fn zadd(db: &dyn Db, a: &[&[u8]], now: u64, out: &mut Vec<u8>) -> Res {
    let (mut nx, mut xx, mut ch) = (false, false, false);
    let mut i = 2;
    while i < a.len() {
        let o = a[i];
        if eq_ic(o, "nx") {
            nx = true;
        } else if eq_ic(o, "xx") {
            xx = true;
        } else if eq_ic(o, "ch") {
            ch = true;
        } else if eq_ic(o, "gt") || eq_ic(o, "lt") || eq_ic(o, "incr") {
            return Err("ERR GT, LT and INCR options are not supported by this server".into());
        } else {
            break;
        }
        i += 1;
    }
    let rest = &a[i..];
    if rest.is_empty() || !rest.len().is_multiple_of(2) {
        return Err(err::SYNTAX.into());
    }
    if nx && xx {
        return Err("ERR XX and NX options at the same time are not compatible".into());
    }
    let mut pairs = Vec::with_capacity(rest.len() / 2);
    for p in rest.chunks_exact(2) {
        let s = parse_double(p[0]).ok_or(Fail(Cow::Borrowed(err::NOT_FLOAT)))?;
        pairs.push((s, p[1]));
    }
    let cond = if nx {
        SetCond::IfAbsent
    } else if xx {
        SetCond::IfPresent
    } else {
        SetCond::Always
    };
    reply::int(out, db.zadd_cond(a[1], &pairs, cond, ch, now)? as i64);
    Ok(())
}

fn hello(info: &ServerInfo, session: &mut Session, a: &[&[u8]], out: &mut Vec<u8>) -> Res {
    let mut i = 1;
    if let Some(v) = a.get(1) {
        match parse_i64_strict(v) {
            Some(2) => {}
            Some(_) => return Err("NOPROTO unsupported protocol version".into()),
            None => return Err("ERR Protocol version is not an integer or out of range".into()),
        }
        i = 2;
    }
    let mut name = None;
    while i < a.len() {
        if eq_ic(a[i], "setname") && i + 1 < a.len() {
            name = Some(a[i + 1]);
            i += 2;
        } else if eq_ic(a[i], "auth") && i + 2 < a.len() {
            // no authentication configured: any credentials are accepted
            i += 3;
        } else {
            return Err(Fail(
                format!(
                    "ERR Syntax error in HELLO option '{}'",
                    quoted_arg(a[i], 128)
                )
                .into(),
            ));
        }
    }
    if let Some(n) = name {
        check_client_name(n)?;
        session.name = (!n.is_empty()).then(|| n.to_vec());
    }
    let _ = info;
    reply::array(out, 14);
    reply::bulk(out, b"server");
    reply::bulk(out, b"redis");
    reply::bulk(out, b"version");
    reply::bulk(out, REDIS_VERSION.as_bytes());
    reply::bulk(out, b"proto");
    reply::int(out, 2);
    reply::bulk(out, b"id");
    reply::int(out, session.id as i64);
    reply::bulk(out, b"mode");
    reply::bulk(out, b"standalone");
    reply::bulk(out, b"role");
    reply::bulk(out, b"master");
    reply::bulk(out, b"modules");
    reply::array(out, 0);
    Ok(())
}

fn check_client_name(n: &[u8]) -> Res {
    if n.iter().any(|&b| !(b'!'..=b'~').contains(&b)) {
        return Err(
            "ERR Client names cannot contain spaces, newlines or special characters.".into(),
        );
    }
    Ok(())
}

fn subcommand_error(sub: &[u8], cmd: &str) -> Fail {
    Fail(
        format!(
            "ERR unknown subcommand '{}'. Try {cmd} HELP.",
            quoted_arg(sub, 128)
        )
        .into(),
    )
}

fn client(session: &mut Session, a: &[&[u8]], out: &mut Vec<u8>) -> Res {
    let sub = a[1];
    let arity = |n: usize, what: &str| -> Res {
        if a.len() == n {
            Ok(())
        } else {
            Err(Fail(wrong_arity(&format!("client|{what}")).into()))
        }
    };
    if eq_ic(sub, "id") {
        arity(2, "id")?;
        reply::int(out, session.id as i64);
    } else if eq_ic(sub, "getname") {
        arity(2, "getname")?;
        reply::opt_bulk(out, session.name.as_deref());
    } else if eq_ic(sub, "setname") {
        arity(3, "setname")?;
        check_client_name(a[2])?;
        session.name = (!a[2].is_empty()).then(|| a[2].to_vec());
        reply::simple(out, "OK");
    } else if eq_ic(sub, "setinfo") {
        arity(4, "setinfo")?;
        reply::simple(out, "OK");
    } else {
        return Err(subcommand_error(sub, "CLIENT"));
    }
    Ok(())
}

fn command(a: &[&[u8]], out: &mut Vec<u8>) -> Res {
    match a.get(1) {
        // No command metadata: clients fall back to their built-in tables.
        None => reply::array(out, 0),
        Some(s) if eq_ic(s, "docs") || eq_ic(s, "info") => reply::array(out, 0),
        Some(s) if eq_ic(s, "count") => reply::int(out, COMMANDS.len() as i64),
        Some(s) => return Err(subcommand_error(s, "COMMAND")),
    }
    Ok(())
}

/// Glob match (`*`, `?`, no classes), ASCII case-insensitive.
fn glob(pat: &[u8], s: &[u8]) -> bool {
    let (mut p, mut i) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    // Each iteration advances `i` or `p`, or moves back to the last star with `i` advanced:
    // at most |s| * (|pat| + 1) steps.
    while i < s.len() {
        if p < pat.len() && (pat[p] == b'?' || pat[p].eq_ignore_ascii_case(&s[i])) {
            p += 1;
            i += 1;
        } else if p < pat.len() && pat[p] == b'*' {
            star = Some((p, i));
            p += 1;
        } else if let Some((sp, si)) = star {
            p = sp + 1;
            i = si + 1;
            star = Some((sp, si + 1));
        } else {
            return false;
        }
    }
    pat[p..].iter().all(|&c| c == b'*')
}

fn config(info: &ServerInfo, a: &[&[u8]], out: &mut Vec<u8>) -> Res {
    let sub = a[1];
    if eq_ic(sub, "get") {
        if a.len() < 3 {
            return Err(Fail(wrong_arity("config|get").into()));
        }
        let params: [(&str, String); 7] = [
            ("save", String::new()),
            ("appendonly", "no".into()),
            ("appendfsync", "everysec".into()),
            ("maxclients", info.maxclients.to_string()),
            ("port", info.port.to_string()),
            ("bind", info.bind.clone()),
            ("databases", "1".into()),
        ];
        let found: Vec<&(&str, String)> = params
            .iter()
            .filter(|(k, _)| a[2..].iter().any(|p| glob(p, k.as_bytes())))
            .collect();
        reply::array(out, found.len() * 2);
        for (k, v) in found {
            reply::bulk(out, k.as_bytes());
            reply::bulk(out, v.as_bytes());
        }
    } else if eq_ic(sub, "resetstat") {
        reply::simple(out, "OK");
    } else if eq_ic(sub, "set") {
        return Err("ERR CONFIG SET is not supported by this server".into());
    } else {
        return Err(subcommand_error(sub, "CONFIG"));
    }
    Ok(())
}

fn human_bytes(n: u64) -> String {
    let units = ["B", "K", "M", "G", "T"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n}B")
    } else {
        format!("{v:.2}{}", units[u])
    }
}

fn info_cmd(db: &dyn Db, info: &ServerInfo, a: &[&[u8]], now: u64, out: &mut Vec<u8>) {
    // Every section, in output order (also what `all`, `everything` and `default` select).
    const ALL: [&str; 8] = [
        "server",
        "clients",
        "memory",
        "persistence",
        "stats",
        "replication",
        "keyspace",
        "backend",
    ];
    let mut want: Vec<String> = Vec::new();
    for s in &a[1..] {
        let s = String::from_utf8_lossy(s).to_ascii_lowercase();
        if s == "all" || s == "everything" || s == "default" {
            want.extend(ALL.iter().map(|x| x.to_string()));
        } else {
            want.push(s);
        }
    }
    if want.is_empty() {
        want.extend(ALL.iter().map(|x| x.to_string()));
    }
    let backend = db.info();
    let used: u64 = backend
        .iter()
        .find(|(k, _)| k == "used_memory")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let up = info.started.elapsed().as_secs();
    let mut s = String::new();
    let mut section = |title: &str, lines: &[(&str, String)]| {
        if !s.is_empty() {
            s.push_str("\r\n");
        }
        s.push_str("# ");
        s.push_str(title);
        s.push_str("\r\n");
        for (k, v) in lines {
            s.push_str(k);
            s.push(':');
            s.push_str(v);
            s.push_str("\r\n");
        }
    };
    for name in ALL {
        if !want.iter().any(|w| w == name) {
            continue;
        }
        match name {
            "server" => section(
                "Server",
                &[
                    ("redis_version", REDIS_VERSION.into()),
                    ("redis_git_sha1", "00000000".into()),
                    ("redis_git_dirty", "0".into()),
                    ("redis_mode", "standalone".into()),
                    ("os", std::env::consts::OS.into()),
                    ("arch_bits", (usize::BITS).to_string()),
                    ("multiplexing_api", "epoll".into()),
                    ("process_id", std::process::id().to_string()),
                    ("run_id", info.run_id.clone()),
                    ("tcp_port", info.port.to_string()),
                    ("server_time_usec", (now.saturating_mul(1000)).to_string()),
                    ("uptime_in_seconds", up.to_string()),
                    ("uptime_in_days", (up / 86400).to_string()),
                    ("hz", "10".into()),
                    ("io_threads_active", "0".into()),
                    ("server_name", "pmem-redis".into()),
                    ("pmem_redis_version", env!("CARGO_PKG_VERSION").into()),
                    ("worker_threads", info.threads.to_string()),
                ],
            ),
            "clients" => section(
                "Clients",
                &[
                    (
                        "connected_clients",
                        info.connected_clients.load(Ordering::Relaxed).to_string(),
                    ),
                    ("maxclients", info.maxclients.to_string()),
                    ("blocked_clients", "0".into()),
                ],
            ),
            "memory" => section(
                "Memory",
                &[
                    ("used_memory", used.to_string()),
                    ("used_memory_human", human_bytes(used)),
                    ("maxmemory", "0".into()),
                    ("maxmemory_human", "0B".into()),
                    ("maxmemory_policy", "noeviction".into()),
                ],
            ),
            "persistence" => section(
                "Persistence",
                &[
                    ("loading", "0".into()),
                    ("async_loading", "0".into()),
                    ("rdb_changes_since_last_save", "0".into()),
                    ("rdb_bgsave_in_progress", "0".into()),
                    ("rdb_last_bgsave_status", "ok".into()),
                    ("aof_enabled", "0".into()),
                    ("aof_rewrite_in_progress", "0".into()),
                    ("aof_last_write_status", "ok".into()),
                ],
            ),
            "stats" => section(
                "Stats",
                &[
                    (
                        "total_connections_received",
                        info.total_connections.load(Ordering::Relaxed).to_string(),
                    ),
                    (
                        "total_commands_processed",
                        info.total_commands.load(Ordering::Relaxed).to_string(),
                    ),
                    (
                        "rejected_connections",
                        info.rejected_connections
                            .load(Ordering::Relaxed)
                            .to_string(),
                    ),
                    (
                        "expired_keys",
                        info.expired_keys.load(Ordering::Relaxed).to_string(),
                    ),
                ],
            ),
            "replication" => section(
                "Replication",
                &[("role", "master".into()), ("connected_slaves", "0".into())],
            ),
            "keyspace" => {
                let keys = db.dbsize(now);
                let db0 = (keys > 0).then(|| {
                    (
                        "db0",
                        format!("keys={keys},expires={},avg_ttl=0", db.expires_count(now)),
                    )
                });
                section("Keyspace", db0.as_slice());
            }
            _ => {
                let lines: Vec<(&str, String)> = backend
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.replace(['\r', '\n'], " ")))
                    .collect();
                section("Backend", &lines);
            }
        }
    }
    reply::bulk(out, s.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globbing() {
        assert!(glob(b"*", b"save"));
        assert!(glob(b"SAVE", b"save"));
        assert!(glob(b"app*", b"appendonly"));
        assert!(glob(b"*only", b"appendonly"));
        assert!(glob(b"s?ve", b"save"));
        assert!(!glob(b"s?ve", b"saves"));
        assert!(!glob(b"x*", b"save"));
        assert!(glob(b"a*b*c", b"aXXbYYc"));
        assert!(!glob(b"a*b*c", b"aXXbYY"));
    }

    #[test]
    fn unknown_command_text() {
        let e = unknown_command(&[b"foo", b"a", b"b"]);
        assert_eq!(
            e,
            "ERR unknown command 'foo', with args beginning with: 'a' 'b' "
        );
        let long = vec![b'x'; 300];
        let e = unknown_command(&[b"foo", &long, b"z"]);
        assert!(e.len() < 200, "{e}");
    }
}
